//! The WebSocket connection itself (SPEC §4.3, §8): oversized frames refused at the header,
//! protocol errors closed with 1002, and TCP closed at once after a closing handshake.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::resume::{find_close_code, frames, masked_text_frame, raw_upgrade};

/// A raw client that said hello and read its `session` event.
async fn attached(base: &str) -> TcpStream {
    let mut sock = raw_upgrade(base, None).await;
    sock.write_all(&masked_text_frame(br#"{"type":"hello"}"#))
        .await
        .expect("hello");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while frames(&data).is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("session event in time")
            .expect("read");
        assert!(n > 0, "closed before the session event");
        data.extend_from_slice(&buf[..n]);
    }
    sock
}

/// Reads until a close frame arrives; its code and when it arrived.
async fn read_close(sock: &mut TcpStream, timeout: Duration) -> Option<(u16, Instant)> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(code) = find_close_code(&data) {
            return Some((code, Instant::now()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Waits for end-of-file (or a reset) on `sock`; how long it took.
async fn eof_after(sock: &mut TcpStream, since: Instant, timeout: Duration) -> Option<Duration> {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = since + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A masked frame header (no payload) with `first` (FIN, opcode) announcing `len` bytes.
fn masked_header(first: u8, len: u64) -> Vec<u8> {
    let mut f = vec![first, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[9, 8, 7, 6]);
    f
}

/// A masked close frame with `code`.
fn masked_close(code: u16) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x88u8, 0x80 | 2];
    f.extend_from_slice(&mask);
    f.extend(
        code.to_be_bytes()
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i]),
    );
    f
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_frame_header_announcing_256_mib_gets_1009_at_once_and_memory_stays_flat() {
    let broker = Broker::start(&[]);
    let mut sock = attached(&broker.url).await;
    let before = rss_kb(broker.pid());
    let (mut rd, mut wr) = sock.split();
    wr.write_all(&masked_header(0x81, 1 << 28))
        .await
        .expect("header");
    let sent = Instant::now();
    // Keep streaming payload (up to 16 MiB) while reading, as an attacker would.
    let writer = async {
        let chunk = vec![0u8; 256 * 1024];
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(500), wr.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    };
    let reader = async {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(code) = find_close_code(&data) {
                return Some((code, sent.elapsed()));
            }
            match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => data.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    };
    let ((), close) = tokio::join!(writer, reader);
    let (code, took) = close.expect("a close frame");
    assert_eq!(code, 1009);
    assert!(took < Duration::from_millis(100), "1009 after {took:?}");
    let grown = rss_kb(broker.pid()).saturating_sub(before);
    assert!(grown < 5 * 1024, "RSS grew by {grown} kB");
}

#[actix_rt::test]
async fn protocol_errors_close_with_1002() {
    let broker = Broker::start(&[]);
    let unmasked = vec![0x81u8, 0x02, b'h', b'i'];
    let mut reserved = masked_text_frame(b"hi");
    reserved[0] |= 0x40;
    let mut bad_opcode = masked_text_frame(b"hi");
    bad_opcode[0] = 0x83;
    for (name, frame) in [
        ("unmasked", unmasked),
        ("reserved bits", reserved),
        ("bad opcode", bad_opcode),
    ] {
        let mut sock = attached(&broker.url).await;
        sock.write_all(&frame).await.expect("frame");
        let close = read_close(&mut sock, Duration::from_secs(2)).await;
        assert_eq!(close.map(|c| c.0), Some(1002), "{name}");
        let (_, at) = close.expect("close");
        assert!(
            eof_after(&mut sock, at, Duration::from_secs(2))
                .await
                .is_some(),
            "{name}: the connection ends"
        );
    }
}

/// RFC 6455 §7.1.1: once the closing handshake is done the server closes TCP first, at once.
#[actix_rt::test]
async fn tcp_closes_within_50ms_after_the_closing_handshake_either_side() {
    let broker = Broker::start(&[]);
    // Client-initiated: our close frame, its answer, then EOF.
    let mut sock = attached(&broker.url).await;
    sock.write_all(&masked_close(1000)).await.expect("close");
    let (code, at) = read_close(&mut sock, Duration::from_secs(2))
        .await
        .expect("close answered");
    assert_eq!(code, 1000);
    let took = eof_after(&mut sock, at, Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(50)),
        "client-initiated: EOF after {took:?}"
    );

    // Server-initiated: 4400 (not a hello), 4001 (unknown session).
    for (first, want) in [
        (br#"{"type":"ping"}"#.to_vec(), 4400),
        (
            br#"{"type":"hello","session_id":"no-such-session"}"#.to_vec(),
            4001,
        ),
    ] {
        let mut sock = raw_upgrade(&broker.url, None).await;
        sock.write_all(&masked_text_frame(&first))
            .await
            .expect("first");
        let (code, at) = read_close(&mut sock, Duration::from_secs(2))
            .await
            .expect("close");
        assert_eq!(code, want);
        // The client answers the close, as RFC 6455 clients do.
        let _ = sock.write_all(&masked_close(code)).await;
        let took = eof_after(&mut sock, at, Duration::from_secs(3)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(50)),
            "{want}: EOF after {took:?}"
        );
    }

    // Server-initiated by SIGTERM: 1001.
    let mut sock = attached(&broker.url).await;
    broker.terminate();
    let (code, at) = read_close(&mut sock, Duration::from_secs(3))
        .await
        .expect("close on SIGTERM");
    assert_eq!(code, 1001);
    let took = eof_after(&mut sock, at, Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(50)),
        "1001: EOF after {took:?}"
    );
}

