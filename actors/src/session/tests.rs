//! The session actor driven through its messages with an in-memory sink: no sockets, no
//! backends (the routing table is empty, so every model fails at once with an `error`).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::model_stream::StreamSettings;
use crate::routing::RoutingTable;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Arc<Encoded>>>>);

impl ConnectionSink for Sink {
    fn deliver(&self, event: Arc<Encoded>) -> bool {
        self.0.lock().push(event);
        true
    }
    fn close(&self, _: CloseReason) {}
}

impl Sink {
    fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().iter().map(|e| e.kind).collect()
    }
}

fn settings(event_buffer: usize) -> SessionSettings {
    SessionSettings {
        event_buffer,
        disconnect_grace: Duration::from_secs(10),
        ttl: Duration::from_secs(60),
        streams: StreamSettings {
            first_byte: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(1),
            max_retries: 0,
        },
    }
}

fn start(event_buffer: usize) -> Addr<Session> {
    let directory = Sessions::new(
        Arc::new(RoutingTable::default()),
        settings(event_buffer),
        10,
        5,
    );
    Session::new("s1".into(), directory, settings(event_buffer)).start()
}

async fn attach(addr: &Addr<Session>, conn_id: u64, last_event_id: Option<u64>) -> Sink {
    let sink = Sink::default();
    addr.send(Attach {
        conn_id,
        sink: Box::new(sink.clone()),
        last_event_id,
        resumed: last_event_id.is_some(),
        models_available: vec![],
    })
    .await
    .unwrap();
    sink
}

fn send(request_id: &str) -> Command {
    Command::Send(SendTurn {
        request_id: request_id.into(),
        content: "hi".into(),
        models: vec!["nope".into()],
        params: None,
    })
}

