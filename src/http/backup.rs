//! `GET /admin/export` and `POST /admin/import` (SPEC §3.2.1): the registry as one JSON
//! document, and back. Every entry is checked here field by field, so a bad one is refused
//! with its index and field (`servers[2].endpoint_url`) before anything is stored; the engine
//! then applies the URL policy and writes the new entries in one batch.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use switchboard_actors::record::{now_ms, HealthCheckMode};
use switchboard_actors::supervisor::{Export, Import, ImportEntry};

use crate::credentials;
use crate::errors::ApiError;
use crate::http::admin::{check_health_mode, check_upstream_model};
use crate::http::request::read_body;
use crate::state::AppState;

/// The document version this broker writes and reads.
pub const EXPORT_VERSION: u64 = 1;
/// Same bounds as registration (admin.rs).
const MAX_MODEL_NAME: usize = 256;
const MAX_TEXT_FIELD: usize = 2048;
const MAX_API_KEY: usize = 4096;
/// `max_concurrency` bounds (SPEC §2.1).
const MAX_CONCURRENCY: u64 = 10_000;
/// The fields an entry may carry; anything else is a typo and refused.
const ENTRY_FIELDS: [&str; 9] = [
    "model_name",
    "endpoint_url",
    "owner",
    "description",
    "max_concurrency",
    "upstream_model",
    "health_check",
    "is_active",
    "api_key",
];

/// Routes of backup and restore.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/export", web::get().to(export))
        .route("/admin/import", web::post().to(import));
}

#[derive(Deserialize)]
struct ExportQuery {
    include_keys: Option<bool>,
}

async fn export(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let q = web::Query::<ExportQuery>::from_query(req.query_string()).map_err(|_| {
        ApiError::invalid_param("include_keys", "include_keys must be true or false")
    })?;
    let include_keys = q.include_keys.unwrap_or(false);
    let servers = state
        .supervisor
        .send(Export { include_keys })
        .await
        .map_err(|_| ApiError::internal("the health supervisor is not running"))?;
    log::info!(
        "admin export of {} servers (keys {})",
        servers.len(),
        if include_keys { "included" } else { "left out" }
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "version": EXPORT_VERSION,
            "exported_at": now_ms(),
            "servers": servers,
        })))
}

async fn import(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let entries = parse_document(&body)?;
    let summary = state
        .supervisor
        .send(Import(entries))
        .await
        .map_err(|_| ApiError::internal("the health supervisor is not running"))??;
    log::info!(
        "admin import: {} created, {} skipped",
        summary.created,
        summary.skipped
    );
    Ok(HttpResponse::Ok().json(summary))
}

/// The whole document, every entry checked; the first bad field is the error.
fn parse_document(body: &[u8]) -> Result<Vec<ImportEntry>, ApiError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    let Some(doc) = doc.as_object() else {
        return Err(ApiError::invalid(
            "the import document must be a JSON object like GET /admin/export returns",
        ));
    };
    match doc.get("version") {
        Some(v) if v.as_u64() == Some(EXPORT_VERSION) => {}
        None => {}
        Some(v) => {
            return Err(ApiError::invalid_param(
                "version",
                format!("version {v} is not supported (this broker reads {EXPORT_VERSION})"),
            ))
        }
    }
    let servers = doc
        .get("servers")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid_param("servers", "`servers` must be an array"))?;
    servers
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_entry(i, entry))
        .collect()
}

