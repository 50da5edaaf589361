use super::*;
use parking_lot::Mutex;
use serde_json::json;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn encodes_events() {
    let ev = |name: Option<&str>, data: Option<Value>| PushEvent {
        name: name.map(str::to_string),
        data,
    };
    assert_eq!(
        encode_event(&ev(Some("msg"), Some(json!("hi")))).unwrap(),
        "event: msg\ndata: hi\n\n"
    );
    assert_eq!(
        encode_event(&ev(None, Some(json!("a\nb\r\nc")))).unwrap(),
        "data: a\ndata: b\ndata: c\n\n"
    );
    assert_eq!(
        encode_event(&ev(Some("x"), Some(json!({"n": 1})))).unwrap(),
        "event: x\ndata: {\"n\":1}\n\n"
    );
    assert_eq!(encode_event(&ev(None, None)).unwrap(), "data: \n\n");
    assert!(encode_event(&ev(Some("a\nb"), None)).is_err());
}

#[test]
fn callback_target_appends_the_secret() {
    assert_eq!(
        callback_target("http://a/cb", "s e/c"),
        "http://a/cb?secret=s%20e%2Fc"
    );
    assert_eq!(
        callback_target("http://a/cb?x=1", "k"),
        "http://a/cb?x=1&secret=k"
    );
    assert_eq!(callback_target("http://a/cb?", "k"), "http://a/cb?secret=k");
    assert_eq!(
        callback_target("http://a/cb#f", "k"),
        "http://a/cb?secret=k"
    );
    assert_eq!(strip_query("http://a/cb?secret=k"), "http://a/cb");
}

#[test]
fn settings_debug_hides_the_secret() {
    let s = PushSettings {
        callback_url: "http://a/cb?token=zzz".into(),
        secret: "hunter2".into(),
        callback_timeout: CALLBACK_TIMEOUT,
        queue_limit: 10,
    };
    let text = format!("{s:?}");
    assert!(!text.contains("hunter2") && !text.contains("zzz"), "{text}");
}

/// A tiny HTTP server answering every request with `status`; returns the URL and the bodies
/// it received.
async fn callback_app(status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body: Value = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                    log.lock().push(body);
                    buf.drain(..end + 4 + len);
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    (url, seen)
}

fn hub(url: &str) -> Arc<PushHub> {
    PushHub::start(PushSettings {
        callback_url: url.to_string(),
        secret: "s".into(),
        callback_timeout: Duration::from_secs(2),
        queue_limit: 64,
    })
    .unwrap()
}

#[actix_rt::test]
async fn lifecycle_ordering_and_shutdown() {
    let (url, seen) = callback_app(200).await;
    let hub = hub(&url);
    let mut a = hub.open(json!({"url": "/push/a", "headers": {}})).unwrap();
    a.connect().await.unwrap();
    let token = a.token().to_string();
    for i in 0..5 {
        let ev = encode_event(&PushEvent {
            name: None,
            data: Some(json!(i.to_string())),
        })
        .unwrap();
        hub.send(&token, Some(ev), false).unwrap();
    }
    for i in 0..5 {
        let f = poll_fn(|cx| a.poll_frame(cx)).await.unwrap();
        assert_eq!(f.bytes, format!("data: {i}\n\n"));
    }
    assert_eq!(hub.send("nope", None, true), Err(SendError::UnknownToken));
    // Over the 64-byte budget: disconnected with `error`.
    let big = Bytes::from(vec![b'x'; 100]);
    assert_eq!(
        hub.send(&token, Some(big), false),
        Err(SendError::SlowConsumer)
    );
    assert!(poll_fn(|cx| a.poll_frame(cx)).await.is_none());
    drop(a); // already reported: no second callback

    let mut b = hub.open(json!({"url": "/push/b", "headers": {}})).unwrap();
    b.connect().await.unwrap();
    let mut c = hub.open(json!({"url": "/push/c", "headers": {}})).unwrap();
    c.connect().await.unwrap();
    assert_eq!(hub.stats().connections_open, 2);
    assert_eq!(hub.shutdown().await, 2);
    assert!(poll_fn(|cx| b.poll_frame(cx)).await.is_none());
    assert!(hub.open(json!({})).is_err());
    drop((b, c));
    let seen = seen.lock().clone();
    let reasons: Vec<&str> = seen
        .iter()
        .filter(|v| v["action"] == "disconnect")
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["error", "shutdown", "shutdown"]);
    assert_eq!(hub.registered(), 0);
    let stats = hub.stats();
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats.connections_total, 3);
    assert_eq!(stats.disconnects.shutdown, 2);
}

#[actix_rt::test]
async fn rejected_connects_keep_no_token_and_send_no_disconnect() {
    let (url, seen) = callback_app(403).await;
    let hub = hub(&url);
    let mut a = hub.open(json!({"url": "/push/a", "headers": {}})).unwrap();
    assert_eq!(a.connect().await.unwrap_err(), ConnectError::Rejected(403));
    let token = a.token().to_string();
    drop(a);
    assert_eq!(hub.registered(), 0);
    assert_eq!(hub.send(&token, None, true), Err(SendError::UnknownToken));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.lock().len(), 1, "only the connect callback");
}

#[actix_rt::test]
async fn unreachable_callback_is_an_error_not_a_rejection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    drop(listener);
    let hub = hub(&url);
    let mut a = hub.open(json!({})).unwrap();
    assert!(matches!(
        a.connect().await,
        Err(ConnectError::Unreachable(_))
    ));
    assert_eq!(hub.registered(), 0);
}
