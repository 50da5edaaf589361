//! Incremental Server-Sent-Events (`text/event-stream`) parser.
//!
//! Why this exists: every streamed completion from an upstream model server
//! (OpenAI, vLLM, Ollama, llama.cpp server) arrives as an SSE body cut into
//! arbitrary TCP chunks. The gateway must re-assemble those chunks into
//! events without caring where the cuts fall, without allocating per byte,
//! and without letting a misbehaving upstream make it buffer unboundedly.
//!
//! The parser follows the WHATWG `EventSource` "interpreting an event stream"
//! rules (<https://html.spec.whatwg.org/multipage/server-sent-events.html>)
//! with two deliberate, documented deviations that LLM servers need:
//!
//! * [`SseParser::finish`] dispatches a pending event even if the stream
//!   ended without the terminating blank line (or without a final newline).
//!   Browsers drop such an event; llama.cpp and Ollama routinely end streams
//!   that way, and dropping their last chunk (often `[DONE]` or the usage
//!   chunk) would lose data.
//! * `retry` is reported on the next dispatched [`SseEvent`] instead of being
//!   applied to a connection, because this parser has no connection.
//!
//! It depends on `std` only, so it can be unit-tested with a bare `rustc`.

use std::fmt;

/// Default line limit: 1 MiB is far larger than any real chunk (even a big
/// tool-call argument), yet small enough that a broken upstream cannot make
/// one connection hold an unbounded buffer.
const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// After dispatching an unusually large event we drop the data buffer's
/// capacity above this size, so one huge event does not pin memory for the
/// rest of a long-lived stream.
const RETAINED_DATA_CAPACITY: usize = 64 * 1024;

/// The UTF-8 byte order mark, skipped once at the very start of a stream as
/// the WHATWG decoder does.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched SSE event.
///
/// Why this shape: the gateway forwards or re-encodes events, so it needs the
/// exact data string plus the three optional fields a client may rely on.
/// Absent/empty values are `None` so callers never have to distinguish
/// "missing" from "empty" (WHATWG treats them the same).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// Value of the last `event:` field of this event; `None` means the
    /// default type (`message` in a browser). Reset after every dispatch.
    pub event: Option<String>,
    /// All `data:` lines of the event joined with `\n` (no trailing `\n`).
    /// This is the payload the gateway cares about (usually one JSON chunk
    /// or `[DONE]`).
    pub data: String,
    /// The stream's last event id at dispatch time. As in WHATWG it persists
    /// across events until another `id:` field changes it (an empty `id:`
    /// clears it), because that is the value a client would resume from.
    pub id: Option<String>,
    /// Reconnection time in milliseconds from a `retry:` field seen since the
    /// previous dispatched event. It is carried over blocks that dispatch
    /// nothing (e.g. a lone `retry: 3000` block) so it is never silently lost.
    pub retry: Option<u64>,
}

/// Why parsing can fail.
///
/// Kept tiny and hand-written (no `thiserror`) so the module stays
/// dependency-free; the only failure is the memory bound being hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A single line was longer than the configured limit (in bytes,
    /// excluding the line terminator). Returned so the caller can abort the
    /// upstream instead of buffering without bound. The parser stays in this
    /// error state (every `feed` returns it again, `finish` dispatches
    /// nothing) until [`SseParser::reset`] is called.
    LineTooLong {
        /// The limit that was exceeded, for logs and error messages.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    /// Human-readable message for gateway logs and client-facing errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::LineTooLong { limit } => {
                write!(f, "SSE line exceeds the maximum length of {limit} bytes")
            }
        }
    }
}

/// Lets `SseError` flow through `?` into `Box<dyn Error>` and error chains.
impl std::error::Error for SseError {}

