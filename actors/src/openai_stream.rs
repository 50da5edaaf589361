//! Interprets an OpenAI-style `chat.completion.chunk` stream (after SSE parsing) as what a
//! session shows: text pieces, tool calls with start/end, usage and the finish reason.
//!
//! Tool calls arrive in two styles. OpenAI streams each call's `id` and `name` once, then
//! argument fragments keyed by `index`. Ollama sends every call whole in one delta and gives
//! every one `index: 0`. Both are handled by one rule: a delta with an `id` that differs from
//! the open call at that index starts a new call (closing the previous one).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::events::Usage;

/// What one data event meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A piece of answer text, in order.
    Content(String),
    /// A tool call was announced.
    ToolStart { id: String, name: String },
    /// A tool call is complete (arguments as accumulated), `ms` after it started.
    ToolEnd {
        id: String,
        name: String,
        arguments: String,
        ms: u64,
    },
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// The backend reported an error inside the stream.
    UpstreamError(String),
}

/// The parts of one chunk the interpreter uses, whichever parse produced them.
struct Seen<'a> {
    content: Option<&'a str>,
    tool_calls: &'a [Value],
    finish_reason: Option<&'a str>,
    usage: Option<Usage>,
}

/// The usual `chat.completion.chunk` (and legacy completion) shape, borrowed where possible.
#[derive(Deserialize)]
struct FastChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<FastChoice<'a>>>,
    #[serde(default)]
    usage: Option<FastUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct FastChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<FastDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FastDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct FastUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl FastUsage {
    fn into_usage(self) -> Usage {
        let (p, c) = (
            self.prompt_tokens.unwrap_or(0),
            self.completion_tokens.unwrap_or(0),
        );
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: self.total_tokens.unwrap_or(p + c),
            estimated: false,
        }
    }
}

struct OpenCall {
    index: u64,
    id: String,
    name: String,
    arguments: String,
    started_ms: u64,
    announced: bool,
}

/// See the module docs. Feed it each SSE `data` payload with the current time in ms.
#[derive(Default)]
pub struct ChunkInterpreter {
    open: Vec<OpenCall>,
    /// Last usage the backend reported.
    pub usage: Option<Usage>,
    /// The finish reason, once seen.
    pub finish_reason: Option<String>,
    /// Content and tool-call deltas seen (the fallback completion-token count).
    pub deltas: u64,
    /// Data events that were not JSON (ignored, counted for logs).
    pub malformed: u64,
}

