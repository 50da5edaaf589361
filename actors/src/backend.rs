//! The `Backend` actor: one per registered server. It is the only writer of its record: it runs
//! the server's health checks on its own timer, applies the failure policy, persists the result
//! and publishes routability to the shared [`BackendHandle`].

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix::WeakAddr;
use parking_lot::RwLock;

use crate::record::{now_ms, HealthCheck, HealthStatus, ServerRecord};
use crate::registry::Registry;
use crate::routing::{BackendHandle, FailureSink};
use crate::upstream;

/// A re-check after a passive failure comes this soon (spec: "within 5 s").
const PASSIVE_RECHECK: Duration = Duration::from_secs(2);
/// The first check after start comes within this window, spread so a restart with many
/// servers does not probe them all in the same instant.
const FIRST_CHECK_WINDOW: Duration = Duration::from_secs(3);

/// The health policy, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_consecutive_failures: u32,
    /// A deactivated server is probed only every `slow_probe_factor` intervals.
    pub slow_probe_factor: u32,
}

/// What a health check was triggered by; recorded in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Active,
    Passive,
    Manual,
    Registration,
}

impl CheckKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
            Self::Manual => "manual",
            Self::Registration => "registration",
        }
    }
}

/// Outcome of one probe, applied to a record by [`apply_check`].
pub type ProbeResult = Result<upstream::ProbeOk, String>;

/// Applies one check result to `record` with the failure policy, returning the log line for a
/// status change (if any). Pure, so the policy is unit tested without sockets.
pub fn apply_check(
    record: &mut ServerRecord,
    result: &ProbeResult,
    kind: CheckKind,
    max_failures: u32,
) -> Option<String> {
    let before = (record.health_status, record.is_active);
    let (ok, latency_ms, error) = match result {
        Ok(p) => (true, Some(p.latency.as_millis() as u64), None),
        Err(e) => (false, None, Some(e.clone())),
    };
    record.push_check(HealthCheck {
        time: now_ms(),
        ok,
        latency_ms,
        error: error.clone(),
        kind: kind.as_str().to_string(),
    });
    if ok {
        record.consecutive_failures = 0;
        record.health_status = HealthStatus::Healthy;
        record.is_active = true;
        record.last_latency_ms = latency_ms;
        record.last_error = None;
    } else {
        record.health_status = HealthStatus::Unhealthy;
        record.last_error = error.clone();
        if kind != CheckKind::Passive {
            record.consecutive_failures += 1;
        }
        if record.consecutive_failures >= max_failures && record.is_active {
            record.is_active = false;
        }
    }
    let after = (record.health_status, record.is_active);
    if before == after {
        return None;
    }
    let reason = error.unwrap_or_else(|| "check succeeded".to_string());
    let what = match (before.1, after.1) {
        (true, false) => format!(
            "deactivated after {} consecutive failed checks",
            record.consecutive_failures
        ),
        (false, true) => "reactivated".to_string(),
        _ => format!("{} -> {}", before.0.as_str(), after.0.as_str()),
    };
    Some(format!(
        "backend {} ({} at {}) {what} ({} check): {reason}",
        record.registration_id,
        record.model_name,
        record.endpoint_url,
        kind.as_str()
    ))
}

/// One server's actor. Stopped by the supervisor on delete/update (`Retire`) or shutdown.
pub struct Backend {
    /// The record, shared read-only with the supervisor for listings; written only here.
    record: Arc<RwLock<ServerRecord>>,
    /// Routing handle; health is published into it after every change.
    handle: Arc<BackendHandle>,
    /// `None` for demo backends, which are never persisted.
    registry: Option<Registry>,
    client: awc::Client,
    policy: HealthPolicy,
    /// The pending scheduled check; replaced whenever a check is (re)scheduled.
    next_check: Option<SpawnHandle>,
    /// A probe is running; a second trigger waits for it instead of doubling up.
    checking: bool,
    /// The URL fails this deployment's URL policy (a record stored under another mode): the
    /// server stays deactivated and is never contacted; a check only records this reason.
    refused: Option<String>,
}

impl Backend {
    /// A backend actor for `record`; call `start()` on the arbiter that owns `client`.
    pub fn new(
        record: Arc<RwLock<ServerRecord>>,
        handle: Arc<BackendHandle>,
        registry: Option<Registry>,
        client: awc::Client,
        policy: HealthPolicy,
    ) -> Self {
        Self {
            record,
            handle,
            registry,
            client,
            policy,
            next_check: None,
            checking: false,
            refused: None,
        }
    }