/// Returns true if the event is the OpenAI-style end-of-stream sentinel.
///
/// Why: OpenAI, vLLM, Ollama and llama.cpp all terminate chat streams with
/// `data: [DONE]`, which is not JSON and must not be forwarded to a JSON
/// decoder. Whitespace is trimmed because some servers pad it.
pub fn is_done_marker(ev: &SseEvent) -> bool {
    ev.data.trim() == "[DONE]"
}

/// Per-stream field state: everything except the partial-line buffer.
///
/// Kept separate from [`SseParser`] so a buffered line (owned by the parser)
/// can be interpreted while this state is mutably borrowed.
#[derive(Debug)]
struct EventState {
    /// True until the first line has been interpreted (BOM stripping).
    at_stream_start: bool,
    /// WHATWG "data buffer": each data line's value plus `\n`.
    data: String,
    /// WHATWG "event type buffer"; `None` when empty.
    event: Option<String>,
    /// WHATWG "last event ID buffer"; persists across events.
    last_id: Option<String>,
    /// Pending reconnection time, attached to the next dispatched event.
    retry: Option<u64>,
    /// Number of comment lines (`:` prefix) seen.
    comments: u64,
}

impl EventState {
    fn new() -> Self {
        Self {
            at_stream_start: true,
            data: String::new(),
            event: None,
            last_id: None,
            retry: None,
            comments: 0,
        }
    }

    /// Interprets one complete line (terminator already removed).
    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = if self.at_stream_start {
            self.at_stream_start = false;
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => {
                self.comments += 1;
                return;
            }
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => self.event = non_empty(value),
            // WHATWG: an id containing NUL is ignored entirely.
            b"id" if !value.contains(&0) => self.last_id = non_empty(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Only fails on u64 overflow; such a value is ignored.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    /// WHATWG "dispatch the event" step (blank line or lenient end of stream).
    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.data.is_empty() {
            self.event = None;
            return;
        }
        // The buffer always ends with the '\n' appended after each data line.
        let end = self.data.len() - usize::from(self.data.ends_with('\n'));
        // Copy out (one exact-size allocation) and keep our buffer's capacity.
        let data = self.data[..end].to_owned();
        if self.data.capacity() > RETAINED_DATA_CAPACITY {
            self.data = String::new();
        } else {
            self.data.clear();
        }
        out.push(SseEvent {
            event: self.event.take(),
            data,
            id: self.last_id.clone(),
            retry: self.retry.take(),
        });
    }
}

/// Lossy UTF-8 conversion mapping the empty string to `None`.
fn non_empty(value: &[u8]) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(value).into_owned())
    }
}

/// Incremental SSE parser for one upstream stream.
///
/// Why incremental: upstream bytes arrive in arbitrary chunks (a line, a
/// CRLF pair or a multi-byte UTF-8 character may be split anywhere), and the
/// gateway wants to forward each event as soon as it is complete. Lines that
/// lie entirely inside a chunk are interpreted in place; only a line that
/// spans chunks is copied into an internal buffer, bounded by the max line
/// length. Invalid UTF-8 is replaced lossily; the parser never panics on
/// input.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a line that started in an earlier chunk and is not finished.
    line: Vec<u8>,
    /// Maximum line length in bytes (terminator excluded).
    max_line: usize,
    /// The previous chunk ended in CR: an LF starting the next chunk belongs
    /// to the same line ending and must be skipped.
    pending_cr: bool,
    /// Set after `LineTooLong` until `reset`.
    failed: bool,
    /// Field/event state.
    state: EventState,
}

impl SseParser {
    /// Creates a parser with the default 1 MiB line limit, which suits every
    /// known LLM server while still bounding memory per connection.
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// Creates a parser with a custom line limit in bytes (line terminator
    /// excluded), for deployments that want a tighter memory bound per
    /// upstream or that expect unusually large single chunks.
    pub fn with_max_line(max: usize) -> Self {
        Self {
            line: Vec::new(),
            max_line: max,
            pending_cr: false,
            failed: false,
            state: EventState::new(),
        }
    }

