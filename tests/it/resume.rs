//! Disconnects, resume without loss, the resync snapshot, limits and close codes, and the SSE
//! transport of the same sessions.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::wsclient::*;

const PROMPT: &str = "resume me";

async fn setup(models: &[&str], env: &[(&str, &str)]) -> (Broker, mockllm::MockHandle) {
    let m = mock();
    let broker = Broker::start(env);
    for model in models {
        broker.register(model, &m.url()).await;
    }
    (broker, m)
}

async fn resume(base: &str, session_id: &str, last_event_id: u64) -> (Ws, Value) {
    let mut ws = Ws::connect(base).await;
    ws.send(json!({"type": "hello", "session_id": session_id, "last_event_id": last_event_id}))
        .await;
    let s = ws.event().await;
    assert_eq!(s["type"], "session", "{s}");
    (ws, s)
}

#[actix_rt::test]
async fn a_reconnect_within_the_grace_gets_exactly_the_missed_events() {
    let model = "r-d20-w80";
    let (broker, _m) = setup(&[model], &[]).await;
    let (mut ws, session_id) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    let mut view = View::default();
    while view.of("token", None).len() < 5 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    let last = view.last_id;
    drop(ws);
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    let (mut ws, s) = resume(&broker.url, &session_id, last).await;
    assert_eq!(s["resumed"], true);
    assert_eq!(s["session_id"], session_id.as_str());
    let first = ws.event().await;
    assert_eq!(
        first["id"].as_u64(),
        Some(last + 1),
        "replay starts right after {last}: {first}"
    );
    view.apply(&first);
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    assert_eq!(view.duplicates, 0);
    assert!(view.missing().is_empty(), "missing {:?}", view.missing());
    assert_eq!(
        view.text.get(model),
        Some(&mockllm::reply_text(model, PROMPT))
    );
}

#[actix_rt::test]
async fn chaos_fifty_forced_reconnects_lose_and_duplicate_nothing() {
    let models = ["x-d10-w250", "y-d12-w200", "z-d15-w160"];
    let (broker, _m) = setup(&models, &[]).await;
    let (mut ws, session_id) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("chaos", PROMPT, &models)).await;
    let mut view = View::default();
    let mut reconnects = 0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    while !view.complete {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let take = 1 + (seed % 12) as usize;
        for _ in 0..take {
            match ws.next(Duration::from_secs(10)).await {
                Got::Event(ev) => {
                    view.apply(&ev);
                }
                other => panic!("unexpected {other:?}"),
            }
            if view.complete {
                break;
            }
        }
        if view.complete {
            break;
        }
        drop(ws);
        reconnects += 1;
        let (next, s) = resume(&broker.url, &session_id, view.last_id).await;
        assert_eq!(s["resumed"], true);
        ws = next;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "chaos run too slow"
        );
    }
    assert!(
        reconnects >= 50,
        "only {reconnects} reconnects happened during the turn; make it longer"
    );
    assert_eq!(view.duplicates, 0, "an id arrived twice");
    assert!(
        view.missing().is_empty(),
        "missing ids {:?}",
        view.missing()
    );
    for model in models {
        assert_eq!(
            view.text.get(model),
            Some(&mockllm::reply_text(model, PROMPT)),
            "{model}"
        );
        assert_eq!(view.of("done", Some(model)).len(), 1);
    }
}