fn parse_entry(i: usize, entry: &Value) -> Result<ImportEntry, ApiError> {
    let at = |field: &str| format!("servers[{i}].{field}");
    let bad = |field: &str, message: String| {
        let param = at(field);
        ApiError::invalid_param(&param, format!("{param}: {message}"))
    };
    let obj = entry.as_object().ok_or_else(|| {
        ApiError::invalid_param(
            &format!("servers[{i}]"),
            format!("servers[{i}] must be an object"),
        )
    })?;
    if let Some(unknown) = obj.keys().find(|k| !ENTRY_FIELDS.contains(&k.as_str())) {
        return Err(bad(unknown, "unknown field".into()));
    }
    let text = |field: &str, max: usize| -> Result<Option<String>, ApiError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > max => {
                Err(bad(field, format!("must be at most {max} bytes")))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(field, "must be a string".into())),
        }
    };
    let model_name = text("model_name", MAX_MODEL_NAME)?
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("model_name", "is required".into()))?;
    if model_name.chars().any(char::is_control) {
        return Err(bad("model_name", "must be printable text".into()));
    }
    let endpoint_url = text("endpoint_url", MAX_TEXT_FIELD)?
        .ok_or_else(|| bad("endpoint_url", "is required".into()))?;
    let api_key = text("api_key", MAX_API_KEY)?;
    if api_key
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.chars().any(char::is_control))
    {
        return Err(bad("api_key", "must be non-empty printable text".into()));
    }
    let upstream_model = check_upstream_model(text("upstream_model", MAX_MODEL_NAME)?)
        .map_err(|e| bad("upstream_model", e.message))?;
    let health_check = match text("health_check", 16)? {
        None => HealthCheckMode::Models,
        Some(mode) => check_health_mode(Some(&mode)).map_err(|e| bad("health_check", e.message))?,
    };
    let is_active = match obj.get("is_active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("is_active", "must be true or false".into())),
    };
    Ok(ImportEntry {
        model_name,
        endpoint_url,
        owner: text("owner", MAX_TEXT_FIELD)?,
        description: text("description", MAX_TEXT_FIELD)?,
        max_concurrency: max_concurrency(obj).map_err(|m| bad("max_concurrency", m))?,
        upstream_model,
        health_check,
        is_active,
        api_key,
    })
}

fn max_concurrency(obj: &Map<String, Value>) -> Result<Option<u32>, String> {
    match obj.get("max_concurrency") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Some(n as u32)),
            _ => Err(format!("must be an integer from 1 to {MAX_CONCURRENCY}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(doc: Value) -> (Option<String>, String) {
        let e = parse_document(doc.to_string().as_bytes())
            .err()
            .unwrap_or_else(|| ApiError::invalid("accepted"));
        (e.param, e.message)
    }

    #[test]
    fn a_bad_entry_is_named_by_index_and_field() {
        let ok = json!({"model_name": "m", "endpoint_url": "http://h:1"});
        let cases = [
            (
                json!({"model_name": 5, "endpoint_url": "http://h"}),
                "servers[1].model_name",
            ),
            (json!({"model_name": "m"}), "servers[1].endpoint_url"),
            (
                json!({"model_name": "m", "endpoint_url": "http://h", "is_active": "yes"}),
                "servers[1].is_active",
            ),
            (
                json!({"model_name": "m", "endpoint_url": "http://h", "max_concurrency": 0}),
                "servers[1].max_concurrency",
            ),
            (
                json!({"model_name": "m", "endpoint_url": "http://h", "health_check": "ping"}),
                "servers[1].health_check",
            ),
            (
                json!({"model_name": "m", "endpoint_url": "http://h", "upstream_model": "a\u{7}"}),
                "servers[1].upstream_model",
            ),
            (
                json!({"model_name": "m", "endpoint_url": "http://h", "colour": "red"}),
                "servers[1].colour",
            ),
        ];
        for (entry, param) in cases {
            let (p, message) = err(json!({"version": 1, "servers": [ok, entry]}));
            assert_eq!(p.as_deref(), Some(param), "{message}");
            assert!(message.starts_with(param), "{message}");
        }
        assert_eq!(
            err(json!({"version": 2, "servers": []})).0.as_deref(),
            Some("version")
        );
        assert_eq!(err(json!({"version": 1})).0.as_deref(), Some("servers"));
    }

    #[test]
    fn an_export_document_reads_back() {
        let doc = json!({"version": 1, "exported_at": 1, "servers": [
            {"model_name": "m", "endpoint_url": "http://h:1/v1", "owner": "lab", "description": null,
             "max_concurrency": 4, "upstream_model": "m:8b", "health_check": "passive",
             "is_active": false, "api_key": "sk-1"}]});
        let entries = parse_document(doc.to_string().as_bytes()).unwrap_or_default();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(
            (
                e.max_concurrency,
                e.health_check,
                e.is_active,
                e.api_key.as_deref()
            ),
            (Some(4), HealthCheckMode::Passive, false, Some("sk-1"))
        );
    }
}
