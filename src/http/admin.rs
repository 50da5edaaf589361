//! `/admin/*`: registering and managing backends. Every route requires the admin key. Bodies are
//! parsed strictly (unknown fields are refused, so a typo is an error rather than a silent
//! default) and validated here; the engine re-validates the URL policy.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use switchboard_actors::record::{HealthCheckMode, ServerView};
use switchboard_actors::supervisor::{
    ActivateServer, AdminError, Delete, Filter, ForceCheck, Get, HealthSupervisor, List, Patch,
    Register, Registration, Stats, Update,
};
use uuid::Uuid;

use crate::credentials;
use crate::errors::ApiError;
use crate::http::request::read_body;
use crate::state::AppState;

const MAX_MODEL_NAME: usize = 256;
const MAX_TEXT_FIELD: usize = 2048;
const MAX_API_KEY: usize = 4096;

/// Routes under `/admin`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/register", web::post().to(register))
        .route("/admin/register/{id}", web::put().to(update))
        .route("/admin/register/{id}", web::delete().to(delete))
        .route("/admin/servers", web::get().to(list))
        .route("/admin/servers/{id}", web::get().to(get))
        .route(
            "/admin/servers/{id}/health-check",
            web::post().to(health_check),
        )
        .route("/admin/servers/{id}/activate", web::post().to(activate))
        .route("/admin/stats", web::get().to(stats));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    model_name: String,
    endpoint_url: String,
    api_key: Option<String>,
    owner: Option<String>,
    description: Option<String>,
    verify: Option<bool>,
    /// Validated by [`check_max_concurrency`] so every bad value gets a message naming it.
    max_concurrency: Option<serde_json::Value>,
    upstream_model: Option<String>,
    health_check: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    model_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    endpoint_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    api_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    verify: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    max_concurrency: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    upstream_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    health_check: Option<Option<String>>,
}

/// Largest `max_concurrency` a registration may set (SPEC §3.1).
const MAX_CONCURRENCY: u64 = 10_000;

/// `max_concurrency`: an integer from 1 to 10 000 (`null` or absent = unlimited).
fn check_max_concurrency(value: Option<serde_json::Value>) -> Result<Option<u32>, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Some(n as u32)),
            _ => Err(ApiError::invalid_param(
                "max_concurrency",
                format!(
                    "max_concurrency must be an integer from 1 to {MAX_CONCURRENCY} (got {v}); leave it out or send null for unlimited"
                ),
            )),
        },
    }
}

/// A field that may be left out of an update but not cleared: `null` is refused.
fn required(field: &str, value: Option<Option<String>>) -> Result<Option<String>, ApiError> {
    match value {
        Some(None) => Err(ApiError::invalid_param(
            field,
            format!("`{field}` cannot be null; leave it out to keep it"),
        )),
        Some(Some(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    Ok(switchboard_actors::json::from_slice(body)?)
}

fn check_model_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::invalid_param(
            "model_name",
            "model_name must not be empty",
        ));
    }
    if name.len() > MAX_MODEL_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid_param(
            "model_name",
            format!("model_name must be at most {MAX_MODEL_NAME} printable characters"),
        ));
    }
    Ok(name.to_string())
}

fn check_text(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.len() > max => Err(ApiError::invalid_param(
            field,
            format!("{field} must be at most {max} bytes"),
        )),
        Some(v) if field == "api_key" && (v.is_empty() || v.chars().any(char::is_control)) => Err(
            ApiError::invalid_param(field, "api_key must be non-empty printable text"),
        ),
        other => Ok(other),
    }
}

/// `upstream_model`: what a backend calls the model; it goes into request bodies and logs,
/// so the same bounds as a model name apply.
pub fn check_upstream_model(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(ApiError::invalid_param(
            "upstream_model",
            "upstream_model must not be empty; leave it out to send model_name",
        )),
        Some(v) if v.len() > MAX_MODEL_NAME || v.chars().any(char::is_control) => {
            Err(ApiError::invalid_param(
                "upstream_model",
                format!("upstream_model must be at most {MAX_MODEL_NAME} printable characters"),
            ))
        }
        Some(v) => Ok(Some(v)),
    }
}

/// `health_check`: `models` (default) or `passive`.
pub fn check_health_mode(value: Option<&str>) -> Result<HealthCheckMode, ApiError> {
    match value {
        None => Ok(HealthCheckMode::Models),
        Some(v) => HealthCheckMode::parse(v).ok_or_else(|| {
            ApiError::invalid_param(
                "health_check",
                format!("health_check must be \"models\" or \"passive\", not {v:?}"),
            )
        }),
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::not_found(format!("no server with registration_id {raw}")))
}

