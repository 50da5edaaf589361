//! Property tests (a light fuzzer, run in CI): the SSE parser, the OpenAI chunk interpreter and
//! the client-message parser must never panic on arbitrary input, and the parser must give the
//! same events however the input is split.

use proptest::prelude::*;
use switchboard_actors::events::parse_client_message;
use switchboard_actors::openai_stream::ChunkInterpreter;
use switchboard_actors::sse_parser::{SseEvent, SseParser};

fn parse_all(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
    let mut parser = SseParser::with_max_line(4096);
    let mut out = Vec::new();
    let mut failed = false;
    for c in chunks {
        if parser.feed(c, &mut out).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        parser.finish(&mut out);
    }
    (out, failed)
}

/// Bytes that look like SSE often enough to reach deep states.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(vec![0xef, 0xbb, 0xbf]),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_parser_is_split_invariant(data in sse_bytes(), cut_a in any::<prop::sample::Index>(), cut_b in any::<prop::sample::Index>()) {
        let (whole, whole_failed) = parse_all(&[&data]);
        let mut cuts = [cut_a.index(data.len() + 1), cut_b.index(data.len() + 1)];
        cuts.sort_unstable();
        let (a, rest) = data.split_at(cuts[0]);
        let (b, c) = rest.split_at(cuts[1] - cuts[0]);
        let (split, split_failed) = parse_all(&[a, b, c]);
        prop_assert_eq!(whole_failed, split_failed);
        if !whole_failed {
            prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn chunk_interpreter_never_panics(data in ".{0,200}", json in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut interp = ChunkInterpreter::default();
        let mut out = Vec::new();
        interp.feed(&data, 0, &mut out);
        interp.feed(&String::from_utf8_lossy(&json), 1, &mut out);
        interp.feed(r#"{"choices":[{"delta":{"tool_calls":[{"index":3,"function":{"arguments":{"a":1}}}]}}]}"#, 2, &mut out);
        interp.close_all(3, &mut out);
    }

    #[test]
    fn client_messages_never_panic(text in ".{0,300}") {
        let _ = parse_client_message(&text);
        let wrapped = format!(r#"{{"type":"send","request_id":"r","content":{text:?},"models":[{text:?}]}}"#);
        let _ = parse_client_message(&wrapped);
    }
}
