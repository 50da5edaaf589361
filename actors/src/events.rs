//! The session wire format: the single source of what WebSocket and SSE clients receive.
//!
//! Events are flat JSON objects (`{"id":42,"type":"token","request_id":"r1","model":"m1",
//! "ts":…,"content":"Hel"}`). Each event is serialised once, when the session produces it, into
//! an [`Encoded`] that every attached connection and the resume buffer share: fan-out to N
//! connections never re-serialises.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Re-exported so every transport names the same shared-buffer string type.
pub use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::record::now_ms;
use crate::timeline::{Mark, TokenTimeline};

/// Token counts of one model's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `true` when the backend reported no usage and the broker counted.
    pub estimated: bool,
}

/// What one model of a turn looks like right now; the `resync` snapshot and the session state
/// route are built from these.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelSnapshot {
    pub content: String,
    /// `pending|streaming|done|error|cancelled`.
    pub state: &'static str,
    pub metrics: ModelMetrics,
    /// Arrival times for the token timeline (absent where a snapshot has none to give).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TokenTimeline>,
}

/// Numbers the compare view shows for a model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub backend: Option<String>,
    pub ttft_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    pub tool_calls: Vec<ToolCallSummary>,
    pub error: Option<String>,
}

/// A finished or running tool call, for snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallSummary {
    pub tool_call_id: String,
    pub name: String,
    pub arguments: Option<String>,
    pub ms: Option<u64>,
}

/// Every server → client event, tagged by `type`. Turn events carry `request_id` and (per
/// model) `model`; the envelope adds `id` and `ts`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Session {
        session_id: String,
        resumed: bool,
        last_event_id: u64,
        models_available: Vec<String>,
    },
    Ack {
        request_id: Arc<str>,
        models: Vec<String>,
        /// The prompt, so a second tab or a reloaded page can show what was asked.
        content: String,
    },
    Start {
        request_id: Arc<str>,
        model: Arc<str>,
        backend: String,
        /// Why this backend (SPEC §2.1): `affinity|prefix|least-loaded|failover`.
        route: &'static str,
    },
    Ttft {
        request_id: Arc<str>,
        model: Arc<str>,
        ms: u64,
    },
    Token {
        request_id: Arc<str>,
        model: Arc<str>,
        content: String,
    },
    ToolStart {
        request_id: Arc<str>,
        model: Arc<str>,
        tool_call_id: String,
        name: String,
    },
    ToolEnd {
        request_id: Arc<str>,
        model: Arc<str>,
        tool_call_id: String,
        name: String,
        arguments: String,
        ms: u64,
    },
    Done {
        request_id: Arc<str>,
        model: Arc<str>,
        ttft_ms: Option<u64>,
        total_ms: u64,
        usage: Usage,
        finish_reason: Option<String>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        code: String,
        message: String,
        retryable: bool,
    },
    Cancelled {
        request_id: Arc<str>,
        model: Arc<str>,
    },
    Complete {
        request_id: Arc<str>,
    },
    Resync {
        request_id: Option<String>,
        snapshot: BTreeMap<String, ModelSnapshot>,
    },
    Heartbeat {},
    Pong {},
    /// The history was cleared (by any connection): every tab empties its view. Numbered and
    /// buffered like turn events, so a reconnecting tab learns it too.
    Cleared {},
}

impl EventBody {
    /// The mark this event leaves on its model's token timeline, if any (taken before the
    /// event is emitted, since the body moves into it).
    pub fn timeline_mark(&self) -> Option<Mark> {
        match self {
            EventBody::Token { content, .. } => Some(Mark::Token(
                u32::try_from(content.encode_utf16().count()).unwrap_or(u32::MAX),
            )),
            EventBody::ToolStart {
                tool_call_id, name, ..
            } => Some(Mark::ToolStart {
                id: tool_call_id.clone(),
                name: name.clone(),
            }),
            EventBody::ToolEnd { tool_call_id, .. } => Some(Mark::ToolEnd {
                id: tool_call_id.clone(),
            }),
            EventBody::Done { .. } | EventBody::Error { .. } | EventBody::Cancelled { .. } => {
                Some(Mark::End)
            }
            _ => None,
        }
    }

