//! Credentials: the admin key, client API keys, and the constant-time comparison all of them use.
//! No key or header value is ever logged.

use actix_web::http::header::{HeaderMap, AUTHORIZATION};

use crate::errors::ApiError;

/// Compares secrets without an early exit, so timing does not reveal how much of a guess was
/// right. Lengths are compared in the same pass (a length mismatch still scans `expected`).
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= g ^ e;
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` header, if present.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the admin key from `X-API-Key` or `Authorization: Bearer`; 403 otherwise.
pub fn require_admin(headers: &HeaderMap, admin_key: &str) -> Result<(), ApiError> {
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| bearer(headers));
    match given {
        Some(k) if constant_time_eq(k.as_bytes(), admin_key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::forbidden("invalid admin key")),
        None => Err(ApiError::forbidden(
            "admin key required: send it as X-API-Key or Authorization: Bearer",
        )),
    }
}

/// Checks a client key when keys are configured; 401 otherwise. Every configured key is
/// compared, so the position of a match is not observable either.
pub fn require_client(headers: &HeaderMap, keys: &[String]) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(given) = bearer(headers) else {
        return Err(ApiError::unauthorized(
            "missing API key: send Authorization: Bearer <key>",
        ));
    };
    let matched = keys.iter().fold(false, |acc, k| {
        acc | constant_time_eq(given.as_bytes(), k.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid API key"))
    }
}

/// The UI's HTTP Basic credentials; `None` password means pages and sessions are open.
#[derive(Debug, Clone, Default)]
pub struct UiCredentials {
    pub user: String,
    pub password: Option<String>,
}

/// Whether the request carries the UI's Basic login (only when a UI password is set): the
/// compare page uses it for `GET /v1/models`, having no API key.
pub fn ui_login_given(headers: &HeaderMap, creds: &UiCredentials) -> bool {
    creds.password.as_deref().is_some_and(|p| !p.is_empty()) && ui_allowed(headers, creds)
}

/// Whether a request may use pages, `/ws` and `/api/sessions/*`.
pub fn ui_allowed(headers: &HeaderMap, creds: &UiCredentials) -> bool {
    let Some(password) = creds.password.as_deref().filter(|p| !p.is_empty()) else {
        return true;
    };
    let Some(given) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| base64_decode(b64.trim()))
    else {
        return false;
    };
    let expected = format!("{}:{password}", creds.user);
    constant_time_eq(&given, expected.as_bytes())
}

/// Standard base64 (with or without padding); `None` on any invalid character.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = input.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn constant_time_eq_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn admin_key_from_either_header() {
        assert!(require_admin(&headers(&[("x-api-key", "k")]), "k").is_ok());
        assert!(require_admin(&headers(&[("authorization", "Bearer k")]), "k").is_ok());
        assert_eq!(
            require_admin(&headers(&[("x-api-key", "x")]), "k").map_err(|e| e.status.as_u16()),
            Err(403)
        );
        assert_eq!(
            require_admin(&headers(&[]), "k").map_err(|e| e.status.as_u16()),
            Err(403)
        );
    }

    #[test]
    fn basic_auth_for_the_ui() {
        assert_eq!(
            base64_decode("YWRtaW46c2VjcmV0").as_deref(),
            Some(&b"admin:secret"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("!!"), None);
        let creds = UiCredentials {
            user: "admin".into(),
            password: Some("secret".into()),
        };
        assert!(ui_allowed(
            &headers(&[("authorization", "Basic YWRtaW46c2VjcmV0")]),
            &creds
        ));
        assert!(!ui_allowed(
            &headers(&[("authorization", "Basic YWRtaW46b29wcw==")]),
            &creds
        ));
        assert!(!ui_allowed(&headers(&[]), &creds));
        assert!(ui_allowed(&headers(&[]), &UiCredentials::default()));
    }

    #[test]
    fn client_keys_only_when_configured() {
        assert!(require_client(&headers(&[]), &[]).is_ok());
        let keys = vec!["a".to_string(), "b".to_string()];
        assert!(require_client(&headers(&[("authorization", "Bearer b")]), &keys).is_ok());
        assert!(require_client(&headers(&[("authorization", "Bearer c")]), &keys).is_err());
        assert!(require_client(&headers(&[]), &keys).is_err());
    }
}
