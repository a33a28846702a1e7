//! The socket itself: reading, writing within the write timeout, closing
//! with a code, and the connection's liveness (keepalive pings, telling the
//! client to move when the gateway drains).

use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::error::CapacityError;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use hyper_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use schemas::client::ServerFrame;
use schemas::code::CloseCode;
use tokio::time::{Instant, Sleep};

use super::Connection;
use crate::Shared;
use crate::send_queue::Overdue;

/// Why the connection loop ended.
pub(crate) enum Exit {
    /// The socket failed; nothing more can be sent.
    Gone,
    /// The client sent a close frame: echo it, as RFC 6455 asks.
    ClientClosed,
    /// Close with one of cavlo's codes.
    Close(CloseCode),
    /// The client broke the WebSocket protocol: close with the code RFC 6455
    /// gives for it (1009 for a message over the size limit, 1007 for a
    /// text message that is not UTF-8).
    Protocol(WsCloseCode, &'static str),
}

/// The next text message; `Err` when the socket closes or fails first.
pub(super) async fn next_text(socket: &mut HyperWebsocketStream) -> Result<Utf8Bytes, Exit> {
    loop {
        match read(socket.next().await)? {
            Message::Text(text) => return Ok(text),
            Message::Binary(_) => return Ok(Utf8Bytes::from_static("")),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Err(Exit::ClientClosed),
        }
    }
}

impl Connection {
    /// Runs when the keepalive timer fires: pings a client that has been
    /// silent for a third of the idle timeout, and closes one silent for all
    /// of it (4107); the timer then fires again a third later, or a third
    /// after the client was last heard. A client that vanished without
    /// closing (its network dropped) leaves a half-open socket that nothing
    /// else would notice in a quiet room: it would hold its room seats and a
    /// slot of its user's connection cap indefinitely. Browsers answer pings
    /// by themselves.
    pub(super) async fn keep_alive(
        &mut self,
        socket: &mut HyperWebsocketStream,
        timer: Pin<&mut Sleep>,
    ) -> Result<(), Exit> {
        let (idle, silent) = (self.idle_timeout(), self.heard.elapsed());
        if silent >= idle {
            return Err(Exit::Close(CloseCode::Idle));
        }
        if silent < idle / 3 {
            timer.reset(self.heard + idle / 3);
            return Ok(());
        }
        timer.reset(Instant::now() + idle / 3);
        write(
            socket.send(Message::Ping(Default::default())),
            self.shared.config.write_timeout,
        )
        .await
    }

    /// Tells the client the gateway is draining, and when to move: a random
    /// moment in the first three quarters of the drain, so its clients
    /// spread over the other gateways instead of arriving all at once, and
    /// have time to reconnect before the rest are closed.
    pub(super) async fn tell_to_move(
        &mut self,
        socket: &mut HyperWebsocketStream,
    ) -> Result<(), Exit> {
        let window = self.shared.config.drain_timeout * 3 / 4;
        let after = bootstrap::backoff::spread(window);
        let frame = ServerFrame::Draining {
            reconnect_in_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        };
        self.reply(socket, frame).await
    }

    /// `gateway.idle_timeout`, at least a second: less would ping in a loop.
    pub(super) fn idle_timeout(&self) -> Duration {
        self.shared.config.idle_timeout.max(Duration::from_secs(1))
    }
}

/// What `cavlo_gateway_closed_total` counts for a connection that ended
/// without a close frame: the code a browser reports for it.
pub(super) const CLOSED_WITHOUT_FRAME: u16 = 1006;

/// What it counts for a client's close, echoed (whatever its code).
const CLOSED_BY_CLIENT: u16 = 1000;

/// Ends the socket as `exit` says, and counts how.
pub(crate) async fn end(socket: &mut HyperWebsocketStream, exit: Exit, shared: &Shared) {
    let write_timeout = shared.config.write_timeout;
    match exit {
        Exit::Gone => shared.metrics.closed(CLOSED_WITHOUT_FRAME),
        // tungstenite queued the echo when it read the close; send it.
        Exit::ClientClosed => {
            shared.metrics.closed(CLOSED_BY_CLIENT);
            let _ = tokio::time::timeout(write_timeout, socket.flush()).await;
        }
        Exit::Close(code) => {
            tracing::info!(code = code.code(), "closing");
            close(socket, code, shared).await;
        }
        Exit::Protocol(code, reason) => {
            tracing::info!(code = u16::from(code), reason, "closing");
            shared.metrics.closed(u16::from(code));
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(write_timeout, socket.close(Some(frame))).await;
        }
    }
}

/// Writes one text frame and flushes it.
pub(super) async fn send(
    socket: &mut HyperWebsocketStream,
    text: Utf8Bytes,
    timeout: Duration,
) -> Result<(), Exit> {
    write(socket.send(Message::Text(text)), timeout).await
}

/// A write, within `timeout`. One that takes longer means the client has
/// stopped reading (its buffers are full): it is a slow consumer, closed
/// with 4100 like one whose queue filled, since in a quiet room the write
/// times out long before the queue fills. The close frame then has another
/// `timeout` to go out, so a client that reads again in time learns why.
pub(crate) async fn write(
    op: impl std::future::Future<Output = Result<(), WsError>>,
    timeout: Duration,
) -> Result<(), Exit> {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Exit::Gone),
        Err(_) => Err(Exit::Close(CloseCode::SlowConsumer)),
    }
}

