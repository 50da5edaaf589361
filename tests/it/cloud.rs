//! Cloud providers' OpenAI-compatible endpoints (SPEC §3.1): the base-URL rule,
//! `upstream_model` and `health_check: "passive"`, against local stand-ins on the same paths.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::wsclient::*;

fn prefixed_mock(prefix: &str) -> mockllm::MockHandle {
    mockllm::MockServer::builder()
        .path_prefix(prefix)
        .spawn()
        .expect("mock")
}

fn hits(m: &mockllm::MockHandle, path: &str) -> u64 {
    m.stats().requests_by_path.get(path).copied().unwrap_or(0)
}

async fn register_with(broker: &Broker, body: Value) -> Value {
    let (status, rec) = broker
        .admin_json("POST", "/admin/register", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rec}");
    rec
}

async fn chat_ok(broker: &Broker, model: &str, stream: bool) -> bytes::Bytes {
    let (status, headers, body) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[("content-type", "application/json")],
        Some(chat(model, stream)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{model}: {body:?}");
    assert!(headers.get("x-switchboard-backend").is_some());
    body
}

/// The models the mock was asked for, in order.
fn models_seen(m: &mockllm::MockHandle) -> Vec<String> {
    m.stats()
        .last_requests
        .iter()
        .filter_map(|r| r["model"].as_str().map(str::to_string))
        .collect()
}

#[actix_rt::test]
async fn a_versioned_base_url_is_used_as_is_and_others_get_v1() {
    let gemini = prefixed_mock("/v1beta/openai");
    let lab = prefixed_mock("/x/v1");
    let plain = mock();
    let broker = Broker::start(&[]);

    let rec = broker
        .register("gemini", &format!("{}/v1beta/openai", gemini.url()))
        .await;
    assert_eq!(rec["health_status"], "healthy", "{rec}");
    assert_eq!(hits(&gemini, "/v1beta/openai/models"), 1);
    chat_ok(&broker, "gemini", false).await;
    let streamed = chat_ok(&broker, "gemini", true).await;
    assert!(String::from_utf8_lossy(&streamed).contains("data: [DONE]"));
    assert_eq!(hits(&gemini, "/v1beta/openai/chat/completions"), 2);
    assert_eq!(hits(&gemini, "/v1/chat/completions"), 0);

    // `/x` is not a version: `/v1` goes after it.
    broker.register("lab", &format!("{}/x", lab.url())).await;
    chat_ok(&broker, "lab", false).await;
    assert_eq!(hits(&lab, "/x/v1/models"), 1);
    assert_eq!(hits(&lab, "/x/v1/chat/completions"), 1);

    // `http://h:p` and `http://h:p/v1` both mean `/v1`.
    broker.register("bare", &plain.url()).await;
    broker
        .register("versioned", &format!("{}/v1/", plain.url()))
        .await;
    chat_ok(&broker, "bare", false).await;
    chat_ok(&broker, "versioned", false).await;
    assert_eq!(hits(&plain, "/v1/models"), 2);
    assert_eq!(hits(&plain, "/v1/chat/completions"), 2);
    assert_eq!(plain.stats().requests_by_path.len(), 2, "only /v1 paths");

    // A session turn goes to the same base.
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("t1", "hello", &["gemini"])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(15)).await;
    assert_eq!(view.of("done", Some("gemini")).len(), 1);
    assert_eq!(hits(&gemini, "/v1beta/openai/chat/completions"), 3);
}

