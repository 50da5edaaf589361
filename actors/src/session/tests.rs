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
