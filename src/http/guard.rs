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

use crate::auth::{self, Denied};
use crate::credentials::{self, Reason, Surface};
use crate::errors::ApiError;
use crate::http::browser_policy::{CorsOrigins, Origin};
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
            credentials::admin_verdict(req.headers(), &state.admin_key)
        });
        match verdict {
            Ok(()) => {}
            Err(Denied::Throttled(e)) => return refuse(req, e),
            Err(Denied::Refused(reason)) => return refuse(req, credentials::admin_error(reason)),
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