/// Waits until the session has no turn in flight.
async fn idle(addr: &Addr<Session>) -> SessionState {
    for _ in 0..200 {
        let state = addr.send(GetState).await.unwrap();
        if !state.busy {
            return state;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the turn never finished");
}

#[actix_rt::test]
async fn a_turn_acks_ends_each_model_and_completes_then_clear_empties_the_history() {
    let addr = start(64);
    let sink = attach(&addr, 1, None).await;
    addr.send(send("r1")).await.unwrap().unwrap();
    let state = idle(&addr).await;
    assert_eq!(
        sink.kinds(),
        vec!["session", "ack", "error", "complete"],
        "a model without a backend fails and the turn completes"
    );
    assert_eq!(state.last_event_id, 3);
    let cancel = addr
        .send(Command::Cancel {
            request_id: "r1".into(),
            model: None,
        })
        .await
        .unwrap();
    assert_eq!(cancel.unwrap_err().refusal.code(), "not_found");
    addr.send(Command::Clear).await.unwrap().unwrap();
    assert_eq!(sink.kinds().last(), Some(&"cleared"));
    let state = addr.send(GetState).await.unwrap();
    assert!(state.turn.is_none() && state.history.is_empty());
    assert_eq!(state.last_event_id, 4);
}

#[actix_rt::test]
async fn a_resume_behind_the_buffer_gets_a_resync_and_a_recent_one_a_replay() {
    let addr = start(2);
    for r in ["r1", "r2"] {
        addr.send(send(r)).await.unwrap().unwrap();
        idle(&addr).await;
    }
    // Ids 1..=6 were issued; the buffer keeps the last 2.
    let behind = attach(&addr, 1, Some(1)).await;
    assert_eq!(behind.kinds(), vec!["session", "resync", "complete"]);
    let recent = attach(&addr, 2, Some(5)).await;
    assert_eq!(recent.kinds(), vec!["session", "complete"]);
    assert_eq!(recent.0.lock()[1].id, Some(6));
}

/// A session whose model `m` has one backend with one slot, held by the test: the turn's model
/// stream waits in the model's queue (no socket is opened), and the test plays the stream's part
/// by sending the session `StreamEvent`s itself.
struct Held {
    table: Arc<RoutingTable>,
    _slot: crate::routing::InFlightGuard,
}

fn held_table() -> Held {
    use crate::routing::BackendHandle;
    use crate::routing_policy::RouterSettings;
    let backend = Arc::new(
        BackendHandle::new(
            uuid::Uuid::new_v4(),
            "m".into(),
            "http://held.invalid",
            None,
        )
        .with_max_concurrency(Some(1)),
    );
    let table = Arc::new(RoutingTable::new(RouterSettings {
        queue_timeout: Duration::from_secs(30),
        ..RouterSettings::default()
    }));
    table.rebuild(vec![Arc::clone(&backend)]);
    let slot = backend.try_acquire().expect("the only slot");
    Held { table, _slot: slot }
}

fn start_on(table: &Arc<RoutingTable>, grace: Duration) -> Addr<Session> {
    let settings = SessionSettings {
        disconnect_grace: grace,
        ..settings(64)
    };
    let directory = Sessions::new(Arc::clone(table), settings, 10, 5);
    Session::new("s1".into(), directory, settings).start()
}

fn send_to_m(request_id: &str) -> Command {
    Command::Send(SendTurn {
        request_id: request_id.into(),
        content: "hi".into(),
        models: vec!["m".into()],
        params: None,
    })
}

fn output(body: EventBody) -> StreamEvent {
    StreamEvent {
        model: "m".into(),
        body,
    }
}

/// Waits until the model's queue holds `n` requests.
async fn queued(table: &RoutingTable, n: usize) {
    for _ in 0..200 {
        if table.queue_depths().iter().map(|(_, d)| d).sum::<usize>() == n {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the model queue never held {n}: {:?}", table.queue_depths());
}

#[actix_rt::test]
async fn first_output_streams_then_cancel_stops_the_model_and_keeps_its_partial_text() {
    let held = held_table();
    let addr = start_on(&held.table, Duration::from_secs(10));
    let sink = attach(&addr, 1, None).await;
    addr.send(send_to_m("r1")).await.unwrap().unwrap();
    queued(&held.table, 1).await; // the model stream waits for the held slot

    // A second `send` while the turn runs is refused, and changes nothing.
    let busy = addr.send(send_to_m("r2")).await.unwrap().unwrap_err();
    assert_eq!(busy.refusal.code(), "busy");

    // First output: TTFT, then tokens; the snapshot follows them.
    let (rid, m): (Arc<str>, Arc<str>) = ("r1".into(), "m".into());
    addr.send(output(EventBody::Ttft {
        request_id: rid.clone(),
        model: m.clone(),
        ms: 7,
    }))
    .await
    .unwrap();
    for piece in ["Hel", "lo"] {
        addr.send(output(EventBody::Token {
            request_id: rid.clone(),
            model: m.clone(),
            content: piece.into(),
        }))
        .await
        .unwrap();
    }
    let state = addr.send(GetState).await.unwrap();
    assert!(state.busy);
    let snap = &state.turn.as_ref().unwrap().snapshot["m"];
    assert_eq!((snap.content.as_str(), snap.state), ("Hello", "streaming"));
    assert_eq!(
        sink.kinds(),
        vec!["session", "ack", "ttft", "token", "token"]
    );

    // A cancel naming a model the turn does not have is refused, naming it, and stops nothing.
    let other = addr
        .send(Command::Cancel {
            request_id: "r1".into(),
            model: Some("not-in-the-turn".into()),
        })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(other.refusal.code(), "not_found");
    assert!(
        other.message.contains("not-in-the-turn"),
        "{}",
        other.message
    );
    assert_eq!(sink.kinds().len(), 5);

    // Cancel: `cancelled`, then `complete`; the stream is stopped (it leaves the queue).
    addr.send(Command::Cancel {
        request_id: "r1".into(),
        model: None,
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sink.kinds()[5..], ["cancelled", "complete"]);
    queued(&held.table, 0).await;
    // A token still in flight from the stopped stream is dropped.
    addr.send(output(EventBody::Token {
        request_id: rid,
        model: m,
        content: "late".into(),
    }))
    .await
    .unwrap();
    assert_eq!(sink.kinds().len(), 7);
    let state = addr.send(GetState).await.unwrap();
    assert!(!state.busy);
    let snap = &state.turn.as_ref().unwrap().snapshot["m"];
    assert_eq!((snap.content.as_str(), snap.state), ("Hello", "cancelled"));
    assert_eq!(
        state.history.get("m"),
        Some(&1),
        "a cancelled model keeps its part"
    );
}

#[actix_rt::test]
async fn the_grace_expiring_with_nobody_attached_cancels_the_turn_and_a_return_replays_it() {
    let held = held_table();
    let addr = start_on(&held.table, Duration::from_millis(100));
    let _sink = attach(&addr, 1, None).await;
    addr.send(send_to_m("r1")).await.unwrap().unwrap();
    queued(&held.table, 1).await;
    addr.send(Detach { conn_id: 1 }).await.unwrap();

    // Within the grace the turn goes on...
    actix_rt::time::sleep(Duration::from_millis(30)).await;
    assert!(addr.send(GetState).await.unwrap().busy);
    // ...after it, the turn is cancelled and its stream stopped.
    let state = idle(&addr).await;
    assert_eq!(
        state.turn.as_ref().unwrap().snapshot["m"].state,
        "cancelled"
    );
    queued(&held.table, 0).await;

    // A client coming back after the ack sees how the turn ended.
    let back = attach(&addr, 2, Some(1)).await;
    assert_eq!(back.kinds(), vec!["session", "cancelled", "complete"]);
}

#[actix_rt::test]
async fn a_connection_back_within_the_grace_keeps_the_turn_running() {
    let held = held_table();
    let addr = start_on(&held.table, Duration::from_millis(100));
    let _first = attach(&addr, 1, None).await;
    addr.send(send_to_m("r1")).await.unwrap().unwrap();
    addr.send(Detach { conn_id: 1 }).await.unwrap();
    let _second = attach(&addr, 2, Some(1)).await;
    actix_rt::time::sleep(Duration::from_millis(250)).await;
    let state = addr.send(GetState).await.unwrap();
    assert!(state.busy, "the grace was disarmed by the new connection");
    assert_eq!(
        state.turn.as_ref().unwrap().snapshot["m"].state,
        "streaming"
    );
    queued(&held.table, 1).await;
}

#[actix_rt::test]
async fn a_send_with_a_bad_parameter_is_refused_naming_it_and_starts_nothing() {
    let addr = start(64);
    let sink = attach(&addr, 1, None).await;
    for (params, field) in [
        (
            serde_json::json!({"temperature": "hot"}),
            "params.temperature",
        ),
        (
            serde_json::json!({"temperature": 2.5}),
            "params.temperature",
        ),
        (serde_json::json!({"max_tokens": 0}), "params.max_tokens"),
        (serde_json::json!({"n": 3}), "params.n"),
        (serde_json::json!({"stop": ["a", 1]}), "params.stop"),
    ] {
        let refused = addr
            .send(Command::Send(SendTurn {
                request_id: "r1".into(),
                content: "hi".into(),
                models: vec!["nope".into()],
                params: params.as_object().cloned(),
            }))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.refusal.code(), "invalid_message");
        assert!(
            refused.message.contains(field),
            "{params}: {}",
            refused.message
        );
    }
    assert_eq!(sink.kinds(), vec!["session"], "no turn was acknowledged");
    // Accepted: in range, null (the default), and keys servers define themselves.
    let ok = serde_json::json!({"temperature": 0, "top_p": null, "max_tokens": 16, "top_k": 40, "stop": "x"});
    addr.send(Command::Send(SendTurn {
        request_id: "r2".into(),
        content: "hi".into(),
        models: vec!["nope".into()],
        params: ok.as_object().cloned(),
    }))
    .await
    .unwrap()
    .unwrap();
    idle(&addr).await;
    assert_eq!(sink.kinds()[1], "ack");
}