    /// Marks the server as refused by the URL policy for `reason` (see the field).
    pub fn refused(mut self, reason: String) -> Self {
        self.refused = Some(reason);
        self
    }

    fn publish(&self) {
        let r = self.record.read();
        self.handle
            .publish(r.health_status != HealthStatus::Unhealthy, r.is_active);
    }

    fn persist(&self, durable: bool) {
        let Some(registry) = &self.registry else {
            return;
        };
        let record = self.record.read().clone();
        let result = if durable {
            registry.put_durable(&record)
        } else {
            registry.put(&record)
        };
        if let Err(e) = result {
            log::error!(
                "backend {}: cannot persist health state: {e}",
                record.registration_id
            );
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(h) = self.next_check.take() {
            ctx.cancel_future(h);
        }
        self.next_check = Some(ctx.run_later(after, |act, ctx| {
            act.next_check = None;
            act.run_check(ctx, CheckKind::Active, None);
        }));
    }

    fn schedule_regular(&mut self, ctx: &mut Context<Self>) {
        if self.handle.passive_health {
            return; // never probed: only requests tell its health
        }
        let mut every = self.policy.interval;
        if !self.record.read().is_active {
            every *= self.policy.slow_probe_factor.max(1);
        }
        self.schedule(ctx, jitter(every, 0.1));
    }

    /// Runs one probe, applies it, then schedules the next regular check. `reply` receives the
    /// record after the check (manual checks answer with it).
    fn run_check(
        &mut self,
        ctx: &mut Context<Self>,
        kind: CheckKind,
        reply: Option<tokio::sync::oneshot::Sender<ServerRecord>>,
    ) {
        if self.checking && reply.is_none() {
            return;
        }
        if let Some(reason) = self.refused.clone() {
            self.apply(&Err(reason), kind);
            if let Some(tx) = reply {
                let _ = tx.send(self.record.read().clone());
            }
            return;
        }
        self.checking = true;
        let client = self.client.clone();
        let handle = Arc::clone(&self.handle);
        let timeout = self.policy.timeout;
        let fut = async move { upstream::probe(&client, &handle, timeout).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.checking = false;
            act.apply(&result, kind);
            act.schedule_regular(ctx);
            if let Some(tx) = reply {
                let _ = tx.send(act.record.read().clone());
            }
        }));
    }

    fn apply(&mut self, result: &ProbeResult, kind: CheckKind) {
        let change = {
            let mut r = self.record.write();
            let change = apply_check(&mut r, result, kind, self.policy.max_consecutive_failures);
            if change.is_some() {
                r.updated_at = now_ms();
            }
            change
        };
        if let Some(line) = &change {
            log::warn!("{line}");
        }
        self.publish();
        self.persist(false);
    }
}

/// Spreads `d` by ±`frac` so periodic work of many actors does not align.
pub fn jitter(d: Duration, frac: f64) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u64_pair().0 % 10_000) as f64 / 10_000.0; // [0,1)
    d.mul_f64(1.0 + frac * (2.0 * r - 1.0))
}

impl Actor for Backend {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish();
        if self.refused.is_some() {
            return; // never contacted: no checks, and it is not routable
        }
        let sink: Arc<dyn FailureSink> = Arc::new(ActorSink(ctx.address().downgrade()));
        self.handle.set_failure_sink(sink);
        if self.handle.passive_health {
            return;
        }
        let first = FIRST_CHECK_WINDOW.min(self.policy.interval);
        self.schedule(
            ctx,
            first.mul_f64(jitter(Duration::from_secs(1), 0.5).as_secs_f64()),
        );
    }
}

/// Passive failures reach the actor through a weak address: a handle outliving its actor
/// (a request finishing after a delete) must not keep the actor alive.
struct ActorSink(WeakAddr<Backend>);

impl FailureSink for ActorSink {
    fn report(&self, reason: String) {
        if let Some(addr) = self.0.upgrade() {
            addr.do_send(PassiveFailure { reason });
        }
    }

    fn recovered(&self) {
        if let Some(addr) = self.0.upgrade() {
            addr.do_send(PassiveRecovered);
        }
    }
}

/// A request to this backend failed before its response was committed, or mid-stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PassiveFailure {
    pub reason: String,
}

impl Handler<PassiveFailure> for Backend {
    type Result = ();

