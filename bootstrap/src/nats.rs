//! The NATS connection every service opens.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::service::endpoint::Endpoint;
use async_nats::service::{Service, ServiceExt};
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
    /// The name the connection shows in the server's connection list
    /// (`connz`); unset, the service's name. Give each instance its own to
    /// tell them apart there.
    pub name: Option<String>,
    /// How long to wait for the first connection before giving up. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request to another service may take before the caller
    /// reports `unavailable`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often the client pings its server. After two pings unanswered the
    /// connection counts as dead and the client moves to another server of
    /// `url`: a server cut off the network without closing the socket
    /// (a partition) is left within about three intervals, where the
    /// library's default of a minute kept a service deaf for minutes while
    /// NATS still routed requests to it. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            credentials_file: None,
            name: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
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

/// Registering with the NATS services API failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot register with the NATS services API: {0}")]
pub struct ServiceError(#[source] async_nats::Error);

/// Registers this process with the NATS services API as an instance of
/// `name`, whose endpoints share `queue_group`: `nats micro`-style tools
/// then list each instance, and `$SRV.STATS` counts the requests each
/// endpoint answered.
pub async fn register_service(
    client: &async_nats::Client,
    name: &str,
    description: &str,
    queue_group: &str,
) -> Result<Service, ServiceError> {
    client
        .service_builder()
        .description(description)
        .queue_group(queue_group)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ServiceError)
}

/// Adds endpoint `name` on `subject` to `service`; its requests arrive on
/// the returned stream.
pub async fn add_endpoint(
    service: &Service,
    name: &str,
    subject: impl ToString,
) -> Result<Endpoint, ServiceError> {
    service
        .endpoint_builder()
        .name(name)
        .add(subject)
        .await
        .map_err(ServiceError)
}

/// How many times a service tries a JetStream setup step at start-up.
const SETUP_ATTEMPTS: u32 = 10;

/// The wait between two setup attempts.
const SETUP_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Runs a start-up step that sets up JetStream (creating a stream or a
/// bucket) and tries it again, after a short wait, when it fails: on a NATS
/// cluster that has just formed, the first creations can time out while the
/// nodes elect the new stream's leader. Returns the last error after
/// `SETUP_ATTEMPTS` tries (about 20 s), and the service exits.
pub async fn set_up<T, E, Fut>(what: &str, mut step: impl FnMut() -> Fut) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < SETUP_ATTEMPTS => {
                tracing::warn!(cause = %err, attempt, "{what} failed; trying again");
                tokio::time::sleep(SETUP_RETRY_DELAY).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Connects as `config.name`, or else `name` (shown in the server's
/// connection list). After the first connection, the client reconnects by
/// itself for as long as the process runs.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(config.name.as_deref().unwrap_or(name))
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .ping_interval(config.ping_interval);
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
    Ok(options.connect(server_urls(&config.url)).await?)
}

/// The room seq stored right before a chat message, from its
/// [`PREV_SEQ_HEADER`](schemas::subject::PREV_SEQ_HEADER): `Seq(0)` when the
/// room had no retained message, `None` when the header is missing or not
/// a number. Stored messages carry it, and so do the announces gateways get.
pub fn previous_seq(headers: Option<&async_nats::HeaderMap>) -> Option<schemas::id::Seq> {
    headers
        .and_then(|headers| headers.get(schemas::subject::PREV_SEQ_HEADER))
        .and_then(|value| value.as_str().parse().ok())
        .map(schemas::id::Seq)
}

/// The server URLs in `url`, comma-separated: a cluster's nodes, any of
/// which the client may connect or reconnect to.
fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_split_on_commas() {
        const CASES: &[(&str, &[&str])] = &[
            ("nats://a:4222", &["nats://a:4222"]),
            (
                "nats://a:4222,nats://b:4222, nats://c:4222",
                &["nats://a:4222", "nats://b:4222", "nats://c:4222"],
            ),
            ("nats://a:4222,", &["nats://a:4222"]),
        ];
        for (url, expected) in CASES {
            assert_eq!(server_urls(url), *expected, "{url}");
        }
    }
}
