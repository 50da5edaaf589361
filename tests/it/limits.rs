//! Slow clients and the drain (SPEC §8): request/body timeout, idle keep-alive connections,
//! and the listener answering while a SIGTERM drain runs.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::wsclient::*;

async fn connect(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until end-of-file (or `timeout`); the bytes and whether EOF came.
async fn read_to_eof(sock: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&data).into(), true),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&data).into(), false),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_json(resp: &str) -> Value {
    resp.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

#[actix_rt::test]
async fn an_unfinished_body_gets_408_and_the_connection_closes_within_timeout_plus_1s() {
    let broker = Broker::start(&[("SWITCHBOARD_REQUEST_TIMEOUT_S", "1")]);
    let addr = broker.url.trim_start_matches("http://").to_string();
    let cases = [
        // A chunked body that never finishes (admin and /v1).
        format!("POST /admin/register HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {ADMIN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n"),
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n"),
        // A partial body of announced length on /v1.
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"),
    ];
    for head in cases {
        let mut sock = connect(&broker.url).await;
        let started = Instant::now();
        sock.write_all(head.as_bytes()).await.expect("write");
        let (resp, closed) = read_to_eof(&mut sock, Duration::from_secs(5)).await;
        let took = started.elapsed();
        let line = head.lines().next().unwrap_or_default();
        assert!(resp.starts_with("HTTP/1.1 408"), "{line}: {resp}");
        assert_eq!(
            assert_error_shape(&body_json(&resp)).as_deref(),
            Some("request_timeout"),
            "{line}"
        );
        assert!(closed, "{line}: still open after {took:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(2),
            "{line}: closed after {took:?}"
        );
    }
}

#[actix_rt::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_limit() {
    let broker = Broker::start(&[("SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_S", "1")]);
    let addr = broker.url.trim_start_matches("http://").to_string();
    let mut sock = connect(&broker.url).await;
    sock.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let (resp, closed) = read_to_eof(&mut sock, Duration::from_secs(4)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let took = started.elapsed();
    assert!(
        closed && took < Duration::from_millis(1800),
        "closed {closed} after {took:?}"
    );
}

#[actix_rt::test]
async fn during_the_drain_new_work_gets_503_at_once_while_a_stream_finishes() {
    let m = mock();
    let mut broker = Broker::start(&[("SWITCHBOARD_DRAIN_TIMEOUT_S", "5")]);
    let model = "drain-d40-w60";
    broker.register(model, &m.url()).await;
    let url = format!("{}/v1/chat/completions", broker.url);
    let stream =
        actix_rt::spawn(
            async move { request_raw("POST", &url, &[], Some(chat(model, true))).await },
        );
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    broker.terminate();
    actix_rt::time::sleep(Duration::from_millis(300)).await;

    let asked = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(1),
        broker.call("GET", "/health", &[], None),
    )
    .await
    .expect("/health answered during the drain");
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "draining", "{body}");

    let (status, body) = broker
        .call("POST", "/v1/chat/completions", &[], Some(chat(model, true)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_shape(&body);

    let mut ws = Ws::connect(&broker.url).await;
    assert_eq!(ws.close_code(Duration::from_secs(2)).await, Some(4503));

    // The stream that was in flight still ends whole.
    let (status, _, body) = stream.await.expect("stream");
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("data: [DONE]"));
    assert_eq!(broker.wait_exit(Duration::from_secs(8)), Some(0));
}