#[actix_rt::test]
async fn past_the_grace_the_upstream_streams_are_cancelled() {
    let model = "g-spaced-w100";
    let (broker, m) = setup(&[model], &[("SWITCHBOARD_DISCONNECT_GRACE_S", "1")]).await;
    let (mut ws, session_id) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    let mut view = View::default();
    while view.of("token", None).is_empty() {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    drop(ws);
    let dropped = now_ms();
    wait_for(Duration::from_secs(4), || async {
        !m.stats().aborts.is_empty()
    })
    .await;
    let abort = m
        .stats()
        .aborts
        .first()
        .cloned()
        .expect("upstream cancelled after the grace");
    let after = abort.at_ms.saturating_sub(dropped);
    assert!(
        (900..2000).contains(&after),
        "cancelled {after} ms after the disconnect"
    );
    let (mut ws, _) = resume(&broker.url, &session_id, view.last_id).await;
    read_to_complete(&mut ws, &mut view, Duration::from_secs(5)).await;
    assert_eq!(
        view.of("cancelled", Some(model)).len(),
        1,
        "the cancel is buffered for a late reconnect"
    );
}

#[actix_rt::test]
async fn a_resume_older_than_the_buffer_gets_a_resync_snapshot() {
    let model = "s-d5-w60";
    let (broker, _m) = setup(&[model], &[("SWITCHBOARD_EVENT_BUFFER", "5")]).await;
    let (mut ws, session_id) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    let mut view = View::default();
    while view.of("token", None).len() < 2 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    drop(ws);
    actix_rt::time::sleep(Duration::from_millis(800)).await; // the turn completes meanwhile
    let (mut ws, s) = resume(&broker.url, &session_id, view.last_id).await;
    let resync = ws.event().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    assert_eq!(resync["request_id"], "r1");
    let snap = &resync["snapshot"][model];
    assert_eq!(
        snap["content"].as_str(),
        Some(mockllm::reply_text(model, PROMPT).as_str())
    );
    assert_eq!(snap["state"], "done");
    assert!(snap["metrics"]["ttft_ms"].as_u64().is_some());
    // The turn ended while we were away: its `complete` follows the snapshot, as after a replay.
    let last = s["last_event_id"].as_u64().unwrap_or(0);
    let complete = ws.event().await;
    assert_eq!(complete["type"], "complete", "{complete}");
    assert_eq!(complete["request_id"], "r1");
    assert_eq!(complete["id"].as_u64(), Some(last), "{complete}");
    // Live events follow; the next turn's ids continue after the session's last id.
    ws.send(send_msg("r2", "again", &[model])).await;
    let ack = ws.event().await;
    assert_eq!(ack["id"].as_u64(), Some(last + 1), "{ack}");
}

#[actix_rt::test]
async fn two_connections_of_one_session_each_get_every_event() {
    let model = "two-d5-w20";
    let (broker, _m) = setup(&[model], &[]).await;
    let (mut a, session_id) = Ws::new_session(&broker.url).await;
    let (mut b, _) = resume(&broker.url, &session_id, 0).await;
    a.send(send_msg("r1", PROMPT, &[model])).await;
    let (mut va, mut vb) = (View::default(), View::default());
    read_to_complete(&mut a, &mut va, Duration::from_secs(5)).await;
    read_to_complete(&mut b, &mut vb, Duration::from_secs(5)).await;
    assert_eq!(va.last_id, vb.last_id);
    assert_eq!(va.text, vb.text);
}

#[actix_rt::test]
async fn close_codes() {
    let (broker, _m) = setup(
        &["cc"],
        &[
            ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "2"),
            ("SWITCHBOARD_MAX_SESSIONS", "1"),
        ],
    )
    .await;
    // 4001: unknown session id.
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "hello", "session_id": "nope", "last_event_id": 0}))
        .await;
    assert_eq!(ws.close_code(Duration::from_secs(3)).await, Some(4001));
    // 4400: the first message is not a hello.
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.close_code(Duration::from_secs(3)).await, Some(4400));
    let mut ws = Ws::connect(&broker.url).await;
    ws.send_text("garbage".into()).await;
    assert_eq!(ws.close_code(Duration::from_secs(3)).await, Some(4400));
    // 4503: at the session cap with no detached session to evict.
    let mut first = Ws::connect(&broker.url).await;
    first.hello_new().await;
    let mut second = Ws::connect(&broker.url).await;
    second.send(json!({"type": "hello"})).await;
    assert_eq!(second.close_code(Duration::from_secs(3)).await, Some(4503));
    // 4029: a third connection from this IP (accepted, then closed).
    let mut other = Ws::connect(&broker.url).await;
    let mut third = Ws::connect(&broker.url).await;
    assert_eq!(third.close_code(Duration::from_secs(3)).await, Some(4029));
    assert_eq!(
        other.close_code(Duration::from_millis(50)).await,
        None,
        "the second connection stays open"
    );
    // 1009: a frame over 1 MiB.
    drop(other);
    drop(first);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let mut big = Ws::connect(&broker.url).await;
    big.send_text("x".repeat(1024 * 1024 + 10)).await;
    assert_eq!(big.close_code(Duration::from_secs(3)).await, Some(1009));
}

#[actix_rt::test]
async fn silence_after_the_upgrade_is_closed_with_4400_after_5s() {
    let broker = Broker::start(&[]);
    let mut ws = Ws::connect(&broker.url).await;
    let started = Instant::now();
    assert_eq!(ws.close_code(Duration::from_secs(8)).await, Some(4400));
    assert!(started.elapsed() >= Duration::from_millis(4800));
}

