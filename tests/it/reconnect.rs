//! A backend that drops a connection after reading a request, before any response head (what
//! llama.cpp's server does to pooled keep-alive connections when its HTTP threads are busy), is
//! asked again on a new connection: the client gets its answer and the backend stays healthy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use awc::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;

/// Answers every chat request with a small completion, except that the first `drops` requests
/// have their connection closed right after they are read.
async fn dropping_backend(drops: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    actix_rt::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            actix_rt::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: the head, then Content-Length bytes of body.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..end + 4 + len);
                    if head.starts_with("post") && counter.fetch_add(1, Ordering::SeqCst) < drops {
                        return; // closed before any response head
                    }
                    let body = json!({"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                    ]})
                    .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[actix_rt::test]
async fn a_connection_dropped_before_the_response_head_is_retried_and_not_a_failure() {
    let (url, seen) = dropping_backend(2).await;
    let broker = Broker::start(&[]);
    let (status, rec) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "flaky-conn", "endpoint_url": url, "verify": false})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rec}");
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("flaky-conn", false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "two dropped, the third answered"
    );
    let server = broker.server(&id).await;
    assert_ne!(
        server["health_status"], "unhealthy",
        "a dropped connection is not a backend failure: {server}"
    );
}
