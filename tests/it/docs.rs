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

// === docs/protocol.md stays complete ===

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `ToolStart` → `tool_start` (serde's `rename_all = "snake_case"`).
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The variant names of every enum serialised with `#[serde(tag = "type")]` in `source`:
/// `(enum name, [wire names])`.
fn tagged_enums(source: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for piece in source.split("tag = \"type\"").skip(1) {
        let Some(start) = piece.find("enum ") else {
            continue;
        };
        let rest = &piece[start + 5..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = rest.find('{') else { continue };
        // Walk the body; a variant is an identifier starting a line at depth 1.
        let mut depth = 0usize;
        let mut variants = Vec::new();
        for line in rest[open..].lines() {
            let trimmed = line.trim_start();
            if depth == 1
                && trimmed.starts_with(|c: char| c.is_ascii_uppercase())
                && !trimmed.starts_with("//")
            {
                let ident: String = trimmed
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                variants.push(snake_case(&ident));
            }
            for c in line.chars() {
                match c {
                    '{' | '(' => depth += 1,
                    '}' | ')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            if depth == 0 {
                break;
            }
        }
        out.push((name, variants));
    }
    out
}

/// Every WebSocket close code the production code can send: a 1000–1015 or 4000–4999 literal
/// that is a `u16` constant or sits right after a `close` call or mention. Test modules are
/// left out.
/// A module's tests kept in a file of their own (`x/tests.rs`, `x_tests.rs`): not production.
fn is_test_file(path: &std::path::Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s == "tests" || s.ends_with("_tests"))
}

fn close_codes_in_source() -> BTreeSet<u16> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src"), root.join("actors/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !is_test_file(&path) {
                files.push(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        let flat = production.split_whitespace().collect::<Vec<_>>().join(" ");
        let bytes = flat.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
                i += 1;
                continue;
            }
            let end = (i..bytes.len())
                .find(|&j| !bytes[j].is_ascii_digit())
                .unwrap_or(bytes.len());
            let number = flat[i..end].parse::<u32>().unwrap_or(0);
            let code_like = (1000..=1015).contains(&number) || (4000..=4999).contains(&number);
            // Bytes, not `str` slicing: the 48 bytes before may start inside a character.
            let before =
                String::from_utf8_lossy(&bytes[i.saturating_sub(48)..i]).to_ascii_lowercase();
            let after_close = before.contains("close");
            let constant = before.ends_with("u16 = ");
            if code_like && (after_close || constant) {
                out.insert(number as u16);
            }
            i = end;
        }
    }
    out
}

/// The `"name" =>` arms of `fn parse_message_fields` in events.rs: the client message types.
fn client_message_types(events: &str) -> Vec<String> {
    let Some(start) = events.find("fn parse_message_fields") else {
        return Vec::new();
    };
    let body = &events[start..];
    let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('"')?;
            let (name, after) = rest.split_once('"')?;
            after
                .trim_start()
                .starts_with("=>")
                .then(|| name.to_string())
        })
        .collect()
}

/// The close codes of the contract (SPEC §4.3, §8), whether or not the code emits them yet.
const CONTRACT_CLOSE_CODES: [u16; 10] =
    [4001, 4029, 4503, 4009, 4400, 1008, 1009, 1001, 1002, 1000];

