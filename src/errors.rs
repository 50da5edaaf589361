//! The one HTTP error type. Every error any route returns has OpenAI's shape
//! `{"error":{"message","type","param","code"}}`, so SDKs and the UI parse one thing. The
//! mapping from engine errors to status codes lives here and nowhere else.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use switchboard_actors::json::JsonError;
use switchboard_actors::routing::RouteError;
use switchboard_actors::supervisor::AdminError;

/// An error response. Building it has no side effects; logging happens where it is decided.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Send `WWW-Authenticate: Basic` (401 on UI routes).
    pub basic_realm: bool,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
            basic_realm: false,
            allow: None,
        }
    }

    /// 400 for a malformed or invalid request body or field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    /// 400 naming the offending field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(message);
        e.param = Some(param.to_string());
        e
    }

    /// 401: missing or wrong credentials (OpenAI's type and code for a bad API key).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 403: missing or wrong admin key.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("invalid_admin_key"),
            message,
        )
    }

    /// 403: a browser request from a foreign `Origin` (SPEC §8).
    pub fn origin_not_allowed(origin: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("origin_not_allowed"),
            format!(
                "requests from the web origin {origin} are not accepted here (not this server's \
                 origin nor listed in SWITCHBOARD_CORS_ORIGINS)"
            ),
        )
    }

    /// 403: a `Host` that is not this local broker's (DNS rebinding, SPEC §8).
    pub fn host_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("host_not_allowed"),
            "this Host is not served: a local broker answers loopback addresses, localhost and \
             the hosts in SWITCHBOARD_ALLOWED_HOSTS",
        )
    }

    /// 405 for a known path with another method; `allow` lists the methods it takes.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{path} does not take {method}; it takes {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    /// 502: a backend answered something the broker will not relay (a redirect).
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("bad_gateway"),
            message,
        )
    }

    /// 404 for an unknown route or resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            message,
        )
    }

    /// 404 for a model with no registered backend.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            RouteError::UnknownModel.message(model),
        );
        e.param = Some("model".into());
        e
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// Any status with an explicit `code` (session commands).
    pub fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        Self::new(status, kind, Some(code), message)
    }

    /// Replaces the `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Adds `WWW-Authenticate: Basic` so browsers prompt for the UI credentials.
    pub fn basic_challenge(mut self) -> Self {
        self.basic_realm = true;
        self
    }

    /// 503 for a server at capacity or draining.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("unavailable"),
            message,
        );
        e.retry_after = Some(5);
        e
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 when no healthy backend serves the model.
    pub fn no_healthy_backend(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("no_healthy_backend"),
            RouteError::NoHealthyBackend.message(model),
        );
        e.retry_after = Some(5);
        e
    }

    /// 504 when every attempt failed or timed out.
    pub fn upstream_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("upstream_failed"),
            message,
        )
    }

    /// A committed stream cut short because the server is shutting down (the drain timed out);
    /// only ever sent inside a stream, so the status is never on the wire.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("shutdown"),
            "the server is shutting down; the stream was cancelled (retry)",
        )
    }

    /// 503 for a new request while the server drains (a redeploy): retry against the next one.
    pub fn draining() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("shutdown"),
            "the server is shutting down and takes no new requests (retry)",
        );
        e.retry_after = Some(5);
        e
    }

    /// 500 for our own failure (storage).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("internal_error"),
            message,
        )
    }

    /// The JSON body, also used inside SSE streams.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if let Some(allow) = self.allow {
            resp.insert_header((header::ALLOW, allow));
        }
        // Error bodies are JSON that may echo client text: never let a browser sniff them.
        resp.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        if self.basic_realm {
            resp.insert_header((
                header::WWW_AUTHENTICATE,
                "Basic realm=\"switchboard\", charset=\"UTF-8\"",
            ));
        }
        resp.json(self.body())
    }
}

/// A body that did not parse: 400, naming the field in the message and in `param`.
impl From<JsonError> for ApiError {
    fn from(e: JsonError) -> Self {
        let message = if e.syntax {
            format!("request body is {e}")
        } else {
            format!("invalid request body: {e}")
        };
        match e.field {
            Some(field) => ApiError::invalid_param(&field, message),
            None => ApiError::invalid(message),
        }
    }
}

