//! The server record: what the registry stores about one registered backend, and what the admin
//! API shows of it.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many health checks a record keeps; the admin API shows them and `success_rate` is
/// computed over them.
pub const HEALTH_HISTORY_LEN: usize = 100;

/// Health as last observed. `Unknown` until the first check of a record has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Never checked (new record, or its endpoint just changed).
    Unknown,
    /// The last check (or request) succeeded; the server is in the rotation.
    Healthy,
    /// The last check or a request failed; the server is out of the rotation.
    Unhealthy,
}

impl HealthStatus {
    /// The wire spelling, for logs and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One entry of a server's health history. On the wire (and in sled) it is
/// `{time, ok, latency, latency_ms, error, kind}`: SPEC §3.1 names the entries "time, ok,
/// latency, error"; `latency_ms` repeats `latency` with the unit in its name, like the record's
/// `last_latency_ms`. Records stored before `time` was named read `at`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HealthCheck {
    /// Unix milliseconds when the check finished.
    #[serde(alias = "at")]
    pub time: u64,
    /// Whether the check counted as healthy.
    pub ok: bool,
    /// Round-trip time of the probe, in ms (`latency`, its copy on the wire, is ignored when
    /// read back).
    pub latency_ms: Option<u64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// `active` (scheduled probe), `passive` (a request failed), `manual` (admin asked),
    /// `registration`.
    pub kind: String,
}

impl Serialize for HealthCheck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut entry = s.serialize_struct("HealthCheck", 6)?;
        entry.serialize_field("time", &self.time)?;
        entry.serialize_field("ok", &self.ok)?;
        entry.serialize_field("latency", &self.latency_ms)?;
        entry.serialize_field("latency_ms", &self.latency_ms)?;
        entry.serialize_field("error", &self.error)?;
        entry.serialize_field("kind", &self.kind)?;
        entry.end()
    }
}

/// Everything the registry persists about one backend. The API key is stored (it must be sent
/// upstream) but never serialised into API responses: see [`ServerView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub registration_id: Uuid,
    pub model_name: String,
    pub endpoint_url: String,
    pub api_key: Option<String>,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub health_status: HealthStatus,
    pub is_active: bool,
    pub consecutive_failures: u32,
    pub last_checked_at: Option<u64>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub registered_at: u64,
    pub updated_at: u64,
    pub health_history: VecDeque<HealthCheck>,
    /// Requests this backend takes at once (SPEC §2.1); `None` = unlimited. Records stored
    /// before the field existed read as unlimited.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// The model id sent to this backend in place of `model_name` (SPEC §3.1).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// How this backend's health is watched (SPEC §3.1, §3.3).
    #[serde(default)]
    pub health_check: HealthCheckMode,
}

/// `health_check` of a registration: the active `GET {base}/models` probe, or passive only
/// (for providers whose models route is costly or needs other credentials).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckMode {
    /// Probed every interval (the default).
    #[default]
    Models,
    /// Never probed; request failures mark it, a later success restores it.
    Passive,
}

impl HealthCheckMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Models => "models",
            Self::Passive => "passive",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "models" => Some(Self::Models),
            "passive" => Some(Self::Passive),
            _ => None,
        }
    }
}

impl ServerRecord {
    /// A fresh record for a validated registration.
    pub fn new(model_name: String, endpoint_url: String, api_key: Option<String>) -> Self {
        let now = now_ms();
        Self {
            registration_id: Uuid::new_v4(),
            model_name,
            endpoint_url,
            api_key,
            owner: None,
            description: None,
            health_status: HealthStatus::Unknown,
            is_active: true,
            consecutive_failures: 0,
            last_checked_at: None,
            last_error: None,
            last_latency_ms: None,
            registered_at: now,
            updated_at: now,
            health_history: VecDeque::new(),
            max_concurrency: None,
            upstream_model: None,
            health_check: HealthCheckMode::Models,
        }
    }

    /// Appends a check to the bounded history.
    pub fn push_check(&mut self, check: HealthCheck) {
        if self.health_history.len() >= HEALTH_HISTORY_LEN {
            self.health_history.pop_front();
        }
        self.last_checked_at = Some(check.time);
        self.health_history.push_back(check);
    }

    /// Fraction of recent checks that succeeded; `None` before the first check.
    pub fn success_rate(&self) -> Option<f64> {
        if self.health_history.is_empty() {
            return None;
        }
        let ok = self.health_history.iter().filter(|c| c.ok).count();
        Some(ok as f64 / self.health_history.len() as f64)
    }
}

