//! Credentials themselves: the admin key, client API keys, the UI's Basic login and the push
//! secret, the constant-time comparison all of them use, and the labels of a refusal
//! ([`Surface`], [`Reason`]). Pure functions of headers and configured secrets; the request-level
//! gate that throttles, counts and logs a refusal is [`crate::auth`].
//!
//! No key, password or header value is ever logged: a refusal names the surface, the client IP
//! and the reason (`missing`, `malformed`, `wrong`), nothing the client presented.

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::errors::ApiError;

/// Secrets up to this many bytes are compared in the same time whatever their length.
const CT_BLOCK: usize = 256;

/// Compares secrets in constant time (`subtle`). Both sides are copied into zeroed buffers of
/// one size (at least [`CT_BLOCK`] bytes) first, so the time does not depend on where they
/// differ nor on the expected secret's length (only on the length of what was given, which the
/// client knows anyway); the lengths are compared in constant time as well.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let n = CT_BLOCK.max(given.len()).max(expected.len());
    let mut a = vec![0u8; n];
    let mut b = vec![0u8; n];
    a[..given.len()].copy_from_slice(given);
    b[..expected.len()].copy_from_slice(expected);
    let same_len = (given.len() as u64).ct_eq(&(expected.len() as u64));
    bool::from(a.ct_eq(&b) & same_len)
}

/// Where a credential (or an Origin / Host) was refused: a label of
/// `switchboard_auth_failures_total` and `switchboard_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The admin key: `/admin/*`, `/metrics`, `/debug/*`.
    Admin,
    /// Client keys on `/v1/*`.
    V1,
    /// Basic on pages.
    Ui,
    /// Basic on `/ws`.
    Ws,
    /// Basic on `/api/sessions/*`.
    Sessions,
    /// The push secret on `/internal/send`, and `/push/*` connects.
    Push,
}

impl Surface {
    pub const ALL: [Surface; 6] = [
        Surface::Admin,
        Surface::V1,
        Surface::Ui,
        Surface::Ws,
        Surface::Sessions,
        Surface::Push,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Admin => "admin",
            Surface::V1 => "v1",
            Surface::Ui => "ui",
            Surface::Ws => "ws",
            Surface::Sessions => "sessions",
            Surface::Push => "push",
        }
    }

    /// The surface a path belongs to (for refusals decided before routing).
    pub fn of_path(path: &str) -> Surface {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v1") {
            Surface::V1
        } else if under("/admin") || under("/metrics") || under("/debug") {
            Surface::Admin
        } else if under("/ws") {
            Surface::Ws
        } else if under("/api/sessions") {
            Surface::Sessions
        } else if under("/push") || under("/internal") {
            Surface::Push
        } else {
            Surface::Ui
        }
    }
}

/// Why a request was refused (the `reason` label). The first three are credential checks;
/// `origin` and `host` are the browser rules of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    Wrong,
    Origin,
    Host,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Wrong,
        Reason::Origin,
        Reason::Host,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Wrong => "wrong",
            Reason::Origin => "origin",
            Reason::Host => "host",
        }
    }

    /// Whether this refusal is a guess (it counts toward the throttle). A request that
    /// presents nothing guesses nothing: a browser's first, credential-less page load must not
    /// lock its user out.
    pub fn is_guess(self) -> bool {
        matches!(self, Reason::Malformed | Reason::Wrong)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if present.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What an `Authorization: Bearer` header holds: `Err(Missing)` without one, `Err(Malformed)`
/// for another scheme or an unreadable value.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Reason> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Reason::Missing);
    };
    let value = value.to_str().map_err(|_| Reason::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Reason::Malformed),
    }
}

/// The admin key check of `X-API-Key` or `Authorization: Bearer`.
pub fn admin_verdict(headers: &HeaderMap, admin_key: &str) -> Result<(), Reason> {
    let given = match headers.get("x-api-key") {
        Some(v) => v.to_str().map_err(|_| Reason::Malformed)?,
        None => bearer_token(headers)?,
    };
    if constant_time_eq(given.as_bytes(), admin_key.as_bytes()) {
        Ok(())
    } else {
        Err(Reason::Wrong)
    }
}

/// 403 for a refused admin key.
pub fn admin_error(reason: Reason) -> ApiError {
    match reason {
        Reason::Missing => {
            ApiError::forbidden("admin key required: send it as X-API-Key or Authorization: Bearer")
        }
        Reason::Malformed => ApiError::forbidden(
            "malformed admin credential: send X-API-Key: <key> or Authorization: Bearer <key>",
        ),
        _ => ApiError::forbidden("invalid admin key"),
    }
}

/// Checks the admin key from `X-API-Key` or `Authorization: Bearer`; 403 otherwise. A pure
/// check: the guard middleware runs the counted one ([`gate`]) for every admin path first.
pub fn require_admin(headers: &HeaderMap, admin_key: &str) -> Result<(), ApiError> {
    admin_verdict(headers, admin_key).map_err(admin_error)
}

