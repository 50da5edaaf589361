//! The web UI: pages and assets from `web/`, embedded in the binary at compile time so the
//! binary is the whole deployment. Every page response carries the security headers of SPEC §7.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::state::AppState;

/// Content-Security-Policy of every page: only our own origin, never framed.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

/// One embedded file: the URL path it is served at, its bytes and content type.
struct Asset {
    path: &'static str,
    body: &'static str,
    content_type: &'static str,
    /// Served without the UI credentials (the API reference holds no secrets).
    public: bool,
}

macro_rules! asset {
    ($path:expr, $file:expr, $ct:expr) => {
        asset!($path, $file, $ct, false)
    };
    ($path:expr, $file:expr, $ct:expr, $public:expr) => {
        Asset {
            path: $path,
            body: include_str!(concat!("../../web/", $file)),
            content_type: $ct,
            public: $public,
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";
// Markdown as plain text: every browser shows it (text/markdown is often downloaded instead).
const MARKDOWN: &str = "text/plain; charset=utf-8";

/// Every file the UI serves. Add a line here when adding a file to `web/`.
static ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    // The same page; compare.js picks the SSE transport from the path.
    asset!("/sse", "index.html", HTML),
    asset!("/dashboard", "dashboard.html", HTML),
    asset!("/static/style.css", "style.css", CSS),
    asset!("/static/dom.js", "dom.js", JS),
    asset!("/static/common.js", "common.js", JS),
    asset!("/static/compare.js", "compare.js", JS),
    asset!("/static/panels.js", "panels.js", JS),
    asset!("/static/connection.js", "connection.js", JS),
    asset!("/static/timeline-data.js", "timeline-data.js", JS),
    asset!("/static/timeline.js", "timeline.js", JS),
    asset!("/static/dashboard.js", "dashboard.js", JS),
    asset!("/static/health-chart.js", "health-chart.js", JS),
    asset!("/static/backup.js", "backup.js", JS),
    asset!("/static/playground.js", "playground.js", JS),
    asset!("/docs", "docs.html", HTML, true),
    asset!("/static/docs.js", "docs.js", JS, true),
    asset!("/static/docs.css", "docs.css", CSS, true),
    asset!("/openapi.json", "openapi.json", JSON, true),
    // The session protocol reference (the repository's docs/protocol.md), linked from /docs.
    asset!("/docs/protocol.md", "../docs/protocol.md", MARKDOWN, true),
];

/// Routes for every embedded asset.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        cfg.route(asset.path, crate::http::get_or_head().to(serve));
    }
    cfg.route("/favicon.ico", crate::http::get_or_head().to(no_icon));
}

/// Whether `path` is a page or asset this module serves (GET and HEAD).
pub fn is_asset(path: &str) -> bool {
    path == "/favicon.ico" || ASSETS.iter().any(|a| a.path == path)
}

/// Browsers ask for an icon on every page; an empty answer keeps their consoles clean.
async fn no_icon() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::CACHE_CONTROL, "max-age=86400"))
        .finish()
}

async fn serve(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.path == req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    if !asset.public {
        if let Err(err) = crate::auth::require_ui(&req, &state, crate::credentials::Surface::Ui) {
            return actix_web::ResponseError::error_response(&err);
        }
    }
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(asset.body)
}
