//! The test client: a thin layer over `cavlo_client::Connection` that
//! fails the test instead of returning errors, keeps presence apart from
//! the frames a test waits for, and matches chat answers by id.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use cavlo_client::tungstenite::Message;
use cavlo_client::{Connection, Dialer, Joined, RecvErrorKind, SendError};
use schemas::client::{ChatMessage, ClientFrame, ErrorFrame, IceServers, ServerFrame, SignalKind};
use schemas::code::ErrorCode;
use schemas::id::{ConnId, RoomId, Seq};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::MaybeTlsStream;

use super::token::token;

/// How long a test waits for an expected frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a socket must stay silent before what it received is taken as
/// all there is.
pub const QUIET: Duration = Duration::from_millis(500);

/// A `signal` frame; the server fills in who sent it.
pub fn signal(room: &RoomId, to: &ConnId, kind: SignalKind, data: Value) -> ClientFrame {
    ClientFrame::Signal {
        room: room.clone(),
        to: to.clone(),
        kind,
        data,
        from: None,
        user: None,
    }
}

/// What an `ack` says.
#[derive(Debug, PartialEq)]
pub struct Ack {
    pub seq: Option<Seq>,
    /// The stored text, present when sanitizing changed it.
    pub text: Option<String>,
}

/// A WebSocket client speaking the cavlo protocol.
pub struct Client {
    connection: Connection,
    pub conn_id: ConnId,
    /// Seconds until its token expires, as `welcome` said.
    pub expires_in: u64,
    /// The ICE servers `welcome` gave.
    pub ice: IceServers,
    /// Frames read while looking for another one, returned by `recv` first.
    pending: VecDeque<ServerFrame>,
    /// Presence frames, kept apart so tests about other frames can ignore
    /// them; read with `next_presence`.
    presence: VecDeque<ServerFrame>,
}

/// The URL of gateway `addr`'s socket.
fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

impl Client {
    /// Opens a socket without authenticating.
    pub async fn open(addr: SocketAddr) -> Connection {
        Connection::open(&url(addr)).await.expect("ws connects")
    }

    /// Connects and authenticates as `user`, with a socket receive buffer
    /// of `bytes`: a client that stops reading then fills the gateway's
    /// queue for it at once.
    pub async fn connect_with_receive_buffer(addr: SocketAddr, user: &str, bytes: u32) -> Client {
        let dialer = Dialer {
            receive_buffer_bytes: Some(bytes),
            ..Dialer::default()
        };
        let connection = Connection::open_with(&url(addr), &dialer)
            .await
            .expect("ws connects");
        Self::authenticate(Self::from_socket(connection), &token(user)).await
    }

    /// Connects and authenticates as `user`.
    pub async fn connect(addr: SocketAddr, user: &str) -> Client {
        Self::connect_with(addr, &token(user)).await
    }

    pub async fn connect_with(addr: SocketAddr, token: &str) -> Client {
        Self::authenticate(Self::from_socket(Self::open(addr).await), token).await
    }

    async fn authenticate(mut client: Client, token: &str) -> Client {
        let welcome = client
            .connection
            .authenticate(token)
            .await
            .unwrap_or_else(|err| panic!("expected welcome, got {err}"));
        client.conn_id = welcome.conn_id;
        client.expires_in = welcome.expires_in;
        client.ice = welcome.ice;
        client
    }

