//! The NATS connection every service opens.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// NATS settings (`[nats]`, `CAVLO_NATS__…`). `Debug` never shows the password.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// User name, if the server requires one (with `password`).
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret>,
    /// A `.creds` file for this service's NATS user, if the server requires one.
    pub credentials_file: Option<PathBuf>,
    /// How long to wait for the first connection before giving up. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request to another service may take before the caller
    /// reports `unavailable`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            credentials_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Connecting to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials: {0}")]
    Credentials(#[source] std::io::Error),
    /// No server answered.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// The server did not confirm it has processed this client's earlier commands.
#[derive(Debug, thiserror::Error)]
#[error("NATS round trip failed: {0}")]
pub struct RoundTripError(#[from] async_nats::RequestError);

/// Waits until the server has processed everything `client` sent before,
/// such as its subscriptions: after this, other connections' messages reach
/// them. (`Client::flush` only waits for the bytes to leave the socket.)
pub async fn round_trip(client: &async_nats::Client) -> Result<(), RoundTripError> {
    let subject = schemas::subject::round_trip(&client.new_inbox().replace('.', "-"));
    match client.request(subject, bytes::Bytes::new()).await {
        Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(err) => Err(err.into()),
        Ok(_) => Ok(()),
    }
}

/// Connects as `name` (shown in the server's connection list). After the first
/// connection, the client reconnects by itself for as long as the process runs.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout));
    if let Some(user) = &config.user {
        let password = config
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(ConnectError::Credentials)?;
    }
    Ok(options.connect(config.url.as_str()).await?)
}