/// Maps a routing failure for `model` to 404 / 503 (503 `all_backends_busy` with `Retry-After`
/// when every backend is at its `max_concurrency` and the queue is full or the wait timed out).
pub fn route_error(err: RouteError, model: &str) -> ApiError {
    match err {
        RouteError::UnknownModel => ApiError::model_not_found(model),
        RouteError::NoHealthyBackend => ApiError::no_healthy_backend(model),
        RouteError::Busy { retry_after_s, .. } => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some(err.code()),
                err.message(model),
            );
            e.retry_after = Some(retry_after_s);
            e
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let message = err.to_string();
        match err {
            AdminError::NotFound(_) => ApiError::not_found(message),
            AdminError::Invalid(_) => ApiError::invalid_param("endpoint_url", message),
            AdminError::Conflict(_) | AdminError::Demo => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("conflict"),
                message,
            ),
            AdminError::VerifyFailed { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("health_check_failed"),
                message,
            ),
            AdminError::Storage(_) => ApiError::internal(message),
            AdminError::InvalidField { param, .. } => ApiError::invalid_param(&param, message),
        }
    }
}

/// 503 for a session that cannot be created or joined (the SSE transport; WebSocket maps the
/// same errors to close codes in `http::ws`).
impl From<switchboard_actors::sessions::SessionsError> for ApiError {
    fn from(e: switchboard_actors::sessions::SessionsError) -> Self {
        use switchboard_actors::sessions::SessionsError;
        ApiError::unavailable(match e {
            SessionsError::AtCapacity => "at the session capacity; try again later",
            SessionsError::Draining => "server is draining; try again later",
        })
    }
}

/// A refused session command over HTTP: 409 busy, 404 unknown turn, 400 invalid; the body's
/// `code` is the one the WebSocket `error` event carries.
impl From<switchboard_actors::events::CommandError> for ApiError {
    fn from(e: switchboard_actors::events::CommandError) -> Self {
        use switchboard_actors::events::Refusal;
        let status = match e.refusal {
            Refusal::Busy => StatusCode::CONFLICT,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Invalid => StatusCode::BAD_REQUEST,
        };
        ApiError::with_status(status, e.refusal.code(), e.message)
    }
}

/// A push connect the application's callback did not accept (SPEC §6): a non-2xx answer becomes
/// the client's status ("with that status"), 3xx included; only a 1xx, which cannot be a final
/// answer, becomes 502. 504 on timeout, 502 when unreachable, 503 while draining. Push logs the
/// cause; this is the one place its HTTP answer is chosen.
impl From<switchboard_actors::push::ConnectError> for ApiError {
    fn from(e: switchboard_actors::push::ConnectError) -> Self {
        use switchboard_actors::push::ConnectError;
        match e {
            ConnectError::Rejected(status) => {
                let code = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.as_u16() >= 300)
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                ApiError::with_status(
                    code,
                    "push_rejected",
                    format!(
                        "the application rejected this connection (its callback answered HTTP {status})"
                    ),
                )
            }
            ConnectError::Timeout => ApiError::with_status(
                StatusCode::GATEWAY_TIMEOUT,
                "push_callback_timeout",
                "the application's connect callback did not answer in time",
            ),
            ConnectError::Unreachable(_) => ApiError::with_status(
                StatusCode::BAD_GATEWAY,
                "push_callback_failed",
                "the application's connect callback could not be reached",
            ),
            ConnectError::Gone => ApiError::unavailable("server is draining; reconnect later"),
        }
    }
}

#[cfg(test)]
mod push_connect_tests {
    use super::ApiError;
    use switchboard_actors::push::ConnectError;

    #[test]
    fn a_rejecting_callback_status_is_the_clients_status() {
        for (callback, client) in [(403, 403), (302, 302), (503, 503), (101, 502)] {
            let rejected = ApiError::from(ConnectError::Rejected(callback));
            assert_eq!(rejected.status.as_u16(), client, "{callback}");
        }
    }
}
