//! Configuration: every tunable is an environment variable and the same as a CLI flag
//! (`--help` lists them with defaults). clap reads both; this module adds what clap cannot
//! say: local vs public mode, the public-mode credential rule, errors that name the variable,
//! and a warning for unknown `SWITCHBOARD_*` variables (a typo must not pass silently).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

/// switchboard: an actor-based streaming broker for LLM traffic.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
pub struct Config {
    /// Listen port (Railway sets PORT).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Listen address; a non-loopback address means public mode.
    #[arg(long, env = "SWITCHBOARD_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Directory of the sled database and the generated admin key.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Admin API key; generated and stored in the data dir when unset.
    #[arg(long, env = "SWITCHBOARD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HTTP Basic user for pages, /ws and /api/sessions/* (when a password is set).
    #[arg(long, env = "SWITCHBOARD_UI_USER", default_value = "admin")]
    pub ui_user: String,
    /// HTTP Basic password for pages and session routes.
    #[arg(long, env = "SWITCHBOARD_UI_PASSWORD", hide_env_values = true)]
    pub ui_password: Option<String>,
    /// Comma-separated client keys; when set /v1/* requires `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHBOARD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Serve and register the built-in demo backend [default: on in local mode].
    #[arg(long, env = "SWITCHBOARD_DEMO", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,
    /// Seconds between active health checks.
    #[arg(long, env = "SWITCHBOARD_HEALTH_INTERVAL_S", default_value_t = 30.0)]
    pub health_interval_s: f64,
    /// Health check timeout in seconds.
    #[arg(long, env = "SWITCHBOARD_HEALTH_TIMEOUT_S", default_value_t = 10.0)]
    pub health_timeout_s: f64,
    /// Failed checks before a backend is deactivated.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONSECUTIVE_FAILURES",
        default_value_t = 3
    )]
    pub max_consecutive_failures: u32,
    /// Requests per minute per client IP on API routes (0 = off).
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT_PER_MIN", default_value_t = 60)]
    pub rate_limit_per_min: u32,
    /// Concurrent WebSocket + SSE session connections per IP.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", default_value_t = 5)]
    pub max_connections_per_ip: u32,
    /// Idle session expiry in seconds.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL_S", default_value_t = 1800)]
    pub session_ttl_s: u64,
    /// Maximum sessions kept; detached ones are evicted LRU at the cap.
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS", default_value_t = 1000)]
    pub max_sessions: usize,
    /// Seconds in-flight model streams keep running after a session's last connection drops.
    #[arg(long, env = "SWITCHBOARD_DISCONNECT_GRACE_S", default_value_t = 10)]
    pub disconnect_grace_s: u64,
    /// Events kept per session for resume.
    #[arg(long, env = "SWITCHBOARD_EVENT_BUFFER", default_value_t = 4096)]
    pub event_buffer: usize,
    /// Take the client IP from X-Forwarded-For (behind Railway's proxy).
    #[arg(long, env = "SWITCHBOARD_TRUST_PROXY", value_parser = BoolishValueParser::new(), default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy: bool,
    /// Allow loopback/private backend addresses [default: on in local mode].
    #[arg(long, env = "SWITCHBOARD_ALLOW_PRIVATE_BACKENDS", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_backends: Option<bool>,
    /// Start in public mode without UI password and API keys (not recommended).
    #[arg(long, env = "SWITCHBOARD_INSECURE_PUBLIC", value_parser = BoolishValueParser::new(), default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub insecure_public: bool,
    /// Log format: `text` or `json` (JSON lines).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Upstream TCP connect timeout in seconds.
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT_S", default_value_t = 5.0)]
    pub connect_timeout_s: f64,
    /// Seconds to wait for an upstream's response headers and first byte.
    #[arg(long, env = "SWITCHBOARD_FIRST_BYTE_TIMEOUT_S", default_value_t = 60.0)]
    pub first_byte_timeout_s: f64,
    /// Seconds a committed stream may stay silent upstream before it is ended with an error.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT_S", default_value_t = 60.0)]
    pub idle_timeout_s: f64,
    /// Upper bound on one proxied request, in seconds.
    #[arg(long, env = "SWITCHBOARD_TOTAL_TIMEOUT_S", default_value_t = 300.0)]
    pub total_timeout_s: f64,
    /// Seconds to wait for the first body chunk before committing a response anyway.
    #[arg(long, env = "SWITCHBOARD_COMMIT_TIMEOUT_S", default_value_t = 10.0)]
    pub commit_timeout_s: f64,
    /// Seconds of upstream silence after which a committed stream gets `: keepalive`.
    #[arg(long, env = "SWITCHBOARD_KEEPALIVE_S", default_value_t = 15.0)]
    pub keepalive_s: f64,
    /// Seconds between WebSocket heartbeat events and pings.
    #[arg(long, env = "SWITCHBOARD_WS_HEARTBEAT_S", default_value_t = 15.0)]
    pub ws_heartbeat_s: f64,
    /// Seconds a WebSocket client may stay silent (no frame, no pong) before it is dropped.
    #[arg(long, env = "SWITCHBOARD_WS_SILENCE_TIMEOUT_S", default_value_t = 45.0)]
    pub ws_silence_timeout_s: f64,
    /// Seconds between `event: heartbeat` on SSE session streams.
    #[arg(long, env = "SWITCHBOARD_SSE_HEARTBEAT_S", default_value_t = 10.0)]
    pub sse_heartbeat_s: f64,
    /// Seconds of silence after which a push stream gets a `: heartbeat` comment.
    #[arg(long, env = "SWITCHBOARD_PUSH_HEARTBEAT_S", default_value_t = 15.0)]
    pub push_heartbeat_s: f64,
    /// Retries on other backends before the response is committed.
    #[arg(long, env = "SWITCHBOARD_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bytes queued for one session connection before it counts as a slow consumer (4009).
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_limit_bytes: usize,
    /// Seconds streams get to finish on shutdown before they are cancelled.
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT_S", default_value_t = 10)]
    pub drain_timeout_s: u64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    pub workers: Option<usize>,
    /// Push gateway callback URL (enables /push/* and /internal/send).
    #[arg(long, env = "SWITCHBOARD_PUSH_CALLBACK_URL")]
    pub push_callback_url: Option<String>,
    /// Push gateway shared secret.
    #[arg(long, env = "SWITCHBOARD_PUSH_SECRET", hide_env_values = true)]
    pub push_secret: Option<String>,
    /// Seconds a request's headers and body may take to arrive (408 and close after).
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT_S", default_value_t = 10.0)]
    pub request_timeout_s: f64,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(
        long,
        env = "SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_S",
        default_value_t = 75.0
    )]
    pub idle_connection_timeout_s: f64,
    /// Routing policy (SPEC §2.1): `full` (capacity, affinity, least-loaded), `least-loaded`
    /// (no affinity) or `round-robin` (the plain rotation, for comparison).
    #[arg(long, env = "SWITCHBOARD_ROUTING", default_value = "full", value_parser = ["full", "least-loaded", "round-robin"])]
    pub routing: String,
    /// Requests waiting per model when every backend is at its max_concurrency.
    #[arg(long, env = "SWITCHBOARD_QUEUE_MAX", default_value_t = 256)]
    pub queue_max: usize,
    /// Seconds a request may wait in its model's queue before 503 all_backends_busy.
    #[arg(long, env = "SWITCHBOARD_QUEUE_TIMEOUT_S", default_value_t = 30.0)]
    pub queue_timeout_s: f64,
    /// Requests an affine backend may have in flight beyond the least-loaded one.
    #[arg(long, env = "SWITCHBOARD_AFFINITY_SLACK", default_value_t = 2)]
    pub affinity_slack: u64,
    /// Web origins (comma-separated `scheme://host[:port]`, or `*`) whose pages may call /v1/*,
    /// /api/sessions/* and /health (CORS), and whose requests /ws and other state-changing
    /// routes accept.
    #[arg(long, env = "SWITCHBOARD_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Extra host names a local broker answers to (comma-separated; loopback addresses and
    /// localhost are always allowed).
    #[arg(long, env = "SWITCHBOARD_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,
}