#[actix_rt::test]
async fn a_consumer_that_stops_reading_is_closed_with_4009() {
    let model = "flood-w120000";
    // A small outbound limit (default 1 MiB) so the test needs little traffic.
    let (broker, _m) = setup(&[model], &[("SWITCHBOARD_OUTBOUND_LIMIT_BYTES", "32768")]).await;
    // A raw socket with a tiny receive buffer that never reads after the handshake.
    let mut sock = raw_upgrade(&broker.url, Some(4096)).await;
    for msg in [json!({"type": "hello"}), send_msg("r1", "go", &[model])] {
        sock.write_all(&masked_text_frame(msg.to_string().as_bytes()))
            .await
            .expect("frame");
    }
    // Stop reading while the turn floods us; the server must not buffer without bound.
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    // Read again: what was queued drains, then the close frame with 4009 (resume from there).
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(code) = find_close_code(&data) {
            break Some(code);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break find_close_code(&data),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
        }
    };
    assert_eq!(
        code,
        Some(4009),
        "received {} bytes without a 4009 close",
        data.len()
    );
    // 120 000 token events are ~18 MB; the slow consumer got a bounded part of them.
    assert!(
        data.len() < 8 * 1024 * 1024,
        "received {} bytes",
        data.len()
    );
}

/// Walks unmasked server frames; returns the code of a close frame, if one arrived.
/// A raw TCP socket upgraded to a WebSocket on `/ws` (101 read), for tests that need to
/// control reading and see the bytes as sent; `rcvbuf` shrinks its receive buffer.
pub(crate) async fn raw_upgrade(base: &str, rcvbuf: Option<u32>) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    let mut sock = socket.connect(addr).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        sock.read_exact(&mut byte).await.expect("read");
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).contains(" 101 "),
        "upgrade: {head:?}"
    );
    sock
}

/// The close code of the first whole close frame in `data`.
pub(crate) fn find_close_code(data: &[u8]) -> Option<u16> {
    frames(data)
        .into_iter()
        .find(|(opcode, payload)| *opcode == 0x8 && payload.len() >= 2)
        .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
}

pub(crate) fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

// === SSE transport ===

pub(crate) async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    request(
        "POST",
        &format!("{base}{path}"),
        &[],
        Some(body.to_string()),
    )
    .await
}

/// Reads SSE events from `/api/sessions/{id}/events` until `until` returns true.
pub(crate) async fn sse_read(
    base: &str,
    session_id: &str,
    last_event_id: Option<u64>,
    view: &mut View,
    mut until: impl FnMut(&View, &Value) -> bool,
) -> Vec<(Option<u64>, String)> {
    let mut req = client().get(format!("{base}/api/sessions/{session_id}/events"));
    if let Some(id) = last_event_id {
        req = req.insert_header(("last-event-id", id.to_string()));
    }
    let mut resp = req.send().await.expect("events");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    assert_eq!(
        resp.headers()
            .get("x-accel-buffering")
            .and_then(|v| v.to_str().ok()),
        Some("no")
    );
    let mut parser = switchboard_actors::sse_parser::SseParser::new();
    let mut frames = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let chunk = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            resp.next(),
        )
        .await
        .expect("sse timed out")
        .expect("sse ended")
        .expect("sse chunk");
        parser.feed(&chunk, &mut out).expect("parse");
        for ev in out.drain(..) {
            let v: Value = serde_json::from_str(&ev.data).expect("json data");
            assert_eq!(
                ev.event.as_deref(),
                v["type"].as_str(),
                "event: matches type"
            );
            // An event without an id (a heartbeat) keeps the stream's last id, as SSE says.
            if v["id"].is_u64() {
                assert_eq!(
                    ev.id.as_ref().and_then(|i| i.parse::<u64>().ok()),
                    v["id"].as_u64()
                );
            }
            frames.push((v["id"].as_u64(), ev.event.clone().unwrap_or_default()));
            view.apply(&v);
            if until(view, &v) {
                return frames;
            }
        }
    }
}

