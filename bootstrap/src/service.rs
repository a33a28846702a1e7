//! The body every service's `main` shares.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

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

/// Parses the command line (`--help` shows `about`), loads the
/// configuration, sets up tracing, connects to NATS as `name`, runs the
/// service until SIGTERM or Ctrl-C, then drains the NATS connection so
/// replies and announcements in flight are sent.
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
    if let Some(health) = health {
        let _ = health.await;
    }
    let _ = client.drain().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %err, "{name} failed");
            ExitCode::FAILURE
        }
    }
}