    /// The `type` string (SSE `event:` field).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Session { .. } => "session",
            Self::Ack { .. } => "ack",
            Self::Start { .. } => "start",
            Self::Ttft { .. } => "ttft",
            Self::Token { .. } => "token",
            Self::ToolStart { .. } => "tool_start",
            Self::ToolEnd { .. } => "tool_end",
            Self::Done { .. } => "done",
            Self::Error { .. } => "error",
            Self::Cancelled { .. } => "cancelled",
            Self::Complete { .. } => "complete",
            Self::Resync { .. } => "resync",
            Self::Heartbeat {} => "heartbeat",
            Self::Pong {} => "pong",
            Self::Cleared {} => "cleared",
        }
    }

    /// An `error` that belongs to no turn (bad client message, busy session).
    pub fn client_error(
        request_id: Option<String>,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::Error {
            request_id,
            model: None,
            code: code.to_string(),
            message: message.into(),
            retryable: false,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(flatten)]
    body: &'a EventBody,
    ts: u64,
}

/// An event serialised once and shared (`Arc`) by the buffer and every connection.
#[derive(Debug)]
pub struct Encoded {
    /// Session-wide position; `None` for events outside the turn stream (session, heartbeat).
    pub id: Option<u64>,
    pub kind: &'static str,
    /// The JSON object, exactly what a WebSocket text frame or SSE `data:` carries. A
    /// `ByteString` so every WebSocket connection sends it without a copy (refcounted).
    pub json: ByteString,
    /// The `ts` written into `json` (unix ms), for state that must agree with the event.
    pub ts: u64,
}

impl Encoded {
    /// Serialises `body` with its id and the current time.
    pub fn new(id: Option<u64>, body: &EventBody) -> Arc<Self> {
        let ts = now_ms();
        let json = serde_json::to_string(&Envelope { id, body, ts })
            .unwrap_or_else(|_| "{\"type\":\"error\",\"code\":\"internal\"}".to_string());
        Arc::new(Self {
            id,
            kind: body.kind(),
            json: ByteString::from(json),
            ts,
        })
    }

    /// Bytes this event costs in a buffer or queue.
    pub fn cost(&self) -> usize {
        self.json.len() + 64
    }

    /// The SSE framing of this event: `id:` (when it has one), `event:`, `data:`.
    pub fn sse_frame(&self) -> String {
        let mut out = String::with_capacity(self.json.len() + 40);
        if let Some(id) = self.id {
            out.push_str("id: ");
            out.push_str(&id.to_string());
            out.push('\n');
        }
        out.push_str("event: ");
        out.push_str(self.kind);
        out.push_str("\ndata: ");
        out.push_str(&self.json);
        out.push_str("\n\n");
        out
    }
}

/// What a client may send over WebSocket: the connection-level `hello` and `ping`, or a
/// [`Command`] for the session.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    Hello {
        session_id: Option<String>,
        last_event_id: Option<u64>,
    },
    Ping {},
    Command(Command),
}

/// A client command (`send`, `cancel`, `clear`) for a session, from any transport: the one type
/// both WebSocket frames and the SSE transport's POSTs become, and the message the session
/// actor handles (its `actix::Message` impl is in `session.rs`).
#[derive(Debug, Clone)]
pub enum Command {
    Send(SendTurn),
    Cancel {
        request_id: String,
        model: Option<String>,
    },
    Clear,
}

impl Command {
    /// The turn the command names (`None` for `clear`), for logs and error events.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Command::Send(send) => Some(&send.request_id),
            Command::Cancel { request_id, .. } => Some(request_id),
            Command::Clear => None,
        }
    }

    /// [`check_untrusted`] for every identifier of the command: `(field, message)` on failure.
    pub fn check_untrusted(&self) -> Result<(), (&'static str, String)> {
        match self {
            Command::Send(send) => send.check_untrusted(),
            Command::Cancel { request_id, model } => {
                check_untrusted("request_id", request_id)?;
                model
                    .as_deref()
                    .map_or(Ok(()), |m| check_untrusted("model", m))
            }
            Command::Clear => Ok(()),
        }
    }
}

