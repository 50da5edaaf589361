//! The `HealthSupervisor`: owns the set of backend actors. It registers, updates and deletes
//! servers (validating and verifying them first), starts a [`Backend`] actor for each, and
//! rebuilds the routing table whenever membership changes. Reads (listings, stats) come from
//! records the backend actors share, so they never wait on a probe.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::RwLock;
use uuid::Uuid;

use crate::backend::{apply_check, Activate, Backend, CheckKind, CheckNow, HealthPolicy, Retire};
use crate::record::{now_ms, HealthCheckMode, HealthStatus, ServerRecord, ServerView};
use crate::registry::Registry;
use crate::routing::{BackendHandle, RoutingTable};
use crate::upstream;
use crate::url_policy;

mod backup;
pub use backup::{Export, ExportEntry, Import, ImportEntry, ImportSummary};

/// Why an admin operation was refused. Mapped to HTTP status codes by the binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 404.
    #[error("no server with registration_id {0}")]
    NotFound(Uuid),
    /// 400: a field failed validation (the URL policy among them).
    #[error("{0}")]
    Invalid(String),
    /// 409: the same model is already registered at that URL.
    #[error("{0}")]
    Conflict(String),
    /// 503: the registration health check failed and `verify` was not false.
    #[error("health check of {url} failed: {reason}")]
    VerifyFailed { url: String, reason: String },
    /// 500: sled failed; nothing was acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// 409: demo backends are built in and cannot be edited.
    #[error("demo backends are built in and cannot be changed")]
    Demo,
    /// 400 naming the offending field (`servers[2].endpoint_url` in an import).
    #[error("{param}: {message}")]
    InvalidField {
        /// The field's path, for the error's `param`.
        param: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A validated registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub model_name: String,
    pub endpoint_url: String,
    pub api_key: Option<String>,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub verify: bool,
    /// `max_concurrency` (1–10 000, validated by the API); `None` = unlimited.
    pub max_concurrency: Option<u32>,
    /// The model id sent upstream in place of `model_name` (validated by the caller).
    pub upstream_model: Option<String>,
    /// `passive` skips the registration probe and every scheduled one.
    pub health_check: HealthCheckMode,
}

/// A partial update: `None` leaves a field alone; `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub model_name: Option<String>,
    pub endpoint_url: Option<String>,
    pub api_key: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub verify: bool,
    /// `Some(None)` clears the limit (unlimited).
    pub max_concurrency: Option<Option<u32>>,
    /// `Some(None)` stops rewriting the model.
    pub upstream_model: Option<Option<String>>,
    /// A new health-check mode.
    pub health_check: Option<HealthCheckMode>,
}

/// Filters of `GET /admin/servers`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub model: Option<String>,
    /// `healthy|unhealthy|unknown|active|inactive`.
    pub status: Option<String>,
    pub owner: Option<String>,
}

/// Dashboard totals.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegistryStats {
    pub servers: usize,
    pub healthy: usize,
    pub active: usize,
    pub models: usize,
    pub requests_routed: u64,
    pub streams_in_flight: u64,
    /// Requests waiting for a slot, per model.
    pub queues: Vec<(String, usize)>,
}

struct Entry {
    addr: Addr<Backend>,
    handle: Arc<BackendHandle>,
    record: Arc<RwLock<ServerRecord>>,
    demo: bool,
}

impl Entry {
    fn view(&self, with_history: bool) -> ServerView {
        ServerView::new(
            &self.record.read(),
            self.handle.counters(),
            self.demo,
            with_history,
        )
    }
}

/// Settings the supervisor needs beyond the registry.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub policy: HealthPolicy,
    pub upstream: upstream::UpstreamConfig,
}

/// See the module docs. Lives on the system arbiter; its backend actors live there too and
/// share its `awc::Client`.
pub struct HealthSupervisor {
    registry: Registry,
    table: Arc<RoutingTable>,
    client: awc::Client,
    config: SupervisorConfig,
    backends: HashMap<Uuid, Entry>,
}

impl HealthSupervisor {
    /// Loads every stored record; health checking of each resumes when the actor starts.
    pub fn new(
        registry: Registry,
        table: Arc<RoutingTable>,
        config: SupervisorConfig,
    ) -> Result<Self, crate::registry::RegistryError> {
        let client = upstream::build_client(&config.upstream);
        let mut sup = Self {
            registry,
            table,
            client,
            config,
            backends: HashMap::new(),
        };
        let records = sup.registry.load_all()?;
        log::info!("registry: {} stored servers", records.len());
        for record in records {
            sup.spawn_backend(record, false);
        }
        sup.rebuild();
        Ok(sup)
    }