/// Shortest secret public mode accepts (admin key, client keys, push secret).
pub const MIN_SECRET_LEN: usize = 16;
/// Shortest UI password public mode accepts.
pub const MIN_PASSWORD_LEN: usize = 12;

/// The environment variables this build reads: every `env = …` of the flags above, read from
/// clap's own description of them, so no second hand-kept list can drift from it.
pub fn known_vars() -> Vec<String> {
    use clap::CommandFactory;
    Config::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|var| var.to_string_lossy().into_owned())
        .collect()
}

/// A configuration that parsed but cannot run. The message names the variable to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    #[error(
        "refusing to start in public mode (listening on {host}, not a loopback address) without \
         credentials: set SWITCHBOARD_UI_PASSWORD (pages and sessions) and SWITCHBOARD_API_KEYS \
         (comma-separated client keys for /v1), or set SWITCHBOARD_INSECURE_PUBLIC=1 to run open"
    )]
    PublicWithoutCredentials { host: String },
}

impl Config {
    /// Whether the listen address is loopback (local mode: demo on, private backends allowed).
    pub fn is_local(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Demo backend: on in local mode unless turned off; never in public mode.
    pub fn demo_enabled(&self) -> bool {
        self.is_local() && self.demo.unwrap_or(true)
    }

    /// Private backends: allowed in local mode unless turned off; an explicit value wins.
    pub fn private_backends_allowed(&self) -> bool {
        self.allow_private_backends.unwrap_or(self.is_local())
    }

    /// Client API keys, trimmed, empty entries dropped.
    pub fn client_keys(&self) -> Vec<String> {
        self.api_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks what clap cannot: value ranges and the public-mode rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("SWITCHBOARD_HEALTH_INTERVAL_S", self.health_interval_s),
            ("SWITCHBOARD_HEALTH_TIMEOUT_S", self.health_timeout_s),
            ("SWITCHBOARD_CONNECT_TIMEOUT_S", self.connect_timeout_s),
            (
                "SWITCHBOARD_FIRST_BYTE_TIMEOUT_S",
                self.first_byte_timeout_s,
            ),
            ("SWITCHBOARD_IDLE_TIMEOUT_S", self.idle_timeout_s),
            ("SWITCHBOARD_TOTAL_TIMEOUT_S", self.total_timeout_s),
            ("SWITCHBOARD_COMMIT_TIMEOUT_S", self.commit_timeout_s),
            ("SWITCHBOARD_KEEPALIVE_S", self.keepalive_s),
            ("SWITCHBOARD_WS_HEARTBEAT_S", self.ws_heartbeat_s),
            (
                "SWITCHBOARD_WS_SILENCE_TIMEOUT_S",
                self.ws_silence_timeout_s,
            ),
            ("SWITCHBOARD_SSE_HEARTBEAT_S", self.sse_heartbeat_s),
            ("SWITCHBOARD_PUSH_HEARTBEAT_S", self.push_heartbeat_s),
            ("SWITCHBOARD_REQUEST_TIMEOUT_S", self.request_timeout_s),
            (
                "SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_S",
                self.idle_connection_timeout_s,
            ),
            ("SWITCHBOARD_QUEUE_TIMEOUT_S", self.queue_timeout_s),
        ];
        for (var, v) in positive {
            if !(v.is_finite() && v > 0.0 && v < 1e7) {
                return Err(ConfigError::Invalid {
                    var,
                    problem: format!("must be a positive number of seconds, got {v}"),
                });
            }
        }
        if self.ws_heartbeat_s >= self.ws_silence_timeout_s {
            // Pings are what keep an idle (but alive) client from counting as silent.
            return Err(invalid(
                "SWITCHBOARD_WS_HEARTBEAT_S",
                "must be shorter than SWITCHBOARD_WS_SILENCE_TIMEOUT_S (pings keep idle clients alive)",
            ));
        }
        if self.max_consecutive_failures == 0 {
            return Err(invalid(
                "SWITCHBOARD_MAX_CONSECUTIVE_FAILURES",
                "must be at least 1",
            ));
        }
        if self.event_buffer == 0 {
            return Err(invalid("SWITCHBOARD_EVENT_BUFFER", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid(
                "SWITCHBOARD_MAX_BODY_BYTES",
                "must be at least 1024",
            ));
        }
        if self.outbound_limit_bytes < 4096 {
            return Err(invalid(
                "SWITCHBOARD_OUTBOUND_LIMIT_BYTES",
                "must be at least 4096",
            ));
        }
        if self.workers == Some(0) {
            return Err(invalid("SWITCHBOARD_WORKERS", "must be at least 1"));
        }
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_err() && !host.eq_ignore_ascii_case("localhost") {
            return Err(invalid(
                "SWITCHBOARD_HOST",
                "must be an IP address (e.g. 127.0.0.1 or 0.0.0.0)",
            ));
        }
        if let Some(url) = &self.push_callback_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains('#') {
                return Err(invalid(
                    "SWITCHBOARD_PUSH_CALLBACK_URL",
                    "must be an http(s) URL",
                ));
            }
            if self
                .push_secret
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
            {
                return Err(invalid(
                    "SWITCHBOARD_PUSH_SECRET",
                    "must be set when SWITCHBOARD_PUSH_CALLBACK_URL is (it guards /internal/send)",
                ));
            }
        }
        if let Some(origins) = &self.cors_origins {
            crate::http::browser_policy::CorsOrigins::parse(origins)
                .map_err(|p| invalid("SWITCHBOARD_CORS_ORIGINS", &p))?;
        }
        if !self.is_local() {
            self.check_secret_lengths()?;
        }
        let has_credentials = self.ui_password.as_deref().is_some_and(|p| !p.is_empty())
            && !self.client_keys().is_empty();
        if !self.is_local() && !has_credentials && !self.insecure_public {
            return Err(ConfigError::PublicWithoutCredentials {
                host: self.host.clone(),
            });
        }
        Ok(())
    }

