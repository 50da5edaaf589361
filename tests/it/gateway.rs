//! The `/v1` gateway: routing, failover, streaming relay, cancellation, errors.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn backend_of(headers: &awc::http::header::HeaderMap) -> String {
    headers
        .get("x-switchboard-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[actix_rt::test]
async fn round_robin_alternates_between_two_backends() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[]);
    let ra = broker.register("rr", &a.url()).await;
    let rb = broker.register("rr", &b.url()).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, headers, _) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("rr", false)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        seen.push(backend_of(&headers));
    }
    let ids = [
        ra["registration_id"].as_str().unwrap_or(""),
        rb["registration_id"].as_str().unwrap_or(""),
    ];
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round-robin must alternate: {seen:?}");
    }
    assert!(seen.iter().all(|s| ids.contains(&s.as_str())));
    assert_eq!(
        a.stats().requests_by_path.get("/v1/chat/completions"),
        Some(&3)
    );
    assert_eq!(
        b.stats().requests_by_path.get("/v1/chat/completions"),
        Some(&3)
    );
}

#[actix_rt::test]
async fn failover_when_a_backend_answers_500() {
    let bad = mockllm::MockServer::builder()
        .model_override("error500")
        .spawn()
        .expect("mock");
    let good = mock();
    let broker = Broker::start(&[]);
    let rbad = broker.register("fo", &bad.url()).await;
    let rgood = broker.register("fo", &good.url()).await;
    for _ in 0..4 {
        let (status, headers, _) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("fo", false)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            backend_of(&headers),
            rgood["registration_id"].as_str().unwrap_or("-")
        );
    }
    let rec = broker
        .server(rbad["registration_id"].as_str().unwrap_or(""))
        .await;
    assert!(
        bad.stats()
            .requests_by_path
            .get("/v1/chat/completions")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    let passive = rec["health_history"]
        .as_array()
        .map(|h| h.iter().any(|c| c["kind"] == "passive"));
    assert_eq!(passive, Some(true), "passive failure recorded: {rec}");
}

#[actix_rt::test]
async fn failover_when_a_backend_ends_its_body_before_the_first_byte() {
    // 200 and headers, then a close: the stream died before commit, so it is retried. Both
    // shapes, each on its own model and mocks so each bad backend is surely tried: a JSON head
    // declaring a length that never comes, and an SSE head with no event.
    let broker = Broker::start(&[]);
    for (model, stream) in [("empty-json", false), ("empty-sse", true)] {
        let bad = mockllm::MockServer::builder()
            .model_override("headonly")
            .spawn()
            .expect("mock");
        let good = mock();
        let rbad = broker.register(model, &bad.url()).await;
        let rgood = broker.register(model, &good.url()).await;
        // Two requests: round-robin puts the bad backend first in one of them.
        for _ in 0..2 {
            let (status, headers, body) = request_raw(
                "POST",
                &format!("{}/v1/chat/completions", broker.url),
                &[],
                Some(chat(model, stream)),
            )
            .await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, StatusCode::OK, "{model}: {text}");
            assert_eq!(
                backend_of(&headers),
                rgood["registration_id"].as_str().unwrap_or("-")
            );
            if stream {
                assert!(text.contains("data: [DONE]"), "whole stream: {text}");
                assert!(!text.contains("\"error\""), "no error event: {text}");
            } else {
                let v: Value = serde_json::from_slice(&body).expect("whole JSON body");
                assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
            }
        }
        let tried = bad
            .stats()
            .requests_by_path
            .get("/v1/chat/completions")
            .copied()
            .unwrap_or(0);
        assert_eq!(
            tried, 1,
            "{model}: the bad backend was tried once, then left out"
        );
        let rec = broker
            .server(rbad["registration_id"].as_str().unwrap_or(""))
            .await;
        assert_eq!(rec["health_status"], "unhealthy", "{model}: {rec}");
    }
}

#[actix_rt::test]
async fn failover_when_a_backend_is_down() {
    let doomed = mock();
    let good = mock();
    let broker = Broker::start(&[]);
    broker.register("down", &doomed.url()).await;
    let rgood = broker.register("down", &good.url()).await;
    doomed.stop();
    for _ in 0..4 {
        let (status, headers, _) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("down", true)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            backend_of(&headers),
            rgood["registration_id"].as_str().unwrap_or("-")
        );
    }
}