    fn spawn_backend(&mut self, mut record: ServerRecord, demo: bool) -> Uuid {
        let id = record.registration_id;
        let refused = if demo {
            None
        } else {
            self.recheck_policy(&mut record)
        };
        let mut handle = BackendHandle::new(
            id,
            record.model_name.clone(),
            &record.endpoint_url,
            record.api_key.clone(),
        )
        .with_max_concurrency(record.max_concurrency)
        .with_cloud_options(
            record.upstream_model.as_deref(),
            record.health_check == HealthCheckMode::Passive,
        );
        handle.owner.clone_from(&record.owner);
        handle.registered_at_ms = record.registered_at;
        // An update replaces the handle while requests may still run on the old one.
        if let Some(prev) = self.table.find(id) {
            handle = handle.inherit_load(&prev);
        }
        let handle = Arc::new(handle);
        let shared = Arc::new(RwLock::new(record));
        let registry = (!demo).then(|| self.registry.clone());
        let mut backend = Backend::new(
            Arc::clone(&shared),
            Arc::clone(&handle),
            registry,
            self.client.clone(),
            self.config.policy,
        );
        if let Some(reason) = refused {
            backend = backend.refused(reason);
        }
        let addr = backend.start();
        self.backends.insert(
            id,
            Entry {
                addr,
                handle,
                record: shared,
                demo,
            },
        );
        id
    }

    /// Stored state is re-checked (SPEC §8): a record whose URL fails the URL policy of the
    /// current mode (registered in local mode, loaded in public mode) is kept but deactivated
    /// with the reason, and its actor never contacts it. The DNS half of the policy runs at
    /// connect time; this is the half that needs no network. Returns the reason.
    fn recheck_policy(&self, record: &mut ServerRecord) -> Option<String> {
        let allow_private = self.config.upstream.allow_private;
        let err = url_policy::check_offline(&record.endpoint_url, allow_private).err()?;
        let reason = format!("refused by this deployment's URL policy: {err}");
        log::warn!(
            "backend {} ({}) at {}: deactivated, never contacted: {reason}",
            record.registration_id,
            record.model_name,
            record.endpoint_url
        );
        if record.is_active || record.last_error.as_deref() != Some(reason.as_str()) {
            record.is_active = false;
            record.health_status = HealthStatus::Unhealthy;
            record.last_error = Some(reason.clone());
            record.updated_at = now_ms();
            if let Err(e) = self.registry.put_durable(record) {
                log::error!("backend {}: cannot persist: {e}", record.registration_id);
            }
        }
        Some(reason)
    }

    fn rebuild(&self) {
        self.table.rebuild(
            self.backends
                .values()
                .map(|e| Arc::clone(&e.handle))
                .collect(),
        );
    }

    fn entry(&self, id: Uuid) -> Result<&Entry, AdminError> {
        self.backends.get(&id).ok_or(AdminError::NotFound(id))
    }

    /// What a handler that asks server `id`'s actor takes into its future: the actor, its live
    /// counters and whether it is a demo entry.
    fn actor_of(&self, id: Uuid) -> Result<(Addr<Backend>, Arc<BackendHandle>, bool), AdminError> {
        self.entry(id)
            .map(|e| (e.addr.clone(), Arc::clone(&e.handle), e.demo))
    }

    fn duplicate_of(&self, model: &str, url: &str, except: Option<Uuid>) -> Option<Uuid> {
        self.backends.iter().find_map(|(id, e)| {
            let r = e.record.read();
            (Some(*id) != except && r.model_name == model && r.endpoint_url == url).then_some(*id)
        })
    }
}

impl Actor for HealthSupervisor {
    type Context = Context<Self>;
}

/// Register a new server (`POST /admin/register`).
#[derive(Message)]
#[rtype(result = "Result<ServerView, AdminError>")]
pub struct Register(pub Registration);

impl Handler<Register> for HealthSupervisor {
    type Result = ResponseActFuture<Self, Result<ServerView, AdminError>>;

