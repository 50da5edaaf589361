//! Operations: graceful shutdown, credentials on every protected route, rate limits, metrics,
//! secrets kept out of logs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::json;

use crate::harness::*;
use crate::wsclient::*;

#[actix_rt::test]
async fn sigterm_during_a_streaming_turn_sends_1001_exits_0_and_keeps_registrations() {
    let m = mock();
    let mut broker = Broker::start(&[("SWITCHBOARD_DRAIN_TIMEOUT_S", "2")]);
    let rec = broker.register("long-spaced-w200", &m.url()).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", "go", &["long-spaced-w200"])).await;
    let mut view = View::default();
    while view.of("token", None).len() < 2 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    // A proxied stream in flight too.
    let url = format!("{}/v1/chat/completions", broker.url);
    let proxied = actix_rt::spawn(async move {
        request_raw("POST", &url, &[], Some(chat("long-spaced-w200", true))).await
    });
    // And a WebSocket that has not sent its `hello` yet: it is told too.
    let mut silent = Ws::connect(&broker.url).await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    broker.terminate();
    assert_eq!(ws.close_code(Duration::from_secs(3)).await, Some(1001));
    assert_eq!(silent.close_code(Duration::from_secs(1)).await, Some(1001));
    let code = broker.wait_exit(Duration::from_secs(6));
    assert_eq!(code, Some(0), "exit code; logs:\n{}", broker.logs());
    assert!(
        started.elapsed() < Duration::from_secs(2 + 3),
        "took {:?}",
        started.elapsed()
    );
    let (status, _, body) = proxied.await.expect("proxied request");
    assert_eq!(status, StatusCode::OK);
    // Cancelled at the drain timeout, the stream still ends explicitly (SPEC §2).
    let text = String::from_utf8_lossy(&body);
    let last = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: "))
        .last()
        .unwrap_or("");
    let err: serde_json::Value =
        serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or_default();
    assert_eq!(err["error"]["code"], "shutdown", "last event: {last}");
    assert!(broker.logs().contains("SIGTERM received"));

    broker.restart();
    let (_, list) = broker.admin_json("GET", "/admin/servers", None).await;
    assert_eq!(
        list["servers"][0]["registration_id"],
        rec["registration_id"]
    );
}

