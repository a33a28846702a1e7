//! How loadgen connects: as made-up users whose tokens it signs, through
//! `cavlo_client`, and only to this machine.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cavlo_client::tungstenite::client::IntoClientRequest;
use cavlo_client::{
    ConnectError, Connection, Dialer, RecvError, RecvErrorKind, SendError, Welcome,
};
use schemas::client::ServerFrame;
use schemas::token::Claims;

/// How long to wait for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the tokens loadgen signs stay valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// An HS256 token for user `user`, named after itself, signed with the
/// gateways' `secret`.
pub fn token(secret: &[u8], user: &str) -> String {
    Claims::new(user, user, TOKEN_TTL).sign_hs256(secret)
}

/// Something went wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Opening or authenticating the connection failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// Sending failed.
    #[error("websocket: {0}")]
    Send(#[from] SendError),
    /// Receiving failed: the gateway closed the socket, or no frame came
    /// in time.
    #[error("{0}")]
    Recv(#[from] RecvError),
    /// Resolving the gateway's host failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway's address did not resolve.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// The gateway sent something unexpected.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The URL does not point at this machine.
    #[error(
        "{0} is not a loopback address (or, for a slow consumer, in a Docker network pool); loadgen only targets this machine"
    )]
    NotLocal(String),
}

impl ClientError {
    /// The gateway's close code, for an error that is the gateway closing
    /// the socket: `Some(None)` when it closed without one.
    pub fn close_code(&self) -> Option<Option<u16>> {
        match self {
            ClientError::Recv(err) => match err.kind() {
                RecvErrorKind::Closed(code) => Some(code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) and authenticates.
pub async fn connect(url: &str, token: &str) -> Result<(Connection, Welcome), ClientError> {
    connect_from(url, token, None).await
}

/// Like [`connect`], from the local address `source` if given, so that many
/// connections can spread over several loopback addresses and their
/// ephemeral ports.
pub async fn connect_from(
    url: &str,
    token: &str,
    source: Option<IpAddr>,
) -> Result<(Connection, Welcome), ClientError> {
    let dialer = Dialer {
        address: Some(loopback_target(url).await?),
        source,
        ..Dialer::default()
    };
    Ok(Connection::connect_with(url, token, &dialer).await?)
}

/// Like [`connect`], with a receive buffer of `bytes`, as a slow consumer:
/// one that stops reading then makes the gateway's writes block within
/// seconds, not after the kernel has buffered megabytes. `url` may also
/// name a container's private address ([`local_target`]).
pub async fn connect_slow(
    url: &str,
    token: &str,
    bytes: u32,
) -> Result<(Connection, Welcome), ClientError> {
    let dialer = Dialer {
        address: Some(local_target(url).await?),
        receive_buffer_bytes: Some(bytes),
        ..Dialer::default()
    };
    Ok(Connection::connect_with(url, token, &dialer).await?)
}

/// Waits for a frame `pick` accepts, skipping others, each within
/// [`FRAME_TIMEOUT`].
pub async fn expect<T>(
    connection: &mut Connection,
    mut pick: impl FnMut(ServerFrame) -> Option<T>,
) -> Result<T, ClientError> {
    loop {
        if let Some(found) = pick(connection.recv_within(FRAME_TIMEOUT).await?) {
            return Ok(found);
        }
    }
}

/// Where `url` goes, if that is a loopback address: loadgen loads this
/// machine's own test systems and nothing else.
async fn loopback_target(url: &str) -> Result<SocketAddr, ClientError> {
    target(url, |ip| ip.is_loopback()).await
}

/// Like [`loopback_target`], also accepting an address in Docker's default
/// pools for this machine's private networks: 172.17.0.0/16 to
/// 172.31.0.0/16, then 192.168.0.0/16 once those are taken (the fault
/// suite's network got 192.168.0.0/20 on a CI machine). A slow consumer
/// needs it: through Docker's port proxy, the proxy's buffers take
/// megabytes that the client does not read, and the gateway never sees it
/// fall behind.
async fn local_target(url: &str) -> Result<SocketAddr, ClientError> {
    target(url, |ip| match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback() || (a == 172 && b & 0xf0 == 16) || (a == 192 && b == 168)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    })
    .await
}

/// Where `url` goes, if `allowed` accepts the address. The connection is
/// then made to that address, not to a second resolution of the name.
async fn target(url: &str, allowed: impl Fn(IpAddr) -> bool) -> Result<SocketAddr, ClientError> {
    let request = url
        .into_client_request()
        .map_err(|err| ClientError::Unexpected(format!("{url}: {err}")))?;
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| ClientError::NoAddress(host.clone()))?;
    if allowed(target.ip()) {
        Ok(target)
    } else {
        Err(ClientError::NotLocal(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client reaches loopback only; a slow consumer also Docker's
    /// networks (172.16.0.0/12, 192.168.0.0/16), and nothing else.
    #[tokio::test]
    async fn only_this_machines_addresses_are_accepted() {
        // (url, any client, a slow consumer)
        const CASES: &[(&str, bool, bool)] = &[
            ("ws://127.0.0.1:8080/ws", true, true),
            ("ws://127.0.0.7:8080/ws", true, true),
            ("ws://[::1]:8080/ws", true, true),
            ("ws://172.18.0.5:8080/ws", false, true),
            ("ws://172.31.255.1:8080/ws", false, true),
            ("ws://172.32.0.1:8080/ws", false, false),
            ("ws://10.1.2.3:8080/ws", false, false),
            ("ws://192.168.0.10/ws", false, true),
            ("ws://192.169.0.10/ws", false, false),
            ("ws://8.8.8.8/ws", false, false),
        ];
        for &(url, any, slow) in CASES {
            let result = loopback_target(url).await;
            assert_eq!(result.is_ok(), any, "{url}: {result:?}");
            let result = local_target(url).await;
            assert_eq!(
                result.is_ok(),
                slow,
                "{url} for a slow consumer: {result:?}"
            );
        }
    }
}