/// What the admin API returns for a record: no key, plus live counters.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub registration_id: Uuid,
    pub model_name: String,
    pub endpoint_url: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub has_api_key: bool,
    pub health_status: HealthStatus,
    pub is_active: bool,
    pub consecutive_failures: u32,
    pub last_checked_at: Option<u64>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub success_rate: Option<f64>,
    pub registered_at: u64,
    pub updated_at: u64,
    pub requests_routed: u64,
    pub in_flight: u64,
    /// `true` for the built-in demo backend's entries (not persisted).
    pub demo: bool,
    /// Only on the single-server route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_history: Option<Vec<HealthCheck>>,
    /// `null` when unlimited.
    pub max_concurrency: Option<u32>,
    /// The model id sent upstream in place of `model_name`, if any.
    pub upstream_model: Option<String>,
    /// `models` or `passive`.
    pub health_check: HealthCheckMode,
}

impl ServerView {
    /// Builds the public view; `with_history` is set by the single-server route only.
    pub fn new(
        record: &ServerRecord,
        counters: (u64, u64),
        demo: bool,
        with_history: bool,
    ) -> Self {
        Self {
            registration_id: record.registration_id,
            model_name: record.model_name.clone(),
            endpoint_url: record.endpoint_url.clone(),
            owner: record.owner.clone(),
            description: record.description.clone(),
            has_api_key: record.api_key.is_some(),
            health_status: record.health_status,
            is_active: record.is_active,
            consecutive_failures: record.consecutive_failures,
            last_checked_at: record.last_checked_at,
            last_error: record.last_error.clone(),
            last_latency_ms: record.last_latency_ms,
            success_rate: record.success_rate(),
            registered_at: record.registered_at,
            updated_at: record.updated_at,
            requests_routed: counters.0,
            in_flight: counters.1,
            demo,
            health_history: with_history.then(|| record.health_history.iter().cloned().collect()),
            max_concurrency: record.max_concurrency,
            upstream_model: record.upstream_model.clone(),
            health_check: record.health_check,
        }
    }
}

/// Unix time in milliseconds; the one clock all records and events use.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ok: bool) -> HealthCheck {
        HealthCheck {
            time: now_ms(),
            ok,
            latency_ms: Some(1),
            error: None,
            kind: "active".into(),
        }
    }

    #[test]
    fn history_entries_name_time_ok_latency_error_and_read_back_old_records() {
        let c = check(true);
        let v = serde_json::to_value(&c).unwrap_or_default();
        for key in ["time", "ok", "latency", "latency_ms", "error", "kind"] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        let back: HealthCheck = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, c);
        let old = serde_json::json!({"at": 5, "ok": false, "latency_ms": null, "error": "x", "kind": "active"});
        let old: HealthCheck = serde_json::from_value(old).expect("an `at` record still reads");
        assert_eq!((old.time, old.ok), (5, false));
    }

    #[test]
    fn history_is_bounded_and_success_rate_counts_recent_checks() {
        let mut r = ServerRecord::new("m".into(), "http://x".into(), None);
        assert_eq!(r.success_rate(), None);
        for _ in 0..HEALTH_HISTORY_LEN {
            r.push_check(check(false));
        }
        for _ in 0..HEALTH_HISTORY_LEN / 2 {
            r.push_check(check(true));
        }
        assert_eq!(r.health_history.len(), HEALTH_HISTORY_LEN);
        assert_eq!(r.success_rate(), Some(0.5));
    }

    #[test]
    fn records_without_max_concurrency_still_load_as_unlimited() {
        let r = ServerRecord::new("m".into(), "http://x".into(), None);
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v.as_object_mut().map(|o| o.remove("max_concurrency"));
        let old: ServerRecord = serde_json::from_value(v).expect("an old record reads");
        assert_eq!(old.max_concurrency, None);
        let mut limited = r.clone();
        limited.max_concurrency = Some(4);
        let back: ServerRecord =
            serde_json::from_value(serde_json::to_value(&limited).unwrap_or_default()).expect("rt");
        assert_eq!(back.max_concurrency, Some(4));
        let view =
            serde_json::to_value(ServerView::new(&r, (0, 0), false, false)).unwrap_or_default();
        assert!(view["max_concurrency"].is_null() && view["in_flight"] == 0);
    }

    #[test]
    fn view_never_contains_the_key() {
        let r = ServerRecord::new("m".into(), "http://x".into(), Some("sk-secret".into()));
        let json =
            serde_json::to_string(&ServerView::new(&r, (0, 0), false, true)).unwrap_or_default();
        assert!(!json.contains("sk-secret"));
        assert!(json.contains("\"has_api_key\":true"));
    }
}
