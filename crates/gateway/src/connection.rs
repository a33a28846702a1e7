//! One WebSocket connection: authentication, then a loop over client frames
//! and room deliveries.
//!
//! The loop is a single task. Requests to the moderator and history are
//! awaited inline, so a client's frames are handled strictly in order (its
//! chat keeps its order, its join completes before its next chat); room
//! deliveries wait meanwhile in the connection's bounded queue.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::error::CapacityError;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use hyper_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use schemas::client::{ClientFrame, ErrorFrame, Member, ServerFrame, User};
use schemas::code::{CloseCode, ErrorCode};
use schemas::event::{Action, Verdict};
use schemas::id::{ClientMsgId, ConnId, ModeratorId, RoomId, Seq};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Shared;
use crate::hub::{Delivery, MemberHandle};

/// How a failed request looks to the client.
type Failure = ErrorFrame;

/// Why the connection loop ended.
enum Exit {
    /// The client closed or the socket failed; nothing more to send.
    Gone,
    /// Close with one of cavlo's codes.
    Close(CloseCode),
    /// A message over the size limit: close with 1009, as RFC 6455 asks.
    TooBig,
}

/// Serves one upgraded socket until it closes.
pub(crate) async fn serve(mut socket: HyperWebsocketStream, shared: Arc<Shared>) {
    let Some(user) = authenticate(&mut socket, &shared).await else {
        return;
    };
    let member = Member {
        conn_id: ConnId(nuid::next().to_string()),
        user,
    };
    let span = tracing::info_span!("ws", conn_id = %member.conn_id, user = %member.user.id);
    let welcome = ServerFrame::Welcome {
        conn_id: member.conn_id.clone(),
        user: member.user.clone(),
        gateway: shared.id.clone(),
        limits: shared.limits(),
    };
    if send(&mut socket, welcome.to_json().into(), &shared)
        .await
        .is_err()
    {
        return;
    }
    let (queue, deliveries) = mpsc::channel(shared.config.send_queue_capacity.max(1));
    let connection = Connection {
        member,
        rooms: HashMap::new(),
        moderator: None,
        handle: MemberHandle {
            queue,
            slow: CancellationToken::new(),
        },
        shared,
    };
    connection.run(socket, deliveries).instrument(span).await;
}

/// Waits for the `auth` frame and verifies it; on failure sends an
/// `unauthorized` error and closes with 4001.
async fn authenticate(socket: &mut HyperWebsocketStream, shared: &Shared) -> Option<User> {
    let token = match tokio::time::timeout(shared.config.auth_timeout, next_text(socket)).await {
        Ok(Ok(text)) => match ClientFrame::decode(&text) {
            Ok(ClientFrame::Auth { token }) => Ok(token),
            _ => Err("first frame is not auth".to_owned()),
        },
        Ok(Err(())) => return None,
        Err(_) => Err("auth timeout".to_owned()),
    };
    let user = match token {
        Ok(token) => shared
            .auth
            .verify(&token)
            .await
            .map_err(|err| err.to_string()),
        Err(reason) => Err(reason),
    };
    match user {
        Ok(user) => Some(user),
        Err(reason) => {
            tracing::info!(%reason, "authentication failed");
            let error = ServerFrame::Error(ErrorFrame::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            ));
            if send(socket, error.to_json().into(), shared).await.is_ok() {
                close(socket, CloseCode::Unauthorized, shared).await;
            }
            None
        }
    }
}

/// The next text message; `Err` when the socket closes or fails first.
async fn next_text(socket: &mut HyperWebsocketStream) -> Result<Utf8Bytes, ()> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Binary(_))) => return Ok(Utf8Bytes::from_static("")),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(()),
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    member: Member,
    /// Joined rooms, each with the highest seq this client has been sent.
    rooms: HashMap<RoomId, Seq>,
    /// The moderator this connection's requests stick to.
    moderator: Option<ModeratorId>,
    handle: MemberHandle,
}

