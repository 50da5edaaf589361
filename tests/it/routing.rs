//! Routing that knows model servers (SPEC §2.1): capacity and the per-model queue, thread and
//! prefix affinity, the route header and `start.route`, failover under every policy, and the
//! validation of `max_concurrency`.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::harness::*;
use crate::wsclient::*;

/// A mock that counts how many requests it serves at once (slots to spare, no cache).
fn counting_mock() -> mockllm::MockHandle {
    mockllm::MockServer::builder()
        .worker_threads(2)
        .server_model(mockllm::capacity::ServerModel {
            slots: 1000,
            prefill_per_token: Duration::ZERO,
            cache_tokens: 0,
        })
        .spawn()
        .expect("mock")
}

async fn register_limited(broker: &Broker, model: &str, url: &str, limit: Option<u32>) -> String {
    let (status, body) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": model, "endpoint_url": url, "max_concurrency": limit})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["registration_id"]
        .as_str()
        .expect("registration_id")
        .to_string()
}

thread_local! {
    /// One client for all calls of a test thread: building an awc client loads the TLS
    /// connector (tens of ms in a debug build), too slow to do 100 times at once.
    static CLIENT: awc::Client = client();
}

/// A chat request; returns status, `X-Switchboard-Backend`, `X-Switchboard-Route`, body.
async fn chat_call(broker: &Broker, body: Value) -> (StatusCode, String, String, Value) {
    let req = CLIENT
        .with(|c| c.post(format!("{}/v1/chat/completions", broker.url)))
        .insert_header(("content-type", "application/json"));
    let mut resp = req
        .send_body(body.to_string())
        .await
        .expect("request failed");
    let bytes = resp.body().limit(1 << 20).await.expect("body");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let retry = h("retry-after");
    let mut json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !retry.is_empty() {
        json["retry_after_header"] = json!(retry);
    }
    (
        status,
        h("x-switchboard-backend"),
        h("x-switchboard-route"),
        json,
    )
}

fn keyed(model: &str, key: &str) -> Value {
    json!({"model": model, "prompt_cache_key": key,
           "messages": [{"role": "user", "content": "hello there"}]})
}

#[actix_rt::test]
async fn hundred_concurrent_requests_never_exceed_max_concurrency_and_all_are_served() {
    let (m1, m2) = (counting_mock(), counting_mock());
    let broker = Broker::start(&[("SWITCHBOARD_WORKERS", "2")]);
    let model = "cap-ttft40";
    register_limited(&broker, model, &m1.url(), Some(2)).await;
    register_limited(&broker, model, &m2.url(), Some(2)).await;
    let started = Instant::now();
    let calls = (0..100).map(|i| {
        let body =
            json!({"model": model, "messages": [{"role": "user", "content": format!("q{i}")}]});
        chat_call(&broker, body)
    });
    let results = join_all(calls).await;
    for (status, _, _, body) in &results {
        assert_eq!(
            *status,
            StatusCode::OK,
            "{body}; took {:?}; logs:\n{}",
            started.elapsed(),
            broker.logs()
        );
    }
    let (s1, s2) = (
        m1.server_stats().expect("stats"),
        m2.server_stats().expect("stats"),
    );
    assert!(s1.max_active <= 2 && s2.max_active <= 2, "{s1:?} {s2:?}");
    assert_eq!(s1.requests + s2.requests, 100);
    // 100 requests of ≥ 40 ms through 4 slots: they queued and were served as slots freed.
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (_, metrics) = broker.admin_json("GET", "/admin/stats", None).await;
    assert_eq!(metrics["queues"][model], 0, "{metrics}");
    let text = metrics_text(&broker).await;
    assert!(
        text.contains(&format!(
            "switchboard_route_queue_wait_seconds_count{{model=\"{model}\"}}"
        )),
        "{text}"
    );
}

