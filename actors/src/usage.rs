//! Token counting for `switchboard_tokens_total` (SPEC §8): the usage a backend reports, found in
//! the bytes as they are relayed (no buffering, no JSON parse of the body), or the broker's
//! estimate when it reports none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use memchr::memmem;

use crate::events::Usage;

/// The searchers of the two needles every relayed chunk is scanned for, built once:
/// `memmem::find_iter` / `memmem::rfind` would build (and throw away) one per chunk, which
/// showed in the stream profile (`Searcher::new`, `FinderBuilder::build_reverse`).
static DATA_FIELD: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"data:"));
static USAGE_KEY: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\"usage\""));

/// Tokens one backend served, by kind and by whether the broker estimated them. Lives on the
/// backend's routing handle, so its labels are registered names only.
#[derive(Default)]
pub struct TokenCounts {
    /// `[reported, estimated]`.
    prompt: [AtomicU64; 2],
    completion: [AtomicU64; 2],
}

impl TokenCounts {
    /// Adds one request's or one turn's usage.
    pub fn add(&self, usage: &Usage) {
        let i = usize::from(usage.estimated);
        self.prompt[i].fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion[i].fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }

    /// `(kind, estimated, tokens)` for every series, zeros included.
    pub fn rows(&self) -> [(&'static str, bool, u64); 4] {
        let get = |a: &[AtomicU64; 2], i: usize| a[i].load(Ordering::Relaxed);
        [
            ("prompt", false, get(&self.prompt, 0)),
            ("completion", false, get(&self.completion, 0)),
            ("prompt", true, get(&self.prompt, 1)),
            ("completion", true, get(&self.completion, 1)),
        ]
    }
}

/// Watches a relayed `/v1` body (SSE or JSON) for the backend's `usage` object, chunk by chunk.
/// A usage object split across two chunks is missed and the estimate is used instead: backends
/// send it whole in the last event, so this costs one SIMD substring search per chunk.
#[derive(Default)]
pub struct UsageWatch {
    reported: Option<(u64, u64)>,
    /// SSE data events seen: the completion estimate (one token per event, the role and
    /// finish events aside) when the backend reports no usage.
    data_events: u64,
}

impl UsageWatch {
    /// Looks at the next relayed chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.data_events += DATA_FIELD.find_iter(chunk).count() as u64;
        if let Some(found) = find_usage(chunk) {
            self.reported = Some(found);
        }
    }

    /// The usage to count at the end: what the backend reported, else an estimate from the
    /// request body's size (about 4 bytes a token) and the stream's events.
    pub fn usage(&self, request_bytes: usize, is_sse: bool) -> Option<Usage> {
        match self.reported {
            Some((prompt, completion)) => Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                estimated: false,
            }),
            // Only a stream can be estimated; a JSON answer without usage counts nothing.
            None if is_sse => {
                let prompt = (request_bytes as u64).div_ceil(4);
                // The role-only first event, the finish event and `[DONE]` carry no text.
                let completion = self.data_events.saturating_sub(3);
                Some(Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt + completion,
                    estimated: true,
                })
            }
            None => None,
        }
    }
}

/// `(prompt_tokens, completion_tokens)` of a `"usage":{…}` object in `bytes`, if a whole one is
/// there. `completion_tokens` is 0 when absent (embeddings report prompt tokens only).
pub fn find_usage(bytes: &[u8]) -> Option<(u64, u64)> {
    let start = USAGE_KEY.rfind(bytes)?;
    let rest = &bytes[start + 7..];
    let rest = skip_ws(rest).strip_prefix(b":")?;
    let object = skip_ws(rest).strip_prefix(b"{")?;
    let end = memchr::memchr(b'}', object)?;
    let object = &object[..end];
    let prompt = number_after(object, b"\"prompt_tokens\"")?;
    let completion = number_after(object, b"\"completion_tokens\"").unwrap_or(0);
    Some((prompt, completion))
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn number_after(object: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(object, key)?;
    let rest = skip_ws(&object[at + key.len()..]).strip_prefix(b":")?;
    let rest = skip_ws(rest);
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_in_a_final_stream_event_and_a_json_body() {
        let event = b"data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n";
        assert_eq!(find_usage(event), Some((9, 12)));
        let json = b"{\"object\":\"chat.completion\",\"usage\": { \"prompt_tokens\" : 5 , \"completion_tokens\": 7,\"prompt_tokens_details\":{\"cached_tokens\":3}}}";
        assert_eq!(find_usage(json), Some((5, 7)));
        let embedding = b"{\"data\":[],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}";
        assert_eq!(find_usage(embedding), Some((4, 0)));
    }

    #[test]
    fn no_usage_or_null_usage_is_none() {
        assert_eq!(find_usage(b"data: {\"choices\":[]}\n\n"), None);
        assert_eq!(find_usage(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(find_usage(b"{\"usage\":{\"prompt_tokens\""), None);
    }

    #[test]
    fn a_stream_without_usage_is_estimated_and_one_with_it_is_not() {
        let mut w = UsageWatch::default();
        w.feed(b"data: {\"role\"}\n\ndata: {\"content\":\"a\"}\n\n");
        w.feed(
            b"data: {\"content\":\"b\"}\n\ndata: {\"finish_reason\":\"stop\"}\n\ndata: [DONE]\n\n",
        );
        let u = w.usage(40, true).expect("estimated");
        assert!(u.estimated);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (10, 2));
        w.feed(b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n");
        let u = w.usage(40, true).expect("reported");
        assert!(!u.estimated);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 2));
        assert!(UsageWatch::default().usage(40, false).is_none());
    }

    #[test]
    fn counts_add_up_by_kind_and_estimate() {
        let c = TokenCounts::default();
        let usage = |p, q, estimated| Usage {
            prompt_tokens: p,
            completion_tokens: q,
            total_tokens: p + q,
            estimated,
        };
        c.add(&usage(3, 4, false));
        c.add(&usage(1, 1, false));
        c.add(&usage(10, 20, true));
        assert_eq!(
            c.rows(),
            [
                ("prompt", false, 4),
                ("completion", false, 5),
                ("prompt", true, 10),
                ("completion", true, 20)
            ]
        );
    }
}
