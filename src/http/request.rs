//! Request helpers shared by every route family: the bounded body read and the per-IP rate limit.
//!
//! They lived in `openai.rs` and made it the helper pile every other handler imported; here they
//! depend only on `state` and `errors`, so no file imports back into a handler module.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::auth;
use crate::credentials;
use crate::errors::ApiError;
use crate::state::AppState;

/// Reads the body up to `limit` bytes; 413 past it (checked on `Content-Length` first).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("cannot read request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The per-IP rate limit of API routes: 429 with `Retry-After` (counted, and logged once a
/// minute per client).
pub fn check_rate(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let ip = crate::http::client_ip(req, state.trust_proxy);
    state.rate_limiter.check(ip).map_err(|retry_after| {
        auth::rate_limited(
            req,
            state,
            credentials::Surface::of_path(req.path()),
            retry_after,
        );
        ApiError::rate_limited(
            format!(
                "rate limit of {} requests a minute exceeded; retry in {retry_after} s",
                state.rate_limit_per_min
            ),
            retry_after,
        )
    })
}