    /// The routing configuration (SPEC §2.1).
    pub fn router_settings(&self) -> switchboard_actors::routing_policy::RouterSettings {
        use switchboard_actors::routing_policy::{RouterSettings, RoutingPolicy};
        RouterSettings {
            policy: RoutingPolicy::parse(&self.routing).unwrap_or_default(),
            queue_max: self.queue_max,
            queue_timeout: Self::secs(self.queue_timeout_s),
            affinity_slack: self.affinity_slack,
        }
    }

    /// Public mode refuses guessable secrets (SPEC §8): they would fall to the 10 guesses a
    /// minute the throttle still allows.
    fn check_secret_lengths(&self) -> Result<(), ConfigError> {
        let short = |s: &str, min: usize| s.trim().chars().count() < min;
        if let Some(k) = self.admin_key.as_deref().filter(|k| !k.trim().is_empty()) {
            if short(k, MIN_SECRET_LEN) {
                return Err(invalid(
                    "SWITCHBOARD_ADMIN_KEY",
                    &format!(
                        "is shorter than {MIN_SECRET_LEN} characters; public mode refuses guessable \
                         secrets (unset it to have one generated, or use e.g. `openssl rand -hex 24`)"
                    ),
                ));
            }
        }
        if let Some(i) = self
            .client_keys()
            .iter()
            .position(|k| short(k, MIN_SECRET_LEN))
        {
            return Err(invalid(
                "SWITCHBOARD_API_KEYS",
                &format!(
                    "key #{} is shorter than {MIN_SECRET_LEN} characters; public mode refuses \
                     guessable secrets (e.g. `openssl rand -hex 24`)",
                    i + 1
                ),
            ));
        }
        if let Some(p) = self.ui_password.as_deref().filter(|p| !p.is_empty()) {
            if short(p, MIN_PASSWORD_LEN) {
                return Err(invalid(
                    "SWITCHBOARD_UI_PASSWORD",
                    &format!(
                        "is shorter than {MIN_PASSWORD_LEN} characters; public mode refuses \
                         guessable passwords"
                    ),
                ));
            }
        }
        if let Some(s) = self.push_secret.as_deref().filter(|s| !s.trim().is_empty()) {
            if short(s, MIN_SECRET_LEN) {
                return Err(invalid(
                    "SWITCHBOARD_PUSH_SECRET",
                    &format!(
                        "is shorter than {MIN_SECRET_LEN} characters; public mode refuses \
                         guessable secrets (e.g. `openssl rand -hex 24`)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The extra hosts of `SWITCHBOARD_ALLOWED_HOSTS`, lowercased, empty entries dropped.
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// Seconds as a `Duration` (values are validated positive).
    pub fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }
}

fn invalid(var: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        problem: problem.to_string(),
    }
}

/// Names of `SWITCHBOARD_*` variables in `vars` that this build does not know.
pub fn unknown_vars<'a>(vars: impl Iterator<Item = &'a str>) -> Vec<String> {
    let known = known_vars();
    vars.filter(|k| k.starts_with("SWITCHBOARD_") && !known.iter().any(|v| v == k))
        .map(str::to_string)
        .collect()
}

/// Rewrites a clap error so it names the environment variable as well as the flag.
pub fn explain_clap_error(err: &clap::Error) -> String {
    use clap::error::ContextKind;
    let text = err.to_string();
    let Some(arg) = err.get(ContextKind::InvalidArg).map(|a| a.to_string()) else {
        return text;
    };
    let flag = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches("--");
    let var = if flag == "port" {
        "PORT".to_string()
    } else {
        format!("SWITCHBOARD_{}", flag.replace('-', "_").to_uppercase())
    };
    format!(
        "invalid value for {var} (--{flag}): {}",
        text.trim_start_matches("error: ").trim()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["switchboard"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn local_mode_defaults() {
        let c = parse(&[]);
        assert!(c.is_local());
        assert!(c.demo_enabled());
        assert!(c.private_backends_allowed());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn public_mode_requires_credentials_or_insecure_flag() {
        let c = parse(&["--host", "0.0.0.0"]);
        assert!(!c.demo_enabled() && !c.private_backends_allowed());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("SWITCHBOARD_UI_PASSWORD") && err.contains("SWITCHBOARD_API_KEYS"));
        let ok = parse(&[
            "--host",
            "0.0.0.0",
            "--ui-password",
            "a-long-password",
            "--api-keys",
            "client-key-0000001, client-key-0000002",
        ]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            ok.client_keys(),
            ["client-key-0000001", "client-key-0000002"]
        );
        assert_eq!(
            parse(&["--host", "0.0.0.0", "--insecure-public", "1"]).validate(),
            Ok(())
        );
        assert!(!parse(&[
            "--host",
            "0.0.0.0",
            "--demo",
            "true",
            "--insecure-public",
            "1"
        ])
        .demo_enabled());
    }

    #[test]
    fn public_mode_refuses_short_secrets_naming_the_variable() {
        let with = |extra: &[&str]| {
            let mut args = vec!["--host", "0.0.0.0"];
            for (flag, default) in [
                ("--ui-password", "a-long-password"),
                ("--api-keys", "client-key-0000001"),
            ] {
                if !extra.contains(&flag) {
                    args.extend([flag, default]);
                }
            }
            args.extend_from_slice(extra);
            parse(&args).validate()
        };
        assert_eq!(with(&[]), Ok(()));
        for (extra, var) in [
            (&["--admin-key", "a"][..], "SWITCHBOARD_ADMIN_KEY"),
            (
                &["--api-keys", "client-key-0000001,short"][..],
                "SWITCHBOARD_API_KEYS",
            ),
            (
                &["--ui-password", "elevenchars"][..],
                "SWITCHBOARD_UI_PASSWORD",
            ),
            (
                &[
                    "--push-callback-url",
                    "http://app.example/cb",
                    "--push-secret",
                    "s",
                ][..],
                "SWITCHBOARD_PUSH_SECRET",
            ),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.starts_with(var), "{var}: {err}");
        }
        // Local mode keeps short secrets working (tests, a laptop).
        assert_eq!(parse(&["--admin-key", "a"]).validate(), Ok(()));
        let err = parse(&["--cors-origins", "example.com"])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("SWITCHBOARD_CORS_ORIGINS"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = parse(&["--health-interval-s", "0"]).validate().unwrap_err();
        assert!(err.to_string().starts_with("SWITCHBOARD_HEALTH_INTERVAL_S"));
        let err = parse(&["--ws-heartbeat-s", "45"]).validate().unwrap_err();
        assert!(
            err.to_string().starts_with("SWITCHBOARD_WS_HEARTBEAT_S"),
            "{err}"
        );
        assert_eq!(
            parse(&["--ws-heartbeat-s", "1", "--ws-silence-timeout-s", "3"]).validate(),
            Ok(())
        );
        let clap_err = Config::try_parse_from(["switchboard", "--port", "http"]).unwrap_err();
        assert!(explain_clap_error(&clap_err).contains("PORT"));
        let clap_err = Config::try_parse_from(["switchboard", "--max-retries", "x"]).unwrap_err();
        assert!(explain_clap_error(&clap_err).contains("SWITCHBOARD_MAX_RETRIES"));
    }

    #[test]
    fn unknown_switchboard_vars_are_reported() {
        let vars = ["SWITCHBOARD_HOST", "SWITCHBOARD_HEALTH_INTERVAL", "PATH"];
        assert_eq!(
            unknown_vars(vars.into_iter()),
            ["SWITCHBOARD_HEALTH_INTERVAL"]
        );
        // Derived from the flags: the newest variables are known without a second list.
        let known = known_vars();
        for var in [
            "PORT",
            "SWITCHBOARD_CORS_ORIGINS",
            "SWITCHBOARD_QUEUE_TIMEOUT_S",
            "SWITCHBOARD_REQUEST_TIMEOUT_S",
        ] {
            assert!(known.iter().any(|k| k == var), "{var} in {known:?}");
        }
    }
}
