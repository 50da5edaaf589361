//! Backup and restore of the registry (SPEC §3.2.1): `Export` lists every registration as the
//! import document's entries; `Import` validates a whole document first (URL policy included),
//! then stores the new entries in one sled batch, so a bad entry stores nothing.

use actix::prelude::*;
use serde::Serialize;

use super::{AdminError, HealthSupervisor};
use crate::record::{HealthCheckMode, ServerRecord};
use crate::url_policy;

/// One registration as the export document carries it (the import document's entries too).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportEntry {
    /// The public model name.
    pub model_name: String,
    /// The OpenAI base URL as registered (normalised by the URL policy on import).
    pub endpoint_url: String,
    /// Who registered it (free text).
    pub owner: Option<String>,
    /// What it is (free text).
    pub description: Option<String>,
    /// Routing's slot limit; `None` (unlimited) until the record has the field.
    pub max_concurrency: Option<u32>,
    /// The model id sent upstream in place of `model_name`.
    pub upstream_model: Option<String>,
    /// `models` or `passive`.
    pub health_check: HealthCheckMode,
    /// `false` for a deactivated server (imported deactivated: probed slowly, a success
    /// reactivates it).
    pub is_active: bool,
    /// Only with `include_keys`; absent otherwise (a backup without secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl ExportEntry {
    fn of(record: &ServerRecord, include_keys: bool) -> Self {
        Self {
            model_name: record.model_name.clone(),
            endpoint_url: record.endpoint_url.clone(),
            owner: record.owner.clone(),
            description: record.description.clone(),
            max_concurrency: record.max_concurrency,
            upstream_model: record.upstream_model.clone(),
            health_check: record.health_check,
            is_active: record.is_active,
            api_key: record.api_key.clone().filter(|_| include_keys),
        }
    }
}

/// An import entry whose fields passed the HTTP layer's checks; the URL policy is applied here.
pub type ImportEntry = ExportEntry;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Entries registered.
    pub created: usize,
    /// Entries whose model and URL were registered already.
    pub skipped: usize,
}

/// Every persisted registration (demo backends are built in and left out).
#[derive(Message)]
#[rtype(result = "Vec<ExportEntry>")]
pub struct Export {
    /// Put the backends' API keys in the document (`?include_keys=true`).
    pub include_keys: bool,
}

impl Handler<Export> for HealthSupervisor {
    type Result = MessageResult<Export>;

    fn handle(&mut self, msg: Export, _: &mut Self::Context) -> Self::Result {
        let mut records: Vec<ServerRecord> = self
            .backends
            .values()
            .filter(|e| !e.demo)
            .map(|e| e.record.read().clone())
            .collect();
        records.sort_by_key(|r| r.registered_at);
        MessageResult(
            records
                .iter()
                .map(|r| ExportEntry::of(r, msg.include_keys))
                .collect(),
        )
    }
}

/// Registers every entry whose model and URL are not registered yet, all or nothing.
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, AdminError>")]
pub struct Import(pub Vec<ImportEntry>);

impl Handler<Import> for HealthSupervisor {
    type Result = ResponseActFuture<Self, Result<ImportSummary, AdminError>>;

    fn handle(&mut self, Import(entries): Import, _: &mut Self::Context) -> Self::Result {
        let allow_private = self.config.upstream.allow_private;
        let fut = async move {
            let mut checked = Vec::with_capacity(entries.len());
            for (i, mut entry) in entries.into_iter().enumerate() {
                let url = url_policy::validate(&entry.endpoint_url, allow_private)
                    .await
                    .map_err(|e| AdminError::InvalidField {
                        param: format!("servers[{i}].endpoint_url"),
                        message: e.to_string(),
                    })?;
                entry.endpoint_url = url.normalized;
                checked.push(entry);
            }
            Ok(checked)
        };
        Box::pin(fut.into_actor(self).map(|checked, act, _| {
            let checked: Vec<ImportEntry> = checked?;
            let mut fresh: Vec<ServerRecord> = Vec::new();
            let mut skipped = 0;
            for entry in checked {
                let taken = act
                    .duplicate_of(&entry.model_name, &entry.endpoint_url, None)
                    .is_some()
                    || fresh.iter().any(|r| {
                        r.model_name == entry.model_name && r.endpoint_url == entry.endpoint_url
                    });
                if taken {
                    skipped += 1;
                    continue;
                }
                let mut record =
                    ServerRecord::new(entry.model_name, entry.endpoint_url, entry.api_key);
                record.owner = entry.owner;
                record.description = entry.description;
                record.upstream_model = entry.upstream_model;
                record.health_check = entry.health_check;
                record.is_active = entry.is_active;
                record.max_concurrency = entry.max_concurrency;
                fresh.push(record);
            }
            act.registry
                .put_all_durable(&fresh)
                .map_err(|e| AdminError::Storage(e.to_string()))?;
            let created = fresh.len();
            for record in fresh {
                log::info!(
                    "imported backend {} for model {} at {}",
                    record.registration_id,
                    record.model_name,
                    record.endpoint_url
                );
                act.spawn_backend(record, false);
            }
            act.rebuild();
            Ok(ImportSummary { created, skipped })
        }))
    }
}