#[actix_rt::test]
async fn unknown_model_is_404_and_no_healthy_backend_is_503() {
    let broker = Broker::start(&[]);
    let (status, headers, body) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[("x-request-id", "why-404")],
        Some(chat("nope", false)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        assert_error_shape(&body).as_deref(),
        Some("model_not_found")
    );
    let id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    assert_eq!(id, Some("why-404"), "refusals carry the request id");

    let dead = mock();
    let url = dead.url();
    dead.stop();
    let (status, rec) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "sick", "endpoint_url": url, "verify": false})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rec}");
    assert_eq!(rec["health_status"], "unhealthy");
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("sick", false)),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        assert_error_shape(&body).as_deref(),
        Some("no_healthy_backend")
    );
}

#[actix_rt::test]
async fn every_attempt_failing_is_504() {
    let a = mockllm::MockServer::builder()
        .model_override("error500")
        .spawn()
        .expect("mock");
    let b = mockllm::MockServer::builder()
        .model_override("error503")
        .spawn()
        .expect("mock");
    let hang = mockllm::MockServer::builder()
        .model_override("hang")
        .spawn()
        .expect("mock");
    let broker = Broker::start(&[("SWITCHBOARD_FIRST_BYTE_TIMEOUT_S", "0.5")]);
    broker.register("all-bad", &a.url()).await;
    broker.register("all-bad", &b.url()).await;
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("all-bad", false)),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(
        assert_error_shape(&body).as_deref(),
        Some("upstream_failed")
    );

    broker.register("slowpoke", &hang.url()).await;
    let started = Instant::now();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("slowpoke", true)),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "{body}"
    );
}

#[actix_rt::test]
async fn stream_arrives_chunk_by_chunk_and_is_byte_identical_to_direct() {
    let m = mockllm::MockServer::builder()
        .deterministic(true)
        .spawn()
        .expect("mock");
    let broker = Broker::start(&[]);
    broker.register("spaced-w12", &m.url()).await;
    let body = chat("spaced-w12", true);
    let (_, _, direct) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", m.url()),
        &[],
        Some(body.clone()),
    )
    .await;

    let started = Instant::now();
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", broker.url))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-request-id").is_some());
    let mut relayed = Vec::new();
    let mut first_at = None;
    let mut chunks = 0;
    while let Some(chunk) = resp.next().await {
        let chunk = chunk.expect("chunk");
        first_at.get_or_insert(started.elapsed());
        chunks += 1;
        relayed.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let first_at = first_at.expect("at least one chunk");
    assert!(
        first_at < Duration::from_millis(500),
        "first chunk after {first_at:?}"
    );
    assert!(
        total >= Duration::from_millis(1000),
        "12 tokens 100 ms apart took only {total:?}"
    );
    assert!(chunks >= 10, "relayed in {chunks} chunks");
    assert_eq!(
        String::from_utf8_lossy(&relayed),
        String::from_utf8_lossy(&direct)
    );
    assert!(relayed.ends_with(b"data: [DONE]\n\n"));
}

/// Sends a raw HTTP/1.1 request and returns the open socket.
async fn raw_post(base: &str, path: &str, body: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    sock
}

async fn read_until(sock: &mut tokio::net::TcpStream, needle: &str, timeout: Duration) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

async fn abort_delay_ms(m: &mockllm::MockHandle, closed_at: u64) -> u64 {
    wait_for(Duration::from_secs(3), || async {
        !m.stats().aborts.is_empty()
    })
    .await;
    let aborts = m.stats().aborts;
    let abort = aborts
        .first()
        .unwrap_or_else(|| panic!("mock never saw the upstream close"));
    abort.at_ms.saturating_sub(closed_at)
}

#[actix_rt::test]
async fn client_disconnect_mid_stream_closes_upstream_within_100ms() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("spaced-w60", &m.url()).await;
    let mut sock = raw_post(
        &broker.url,
        "/v1/chat/completions",
        &chat("spaced-w60", true),
    )
    .await;
    let seen = read_until(&mut sock, "You ", Duration::from_secs(5)).await;
    assert!(seen.contains("200 OK"), "{seen}");
    drop(sock);
    let closed_at = now_ms();
    let delay = abort_delay_ms(&m, closed_at).await;
    assert!(delay <= 100, "upstream closed {delay} ms after the client");
    assert_eq!(m.stats().streams_completed, 0);
}

