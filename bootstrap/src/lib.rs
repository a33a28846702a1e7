//! What every cavlo service does before its own work starts.
//!
//! * [`config`]: layered configuration (defaults < TOML file < `CAVLO_…` env).
//! * [`telemetry`]: tracing, human-readable or JSON.
//! * [`nats`]: the NATS connection settings and connect call, and
//!   registration with the NATS services API.
//! * [`health`]: `/health`, `/ready` and `/metrics` endpoints.
//! * [`metrics`]: the Prometheus registry every service records into.
//! * [`liveness`]: which gateways and moderators are alive, from their heartbeats.
//! * [`room_tail`]: a room's last stored chat message, from the chat
//!   stream's leader.
//! * [`shutdown`]: the future that resolves on Ctrl-C or SIGTERM.
//! * [`service`]: the body of every service's `main`.
//! * [`token_bucket`]: a rate with a burst.
//! * [`backoff`]: randomised waits between retries.
//! * [`Cli`]: the command-line flags every binary shares.

pub mod backoff;
pub mod config;
pub mod health;
pub mod liveness;
pub mod metrics;
pub mod nats;
pub mod room_tail;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod token_bucket;

use std::path::PathBuf;

/// Flags every cavlo binary accepts; [`service::main`] parses them.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct Cli {
    /// TOML file with settings; environment variables (`CAVLO_…`) override it.
    #[arg(long, short, env = "CAVLO_CONFIG")]
    pub config: Option<PathBuf>,
}