    pub fn from_socket(connection: Connection) -> Client {
        Client {
            connection,
            conn_id: "".into(),
            expires_in: 0,
            ice: IceServers::default(),
            pending: VecDeque::new(),
            presence: VecDeque::new(),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.connection.send(frame).await.expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.send_message(Message::text(text)).await.expect("send");
    }

    /// Sends a WebSocket message as it is: binary, invalid UTF-8, a close.
    pub async fn send_message(&mut self, message: Message) -> Result<(), SendError> {
        self.connection.send_message(message).await
    }

    /// The next frame other than presence, failing the test after [`FRAME_TIMEOUT`].
    pub async fn recv(&mut self) -> ServerFrame {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        loop {
            match self.read().await {
                frame @ ServerFrame::Presence { .. } => self.presence.push_back(frame),
                frame => return frame,
            }
        }
    }

    /// The next presence frame.
    pub async fn next_presence(&mut self) -> ServerFrame {
        self.next_presence_within(FRAME_TIMEOUT).await
    }

    /// The next presence frame, each frame off the socket waited for up
    /// to `within`: for a change that comes only after a timeout of the
    /// system's.
    pub async fn next_presence_within(&mut self, within: Duration) -> ServerFrame {
        loop {
            if let Some(frame) = self.presence.pop_front() {
                return frame;
            }
            let frame = self.read_within(within).await;
            match frame {
                ServerFrame::Presence { .. } => return frame,
                other => self.pending.push_back(other),
            }
        }
    }

    /// The next frame off the socket.
    async fn read(&mut self) -> ServerFrame {
        self.read_within(FRAME_TIMEOUT).await
    }

    async fn read_within(&mut self, within: Duration) -> ServerFrame {
        match self.connection.recv_within(within).await {
            Ok(frame) => frame,
            Err(err) => match err.kind() {
                RecvErrorKind::TimedOut => panic!("timed out waiting for a frame"),
                RecvErrorKind::Closed(code) => {
                    panic!("socket closed while waiting for a frame: {code:?}")
                }
                RecvErrorKind::Socket => panic!("socket error while waiting for a frame: {err}"),
                RecvErrorKind::Malformed => panic!("server frames parse: {err}"),
            },
        }
    }

    /// Keeps a frame read ahead for a later `recv` or `next_presence`.
    fn keep(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Presence { .. } => self.presence.push_back(frame),
            frame => self.pending.push_back(frame),
        }
    }

