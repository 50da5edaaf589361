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

/// Registers the public model `thread` at the mock, answering as its scenario `upstream`;
/// returns the registration id (for [`scenario`]).
async fn register_thread(broker: &Broker, m: &mockllm::MockHandle, upstream: &str) -> String {
    let rec = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "thread", "endpoint_url": m.url(), "upstream_model": upstream})),
        )
        .await
        .1;
    rec["registration_id"].as_str().unwrap_or("").to_string()
}

/// Points the registration `id` at the mock scenario `upstream` (the mock picks its behaviour
/// by model name), so one public model can answer fast in one turn and slowly in the next.
async fn scenario(broker: &Broker, id: &str, upstream: &str) {
    let (status, body) = broker
        .admin_json(
            "PUT",
            &format!("/admin/register/{id}"),
            Some(json!({"upstream_model": upstream})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_rt::test]
async fn a_session_survives_kill9_mid_turn_and_resumes_over_ws_and_sse_with_its_history() {
    let m = mock();
    let mut broker = Broker::start(&[]);
    let id = register_thread(&broker, &m, "fast-d1").await;

    // Turn 1 completes; turn 2 is cut by kill -9 after a few tokens.
    let (mut ws, sid) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("t1", "first question", &["thread"])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    let answer1 = view.text.get("thread").cloned().unwrap_or_default();
    assert!(answer1.contains("first question"), "{answer1}");
    scenario(&broker, &id, "long-spaced-w300").await;
    ws.send(send_msg("t2", "second question", &["thread"]))
        .await;
    while view.of("token", Some("thread")).len() < view_tokens_t1(&view) + 3 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    let seen = view.last_id;
    broker.kill9();
    broker.restart();

    // WebSocket: resumed, a resync from the stored copy with the cut turn interrupted.
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "hello", "session_id": sid, "last_event_id": seen}))
        .await;
    let s = ws.event().await;
    assert_eq!(
        (s["type"].as_str(), s["resumed"].as_bool()),
        (Some("session"), Some(true)),
        "{s}"
    );
    let resync = ws.event().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    assert_eq!(resync["request_id"], "t2");
    assert_eq!(
        resync["snapshot"]["thread"]["state"], "interrupted",
        "{resync}"
    );
    // Arrival times are not stored: no timeline, so a page keeps the ticks it drew.
    assert!(
        resync["snapshot"]["thread"].get("timeline").is_none(),
        "{resync}"
    );

    // SSE: the same session, the same resync; the state route agrees.
    let mut sse = View::default();
    let frames = sse_read(&broker.url, &sid, Some(seen), &mut sse, |_, v| {
        v["type"] == "resync"
    })
    .await;
    assert_eq!(frames.len(), 2, "session, then resync: {frames:?}");
    let (status, state) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["busy"], false);
    assert_eq!(state["history"], json!({"thread": 1}), "{state}");
    assert_eq!(state["turn"]["request_id"], "t2");
    assert_eq!(state["turn"]["snapshot"]["thread"]["state"], "interrupted");

    // The next turn: ids continue after what the client saw; the backend gets the history.
    scenario(&broker, &id, "fast-d1").await;
    ws.send(send_msg("t3", "third question", &["thread"])).await;
    let mut next = View::default();
    read_to_complete(&mut ws, &mut next, Duration::from_secs(10)).await;
    let first = next.events.first().cloned().unwrap_or_default();
    assert_eq!(first["type"], "ack", "{first}");
    assert!(
        first["id"].as_u64().is_some_and(|i| i > seen),
        "{first} after {seen}"
    );
    let sent = m.stats().last_requests.last().cloned().unwrap_or_default();
    let messages: Vec<(String, String)> = sent["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|msg| {
                    let field = |k: &str| msg[k].as_str().unwrap_or("").to_string();
                    (field("role"), field("content"))
                })
                .collect()
        })
        .unwrap_or_default();
    let pair = |r: &str, c: &str| (r.to_string(), c.to_string());
    assert_eq!(
        messages,
        [
            pair("user", "first question"),
            pair("assistant", &answer1),
            pair("user", "third question")
        ],
        "the full stored history went upstream"
    );
}

/// Tokens of turn 1 (the count turn 2's tokens are added to).
fn view_tokens_t1(view: &View) -> usize {
    view.events
        .iter()
        .filter(|e| e["type"] == "token" && e["request_id"] == "t1")
        .count()
}

#[actix_rt::test]
async fn a_stored_session_past_its_ttl_is_deleted_and_its_resume_gets_4001() {
    let model = "ttl-d1";
    let m = mock();
    let mut broker = Broker::start(&[("SWITCHBOARD_SESSION_TTL_S", "1")]);
    broker.register(model, &m.url()).await;
    let (mut ws, sid) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("x1", "hello", &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    broker.kill9();
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    broker.restart();
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "hello", "session_id": sid, "last_event_id": view.last_id}))
        .await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(4001));
    let (status, _) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        broker.logs().contains("stored sessions: 0 kept, 1 expired"),
        "swept at start"
    );
}

