//! The one middleware in front of every route (SPEC §8 "Browsers are not trusted callers",
//! CORS, "Refusals are visible"). In order:
//!
//! 1. **Host** (local mode only): the `Host` header must name a loopback address, `localhost`
//!    (any port) or a host of `SWITCHBOARD_ALLOWED_HOSTS`; otherwise 403 `host_not_allowed`.
//!    This is what defeats DNS rebinding, where a foreign name resolves to 127.0.0.1.
//! 2. **CORS preflight** for `/v1/*`, `/api/sessions/*` and `/health` from an origin of
//!    `SWITCHBOARD_CORS_ORIGINS`: 204 with the allowed methods and headers.
//! 3. **Origin**: `/ws`, `/push/*` (each connect calls the application back) and every
//!    state-changing method (POST, PUT, DELETE, PATCH) anywhere
//!    with an `Origin` that is neither the request's own (`scheme://host:port`) nor listed
//!    → 403 `origin_not_allowed`, before any handler (so before any WebSocket upgrade).
//!    `Origin: null` is foreign; requests without `Origin` (SDKs, curl) are unaffected.
//!    A listed origin is accepted everywhere; `*` opens only the CORS routes.
//! 4. **Admin key** for `/admin/*`, `/metrics` and `/debug/*`, counted and throttled
//!    ([`crate::auth::gate`]), so a route added later cannot forget it.
//! 5. On the way out: CORS headers for an allowed origin on the CORS routes, `Vary: Origin`,
//!    and `X-Content-Type-Options: nosniff` on every response.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};

use crate::auth::{self, Denied, Reason, Surface};
use crate::errors::ApiError;
use crate::state::AppState;

/// Methods a preflight may ask for.
const CORS_METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
/// Request headers a cross-origin page may send.
const CORS_ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Request-Id, Last-Event-ID";
/// Response headers a cross-origin page may read.
const CORS_EXPOSE_HEADERS: &str =
    "X-Switchboard-Backend, X-Switchboard-Route, X-Request-Id, Retry-After";
/// How long a browser may cache a preflight answer (seconds).
const CORS_MAX_AGE: &str = "600";

/// An origin as compared: lowercase scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (the form of an `Origin` header). `None` for `null`,
    /// paths, user info or anything else.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (host, port) = split_authority(rest)?;
        Some(Origin {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }
}

/// `host[:port]` (IPv6 in brackets) → lowercase host (brackets kept) and port. `None` when it
/// is not a bare authority.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (text.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

/// `SWITCHBOARD_CORS_ORIGINS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None (the default): no CORS headers anywhere.
    #[default]
    None,
    /// `*`: any origin may call the CORS routes.
    Any,
    /// These origins.
    List(Vec<Origin>),
}