    /// Feeds one chunk; complete events are pushed to `out` in order.
    ///
    /// Why `out` is caller-provided: the gateway reuses one `Vec` per
    /// connection, so feeding does not allocate a result vector per chunk.
    /// Events are appended; `out` is never cleared.
    ///
    /// # Errors
    ///
    /// Returns [`SseError::LineTooLong`] if a line exceeds the limit (the
    /// result does not depend on how the stream is chunked). Events completed
    /// earlier in the same chunk have already been pushed to `out`. After an
    /// error the parser must be [`reset`](Self::reset) before reuse.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_long());
        }
        let mut rest = chunk;
        if self.pending_cr {
            if let Some((&first, tail)) = rest.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    rest = tail;
                }
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let body = &rest[..pos];
            let after = &rest[pos + 1..];
            rest = if rest[pos] == b'\r' {
                match after.split_first() {
                    Some((b'\n', tail)) => tail,
                    Some(_) => after,
                    None => {
                        self.pending_cr = true;
                        after
                    }
                }
            } else {
                after
            };
            self.complete_line(body, out)?;
        }
        if !rest.is_empty() {
            self.ensure_fits(rest.len())?;
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    /// End of stream.
    ///
    /// Interprets a final line that had no line terminator, then dispatches
    /// any pending event even without the terminating blank line. This is
    /// deliberately more lenient than a browser (which discards such an
    /// event) because llama.cpp and Ollama sometimes end streams without the
    /// final blank line or newline, and their last event is often `[DONE]`
    /// or the usage chunk. Nothing is dispatched after a `LineTooLong` error.
    ///
    /// Afterwards the parser is ready for a new stream; only
    /// [`comments_seen`](Self::comments_seen) is kept so it can still be read.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.failed {
            if !self.line.is_empty() {
                self.state.line(&self.line, out);
            }
            self.state.dispatch(out);
        }
        let comments = self.state.comments;
        self.reset();
        self.state.comments = comments;
    }

    /// Number of comment lines (starting with `:`) seen so far.
    ///
    /// Why: servers send comments as keepalives (`: ping`), so a growing
    /// count proves the upstream is alive even when no tokens flow, which
    /// the health checker uses to tell "slow model" from "dead connection".
    pub fn comments_seen(&self) -> u64 {
        self.state.comments
    }

    /// Clears all state (buffers, last event id, comment count, error) so the
    /// parser can be reused for a new stream or recover after
    /// [`SseError::LineTooLong`]. The line limit is kept.
    pub fn reset(&mut self) {
        self.line.clear();
        if self.line.capacity() > RETAINED_DATA_CAPACITY {
            self.line = Vec::new();
        }
        self.pending_cr = false;
        self.failed = false;
        self.state = EventState::new();
    }

    /// Interprets one line whose terminator was just found in the current
    /// chunk, joining it with any buffered prefix from earlier chunks.
    fn complete_line(&mut self, body: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.ensure_fits(body.len())?;
        if self.line.is_empty() {
            self.state.line(body, out);
        } else {
            self.line.extend_from_slice(body);
            self.state.line(&self.line, out);
            self.line.clear();
        }
        Ok(())
    }

    /// Checks that the current line plus `extra` bytes stays within the
    /// limit, entering the error state otherwise.
    fn ensure_fits(&mut self, extra: usize) -> Result<(), SseError> {
        if self.line.len().saturating_add(extra) > self.max_line {
            self.failed = true;
            self.line.clear();
            self.pending_cr = false;
            return Err(self.too_long());
        }
        Ok(())
    }

    fn too_long(&self) -> SseError {
        SseError::LineTooLong {
            limit: self.max_line,
        }
    }
}

impl Default for SseParser {
    /// Same as [`SseParser::new`], so the parser can live in `Default`-derived
    /// connection state.
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "sse_parser_tests.rs"]
mod tests;