impl ChunkInterpreter {
    /// Interprets one SSE data payload.
    pub fn feed(&mut self, data: &str, now_ms: u64, out: &mut Vec<Output>) {
        if data.trim() == "[DONE]" {
            self.close_all(now_ms, out);
            out.push(Output::Done);
            return;
        }
        // Fast path: a typed, borrowing parse of the usual chunk shape (no `Value` tree per
        // token). Anything unusual falls back to the general parse below.
        if let Ok(chunk) = serde_json::from_str::<FastChunk>(data) {
            if chunk.error.is_none() {
                let choice = chunk.choices.as_deref().and_then(<[FastChoice]>::first);
                let delta = choice.and_then(|c| c.delta.as_ref());
                let seen = Seen {
                    content: delta
                        .and_then(|d| d.content.as_deref())
                        .or_else(|| choice.and_then(|c| c.text.as_deref())),
                    tool_calls: delta.and_then(|d| d.tool_calls.as_deref()).unwrap_or(&[]),
                    finish_reason: choice.and_then(|c| c.finish_reason.as_deref()),
                    usage: chunk.usage.map(FastUsage::into_usage),
                };
                self.apply(seen, now_ms, out);
                return;
            }
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            self.malformed += 1;
            return;
        };
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            out.push(Output::UpstreamError(message));
            return;
        }
        let usage = chunk.get("usage").filter(|u| u.is_object()).map(|u| {
            let n = |k: &str| u.get(k).and_then(Value::as_u64);
            FastUsage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
                total_tokens: n("total_tokens"),
            }
            .into_usage()
        });
        let choice = chunk.get("choices").and_then(|c| c.get(0));
        let delta = choice.and_then(|c| c.get("delta"));
        let no_calls = Vec::new();
        let seen = Seen {
            content: delta
                .and_then(|d| d.get("content"))
                .or_else(|| choice.and_then(|c| c.get("text")))
                .and_then(Value::as_str),
            tool_calls: delta
                .and_then(|d| d.get("tool_calls"))
                .and_then(Value::as_array)
                .unwrap_or(&no_calls),
            finish_reason: choice
                .and_then(|c| c.get("finish_reason"))
                .and_then(Value::as_str),
            usage,
        };
        self.apply(seen, now_ms, out);
    }

    fn apply(&mut self, seen: Seen<'_>, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(usage) = seen.usage {
            self.usage = Some(usage);
        }
        if let Some(text) = seen.content.filter(|t| !t.is_empty()) {
            self.deltas += 1;
            out.push(Output::Content(text.to_string()));
        }
        for call in seen.tool_calls {
            self.deltas += 1;
            self.tool_delta(call, now_ms, out);
        }
        if let Some(reason) = seen.finish_reason {
            self.finish_reason = Some(reason.to_string());
            self.close_all(now_ms, out);
        }
    }

    fn tool_delta(&mut self, call: &Value, now_ms: u64, out: &mut Vec<Output>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let args = function
            .and_then(|f| f.get("arguments"))
            .and_then(|a| match a {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            });
        let pos = self.open.iter().rposition(|c| c.index == index);
        let starts_new = match (id, pos) {
            (Some(id), Some(p)) => self.open[p].id != id,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if starts_new {
            if let Some(p) = pos {
                let done = self.open.remove(p);
                Self::end(done, now_ms, out);
            }
            self.open.push(OpenCall {
                index,
                id: id
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("call_{index}")),
                name: String::new(),
                arguments: String::new(),
                started_ms: now_ms,
                announced: false,
            });
        }
        let Some(open) = self.open.iter_mut().rev().find(|c| c.index == index) else {
            return;
        };
        if open.name.is_empty() && !name.is_empty() {
            open.name = name.to_string();
        }
        if let Some(a) = args {
            open.arguments.push_str(&a);
        }
        if !open.announced && !open.name.is_empty() {
            open.announced = true;
            out.push(Output::ToolStart {
                id: open.id.clone(),
                name: open.name.clone(),
            });
        }
    }

    fn end(mut call: OpenCall, now_ms: u64, out: &mut Vec<Output>) {
        if !call.announced {
            if call.name.is_empty() {
                call.name = "unknown".into();
            }
            out.push(Output::ToolStart {
                id: call.id.clone(),
                name: call.name.clone(),
            });
        }
        out.push(Output::ToolEnd {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
            ms: now_ms.saturating_sub(call.started_ms),
        });
    }

    /// Ends every open tool call (finish reason, `[DONE]`, or the end of the stream).
    pub fn close_all(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        for call in std::mem::take(&mut self.open) {
            Self::end(call, now_ms, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse_parser::SseParser;

    fn run(transcript: &[u8]) -> (Vec<Output>, ChunkInterpreter) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.feed(transcript, &mut events).unwrap();
        parser.finish(&mut events);
        let mut it = ChunkInterpreter::default();
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            it.feed(&e.data, i as u64 * 10, &mut out);
        }
        (out, it)
    }

    fn tools(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::ToolStart { id, name } => Some(format!("start {id} {name}")),
                Output::ToolEnd {
                    id,
                    name,
                    arguments,
                    ..
                } => Some(format!("end {id} {name} {arguments}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn openai_text_stream_reassembles_and_reports_usage() {
        let (out, it) = run(include_bytes!("../../fixtures/streams/openai_chat.sse"));
        let text: String = out
            .iter()
            .filter_map(|o| {
                if let Output::Content(c) = o {
                    Some(c.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert!(
            text.starts_with("Sure! Here's a café tip:\n\n1. Brew strong ☕"),
            "{text}"
        );
        assert_eq!(out.last(), Some(&Output::Done));
        assert!(it
            .usage
            .is_some_and(|u| u.completion_tokens > 0 && !u.estimated));
        assert_eq!(it.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn openai_parallel_tool_calls_pair_up() {
        let (out, it) = run(include_bytes!("../../fixtures/streams/openai_tools.sse"));
        let t = tools(&out);
        assert_eq!(t.len(), 4, "{t:?}");
        assert!(t[0].starts_with("start call_8hQ2xK9mVb3nLp4RtY6wZc1D get_weather"));
        assert!(t[1].starts_with("start call_Jt5uWq2eXr7sAa9bCd3fGh0K get_time"));
        let weather_end = t.iter().find(|s| s.starts_with("end call_8hQ")).unwrap();
        let args = weather_end.splitn(4, ' ').nth(3).unwrap();
        let parsed: Value = serde_json::from_str(args).expect("arguments reassemble to JSON");
        assert!(parsed.get("location").is_some(), "{parsed}");
        assert_eq!(it.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn ollama_calls_all_at_index_zero_are_separate_calls() {
        let (out, _) = run(include_bytes!("../../fixtures/streams/ollama_tools.sse"));
        let t = tools(&out);
        assert_eq!(
            t,
            [
                "start call_x7k2m9p1 get_weather",
                "end call_x7k2m9p1 get_weather {\"city\":\"Paris\"}",
                "start call_q4w8e2r6 get_weather",
                "end call_q4w8e2r6 get_weather {\"city\":\"Tokyo\"}",
            ]
        );
    }

    #[test]
    fn every_transcript_interprets_without_panicking() {
        for t in [
            &include_bytes!("../../fixtures/streams/vllm_chat.sse")[..],
            &include_bytes!("../../fixtures/streams/llamacpp_chat.sse")[..],
        ] {
            let (out, it) = run(t);
            assert!(out.iter().any(|o| matches!(o, Output::Content(_))));
            assert_eq!(out.last(), Some(&Output::Done));
            assert!(it.usage.is_some());
        }
    }

    #[test]
    fn error_chunks_and_garbage() {
        let mut it = ChunkInterpreter::default();
        let mut out = Vec::new();
        it.feed("not json", 0, &mut out);
        it.feed(r#"{"error":{"message":"overloaded"}}"#, 0, &mut out);
        assert_eq!(out, [Output::UpstreamError("overloaded".into())]);
        assert_eq!(it.malformed, 1);
    }
}
