//! Unit tests of the SSE parser (fixtures in `fixtures/streams/`).

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
