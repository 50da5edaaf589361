//! A real WebSocket client (awc) and an SSE reader for the session tests.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

type Framed = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// One WebSocket connection to `/ws`.
pub struct Ws {
    framed: Framed,
    /// The close code, once the server closed.
    pub closed: Option<u16>,
}

/// What one received item was.
#[derive(Debug)]
pub enum Got {
    Event(Value),
    Closed(Option<u16>),
    Timeout,
}

impl Ws {
    /// Opens `/ws` on the broker at `base` (`http://127.0.0.1:PORT`).
    pub async fn connect(base: &str) -> Ws {
        let url = format!("{}/ws", base.replace("http://", "ws://"));
        // A test client of its own, like any outside client (the rule is for production code).
        #[allow(clippy::disallowed_methods)]
        let (_, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(16 * 1024 * 1024)
            .connect()
            .await
            .expect("ws connect");
        Ws {
            framed,
            closed: None,
        }
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        self.framed
            .send(Message::Text(text.into()))
            .await
            .expect("ws send");
    }

    /// The next event (pings answered, pongs skipped), a close, or a timeout.
    pub async fn next(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.framed.next()).await {
                Err(_) => return Got::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Got::Closed(self.closed),
                Ok(Some(Ok(Frame::Text(t)))) => {
                    return Got::Event(serde_json::from_slice(&t).expect("event is JSON"))
                }
                Ok(Some(Ok(Frame::Close(reason)))) => {
                    self.closed = reason.map(|r| u16::from(r.code));
                    return Got::Closed(self.closed);
                }
                Ok(Some(Ok(Frame::Ping(p)))) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next event, panicking on close or timeout.
    pub async fn event(&mut self) -> Value {
        match self.next(Duration::from_secs(15)).await {
            Got::Event(v) => v,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Waits for the server to close; returns the close code.
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Got::Closed(code) => return code,
                Got::Timeout => return None,
                Got::Event(_) => {}
            }
        }
    }

    /// Connects and starts a new session; returns the connection and the session id.
    pub async fn new_session(base: &str) -> (Ws, String) {
        let mut ws = Ws::connect(base).await;
        let id = ws.hello_new().await["session_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (ws, id)
    }

    /// `hello` for a new session; returns the `session` event.
    pub async fn hello_new(&mut self) -> Value {
        self.send(json!({"type": "hello"})).await;
        let s = self.event().await;
        assert_eq!(s["type"], "session", "{s}");
        s
    }
}

/// Everything a client has seen of a session, deduplicated by id, as the SPEC's client does.
#[derive(Default)]
pub struct View {
    pub seen: HashSet<u64>,
    pub duplicates: u64,
    pub last_id: u64,
    pub text: BTreeMap<String, String>,
    pub events: Vec<Value>,
    pub complete: bool,
}

impl View {
    /// Applies one event; returns whether it was new.
    pub fn apply(&mut self, ev: &Value) -> bool {
        if ev["type"] == "resync" {
            if let Some(snap) = ev["snapshot"].as_object() {
                for (model, s) in snap {
                    self.text.insert(
                        model.clone(),
                        s["content"].as_str().unwrap_or("").to_string(),
                    );
                }
            }
            return true;
        }
        let Some(id) = ev["id"].as_u64() else {
            return false;
        };
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return false;
        }
        self.last_id = self.last_id.max(id);
        if ev["type"] == "token" {
            let model = ev["model"].as_str().unwrap_or("").to_string();
            self.text
                .entry(model)
                .or_default()
                .push_str(ev["content"].as_str().unwrap_or(""));
        }
        if ev["type"] == "complete" {
            self.complete = true;
        }
        self.events.push(ev.clone());
        true
    }

    /// Ids from 1 to the last one that were never seen.
    pub fn missing(&self) -> Vec<u64> {
        (1..=self.last_id)
            .filter(|i| !self.seen.contains(i))
            .collect()
    }

    /// Events of `kind` (optionally for `model`).
    pub fn of(&self, kind: &str, model: Option<&str>) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["type"] == kind && model.is_none_or(|m| e["model"] == m))
            .collect()
    }
}

/// A `send` message.
pub fn send_msg(request_id: &str, content: &str, models: &[&str]) -> Value {
    json!({"type": "send", "request_id": request_id, "content": content, "models": models})
}

/// Reads events into `view` until `complete` (or `timeout`).
pub async fn read_to_complete(ws: &mut Ws, view: &mut View, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !view.complete {
        match ws
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Got::Event(ev) => {
                view.apply(&ev);
            }
            other => panic!(
                "turn did not complete: {other:?}; missing {:?}",
                view.missing()
            ),
        }
    }
}
