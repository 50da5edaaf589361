//! The turn's state, without I/O: one [`ModelRun`] per model of the in-flight [`Turn`] and the
//! transitions a stream event makes on it ([`ModelRun::apply`]). The `Session` actor numbers,
//! buffers and fans out the events; what they do to the turn is decided here, so it can be
//! unit-tested without sockets or actors.

use std::collections::{BTreeMap, HashMap};

use actix::Addr;

use crate::events::{EventBody, ModelMetrics, ModelSnapshot, ToolCallSummary};
use crate::model_stream::ModelStream;
use crate::timeline::TokenTimeline;

/// Where one model of a turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunState {
    Streaming,
    Done,
    Error,
    Cancelled,
    /// The broker stopped (crash, redeploy) while the model was streaming (SPEC §4.4).
    Interrupted,
}

impl RunState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Done => "done",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

pub(super) struct ModelRun {
    pub(super) state: RunState,
    pub(super) content: String,
    pub(super) metrics: ModelMetrics,
    /// The running stream; `None` once the model ended. Stopping it cancels the upstream.
    pub(super) stream: Option<Addr<ModelStream>>,
    /// Arrival times for `resync` snapshots of the token timeline.
    pub(super) timeline: TokenTimeline,
}

pub(super) struct Turn {
    pub(super) request_id: String,
    pub(super) prompt: String,
    pub(super) models: Vec<String>,
    pub(super) runs: HashMap<String, ModelRun>,
    pub(super) started_ms: u64,
    /// Rebuilt from the stored copy after a restart: its arrival times were not stored, so its
    /// snapshots carry no timeline (a page keeps the ticks it saw instead of losing them).
    pub(super) restored: bool,
}

impl Turn {
    pub(super) fn running(&self) -> impl Iterator<Item = &String> {
        self.models.iter().filter(|m| {
            self.runs
                .get(*m)
                .is_some_and(|r| r.state == RunState::Streaming)
        })
    }

    pub(super) fn snapshot(&self) -> BTreeMap<String, ModelSnapshot> {
        self.runs
            .iter()
            .map(|(m, r)| {
                let snap = ModelSnapshot {
                    content: r.content.clone(),
                    state: r.state.as_str(),
                    metrics: r.metrics.clone(),
                    timeline: (!self.restored).then(|| r.timeline.clone()),
                };
                (m.clone(), snap)
            })
            .collect()
    }
}

impl ModelRun {
    /// A model that has just been started on `stream` (`None` in tests), its timeline counted
    /// from the turn's `ack` at `acked_ts`.
    pub(super) fn started(stream: Option<Addr<ModelStream>>, acked_ts: u64) -> Self {
        ModelRun {
            state: RunState::Streaming,
            content: String::new(),
            metrics: ModelMetrics::default(),
            stream,
            timeline: TokenTimeline::new(acked_ts),
        }
    }