impl Connection {
    /// A queued frame waited past `send_queue_delay`: the client falls ever
    /// further behind its rooms, so it is a slow consumer too; unless the
    /// gateway itself was out of touch meanwhile (paused or cut off), and
    /// is resetting its connections: then the wait was its own, and the
    /// client is told so with the reset code, like every other one.
    pub(super) fn overdue(&self, overdue: Overdue) -> Exit {
        if self.reset.is_cancelled() {
            return Exit::Close(CloseCode::Reset);
        }
        tracing::info!(cause = %overdue, "closing a slow consumer");
        Exit::Close(CloseCode::SlowConsumer)
    }
}

/// How long a closed socket waits for the client's answering close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Counts and sends a close frame with `code`, giving up after the write
/// timeout, then reads
/// (and drops) what the client still sends until its answering close
/// frame, for at most [`CLOSE_LINGER`]: closing a TCP socket with unread
/// data in it sends a reset, which can destroy the close frame on its way,
/// and a client that woke up and sent something saw 1006 instead of why.
pub(crate) async fn close(socket: &mut HyperWebsocketStream, code: CloseCode, shared: &Shared) {
    shared.metrics.closed(code.code());
    let timeout = shared.config.write_timeout;
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    };
    if let Ok(Ok(())) = tokio::time::timeout(timeout, socket.close(Some(frame))).await {
        let drain = async { while let Some(Ok(_)) = socket.next().await {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }
}

/// A message from the socket, or why the connection ends.
pub(crate) fn read(frame: Option<Result<Message, WsError>>) -> Result<Message, Exit> {
    match frame {
        Some(Ok(message)) => Ok(message),
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
            Err(Exit::Protocol(WsCloseCode::Size, "message too big"))
        }
        Some(Err(WsError::Utf8(_))) => Err(Exit::Protocol(WsCloseCode::Invalid, "invalid UTF-8")),
        Some(Err(_)) | None => Err(Exit::Gone),
    }
}

/// Most bytes of client frames read ahead while a request is under way.
/// Reading ahead is how a client's close, queued behind frames it sent
/// before, is noticed at once: the connection then ends and frees the
/// client's seats, instead of working through requests nobody waits for
/// (each can take a request timeout while the store is slow). Past this,
/// reading waits for the request.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Frames read while a request was under way, handled next, in order.
#[derive(Default)]
pub(super) struct ReadAhead {
    frames: std::collections::VecDeque<Message>,
    bytes: usize,
}

impl ReadAhead {
    pub(super) fn pop(&mut self) -> Option<Message> {
        let message = self.frames.pop_front()?;
        self.bytes -= message.len();
        Some(message)
    }

    /// Runs `work` while reading the socket ahead: a close (or a failed
    /// socket) ends the connection at once and abandons `work`, which is
    /// safe: an unanswered chat is resent by the client and stored once, and
    /// a join is undone on disconnect.
    pub(super) async fn while_waiting<T>(
        &mut self,
        socket: &mut HyperWebsocketStream,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Exit> {
        tokio::pin!(work);
        loop {
            let room = self.bytes < READ_AHEAD_BYTES;
            tokio::select! {
                result = &mut work => return Ok(result),
                frame = socket.next(), if room => match read(frame)? {
                    Message::Close(_) => return Err(Exit::ClientClosed),
                    message => {
                        self.bytes += message.len();
                        self.frames.push_back(message);
                    }
                },
            }
        }
    }
}