/// The client key check (`Authorization: Bearer`); every configured key is compared, so the
/// position of a match is not observable either. Passes when no keys are configured.
pub fn client_verdict(headers: &HeaderMap, keys: &[String]) -> Result<(), Reason> {
    if keys.is_empty() {
        return Ok(());
    }
    let given = bearer_token(headers)?;
    let matched = keys.iter().fold(false, |acc, k| {
        acc | constant_time_eq(given.as_bytes(), k.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(Reason::Wrong)
    }
}

/// 401 for a refused client key (OpenAI's shape: `invalid_request_error` / `invalid_api_key`).
pub fn client_error(reason: Reason) -> ApiError {
    ApiError::unauthorized(match reason {
        Reason::Missing => "missing API key: send Authorization: Bearer <key>",
        Reason::Malformed => "malformed Authorization header: send Authorization: Bearer <key>",
        _ => "invalid API key",
    })
}

/// The UI's HTTP Basic credentials; `None` password means pages and sessions are open.
#[derive(Debug, Clone, Default)]
pub struct UiCredentials {
    pub user: String,
    pub password: Option<String>,
}

impl UiCredentials {
    /// The UI password in force (an empty one counts as none).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref().filter(|p| !p.is_empty())
    }
}

/// The Basic login check; passes when no UI password is set.
pub fn ui_verdict(headers: &HeaderMap, creds: &UiCredentials) -> Result<(), Reason> {
    let Some(password) = creds.password() else {
        return Ok(());
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Reason::Missing);
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| base64_decode(b64.trim()))
        .filter(|decoded| decoded.contains(&b':'))
        .ok_or(Reason::Malformed)?;
    let expected = format!("{}:{password}", creds.user);
    if constant_time_eq(&given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(Reason::Wrong)
    }
}

/// Whether the request carries the UI's Basic login (only when a UI password is set): the
/// compare page uses it for `GET /v1/models`, having no API key.
pub fn ui_login_given(headers: &HeaderMap, creds: &UiCredentials) -> bool {
    creds.password().is_some() && ui_verdict(headers, creds).is_ok()
}

/// The check of a shared secret presented as `given` (push gateway).
pub fn secret_verdict(given: Option<&str>, expected: &str) -> Result<(), Reason> {
    match given {
        None => Err(Reason::Missing),
        Some("") => Err(Reason::Malformed),
        Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Reason::Wrong),
    }
}

/// Whether `value` (an `Authorization` header) carries the broker's own UI login, which must
/// not travel on to a push application.
pub fn is_ui_login(value: &[u8], creds: &UiCredentials) -> bool {
    let Some(password) = creds.password() else {
        return false;
    };
    let Some(given) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| base64_decode(b64.trim()))
    else {
        return false;
    };
    constant_time_eq(&given, format!("{}:{password}", creds.user).as_bytes())
}

/// Standard base64 (padding optional, as some clients leave it out); `None` when invalid.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(input.trim_end_matches('='))
        .ok()
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
        assert!(
            !constant_time_eq(b"secret\0", b"secret"),
            "padding is not equality"
        );
        assert!(!constant_time_eq(b"", b"x"));
        let long = vec![b'k'; 1000];
        assert!(constant_time_eq(&long, &long));
        assert!(!constant_time_eq(&long[..999], &long));
    }

    #[test]
    fn admin_key_from_either_header() {
        assert!(require_admin(&headers(&[("x-api-key", "k")]), "k").is_ok());
        assert!(require_admin(&headers(&[("authorization", "Bearer k")]), "k").is_ok());
        assert_eq!(
            admin_verdict(&headers(&[("x-api-key", "x")]), "k"),
            Err(Reason::Wrong)
        );
        assert_eq!(admin_verdict(&headers(&[]), "k"), Err(Reason::Missing));
        assert_eq!(
            admin_verdict(&headers(&[("authorization", "Basic k")]), "k"),
            Err(Reason::Malformed)
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
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("!!"), None);
        let creds = UiCredentials {
            user: "admin".into(),
            password: Some("secret".into()),
        };
        assert_eq!(
            ui_verdict(
                &headers(&[("authorization", "Basic YWRtaW46c2VjcmV0")]),
                &creds
            ),
            Ok(())
        );
        assert_eq!(
            ui_verdict(
                &headers(&[("authorization", "Basic YWRtaW46b29wcw==")]),
                &creds
            ),
            Err(Reason::Wrong)
        );
        assert_eq!(
            ui_verdict(&headers(&[("authorization", "Basic !!!")]), &creds),
            Err(Reason::Malformed)
        );
        assert_eq!(ui_verdict(&headers(&[]), &creds), Err(Reason::Missing));
        assert_eq!(ui_verdict(&headers(&[]), &UiCredentials::default()), Ok(()));
        assert!(is_ui_login(b"Basic YWRtaW46c2VjcmV0", &creds));
        assert!(!is_ui_login(b"Basic YXBwOnRva2Vu", &creds));
        assert!(!is_ui_login(b"Bearer x", &creds));
    }

    #[test]
    fn client_keys_only_when_configured() {
        assert!(client_verdict(&headers(&[]), &[]).is_ok());
        let keys = vec!["a".to_string(), "b".to_string()];
        assert!(client_verdict(&headers(&[("authorization", "Bearer b")]), &keys).is_ok());
        assert_eq!(
            client_verdict(&headers(&[("authorization", "Bearer c")]), &keys),
            Err(Reason::Wrong)
        );
        assert_eq!(client_verdict(&headers(&[]), &keys), Err(Reason::Missing));
        let e = client_error(Reason::Wrong);
        assert_eq!(
            (e.status.as_u16(), e.kind, e.code),
            (401, "invalid_request_error", Some("invalid_api_key"))
        );
    }

    #[test]
    fn surfaces_of_paths() {
        for (path, surface) in [
            ("/v1/models", Surface::V1),
            ("/v1x", Surface::Ui),
            ("/admin/register", Surface::Admin),
            ("/metrics", Surface::Admin),
            ("/debug/memory", Surface::Admin),
            ("/ws", Surface::Ws),
            ("/api/sessions", Surface::Sessions),
            ("/api/sessions/x/events", Surface::Sessions),
            ("/internal/send", Surface::Push),
            ("/push/a/b", Surface::Push),
            ("/dashboard", Surface::Ui),
        ] {
            assert_eq!(Surface::of_path(path), surface, "{path}");
        }
    }
}