#[test]
fn protocol_doc_describes_every_event_message_and_close_code() {
    let doc = repo_file("docs/protocol.md");
    let events = repo_file("actors/src/events.rs");
    let mut enums = tagged_enums(&events);
    // Client messages are parsed by hand (the `type` first): their names are the string arms
    // of `parse_message_fields`.
    enums.push(("client message".to_string(), client_message_types(&events)));
    let all: Vec<&String> = enums.iter().flat_map(|(_, v)| v).collect();
    for must in ["token", "done", "resync", "hello", "send", "heartbeat"] {
        assert!(
            all.iter().any(|v| v.as_str() == must),
            "the scan of events.rs found no `{must}`; found {enums:?}"
        );
    }
    let mut missing: Vec<String> = Vec::new();
    for (name, variants) in &enums {
        for v in variants {
            if !doc.contains(&format!("`{v}`")) {
                missing.push(format!("{name}::{v}"));
            }
        }
    }
    // The contract's newer events too, before the code has them.
    for v in ["cleared", "route"] {
        if !doc.contains(&format!("`{v}`")) {
            missing.push(v.to_string());
        }
    }

    let codes = close_codes_in_source();
    for constant in [4001, 4009, 4029, 4400, 4503, 1008, 1009, 1001] {
        assert!(
            codes.contains(&constant),
            "the scan of the sources missed close code {constant}: {codes:?}"
        );
    }
    let every: BTreeSet<u16> = codes
        .iter()
        .chain(CONTRACT_CLOSE_CODES.iter())
        .copied()
        .collect();
    for code in every {
        if !doc.contains(&format!("| `{code}` |")) {
            missing.push(format!("close code {code}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not describe: {missing:?}"
    );
}

#[test]
fn the_source_scanner_reads_serde_variant_names() {
    assert_eq!(snake_case("ToolStart"), "tool_start");
    let parsed = tagged_enums(
        "#[serde(tag = \"type\")]\npub enum E {\n    A {\n        x: Vec<u8>,\n    },\n    BigThing(u8),\n    // Comment\n    C {},\n}\n",
    );
    assert_eq!(
        parsed,
        vec![(
            "E".to_string(),
            vec!["a".to_string(), "big_thing".to_string(), "c".to_string()]
        )]
    );
}

#[actix_rt::test]
async fn the_protocol_reference_is_served_and_linked_from_docs_and_limitations() {
    let broker = Broker::start(&[
        ("SWITCHBOARD_UI_PASSWORD", "pw"),
        ("SWITCHBOARD_API_KEYS", "k"),
    ]);
    let url = broker.url.clone();
    let get = |path: &'static str| {
        let url = format!("{url}{path}");
        async move { request_raw("GET", &url, &[], None).await }
    };
    let (status, headers, body) = get("/docs/protocol.md").await;
    assert_eq!(status, StatusCode::OK, "public, like /docs");
    assert!(headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    assert_eq!(
        String::from_utf8_lossy(&body),
        repo_file("docs/protocol.md"),
        "the binary serves the repository's docs/protocol.md"
    );
    let (_, _, page) = get("/docs").await;
    assert!(String::from_utf8_lossy(&page).contains("href=\"/docs/protocol.md\""));
    let (status, _, limits) = get("/api/limitations").await;
    assert_eq!(status, StatusCode::OK);
    let limits: Value = serde_json::from_slice(&limits).expect("json");
    assert_eq!(limits["protocol"], "/docs/protocol.md");
    let doc = repo_file("docs/protocol.md");
    for item in limits["limitations"].as_array().expect("items") {
        if let Some(link) = item["docs"].as_str() {
            let anchor = link.split_once('#').map_or("", |(_, a)| a);
            let heading = doc.lines().filter(|l| l.starts_with('#')).any(|l| {
                let slug: String = l
                    .trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect();
                slug == anchor
            });
            assert!(heading, "{link} names no heading of docs/protocol.md");
        }
    }
}

#[test]
fn architecture_doc_names_only_files_that_exist() {
    let doc = repo_file("docs/architecture.md");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut named = 0;
    let mut missing = Vec::new();
    for (i, span) in doc.split('`').enumerate() {
        // Odd pieces are inside backticks; a path has a slash, no spaces, and a known ending.
        let looks_like_path = i % 2 == 1
            && span.contains('/')
            && !span.contains(' ')
            && span.starts_with(|c: char| c.is_ascii_lowercase())
            && [".rs", ".md", ".js", ".toml", ".json", ".sh", "/"]
                .iter()
                .any(|end| span.ends_with(end));
        if looks_like_path {
            named += 1;
            if !root.join(span).exists() {
                missing.push(span.to_string());
            }
        }
    }
    assert!(named > 10, "found only {named} paths; did the scan break?");
    assert!(
        missing.is_empty(),
        "docs/architecture.md names files that do not exist (update it with the code): {missing:?}"
    );
}

/// All production sources as one string (for "does the code still say this" checks).
fn all_sources() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::new();
    let mut dirs = vec![root.join("src"), root.join("actors/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).expect("source"));
            }
        }
    }
    // rustfmt splits long literals with `\` continuations; join them back.
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("\\ ", "")
}

#[test]
fn readme_links_the_docs_and_quotes_error_messages_the_code_still_prints() {
    let readme = repo_file("README.md");
    // The first screen keeps its two commands.
    let first_screen: String = readme.lines().take(12).collect::<Vec<_>>().join("\n");
    assert!(first_screen.contains("cargo run --release"));
    assert!(first_screen.contains("bash .ci/run"));
    for link in ["docs/protocol.md", "docs/architecture.md"] {
        assert!(
            readme.contains(&format!("]({link}")),
            "README does not link {link}"
        );
    }
    for section in [
        "## Cloud providers",
        "## Troubleshooting",
        "## Backup",
        "## Dependencies",
        "### Deploying to Railway",
    ] {
        assert!(readme.contains(section), "README lacks {section}");
    }
    for base in [
        "https://api.openai.com/v1",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "https://api.anthropic.com/v1",
        "https://openrouter.ai/api/v1",
    ] {
        assert!(
            readme.contains(&format!("\"endpoint_url\": \"{base}\"")),
            "no worked registration for {base}"
        );
    }
    // Troubleshooting quotes these; a rewording in the code must update the README.
    let code = all_sources();
    let flat_readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for message in [
        "refusing to start in public mode (listening on",
        "cannot listen on",
        "cannot open database",
        "admin key required: send it as X-API-Key or Authorization: Bearer",
        "invalid admin key",
        "health check of",
        "private backends are not allowed on this deployment (SWITCHBOARD_ALLOW_PRIVATE_BACKENDS)",
        "health_check_failed",
        "no_healthy_backend",
        "model_not_found",
    ] {
        assert!(
            flat_readme.contains(message),
            "README does not quote {message:?}"
        );
        assert!(
            code.contains(message),
            "the code no longer says {message:?}: update README's Troubleshooting"
        );
    }
    let bench = repo_file("bench/README.md");
    for machine_path in ["/work/", "/home/", "/root/", "/Users/"] {
        assert!(
            !bench.contains(machine_path),
            "bench/README.md names a machine-specific path ({machine_path})"
        );
    }
}