impl Connection {
    async fn run(
        mut self,
        mut socket: HyperWebsocketStream,
        mut deliveries: mpsc::Receiver<Arc<Delivery>>,
    ) {
        tracing::debug!("connected");
        let shutdown = self.shared.shutdown.clone();
        let slow = self.handle.slow.clone();
        let exit = loop {
            // Shutdown and overflow interrupt whatever step is under way: a
            // socket write blocked on a full TCP buffer, or a request. Both
            // are safe to abandon: tungstenite keeps a partly written frame
            // in its buffer, and an unacked chat is resent by the client.
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(Exit::Close(CloseCode::ShuttingDown)),
                _ = slow.cancelled() => Err(Exit::Close(CloseCode::SlowConsumer)),
                step = self.step(&mut socket, &mut deliveries) => step,
            };
            if let Err(exit) = step {
                break exit;
            }
        };
        for room in self.rooms.keys() {
            self.shared.hub.leave(room, &self.member.conn_id);
        }
        match exit {
            Exit::Gone => {}
            Exit::Close(code) => {
                tracing::info!(code = code.code(), "closing");
                close(&mut socket, code, &self.shared).await;
            }
            Exit::TooBig => {
                let frame = CloseFrame {
                    code: WsCloseCode::Size,
                    reason: "message too big".into(),
                };
                let _ = tokio::time::timeout(
                    self.shared.config.write_timeout,
                    socket.close(Some(frame)),
                )
                .await;
            }
        }
        tracing::debug!("disconnected");
    }

    /// Handles the next delivery or client frame, whichever comes first.
    async fn step(
        &mut self,
        socket: &mut HyperWebsocketStream,
        deliveries: &mut mpsc::Receiver<Arc<Delivery>>,
    ) -> Result<(), Exit> {
        tokio::select! {
            Some(delivery) = deliveries.recv() => self.deliver(socket, &delivery).await,
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => self.handle(socket, &text).await,
                Some(Ok(Message::Binary(_))) => {
                    let error = ErrorFrame::new(ErrorCode::InvalidMessage, "binary frames are not part of the protocol");
                    self.reply(socket, ServerFrame::Error(error)).await
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => Err(Exit::TooBig),
                Some(Ok(Message::Close(_)) | Err(_)) | None => Err(Exit::Gone),
            },
        }
    }

    /// Writes a room delivery unless the client has it already.
    async fn deliver(
        &mut self,
        socket: &mut HyperWebsocketStream,
        delivery: &Delivery,
    ) -> Result<(), Exit> {
        let Some(seen) = self.rooms.get_mut(&delivery.room) else {
            return Ok(());
        };
        if delivery.seq <= *seen {
            return Ok(());
        }
        *seen = delivery.seq;
        if delivery.from == self.member.conn_id {
            return Ok(());
        }
        send(socket, delivery.frame.clone(), &self.shared).await
    }

    async fn handle(&mut self, socket: &mut HyperWebsocketStream, text: &str) -> Result<(), Exit> {
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                let error = ErrorFrame {
                    code: ErrorCode::InvalidMessage,
                    message: err.message().into(),
                    id: err.id,
                    room: err.room,
                };
                return self.reply(socket, ServerFrame::Error(error)).await;
            }
        };
        let reply = match frame {
            ClientFrame::Auth { .. } => Err(ErrorFrame::new(
                ErrorCode::InvalidMessage,
                "already authenticated",
            )),
            ClientFrame::Ping {} => Ok(ServerFrame::Pong),
            ClientFrame::Join { room, since } => self.join(room, since).await,
            ClientFrame::Leave { room } => self.leave(room),
            ClientFrame::Chat { room, id, text } => self.chat(room, id, text).await,
        };
        self.reply(socket, reply.unwrap_or_else(ServerFrame::Error))
            .await
    }

    async fn reply(
        &self,
        socket: &mut HyperWebsocketStream,
        frame: ServerFrame,
    ) -> Result<(), Exit> {
        send(socket, frame.to_json().into(), &self.shared).await
    }

    /// Joins: moderator approval, then subscribe, then the backlog, in that
    /// order so that no message falls between backlog and live delivery.
    async fn join(&mut self, room: RoomId, since: Option<Seq>) -> Result<ServerFrame, Failure> {
        let fail = |code, message: &str| ErrorFrame::new(code, message).in_room(&room);
        if !room.is_subject_safe() {
            return Err(fail(ErrorCode::InvalidRoom, "room name is not allowed"));
        }
        let rejoin = self.rooms.contains_key(&room);
        if !rejoin && self.rooms.len() >= self.shared.config.max_rooms_per_connection {
            return Err(fail(
                ErrorCode::TooManyRooms,
                "already in as many rooms as allowed",
            ));
        }
        match self.moderate(Action::Join { room: room.clone() }).await {
            Ok(Verdict::Admitted) => {}
            Ok(Verdict::Rejected { code, message }) => return Err(fail(code, &message)),
            Ok(Verdict::Stored { .. }) | Err(_) => {
                return Err(fail(ErrorCode::Unavailable, "moderator unavailable; retry"));
            }
        }
        // Recorded before the hub knows the member, so that however this
        // join ends (even abandoned mid-way), the room is left on disconnect.
        self.rooms.entry(room.clone()).or_default();
        let hub = &self.shared.hub;
        if let Err(err) = hub
            .join(&room, self.member.conn_id.clone(), self.handle.clone())
            .await
        {
            tracing::warn!(cause = %err, %room, "join failed");
            self.forget(&room);
            return Err(fail(
                ErrorCode::Unavailable,
                "cannot subscribe to room; retry",
            ));
        }
        let limit = self.shared.config.history_limit;
        let backlog = match self.shared.bus.backlog(&room, since, limit).await {
            Ok(backlog) => backlog,
            Err(err) => {
                tracing::warn!(cause = %err, %room, "backlog unavailable");
                self.forget(&room);
                return Err(fail(ErrorCode::Unavailable, "history unavailable; retry"));
            }
        };
        self.rooms.insert(room.clone(), backlog.last_seq);
        Ok(ServerFrame::Joined {
            room,
            members: Vec::new(),
            history: backlog.messages,
            last_seq: backlog.last_seq,
            truncated: backlog.truncated,
        })
    }

    fn leave(&mut self, room: RoomId) -> Result<ServerFrame, Failure> {
        if !self.rooms.contains_key(&room) {
            return Err(ErrorFrame::new(ErrorCode::NotInRoom, "not in this room").in_room(&room));
        }
        self.forget(&room);
        Ok(ServerFrame::Left { room })
    }

    /// Leaves `room` locally and in the hub.
    fn forget(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        self.shared.hub.leave(room, &self.member.conn_id);
    }

    async fn chat(
        &mut self,
        room: RoomId,
        id: ClientMsgId,
        text: String,
    ) -> Result<ServerFrame, Failure> {
        let fail = |code, message: &str| {
            ErrorFrame::new(code, message)
                .in_room(&room)
                .for_message(&id)
        };
        if !self.rooms.contains_key(&room) {
            return Err(fail(ErrorCode::NotInRoom, "join the room first"));
        }
        let action = Action::Chat {
            room: room.clone(),
            id: id.clone(),
            text,
        };
        match self.moderate(action).await {
            Ok(Verdict::Stored { seq }) => Ok(ServerFrame::Ack { id, room, seq }),
            Ok(Verdict::Rejected { code, message }) => Err(fail(code, &message)),
            Ok(Verdict::Admitted) | Err(_) => {
                Err(fail(ErrorCode::Unavailable, "moderator unavailable; retry"))
            }
        }
    }

    async fn moderate(&mut self, action: Action) -> Result<Verdict, crate::bus::BusError> {
        let result = self
            .shared
            .bus
            .moderate(&mut self.moderator, &self.member, action)
            .await;
        if let Err(err) = &result {
            tracing::warn!(cause = %err, "moderation request failed");
        }
        result
    }
}

/// Writes one text frame, giving up on a socket blocked past the write timeout.
async fn send(
    socket: &mut HyperWebsocketStream,
    text: Utf8Bytes,
    shared: &Shared,
) -> Result<(), Exit> {
    match tokio::time::timeout(
        shared.config.write_timeout,
        socket.send(Message::Text(text)),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Exit::Gone),
    }
}

/// Sends a close frame with `code`, bounded by the write timeout.
pub(crate) async fn close(socket: &mut HyperWebsocketStream, code: CloseCode, shared: &Shared) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    };
    let _ = tokio::time::timeout(shared.config.write_timeout, socket.close(Some(frame))).await;
}