    fn handle(&mut self, Register(reg): Register, _: &mut Self::Context) -> Self::Result {
        let allow_private = self.config.upstream.allow_private;
        let client = self.client.clone();
        let timeout = self.config.policy.timeout;
        let fut = async move {
            let url = url_policy::validate(&reg.endpoint_url, allow_private)
                .await
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            let mut record =
                ServerRecord::new(reg.model_name.clone(), url.normalized, reg.api_key.clone());
            record.owner = reg.owner.clone();
            record.description = reg.description.clone();
            record.max_concurrency = reg.max_concurrency;
            record.upstream_model = reg.upstream_model.clone();
            record.health_check = reg.health_check;
            if reg.health_check == HealthCheckMode::Passive {
                return Ok(record); // never probed, not even now (SPEC §3.1)
            }
            let result = probe_before_write(&client, &record, timeout, reg.verify).await?;
            apply_check(&mut record, &result, CheckKind::Registration, u32::MAX);
            Ok(record)
        };
        Box::pin(fut.into_actor(self).map(|result, act, _| {
            let record = result?;
            if let Some(existing) = act.duplicate_of(&record.model_name, &record.endpoint_url, None)
            {
                return Err(conflict(&record.model_name, &record.endpoint_url, existing));
            }
            act.registry
                .put_durable(&record)
                .map_err(|e| AdminError::Storage(e.to_string()))?;
            log::info!(
                "registered backend {} for model {} at {} ({})",
                record.registration_id,
                record.model_name,
                record.endpoint_url,
                record.health_status.as_str()
            );
            let id = act.spawn_backend(record, false);
            act.rebuild();
            act.entry(id).map(|e| e.view(false))
        }))
    }
}

/// Add a built-in demo backend entry (never persisted).
#[derive(Message)]
#[rtype(result = "Uuid")]
pub struct AddDemo {
    pub model_name: String,
    pub endpoint_url: String,
}

impl Handler<AddDemo> for HealthSupervisor {
    type Result = MessageResult<AddDemo>;

    fn handle(&mut self, msg: AddDemo, _: &mut Self::Context) -> Self::Result {
        let mut record = ServerRecord::new(msg.model_name, msg.endpoint_url, None);
        record.owner = Some("switchboard-demo".into());
        record.description = Some("built-in demo backend (not persisted)".into());
        record.health_status = HealthStatus::Healthy;
        let id = self.spawn_backend(record, true);
        self.rebuild();
        MessageResult(id)
    }
}

/// Update fields of a server (`PUT /admin/register/{id}`).
#[derive(Message)]
#[rtype(result = "Result<ServerView, AdminError>")]
pub struct Update {
    pub id: Uuid,
    pub patch: Patch,
}

impl Handler<Update> for HealthSupervisor {
    type Result = ResponseActFuture<Self, Result<ServerView, AdminError>>;

