//! Bad input names the field at fault, in the message and in `param`, on every surface that
//! reads a JSON body: admin, `/v1`, REST session commands and WebSocket messages.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::wsclient::*;

fn param(body: &Value) -> &str {
    body["error"]["param"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[actix_rt::test]
async fn admin_bodies_name_the_wrong_field() {
    let m = mock();
    let broker = Broker::start(&[]);
    let (status, body) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": 123, "endpoint_url": m.url()})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param(&body), "model_name", "{body}");
    assert!(message(&body).contains("`model_name`"), "{body}");
    assert!(message(&body).contains("expected a string"), "{body}");

    let (status, body) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"endpoint_url": m.url()})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param(&body), "model_name", "missing field named: {body}");

    let rec = broker.register("m1", &m.url()).await;
    let id = rec["registration_id"].as_str().expect("id");
    let (status, body) = broker
        .admin_json(
            "PUT",
            &format!("/admin/register/{id}"),
            Some(json!({"owner": ["not", "a", "string"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param(&body), "owner", "{body}");
}

#[actix_rt::test]
async fn gateway_and_session_bodies_name_the_wrong_field() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("m1", &m.url()).await;

    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(json!({"model": "m1", "messages": {"role": "user"}}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param(&body), "messages", "{body}");

    let (status, body) = broker.call("POST", "/api/sessions", &[], None).await;
    assert!(status.is_success(), "{status} {body}");
    let sid = body["session_id"].as_str().expect("session id").to_string();
    let (status, body) = broker
        .call(
            "POST",
            &format!("/api/sessions/{sid}/messages"),
            &[],
            Some(json!({"request_id": "r1", "content": "hi", "models": "m1"}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param(&body), "models", "{body}");
    assert!(message(&body).contains("`models`"), "{body}");

    let (mut ws, _) = Ws::new_session(&broker.url).await;
    ws.send(json!({"type": "send", "request_id": 7, "content": "hi", "models": ["m1"]}))
        .await;
    match ws.next(Duration::from_secs(5)).await {
        Got::Event(e) => {
            assert_eq!(e["type"], "error", "{e}");
            assert_eq!(e["code"], "invalid_message", "{e}");
            let text = e["message"].as_str().unwrap_or("");
            assert!(text.contains("`request_id`"), "the field is named: {e}");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
}

/// The SSE transport's command routes refuse a bad body with the code a WebSocket client gets
/// for the same mistake, and a resume position that is not an event id is named, not ignored.
#[actix_rt::test]
async fn sse_commands_and_resume_positions_are_refused_as_invalid_message() {
    let broker = Broker::start(&[]);
    let (status, body) = broker.call("POST", "/api/sessions", &[], None).await;
    assert!(status.is_success(), "{status} {body}");
    let sid = body["session_id"].as_str().expect("session id").to_string();
    let cases = [
        ("messages", "xx".to_string()),
        ("messages", String::new()),
        (
            "messages",
            json!({"type": "cancel", "request_id": "r"}).to_string(),
        ),
        (
            "messages",
            json!({"request_id": "a\u{7}", "content": "x", "models": ["m"]}).to_string(),
        ),
        ("cancel", "{".to_string()),
    ];
    for (route, raw) in cases {
        let (status, body) = broker
            .call(
                "POST",
                &format!("/api/sessions/{sid}/{route}"),
                &[],
                Some(raw.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{route} {raw:?}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_message",
            "{route} {raw:?}: {body}"
        );
    }
    let events = format!("/api/sessions/{sid}/events");
    let (status, body) = broker
        .call("GET", &format!("{events}?last_event_id=abc"), &[], None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(param(&body), "last_event_id", "{body}");
    let (status, body) = broker
        .call("GET", &events, &[("last-event-id", "-4")], None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(param(&body), "Last-Event-ID", "{body}");
    assert!(message(&body).contains("-4"), "{body}");
}
