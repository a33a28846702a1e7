//! One WebSocket to one gateway, frame by frame.
//!
//! [`Connection`] neither reconnects nor answers anything on its own (beyond
//! the WebSocket pongs tungstenite sends): what the gateway sends is what
//! the caller reads, close codes included. Tests of the protocol and load
//! tools need exactly that; applications want [`Client`](crate::Client).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use schemas::client::{ClientFrame, IceServers, Limits, ServerFrame, User};
use schemas::code::ErrorCode;
use schemas::id::{ConnId, GatewayId};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{
    ConnectError, ConnectErrorKind, RecvError, RecvErrorKind, SendError, SendErrorKind,
};

/// The WebSocket under a [`Connection`].
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`Connection::authenticate`] waits for `welcome`. A gateway
/// gives up on an unauthenticated socket after its `auth_timeout` (5 s by
/// default), so one that says nothing for twice that is not going to.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest WebSocket message accepted from a gateway. A `joined` frame
/// is the largest a gateway sends: its backlog holds up to `history_limit`
/// (50) messages of up to 10 KiB by default, about half a MiB. Past this
/// bound the socket fails rather than buffering whatever a broken or hostile
/// server sends (tungstenite's own default is 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How to open the TCP connection under the WebSocket. The defaults
/// resolve the URL's host and let the kernel choose the rest.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    /// Connect to this address instead of resolving the URL's host: for a
    /// caller that resolved and vetted the address itself (a load tool that
    /// targets only its own machine). The URL still names the host in the
    /// handshake.
    pub address: Option<SocketAddr>,
    /// The local address to connect from, so that many connections can
    /// spread over several source addresses and their ephemeral ports.
    pub source: Option<IpAddr>,
    /// The socket's receive buffer in bytes; the kernel's default when
    /// unset. A small one makes a client that stops reading fill the
    /// gateway's queue for it at once (a slow consumer, in tests).
    pub receive_buffer_bytes: Option<u32>,
}

/// What `welcome` told a connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Welcome {
    /// This connection's id; a reconnect gets a new one.
    pub conn_id: ConnId,
    /// Who the token says the client is.
    pub user: User,
    /// The gateway that holds the connection.
    pub gateway: GatewayId,
    /// The limits that gateway applies.
    pub limits: Limits,
    /// Seconds until the token expires, by the gateway's clock: refresh
    /// before then, or the gateway closes the connection with 4105.
    pub expires_in: u64,
    /// STUN and TURN servers for this user's calls.
    pub ice: IceServers,
    /// Whether a media service holds calls ([`Client::call_join`](crate::Client::call_join)).
    pub media: bool,
}

/// One WebSocket to a gateway, speaking [`ClientFrame`]s and
/// [`ServerFrame`]s.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cavlo_client::Connection;
/// use schemas::client::{ClientFrame, ServerFrame};
///
/// let (mut connection, welcome) =
///     Connection::connect("ws://127.0.0.1:8080/ws", "eyJhbGciOiJIUzI1NiJ9...").await?;
/// println!("connected as {}", welcome.conn_id);
/// connection.send(&ClientFrame::Ping {}).await?;
/// assert_eq!(connection.recv().await?, ServerFrame::Pong);
/// connection.close().await;
/// # Ok(())
/// # }
/// ```
pub struct Connection {
    socket: Socket,
}

impl Connection {
    /// Opens a WebSocket to `url` (`ws://host:port/ws`) without
    /// authenticating.
    pub async fn open(url: &str) -> Result<Connection, ConnectError> {
        Self::open_with(url, &Dialer::default()).await
    }