#[actix_rt::test]
async fn a_session_survives_a_graceful_restart_too() {
    let model = "graceful-d1";
    let m = mock();
    let mut broker = Broker::start(&[]);
    broker.register(model, &m.url()).await;
    let (mut ws, sid) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("g1", "before the redeploy", &[model]))
        .await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    broker.terminate();
    assert_eq!(ws.close_code(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(broker.wait_exit(Duration::from_secs(30)), Some(0));
    broker.restart();
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "hello", "session_id": sid, "last_event_id": view.last_id}))
        .await;
    let s = ws.event().await;
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(s["last_event_id"].as_u64(), Some(view.last_id), "{s}");
    let resync = ws.event().await;
    assert_eq!(resync["snapshot"][model]["state"], "done", "{resync}");
    ws.send(send_msg("g2", "after", &[model])).await;
    let mut next = View::default();
    read_to_complete(&mut ws, &mut next, Duration::from_secs(10)).await;
    let sent = m.stats().last_requests.last().cloned().unwrap_or_default();
    assert_eq!(sent["messages"].as_array().map(Vec::len), Some(3), "{sent}");
}

/// A turn whose `complete` a client saw is on disk: `kill -9` right after it loses nothing
/// (the session is flushed before `complete` goes out). Three rounds, since a lost write is a
/// race with the background flush.
#[actix_rt::test]
async fn a_turn_whose_complete_was_seen_survives_an_immediate_kill9() {
    let model = "crash-d1";
    let m = mock();
    let mut broker = Broker::start(&[]);
    broker.register(model, &m.url()).await;
    for round in 0..3 {
        let (mut ws, sid) = Ws::new_session(&broker.url).await;
        ws.send(send_msg("k1", "remember this turn", &[model]))
            .await;
        let mut view = View::default();
        read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
        broker.kill9();
        broker.restart();
        let mut ws = Ws::connect(&broker.url).await;
        ws.send(json!({"type": "hello", "session_id": sid, "last_event_id": view.last_id}))
            .await;
        let s = ws.event().await;
        assert_eq!(s["type"], "session", "round {round}: {s}");
        assert_eq!(s["resumed"], true, "round {round}: {s}");
        let resync = ws.event().await;
        assert_eq!(
            resync["snapshot"][model]["state"], "done",
            "round {round}: {resync}"
        );
        ws.send(send_msg("k2", "and then", &[model])).await;
        let mut next = View::default();
        read_to_complete(&mut ws, &mut next, Duration::from_secs(10)).await;
        let ids: Vec<u64> = next
            .events
            .iter()
            .filter_map(|e| e["id"].as_u64())
            .collect();
        assert!(
            ids.iter().all(|id| *id > view.last_id),
            "round {round}: no id the client saw is reused: {ids:?} after {}",
            view.last_id
        );
        let sent = m.stats().last_requests.last().cloned().unwrap_or_default();
        assert_eq!(
            sent["messages"].as_array().map(Vec::len),
            Some(3),
            "round {round}: the history went upstream: {sent}"
        );
    }
}