#[actix_rt::test]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after() {
    let broker = Broker::start(&[("SWITCHBOARD_RATE_LIMIT_PER_MIN", "5")]);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..7 {
        let (status, headers, body) =
            request_raw("GET", &format!("{}/v1/models", broker.url), &[], None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let err: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(
                assert_error_shape(&err).as_deref(),
                Some("rate_limit_exceeded")
            );
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    let (status, _) = broker.call("GET", "/health", &[], None).await;
    assert_eq!(status, StatusCode::OK, "health is not rate limited");
}

#[actix_rt::test]
async fn every_protected_route_refuses_without_credentials_and_accepts_with_them() {
    let secrets = [
        ("SWITCHBOARD_UI_PASSWORD", "ui-pass-42"),
        ("SWITCHBOARD_API_KEYS", "client-key-42"),
    ];
    let broker = Broker::start(&secrets);
    let good_basic = basic("admin", "ui-pass-42");
    let bad_basic = basic("admin", "nope");
    for page in ["/", "/sse", "/dashboard"] {
        let (status, headers, _) =
            request_raw("GET", &format!("{}{page}", broker.url), &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
        assert!(headers.get("www-authenticate").is_some());
        let (status, _, _) = request_raw(
            "GET",
            &format!("{}{page}", broker.url),
            &[("authorization", &bad_basic)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
        let (status, headers, _) = request_raw(
            "GET",
            &format!("{}{page}", broker.url),
            &[("authorization", &good_basic)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            headers
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok()),
            Some("default-src 'self'; frame-ancestors 'none'")
        );
        assert_eq!(
            headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff")
        );
        assert_eq!(
            headers.get("referrer-policy").and_then(|v| v.to_str().ok()),
            Some("no-referrer")
        );
    }
    let (status, _) = broker
        .call("POST", "/api/sessions", &[], Some("{}".into()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, created) = broker
        .call(
            "POST",
            "/api/sessions",
            &[("authorization", &good_basic)],
            Some("{}".into()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let mut ws = Ws::connect(&broker.url).await;
    assert_eq!(
        ws.close_code(Duration::from_secs(3)).await,
        Some(1008),
        "/ws without credentials"
    );

    for (path, good) in [("/v1/models", "Bearer client-key-42")] {
        let (status, _) = broker.call("GET", path, &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = broker
            .call("GET", path, &[("authorization", "Bearer ui-pass-42")], None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = broker
            .call("GET", path, &[("authorization", good)], None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    for path in [
        "/metrics",
        "/debug/memory",
        "/admin/servers",
        "/admin/stats",
    ] {
        let (status, _) = broker.call("GET", path, &[], None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _) = broker
            .call("GET", path, &[("x-api-key", "client-key-42")], None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _) = broker
            .call("GET", path, &[("x-api-key", ADMIN)], None)
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = broker.call("GET", "/health", &[], None).await;
    assert_eq!(status, StatusCode::OK, "/health needs no credentials");
}

/// Parses Prometheus text into `name{labels}` → value, checking every line's syntax.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = key.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        out.insert(key.to_string(), v);
    }
    out
}

#[actix_rt::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let m = mock();
    let broker = Broker::start(&[]);
    let rec = broker.register("met", &m.url()).await;
    let get = || async {
        let (status, headers, body) = request_raw(
            "GET",
            &format!("{}/metrics", broker.url),
            &[("x-api-key", ADMIN)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/plain")));
        parse_prometheus(&String::from_utf8_lossy(&body))
    };
    let before = get().await;
    for family in [
        "switchboard_streams_in_flight",
        "switchboard_sessions",
        "switchboard_connections",
        "switchboard_cancellations_total",
        "switchboard_resumes_total",
        "switchboard_replayed_events_total",
        "switchboard_ttft_seconds_count",
    ] {
        assert!(before.contains_key(family), "missing {family}");
    }
    let id = rec["registration_id"].as_str().unwrap_or("");
    assert_eq!(
        before.get(&format!(
            "switchboard_backend_up{{backend=\"{id}\",model=\"met\"}}"
        )),
        Some(&1.0)
    );
    for _ in 0..3 {
        let (status, _) = broker
            .call(
                "POST",
                "/v1/chat/completions",
                &[],
                Some(chat("met", false)),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("nope", false)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", "hi", &["met"])).await;
    read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(5)).await;
    let after = get().await;
    let key = format!("switchboard_requests_total{{route=\"/v1/chat/completions\",model=\"met\",backend=\"{id}\",status=\"200\"}}");
    assert_eq!(after.get(&key), Some(&3.0), "{key}");
    assert_eq!(after.get("switchboard_requests_total{route=\"/v1/chat/completions\",model=\"unknown\",backend=\"-\",status=\"404\"}"), Some(&1.0));
    assert_eq!(
        after.get("switchboard_request_duration_seconds_count{route=\"/v1/chat/completions\"}"),
        Some(&4.0)
    );
    assert_eq!(after.get("switchboard_ttft_seconds_count"), Some(&1.0));
    assert_eq!(after.get("switchboard_sessions"), Some(&1.0));
    assert_eq!(after.get("switchboard_connections"), Some(&1.0));
    assert!(
        after.get(&format!(
            "switchboard_backend_requests_total{{backend=\"{id}\",model=\"met\"}}"
        )) >= Some(&4.0)
    );
}

#[actix_rt::test]
async fn logs_never_contain_secrets() {
    let m = mock();
    let secrets = [
        ("SWITCHBOARD_UI_PASSWORD", "sekrit-ui-pw"),
        ("SWITCHBOARD_API_KEYS", "sekrit-client-1,sekrit-client-2"),
        ("SWITCHBOARD_PUSH_SECRET", "sekrit-push"),
        ("SWITCHBOARD_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ];
    let broker = Broker::start(&secrets);
    let (status, _) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(
                json!({"model_name": "sec", "endpoint_url": m.url(), "api_key": "sekrit-backend"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for auth in ["Bearer sekrit-client-1", "Bearer sekrit-wrong-key"] {
        broker
            .call(
                "POST",
                "/v1/chat/completions",
                &[("authorization", auth)],
                Some(chat("sec", true)),
            )
            .await;
    }
    broker
        .call(
            "GET",
            "/admin/servers",
            &[("x-api-key", "sekrit-wrong-admin")],
            None,
        )
        .await;
    broker
        .call(
            "GET",
            "/",
            &[("authorization", &basic("admin", "sekrit-ui-pw"))],
            None,
        )
        .await;
    broker
        .call(
            "GET",
            "/",
            &[("authorization", &basic("admin", "sekrit-wrong-pw"))],
            None,
        )
        .await;
    let logs = broker.logs();
    assert!(logs.contains("\"level\""), "JSON log lines");
    for secret in ["sekrit", ADMIN, "c2Vrcml0"] {
        assert!(!logs.contains(secret), "log contains {secret}:\n{logs}");
    }
}

#[actix_rt::test]
async fn debug_memory_and_limitations() {
    let broker = Broker::start(&[]);
    let (status, mem) = broker
        .call("GET", "/debug/memory", &[("x-api-key", ADMIN)], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(mem["rss_mb"].as_f64().is_some_and(|r| r > 1.0), "{mem}");
    assert_eq!(mem["session_count"], 0);
    assert!(mem["connections"].is_u64() && mem["streams_in_flight"].is_u64());
    let (status, lim) = broker.call("GET", "/api/limitations", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let items = lim["limitations"].as_array().cloned().unwrap_or_default();
    assert!(items.len() >= 3);
    assert!(items
        .iter()
        .all(|i| i["limitation"].is_string() && i["workaround"].is_string()));
}