fn mailbox_error<E>(_: E) -> ApiError {
    ApiError::internal("the health supervisor is not running")
}

async fn register(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let b: RegisterBody = parse_json(&body)?;
    let registration = Registration {
        model_name: check_model_name(&b.model_name)?,
        endpoint_url: b.endpoint_url,
        api_key: check_text("api_key", b.api_key, MAX_API_KEY)?,
        owner: check_text("owner", b.owner, MAX_TEXT_FIELD)?,
        description: check_text("description", b.description, MAX_TEXT_FIELD)?,
        verify: b.verify.unwrap_or(true),
        max_concurrency: check_max_concurrency(b.max_concurrency)?,
        upstream_model: check_upstream_model(b.upstream_model)?,
        health_check: check_health_mode(b.health_check.as_deref())?,
    };
    let view = state
        .supervisor
        .send(Register(registration))
        .await
        .map_err(mailbox_error)??;
    Ok(HttpResponse::Created().json(view))
}

async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let id = parse_id(&path)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let b: UpdateBody = parse_json(&body)?;
    let patch = Patch {
        model_name: required("model_name", b.model_name)?
            .as_deref()
            .map(check_model_name)
            .transpose()?,
        endpoint_url: required("endpoint_url", b.endpoint_url)?,
        api_key: b
            .api_key
            .map(|k| check_text("api_key", k, MAX_API_KEY))
            .transpose()?,
        owner: b
            .owner
            .map(|o| check_text("owner", o, MAX_TEXT_FIELD))
            .transpose()?,
        description: b
            .description
            .map(|d| check_text("description", d, MAX_TEXT_FIELD))
            .transpose()?,
        verify: b.verify.unwrap_or(true),
        max_concurrency: b.max_concurrency.map(check_max_concurrency).transpose()?,
        upstream_model: b.upstream_model.map(check_upstream_model).transpose()?,
        health_check: required("health_check", b.health_check)?
            .map(|m| check_health_mode(Some(&m)))
            .transpose()?,
    };
    let view = state
        .supervisor
        .send(Update { id, patch })
        .await
        .map_err(mailbox_error)??;
    Ok(HttpResponse::Ok().json(view))
}

async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let id = parse_id(&path)?;
    state
        .supervisor
        .send(Delete(id))
        .await
        .map_err(mailbox_error)??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct ListQuery {
    model: Option<String>,
    status: Option<String>,
    owner: Option<String>,
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?
        .into_inner();
    if let Some(s) = q.status.as_deref() {
        if !["", "healthy", "unhealthy", "unknown", "active", "inactive"].contains(&s) {
            return Err(ApiError::invalid_param(
                "status",
                "status must be one of healthy, unhealthy, unknown, active, inactive",
            ));
        }
    }
    let filter = Filter {
        model: q.model.filter(|m| !m.is_empty()),
        status: q.status,
        owner: q.owner.filter(|o| !o.is_empty()),
    };
    let servers = state
        .supervisor
        .send(List(filter))
        .await
        .map_err(mailbox_error)?;
    Ok(HttpResponse::Ok().json(json!({"total": servers.len(), "servers": servers})))
}

/// Sends the supervisor a message about one server and answers with its record.
async fn on_server<M>(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    message: fn(Uuid) -> M,
) -> Result<HttpResponse, ApiError>
where
    M: actix::Message<Result = Result<ServerView, AdminError>> + Send + 'static,
    HealthSupervisor: actix::Handler<M>,
{
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let id = parse_id(&path)?;
    let view = state
        .supervisor
        .send(message(id))
        .await
        .map_err(mailbox_error)??;
    Ok(HttpResponse::Ok().json(view))
}

async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    on_server(req, path, state, Get).await
}

async fn health_check(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    on_server(req, path, state, ForceCheck).await
}

async fn activate(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    on_server(req, path, state, ActivateServer).await
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let s = state.supervisor.send(Stats).await.map_err(mailbox_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "servers": s.servers,
        "healthy": s.healthy,
        "active": s.active,
        "models": s.models,
        "sessions": state.sessions.count(),
        "connections": state.sessions.open_connections(),
        "streams_in_flight": s.streams_in_flight,
        "requests_routed": s.requests_routed,
        "queues": s.queues.into_iter().map(|(m, d)| (m, json!(d))).collect::<serde_json::Map<_, _>>(),
    })))
}