async fn metrics_text(broker: &Broker) -> String {
    let (_, _, bytes) = request_raw(
        "GET",
        &format!("{}/metrics", broker.url),
        &[("x-api-key", ADMIN)],
        None,
    )
    .await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[actix_rt::test]
async fn a_full_queue_and_a_queue_timeout_answer_503_all_backends_busy() {
    let m = counting_mock();
    let broker = Broker::start(&[
        ("SWITCHBOARD_QUEUE_MAX", "2"),
        ("SWITCHBOARD_QUEUE_TIMEOUT_S", "1"),
    ]);
    let model = "busy-ttft2500";
    register_limited(&broker, model, &m.url(), Some(1)).await;
    let body = || json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
    let holder = actix_rt::spawn({
        let url = broker.url.clone();
        let b = body().to_string();
        async move {
            request("POST", &format!("{url}/v1/chat/completions"), &[], Some(b))
                .await
                .0
        }
    });
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let queued = (0..2).map(|_| chat_call(&broker, body()));
    let queued = join_all(queued);
    let full = async {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        (chat_call(&broker, body()).await, t.elapsed())
    };
    let (queued, ((status, _, _, err), took)) = futures_util::future::join(queued, full).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(
        assert_error_shape(&err).as_deref(),
        Some("all_backends_busy")
    );
    assert!(
        err["retry_after_header"].as_str().is_some(),
        "Retry-After: {err}"
    );
    assert!(
        took < Duration::from_millis(500),
        "a full queue answers at once: {took:?}"
    );
    for (status, _, _, err) in queued {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
        assert_eq!(
            assert_error_shape(&err).as_deref(),
            Some("all_backends_busy")
        );
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("timed out"),
            "{err}"
        );
        assert!(err["retry_after_header"].as_str().is_some());
    }
    assert_eq!(holder.await.expect("holder"), StatusCode::OK);
    assert_eq!(
        m.server_stats().expect("stats").requests,
        1,
        "queued requests never went upstream"
    );
}

#[actix_rt::test]
async fn a_client_that_disconnects_while_queued_leaves_the_queue_and_never_reaches_a_backend() {
    let m = counting_mock();
    let broker = Broker::start(&[]);
    let model = "leave-ttft1200";
    register_limited(&broker, model, &m.url(), Some(1)).await;
    let body = json!({"model": model, "messages": [{"role": "user", "content": "x"}]}).to_string();
    let holder = actix_rt::spawn({
        let url = broker.url.clone();
        let b = body.clone();
        async move {
            request("POST", &format!("{url}/v1/chat/completions"), &[], Some(b))
                .await
                .0
        }
    });
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let addr = broker.url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(raw.as_bytes()).await.expect("write");
    let queue_depth = || async {
        broker.admin_json("GET", "/admin/stats", None).await.1["queues"][model]
            .as_u64()
            .unwrap_or(99)
    };
    assert!(
        wait_for(Duration::from_secs(2), || async {
            queue_depth().await == 1
        })
        .await
        .is_some(),
        "the raw request is queued"
    );
    drop(sock);
    let left = wait_for(Duration::from_secs(1), || async {
        queue_depth().await == 0
    })
    .await;
    assert!(
        left.is_some_and(|d| d < Duration::from_millis(500)),
        "left after {left:?}"
    );
    assert_eq!(holder.await.expect("holder"), StatusCode::OK);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        m.server_stats().expect("stats").requests,
        1,
        "the leaver never reached the mock"
    );
    // The slot is free again for the next client.
    let (status, _, _, _) = chat_call(&broker, serde_json::from_str(&body).expect("json")).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_rt::test]