    fn handle(&mut self, msg: PassiveFailure, ctx: &mut Self::Context) {
        self.apply(&Err(msg.reason), CheckKind::Passive);
        if self.handle.passive_health {
            // No probe: after the re-check delay the backend is routable again, and the
            // next request that succeeds marks it healthy (one that fails starts over).
            if let Some(h) = self.next_check.take() {
                ctx.cancel_future(h);
            }
            self.next_check = Some(ctx.run_later(PASSIVE_RECHECK, |act, _| {
                act.next_check = None;
                act.handle.await_success();
            }));
        } else if !self.checking {
            self.schedule(ctx, jitter(PASSIVE_RECHECK, 0.25));
        }
    }
}

/// A passive-health backend served a request after its re-check delay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PassiveRecovered;

impl Handler<PassiveRecovered> for Backend {
    type Result = ();

    fn handle(&mut self, _: PassiveRecovered, _: &mut Self::Context) {
        let ok = Ok(upstream::ProbeOk {
            latency: Duration::ZERO,
        });
        self.apply(&ok, CheckKind::Passive);
    }
}

/// Run a check now and answer with the resulting record (admin "force check").
#[derive(Message)]
#[rtype(result = "Option<ServerRecord>")]
pub struct CheckNow {
    pub kind: CheckKind,
}

impl Handler<CheckNow> for Backend {
    type Result = ResponseFuture<Option<ServerRecord>>;

    fn handle(&mut self, msg: CheckNow, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.run_check(ctx, msg.kind, Some(tx));
        Box::pin(async move { rx.await.ok() })
    }
}

/// Re-enable a deactivated server and check it at once.
#[derive(Message)]
#[rtype(result = "ServerRecord")]
pub struct Activate;

impl Handler<Activate> for Backend {
    type Result = MessageResult<Activate>;

    fn handle(&mut self, _: Activate, ctx: &mut Self::Context) -> Self::Result {
        if let Some(reason) = &self.refused {
            log::warn!(
                "backend {}: not activated: {reason}",
                self.record.read().registration_id
            );
            return MessageResult(self.record.read().clone());
        }
        {
            let mut r = self.record.write();
            if !r.is_active {
                log::warn!(
                    "backend {} ({}) activated by an admin",
                    r.registration_id,
                    r.model_name
                );
            }
            r.is_active = true;
            r.consecutive_failures = 0;
            r.updated_at = now_ms();
        }
        self.publish();
        self.persist(true);
        if !self.handle.passive_health {
            self.schedule(ctx, Duration::ZERO);
        }
        MessageResult(self.record.read().clone())
    }
}

/// Stop this actor and hand back its final record (update and delete). After the reply the
/// actor writes nothing more, so the supervisor's next write cannot be overtaken.
#[derive(Message)]
#[rtype(result = "ServerRecord")]
pub struct Retire;

impl Handler<Retire> for Backend {
    type Result = MessageResult<Retire>;

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) -> Self::Result {
        self.registry = None;
        self.handle.publish(false, false);
        ctx.stop();
        MessageResult(self.record.read().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ProbeResult {
        Ok(upstream::ProbeOk {
            latency: Duration::from_millis(3),
        })
    }

    #[test]
    fn failures_deactivate_at_the_max_and_success_reactivates() {
        let mut r = ServerRecord::new("m".into(), "http://x".into(), None);
        assert!(apply_check(&mut r, &ok(), CheckKind::Active, 3).is_some());
        assert_eq!(r.health_status, HealthStatus::Healthy);
        let fail: ProbeResult = Err("HTTP 500".into());
        let first = apply_check(&mut r, &fail, CheckKind::Active, 3);
        assert!(first.unwrap_or_default().contains("healthy -> unhealthy"));
        assert!(apply_check(&mut r, &fail, CheckKind::Active, 3).is_none());
        assert!(r.is_active);
        let third = apply_check(&mut r, &fail, CheckKind::Active, 3);
        assert!(third.unwrap_or_default().contains("deactivated after 3"));
        assert!(!r.is_active);
        let back = apply_check(&mut r, &ok(), CheckKind::Active, 3);
        assert!(back.unwrap_or_default().contains("reactivated"));
        assert!(r.is_active);
        assert_eq!(r.consecutive_failures, 0);
        assert_eq!(r.health_history.len(), 5);
    }

    #[test]
    fn passive_failures_mark_unhealthy_without_counting() {
        let mut r = ServerRecord::new("m".into(), "http://x".into(), None);
        apply_check(&mut r, &ok(), CheckKind::Active, 1);
        apply_check(&mut r, &Err("reset".into()), CheckKind::Passive, 1);
        assert_eq!(r.health_status, HealthStatus::Unhealthy);
        assert_eq!(r.consecutive_failures, 0);
        assert!(r.is_active);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10), 0.1);
            assert!(j >= Duration::from_secs(9) && j <= Duration::from_secs(11));
        }
    }
}
