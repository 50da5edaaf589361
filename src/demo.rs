//! The built-in demo backend: the fixture mock model server, run in-process in local mode so a
//! newcomer can open the compare page and see models stream at once. Its models are registered
//! in memory only (never persisted) and it is never started in public mode.

use std::time::Duration;

use actix::Addr;
use switchboard_actors::supervisor::{AddDemo, HealthSupervisor};

/// The demo models. The mock picks behaviour from keywords in the name: a plain fast model,
/// a slow thinker (`slow`: long time to first token), one that calls tools, one that sometimes
/// fails (`flaky`), and one that pauses mid-answer (`stalls`: 60 tokens, a 1.5 s stall, 60 more),
/// so the token timeline shows a stall on the first try.
pub const DEMO_MODELS: &[&str] = &[
    "demo-fast",
    "demo-slow-thinker",
    "demo-tools",
    "demo-flaky",
    "demo-stalls",
];
/// Pace of demo tokens, so streaming is visible to a person.
const DEMO_TOKEN_DELAY: Duration = Duration::from_millis(35);

/// Keeps the demo server alive for the life of the broker.
pub struct Demo {
    _server: mockllm::MockHandle,
}

/// Starts the mock server on an ephemeral loopback port and registers the demo models.
pub async fn start(supervisor: &Addr<HealthSupervisor>) -> std::io::Result<Demo> {
    let server = mockllm::MockServer::builder()
        .token_delay(DEMO_TOKEN_DELAY)
        .spawn()?;
    let url = server.url();
    for model in DEMO_MODELS {
        let added = supervisor
            .send(AddDemo {
                model_name: (*model).to_string(),
                endpoint_url: url.clone(),
            })
            .await;
        if added.is_err() {
            return Err(std::io::Error::other("health supervisor is not running"));
        }
    }
    log::info!("demo backend serving {} at {url}", DEMO_MODELS.join(", "));
    Ok(Demo { _server: server })
}