async fn prompt_cache_key_sticks_spills_past_the_slack_and_moves_off_an_unhealthy_backend() {
    let (m1, m2) = (counting_mock(), counting_mock());
    let broker = Broker::start(&[]);
    let model = "sticky-ttft700";
    let a = register_limited(&broker, model, &m1.url(), None).await;
    let b = register_limited(&broker, model, &m2.url(), None).await;
    let (status, home, _, _) = chat_call(&broker, keyed(model, "thread-1")).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let (_, backend, route, _) = chat_call(&broker, keyed(model, "thread-1")).await;
        assert_eq!(
            (backend.as_str(), route.as_str()),
            (home.as_str(), "affinity")
        );
    }
    // Four at once: the home backend takes three (slack 2 over the idle other), the fourth spills.
    let broker_ref = &broker;
    let calls = (0..4).map(|i| async move {
        actix_rt::time::sleep(Duration::from_millis(60 * i)).await;
        chat_call(broker_ref, keyed(model, "thread-1")).await
    });
    let results = join_all(calls).await;
    let at_home = results
        .iter()
        .filter(|r| r.1 == home && r.2 == "affinity")
        .count();
    let spilled: Vec<_> = results.iter().filter(|r| r.1 != home).collect();
    assert_eq!(at_home, 3, "{results:?}");
    assert_eq!(spilled.len(), 1);
    assert_eq!(spilled[0].2, "least-loaded");
    // The thread now lives where it was served last.
    let other = if home == a { &b } else { &a };
    let (_, backend, route, _) = chat_call(&broker, keyed(model, "thread-1")).await;
    assert_eq!((&backend, route.as_str()), (other, "affinity"));
    // That backend goes unhealthy: the thread is released and served elsewhere.
    let sick = if other == &a { &m1 } else { &m2 };
    sick.set_health(false);
    let (_, checked) = broker
        .admin_json(
            "POST",
            &format!("/admin/servers/{other}/health-check"),
            None,
        )
        .await;
    assert_eq!(checked["health_status"], "unhealthy");
    let (status, backend, route, _) = chat_call(&broker, keyed(model, "thread-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend, home);
    assert_ne!(route, "affinity");
}

#[actix_rt::test]
async fn without_a_key_an_extended_conversation_goes_where_it_went() {
    let mocks: Vec<_> = (0..3).map(|_| counting_mock()).collect();
    let broker = Broker::start(&[]);
    let model = "prefix-w8";
    for m in &mocks {
        register_limited(&broker, model, &m.url(), None).await;
    }
    // Each conversation opens with its own long document (no shared prefix between them).
    let conv = |who: &str, turns: usize| {
        let doc = format!(
            "{who} pastes a document: {}",
            "the quick brown fox jumps. ".repeat(12)
        );
        let mut messages = vec![json!({"role": "user", "content": doc})];
        for t in 1..turns {
            messages.push(json!({"role": "assistant", "content": format!("answer {t}")}));
            messages.push(json!({"role": "user", "content": format!("{who} asks question {t}")}));
        }
        json!({"model": model, "messages": messages})
    };
    let (_, home, _, _) = chat_call(&broker, conv("alice", 1)).await;
    let mut elsewhere = 0;
    for who in ["bob", "carol", "dave", "erin"] {
        let (status, backend, route, _) = chat_call(&broker, conv(who, 1)).await;
        assert_eq!((status, route.as_str()), (StatusCode::OK, "least-loaded"));
        elsewhere += usize::from(backend != home);
    }
    assert!(elsewhere >= 2, "new conversations rotate over the backends");
    for turns in 2..6 {
        let (_, backend, route, _) = chat_call(&broker, conv("alice", turns)).await;
        assert_eq!(
            (backend.as_str(), route.as_str()),
            (home.as_str(), "prefix"),
            "turn {turns}"
        );
    }
    let text = metrics_text(&broker).await;
    assert!(
        text.contains("switchboard_route_decisions_total{kind=\"prefix\"}"),
        "{text}"
    );
    assert!(text.contains("switchboard_route_prefix_match_bytes_count"));
}

#[actix_rt::test]
async fn session_turns_stick_to_one_backend_and_move_when_it_is_unhealthy() {
    let (m1, m2, m3) = (counting_mock(), counting_mock(), counting_mock());
    let broker = Broker::start(&[]);
    let model = "sess-w5";
    let mut ids = Vec::new();
    for m in [&m1, &m2, &m3] {
        ids.push(register_limited(&broker, model, &m.url(), Some(4)).await);
    }
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    let mut starts = Vec::new();
    for turn in 0..4 {
        ws.send(send_msg(&format!("r{turn}"), "tell me more", &[model]))
            .await;
        let mut view = View::default();
        read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
        let start = view.of("start", Some(model))[0].clone();
        starts.push((
            start["backend"].as_str().unwrap_or("").to_string(),
            start["route"].clone(),
        ));
    }
    let home = starts[0].0.clone();
    for (backend, route) in &starts[1..] {
        assert_eq!((backend, route), (&home, &json!("affinity")), "{starts:?}");
    }
    let idx = ids
        .iter()
        .position(|i| *i == home)
        .expect("home is registered");
    [&m1, &m2, &m3][idx].set_health(false);
    broker
        .admin_json("POST", &format!("/admin/servers/{home}/health-check"), None)
        .await;
    ws.send(send_msg("r-moved", "and now?", &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    let start = view.of("start", Some(model))[0].clone();
    assert_ne!(start["backend"].as_str(), Some(home.as_str()));
    assert!(view.of("done", Some(model)).len() == 1);
    // The next turn sticks to the new backend.
    ws.send(send_msg("r-after", "again", &[model])).await;
    let mut next = View::default();
    read_to_complete(&mut ws, &mut next, Duration::from_secs(10)).await;
    let again = next.of("start", Some(model))[0].clone();
    assert_eq!(again["backend"], start["backend"]);
    assert_eq!(again["route"], "affinity");
}

#[actix_rt::test]
async fn a_session_turn_spills_past_the_slack() {
    let (m1, m2) = (counting_mock(), counting_mock());
    let broker = Broker::start(&[]);
    let model = "slack-ttft900";
    for m in [&m1, &m2] {
        register_limited(&broker, model, &m.url(), None).await;
    }
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r0", "hi", &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    let home = view.of("start", Some(model))[0]["backend"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // Find a /v1 thread that lives on the session's backend, then load it with three requests.
    let mut pin = None;
    for i in 0..6 {
        let key = format!("pin-{i}");
        let (_, backend, _, _) = chat_call(&broker, keyed(model, &key)).await;
        if backend == home {
            pin = Some(key);
            break;
        }
    }
    let pin = pin.expect("a key routed to the session's backend");
    // Three requests of that thread in flight on the session's backend, then the next turn.
    let load = join_all((0..3).map(|_| chat_call(&broker, keyed(model, &pin))));
    let turn = async {
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        ws.send(send_msg("r1", "more", &[model])).await;
        let mut view = View::default();
        read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
        view.of("start", Some(model))[0].clone()
    };
    let (loaded, start) = futures_util::future::join(load, turn).await;
    for (status, backend, _, _) in &loaded {
        assert_eq!((status, backend), (&StatusCode::OK, &home));
    }
    assert_ne!(start["backend"].as_str(), Some(home.as_str()), "{start}");
    assert_eq!(start["route"], "least-loaded");
}

#[actix_rt::test]
async fn failover_works_under_every_policy_and_round_robin_rotates() {
    for policy in ["full", "least-loaded", "round-robin"] {
        let good = counting_mock();
        let bad = mockllm::MockServer::builder()
            .model_override("error500")
            .spawn()
            .expect("mock");
        let broker = Broker::start(&[("SWITCHBOARD_ROUTING", policy)]);
        let model = "fo-w3";
        let good_id = register_limited(&broker, model, &good.url(), Some(8)).await;
        register_limited(&broker, model, &bad.url(), Some(8)).await;
        let mut routes = Vec::new();
        for i in 0..4 {
            let body =
                json!({"model": model, "messages": [{"role": "user", "content": format!("q{i}")}]});
            let (status, backend, route, body) = chat_call(&broker, body).await;
            assert_eq!(status, StatusCode::OK, "{policy}: {body}");
            assert_eq!(backend, good_id, "{policy}");
            routes.push(route);
        }
        assert!(
            routes.iter().any(|r| r == "failover"),
            "{policy}: {routes:?}"
        );
        drop(broker);
    }
    // Round-robin mode: the plain rotation over two healthy backends.
    let (m1, m2) = (counting_mock(), counting_mock());
    let broker = Broker::start(&[("SWITCHBOARD_ROUTING", "round-robin")]);
    let model = "rr-w3";
    let a = register_limited(&broker, model, &m1.url(), None).await;
    let b = register_limited(&broker, model, &m2.url(), None).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, backend, route, _) = chat_call(&broker, keyed(model, "same-thread")).await;
        assert_eq!((status, route.as_str()), (StatusCode::OK, "round-robin"));
        seen.push(backend);
    }
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    assert!(seen.contains(&a) && seen.contains(&b));
}

#[actix_rt::test]
async fn max_concurrency_is_validated_and_null_clears_it() {
    let m = mock();
    let broker = Broker::start(&[]);
    for bad in [json!(0), json!(-1), json!(10001), json!("2"), json!(2.5)] {
        let (status, body) = broker
            .admin_json(
                "POST",
                "/admin/register",
                Some(json!({"model_name": "v", "endpoint_url": m.url(), "max_concurrency": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["param"], "max_concurrency", "{bad}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_concurrency"));
    }
    // Absent and null both mean unlimited.
    let (status, absent) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "v1", "endpoint_url": m.url()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        absent["max_concurrency"].is_null() && absent["in_flight"] == 0,
        "{absent}"
    );
    let id = register_limited(&broker, "v2", &m.url(), Some(4)).await;
    let (_, rec) = broker
        .admin_json("GET", &format!("/admin/servers/{id}"), None)
        .await;
    assert_eq!(rec["max_concurrency"], 4);
    // PUT: absent keeps it, a bad value is refused, null clears it.
    let path = format!("/admin/register/{id}");
    let (status, kept) = broker
        .admin_json("PUT", &path, Some(json!({"owner": "lab"})))
        .await;
    assert_eq!(
        (status, kept["max_concurrency"].clone()),
        (StatusCode::OK, json!(4))
    );
    let (status, body) = broker
        .admin_json("PUT", &path, Some(json!({"max_concurrency": 0})))
        .await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("max_concurrency"))
    );
    let (status, cleared) = broker
        .admin_json("PUT", &path, Some(json!({"max_concurrency": null})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cleared["max_concurrency"].is_null(), "{cleared}");
    let (status, set) = broker
        .admin_json("PUT", &path, Some(json!({"max_concurrency": 10000})))
        .await;
    assert_eq!(
        (status, set["max_concurrency"].clone()),
        (StatusCode::OK, json!(10000))
    );
    let (_, stats) = broker.admin_json("GET", "/admin/stats", None).await;
    assert_eq!(stats["queues"]["v2"], 0, "{stats}");
}

#[actix_rt::test]
async fn a_session_turn_that_finds_every_backend_busy_gets_an_all_backends_busy_error_event() {
    let m = counting_mock();
    let broker = Broker::start(&[("SWITCHBOARD_QUEUE_MAX", "0")]);
    let model = "full-ttft1500";
    register_limited(&broker, model, &m.url(), Some(1)).await;
    let holder = chat_call(&broker, keyed(model, "holder"));
    let turn = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let mut ws = Ws::connect(&broker.url).await;
        ws.hello_new().await;
        ws.send(send_msg("r0", "hi", &[model])).await;
        let mut view = View::default();
        read_to_complete(&mut ws, &mut view, Duration::from_secs(5)).await;
        view.of("error", Some(model))
            .first()
            .map(|e| (*e).clone())
            .unwrap_or(Value::Null)
    };
    let ((status, _, _, _), error) = futures_util::future::join(holder, turn).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error["code"], "all_backends_busy", "{error}");
    assert_eq!(error["retryable"], true);
    assert_eq!(m.server_stats().expect("stats").requests, 1);
}

/// An update of a model's only server (a new description, a new limit) rebuilds the routing
/// table while requests wait in the model's queue: they stay in line and are served, not
/// failed with `no_healthy_backend`.
#[actix_rt::test]
async fn a_request_waiting_in_the_queue_survives_an_update_of_the_server() {
    let m = counting_mock();
    let broker = Broker::start(&[("SWITCHBOARD_QUEUE_TIMEOUT_S", "15")]);
    let model = "held-ttft1500";
    let id = register_limited(&broker, model, &m.url(), Some(1)).await;
    let body = || json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
    let holder = actix_rt::spawn({
        let url = broker.url.clone();
        let b = body().to_string();
        async move {
            request("POST", &format!("{url}/v1/chat/completions"), &[], Some(b))
                .await
                .0
        }
    });
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let waiting = chat_call(&broker, body());
    let update = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let (status, rec) = broker
            .admin_json(
                "PUT",
                &format!("/admin/register/{id}"),
                Some(json!({"description": "renamed while busy"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{rec}");
    };
    let ((status, backend, _, answer), ()) = futures_util::future::join(waiting, update).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(backend, id);
    assert_eq!(holder.await.expect("holder"), StatusCode::OK);
}
