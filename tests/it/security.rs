//! SPEC §8's edge rules against the real binary (issue 16's attacks, issue 10's conventions):
//! Origin and Host, CORS, the guessing throttle, visible refusals, untrusted text, 405, and what
//! a backend's redirect turns into.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::wsclient::*;

/// `host:port` of a broker URL.
fn authority(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// A raw HTTP/1.1 exchange: `head` lines (without the request line's CRLF or the blank line) and
/// a body. Returns the status, the response head and the body (by Content-Length). Reads only
/// the head of a 101.
fn raw(
    base: &str,
    request_line: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut sock = TcpStream::connect(authority(base)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{request_line}\r\n");
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if !has_host {
        req.push_str(&format!("Host: {}\r\n", authority(base)));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    sock.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while status != 101 && body.len() < len {
        let n = sock.read(&mut chunk).expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    (status, head, String::from_utf8_lossy(&body).to_string())
}

/// The header `name` of a raw response head.
fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn code_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_error_shape(&v)
}

const WS_UPGRADE: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

fn ws_upgrade(base: &str, extra: &[(&str, &str)]) -> (u16, String, String) {
    let mut headers = WS_UPGRADE.to_vec();
    headers.extend_from_slice(extra);
    raw(base, "GET /ws HTTP/1.1", &headers, "")
}

/// `/metrics` as `series → value`.
async fn metrics(broker: &Broker) -> BTreeMap<String, f64> {
    let (status, _, body) = request_raw(
        "GET",
        &format!("{}/metrics", broker.url),
        &[("x-api-key", ADMIN)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn auth_failures(m: &BTreeMap<String, f64>, surface: &str, reason: &str) -> f64 {
    m.get(&format!(
        "switchboard_auth_failures_total{{surface=\"{surface}\",reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or(-1.0)
}

// ---------------------------------------------------------------- Origin and Host

#[actix_rt::test]
async fn a_foreign_origin_cannot_open_a_websocket_or_change_state() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("m", &m.url()).await;
    let own = broker.url.clone();

    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1:1",
        "https://evil.example:443",
    ] {
        let (status, head, body) = ws_upgrade(&broker.url, &[("Origin", origin)]);
        assert_eq!(status, 403, "/ws with Origin {origin}: {head}");
        assert_eq!(code_of(&body).as_deref(), Some("origin_not_allowed"));
    }
    // Same origin (the compare page) and no Origin (SDKs, scripts) are upgraded.
    assert_eq!(ws_upgrade(&broker.url, &[("Origin", &own)]).0, 101);
    assert_eq!(ws_upgrade(&broker.url, &[]).0, 101);

    // A cross-site "simple" POST (text/plain, no preflight) is refused before it is proxied.
    let chat_body = chat("m", false);
    for origin in ["http://evil.example", "null"] {
        let (status, _, body) = raw(
            &broker.url,
            "POST /v1/chat/completions HTTP/1.1",
            &[
                ("Origin", origin),
                ("Content-Type", "text/plain"),
                ("Connection", "close"),
            ],
            &chat_body,
        );
        assert_eq!(status, 403, "{body}");
        assert_eq!(code_of(&body).as_deref(), Some("origin_not_allowed"));
    }
    assert_eq!(
        m.stats().requests_by_path.get("/v1/chat/completions"),
        None,
        "nothing reached the backend"
    );
    // State-changing routes everywhere: sessions, admin (even with the key).
    let (status, _, _) = raw(
        &broker.url,
        "POST /api/sessions HTTP/1.1",
        &[("Origin", "http://evil.example"), ("Connection", "close")],
        "{}",
    );
    assert_eq!(status, 403);
    let (status, _, _) = raw(
        &broker.url,
        "DELETE /admin/register/00000000-0000-0000-0000-000000000000 HTTP/1.1",
        &[
            ("Origin", "http://evil.example"),
            ("X-API-Key", ADMIN),
            ("Connection", "close"),
        ],
        "",
    );
    assert_eq!(status, 403);
    // Reads are not state-changing; the same requests from the page's own origin pass.
    let (status, _, _) = raw(
        &broker.url,
        "GET /v1/models HTTP/1.1",
        &[("Origin", "http://evil.example"), ("Connection", "close")],
        "",
    );
    assert_eq!(status, 200);
    let (status, _, body) = raw(
        &broker.url,
        "POST /api/sessions HTTP/1.1",
        &[("Origin", &own), ("Connection", "close")],
        "{}",
    );
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = raw(
        &broker.url,
        "POST /v1/chat/completions HTTP/1.1",
        &[
            ("Origin", &own),
            ("Content-Type", "application/json"),
            ("Connection", "close"),
        ],
        &chat_body,
    );
    assert_eq!(status, 200, "{body}");
    let m = metrics(&broker).await;
    assert!(auth_failures(&m, "ws", "origin") >= 4.0, "{m:?}");
    assert!(
        broker
            .logs()
            .contains("auth surface=ws ip=127.0.0.1 refused: foreign Origin"),
        "{}",
        broker.logs()
    );
}

#[actix_rt::test]
async fn a_local_broker_answers_only_its_own_hosts() {
    let broker = Broker::start(&[("SWITCHBOARD_ALLOWED_HOSTS", "box.lan, nas:9000")]);
    let port = broker.url.rsplit(':').next().unwrap_or("0").to_string();
    for (line, body) in [
        ("GET / HTTP/1.1", ""),
        ("GET /health HTTP/1.1", ""),
        ("POST /api/sessions HTTP/1.1", "{}"),
        ("GET /ws HTTP/1.1", ""),
    ] {
        for host in [
            format!("evil.example:{port}"),
            "evil.example".into(),
            format!("0.0.0.0:{port}"),
        ] {
            let (status, _, resp) = raw(
                &broker.url,
                line,
                &[("Host", &host), ("Connection", "close")],
                body,
            );
            assert_eq!(status, 403, "{line} Host {host}: {resp}");
            assert_eq!(code_of(&resp).as_deref(), Some("host_not_allowed"));
        }
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "box.lan".into(),
        format!("box.lan:{port}"),
        "nas:9000".into(),
    ] {
        let (status, _, resp) = raw(
            &broker.url,
            "GET /health HTTP/1.1",
            &[("Host", &host), ("Connection", "close")],
            "",
        );
        assert_eq!(status, 200, "Host {host}: {resp}");
    }
    let m = metrics(&broker).await;
    assert!(auth_failures(&m, "ui", "host") >= 3.0, "{m:?}");

    // Public mode has no Host rule (it is reached by its public name).
    let public = Broker::start(&[
        ("SWITCHBOARD_HOST", "0.0.0.0"),
        ("SWITCHBOARD_INSECURE_PUBLIC", "1"),
    ]);
    let url = public.url.replace("0.0.0.0", "127.0.0.1");
    let (status, _, _) = raw(
        &url,
        "GET /health HTTP/1.1",
        &[("Host", "switchboard.example"), ("Connection", "close")],
        "",
    );
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------- CORS

#[actix_rt::test]
async fn cors_for_listed_origins_on_the_api_routes_only() {
    let m = mock();
    let broker = Broker::start(&[(
        "SWITCHBOARD_CORS_ORIGINS",
        "https://app.example, http://localhost:3000",
    )]);
    broker.register("m", &m.url()).await;
    let preflight = |path: &str, origin: &str| {
        raw(
            &broker.url,
            &format!("OPTIONS {path} HTTP/1.1"),
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
                ("Connection", "close"),
            ],
            "",
        )
    };
    for path in [
        "/v1/chat/completions",
        "/api/sessions",
        "/api/sessions/x/messages",
        "/health",
    ] {
        let (status, head, _) = preflight(path, "https://app.example");
        assert_eq!(status, 204, "{path}: {head}");
        assert_eq!(
            head_value(&head, "access-control-allow-origin").as_deref(),
            Some("https://app.example")
        );
        let methods = head_value(&head, "access-control-allow-methods").unwrap_or_default();
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{methods}"
        );
        let allowed = head_value(&head, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for h in [
            "authorization",
            "content-type",
            "x-request-id",
            "last-event-id",
        ] {
            assert!(allowed.contains(h), "{h} not in {allowed}");
        }
        assert!(head_value(&head, "vary").is_some_and(|v| v.contains("Origin")));
    }
    // An actual request from the allowed origin: the page may read the broker's headers.
    let (status, head, body) = raw(
        &broker.url,
        "POST /v1/chat/completions HTTP/1.1",
        &[
            ("Origin", "http://localhost:3000"),
            ("Content-Type", "application/json"),
            ("Connection", "close"),
        ],
        &chat("m", false),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        head_value(&head, "access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );
    let expose = head_value(&head, "access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in [
        "x-switchboard-backend",
        "x-switchboard-route",
        "x-request-id",
        "retry-after",
    ] {
        assert!(expose.contains(h), "{h} not in {expose}");
    }
    // Another origin: no CORS headers (and a POST from it is refused).
    let (status, head, _) = preflight("/v1/chat/completions", "https://evil.example");
    assert_ne!(status, 204);
    assert!(
        head_value(&head, "access-control-allow-origin").is_none(),
        "{head}"
    );
    let (status, head, _) = raw(
        &broker.url,
        "GET /health HTTP/1.1",
        &[("Origin", "https://evil.example"), ("Connection", "close")],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        head_value(&head, "access-control-allow-origin").is_none(),
        "{head}"
    );
    // Never on /admin/*, /metrics, /debug/* — not even for a listed origin.
    for path in ["/admin/servers", "/metrics", "/debug/memory"] {
        let (_, head, _) = preflight(path, "https://app.example");
        assert!(
            head_value(&head, "access-control-allow-origin").is_none(),
            "{path}: {head}"
        );
        let (status, head, _) = raw(
            &broker.url,
            &format!("GET {path} HTTP/1.1"),
            &[
                ("Origin", "https://app.example"),
                ("X-API-Key", ADMIN),
                ("Connection", "close"),
            ],
            "",
        );
        assert_eq!(status, 200, "{path}");
        assert!(
            head_value(&head, "access-control-allow-origin").is_none(),
            "{path}: {head}"
        );
    }
    // A listed origin may open /ws too.
    assert_eq!(
        ws_upgrade(&broker.url, &[("Origin", "https://app.example")]).0,
        101
    );

    // Off by default: no CORS headers at all.
    let plain = Broker::start(&[]);
    let (_, head, _) = raw(
        &plain.url,
        "OPTIONS /v1/chat/completions HTTP/1.1",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Connection", "close"),
        ],
        "",
    );
    assert!(
        head_value(&head, "access-control-allow-origin").is_none(),
        "{head}"
    );
}

// ---------------------------------------------------------------- guessing and refusals

/// A broker with every credential set, behind a "proxy" (X-Forwarded-For picks the client IP).
fn locked_broker() -> Broker {
    Broker::start(&[
        ("SWITCHBOARD_UI_PASSWORD", "ui-password-01"),
        ("SWITCHBOARD_API_KEYS", "client-key-000001"),
        ("SWITCHBOARD_PUSH_CALLBACK_URL", "http://127.0.0.1:9/unused"),
        ("SWITCHBOARD_PUSH_SECRET", "push-secret-00001"),
        ("SWITCHBOARD_TRUST_PROXY", "1"),
    ])
}

const WRONG: &str = "WRONG-SECRET-4242";

/// One attempt with a wrong credential on `surface` from `ip`: the status (101 for /ws).
fn wrong_attempt(broker: &Broker, surface: &str, ip: &str) -> (u16, String, String) {
    let bad_basic = basic("admin", WRONG);
    let bearer = format!("Bearer {WRONG}");
    let xff = ("X-Forwarded-For", ip);
    let close = ("Connection", "close");
    match surface {
        "admin" => raw(
            &broker.url,
            "GET /admin/servers HTTP/1.1",
            &[("X-API-Key", WRONG), xff, close],
            "",
        ),
        "v1" => raw(
            &broker.url,
            "POST /v1/chat/completions HTTP/1.1",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
                xff,
                close,
            ],
            &chat("m", false),
        ),
        "ui" => raw(
            &broker.url,
            "GET /dashboard HTTP/1.1",
            &[("Authorization", &bad_basic), xff, close],
            "",
        ),
        "sessions" => raw(
            &broker.url,
            "POST /api/sessions HTTP/1.1",
            &[("Authorization", &bad_basic), xff, close],
            "{}",
        ),
        "push" => raw(
            &broker.url,
            "POST /internal/send HTTP/1.1",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
                xff,
                close,
            ],
            r#"{"token":"t","event":{"data":1}}"#,
        ),
        "ws" => ws_upgrade(&broker.url, &[("Authorization", &bad_basic), xff]),
        other => panic!("no surface {other}"),
    }
}

#[actix_rt::test]
async fn the_eleventh_failed_credential_in_a_minute_is_429_on_every_surface() {
    let broker = locked_broker();
    let refused = [
        ("admin", 403),
        ("v1", 401),
        ("ui", 401),
        ("sessions", 401),
        ("push", 401),
        ("ws", 101),
    ];
    for (i, (surface, first_status)) in refused.iter().enumerate() {
        let ip = format!("198.51.100.{}", i + 1);
        for n in 1..=10 {
            let (status, _, body) = wrong_attempt(&broker, surface, &ip);
            assert_eq!(status, *first_status, "{surface} attempt {n}: {body}");
            if *surface == "v1" {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
                assert_eq!(v["error"]["code"], "invalid_api_key", "{body}");
            }
        }
        for _ in 0..3 {
            let (status, head, body) = wrong_attempt(&broker, surface, &ip);
            assert_eq!(status, 429, "{surface} 11th attempt: {head}{body}");
            assert_eq!(code_of(&body).as_deref(), Some("rate_limit_exceeded"));
            let retry: u64 = head_value(&head, "retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
        let logs = broker.logs();
        let throttled = logs
            .lines()
            .filter(|l| l.contains(&format!("ip={ip} throttled")))
            .count();
        assert_eq!(throttled, 1, "one WARN line per IP and minute:\n{logs}");
    }
    // While throttled even the right credential is refused (a guess must not be confirmed)...
    let (status, _, _) = raw(
        &broker.url,
        "GET /admin/servers HTTP/1.1",
        &[
            ("X-API-Key", ADMIN),
            ("X-Forwarded-For", "198.51.100.1"),
            ("Connection", "close"),
        ],
        "",
    );
    assert_eq!(status, 429);
    // ...and the throttle is per client: another address is served.
    let (status, _, _) = raw(
        &broker.url,
        "GET /admin/servers HTTP/1.1",
        &[
            ("X-API-Key", ADMIN),
            ("X-Forwarded-For", "198.51.100.99"),
            ("Connection", "close"),
        ],
        "",
    );
    assert_eq!(status, 200);
    // Failures from one address on several surfaces add up.
    let ip = "198.51.100.77";
    for surface in ["admin", "v1", "ui", "sessions", "push"]
        .iter()
        .cycle()
        .take(10)
    {
        assert_ne!(wrong_attempt(&broker, surface, ip).0, 429);
    }
    assert_eq!(wrong_attempt(&broker, "ws", ip).0, 429);
    let m = metrics(&broker).await;
    for surface in ["admin", "v1", "ui", "sessions", "push", "ws"] {
        let key = format!("switchboard_rate_limited_total{{surface=\"{surface}\"}}");
        assert!(m.get(&key).is_some_and(|n| *n >= 1.0), "{key}: {m:?}");
    }
    assert!(
        !broker.logs().contains(WRONG),
        "a presented secret was logged"
    );
}

#[actix_rt::test]
async fn a_wrong_key_on_each_surface_moves_its_counter_and_logs_one_warn_line() {
    let broker = locked_broker();
    let before = metrics(&broker).await;
    for surface in ["admin", "v1", "ws", "push"] {
        assert_eq!(auth_failures(&before, surface, "wrong"), 0.0, "{surface}");
    }
    for (i, surface) in ["v1", "admin", "ws", "push"].iter().enumerate() {
        let ip = format!("203.0.113.{}", i + 1);
        let (status, _, _) = wrong_attempt(&broker, surface, &ip);
        assert_ne!(status, 429);
        let after = metrics(&broker).await;
        assert_eq!(
            auth_failures(&after, surface, "wrong"),
            1.0,
            "{surface}: {after:?}"
        );
        let logs = broker.logs();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(&format!("auth surface={surface} ip={ip}")))
            .collect();
        assert_eq!(lines.len(), 1, "{surface}:\n{logs}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("wrong"),
            "{}",
            lines[0]
        );
    }
    // Missing credentials are refusals too (counted as such, not as guesses).
    let (status, _, _) = raw(
        &broker.url,
        "GET /admin/stats HTTP/1.1",
        &[("Connection", "close")],
        "",
    );
    assert_eq!(status, 403);
    let (status, _, _) = raw(
        &broker.url,
        "GET /v1/models HTTP/1.1",
        &[("Connection", "close")],
        "",
    );
    assert_eq!(status, 401);
    let m = metrics(&broker).await;
    assert_eq!(auth_failures(&m, "admin", "missing"), 1.0);
    assert_eq!(auth_failures(&m, "v1", "missing"), 1.0);
    let logs = broker.logs();
    assert!(!logs.contains(WRONG), "the wrong key was logged:\n{logs}");
    assert!(!logs.contains(&basic("admin", WRONG)["Basic ".len()..]));
}

// ---------------------------------------------------------------- untrusted text

#[actix_rt::test]
async fn unregistered_model_names_do_not_grow_metrics() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("known", &m.url()).await;
    let size = || async {
        let (_, _, body) = request_raw(
            "GET",
            &format!("{}/metrics", broker.url),
            &[("x-api-key", ADMIN)],
            None,
        )
        .await;
        body.len()
    };
    let before = size().await;
    for i in 0..15 {
        let name = format!("{i}{}", "x".repeat(100_000));
        let (status, _) = broker
            .call(
                "POST",
                "/v1/chat/completions",
                &[],
                Some(chat(&name, false)),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let grown = size().await.saturating_sub(before);
    assert!(grown < 1024 * 1024, "/metrics grew by {grown} bytes");
    assert!(grown < 4096, "/metrics grew by {grown} bytes");
    let m = metrics(&broker).await;
    assert_eq!(
        m.get("switchboard_requests_total{route=\"/v1/chat/completions\",model=\"unknown\",backend=\"-\",status=\"404\"}"),
        Some(&15.0)
    );
}

#[actix_rt::test]
async fn control_characters_in_ids_and_model_names_are_400_and_forge_no_log_line() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("m", &m.url()).await;
    let forged = "r1\n[2025-01-01T00:00:00Z WARN  switchboard::auth] FORGED LINE";

    // /v1: the model name and the X-Request-Id header.
    let body =
        json!({"model": format!("m{forged}"), "messages": [{"role": "user", "content": "hi"}]});
    let (status, err) = broker
        .call("POST", "/v1/chat/completions", &[], Some(body.to_string()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "model");
    let (status, err) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[("x-request-id", "abc\tdef")],
            Some(chat("m", false)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "X-Request-Id");

    // Sessions over REST: the request id, the model names, the session id in the path.
    let (status, created) = broker
        .call("POST", "/api/sessions", &[], Some("{}".into()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = created["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = format!("/api/sessions/{sid}/messages");
    let (status, err) = broker
        .call(
            "POST",
            &path,
            &[],
            Some(json!({"request_id": forged, "content": "hi", "models": ["m"]}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "request_id");
    let (status, err) = broker
        .call(
            "POST",
            &path,
            &[],
            Some(json!({"request_id": "r2", "content": "hi", "models": [forged]}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "models");
    let (status, err) = broker
        .call(
            "POST",
            &format!("/api/sessions/{sid}/cancel"),
            &[],
            Some(json!({"request_id": forged}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = broker.call("GET", "/api/sessions/ab%0Acd", &[], None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "session_id");

    // Sessions over WebSocket: refused with an error event, nothing logged verbatim.
    let (mut ws, _) = Ws::new_session(&broker.url).await;
    ws.send(send_msg(forged, "hi", &["m"])).await;
    let ev = ws.event().await;
    assert_eq!(ev["type"], "error", "{ev}");
    assert_eq!(ev["code"], "invalid_message", "{ev}");
    ws.send(json!({"type": "cancel", "request_id": forged}))
        .await;
    let ev = ws.event().await;
    assert_eq!(ev["code"], "invalid_message", "{ev}");
    // The connection still works.
    ws.send(send_msg("ok-1", "hi", &["m"])).await;
    read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(10)).await;

    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let logs = broker.logs();
    assert!(
        !logs.contains("FORGED LINE"),
        "a forged line reached the log:\n{logs}"
    );
}

// ---------------------------------------------------------------- HTTP conventions

#[actix_rt::test]
async fn a_known_path_with_another_method_is_405_with_allow() {
    let broker = Broker::start(&[]);
    let (status, headers, body) = request_raw(
        "GET",
        &format!("{}/v1/chat/completions", broker.url),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let err: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        assert_error_shape(&err).as_deref(),
        Some("method_not_allowed")
    );
    assert_eq!(
        headers
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    // Unknown paths stay 404.
    let (status, _, _) = request_raw("GET", &format!("{}/v1/nothing", broker.url), &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every registered route: another method gets 405 whose Allow is exactly its methods.
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in crate::docs::routes_in_source() {
        by_path
            .entry(path)
            .or_default()
            .insert(method.to_uppercase());
    }
    for (path, methods) in by_path {
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{model}", "m")
            .replace("{tail}", "a/b");
        let (status, headers, body) = request_raw(
            "PATCH",
            &format!("{}{concrete}", broker.url),
            &[("x-api-key", ADMIN)],
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "PATCH {path}: {}",
            String::from_utf8_lossy(&body)
        );
        let allow: BTreeSet<String> = headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(allow, methods, "Allow of {path}");
    }
}

/// A "backend" that answers every request with a redirect to an internal address.
fn redirecting_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let n = s.read(&mut buf).unwrap_or(0);
                // Health checks (GET /v1/models) pass; completions are redirected.
                let answer: &[u8] = if buf[..n].starts_with(b"GET ") {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\
                      Connection: close\r\n\r\n{\"object\":\"list\",\"data\":[]}"
                } else {
                    b"HTTP/1.1 302 Found\r\nLocation: http://10.1.2.3:8000/internal/secret\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer);
            });
        }
    });
    format!("http://{addr}")
}

#[actix_rt::test]
async fn a_backend_redirect_is_502_without_its_location() {
    let backend = redirecting_backend();
    let broker = Broker::start(&[]);
    let (status, rec) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "r", "endpoint_url": backend, "verify": false})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rec}");
    for stream in [false, true] {
        let (status, headers, body) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("r", stream)),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(headers.get("location").is_none());
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("10.1.2.3"), "{text}");
        assert_eq!(
            headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff")
        );
    }
}

#[actix_rt::test]
async fn models_show_their_owners_and_first_registration_time() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[]);
    let t0 = now_ms() / 1000;
    for (model, url, owner) in [
        ("shared", a.url(), Some("team-b")),
        ("shared", b.url(), Some("team-a")),
        ("solo", a.url(), None),
    ] {
        let mut body = json!({"model_name": model, "endpoint_url": url});
        if let Some(o) = owner {
            body["owner"] = json!(o);
        }
        let (status, rec) = broker
            .admin_json("POST", "/admin/register", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rec}");
        actix_rt::time::sleep(Duration::from_millis(1100)).await;
    }
    let (_, list) = broker.call("GET", "/v1/models", &[], None).await;
    let find = |id: &str| {
        list["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == id).cloned())
            .unwrap_or(Value::Null)
    };
    let shared = find("shared");
    assert_eq!(shared["owned_by"], "team-a,team-b");
    let created = shared["created"].as_u64().unwrap_or(0);
    assert!(
        (t0..=t0 + 1).contains(&created),
        "created {created}, start {t0}"
    );
    let solo = find("solo");
    assert_eq!(solo["owned_by"], "switchboard");
    assert!(solo["created"].as_u64().unwrap_or(0) >= t0 + 2, "{solo}");
    let (_, one) = broker.call("GET", "/v1/models/shared", &[], None).await;
    assert_eq!(one["owned_by"], "team-a,team-b");
}