impl CorsOrigins {
    /// Parses the variable; the error names the entry that is not an origin.
    pub fn parse(text: &str) -> Result<CorsOrigins, String> {
        let entries: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(CorsOrigins::None);
        }
        if entries == ["*"] {
            return Ok(CorsOrigins::Any);
        }
        entries
            .iter()
            .map(|e| {
                Origin::parse(e.trim_end_matches('/')).ok_or_else(|| {
                    format!(
                        "`{e}` is not an origin: expected `*` or comma-separated \
                         scheme://host[:port] (e.g. https://app.example.com)"
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(CorsOrigins::List)
    }

    fn lists(&self, origin: &Origin) -> bool {
        matches!(self, CorsOrigins::List(l) if l.contains(origin))
    }

    fn is_none(&self) -> bool {
        *self == CorsOrigins::None
    }
}

/// What the middleware enforces, from configuration.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Local mode: the Host rule applies.
    pub local: bool,
    /// `SWITCHBOARD_ALLOWED_HOSTS`, lowercase (`host` or `host:port`).
    pub allowed_hosts: Vec<String>,
    pub cors: CorsOrigins,
}

impl BrowserPolicy {
    /// Whether a local broker answers this `Host` header value.
    fn host_allowed(&self, value: &str) -> bool {
        let Some((host, port)) = split_authority(value) else {
            return false;
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        {
            return true;
        }
        let with_port = port.map(|p| format!("{host}:{p}"));
        self.allowed_hosts
            .iter()
            .any(|h| *h == host || Some(h) == with_port.as_ref())
    }
}

/// The paths CORS applies to.
fn is_cors_path(path: &str) -> bool {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under("/v1") || under("/api/sessions") || path == "/health"
}

fn changes_state(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

/// The request's own origin: its scheme (`X-Forwarded-Proto` behind a trusted proxy, which
/// terminates TLS) and its `Host`.
fn own_origin(headers: &HeaderMap, secure: bool, trust_proxy: bool) -> Option<Origin> {
    let forwarded = trust_proxy
        .then(|| headers.get("x-forwarded-proto")?.to_str().ok())
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let scheme = forwarded.unwrap_or_else(|| if secure { "https" } else { "http" }.into());
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Origin::parse(&format!("{scheme}://{host}"))
}

/// The middleware; see the module docs.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let policy = &state.browser;
    let path = req.path();
    let surface = Surface::of_path(path);
    let refuse = |req: ServiceRequest, err: ApiError| {
        let resp = err.error_response();
        Ok(req.into_response(resp).map_into_right_body())
    };

    if policy.local {
        if let Some(host) = req.headers().get(header::HOST) {
            if !host.to_str().is_ok_and(|h| policy.host_allowed(h)) {
                auth::refused(req.request(), &state, surface, Reason::Host);
                return refuse(req, ApiError::host_not_allowed());
            }
        }
    }

    let origin_text = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let cors_path = !policy.cors.is_none() && is_cors_path(path);
    let origin = origin_text.as_deref().and_then(Origin::parse);
    let listed = origin.as_ref().is_some_and(|o| policy.cors.lists(o));
    let cors_allowed =
        cors_path && origin_text.is_some() && (listed || policy.cors == CorsOrigins::Any);

    if cors_allowed
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut resp = HttpResponse::NoContent();
        resp.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, CORS_METHODS))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOW_HEADERS))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE));
        let mut resp = resp.finish();
        cors_headers(resp.headers_mut(), &policy.cors, origin_text.as_deref());
        return Ok(req.into_response(resp).map_into_right_body());
    }

    if let Some(text) = &origin_text {
        // `/push/*` connects are GETs, but each one calls the application back.
        if changes_state(req.method()) || path == "/ws" || path.starts_with("/push/") {
            let own = own_origin(req.headers(), req.app_config().secure(), state.trust_proxy);
            let same = origin.is_some() && origin == own;
            if !(same || listed || cors_allowed) {
                auth::refused(req.request(), &state, surface, Reason::Origin);
                return refuse(req, ApiError::origin_not_allowed(&sanitize(text)));
            }
        }
    }

    if surface == Surface::Admin {
        let verdict = auth::gate(req.request(), &state, Surface::Admin, || {
            auth::admin_verdict(req.headers(), &state.admin_key)
        });
        match verdict {
            Ok(()) => {}
            Err(Denied::Throttled(e)) => return refuse(req, e),
            Err(Denied::Refused(reason)) => return refuse(req, auth::admin_error(reason)),
        }
    }

    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    if cors_path {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if cors_allowed {
            cors_headers(headers, &policy.cors, origin_text.as_deref());
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
        }
    }
    if !headers.contains_key(header::X_CONTENT_TYPE_OPTIONS) {
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    Ok(res.map_into_left_body())
}

/// `Access-Control-Allow-Origin` (the origin itself, or `*`) and `Vary: Origin`.
fn cors_headers(headers: &mut HeaderMap, cors: &CorsOrigins, origin: Option<&str>) {
    let value = match (cors, origin) {
        (CorsOrigins::Any, _) => Some(HeaderValue::from_static("*")),
        (_, Some(o)) => HeaderValue::from_str(o).ok(),
        _ => None,
    };
    if let Some(v) = value {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if !headers
        .get_all(header::VARY)
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"))
    {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// An untrusted header value fit for a message: printable ASCII, at most 200 characters.
fn sanitize(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports() {
        let o = Origin::parse("HTTP://Example.COM").unwrap();
        assert_eq!(o, Origin::parse("http://example.com:80").unwrap());
        assert_ne!(o, Origin::parse("https://example.com").unwrap());
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap(),
            Origin {
                scheme: "http".into(),
                host: "[::1]".into(),
                port: 8080
            }
        );
        for bad in [
            "null",
            "file://",
            "http://",
            "http://a/b",
            "http://u@a",
            "http://a:x",
            "ftp://a",
            "http://::1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cors_list_parses_or_names_the_bad_entry() {
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
        let list = CorsOrigins::parse("https://a.example, http://localhost:3000/").unwrap();
        assert!(list.lists(&Origin::parse("https://a.example:443").unwrap()));
        assert!(list.lists(&Origin::parse("http://localhost:3000").unwrap()));
        assert!(!list.lists(&Origin::parse("http://localhost:3001").unwrap()));
        assert!(CorsOrigins::parse("https://a.example,evil")
            .unwrap_err()
            .contains("`evil`"));
    }

    #[test]
    fn local_hosts() {
        let p = BrowserPolicy {
            local: true,
            allowed_hosts: vec!["box.lan".into(), "nas:9000".into()],
            cors: CorsOrigins::None,
        };
        for ok in [
            "127.0.0.1:8080",
            "127.9.9.9",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "box.lan:8080",
            "nas:9000",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "0.0.0.0:8080",
            "192.168.1.2",
            "localhost.evil.example",
            "nas:9001",
            "",
            "a b",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn own_origin_follows_a_trusted_proxy_scheme() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.insert(
            header::HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        assert_eq!(
            own_origin(&h, false, true),
            Origin::parse("https://app.example")
        );
        assert_eq!(
            own_origin(&h, false, false),
            Origin::parse("http://app.example")
        );
    }
}
