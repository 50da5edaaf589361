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
mod tests {
    use super::*;

    struct Fixture {
        name: &'static str,
        sse: &'static [u8],
        expected: &'static str,
    }

    macro_rules! fixture {
        ($name:literal) => {
            Fixture {
                name: $name,
                sse: include_bytes!(concat!("../../fixtures/streams/", $name, ".sse")),
                expected: include_str!(concat!("../../fixtures/streams/", $name, ".expected.json")),
            }
        };
    }

    const FIXTURES: &[Fixture] = &[
        fixture!("openai_chat"),
        fixture!("openai_tools"),
        fixture!("vllm_chat"),
        fixture!("ollama_tools"),
        fixture!("llamacpp_chat"),
        fixture!("multiline_event"),
    ];

    /// Feeds `chunks` then finishes; panics on a parse error.
    fn parse_chunks<'a>(
        p: &mut SseParser,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        parse_chunks(&mut SseParser::new(), chunks.iter().copied())
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: data.to_owned(),
            ..SseEvent::default()
        }
    }

    // ---- minimal JSON reader for the *.expected.json format ----
    // Accepts exactly: an array of flat objects with keys event/data/id/retry,
    // values being strings, null, or (retry only) unsigned integers.

    struct Json<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Json<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            let hit = self.s.get(self.i) == Some(&c);
            self.i += usize::from(hit);
            hit
        }
        fn expect(&mut self, c: u8) {
            assert!(self.eat(c), "expected '{}' at byte {}", c as char, self.i);
        }
        fn null(&mut self) -> bool {
            self.ws();
            let hit = self.s[self.i..].starts_with(b"null");
            self.i += if hit { 4 } else { 0 };
            hit
        }
        fn opt_string(&mut self) -> Option<String> {
            if self.null() {
                None
            } else {
                Some(self.string())
            }
        }
        fn number(&mut self) -> u64 {
            self.ws();
            let start = self.i;
            while self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            std::str::from_utf8(&self.s[start..self.i])
                .unwrap()
                .parse()
                .unwrap()
        }
        fn hex4(&mut self) -> u32 {
            let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
            self.i += 4;
            u32::from_str_radix(h, 16).unwrap()
        }
        fn string(&mut self) -> String {
            self.expect(b'"');
            let mut out = Vec::new();
            loop {
                let b = self.s[self.i];
                self.i += 1;
                match b {
                    b'"' => break,
                    b'\\' => {
                        let e = self.s[self.i];
                        self.i += 1;
                        match e {
                            b'"' | b'\\' | b'/' => out.push(e),
                            b'n' => out.push(b'\n'),
                            b'r' => out.push(b'\r'),
                            b't' => out.push(b'\t'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'u' => {
                                let mut cp = self.hex4();
                                if (0xD800..0xDC00).contains(&cp) {
                                    assert!(self.s[self.i..].starts_with(b"\\u"));
                                    self.i += 2;
                                    cp = 0x10000 + ((cp - 0xD800) << 10) + (self.hex4() - 0xDC00);
                                }
                                let ch = char::from_u32(cp).unwrap();
                                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                            }
                            _ => panic!("bad escape at byte {}", self.i),
                        }
                    }
                    _ => out.push(b),
                }
            }
            String::from_utf8(out).unwrap()
        }
        fn event(&mut self) -> SseEvent {
            let mut ev = SseEvent::default();
            self.expect(b'{');
            loop {
                let key = self.string();
                self.expect(b':');
                match key.as_str() {
                    "event" => ev.event = self.opt_string(),
                    "data" => ev.data = self.string(),
                    "id" => ev.id = self.opt_string(),
                    "retry" => {
                        ev.retry = if self.null() {
                            None
                        } else {
                            Some(self.number())
                        }
                    }
                    other => panic!("unknown key {other}"),
                }
                if self.eat(b'}') {
                    return ev;
                }
                self.expect(b',');
            }
        }
    }

    fn parse_expected(src: &str) -> Vec<SseEvent> {
        let mut p = Json {
            s: src.as_bytes(),
            i: 0,
        };
        let mut events = Vec::new();
        p.expect(b'[');
        if !p.eat(b']') {
            loop {
                events.push(p.event());
                if p.eat(b']') {
                    break;
                }
                p.expect(b',');
            }
        }
        p.ws();
        assert_eq!(p.i, p.s.len(), "trailing bytes after the array");
        events
    }

    // ---- fixture tests ----

    #[test]
    fn expected_reader_handles_escapes() {
        let evs = parse_expected(
            r#"[{"event": "a\"b", "data": "x\\n\n\u00e9\ud83e\uddca/\/", "id": null, "retry": 7}]"#,
        );
        assert_eq!(
            evs,
            vec![SseEvent {
                event: Some("a\"b".into()),
                data: "x\\n\né🧊//".into(),
                id: None,
                retry: Some(7),
            }]
        );
        assert!(parse_expected(" [ ] ").is_empty());
    }

    #[test]
    fn fixtures_whole_feed() {
        for f in FIXTURES {
            let expected = parse_expected(f.expected);
            assert!(!expected.is_empty(), "{}: empty expectation", f.name);
            assert_eq!(parse(&[f.sse]), expected, "{}: single feed", f.name);
        }
    }

    #[test]
    fn fixtures_every_two_way_split() {
        for f in FIXTURES {
            let expected = parse_expected(f.expected);
            let mut p = SseParser::new();
            for at in 0..=f.sse.len() {
                let (a, b) = f.sse.split_at(at);
                assert_eq!(
                    parse_chunks(&mut p, [a, b]),
                    expected,
                    "{}: split at {at}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn fixtures_byte_at_a_time() {
        for f in FIXTURES {
            let expected = parse_expected(f.expected);
            let got = parse_chunks(&mut SseParser::new(), f.sse.chunks(1));
            assert_eq!(got, expected, "{}: byte at a time", f.name);
        }
    }

    #[test]
    fn fixtures_end_with_done_marker() {
        for f in FIXTURES.iter().filter(|f| f.name != "multiline_event") {
            let evs = parse(&[f.sse]);
            assert!(evs.last().is_some_and(is_done_marker), "{}", f.name);
            assert_eq!(
                evs.iter().filter(|e| is_done_marker(e)).count(),
                1,
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn fixture_comment_counts() {
        let counts = [
            ("openai_chat", 0),
            ("llamacpp_chat", 4),
            ("multiline_event", 1),
        ];
        for (name, want) in counts {
            let f = FIXTURES.iter().find(|f| f.name == name).unwrap();
            let mut p = SseParser::new();
            let mut out = Vec::new();
            for c in f.sse.chunks(7) {
                p.feed(c, &mut out).unwrap();
            }
            p.finish(&mut out);
            assert_eq!(p.comments_seen(), want, "{name}");
        }
    }

    // ---- targeted tests ----

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let got = parse(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(got, vec![ev("a\nb")]);
        // An empty chunk between CR and LF must not break the pairing.
        let got = parse(&[b"data: a\r", b"", b"\n", b"\n"]);
        assert_eq!(got, vec![ev("a")]);
    }

    #[test]
    fn cr_only_line_endings() {
        assert_eq!(parse(&[b"data: a\rdata: b\r\r"]), vec![ev("a\nb")]);
        // CR at chunk end followed by a non-LF byte: still a line ending.
        assert_eq!(
            parse(&[b"data: a\r", b"data: b\r", b"\r"]),
            vec![ev("a\nb")]
        );
        // CR CR is two line endings, i.e. a blank line.
        assert_eq!(
            parse(&[b"data: a\r", b"\rdata: b\n\n"]),
            vec![ev("a"), ev("b")]
        );
    }

    #[test]
    fn comments_are_counted_and_ignored() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b": ping\n:\ndata: x\n: inside\n\n:tail", &mut out)
            .unwrap();
        assert_eq!(p.comments_seen(), 3);
        p.finish(&mut out);
        assert_eq!(out, vec![ev("x")]);
        assert_eq!(p.comments_seen(), 4, "kept after finish");
        p.reset();
        assert_eq!(p.comments_seen(), 0);
    }

    #[test]
    fn data_without_space_and_extra_spaces() {
        assert_eq!(parse(&[b"data:x\n\n"]), vec![ev("x")]);
        assert_eq!(parse(&[b"data:  x \n\n"]), vec![ev(" x ")]);
        assert_eq!(parse(&[b"data:\n\n"]), vec![ev("")]);
        assert_eq!(parse(&[b"data:a:b\n\n"]), vec![ev("a:b")]);
    }

    #[test]
    fn line_without_colon_is_field_with_empty_value() {
        assert_eq!(parse(&[b"data\n\n"]), vec![ev("")]);
        assert_eq!(parse(&[b"data\ndata\n\n"]), vec![ev("\n")]);
        assert_eq!(parse(&[b"event: x\nevent\ndata: y\n\n"]), vec![ev("y")]);
        assert_eq!(parse(&[b"unknown\nDATA: y\n\n"]), vec![]);
    }

    #[test]
    fn event_type_and_blank_line_without_data() {
        let got = parse(&[b"event: ping\n\ndata: a\n\nevent: upd\ndata: b\n\n"]);
        let upd = SseEvent {
            event: Some("upd".into()),
            ..ev("b")
        };
        assert_eq!(got, vec![ev("a"), upd]);
    }

    #[test]
    fn id_persists_and_nul_ids_are_ignored() {
        let got = parse(&[b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\ndata: c\n\nid:\ndata: d\n\n"]);
        let with_id = |d: &str, id: Option<&str>| SseEvent {
            id: id.map(str::to_owned),
            ..ev(d)
        };
        assert_eq!(
            got,
            vec![
                with_id("a", Some("1")),
                with_id("b", Some("1")),
                with_id("c", Some("1")),
                with_id("d", None),
            ]
        );
    }

    #[test]
    fn retry_needs_only_ascii_digits() {
        let retry_of = |s: &[u8]| parse(&[s]).first().and_then(|e| e.retry);
        assert_eq!(retry_of(b"retry: 1500\ndata: a\n\n"), Some(1500));
        assert_eq!(retry_of(b"retry:0\ndata: a\n\n"), Some(0));
        assert_eq!(retry_of(b"retry: 12a\ndata: a\n\n"), None);
        assert_eq!(retry_of(b"retry: -1\ndata: a\n\n"), None);
        assert_eq!(retry_of(b"retry: +5\ndata: a\n\n"), None);
        assert_eq!(retry_of(b"retry:  100\ndata: a\n\n"), None);
        assert_eq!(retry_of(b"retry:\ndata: a\n\n"), None);
        assert_eq!(
            retry_of(b"retry: 99999999999999999999999\ndata: a\n\n"),
            None
        );
        // Invalid value keeps the earlier valid one.
        assert_eq!(retry_of(b"retry: 10\nretry: x\ndata: a\n\n"), Some(10));
        // A retry-only block is carried to the next event, then cleared.
        let got = parse(&[b"retry: 3000\n\ndata: a\n\ndata: b\n\n"]);
        assert_eq!(got[0].retry, Some(3000));
        assert_eq!(got[1].retry, None);
    }

    #[test]
    fn bom_is_skipped_only_at_stream_start() {
        let src = "\u{FEFF}data: a\n\n".as_bytes();
        for at in 0..=src.len() {
            let (x, y) = src.split_at(at);
            assert_eq!(parse(&[x, y]), vec![ev("a")], "split at {at}");
        }
        // A second BOM (or one after the first line) is part of the field name.
        assert_eq!(parse(&["\u{FEFF}\u{FEFF}data: a\n\n".as_bytes()]), vec![]);
        assert_eq!(parse(&["\n\u{FEFF}data: a\n\n".as_bytes()]), vec![]);
        // Reset and finish both re-arm BOM skipping for the next stream.
        let mut p = SseParser::new();
        assert_eq!(parse_chunks(&mut p, [src]), vec![ev("a")]);
        assert_eq!(parse_chunks(&mut p, [src]), vec![ev("a")]);
    }

    #[test]
    fn line_too_long_then_reset() {
        let mut p = SseParser::with_max_line(8);
        let mut out = Vec::new();
        // Exactly at the limit is fine, also when split.
        p.feed(b"data", &mut out).unwrap();
        p.feed(b": ab\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("ab")]);
        // One byte over within one chunk.
        let err = p.feed(b"data: ok\n\ndata: abc\n\n", &mut out).unwrap_err();
        assert_eq!(err, SseError::LineTooLong { limit: 8 });
        assert_eq!(out, vec![ev("ab"), ev("ok")], "earlier events kept");
        assert_eq!(
            err.to_string(),
            "SSE line exceeds the maximum length of 8 bytes"
        );
        // Sticky until reset; finish dispatches nothing.
        assert!(p.feed(b"\n", &mut out).is_err());
        p.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert!(p.feed(b"data: 1\n\n", &mut out).is_ok(), "finish resets");
        // Over the limit across chunks, without a newline.
        assert!(p.feed(b"data", &mut out).is_ok());
        assert!(p.feed(b": abc", &mut out).is_err());
        p.reset();
        out.clear();
        p.feed(b"data: 1\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("1")]);
    }

    #[test]
    fn default_limit_is_one_mebibyte() {
        let mut line = b"data: ".to_vec();
        line.resize(DEFAULT_MAX_LINE, b'x');
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(&line, &mut out).unwrap();
        p.feed(b"\n\n", &mut out).unwrap();
        assert_eq!(out[0].data.len(), DEFAULT_MAX_LINE - 6);
        line.push(b'x');
        assert_eq!(
            p.feed(&line, &mut out),
            Err(SseError::LineTooLong { limit: 1 << 20 })
        );
    }

    #[test]
    fn finish_dispatches_pending_event() {
        assert_eq!(parse(&[b"data: a\n"]), vec![ev("a")]);
        assert_eq!(parse(&[b"data: a"]), vec![ev("a")]);
        assert_eq!(parse(&[b"data: a\r"]), vec![ev("a")]);
        let got = parse(&[b"event: x\ndata: a\nda", b"ta: b"]);
        let want = SseEvent {
            event: Some("x".into()),
            ..ev("a\nb")
        };
        assert_eq!(got, vec![want]);
        // No data pending: nothing to dispatch.
        assert_eq!(parse(&[b"event: x\nid: 3\n"]), vec![]);
        assert_eq!(parse(&[b"data: a\n\n"]), vec![ev("a")]);
    }

    #[test]
    fn empty_streams() {
        assert_eq!(parse(&[]), vec![]);
        assert_eq!(parse(&[b""]), vec![]);
        assert_eq!(parse(&[b"\n\n\r\n\r"]), vec![]);
        assert_eq!(parse(&[b": only a comment"]), vec![]);
    }

    #[test]
    fn out_is_appended_not_cleared() {
        let mut p = SseParser::new();
        let mut out = vec![ev("old")];
        p.feed(b"data: new\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("old"), ev("new")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_panicking() {
        // Building blocks for the pseudo-random stream below.
        const TOKENS: [&[u8]; 10] = [
            b"data: ",
            b"data:",
            b"\r",
            b"\n",
            b"\r\n",
            b": c",
            b"event: e",
            b"id: 1",
            b"retry: 9",
            b"\xEF\xBB\xBF",
        ];
        let got = parse(&[b"data: \xff\xfe ok\nevent: \xc3\n\n"]);
        let want = SseEvent {
            event: Some("\u{FFFD}".into()),
            ..ev("\u{FFFD}\u{FFFD} ok")
        };
        assert_eq!(got, vec![want]);
        // Split multi-byte characters are reassembled, not replaced.
        let src = "data: é🧊\n\n".as_bytes();
        assert_eq!(
            parse_chunks(&mut SseParser::new(), src.chunks(1)),
            vec![ev("é🧊")]
        );
        // Pseudo-random SSE-ish garbage (field names, line endings, stray
        // bytes) in odd chunk sizes never panics.
        let mut x: u32 = 0x1234_5678;
        let mut garbage = Vec::new();
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [lo, hi, ..] = x.to_le_bytes();
            if lo % 4 == 0 {
                garbage.push(hi);
            } else {
                garbage.extend_from_slice(TOKENS[usize::from(hi) % TOKENS.len()]);
            }
        }
        let mut p = SseParser::with_max_line(64);
        let mut out = Vec::new();
        for c in garbage.chunks(13) {
            if p.feed(c, &mut out).is_err() {
                p.reset();
            }
        }
        p.finish(&mut out);
        // Without the limit, chunking must not change the result.
        let whole = parse(&[&garbage]);
        assert!(!whole.is_empty());
        for size in [1, 2, 3, 13, 4096] {
            let got = parse_chunks(&mut SseParser::new(), garbage.chunks(size));
            assert_eq!(got, whole, "chunk size {size}");
        }
    }

    #[test]
    fn done_marker() {
        assert!(is_done_marker(&ev("[DONE]")));
        assert!(is_done_marker(&ev(" [DONE]\n")));
        assert!(!is_done_marker(&ev("[DONE]x")));
        assert!(!is_done_marker(&ev("")));
        assert!(!is_done_marker(&ev("{\"done\":true}")));
    }
}