    fn handle(&mut self, Update { id, patch }: Update, _: &mut Self::Context) -> Self::Result {
        let current = match self.entry(id) {
            Ok(e) if e.demo => return Box::pin(fut::ready(Err(AdminError::Demo))),
            Ok(e) => e.record.read().clone(),
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let allow_private = self.config.upstream.allow_private;
        let client = self.client.clone();
        let timeout = self.config.policy.timeout;
        // Validate and verify against a candidate before touching the live actor: a refused
        // update changes nothing.
        let fut = async move {
            let mut candidate = current.clone();
            if let Some(raw) = &patch.endpoint_url {
                let url = url_policy::validate(raw, allow_private)
                    .await
                    .map_err(|e| AdminError::Invalid(e.to_string()))?;
                candidate.endpoint_url = url.normalized;
            }
            if let Some(m) = &patch.model_name {
                candidate.model_name = m.clone();
            }
            if let Some(k) = &patch.api_key {
                candidate.api_key = k.clone();
            }
            if let Some(m) = &patch.upstream_model {
                candidate.upstream_model = m.clone();
            }
            if let Some(mode) = patch.health_check {
                candidate.health_check = mode;
            }
            let reconnect = (candidate.endpoint_url != current.endpoint_url
                || candidate.api_key != current.api_key
                || candidate.health_check != current.health_check)
                && candidate.health_check == HealthCheckMode::Models;
            let probe = if reconnect {
                Some(probe_before_write(&client, &candidate, timeout, patch.verify).await?)
            } else {
                None
            };
            Ok((candidate, probe))
        };
        Box::pin(
            fut.into_actor(self)
                .then(move |result, act, _| {
                    let addr = act.backends.get(&id).map(|e| e.addr.clone());
                    // The same rule as registration: one model once per URL.
                    let duplicate = result.as_ref().ok().and_then(|(c, _)| {
                        act.duplicate_of(&c.model_name, &c.endpoint_url, Some(id))
                            .map(|existing| conflict(&c.model_name, &c.endpoint_url, existing))
                    });
                    async move {
                        if let Some(conflict) = duplicate {
                            return Err(conflict);
                        }
                        let (candidate, probe) = result?;
                        let addr = addr.ok_or(AdminError::NotFound(id))?;
                        let latest = addr
                            .send(Retire)
                            .await
                            .map_err(|_| AdminError::NotFound(id))?;
                        Ok((candidate, probe, latest))
                    }
                    .into_actor(act)
                })
                .map(move |result, act, _| {
                    let (candidate, probe, mut record) = result?;
                    // Checked again here, in the same turn as the write: a registration may have
                    // taken the pair while the old actor was retiring. Refused, the server
                    // comes back as it was.
                    let url = &candidate.endpoint_url;
                    if let Some(existing) = act.duplicate_of(&candidate.model_name, url, Some(id)) {
                        act.backends.remove(&id);
                        act.spawn_backend(record, false);
                        act.rebuild();
                        return Err(conflict(&candidate.model_name, url, existing));
                    }
                    record.model_name = candidate.model_name;
                    record.endpoint_url = candidate.endpoint_url;
                    record.api_key = candidate.api_key;
                    record.upstream_model = candidate.upstream_model;
                    record.health_check = candidate.health_check;
                    if let Some(owner) = patch.owner {
                        record.owner = owner;
                    }
                    if let Some(description) = patch.description {
                        record.description = description;
                    }
                    if let Some(limit) = patch.max_concurrency {
                        record.max_concurrency = limit;
                    }
                    if let Some(result) = probe {
                        record.consecutive_failures = 0;
                        record.is_active = true;
                        apply_check(&mut record, &result, CheckKind::Registration, u32::MAX);
                    }
                    record.updated_at = now_ms();
                    let stored = act.registry.put_durable(&record);
                    act.backends.remove(&id);
                    // Even if the write failed the actor must come back, with what is stored.
                    let record = match stored {
                        Ok(()) => record,
                        Err(e) => {
                            log::error!("update of {id} not stored: {e}");
                            act.spawn_backend(candidate_fallback(&act.registry, id, record), false);
                            act.rebuild();
                            return Err(AdminError::Storage(e.to_string()));
                        }
                    };
                    log::info!(
                        "updated backend {id} (model {}, {})",
                        record.model_name,
                        record.endpoint_url
                    );
                    act.spawn_backend(record, false);
                    act.rebuild();
                    act.entry(id).map(|e| e.view(false))
                }),
        )
    }
}

/// 409: one model is registered once per URL.
/// Probes `record` before it is stored (a registration, or an update that changes how the server
/// is reached). With `verify` a failed probe refuses the write; without, its result is recorded.
async fn probe_before_write(
    client: &awc::Client,
    record: &ServerRecord,
    timeout: std::time::Duration,
    verify: bool,
) -> Result<Result<upstream::ProbeOk, String>, AdminError> {
    let handle = BackendHandle::new(
        record.registration_id,
        record.model_name.clone(),
        &record.endpoint_url,
        record.api_key.clone(),
    );
    let result = upstream::probe(client, &handle, timeout).await;
    match &result {
        Err(reason) if verify => Err(AdminError::VerifyFailed {
            url: record.endpoint_url.clone(),
            reason: reason.clone(),
        }),
        _ => Ok(result),
    }
}

fn conflict(model: &str, url: &str, existing: Uuid) -> AdminError {
    AdminError::Conflict(format!(
        "model {model} is already registered at {url} (registration_id {existing})"
    ))
}

/// The stored version of a record after a failed write, or the in-memory one if none is stored.
fn candidate_fallback(registry: &Registry, id: Uuid, memory: ServerRecord) -> ServerRecord {
    registry
        .load_all()
        .ok()
        .and_then(|all| all.into_iter().find(|r| r.registration_id == id))
        .unwrap_or(memory)
}

/// Delete a server (`DELETE /admin/register/{id}`); routing stops before the reply.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct Delete(pub Uuid);

impl Handler<Delete> for HealthSupervisor {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, Delete(id): Delete, _: &mut Self::Context) -> Self::Result {
        let entry = self.entry(id)?;
        if entry.demo {
            return Err(AdminError::Demo);
        }
        self.registry
            .remove_durable(id)
            .map_err(|e| AdminError::Storage(e.to_string()))?;
        if let Some(entry) = self.backends.remove(&id) {
            entry.handle.publish(false, false);
            entry.addr.do_send(Retire);
        }
        self.rebuild();
        log::info!("deleted backend {id}");
        Ok(())
    }
}

