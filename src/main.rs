//! switchboard: an actor-based streaming broker for LLM traffic.
//!
//! # Layout
//! - `config`: environment variables / flags, local vs public mode, startup validation.
//! - `startup`: logging, the data dir and the admin key.
//! - `state`: what handlers share (routing table, supervisor address, settings).
//! - `http`: the routes (`openai` gateway, `admin`, `ops`) and the streaming `relay` body.
//! - `credentials`: what a credential is and whether one matches; `auth`: the one gate that
//!   throttles, counts and logs refusals; `errors`: the one error shape.
//! - `demo`: the built-in demo backend for local mode.
//!
//! The engine (registry, health, routing, upstream) lives in the `switchboard-actors` crate.

// Production code reports failures instead of aborting, and writes through `log` (JSON lines in
// production): tests opt back in (clippy.toml allows expect in tests; `cfg(test)` modules may
// print). The startup banner is the one explicit exception (`startup::announce`).
#![deny(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod auth;
mod config;
mod credentials;
mod demo;
mod errors;
mod http;
mod metrics;
mod process;
mod rate_limit;
mod shutdown;
mod startup;
mod state;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::{web, App, HttpServer};
use clap::Parser;
use switchboard_actors::backend::HealthPolicy;
use switchboard_actors::model_stream::StreamSettings;
use switchboard_actors::registry::Registry;
use switchboard_actors::routing::RoutingTable;
use switchboard_actors::session::SessionSettings;
use switchboard_actors::sessions::Sessions;
use switchboard_actors::supervisor::{Flush, HealthSupervisor, SupervisorConfig};
use switchboard_actors::upstream::UpstreamConfig;

use crate::config::Config;
use crate::state::{AppState, ProxySettings};