    /// Reads for `duration`, as a browser tab does, answering the gateway's
    /// pings; frames that arrive are kept for later `recv`s.
    pub async fn read_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            match self.connection.recv_until(until).await {
                Ok(Some(frame)) => self.keep(frame),
                Ok(None) => break,
                Err(err) => match err.kind() {
                    RecvErrorKind::Closed(_) => break,
                    RecvErrorKind::Malformed => panic!("server frames parse: {err}"),
                    _ => panic!("socket error while reading: {err}"),
                },
            }
        }
    }

    /// Reads until the server closes the socket: the seqs of the chat frames
    /// still on their way, in order, and the close code.
    pub async fn chats_until_close(&mut self) -> (Vec<Seq>, u16) {
        let mut seqs = Vec::new();
        loop {
            match self.recv_or_close().await {
                Ok(ServerFrame::Chat(chat)) => seqs.push(chat.seq),
                Ok(_) => {}
                Err(code) => return (seqs, code),
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        match self.connection.recv_within(FRAME_TIMEOUT).await {
            Ok(frame) => panic!("expected close, got {frame:?}"),
            Err(err) => match err.kind() {
                RecvErrorKind::Closed(Some(code)) => code,
                RecvErrorKind::Closed(None) => panic!("closed without a code"),
                RecvErrorKind::TimedOut => panic!("timed out waiting for close"),
                RecvErrorKind::Malformed => panic!("expected close, got {err}"),
                RecvErrorKind::Socket => panic!("socket error instead of close: {err}"),
            },
        }
    }

    /// Joins and returns the `joined` frame's backlog, last seq and truncated flag.
    pub async fn join(
        &mut self,
        room: &RoomId,
        since: Option<Seq>,
    ) -> (Vec<ChatMessage>, Seq, bool) {
        match self.try_join(room, since).await {
            Ok(joined) => (joined.history, joined.last_seq, joined.truncated),
            Err(error) => panic!("expected joined {room}, got {error:?}"),
        }
    }

    /// Joins and returns the `joined` frame, or the error.
    pub async fn try_join(
        &mut self,
        room: &RoomId,
        since: Option<Seq>,
    ) -> Result<Joined, ErrorFrame> {
        self.send(&ClientFrame::Join {
            room: room.clone(),
            since,
            replaces: None,
        })
        .await;
        self.join_reply(room).await
    }

    /// Waits for the answer to a join already sent.
    pub async fn join_reply(&mut self, room: &RoomId) -> Result<Joined, ErrorFrame> {
        match self.recv().await {
            ServerFrame::Joined {
                room: joined,
                members,
                history,
                last_seq,
                truncated,
            } if joined == *room => Ok(Joined {
                room: joined,
                members,
                history,
                last_seq,
                truncated,
            }),
            ServerFrame::Error(error) if error.room.as_ref() == Some(room) => Err(error),
            other => panic!("expected the answer to joining {room}, got {other:?}"),
        }
    }

    /// Sends a chat and waits for the reply to it (ack or error), collecting
    /// any chat deliveries that arrive first.
    pub async fn chat(
        &mut self,
        room: &RoomId,
        id: &str,
        text: &str,
    ) -> Result<Option<Seq>, ErrorFrame> {
        self.chat_acked(room, id, text).await.map(|ack| ack.seq)
    }

    /// Like [`Client::chat`], returning the whole ack.
    pub async fn chat_acked(
        &mut self,
        room: &RoomId,
        id: &str,
        text: &str,
    ) -> Result<Ack, ErrorFrame> {
        self.send(&ClientFrame::Chat {
            room: room.clone(),
            id: id.into(),
            text: text.into(),
        })
        .await;
        self.ack_of(id).await
    }

    /// Waits for the ack or error about client message `id`; deliveries that
    /// arrive first are kept for later `recv`s.
    async fn ack_of(&mut self, id: &str) -> Result<Ack, ErrorFrame> {
        let mut skipped = Vec::new();
        let reply = loop {
            match self.recv().await {
                ServerFrame::Ack {
                    id: acked,
                    seq,
                    text,
                    ..
                } if acked.as_str() == id => break Ok(Ack { seq, text }),
                ServerFrame::Error(error)
                    if error.id.as_ref().is_some_and(|e| e.as_str() == id) =>
                {
                    break Err(error);
                }
                other => skipped.push(other),
            }
        };
        for frame in skipped.into_iter().rev() {
            self.pending.push_front(frame);
        }
        reply
    }

    /// The next chat delivery, failing on any other frame.
    pub async fn next_chat(&mut self) -> ChatMessage {
        match self.recv().await {
            ServerFrame::Chat(chat) => chat,
            other => panic!("expected chat, got {other:?}"),
        }
    }

    /// The next error frame, failing on any other frame.
    pub async fn next_error(&mut self) -> ErrorFrame {
        match self.recv().await {
            ServerFrame::Error(error) => error,
            other => panic!("expected error, got {other:?}"),
        }
    }

    /// Checks the connection is still usable: ping gets pong.
    pub async fn assert_alive(&mut self) {
        self.send(&ClientFrame::Ping {}).await;
        assert_eq!(self.recv().await, ServerFrame::Pong);
    }

    pub async fn close(mut self) {
        self.connection.close().await;
    }
}

/// Asserts the error's code, naming the case on failure.
pub fn assert_code(error: &ErrorFrame, code: ErrorCode, case: &str) {
    assert_eq!(error.code, code, "{case}: {error:?}");
}

impl Client {
    /// The code of the server's close frame, read from the TCP stream
    /// without answering anything on the way: for a client that stopped
    /// answering pings (tungstenite would answer the queued pings, and that
    /// write hits the socket the server has closed).
    pub async fn close_code_unanswered(mut self) -> u16 {
        use tokio::io::AsyncReadExt;
        let MaybeTlsStream::Plain(tcp) = self.connection.socket_mut().get_mut() else {
            panic!("tests connect over plain TCP");
        };
        loop {
            let mut head = [0u8; 2];
            tokio::time::timeout(FRAME_TIMEOUT, tcp.read_exact(&mut head))
                .await
                .expect("timed out waiting for a frame")
                .expect("a frame header");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut len = [0u8; 2];
                    tcp.read_exact(&mut len).await.expect("a length");
                    usize::from(u16::from_be_bytes(len))
                }
                127 => {
                    let mut len = [0u8; 8];
                    tcp.read_exact(&mut len).await.expect("a length");
                    usize::try_from(u64::from_be_bytes(len)).expect("a length that fits")
                }
                len => usize::from(len),
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.expect("a frame payload");
            // Opcode 8: close, its payload starting with the code.
            if head[0] & 0x0f == 8 {
                assert!(payload.len() >= 2, "a close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// The next frame, or the close code if the server closes first.
    pub async fn recv_or_close(&mut self) -> Result<ServerFrame, u16> {
        match self.connection.recv_within(FRAME_TIMEOUT).await {
            Ok(frame) => Ok(frame),
            Err(err) => match err.kind() {
                RecvErrorKind::Closed(Some(code)) => Err(code),
                RecvErrorKind::TimedOut => panic!("timed out"),
                _ => panic!("socket ended without a close code: {err}"),
            },
        }
    }
}
