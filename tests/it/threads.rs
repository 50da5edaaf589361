//! Threads across tabs and restarts: `cleared` reaches every connection (SPEC §4.2), and
//! sessions survive `kill -9` (SPEC §4.4) over both transports.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;
use crate::resume::{post, sse_read};
use crate::wsclient::*;

/// Reads events until one of `kind` arrives; returns it.
async fn until_kind(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let ev = ws.event().await;
        if ev["type"] == kind {
            return ev;
        }
    }
}

#[actix_rt::test]
async fn clear_from_one_tab_sends_cleared_to_every_connection_and_is_buffered() {
    let model = "clr-d5";
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register(model, &m.url()).await;
    let (mut a, sid) = Ws::new_session(&broker.url).await;
    let mut b = Ws::connect(&broker.url).await;
    b.send(json!({"type": "hello", "session_id": sid, "last_event_id": 0}))
        .await;
    assert_eq!(b.event().await["resumed"], true);

    a.send(send_msg("c1", "remember this", &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut a, &mut view, Duration::from_secs(10)).await;
    until_kind(&mut b, "complete").await;

    a.send(json!({"type": "clear"})).await;
    let on_a = until_kind(&mut a, "cleared").await;
    let on_b = until_kind(&mut b, "cleared").await;
    assert_eq!(on_a["id"].as_u64(), Some(view.last_id + 1), "{on_a}");
    assert_eq!(
        on_a["id"], on_b["id"],
        "one event, the same id on every tab"
    );
    assert!(on_b["ts"].as_u64().is_some_and(|t| t > 1_700_000_000_000));

    // The SSE transport gets it too, from the buffer, and the history is empty.
    let mut sse = View::default();
    let frames = sse_read(&broker.url, &sid, Some(view.last_id), &mut sse, |_, v| {
        v["type"] == "cleared"
    })
    .await;
    assert_eq!(
        frames.last(),
        Some(&(on_a["id"].as_u64(), "cleared".to_string()))
    );
    let (status, _) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/clear"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let again = until_kind(&mut a, "cleared").await;
    assert_eq!(until_kind(&mut b, "cleared").await["id"], again["id"]);
    let (_, state) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(state["history"], json!({}), "{state}");
}
