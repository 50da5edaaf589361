//! Unit tests of the gateway's request parsing (`openai.rs`).

use super::*;

fn status(r: Result<String, ApiError>) -> Result<String, (u16, Option<String>)> {
    r.map_err(|e| (e.status.as_u16(), e.param))
}

#[test]
fn request_validation() {
    let ok = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    assert_eq!(status(parse_request(ok, Endpoint::Chat)), Ok("m".into()));
    assert_eq!(
        status(parse_request(b"{not json", Endpoint::Chat))
            .unwrap_err()
            .0,
        400
    );
    assert_eq!(
        status(parse_request(b"[1,2]", Endpoint::Chat))
            .unwrap_err()
            .0,
        400
    );
    assert_eq!(
        status(parse_request(br#"{"messages":[]}"#, Endpoint::Chat)),
        Err((400, Some("model".into())))
    );
    assert_eq!(
        status(parse_request(
            br#"{"model":5,"messages":[]}"#,
            Endpoint::Chat
        )),
        Err((400, Some("model".into())))
    );
    assert_eq!(
        status(parse_request(
            br#"{"model":"m","messages":"hi"}"#,
            Endpoint::Chat
        )),
        Err((400, Some("messages".into())))
    );
    assert_eq!(
        status(parse_request(
            br#"{"model":"m","messages":[],"stream":"yes"}"#,
            Endpoint::Chat
        )),
        Err((400, Some("stream".into())))
    );
    assert_eq!(
        status(parse_request(
            b"{\"model\":\"m\\nFORGED\",\"messages\":[]}",
            Endpoint::Chat
        )),
        Err((400, Some("model".into())))
    );
    assert_eq!(
        status(parse_request(
            br#"{"model":"m","input":"x"}"#,
            Endpoint::Embeddings
        )),
        Ok("m".into())
    );
}

#[test]
fn routing_hints_read_prompt_cache_key_and_the_messages() {
    let body =
        br#"{"model":"m","prompt_cache_key":"t1","messages":[{"role":"user","content":"hi"}]}"#;
    let (model, hints) = parse_request_hints(body, Endpoint::Chat, true).expect("valid");
    assert_eq!(model, "m");
    assert_eq!(hints.thread, Some(thread_key("m", "t1")));
    assert_eq!(hints.prompt.map(|p| p.points.len()), Some(1));
    // Without the full policy the prompt is not hashed; another model is another thread.
    let (_, hints) = parse_request_hints(body, Endpoint::Chat, false).expect("valid");
    assert!(hints.prompt.is_none());
    assert_ne!(hints.thread, Some(thread_key("other", "t1")));
    let bad = br#"{"model":"m","prompt_cache_key":5,"messages":[]}"#;
    let err = parse_request_hints(bad, Endpoint::Chat, true).expect_err("refused");
    assert_eq!(
        (err.status.as_u16(), err.param.as_deref()),
        (400, Some("prompt_cache_key"))
    );
}

#[test]
fn generated_request_ids_are_distinct_v4_uuids() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in ids.iter().take(5) {
        assert_eq!(
            uuid::Uuid::parse_str(id).map(|u| u.get_version_num()).ok(),
            Some(4)
        );
    }
}

#[test]
fn request_ids_are_kept_when_sane() {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        header::HeaderValue::from_static("abc-1"),
    );
    assert_eq!(request_id(&h).ok().as_deref(), Some("abc-1"));
    h.insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        header::HeaderValue::from_static("has space"),
    );
    assert_ne!(request_id(&h).ok().as_deref(), Some("has space"));
    h.insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        header::HeaderValue::from_static("tab\there"),
    );
    assert_eq!(
        request_id(&h).map_err(|e| (e.status.as_u16(), e.param)),
        Err((400, Some("X-Request-Id".into())))
    );
}