/// A flood of `hello`s that create sessions is rate limited per IP (close 4029), so it cannot
/// push a detached session out at the session cap.
#[actix_rt::test]
async fn new_session_hellos_are_rate_limited_and_cannot_evict_a_detached_session() {
    let broker = Broker::start(&[
        ("SWITCHBOARD_RATE_LIMIT_PER_MIN", "5"),
        ("SWITCHBOARD_MAX_SESSIONS", "8"),
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "100"),
    ]);
    let (ws, kept) = crate::wsclient::Ws::new_session(&broker.url).await;
    drop(ws); // detached: the first candidate for eviction at the cap
    let (mut created, mut refused) = (0, 0);
    for _ in 0..20 {
        let mut ws = crate::wsclient::Ws::connect(&broker.url).await;
        ws.send(serde_json::json!({"type": "hello"})).await;
        match ws.next(Duration::from_secs(3)).await {
            crate::wsclient::Got::Event(ev) if ev["type"] == "session" => created += 1,
            crate::wsclient::Got::Closed(code) => {
                assert_eq!(code, Some(4029));
                refused += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(
        (created, refused),
        (4, 16),
        "5 a minute, one used by the kept session"
    );
    let mut ws = crate::wsclient::Ws::connect(&broker.url).await;
    ws.send(serde_json::json!({"type": "hello", "session_id": kept}))
        .await;
    let s = ws.event().await;
    assert_eq!(s["type"], "session", "{s}");
    assert_eq!(s["resumed"], true);
}

/// A masked frame with `first` (FIN bit and opcode) and a payload of up to 64 KiB.
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked_text_frame(payload);
    f[0] = first;
    f
}

/// Fragmented messages (RFC 6455 §5.4) are reassembled: a `ping` split over two frames gets its
/// `pong`; fragments adding up to more than 1 MiB get 1009 like one big frame.
#[actix_rt::test]
async fn a_fragmented_message_is_reassembled_and_its_total_is_limited() {
    let broker = Broker::start(&[]);
    let mut sock = attached(&broker.url).await;
    // Text, FIN=0 (0x01), then a continuation with FIN=1 (0x80).
    sock.write_all(&masked_frame(0x01, br#"{"type":"#))
        .await
        .expect("first");
    sock.write_all(&masked_frame(0x80, br#""ping"}"#))
        .await
        .expect("last");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !frames(&data)
        .iter()
        .any(|(_, p)| String::from_utf8_lossy(p).contains("\"pong\""))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sock.read(&mut buf))
            .await
            .expect("a pong for the fragmented ping")
            .expect("read");
        assert!(n > 0, "closed instead of answering");
        data.extend_from_slice(&buf[..n]);
    }

    // 60 KiB fragments, 41 of them: over the 1 MiB limit in all.
    let chunk = vec![b'a'; 60 * 1024];
    sock.write_all(&masked_frame(0x01, &chunk))
        .await
        .expect("first");
    let mut closed = None;
    for _ in 0..40 {
        if sock.write_all(&masked_frame(0x00, &chunk)).await.is_err() {
            break;
        }
    }
    if let Some((code, _)) = read_close(&mut sock, Duration::from_secs(5)).await {
        closed = Some(code);
    }
    assert_eq!(closed, Some(1009), "fragments over 1 MiB in all");
}