/// A `send`: one prompt to several models.
#[derive(Debug, Clone, Deserialize)]
pub struct SendTurn {
    pub request_id: String,
    pub content: String,
    pub models: Vec<String>,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
}

impl SendTurn {
    /// Checks the OpenAI parameters whose type and range are documented, so a turn with
    /// `"temperature": "hot"` is refused with a message naming the field instead of failing on
    /// every backend. `null` means "the default"; other keys pass through unchecked (servers
    /// have their own: `top_k`, `min_p`, `tools`, …).
    pub fn check_params(&self) -> Result<(), String> {
        let Some(params) = &self.params else {
            return Ok(());
        };
        for (key, value) in params.iter().filter(|(_, v)| !v.is_null()) {
            let number_in =
                |lo: f64, hi: f64| value.as_f64().is_some_and(|v| (lo..=hi).contains(&v));
            let (ok, expected) = match key.as_str() {
                "temperature" => (number_in(0.0, 2.0), "a number from 0 to 2"),
                "top_p" => (number_in(0.0, 1.0), "a number from 0 to 1"),
                "presence_penalty" | "frequency_penalty" => {
                    (number_in(-2.0, 2.0), "a number from -2 to 2")
                }
                "max_tokens" | "max_completion_tokens" => (
                    value.as_u64().is_some_and(|n| n >= 1),
                    "a whole number of at least 1",
                ),
                "n" => (
                    value.as_u64() == Some(1),
                    "1 (the compare view shows one answer per model)",
                ),
                "seed" => (value.is_i64() || value.is_u64(), "a whole number"),
                "stop" => (
                    value.is_string()
                        || value
                            .as_array()
                            .is_some_and(|a| a.len() <= 4 && a.iter().all(|s| s.is_string())),
                    "a string or a list of at most 4 strings",
                ),
                _ => (true, ""),
            };
            if !ok {
                return Err(format!("`params.{key}` must be {expected}"));
            }
        }
        Ok(())
    }
}

/// Parses a client frame; the error text is what the `invalid_message` event says. The `type`
/// is read first and the rest parsed as that message's fields, so a wrong field is named
/// (an internally tagged enum would buffer the fields and lose the path).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    let message = parse_message_fields(text)?;
    message.check_untrusted().map_err(|(_, e)| e)?;
    Ok(message)
}

fn parse_message_fields(text: &str) -> Result<ClientMessage, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err("a message must be a JSON object with a \"type\"".into());
    };
    let kind = match fields.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err("not a valid message: `type` must be a string".into()),
        None => return Err("not a valid message: missing field `type`".into()),
    };
    let rest = serde_json::Value::Object(fields);
    let invalid = |e: crate::json::JsonError| format!("not a valid message: {e}");
    match kind.as_str() {
        "hello" => {
            let h: HelloFields = crate::json::from_value(rest).map_err(invalid)?;
            Ok(ClientMessage::Hello {
                session_id: h.session_id,
                last_event_id: h.last_event_id,
            })
        }
        "send" => Ok(ClientMessage::Command(Command::Send(
            crate::json::from_value(rest).map_err(invalid)?,
        ))),
        "cancel" => {
            let c: CancelFields = crate::json::from_value(rest).map_err(invalid)?;
            Ok(ClientMessage::Command(c.into()))
        }
        "clear" => Ok(ClientMessage::Command(Command::Clear)),
        "ping" => Ok(ClientMessage::Ping {}),
        other => Err(format!(
            "not a valid message: unknown `type` `{other}` (expected hello, send, cancel, clear or ping)"
        )),
    }
}

/// The fields of a `hello` (see [`ClientMessage::Hello`]).
#[derive(Deserialize)]
struct HelloFields {
    session_id: Option<String>,
    last_event_id: Option<u64>,
}

/// Why a [`Command`] was refused: typed, so each transport maps it once (HTTP status in
/// `src/errors.rs`, the `error` event's code over WebSocket) instead of matching strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A turn is already in flight.
    Busy,
    /// The command's fields are not acceptable.
    Invalid,
    /// The cancelled turn is not the one in flight.
    NotFound,
}

impl Refusal {
    /// The `error` event's / error body's `code`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Invalid => "invalid_message",
            Refusal::NotFound => "not_found",
        }
    }
}

