//! switchboard's engine: the parts that live and die (actors) and the data the hot path reads,
//! with no HTTP-framework types, so any transport can drive it.
//!
//! # Layout
//! - [`record`]: the server record the registry stores and the admin API shows.
//! - [`registry`]: sled persistence of records and the admin key (durable acknowledged writes).
//! - [`url_policy`]: which backend URLs and addresses may be used (SSRF guard).
//! - [`routing`]: the shared routing table, round-robin and failover order, live counters.
//! - [`router`]: routing decisions (capacity, affinity, least-loaded, the wait for a slot).
//! - [`routing_policy`]: the routing policy and settings, decision kinds and their counters.
//! - [`model_queue`]: one model's FIFO of requests waiting for a backend slot.
//! - [`affinity`]: thread → backend, bounded, for warm prompt caches.
//! - [`recent`]: the bounded, least-recently-set-first map behind both kinds of affinity.
//! - [`prefix`]: the approximate per-backend prefix index behind prefix affinity.
//! - [`response_framing`]: upstream responses whose body ends at the close, read as HTTP/1.1 says.
//! - [`upstream`]: the per-thread HTTP client (policy-checking resolver) and the health probe.
//! - [`attempt`]: one upstream attempt and the failover between backends (gateway and sessions).
//! - [`backend`]: one actor per server: its health checks, failure policy and record.
//! - [`supervisor`]: owns the backend actors; register/update/delete; rebuilds routing.
//! - [`silence`]: idle/keep-alive timeouts that cost nothing per chunk.
//! - [`sse_parser`]: the incremental Server-Sent-Events parser for upstream streams.
//! - [`openai_stream`]: OpenAI chunk stream → text, tool calls, usage (both tool-call styles).
//! - [`json`]: the one JSON-body parser; errors name the offending field.
//! - [`memory_release`]: freed memory back to the OS after many sessions or connections end.
//! - [`events`]: the session wire format shared by the WebSocket and SSE transports.
//! - [`buffer`]: the per-session resume buffer (bounded in events and bytes).
//! - [`history`]: per-model conversation history, trimmed by turns and tokens.
//! - [`metrics`]: lock-free histograms rendered as Prometheus text.
//! - [`model_stream`]: one actor per model per turn; stopping it cancels the upstream.
//! - [`session`]: one actor per conversation: turn, numbering, fan-out, grace, TTL.
//! - [`sessions`]: the session directory, LRU eviction, per-IP connection slots.
//! - [`usage`]: `switchboard_tokens_total`: usage found in relayed bytes, or estimated.
//! - [`outbound`]: the one byte-budgeted, batching outbound queue every streaming client's
//!   response body drains (WebSocket, SSE sessions, push), with the slow-consumer limit.
//! - [`push`]: the push gateway's token registry, ordered delivery and connect/disconnect callbacks.
//! - [`session_store`]: sessions' stored copies in sled, so threads survive a restart.
//! - [`endpoint`]: the OpenAI routes and the one rule that turns `endpoint_url` into their URLs.
//! - [`timeline`]: token arrival times per model, for `resync` snapshots of the token timeline.

// Production code reports failures instead of aborting, and writes through `log` (JSON lines in
// production): tests opt back in (clippy.toml allows expect in tests; `cfg(test)` modules may
// print). The startup banner is the one explicit exception (`startup::announce`).
#![deny(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

pub mod affinity;
pub mod attempt;
pub mod backend;
pub mod buffer;
pub mod endpoint;
pub mod events;
pub mod history;
pub mod json;
pub mod memory_release;
pub mod metrics;
pub mod model_queue;
pub mod model_stream;
pub mod openai_stream;
pub mod outbound;
pub mod prefix;
pub mod push;
pub mod recent;
pub mod record;
pub mod registry;
pub mod response_framing;
pub mod router;
pub mod routing;
pub mod routing_policy;
pub mod session;
pub mod session_store;
pub mod sessions;
pub mod silence;
pub mod sse_parser;
pub mod supervisor;
pub mod timeline;
pub mod upstream;
pub mod url_policy;
pub mod usage;