/// List servers (`GET /admin/servers`).
#[derive(Message)]
#[rtype(result = "Vec<ServerView>")]
pub struct List(pub Filter);

impl Handler<List> for HealthSupervisor {
    type Result = MessageResult<List>;

    fn handle(&mut self, List(filter): List, _: &mut Self::Context) -> Self::Result {
        let mut views: Vec<ServerView> = self
            .backends
            .values()
            .map(|e| e.view(false))
            .filter(|v| matches(v, &filter))
            .collect();
        views.sort_by_key(|v| v.registered_at);
        MessageResult(views)
    }
}

fn matches(v: &ServerView, f: &Filter) -> bool {
    if f.model.as_deref().is_some_and(|m| m != v.model_name) {
        return false;
    }
    if f.owner
        .as_deref()
        .is_some_and(|o| Some(o) != v.owner.as_deref())
    {
        return false;
    }
    match f.status.as_deref() {
        None | Some("") => true,
        Some("active") => v.is_active,
        Some("inactive") => !v.is_active,
        Some(s) => v.health_status.as_str() == s,
    }
}

/// One server with its health history (`GET /admin/servers/{id}`).
#[derive(Message)]
#[rtype(result = "Result<ServerView, AdminError>")]
pub struct Get(pub Uuid);

impl Handler<Get> for HealthSupervisor {
    type Result = Result<ServerView, AdminError>;

    fn handle(&mut self, Get(id): Get, _: &mut Self::Context) -> Self::Result {
        self.entry(id).map(|e| e.view(true))
    }
}

/// Run a check now (`POST /admin/servers/{id}/health-check`).
#[derive(Message)]
#[rtype(result = "Result<ServerView, AdminError>")]
pub struct ForceCheck(pub Uuid);

impl Handler<ForceCheck> for HealthSupervisor {
    type Result = ResponseFuture<Result<ServerView, AdminError>>;

    fn handle(&mut self, ForceCheck(id): ForceCheck, _: &mut Self::Context) -> Self::Result {
        let actor = self.actor_of(id);
        Box::pin(async move {
            let (addr, handle, demo) = actor?;
            let record = addr
                .send(CheckNow {
                    kind: CheckKind::Manual,
                })
                .await
                .ok()
                .flatten()
                .ok_or(AdminError::NotFound(id))?;
            Ok(ServerView::new(&record, handle.counters(), demo, true))
        })
    }
}

/// Re-enable a deactivated server (`POST /admin/servers/{id}/activate`).
#[derive(Message)]
#[rtype(result = "Result<ServerView, AdminError>")]
pub struct ActivateServer(pub Uuid);

impl Handler<ActivateServer> for HealthSupervisor {
    type Result = ResponseFuture<Result<ServerView, AdminError>>;

    fn handle(
        &mut self,
        ActivateServer(id): ActivateServer,
        _: &mut Self::Context,
    ) -> Self::Result {
        let actor = self.actor_of(id);
        Box::pin(async move {
            let (addr, handle, demo) = actor?;
            let record = addr
                .send(Activate)
                .await
                .map_err(|_| AdminError::NotFound(id))?;
            Ok(ServerView::new(&record, handle.counters(), demo, false))
        })
    }
}

/// Totals for `/admin/stats` and `/health`.
#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct Stats;

impl Handler<Stats> for HealthSupervisor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Self::Context) -> Self::Result {
        let mut s = RegistryStats {
            servers: self.backends.len(),
            models: self.table.snapshot().len(),
            ..Default::default()
        };
        for e in self.backends.values() {
            let (routed, in_flight) = e.handle.counters();
            s.requests_routed += routed;
            s.streams_in_flight += in_flight;
            s.healthy += usize::from(e.handle.is_routable());
            s.active += usize::from(e.handle.is_active());
        }
        s.queues = self.table.queue_depths();
        MessageResult(s)
    }
}

/// Flush sled before exit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for HealthSupervisor {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {
        if let Err(e) = self.registry.flush() {
            log::error!("flush on shutdown failed: {e}");
        }
    }
}