/// After a crash, ids are never reissued, even when another tab acts before the client that
/// saw them comes back (SPEC §4.2: `(session_id, id)` names a position). Between turns they
/// continue exactly; a `cleared` that was seen counts too.
#[actix_rt::test]
async fn ids_are_never_reissued_after_kill9_even_when_another_tab_sends_first() {
    let m = mock();
    let mut broker = Broker::start(&[]);
    let id = register_thread(&broker, &m, "long-spaced-w300").await;

    // Tab A sees the start of a turn; the broker is killed mid-turn.
    let (mut a, sid) = Ws::new_session(&broker.url).await;
    a.send(send_msg("t1", "a long answer please", &["thread"]))
        .await;
    let mut view = View::default();
    while view.of("token", Some("thread")).len() < 3 {
        let ev = a.event().await;
        view.apply(&ev);
    }
    let seen = view.last_id;
    broker.kill9();
    broker.restart();

    // Tab B sends the next turn over SSE before tab A is back.
    scenario(&broker, &id, "fast-d1").await;
    let (status, body) = post(
        &broker.url,
        &format!("/api/sessions/{sid}/messages"),
        json!({"request_id": "t2", "content": "next", "models": ["thread"]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = wait_for(Duration::from_secs(10), || async {
        let (_, state) = broker
            .call("GET", &format!("/api/sessions/{sid}"), &[], None)
            .await;
        state["busy"] == false && state["turn"]["request_id"] == "t2"
    })
    .await;
    assert!(done.is_some(), "turn t2 ended");

    // Tab A comes back from where it was: t2 is not hidden behind ids it already saw.
    let mut a = Ws::connect(&broker.url).await;
    a.send(json!({"type": "hello", "session_id": sid, "last_event_id": seen}))
        .await;
    let s = a.event().await;
    assert_eq!(s["type"], "session", "{s}");
    let next = a.event().await;
    assert_eq!(next["type"], "resync", "{next}");
    assert_eq!(next["request_id"], "t2", "{next}");
    assert_eq!(next["snapshot"]["thread"]["state"], "done", "{next}");
    let (_, state) = broker
        .call("GET", &format!("/api/sessions/{sid}"), &[], None)
        .await;
    let last = state["last_event_id"].as_u64().unwrap_or(0);
    assert!(
        last > seen,
        "t2's ids come after what tab A saw: {last} vs {seen}"
    );

    // A `cleared` that was seen survives a crash between turns, and ids continue right after it.
    a.send(json!({"type": "clear"})).await;
    let cleared = until_kind(&mut a, "cleared").await;
    let cleared_id = cleared["id"].as_u64().unwrap_or(0);
    assert!(cleared_id > last, "{cleared}");
    broker.kill9();
    broker.restart();
    let mut a = Ws::connect(&broker.url).await;
    a.send(json!({"type": "hello", "session_id": sid, "last_event_id": cleared_id}))
        .await;
    let s = a.event().await;
    assert_eq!(s["last_event_id"].as_u64(), Some(cleared_id), "{s}");
    a.send(send_msg("t3", "again", &["thread"])).await;
    let ack = until_kind(&mut a, "ack").await;
    assert_eq!(ack["id"].as_u64(), Some(cleared_id + 1), "{ack}");
}

/// A turn cut by a graceful shutdown (the drain timed out) comes back `interrupted`, like one
/// cut by a crash (SPEC §4.4), even when the disconnect grace is shorter than the drain.
#[actix_rt::test]
async fn a_turn_cut_by_a_graceful_shutdown_comes_back_interrupted() {
    let model = "cut-spaced-w300";
    let m = mock();
    let mut broker = Broker::start(&[
        ("SWITCHBOARD_DRAIN_TIMEOUT_S", "2"),
        ("SWITCHBOARD_DISCONNECT_GRACE_S", "1"),
    ]);
    broker.register(model, &m.url()).await;
    let (mut ws, sid) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("c1", "a long one", &[model])).await;
    let mut view = View::default();
    while view.of("token", Some(model)).len() < 3 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    broker.terminate();
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(1001));
    assert_eq!(broker.wait_exit(Duration::from_secs(30)), Some(0));
    broker.restart();
    let mut ws = Ws::connect(&broker.url).await;
    ws.send(json!({"type": "hello", "session_id": sid, "last_event_id": view.last_id}))
        .await;
    let s = ws.event().await;
    assert_eq!(s["resumed"], true, "{s}");
    let resync = ws.event().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    assert_eq!(
        resync["snapshot"][model]["state"], "interrupted",
        "{resync}"
    );
    let text = resync["snapshot"][model]["content"].as_str().unwrap_or("");
    assert!(
        !text.is_empty(),
        "what streamed before the cut is kept: {resync}"
    );
}

/// A stored session that cannot come back because the live sessions are at the cap (none
/// detached) is "later" (4503 / 503), not "gone" (4001 / 404): it does come back once a slot
/// frees.
#[actix_rt::test]
async fn a_stored_session_at_the_cap_is_told_later_not_gone() {
    let model = "cap-d1";
    let m = mock();
    let mut broker = Broker::start(&[("SWITCHBOARD_MAX_SESSIONS", "1")]);
    broker.register(model, &m.url()).await;
    let (mut ws, stored) = Ws::new_session(&broker.url).await;
    ws.send(send_msg("s1", "keep me", &[model])).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    broker.kill9();
    broker.restart();

    let (live, _) = Ws::new_session(&broker.url).await;
    let mut back = Ws::connect(&broker.url).await;
    back.send(json!({"type": "hello", "session_id": stored, "last_event_id": view.last_id}))
        .await;
    assert_eq!(back.close_code(Duration::from_secs(3)).await, Some(4503));
    let (status, body) = broker
        .call("GET", &format!("/api/sessions/{stored}"), &[], None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    drop(live);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let mut back = Ws::connect(&broker.url).await;
    back.send(json!({"type": "hello", "session_id": stored, "last_event_id": view.last_id}))
        .await;
    let s = back.event().await;
    assert_eq!(
        (s["type"].as_str(), s["resumed"].as_bool()),
        (Some("session"), Some(true)),
        "{s}"
    );
}