/// A deactivated server is probed only every this many intervals (SPEC §3.3).
const SLOW_PROBE_FACTOR: u32 = 10;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // The format is not parsed yet; honour the variable if it says json.
            let json = std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|f| f == "json");
            startup::fatal(json, &config::explain_clap_error(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    startup::init_logging(&config.log_format);
    for var in config::unknown_vars(
        std::env::vars()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    ) {
        log::warn!(
            "unknown environment variable {var} is ignored (typo?); see --help for the known ones"
        );
    }
    let json_logs = config.log_format == "json";
    if let Err(e) = config.validate() {
        log::error!("{e}");
        if !json_logs {
            startup::fatal(false, &e.to_string());
        }
        return ExitCode::from(2);
    }
    match actix_web::rt::System::new().block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            if !json_logs {
                startup::fatal(false, &e.to_string());
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let started = Instant::now();
    startup::prepare_data_dir(&config.data_dir)?;
    let registry = Registry::open(&config.data_dir).map_err(|e| {
        let text = e.to_string();
        if text.contains("Permission denied") {
            startup::not_writable(
                &config.data_dir,
                "cannot open the database",
                &std::io::Error::other(text),
            )
        } else {
            format!(
                "SWITCHBOARD_DATA_DIR {}: cannot open database: {text}",
                config.data_dir.display()
            )
        }
    })?;
    let admin_key = startup::admin_key(&config, &registry)?;

    let upstream = UpstreamConfig {
        connect_timeout: Config::secs(config.connect_timeout_s),
        first_byte_timeout: Config::secs(config.first_byte_timeout_s),
        allow_private: config.private_backends_allowed(),
    };
    switchboard_actors::upstream::install(upstream.clone());
    let table = Arc::new(RoutingTable::new(config.router_settings()));
    let sessions = Sessions::new(
        Arc::clone(&table),
        SessionSettings {
            event_buffer: config.event_buffer,
            disconnect_grace: Duration::from_secs(config.disconnect_grace_s),
            ttl: Duration::from_secs(config.session_ttl_s),
            streams: StreamSettings {
                first_byte: Config::secs(config.first_byte_timeout_s),
                idle: Config::secs(config.idle_timeout_s),
                total: Config::secs(config.total_timeout_s),
                max_retries: config.max_retries,
            },
        },
        config.max_sessions,
        config.max_connections_per_ip,
    );
    // Threads survive a restart (SPEC §4.4): stored beside the registry, swept at start.
    sessions.set_store(
        switchboard_actors::session_store::SessionStore::open(&registry)
            .map_err(|e| format!("cannot open the session store: {e}"))?,
    );
    let supervisor = HealthSupervisor::new(
        registry,
        Arc::clone(&table),
        SupervisorConfig {
            policy: HealthPolicy {
                interval: Config::secs(config.health_interval_s),
                timeout: Config::secs(config.health_timeout_s),
                max_consecutive_failures: config.max_consecutive_failures,
                slow_probe_factor: SLOW_PROBE_FACTOR,
            },
            upstream: upstream.clone(),
        },
    )
    .map_err(|e| format!("cannot load registrations: {e}"))?
    .start();

    let _demo = if config.demo_enabled() {
        Some(
            demo::start(&supervisor)
                .await
                .map_err(|e| format!("cannot start the demo backend: {e}"))?,
        )
    } else {
        None
    };

    let push = http::push::start(
        config.push_callback_url.as_deref(),
        config.push_secret.as_deref(),
        config.outbound_limit_bytes,
    )?;
    let state = web::Data::new(AppState {
        push: push.clone(),
        proxy: ProxySettings {
            max_body_bytes: config.max_body_bytes,
            max_retries: config.max_retries,
            commit_timeout: Config::secs(config.commit_timeout_s),
            idle_timeout: Config::secs(config.idle_timeout_s),
            total_timeout: Config::secs(config.total_timeout_s),
            keepalive: Config::secs(config.keepalive_s),
        },
        client_keys: config.client_keys(),
        drain: Arc::default(),
        liveness: state::Liveness {
            ws_heartbeat: Config::secs(config.ws_heartbeat_s),
            ws_silence_timeout: Config::secs(config.ws_silence_timeout_s),
            sse_heartbeat: Config::secs(config.sse_heartbeat_s),
            push_heartbeat: Config::secs(config.push_heartbeat_s),
        },
        sessions: Arc::clone(&sessions),
        ui_credentials: credentials::UiCredentials {
            user: config.ui_user.clone(),
            password: config.ui_password.clone(),
        },
        trust_proxy: config.trust_proxy,
        metrics: Arc::new(metrics::GatewayMetrics::default()),
        rate_limiter: Arc::new(rate_limit::RateLimiter::new(config.rate_limit_per_min)),
        failures: Arc::default(),
        browser: http::browser_policy::BrowserPolicy {
            local: config.is_local(),
            allowed_hosts: config.allowed_hosts(),
            cors: http::browser_policy::CorsOrigins::parse(
                config.cors_origins.as_deref().unwrap_or(""),
            )
            .map_err(|e| format!("SWITCHBOARD_CORS_ORIGINS: {e}"))?,
        },
        rate_limit_per_min: config.rate_limit_per_min,
        max_sessions: config.max_sessions,
        outbound_limit: config.outbound_limit_bytes,
        table,
        supervisor: supervisor.clone(),
        admin_key,
        started,
    });

    rate_limit::spawn_sweeper(&state.rate_limiter, rate_limit::SWEEP_EVERY);
    rate_limit::spawn_sweeper(&state.failures, rate_limit::SWEEP_EVERY);

    let app_state = state.clone();
    let gate = http::gate::GateSettings {
        request_timeout: Config::secs(config.request_timeout_s),
    };
    let mut server = HttpServer::new(move || {
        // This worker's one upstream client (shared by the gateway and the model streams of the
        // sessions it hosts), built now rather than on the first request: creating the TLS
        // connector parses the CA bundle (~40 ms) and would stall that first turn.
        drop(switchboard_actors::upstream::thread_client());
        App::new()
            .app_data(app_state.clone())
            .configure(http::configure)
            .default_service(web::to(http::not_found))
            .wrap(actix_web::middleware::from_fn(
                move |req, next: actix_web::middleware::Next<_>| http::gate::gate(req, next, gate),
            ))
            .wrap(actix_web::middleware::from_fn(http::guard::guard))
    })
    // Slow and abusive clients are cut off (SPEC §8): a request head late by the request
    // timeout gets 408 (its body: http/gate.rs), an idle keep-alive connection is closed.
    .client_request_timeout(Config::secs(config.request_timeout_s))
    .keep_alive(Config::secs(config.idle_connection_timeout_s))
    // A client that closes its side mid-request is gone: stop its handler (and with it the
    // upstream request) instead of waiting to write to a closed socket.
    .h1_allow_half_closed(false)
    // Stream chunks are small writes; without this, Nagle holds each one back until the
    // client's delayed ACK (~40 ms) on reused connections.
    .tcp_nodelay(true)
    // Our own drain (shutdown.rs) runs first; the workers then get a short grace.
    .shutdown_timeout(shutdown::WORKER_GRACE.as_secs())
    .disable_signals()
    // Remember each connection's socket, so a closed WebSocket or a timed-out request can
    // end its connection at once (http/conn.rs).
    .on_connect(http::conn::remember);
    if let Some(n) = config.workers {
        server = server.workers(n);
    }
    let server = server
        .bind((config.host.as_str(), config.port))
        .map_err(|e| {
            format!(
                "cannot listen on {}:{} (SWITCHBOARD_HOST/PORT): {e}",
                config.host, config.port
            )
        })?;
    for addr in server.addrs() {
        // The one line tests and scripts wait for; stdout, flushed by println.
        startup::announce(
            config.log_format == "json",
            &format!("switchboard listening on http://{addr}"),
        );
        log::info!(
            "listening on http://{addr} ({} mode, demo {})",
            if config.is_local() { "local" } else { "public" },
            if config.demo_enabled() { "on" } else { "off" }
        );
    }
    let server = server.run();
    let handle = server.handle();
    let mut running = actix_web::rt::spawn(server);
    let result = tokio::select! {
        finished = &mut running => finished,
        signal = shutdown::signal() => {
            log::info!("{signal} received: shutting down");
            shutdown::drain(&state, &handle, Duration::from_secs(config.drain_timeout_s)).await;
            running.await
        }
    };
    log::info!("HTTP server stopped; flushing the registry");
    let _ = tokio::time::timeout(Duration::from_secs(5), supervisor.send(Flush)).await;
    log::info!("bye");
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server error: {e}")),
        Err(e) => Err(format!("server task failed: {e}")),
    }
}