/// Why a command was refused, with the text the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub refusal: Refusal,
    pub message: String,
}

impl CommandError {
    /// A refusal with its client-facing message.
    pub fn new(refusal: Refusal, message: impl Into<String>) -> Self {
        Self {
            refusal,
            message: message.into(),
        }
    }
}

/// The fields of a `cancel` (see [`Command::Cancel`]): a WebSocket frame without its `type`, and
/// the body of the SSE transport's cancel POST.
#[derive(Deserialize)]
pub struct CancelFields {
    pub request_id: String,
    pub model: Option<String>,
}

impl From<CancelFields> for Command {
    fn from(c: CancelFields) -> Self {
        Command::Cancel {
            request_id: c.request_id,
            model: c.model,
        }
    }
}

/// Refuses a client-chosen identifier with a control character: ids and model names reach
/// logs, metric labels and headers, where a newline would forge a log line (SPEC §8
/// "Untrusted text stays data"). The error names the field.
pub fn check_untrusted(field: &'static str, value: &str) -> Result<(), (&'static str, String)> {
    if value.chars().any(char::is_control) {
        Err((
            field,
            format!("`{field}` must not contain control characters"),
        ))
    } else {
        Ok(())
    }
}

impl ClientMessage {
    /// [`check_untrusted`] for every identifier of the message: `(field, message)` on failure.
    pub fn check_untrusted(&self) -> Result<(), (&'static str, String)> {
        match self {
            ClientMessage::Hello { session_id, .. } => session_id
                .as_deref()
                .map_or(Ok(()), |id| check_untrusted("session_id", id)),
            ClientMessage::Command(command) => command.check_untrusted(),
            ClientMessage::Ping {} => Ok(()),
        }
    }
}

impl SendTurn {
    /// [`check_untrusted`] for the turn's request id and model names.
    pub fn check_untrusted(&self) -> Result<(), (&'static str, String)> {
        check_untrusted("request_id", &self.request_id)?;
        self.models
            .iter()
            .try_for_each(|m| check_untrusted("models", m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_objects_with_id_type_and_ts() {
        let e = Encoded::new(
            Some(42),
            &EventBody::Token {
                request_id: "r1".into(),
                model: "m1".into(),
                content: "Hel".into(),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["type"], "token");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["model"], "m1");
        assert_eq!(v["content"], "Hel");
        assert!(v["ts"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(
            e.sse_frame(),
            format!("id: 42\nevent: token\ndata: {}\n\n", e.json)
        );
    }

    #[test]
    fn events_without_id_have_no_id_field() {
        let e = Encoded::new(None, &EventBody::Heartbeat {});
        assert!(!e.json.contains("\"id\""));
        assert!(e.sse_frame().starts_with("event: heartbeat\n"));
    }

    #[test]
    fn client_messages_parse_or_explain() {
        assert!(matches!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping {})
        ));
        assert!(matches!(
            parse_client_message(r#"{"type":"hello","session_id":"s","last_event_id":3}"#),
            Ok(ClientMessage::Hello {
                last_event_id: Some(3),
                ..
            })
        ));
        let send = r#"{"type":"send","request_id":"r","content":"hi","models":["a","b"],"params":{"temperature":0}}"#;
        assert!(matches!(
            parse_client_message(send),
            Ok(ClientMessage::Command(Command::Send(_)))
        ));
        assert!(parse_client_message("nope").is_err());
        assert!(parse_client_message(r#"{"type":"dance"}"#).is_err());
        assert!(parse_client_message(r#"{"type":"send","request_id":"r"}"#).is_err());
        for forged in [
            r#"{"type":"send","request_id":"r\n[WARN] FORGED","content":"hi","models":["a"]}"#,
            r#"{"type":"send","request_id":"r","content":"hi","models":["a\u0007"]}"#,
            r#"{"type":"cancel","request_id":"r\r\nx"}"#,
            r#"{"type":"hello","session_id":"s\n"}"#,
        ] {
            let err = parse_client_message(forged).unwrap_err();
            assert!(err.contains("control characters"), "{forged}: {err}");
        }
        assert!(parse_client_message("[1]").is_err());
    }
}
