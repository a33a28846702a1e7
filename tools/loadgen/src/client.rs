//! A cavlo client over a real WebSocket, for smoke checks and load.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use schemas::client::{ClientFrame, ServerFrame};
use schemas::id::ConnId;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long to wait for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Something went wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or closed.
    #[error("websocket: {0}")]
    Socket(#[from] tungstenite::Error),
    /// Opening the TCP connection failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway closed the socket, with this close code if it sent one.
    #[error("closed by the gateway (close code {code:?})")]
    Closed { code: Option<u16> },
    /// The gateway's address did not resolve.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// No frame came in time.
    #[error("no frame within {FRAME_TIMEOUT:?}")]
    TimedOut,
    /// The gateway sent something unexpected.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The URL does not point at this machine.
    #[error(
        "{0} is not a loopback address (or, for a slow consumer, a Docker network's); loadgen only targets this machine"
    )]
    NotLocal(String),
}

/// Where `request` goes, if that is a loopback address: loadgen loads this
/// machine's own test systems and nothing else.
async fn loopback_target(
    request: &tungstenite::handshake::client::Request,
) -> Result<SocketAddr, ClientError> {
    target(request, |ip| ip.is_loopback()).await
}

/// Like [`loopback_target`], also accepting an address in 172.16.0.0/12,
/// where Docker puts the containers of this machine's private networks. A slow
/// consumer needs it: through Docker's port proxy, the proxy's buffers take
/// megabytes that the client does not read, and the gateway never sees it
/// fall behind.
async fn local_target(
    request: &tungstenite::handshake::client::Request,
) -> Result<SocketAddr, ClientError> {
    target(request, |ip| match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || (v4.octets()[0] == 172 && v4.octets()[1] & 0xf0 == 16)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    })
    .await
}

/// Where `request` goes, if `allowed` accepts the address.
async fn target(
    request: &tungstenite::handshake::client::Request,
    allowed: impl Fn(IpAddr) -> bool,
) -> Result<SocketAddr, ClientError> {
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

/// One authenticated connection.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The id the gateway gave this connection.
    pub conn_id: ConnId,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) and authenticates.
    pub async fn connect(url: &str, token: &str) -> Result<Client, ClientError> {
        Self::connect_from(url, token, None).await
    }

    /// Like [`Client::connect`], from the local address `source` if given, so
    /// that many connections can spread over several loopback addresses and
    /// their ephemeral ports.
    pub async fn connect_from(
        url: &str,
        token: &str,
        source: Option<IpAddr>,
    ) -> Result<Client, ClientError> {
        let request = url.into_client_request()?;
        let target = loopback_target(&request).await?;
        Self::connect_socket(request, target, token, |socket| match source {
            Some(source) => socket.bind((source, 0).into()),
            None => Ok(()),
        })
        .await
    }

    /// Like [`Client::connect`], with a receive buffer of `bytes`, as a slow
    /// consumer: one that stops reading then makes the gateway's writes
    /// block within seconds, not after the kernel has buffered megabytes.
    /// `url` may also name a container's private address ([`local_target`]).
    pub async fn connect_slow(url: &str, token: &str, bytes: u32) -> Result<Client, ClientError> {
        let request = url.into_client_request()?;
        let target = local_target(&request).await?;
        Self::connect_socket(request, target, token, |socket| {
            socket.set_recv_buffer_size(bytes)
        })
        .await
    }

    async fn connect_socket(
        request: tungstenite::handshake::client::Request,
        target: SocketAddr,
        token: &str,
        set_up: impl FnOnce(&TcpSocket) -> std::io::Result<()>,
    ) -> Result<Client, ClientError> {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        set_up(&socket)?;
        let stream = socket.connect(target).await?;
        let (ws, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
        Self::authenticate(ws, token).await
    }

    async fn authenticate(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        token: &str,
    ) -> Result<Client, ClientError> {
        let mut client = Client {
            ws,
            conn_id: ConnId::from(""),
        };
        client
            .send(&ClientFrame::Auth {
                token: token.to_owned(),
            })
            .await?;
        match client.recv().await? {
            ServerFrame::Welcome { conn_id, .. } => client.conn_id = conn_id,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        Ok(client)
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let text = serde_json::to_string(frame).expect("client frames serialize");
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next frame, within [`FRAME_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(FRAME_TIMEOUT, self.next_frame())
            .await
            .map_err(|_| ClientError::TimedOut)?
    }

    /// The next frame, or `None` once `deadline` passes first.
    pub async fn recv_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<ServerFrame>, ClientError> {
        match tokio::time::timeout_at(deadline, self.next_frame()).await {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Waits for a frame `pick` accepts, skipping others.
    pub async fn expect<T>(
        &mut self,
        mut pick: impl FnMut(ServerFrame) -> Option<T>,
    ) -> Result<T, ClientError> {
        loop {
            if let Some(found) = pick(self.recv().await?) {
                return Ok(found);
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            match self
                .ws
                .next()
                .await
                .ok_or(ClientError::Closed { code: None })??
            {
                Message::Text(text) => {
                    return serde_json::from_str(&text)
                        .map_err(|_| ClientError::Unexpected(text.to_string()));
                }
                Message::Close(frame) => {
                    return Err(ClientError::Closed {
                        code: frame.map(|frame| u16::from(frame.code)),
                    });
                }
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client reaches loopback only; a slow consumer also Docker's
    /// networks (172.16.0.0/12), and nothing else.
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
            ("ws://192.168.0.10/ws", false, false),
            ("ws://8.8.8.8/ws", false, false),
        ];
        for &(url, any, slow) in CASES {
            let request = url.into_client_request().unwrap();
            let result = loopback_target(&request).await;
            assert_eq!(result.is_ok(), any, "{url}: {result:?}");
            let result = local_target(&request).await;
            assert_eq!(
                result.is_ok(),
                slow,
                "{url} for a slow consumer: {result:?}"
            );
        }
    }
}