    /// Applies one event of this model's stream to its state and metrics; returns whether the
    /// model ended with it (`done` or `error`), in which case its stream handle is dropped.
    /// The caller only applies events to a run that is still `Streaming`.
    pub(super) fn apply(&mut self, body: &EventBody) -> bool {
        let mut ended = false;
        match body {
            EventBody::Start { backend, .. } => self.metrics.backend = Some(backend.clone()),
            EventBody::Ttft { ms, .. } => self.metrics.ttft_ms = Some(*ms),
            EventBody::Token { content, .. } => self.content.push_str(content),
            EventBody::ToolStart {
                tool_call_id, name, ..
            } => self.metrics.tool_calls.push(ToolCallSummary {
                tool_call_id: tool_call_id.clone(),
                name: name.clone(),
                arguments: None,
                ms: None,
            }),
            EventBody::ToolEnd {
                tool_call_id,
                arguments,
                ms,
                ..
            } => {
                if let Some(t) = self
                    .metrics
                    .tool_calls
                    .iter_mut()
                    .rev()
                    .find(|t| &t.tool_call_id == tool_call_id)
                {
                    t.arguments = Some(arguments.clone());
                    t.ms = Some(*ms);
                }
            }
            EventBody::Done {
                total_ms,
                usage,
                finish_reason,
                ..
            } => {
                self.metrics.total_ms = Some(*total_ms);
                self.metrics.usage = Some(*usage);
                self.metrics.finish_reason = finish_reason.clone();
                self.state = RunState::Done;
                ended = true;
            }
            EventBody::Error { message, .. } => {
                self.metrics.error = Some(message.clone());
                self.state = RunState::Error;
                ended = true;
            }
            _ => {}
        }
        if ended {
            self.stream = None;
        }
        ended
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::Usage;
    use std::sync::Arc;

    fn ids() -> (Arc<str>, Arc<str>) {
        (Arc::from("r1"), Arc::from("m1"))
    }

    fn token(content: &str) -> EventBody {
        let (request_id, model) = ids();
        EventBody::Token {
            request_id,
            model,
            content: content.into(),
        }
    }

    fn turn_of(models: &[&str]) -> Turn {
        Turn {
            request_id: "r1".into(),
            prompt: "hi".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            runs: models
                .iter()
                .map(|m| (m.to_string(), ModelRun::started(None, 1_000)))
                .collect(),
            started_ms: 1_000,
            restored: false,
        }
    }

    #[test]
    fn start_first_output_and_done_move_a_run_to_done() {
        let (request_id, model) = ids();
        let mut run = ModelRun::started(None, 1_000);
        let start = EventBody::Start {
            request_id: request_id.clone(),
            model: model.clone(),
            backend: "b1".into(),
            route: "least-loaded",
        };
        assert!(!run.apply(&start));
        assert_eq!(run.metrics.backend.as_deref(), Some("b1"));
        let ttft = EventBody::Ttft {
            request_id: request_id.clone(),
            model: model.clone(),
            ms: 42,
        };
        assert!(!run.apply(&ttft));
        assert!(!run.apply(&token("Hel")));
        assert!(!run.apply(&token("lo")));
        assert_eq!(run.state, RunState::Streaming);
        assert_eq!(
            (run.metrics.ttft_ms, run.content.as_str()),
            (Some(42), "Hello")
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            estimated: false,
        };
        let done = EventBody::Done {
            request_id,
            model,
            ttft_ms: Some(42),
            total_ms: 90,
            usage,
            finish_reason: Some("stop".into()),
        };
        assert!(run.apply(&done));
        assert_eq!(run.state, RunState::Done);
        assert_eq!(run.metrics.total_ms, Some(90));
        assert_eq!(run.metrics.usage.map(|u| u.total_tokens), Some(5));
        assert_eq!(run.metrics.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn an_error_ends_one_model_and_the_others_keep_running() {
        let mut turn = turn_of(&["a", "b"]);
        let error = EventBody::Error {
            request_id: Some("r1".into()),
            model: Some("a".into()),
            code: "upstream_error".into(),
            message: "backend said 500".into(),
            retryable: true,
        };
        assert!(turn.runs.get_mut("a").unwrap().apply(&error));
        let a = &turn.runs["a"];
        assert_eq!(a.state, RunState::Error);
        assert_eq!(a.metrics.error.as_deref(), Some("backend said 500"));
        assert_eq!(turn.running().cloned().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn tool_end_completes_the_matching_tool_call() {
        let (request_id, model) = ids();
        let mut run = ModelRun::started(None, 0);
        for id in ["t1", "t2"] {
            run.apply(&EventBody::ToolStart {
                request_id: request_id.clone(),
                model: model.clone(),
                tool_call_id: id.into(),
                name: "lookup".into(),
            });
        }
        let end = EventBody::ToolEnd {
            request_id,
            model,
            tool_call_id: "t1".into(),
            name: "lookup".into(),
            arguments: "{\"q\":1}".into(),
            ms: 7,
        };
        assert!(!run.apply(&end));
        let calls = &run.metrics.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].arguments.as_deref(), calls[0].ms),
            (Some("{\"q\":1}"), Some(7))
        );
        assert_eq!((calls[1].arguments.as_deref(), calls[1].ms), (None, None));
    }

    #[test]
    fn a_turn_ends_when_no_model_is_streaming_and_its_snapshot_shows_each_state() {
        let mut turn = turn_of(&["a", "b"]);
        turn.runs.get_mut("a").unwrap().apply(&token("partial"));
        turn.runs.get_mut("a").unwrap().state = RunState::Cancelled;
        assert!(turn.running().next().is_some());
        turn.runs.get_mut("b").unwrap().state = RunState::Done;
        assert!(turn.running().next().is_none());
        let snap = turn.snapshot();
        assert_eq!(snap["a"].state, "cancelled");
        assert_eq!(snap["a"].content, "partial");
        assert_eq!(snap["b"].state, "done");
    }
}
