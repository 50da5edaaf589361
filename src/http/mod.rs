//! The HTTP surface: one module per route family, plus the relay body of proxied responses.

pub mod admin;
pub mod backup;
pub mod browser_policy;
pub mod conn;
pub mod gate;
pub mod guard;
pub mod openai;
pub mod ops;
pub mod push;
pub mod relay;
pub mod request;
pub mod sse;
pub mod ui;
pub mod ws;
pub mod ws_body;
pub mod ws_guard;

use std::net::{IpAddr, Ipv4Addr};

use actix_web::{web, HttpRequest, HttpResponse};

use crate::errors::ApiError;

/// Every route of the broker; shared by `main` and anything else that builds the app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    openai::configure(cfg);
    admin::configure(cfg);
    ops::configure(cfg);
    ui::configure(cfg);
    ws::configure(cfg);
    sse::configure(cfg);
    push::configure(cfg);
    backup::configure(cfg);
}

/// A route for GET that answers HEAD too (headers only; actix-http drops the body), so
/// `curl -I` and uptime checkers see the page or asset exists.
pub fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// The methods of every route pattern, for the `Allow` header of a 405 (SPEC §2: a known path
/// with the wrong method). A route added in a `configure` above needs its line here; a test
/// (`tests/it/security.rs`) walks this table against the live routes.
pub const ALLOW: &[(&str, &str)] = &[
    ("/v1/models", "GET"),
    ("/v1/models/{model:.+}", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/admin/register", "POST"),
    ("/admin/register/{id}", "PUT, DELETE"),
    ("/admin/servers", "GET"),
    ("/admin/servers/{id}", "GET"),
    ("/admin/servers/{id}/health-check", "POST"),
    ("/admin/servers/{id}/activate", "POST"),
    ("/admin/stats", "GET"),
    ("/admin/export", "GET"),
    ("/admin/import", "POST"),
    ("/health", "GET, HEAD"),
    ("/metrics", "GET"),
    ("/debug/memory", "GET"),
    ("/api/limitations", "GET, HEAD"),
    ("/ws", "GET"),
    ("/api/sessions", "POST"),
    ("/api/sessions/{id}", "GET, DELETE"),
    ("/api/sessions/{id}/events", "GET"),
    ("/api/sessions/{id}/messages", "POST"),
    ("/api/sessions/{id}/cancel", "POST"),
    ("/api/sessions/{id}/clear", "POST"),
    ("/push/{tail:.*}", "GET"),
    ("/internal/send", "POST"),
];

/// Unknown routes answer 404 in the same error shape as everything else; a known path with
/// another method 405 with `Allow`.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allow = req
        .resource_map()
        .match_pattern(req.path())
        .and_then(|pattern| {
            ALLOW
                .iter()
                .find(|(p, _)| *p == pattern)
                .map(|(_, methods)| *methods)
                // Pages and assets (ui.rs) take GET and HEAD.
                .or_else(|| ui::is_asset(&pattern).then_some("GET, HEAD"))
        });
    let err = match allow {
        Some(allow) => ApiError::method_not_allowed(req.method().as_str(), req.path(), allow),
        None => ApiError::not_found(format!("no route for {} {}", req.method(), req.path())),
    };
    actix_web::ResponseError::error_response(&err)
}

/// The client's IP: the socket peer, or with `trust_proxy` the last `X-Forwarded-For` entry
/// (falling back to `X-Real-IP`): the one the proxy in front (Railway, nginx) appended. Entries
/// before it come from the client and are not trusted: taking the first would let anyone dodge
/// the per-IP rate limit and connection cap by sending their own header.
pub fn client_ip(req: &HttpRequest, trust_proxy: bool) -> IpAddr {
    if trust_proxy {
        // The last header line (a proxy may add its own line rather than append), and in it
        // the last entry.
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .or_else(|| req.headers().get("x-real-ip").and_then(|v| v.to_str().ok()))
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    req.peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_proxy_appended_forwarded_entry_is_the_client() {
        let req = TestRequest::default()
            .insert_header(("x-forwarded-for", "6.6.6.6, 1.2.3.4"))
            .peer_addr("10.0.0.1:5000".parse().expect("addr"))
            .to_http_request();
        assert_eq!(client_ip(&req, true).to_string(), "1.2.3.4");
        assert_eq!(client_ip(&req, false).to_string(), "10.0.0.1");
        let two_lines = TestRequest::default()
            .append_header(("x-forwarded-for", "6.6.6.6"))
            .append_header(("x-forwarded-for", "1.2.3.5"))
            .to_http_request();
        assert_eq!(client_ip(&two_lines, true).to_string(), "1.2.3.5");
        let bare = TestRequest::default()
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        assert_eq!(client_ip(&bare, true).to_string(), "1.2.3.4");
    }
}
