//! Token arrival times of one model's answer, kept by the session so a `resync` snapshot can
//! redraw the compare page's token timeline exactly as the events drew it (SPEC §7).
//!
//! Times are offsets in ms from the turn's `ack` event's `ts`, the same origin the page uses, and
//! every offset is taken from the `ts` of the event the session emitted, so a page rebuilt from a
//! snapshot and a page that saw every event draw the same ticks. It costs 8 bytes per token.

use serde::Serialize;

/// One tool call's span, offsets from the turn start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolSpan {
    pub tool_call_id: String,
    pub name: String,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
}

/// What the timeline of one model needs, beside the snapshot's content and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenTimeline {
    /// The turn's `ack` `ts` (unix ms): offset 0 of the axis.
    pub started_ts: u64,
    /// Offset of every `token` event, in order.
    pub token_offsets_ms: Vec<u32>,
    /// Length of every token's text in UTF-16 code units (what a browser's `String.length`
    /// counts), so the page can show each token's text on hover.
    pub token_lens: Vec<u32>,
    pub tool_spans: Vec<ToolSpan>,
    /// When the model ended (`done`, `error` or `cancelled`).
    pub ended_ms: Option<u64>,
}

/// What an event adds to a timeline, taken before the event is emitted (the body moves):
/// [`crate::events::EventBody::timeline_mark`].
#[derive(Debug)]
pub enum Mark {
    Token(u32),
    ToolStart { id: String, name: String },
    ToolEnd { id: String },
    End,
}

impl TokenTimeline {
    /// An empty timeline whose axis starts at `started_ts` (the `ack` event's `ts`).
    pub fn new(started_ts: u64) -> Self {
        Self {
            started_ts,
            ..Self::default()
        }
    }

    fn offset(&self, ts: u64) -> u64 {
        ts.saturating_sub(self.started_ts)
    }

    /// Records `mark` at `ts`, the emitted event's `ts`.
    pub fn apply(&mut self, mark: Mark, ts: u64) {
        let at = self.offset(ts);
        match mark {
            Mark::Token(len) => {
                self.token_offsets_ms
                    .push(u32::try_from(at).unwrap_or(u32::MAX));
                self.token_lens.push(len);
            }
            Mark::ToolStart { id, name } => self.tool_spans.push(ToolSpan {
                tool_call_id: id,
                name,
                start_ms: Some(at),
                end_ms: None,
            }),
            Mark::ToolEnd { id } => {
                if let Some(span) = self
                    .tool_spans
                    .iter_mut()
                    .rev()
                    .find(|s| s.tool_call_id == id && s.end_ms.is_none())
                {
                    span.end_ms = Some(at);
                }
            }
            Mark::End => {
                if self.ended_ms.is_none() {
                    self.ended_ms = Some(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBody;

    #[test]
    fn offsets_count_from_the_ack_and_lengths_in_utf16() {
        let mut t = TokenTimeline::new(1_000);
        let token = |c: &str| EventBody::Token {
            request_id: "r".into(),
            model: "m".into(),
            content: c.to_string(),
        };
        for (body, ts) in [(token("Hé"), 1_012), (token("😀 "), 1_050)] {
            if let Some(mark) = body.timeline_mark() {
                t.apply(mark, ts);
            }
        }
        assert_eq!(t.token_offsets_ms, vec![12, 50]);
        assert_eq!(t.token_lens, vec![2, 3], "JS string lengths");
        let start = EventBody::ToolStart {
            request_id: "r".into(),
            model: "m".into(),
            tool_call_id: "c1".into(),
            name: "f".into(),
        };
        let end = EventBody::ToolEnd {
            request_id: "r".into(),
            model: "m".into(),
            tool_call_id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            ms: 30,
        };
        for (body, ts) in [(start, 1_060), (end, 1_090)] {
            if let Some(mark) = body.timeline_mark() {
                t.apply(mark, ts);
            }
        }
        assert_eq!(t.tool_spans[0].start_ms, Some(60));
        assert_eq!(t.tool_spans[0].end_ms, Some(90));
        t.apply(Mark::End, 1_100);
        t.apply(Mark::End, 1_200);
        assert_eq!(t.ended_ms, Some(100), "the first end counts");
        assert!(EventBody::Heartbeat {}.timeline_mark().is_none());
    }
}