#[actix_rt::test]
async fn upstream_model_rewrites_the_model_for_that_backend_only() {
    let (a, b, c) = (mock(), mock(), mock());
    let broker = Broker::start(&[]);
    let ra = register_with(
        &broker,
        json!({"model_name": "llama3", "endpoint_url": a.url(), "upstream_model": "llama3:8b"}),
    )
    .await;
    assert_eq!(ra["upstream_model"], "llama3:8b");
    register_with(
        &broker,
        json!({"model_name": "llama3", "endpoint_url": b.url(),
               "upstream_model": "meta-llama/Meta-Llama-3-8B-Instruct"}),
    )
    .await;
    broker.register("plain", &c.url()).await;

    for stream in [false, true, false, true] {
        chat_ok(&broker, "llama3", stream).await;
    }
    let (seen_a, seen_b) = (models_seen(&a), models_seen(&b));
    assert_eq!(seen_a, ["llama3:8b", "llama3:8b"], "both backends served");
    assert_eq!(
        seen_b,
        [
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "meta-llama/Meta-Llama-3-8B-Instruct"
        ]
    );
    // Everything else of the body is passed on.
    let last = a.stats().last_requests.last().cloned().unwrap_or_default();
    assert_eq!(last["messages"][0]["content"], "hello there", "{last}");

    // Session turns too; a backend without upstream_model gets the public name.
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    for i in 0..2 {
        ws.send(send_msg(&format!("r{i}"), "hi", &["llama3", "plain"]))
            .await;
        let mut view = View::default();
        read_to_complete(&mut ws, &mut view, Duration::from_secs(15)).await;
        assert_eq!(view.of("done", None).len(), 2, "{:?}", view.events);
    }
    assert_eq!(models_seen(&a).len() + models_seen(&b).len(), 6);
    assert!(models_seen(&a)[2..].iter().all(|m| m == "llama3:8b"));
    assert!(models_seen(&b)[2..]
        .iter()
        .all(|m| m == "meta-llama/Meta-Llama-3-8B-Instruct"));
    assert_eq!(models_seen(&c), ["plain", "plain"]);

    // Validation: control characters and a wrong health_check are refused by field.
    let (status, body) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "x", "endpoint_url": a.url(), "upstream_model": "a\nb"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "upstream_model", "{body}");
    let (status, body) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "x", "endpoint_url": a.url(), "health_check": "ping"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "health_check", "{body}");
}

#[actix_rt::test]
async fn passive_health_never_probes_and_request_failures_mark_it() {
    let good = mock();
    let bad = mockllm::MockServer::builder()
        .model_override("error500")
        .spawn()
        .expect("mock");
    let broker = Broker::start(&[("SWITCHBOARD_HEALTH_INTERVAL_S", "0.2")]);
    let rec = register_with(
        &broker,
        json!({"model_name": "cloud", "endpoint_url": good.url(), "health_check": "passive"}),
    )
    .await;
    assert_eq!(rec["health_check"], "passive");
    let bad_rec = register_with(
        &broker,
        json!({"model_name": "flaky", "endpoint_url": bad.url(), "health_check": "passive"}),
    )
    .await;
    chat_ok(&broker, "cloud", false).await;
    chat_ok(&broker, "cloud", true).await;
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("flaky", false)),
        )
        .await;
    assert!(status.is_server_error(), "{status}");
    actix_rt::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(hits(&good, "/v1/models"), 0, "no probe reached the backend");
    assert_eq!(hits(&bad, "/v1/models"), 0, "no probe reached the backend");
    let id = bad_rec["registration_id"].as_str().unwrap_or("");
    let r = broker.server(id).await;
    assert_eq!(r["health_status"], "unhealthy", "{r}");
    assert_eq!(r["is_active"], true, "passive failures never deactivate");
}

#[actix_rt::test]
async fn a_passive_backend_out_after_a_failure_is_restored_by_a_success_after_the_delay() {
    let m = mock();
    let broker = Broker::start(&[]);
    // The mock's `flaky` scenario fails every third request.
    let rec = register_with(
        &broker,
        json!({"model_name": "p", "endpoint_url": m.url(), "health_check": "passive",
               "upstream_model": "flaky"}),
    )
    .await;
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    let send = || broker.call("POST", "/v1/chat/completions", &[], Some(chat("p", false)));
    for _ in 0..2 {
        assert_eq!(send().await.0, StatusCode::OK);
    }
    let (status, _) = send().await;
    assert!(status.is_server_error(), "{status}");
    let (status, body) = send().await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "out of the rotation: {body}"
    );
    assert_eq!(broker.server(&id).await["health_status"], "unhealthy");
    actix_rt::time::sleep(Duration::from_millis(2300)).await;
    let (status, body) = send().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "back after the re-check delay: {body}"
    );
    let healthy = wait_for(Duration::from_secs(2), || async {
        broker.server(&id).await["health_status"] == "healthy"
    })
    .await;
    assert!(healthy.is_some(), "{}", broker.server(&id).await);
    assert_eq!(hits(&m, "/v1/models"), 0, "never probed");
    assert_eq!(hits(&m, "/v1/chat/completions"), 4);
}
