//! `/openapi.json` and `/docs` stay honest: every route the code registers is documented, every
//! documented route exists on the live router, and the reference page renders it.

use std::collections::BTreeSet;

use awc::http::StatusCode;
use serde_json::Value;

use crate::harness::*;

/// `(method, path)` of every route registered in `src/http/*.rs` (and the UI assets).
pub fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/http") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        // `.route("/path", web::get()` possibly split over lines by rustfmt.
        let flat: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( \"", "(\"");
        for piece in flat.split(".route(\"").skip(1) {
            let Some((route, rest)) = piece.split_once('"') else {
                continue;
            };
            let rest = rest.trim_start_matches(", ");
            // `proxied(..)` is the gateway's POST route builder (src/http/openai.rs).
            let method = if rest.starts_with("proxied(") {
                Some("post")
            } else if rest.starts_with("crate::http::get_or_head(") {
                Some("get") // GET (and HEAD, which is not documented separately)
            } else {
                rest.strip_prefix("web::").and_then(|m| m.split('(').next())
            };
            let Some(method) = method else { continue };
            if ["get", "post", "put", "delete"].contains(&method) {
                out.insert((method.to_string(), normalise(route)));
            }
        }
        for piece in flat.split("asset!(\"").skip(1) {
            if let Some((route, _)) = piece.split_once('"') {
                if !route.starts_with("/static/") {
                    out.insert(("get".to_string(), route.to_string()));
                }
            }
        }
    }
    out
}

/// `{tail:.*}` style actix patterns are documented as `{tail}`.
pub fn normalise(route: &str) -> String {
    route
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) => format!("{{{}}}", inner.split(':').next().unwrap_or(inner)),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[actix_rt::test]
async fn openapi_documents_exactly_the_routes_the_router_has() {
    let broker = Broker::start(&[]);
    let (status, doc) = broker.call("GET", "/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let code = routes_in_source();
    let docs = documented(&doc);
    assert!(code.len() > 25, "scanned {code:?}");
    let undocumented: Vec<_> = code.difference(&docs).collect();
    let phantom: Vec<_> = docs.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /openapi.json: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "documented routes the code does not register: {phantom:?}"
    );

    // And on the live router: no documented operation falls through to the default 404.
    for (method, path) in docs {
        if path == "/ws" || path.starts_with("/push/") || path.starts_with("/internal/") {
            continue; // upgrade and push routes (off unless configured): covered by their own tests
        }
        let concrete = path.replace("{id}", "00000000000000000000000000000000");
        let (status, _, body) = request_raw(
            &method.to_uppercase(),
            &format!("{}{concrete}", broker.url),
            &[],
            Some("{}".into()),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("no route for"),
            "{method} {path} is not routed ({status})"
        );
    }
}

#[actix_rt::test]
async fn the_reference_page_is_served_publicly() {
    let broker = Broker::start(&[
        ("SWITCHBOARD_UI_PASSWORD", "pw"),
        ("SWITCHBOARD_API_KEYS", "k"),
    ]);
    for path in ["/docs", "/openapi.json", "/static/docs.js"] {
        let (status, headers, _) =
            request_raw("GET", &format!("{}{path}", broker.url), &[], None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers.get("content-security-policy").is_some());
    }
}