#[actix_rt::test]
async fn the_sse_transport_runs_a_turn_cancels_and_resumes_with_last_event_id() {
    let (fast, slow) = ("sse-d5-w20", "sse-spaced-w100");
    let (broker, m) = setup(&[fast, slow], &[]).await;
    let (status, created) = post(&broker.url, "/api/sessions", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = created["session_id"].as_str().unwrap_or("").to_string();

    let (status, accepted) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/messages"),
        json!({"request_id": "s1", "content": PROMPT, "models": [fast, slow]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let (status, busy) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/messages"),
        json!({"request_id": "s2", "content": PROMPT, "models": [fast]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(busy["error"]["code"], "busy");

    let mut view = View::default();
    let frames = sse_read(&broker.url, &sid, None, &mut view, |v, _| {
        v.of("done", Some(fast)).len() == 1 && v.of("token", Some(slow)).len() >= 3
    })
    .await;
    assert_eq!(frames[0], (None, "session".to_string()));
    let (status, _) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/cancel"),
        json!({"request_id": "s1"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let last = view.last_id;
    // Resume from Last-Event-ID on a new stream: exactly the events after `last`.
    let mut resumed = View::default();
    let frames = sse_read(&broker.url, &sid, Some(last), &mut resumed, |v, _| {
        v.complete
    })
    .await;
    assert_eq!(
        frames.get(1).and_then(|f| f.0),
        Some(last + 1),
        "{frames:?}"
    );
    assert_eq!(resumed.of("cancelled", Some(slow)).len(), 1);
    assert_eq!(
        view.text.get(fast),
        Some(&mockllm::reply_text(fast, PROMPT))
    );
    wait_for(Duration::from_secs(2), || async {
        !m.stats().aborts.is_empty()
    })
    .await;
    assert_eq!(
        m.stats().aborts.len(),
        1,
        "the slow model's upstream was closed"
    );

    let (status, state) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["turn"]["request_id"], "s1");
    assert_eq!(state["turn"]["snapshot"][slow]["state"], "cancelled");

    // The same session over WebSocket.
    let (mut ws, s) = resume(&broker.url, &sid, resumed.last_id).await;
    assert_eq!(s["resumed"], true);
    ws.send(send_msg("s3", "more", &[fast])).await;
    let mut v3 = View::default();
    read_to_complete(&mut ws, &mut v3, Duration::from_secs(5)).await;

    let (status, _) = broker
        .call("DELETE", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(ws.close_code(Duration::from_secs(3)).await, Some(4001));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let (status, err) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&err);
    let (status, _) = post(
        &broker.url,
        "/api/sessions/nope/messages",
        json!({"request_id": "x", "content": "y", "models": [fast]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn a_session_made_over_websocket_streams_over_sse() {
    let model = "cross-d5";
    let (broker, _m) = setup(&[model], &[]).await;
    let (mut ws, sid) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("w1", PROMPT, &[model])).await;
    let mut view = View::default();
    sse_read(&broker.url, &sid, Some(0), &mut view, |v, _| v.complete).await;
    assert_eq!(
        view.text.get(model),
        Some(&mockllm::reply_text(model, PROMPT))
    );
}

#[actix_rt::test]
async fn a_silent_client_is_dropped_after_the_silence_timeout_and_a_live_one_is_kept() {
    let env = [
        ("SWITCHBOARD_WS_HEARTBEAT_S", "0.4"),
        ("SWITCHBOARD_WS_SILENCE_TIMEOUT_S", "1.5"),
    ];
    let broker = Broker::start(&env);
    // A live client: it answers every ping, so heartbeats keep coming past the limit.
    let mut live = Ws::connect(&broker.url).await;
    live.hello_new().await;

    // A raw client that says hello and then never sends anything (no pongs).
    let mut sock = raw_upgrade(&broker.url, None).await;
    sock.write_all(&masked_text_frame(br#"{"type":"hello"}"#))
        .await
        .expect("hello");
    let said_hello = Instant::now();
    let silent = actix_rt::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(said_hello.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    });
    // Meanwhile the live client reads (and so answers pings) for twice the limit.
    let mut heartbeats = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match live.next(Duration::from_millis(600)).await {
            Got::Event(ev) if ev["type"] == "heartbeat" => heartbeats += 1,
            Got::Event(_) | Got::Timeout => {}
            Got::Closed(code) => panic!("a client answering pings was closed ({code:?})"),
        }
    }
    let gone = silent
        .await
        .expect("task")
        .expect("a silent client was still connected after 10 s");
    assert!(
        gone >= Duration::from_millis(1400) && gone < Duration::from_millis(2600),
        "dropped after {gone:?}, limit 1.5 s"
    );
    assert!(
        broker
            .wait_for_log("silent for", Duration::from_secs(2))
            .await,
        "{}",
        broker.logs()
    );
    assert!(heartbeats >= 1, "heartbeats kept coming to the live client");
}

/// `(opcode, payload)` of every whole frame in `data`.
pub(crate) fn frames(data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= data.len() {
        let opcode = data[i] & 0x0f;
        let (len, header) = match data[i + 1] & 0x7f {
            126 if i + 4 <= data.len() => {
                (u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize, 4)
            }
            127 if i + 10 <= data.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[i + 2..i + 10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if i + header + len > data.len() {
            break;
        }
        out.push((opcode, data[i + header..i + header + len].to_vec()));
        i += header + len;
    }
    out
}

#[actix_rt::test]
async fn the_close_frame_is_the_last_frame_even_mid_stream() {
    // A session deleted while a fast turn streams: events, then 4001, then nothing.
    let model = "fast-d1-w3000";
    let (broker, _m) = setup(&[model], &[]).await;
    let mut sock = raw_upgrade(&broker.url, None).await;
    sock.write_all(&masked_text_frame(br#"{"type":"hello"}"#))
        .await
        .expect("hello");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let session_id = loop {
        let n = sock.read(&mut buf).await.expect("read");
        data.extend_from_slice(&buf[..n]);
        let first = frames(&data).into_iter().next();
        if let Some((_, payload)) = first {
            let ev: Value = serde_json::from_slice(&payload).expect("session event");
            break ev["session_id"].as_str().unwrap_or("").to_string();
        }
    };
    sock.write_all(&masked_text_frame(
        send_msg("r1", "go", &[model]).to_string().as_bytes(),
    ))
    .await
    .expect("send");
    // Let tokens flow, then end the session from the side.
    while frames(&data).len() < 30 {
        let n = sock.read(&mut buf).await.expect("read");
        data.extend_from_slice(&buf[..n]);
    }
    let (status, _) = broker
        .call("DELETE", &format!("/api/sessions/{session_id}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close the socket"),
        }
    }
    let all = frames(&data);
    let (opcode, payload) = all.last().expect("frames");
    assert_eq!(*opcode, 0x8, "the last frame is the close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4001);
    let closes = all.iter().filter(|(op, _)| *op == 0x8).count();
    assert_eq!(closes, 1);
    let tokens = all
        .iter()
        .filter(|(op, p)| *op == 0x1 && p.windows(7).any(|w| w == b"\"token\""))
        .count();
    assert!(tokens > 10, "events streamed before the close ({tokens})");
}

/// The `resync` snapshot carries each model's token arrival times (offsets from the `ack`'s `ts`,
/// text lengths in UTF-16 units), so the compare page redraws its token timeline exactly as the
/// events drew it.
#[actix_rt::test]
async fn a_resync_snapshot_carries_the_token_arrival_times() {
    let model = "t-d5-w30";
    let (broker, _m) = setup(&[model], &[("SWITCHBOARD_EVENT_BUFFER", "5")]).await;
    let (mut ws, session_id) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    drop(ws);
    let ts = |e: &Value| e["ts"].as_u64().unwrap_or(0);
    let ack = ts(view.of("ack", None)[0]);
    let tokens = view.of("token", Some(model));
    let offsets: Vec<u64> = tokens.iter().map(|e| ts(e) - ack).collect();
    let lens: Vec<u64> = tokens
        .iter()
        .map(|e| e["content"].as_str().unwrap_or("").encode_utf16().count() as u64)
        .collect();
    let done = ts(view.of("done", Some(model))[0]);
    assert_eq!(tokens.len(), 30);

    let (mut ws, _) = resume(&broker.url, &session_id, 0).await;
    let resync = ws.event().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    let tl = &resync["snapshot"][model]["timeline"];
    assert_eq!(tl["started_ts"].as_u64(), Some(ack), "{tl}");
    let got = |k: &str| -> Vec<u64> {
        tl[k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    assert_eq!(got("token_offsets_ms"), offsets);
    assert_eq!(got("token_lens"), lens);
    assert_eq!(tl["ended_ms"].as_u64(), Some(done - ack));
}

/// SSE heartbeats come every interval while a turn streams too (SPEC §5 "every 10 s"), not
/// only after silence.
#[actix_rt::test]
async fn sse_heartbeats_keep_their_interval_while_events_stream() {
    let broker = Broker::start(&[("SWITCHBOARD_SSE_HEARTBEAT_S", "1")]);
    let m = mock();
    let model = "hb-d100-w35";
    broker.register(model, &m.url()).await;
    let (status, created) = post(&broker.url, "/api/sessions", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let sid = created["session_id"].as_str().unwrap_or("").to_string();
    let (status, body) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/messages"),
        json!({"request_id": "h1", "content": "go", "models": [model]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut view = View::default();
    let frames = sse_read(&broker.url, &sid, Some(0), &mut view, |_, v| {
        v["type"] == "complete"
    })
    .await;
    let tokens = frames.iter().filter(|(_, e)| e == "token").count();
    let beats = frames.iter().filter(|(_, e)| e == "heartbeat").count();
    assert!(tokens >= 30, "the turn streamed: {frames:?}");
    assert!(
        beats >= 2,
        "a heartbeat every second of a 3.5 s stream: {beats} in {frames:?}"
    );
}