    /// Like [`Connection::open`], with the TCP connection made as `dialer` says.
    pub async fn open_with(url: &str, dialer: &Dialer) -> Result<Connection, ConnectError> {
        let request = url
            .into_client_request()
            .map_err(|err| ConnectError::with_source(ConnectErrorKind::InvalidUrl, err))?;
        let target = match dialer.address {
            Some(address) => address,
            None => resolve(&request).await?,
        };
        let io = |err| ConnectError::with_source(ConnectErrorKind::Io, err);
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io)?;
        if let Some(source) = dialer.source {
            socket.bind(SocketAddr::new(source, 0)).map_err(io)?;
        }
        if let Some(bytes) = dialer.receive_buffer_bytes {
            socket.set_recv_buffer_size(bytes).map_err(io)?;
        }
        let stream = socket.connect(target).await.map_err(io)?;
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES));
        let (socket, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .map_err(|err| ConnectError::with_source(ConnectErrorKind::Handshake, err))?;
        Ok(Connection { socket })
    }

    /// Opens a WebSocket to `url` and authenticates with `token`.
    pub async fn connect(url: &str, token: &str) -> Result<(Connection, Welcome), ConnectError> {
        Self::connect_with(url, token, &Dialer::default()).await
    }

    /// Like [`Connection::connect`], with the TCP connection made as
    /// `dialer` says.
    pub async fn connect_with(
        url: &str,
        token: &str,
        dialer: &Dialer,
    ) -> Result<(Connection, Welcome), ConnectError> {
        let mut connection = Self::open_with(url, dialer).await?;
        let welcome = connection.authenticate(token).await?;
        Ok((connection, welcome))
    }

    /// A connection over a socket opened elsewhere (with headers of the
    /// caller's choosing, say).
    pub fn from_socket(socket: Socket) -> Connection {
        Connection { socket }
    }

    /// The socket itself, for tests of the protocol's edges: frames no
    /// client should send, or reading the TCP stream under it.
    pub fn socket_mut(&mut self) -> &mut Socket {
        &mut self.socket
    }

    /// Sends `auth` and waits up to [`WELCOME_TIMEOUT`] for `welcome`.
    pub async fn authenticate(&mut self, token: &str) -> Result<Welcome, ConnectError> {
        let auth = ClientFrame::Auth {
            token: token.to_owned(),
        };
        self.send(&auth)
            .await
            .map_err(|err| ConnectError::with_source(ConnectErrorKind::Closed(None), err))?;
        match self.recv_within(WELCOME_TIMEOUT).await {
            Ok(ServerFrame::Welcome {
                conn_id,
                user,
                gateway,
                limits,
                expires_in,
                ice,
                media,
            }) => Ok(Welcome {
                conn_id,
                user,
                gateway,
                limits,
                expires_in,
                ice,
                media,
            }),
            Ok(ServerFrame::Error(error)) if error.code == ErrorCode::Unauthorized => Err(
                ConnectError::with_source(ConnectErrorKind::Unauthorized, error.message),
            ),
            Ok(other) => Err(ConnectError::with_source(
                ConnectErrorKind::Unexpected,
                format!("{other:?}"),
            )),
            Err(err) => Err(match err.kind() {
                RecvErrorKind::Closed(code) => {
                    ConnectError::with_source(ConnectErrorKind::Closed(code), err)
                }
                RecvErrorKind::TimedOut => ConnectError::new(ConnectErrorKind::TimedOut),
                RecvErrorKind::Socket | RecvErrorKind::Malformed => {
                    ConnectError::with_source(ConnectErrorKind::Unexpected, err)
                }
            }),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), SendError> {
        // A client frame is strings, numbers and JSON values: it always
        // serializes.
        let text = serde_json::to_string(frame).expect("client frames serialize");
        self.send_message(Message::text(text)).await
    }

    /// Sends one WebSocket message as it is: text that is not a client
    /// frame, binary, a close frame.
    pub async fn send_message(&mut self, message: Message) -> Result<(), SendError> {
        self.socket.send(message).await.map_err(|err| {
            let kind = match err {
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                    SendErrorKind::Closed
                }
                _ => SendErrorKind::Socket,
            };
            SendError::with_source(kind, err)
        })
    }

    /// The next frame, however long it takes. There is no timer here (a
    /// client that gave up on its own would hide a server's fault): a
    /// socket closed by either side ends in an error at once, but one whose
    /// path died silently is noticed only by the operating system's TCP
    /// timeouts, or by a deadline of the caller's ([`Connection::recv_within`]).
    pub async fn recv(&mut self) -> Result<ServerFrame, RecvError> {
        loop {
            let message = match self.socket.next().await {
                None => return Err(RecvError::new(RecvErrorKind::Closed(None))),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Err(RecvError::new(RecvErrorKind::Closed(None))),
                Some(Err(err)) => return Err(RecvError::with_source(RecvErrorKind::Socket, err)),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).map_err(|err| {
                        RecvError::with_source(
                            RecvErrorKind::Malformed,
                            format!("{err}: {}", text.as_str()),
                        )
                    });
                }
                Message::Close(frame) => {
                    let code = frame.map(|frame| u16::from(frame.code));
                    return Err(RecvError::new(RecvErrorKind::Closed(code)));
                }
                // Pings are answered by tungstenite; a gateway sends no
                // binary frames.
                _ => continue,
            }
        }
    }

    /// The next frame, or `None` once `deadline` passes first.
    pub async fn recv_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<ServerFrame>, RecvError> {
        match tokio::time::timeout_at(deadline, self.recv()).await {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The next frame within `timeout`, else a [`RecvErrorKind::TimedOut`].
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<ServerFrame, RecvError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| RecvError::new(RecvErrorKind::TimedOut))?
    }

    /// Sends a close frame (1000) and returns without waiting for the
    /// gateway's echo, which a gateway cut off from the network never sends.
    pub async fn close(&mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// The address `request` names, resolved.
async fn resolve(request: &Request) -> Result<SocketAddr, ConnectError> {
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(ConnectError::new(ConnectErrorKind::InvalidUrl));
    }
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|err| ConnectError::with_source(ConnectErrorKind::Io, err))?
        .next()
        .ok_or_else(|| {
            ConnectError::with_source(
                ConnectErrorKind::Io,
                format!("{host} resolves to no address"),
            )
        })
}
