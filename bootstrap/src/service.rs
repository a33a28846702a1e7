//! The body every service's `main` shares.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::health::{Check, HealthConfig, Started};
use crate::metrics::Metrics;
use crate::nats::NatsConfig;
use crate::telemetry::LogConfig;

/// A service's whole configuration: its own section plus [`Common`].
pub trait ServiceConfig: Default + Serialize + DeserializeOwned {
    /// The sections every service has.
    fn common(&self) -> &Common;
}

/// The sections every service reads: `[nats]`, `[log]` and `[health]`.
/// Services flatten it into their `Config`, so the keys stay top-level.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Common {
    /// `[nats]`
    pub nats: NatsConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[health]`
    pub health: HealthConfig,
}

/// The shutdown future handed to a service.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long a stopping service waits for NATS to take the messages it
/// still holds. They wait only when NATS is unreachable at that moment (the
/// client is reconnecting); past this they are lost, and whoever waits for
/// them times out and retries, as if the service had died.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses the command line (`--help` shows `about`), loads the
/// configuration, sets up tracing, connects to NATS as `name`, runs the
/// service until SIGTERM or Ctrl-C, then flushes the NATS connection so
/// replies and announcements in flight are written out to the server
/// (waiting at most 5 s, `FINAL_FLUSH_TIMEOUT`), and drains it.
///
/// If `[health] listen` is set, `/health`, `/ready` and `/metrics` are
/// served there: ready once the service has called [`Started::set`] and
/// `ready` agrees; the metrics are those the service registered in the
/// [`Metrics`] it is handed.
pub async fn main<C, F, Fut, E>(
    name: &'static str,
    about: &'static str,
    ready: impl FnOnce(&async_nats::Client) -> Check,
    service: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(async_nats::Client, C, Shutdown, Started, Metrics) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let matches = crate::Cli::command().name(name).about(about).get_matches();
    let cli = match crate::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let config: C = match crate::config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::init(&config.common().log);
    let client = match crate::nats::connect(&config.common().nats, name).await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(cause = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // The health server lives exactly as long as the service: dropping
    // `stop_health` ends it, and it is awaited before the process exits.
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Started::default();
    let metrics = Metrics::new(&client);
    let health = match config.common().health.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(tokio::spawn(crate::health::serve(
                listener,
                started.gate(ready(&client)),
                metrics.clone(),
                health_stopped,
            ))),
            Err(err) => {
                tracing::error!(cause = %err, %addr, "cannot listen for health checks");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let shutdown = Box::pin(crate::shutdown::signal());
    let result = service(client.clone(), config, shutdown, started, metrics).await;
    drop(stop_health);
    if let Some(health) = health
        && let Err(err) = health.await
    {
        tracing::error!(cause = %err, "the health server failed");
    }
    close(&client).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %err, "{name} failed");
            ExitCode::FAILURE
        }
    }
}

/// Sends what the service left with `client` and closes it. The service
/// has answered everything it took and published what it had to, but the
/// messages may still sit in the client's queue: `drain` only asks the
/// connection's task to close, and the process could exit before that task
/// had written them. So the flush is waited for; the drain is not, as
/// nothing is left to send by then.
async fn close(client: &async_nats::Client) {
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(cause = %err, "NATS messages in flight may not have been sent");
        }
        Err(_) => tracing::warn!(
            "NATS did not take the messages in flight within {FINAL_FLUSH_TIMEOUT:?}; they are lost"
        ),
    }
    if let Err(err) = client.drain().await {
        tracing::warn!(cause = %err, "NATS connection not drained");
    }
}
