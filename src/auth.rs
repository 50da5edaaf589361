//! The one gate every credential check goes through, so a refusal is throttled, logged and
//! counted the same way on every surface (SPEC §8 "Guessing is throttled", "Refusals are
//! visible"). What a credential is and whether one matches is [`crate::credentials`].
//!
//! No key, password or header value is ever logged: a refusal names the surface, the client IP
//! and the reason (`missing`, `malformed`, `wrong`), nothing the client presented.

use actix_web::HttpRequest;

use crate::credentials::{client_error, client_verdict, ui_verdict, Reason, Surface};
use crate::errors::ApiError;
use crate::rate_limit::Throttle;
use crate::state::AppState;

/// A refused credential check.
#[derive(Debug)]
pub enum Denied {
    /// The client is throttled: answer this 429 and do not look at the credential.
    Throttled(ApiError),
    /// The credential was refused for this reason (the caller answers 401, 403 or 1008).
    Refused(Reason),
}

/// Runs `verdict` (a credential check) for `req` on `surface`: refused at once with 429 while
/// the client is throttled; a refusal is counted toward the throttle (guesses only), counted
/// in `/metrics` and logged at WARN (at most [`crate::rate_limit::LOG_LINES_PER_MIN`] lines per
/// client and minute, so a flood of refusals cannot flood the log).
pub fn gate(
    req: &HttpRequest,
    state: &AppState,
    surface: Surface,
    verdict: impl FnOnce() -> Result<(), Reason>,
) -> Result<(), Denied> {
    let ip = crate::http::client_ip(req, state.trust_proxy);
    if let Throttle::Closed { retry_after, first } = state.failures.check(ip) {
        state.metrics.refusals.rate_limited(surface);
        if first {
            log::warn!(
                "auth surface={} ip={ip} throttled: {} failed credential checks within a minute; \
                 refusing credentials from this address for {retry_after} s",
                surface.as_str(),
                crate::rate_limit::MAX_FAILURES_PER_MIN,
            );
        }
        return Err(Denied::Throttled(ApiError::rate_limited(
            format!(
                "too many failed credential checks from this address; retry in {retry_after} s"
            ),
            retry_after,
        )));
    }
    let Err(reason) = verdict() else {
        return Ok(());
    };
    refused(req, state, surface, reason);
    Err(Denied::Refused(reason))
}

/// Counts and logs one refusal of `req` on `surface` (credentials, Origin or Host).
pub fn refused(req: &HttpRequest, state: &AppState, surface: Surface, reason: Reason) {
    let ip = crate::http::client_ip(req, state.trust_proxy);
    state.metrics.refusals.auth_failure(surface, reason);
    let noted = state.failures.refused(ip, reason.is_guess());
    if noted.log {
        log::warn!(
            "auth surface={} ip={ip} refused: {}{}",
            surface.as_str(),
            match reason {
                Reason::Origin => "foreign Origin",
                Reason::Host => "Host not allowed",
                Reason::Missing => "missing credential",
                Reason::Malformed => "malformed credential",
                Reason::Wrong => "wrong credential",
            },
            if noted.last_logged {
                " (further refusals from this address are counted, not logged, this minute)"
            } else {
                ""
            }
        );
    }
}

/// A 429 from the request-rate limiter on `surface`: counted, and logged at WARN once per
/// client and minute.
pub fn rate_limited(req: &HttpRequest, state: &AppState, surface: Surface, retry_after: u64) {
    let ip = crate::http::client_ip(req, state.trust_proxy);
    state.metrics.refusals.rate_limited(surface);
    if state.failures.rate_limited_once(ip) {
        log::warn!(
            "rate surface={} ip={ip} rate limited (retry in {retry_after} s; logged once a minute)",
            surface.as_str()
        );
    }
}

/// The client key of `/v1`, counted and throttled.
pub fn require_client(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if state.client_keys.is_empty() {
        return Ok(());
    }
    gate(req, state, Surface::V1, || {
        client_verdict(req.headers(), &state.client_keys)
    })
    .map_err(|d| match d {
        Denied::Throttled(e) => e,
        Denied::Refused(reason) => client_error(reason),
    })
}

/// The UI login for a page or `/api/sessions/*`, counted and throttled; 401 with a Basic
/// challenge when refused.
pub fn require_ui(req: &HttpRequest, state: &AppState, surface: Surface) -> Result<(), ApiError> {
    if state.ui_credentials.password().is_none() {
        return Ok(());
    }
    gate(req, state, surface, || {
        ui_verdict(req.headers(), &state.ui_credentials)
    })
    .map_err(|d| match d {
        Denied::Throttled(e) => e,
        Denied::Refused(_) => ApiError::unauthorized(match surface {
            Surface::Ui => "this page needs the UI credentials (HTTP Basic)",
            _ => "this route needs the UI credentials (HTTP Basic)",
        })
        .basic_challenge(),
    })
}

/// The UI login for `/ws`: `Err` (429) while the client is throttled, answered before the
/// upgrade; `Ok(false)` when refused (the socket is then closed with 1008).
pub fn ws_login(req: &HttpRequest, state: &AppState) -> Result<bool, ApiError> {
    if state.ui_credentials.password().is_none() {
        return Ok(true);
    }
    match gate(req, state, Surface::Ws, || {
        ui_verdict(req.headers(), &state.ui_credentials)
    }) {
        Ok(()) => Ok(true),
        Err(Denied::Throttled(e)) => Err(e),
        Err(Denied::Refused(_)) => Ok(false),
    }
}