#[actix_rt::test]
async fn client_disconnect_while_waiting_for_a_non_streaming_reply_closes_upstream() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("ttft5000", &m.url()).await;
    let sock = raw_post(
        &broker.url,
        "/v1/chat/completions",
        &chat("ttft5000", false),
    )
    .await;
    wait_for(Duration::from_secs(3), || async {
        m.stats()
            .requests_by_path
            .contains_key("/v1/chat/completions")
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    let closed_at = now_ms();
    let delay = abort_delay_ms(&m, closed_at).await;
    assert!(delay <= 100, "upstream closed {delay} ms after the client");
    assert!(!m.stats().aborts[0].stream);
}

fn data_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

#[actix_rt::test]
async fn backend_dying_mid_stream_ends_with_an_error_object() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("drop3", &m.url()).await;
    let (status, _, body) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[],
        Some(chat("drop3", true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = data_events(&String::from_utf8_lossy(&body));
    assert!(events.len() >= 4, "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let last: Value =
        serde_json::from_str(events.last().map(String::as_str).unwrap_or("")).expect("json");
    assert_error_shape(&last);
}

#[actix_rt::test]
async fn a_steady_stream_gets_no_keepalives_and_a_stalled_one_ends_with_an_idle_error() {
    let m = mock();
    let broker = Broker::start(&[
        ("SWITCHBOARD_KEEPALIVE_S", "0.3"),
        ("SWITCHBOARD_IDLE_TIMEOUT_S", "0.8"),
    ]);
    for model in ["steady-d100", "stall-d3000-w3"] {
        broker.register(model, &m.url()).await;
    }
    let url = format!("{}/v1/chat/completions", broker.url);
    let (status, _, body) = request_raw("POST", &url, &[], Some(chat("steady-d100", true))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(": keepalive"), "tokens every 100 ms: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let started = Instant::now();
    let (status, _, body) =
        request_raw("POST", &url, &[], Some(chat("stall-d3000-w3", true))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    let events = data_events(&text);
    let last: Value =
        serde_json::from_str(events.last().map_or("", String::as_str)).unwrap_or_default();
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("silent")),
        "{text}"
    );
    assert!(
        text.contains(": keepalive"),
        "0.3 s keepalives in a 0.8 s silence: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn silent_committed_stream_gets_keepalive_comments() {
    let m = mock();
    let broker = Broker::start(&[
        ("SWITCHBOARD_COMMIT_TIMEOUT_S", "0.2"),
        ("SWITCHBOARD_KEEPALIVE_S", "0.3"),
    ]);
    broker.register("ttft1500", &m.url()).await;
    let (status, _, body) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[],
        Some(chat("ttft1500", true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    let keepalive = text.find(": keepalive\n\n").expect("a keepalive comment");
    let first_data = text.find("data: ").expect("data");
    assert!(keepalive < first_data, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[actix_rt::test]
async fn client_keys_are_required_and_never_forwarded() {
    let m = mock();
    let broker = Broker::start(&[("SWITCHBOARD_API_KEYS", "client-key-1, client-key-2")]);
    let (status, rec) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "keyed", "endpoint_url": m.url(), "api_key": "backend-secret"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(rec["has_api_key"], true);
    assert!(!rec.to_string().contains("backend-secret"));

    let body = Some(chat("keyed", false));
    let (status, err) = broker
        .call("POST", "/v1/chat/completions", &[], body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error_shape(&err);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer wrong")],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = broker.call("GET", "/v1/models", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, headers, _) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[
            ("authorization", "Bearer client-key-2"),
            ("x-request-id", "req-abc-123"),
        ],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );
    let sent = m.stats().last_headers;
    let last = sent.last().expect("headers recorded");
    assert_eq!(last["authorization"], "Bearer backend-secret");
    assert_eq!(last["x-request-id"], "req-abc-123");
    assert!(!broker.logs().contains("backend-secret") && !broker.logs().contains("client-key-2"));
}

#[actix_rt::test]
async fn the_ui_login_lists_models_but_does_not_replace_an_api_key() {
    let m = mock();
    let broker = Broker::start(&[
        ("SWITCHBOARD_API_KEYS", "client-key-1"),
        ("SWITCHBOARD_UI_PASSWORD", "pw"),
    ]);
    broker.register("listed", &m.url()).await;
    // admin:pw
    let basic = ("authorization", "Basic YWRtaW46cHc=");
    let (status, list) = broker.call("GET", "/v1/models", &[basic], None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"][0]["id"], "listed");
    let wrong = ("authorization", "Basic YWRtaW46bm9wZQ==");
    let (status, _) = broker.call("GET", "/v1/models", &[wrong], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[basic],
            Some(chat("listed", false)),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "completions still need a key"
    );
}

#[actix_rt::test]
async fn bad_requests_get_openai_shaped_errors() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("val", &m.url()).await;
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, None),
        ("[]".into(), StatusCode::BAD_REQUEST, None),
        (
            json!({"messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("model"),
        ),
        (
            json!({"model": 7, "messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("model"),
        ),
        (
            json!({"model": "val", "messages": "hi"}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            json!({"model": "val"}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            json!({"model": "val", "messages": [], "stream": "yes"}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("stream"),
        ),
        (
            format!(
                "{{\"model\":\"val\",\"messages\":[],\"pad\":\"{}\"}}",
                "x".repeat(2 << 20)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    for (body, want, param) in cases {
        let (status, err) = broker
            .call("POST", "/v1/chat/completions", &[], Some(body.clone()))
            .await;
        assert_eq!(status, want, "body {}", &body[..body.len().min(80)]);
        assert_error_shape(&err);
        if let Some(p) = param {
            assert_eq!(err["error"]["param"], p);
        }
    }
    assert_eq!(
        m.stats().requests_by_path.get("/v1/chat/completions"),
        None,
        "nothing reached the backend"
    );
    let (status, err) = broker.call("GET", "/v1/nothing-here", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&err);
}

#[actix_rt::test]
async fn models_lists_each_active_model_with_backend_counts() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[]);
    broker.register("alpha", &a.url()).await;
    broker.register("alpha", &b.url()).await;
    broker.register("beta", &a.url()).await;
    let (status, body) = broker.call("GET", "/v1/models", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().cloned().unwrap_or_default();
    let alpha = data
        .iter()
        .find(|m| m["id"] == "alpha")
        .expect("alpha listed");
    assert_eq!(alpha["backends"], 2);
    assert_eq!(alpha["healthy_backends"], 2);
    assert_eq!(alpha["owned_by"], "switchboard");
    assert_eq!(alpha["object"], "model");
    assert!(data.iter().any(|m| m["id"] == "beta"));
    assert_eq!(data.len(), 2);
}

#[actix_rt::test]
async fn completions_and_embeddings_are_proxied() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("multi", &m.url()).await;
    let (status, body) = broker
        .call(
            "POST",
            "/v1/completions",
            &[],
            Some(json!({"model": "multi", "prompt": "say hi"}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    let (status, body) = broker
        .call(
            "POST",
            "/v1/embeddings",
            &[],
            Some(json!({"model": "multi", "input": ["a", "b"]}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
}

/// A backend written by hand, as small SSE servers often are: `/v1/models` with a
/// `Content-Length` on a kept-alive connection, and completions in HTTP/1.1 with neither a
/// length nor chunking, the body ending when it closes the connection.
fn close_delimited_backend() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).expect("body");
                    if head.starts_with("GET /v1/models") {
                        let json =
                            r#"{"object":"list","data":[{"id":"handmade","object":"model"}]}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        );
                        conn.write_all(answer.as_bytes()).expect("write");
                        continue;
                    }
                    let stream = String::from_utf8_lossy(&body).contains("\"stream\":true");
                    let answer = if stream {
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n\
                         data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hand\"}}]}\n\n\
                         data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"made\"}}]}\n\n\
                         data: [DONE]\n\n"
                    } else {
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n\
                         {\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"handmade\"}}]}"
                    };
                    let _ = conn.write_all(answer.as_bytes());
                    return; // the close ends the body
                }
            });
        }
    });
    url
}

#[actix_rt::test]
async fn a_body_that_ends_when_the_backend_closes_is_relayed_whole() {
    let broker = Broker::start(&[]);
    let backend = close_delimited_backend();
    let reg = broker.register("handmade", &backend).await;
    for stream in [true, false, true] {
        let (status, _, body) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("handmade", stream)),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::OK, "stream={stream}: {text}");
        if stream {
            assert!(text.contains("\"content\":\"hand\""), "{text}");
            assert!(text.contains("\"content\":\"made\""), "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let v: Value = serde_json::from_slice(&body).expect("whole JSON body");
            assert_eq!(v["choices"][0]["message"]["content"], "handmade", "{v}");
        }
    }
    let rec = broker
        .server(reg["registration_id"].as_str().unwrap_or(""))
        .await;
    assert_eq!(rec["health_status"], "healthy", "{rec}");
}
