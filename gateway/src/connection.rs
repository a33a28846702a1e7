//! One WebSocket connection: authentication, then a loop over client frames
//! and room deliveries.
//!
//! The loop is a single task. Requests to the moderator and history are
//! awaited inline, so a client's frames are handled strictly in order (its
//! chat keeps its order, its join completes before its next chat); room
//! deliveries wait meanwhile in the connection's bounded queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bootstrap::token_bucket::TokenBucket;
use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::error::CapacityError;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use hyper_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use schemas::client::{ClientFrame, ErrorFrame, Member, ServerFrame, SignalKind};
use schemas::code::{CloseCode, ErrorCode};
use schemas::event::{Action, Verdict};
use schemas::id::{ClientMsgId, ConnId, JoinId, ModeratorId, RoomId, Seq, UserId};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Shared;
use crate::admission::Entry;
use crate::auth::{AuthError, Verified};
use crate::departures::Departure;
use crate::hub::{Delivery, DeliveryKind, MemberHandle};
use crate::reorder::{Overflow, Reorder};

/// What a client is told when the moderator gave no usable answer.
const MODERATOR_UNAVAILABLE: &str = "moderator unavailable; retry";

/// What a client is told when history gave no usable answer.
const HISTORY_UNAVAILABLE: &str = "history unavailable; retry";

/// How a failed request looks to the client.
type Failure = ErrorFrame;

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

/// Serves one upgraded socket until it closes.
/// `pending` counts the socket against its address's cap until it has
/// authenticated; from then on it counts against its user's.
pub(crate) async fn serve(
    mut socket: HyperWebsocketStream,
    shared: Arc<Shared>,
    pending: Entry<IpAddr>,
) {
    let verified = authenticate(&mut socket, &shared).await;
    drop(pending);
    let Some(verified) = verified else {
        return;
    };
    let Some(user_slot) = shared.per_user.try_enter(verified.user.id.clone()) else {
        tracing::info!(user = %verified.user.id, "too many connections for one user");
        close(&mut socket, CloseCode::TooManyConnections, &shared).await;
        return;
    };
    let member = Member {
        conn_id: ConnId(nuid::next().to_string()),
        user: verified.user,
    };
    let expiry = Expiry::at(verified.expires_at);
    let span = tracing::info_span!("ws", conn_id = %member.conn_id, user = %member.user.id);
    let welcome = ServerFrame::Welcome {
        conn_id: member.conn_id.clone(),
        user: member.user.clone(),
        gateway: shared.id.clone(),
        limits: shared.limits(),
        expires_in: expiry.seconds_left(),
        ice: shared.ice.servers_for(&member.user.id),
    };
    shared.metrics.authenticated.inc();
    if send(
        &mut socket,
        welcome.to_json().into(),
        shared.config.write_timeout,
    )
    .await
    .is_err()
    {
        shared.metrics.closed(CLOSED_WITHOUT_FRAME);
        return;
    }
    shared.metrics.sent(&welcome);
    let (queue, deliveries) = mpsc::channel(shared.config.send_queue_capacity.max(1));
    let handle = MemberHandle::new(queue);
    let reset = shared.hub.connect(member.conn_id.clone(), handle.clone());
    let connection = Connection {
        member,
        _user_slot: user_slot,
        expiry,
        invalid_frames: TokenBucket::full(shared.config.invalid_frame_rate(), Instant::now()),
        reset,
        rooms: HashMap::new(),
        moderator: None,
        handle,
        heard: Instant::now(),
        shared,
    };
    connection.run(socket, deliveries).instrument(span).await;
}

/// Why a socket did not authenticate.
#[derive(Debug, thiserror::Error)]
enum AuthFailure {
    /// The first frame was something other than `auth`.
    #[error("first frame is not auth")]
    NotAuth,
    /// No frame came within the auth timeout.
    #[error("auth timeout")]
    TimedOut,
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] AuthError),
}

/// Waits for the `auth` frame and verifies it; on failure sends an
/// `unauthorized` error and closes with 4001.
async fn authenticate(socket: &mut HyperWebsocketStream, shared: &Shared) -> Option<Verified> {
    let token = match tokio::time::timeout(shared.config.auth_timeout, next_text(socket)).await {
        Ok(Ok(text)) => match ClientFrame::decode(&text) {
            Ok(ClientFrame::Auth { token }) => {
                shared.metrics.received("auth");
                Ok(token)
            }
            Ok(other) => {
                shared.metrics.received(other.kind());
                Err(AuthFailure::NotAuth)
            }
            Err(_) => {
                shared.metrics.received("invalid");
                Err(AuthFailure::NotAuth)
            }
        },
        Ok(Err(exit)) => {
            end(socket, exit, shared).await;
            return None;
        }
        Err(_) => Err(AuthFailure::TimedOut),
    };
    let user = match token {
        Ok(token) => shared.auth.verify(&token).await.map_err(AuthFailure::from),
        Err(failure) => Err(failure),
    };
    match user {
        Ok(verified) => Some(verified),
        Err(reason) => {
            tracing::info!(%reason, "authentication failed");
            let error = ServerFrame::Error(ErrorFrame::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            ));
            if send(socket, error.to_json().into(), shared.config.write_timeout)
                .await
                .is_ok()
            {
                shared.metrics.sent(&error);
                close(socket, CloseCode::Unauthorized, shared).await;
            } else {
                shared.metrics.closed(CLOSED_WITHOUT_FRAME);
            }
            None
        }
    }
}

/// The next text message; `Err` when the socket closes or fails first.
async fn next_text(socket: &mut HyperWebsocketStream) -> Result<Utf8Bytes, Exit> {
    loop {
        match read(socket.next().await)? {
            Message::Text(text) => return Ok(text),
            Message::Binary(_) => return Ok(Utf8Bytes::from_static("")),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Err(Exit::ClientClosed),
        }
    }
}

/// What a connection has seen of a room, to deliver its chat in order and
/// drop duplicates.
#[derive(Debug)]
struct RoomView {
    /// Chat released in seq order; its `last` is the highest seq the client has.
    chat: Reorder<Arc<Delivery>>,
    /// The membership revision its `joined` member list reflected.
    members_revision: u64,
    /// The last join attempt; leaving names it, so that a join the gateway
    /// gave up on cannot be applied after the leave.
    attempt: JoinId,
}

impl RoomView {
    /// A view of join `attempt`, whose client has chat up to `last` and
    /// members as of `revision`.
    fn new(attempt: JoinId, last: Seq, revision: u64, max_held: usize) -> Self {
        Self {
            chat: Reorder::new(last, max_held),
            members_revision: revision,
            attempt,
        }
    }
}

/// A room holding more chat behind a gap than allowed must resync.
impl From<Overflow> for Exit {
    fn from(Overflow: Overflow) -> Self {
        Exit::Close(CloseCode::Resync)
    }
}

struct Connection {
    shared: Arc<Shared>,
    member: Member,
    /// Counts the connection against its user's cap while it lives.
    _user_slot: Entry<UserId>,
    /// When the connection's authentication ends.
    expiry: Expiry,
    /// What is left of its budget for `invalid_message` answers.
    invalid_frames: TokenBucket,
    /// Joined rooms and what this client has seen of them.
    rooms: HashMap<RoomId, RoomView>,
    /// The moderator this connection's requests stick to.
    moderator: Option<ModeratorId>,
    handle: MemberHandle,
    /// Cancelled when the gateway resets its connections.
    reset: CancellationToken,
    /// When something last came from the client (a frame, or a pong).
    heard: Instant,
}

impl Connection {
    async fn run(
        mut self,
        mut socket: HyperWebsocketStream,
        mut deliveries: mpsc::Receiver<Arc<Delivery>>,
    ) {
        tracing::debug!("connected");
        let shutdown = self.shared.shutdown.clone();
        let draining = self.shared.draining.clone();
        let mut told_to_move = false;
        let slow = self.handle.slow.clone();
        let replaced = self.handle.replaced.clone();
        let reset = self.reset.clone();
        let mut ahead = ReadAhead::default();
        let expired = tokio::time::sleep_until(self.expiry.deadline);
        tokio::pin!(expired);
        // One timer for the connection's life, moved only when it fires
        // (see `keep_alive`), so a busy connection's steps do not each
        // register a timer of their own.
        let keepalive = tokio::time::sleep(self.idle_timeout() / 3);
        tokio::pin!(keepalive);
        let exit = loop {
            // Shutdown and overflow interrupt whatever step is under way: a
            // socket write blocked on a full TCP buffer, or a request. Both
            // are safe to abandon: tungstenite keeps a partly written frame
            // in its buffer, and an unacked chat is resent by the client.
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(Exit::Close(CloseCode::ShuttingDown)),
                _ = slow.cancelled() => Err(Exit::Close(CloseCode::SlowConsumer)),
                _ = replaced.cancelled() => Err(Exit::Close(CloseCode::Replaced)),
                _ = reset.cancelled() => Err(Exit::Close(CloseCode::Reset)),
                () = &mut expired => Err(Exit::Close(CloseCode::TokenExpired)),
                () = draining.cancelled(), if !told_to_move => {
                    told_to_move = true;
                    self.tell_to_move(&mut socket).await
                }
                step = self.step(&mut socket, &mut deliveries, &mut ahead, keepalive.as_mut()) => step,
            };
            if let Err(exit) = step {
                break exit;
            }
            if expired.deadline() != self.expiry.deadline {
                expired.as_mut().reset(self.expiry.deadline);
            }
        };
        self.shared.hub.disconnect(&self.member.conn_id);
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.depart(room).await;
        }
        end(&mut socket, exit, &self.shared).await;
        tracing::debug!("disconnected");
    }

    /// Handles the next delivery or client frame, whichever comes first;
    /// frames read ahead while an earlier request was under way go first.
    async fn step(
        &mut self,
        socket: &mut HyperWebsocketStream,
        deliveries: &mut mpsc::Receiver<Arc<Delivery>>,
        ahead: &mut ReadAhead,
        mut keepalive: Pin<&mut Sleep>,
    ) -> Result<(), Exit> {
        if let Some(message) = ahead.pop() {
            return self.on_message(socket, message, ahead).await;
        }
        let gap = self.oldest_gap();
        tokio::select! {
            Some(delivery) = deliveries.recv() => self.deliver_queued(socket, delivery, deliveries).await,
            () = keepalive.as_mut() => self.keep_alive(socket, keepalive).await,
            () = tokio::time::sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => {
                Box::pin(self.fill_gaps(socket)).await
            }
            frame = socket.next() => self.on_message(socket, read(frame)?, ahead).await,
        }
    }

    /// Handles one message from the client.
    async fn on_message(
        &mut self,
        socket: &mut HyperWebsocketStream,
        message: Message,
        ahead: &mut ReadAhead,
    ) -> Result<(), Exit> {
        self.heard = Instant::now();
        match message {
            Message::Text(text) => {
                // Boxed: request handling is a large future, and inlining it
                // would make every idle connection carry its size.
                let respond = Box::pin(self.respond(&text));
                let reply = ahead.while_waiting(socket, respond).await?;
                match reply {
                    Some(frame) => self.reply(socket, frame).await,
                    None => Ok(()),
                }
            }
            Message::Binary(_) => {
                self.shared.metrics.received("binary");
                let error = ErrorFrame::new(
                    ErrorCode::InvalidMessage,
                    "binary frames are not part of the protocol",
                );
                self.reply(socket, ServerFrame::Error(error)).await
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(_) => Err(Exit::ClientClosed),
        }
    }

    /// Runs when the keepalive timer fires: pings a client that has been
    /// silent for a third of the idle timeout, and closes one silent for all
    /// of it (4107); the timer then fires again a third later, or a third
    /// after the client was last heard. A client that vanished without
    /// closing (its network dropped) leaves a half-open socket that nothing
    /// else would notice in a quiet room: it would hold its room seats and a
    /// slot of its user's connection cap indefinitely. Browsers answer pings
    /// by themselves.
    async fn keep_alive(
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
    async fn tell_to_move(&mut self, socket: &mut HyperWebsocketStream) -> Result<(), Exit> {
        let window = self.shared.config.drain_timeout * 3 / 4;
        let after = bootstrap::backoff::spread(window);
        let frame = ServerFrame::Draining {
            reconnect_in_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        };
        self.reply(socket, frame).await
    }

    /// `gateway.idle_timeout`, at least a second: less would ping in a loop.
    fn idle_timeout(&self) -> Duration {
        self.shared.config.idle_timeout.max(Duration::from_secs(1))
    }

    /// Writes `first` and whatever else is already queued, then flushes
    /// once: under load one write carries many frames instead of one each.
    async fn deliver_queued(
        &mut self,
        socket: &mut HyperWebsocketStream,
        first: Arc<Delivery>,
        deliveries: &mut mpsc::Receiver<Arc<Delivery>>,
    ) -> Result<(), Exit> {
        self.deliver(socket, first).await?;
        while let Ok(next) = deliveries.try_recv() {
            self.deliver(socket, next).await?;
        }
        write(socket.flush(), self.shared.config.write_timeout).await
    }

    /// Buffers a delivery unless the client has it already or it is about
    /// the client itself; chat waits until every earlier seq went out.
    async fn deliver(
        &mut self,
        socket: &mut HyperWebsocketStream,
        delivery: Arc<Delivery>,
    ) -> Result<(), Exit> {
        let Some(view) = self.rooms.get_mut(&delivery.room) else {
            return Ok(());
        };
        let mut ready = Vec::new();
        match delivery.kind {
            DeliveryKind::Chat { seq, prev } => {
                view.chat
                    .offer(seq, prev, delivery, Instant::now(), &mut ready)?
            }
            DeliveryKind::Presence(revision) if revision <= view.members_revision => {}
            DeliveryKind::Presence(_) | DeliveryKind::Signal => ready.push(delivery),
        }
        for delivery in ready {
            self.feed(socket, &delivery).await?;
        }
        Ok(())
    }

    /// Buffers one frame, unless it is about this client itself.
    async fn feed(
        &self,
        socket: &mut HyperWebsocketStream,
        delivery: &Delivery,
    ) -> Result<(), Exit> {
        if delivery.about.as_ref() == Some(&self.member.conn_id) {
            return Ok(());
        }
        write(
            socket.feed(Message::Text(delivery.frame.clone())),
            self.shared.config.write_timeout,
        )
        .await?;
        self.shared.metrics.delivered(delivery.kind);
        Ok(())
    }

    /// When the oldest gap in any room's chat times out.
    fn oldest_gap(&self) -> Option<Instant> {
        let timeout = self.shared.config.reorder_timeout;
        self.rooms
            .values()
            .filter_map(|view| view.chat.gap_since())
            .min()
            .map(|since| since + timeout)
    }

    /// Fills timed-out gaps from history. A gap history cannot fill (the
    /// message was trimmed, or history does not answer) ends the connection
    /// with the resync code; the client resumes with `since`.
    async fn fill_gaps(&mut self, socket: &mut HyperWebsocketStream) -> Result<(), Exit> {
        let timeout = self.shared.config.reorder_timeout;
        let now = Instant::now();
        let due: Vec<(RoomId, Seq)> = self
            .rooms
            .iter()
            .filter(|(_, view)| {
                view.chat
                    .gap_since()
                    .is_some_and(|since| since + timeout <= now)
            })
            .map(|(room, view)| (room.clone(), view.chat.last()))
            .collect();
        for (room, last) in due {
            let limit = self.shared.config.send_queue_capacity;
            // A client that joined the room while it was empty has no seq to
            // count from (a room's first seq is not 1, see room_writer.rs):
            // it needs the room from its first message on, which history
            // answers for `since` 0 unless that message was trimmed.
            let fresh = last == Seq(0);
            let backlog = match self.shared.bus.backlog(&room, Some(last), limit).await {
                Ok(backlog) if !backlog.truncated => backlog,
                Ok(_) => {
                    tracing::warn!(%room, %last, "missed messages were trimmed; resync");
                    return Err(Exit::Close(CloseCode::Resync));
                }
                Err(err) => {
                    tracing::warn!(cause = %err, %room, "cannot fill a gap; resync");
                    return Err(Exit::Close(CloseCode::Resync));
                }
            };
            tracing::debug!(%room, %last, fetched = backlog.messages.len(), "filling a gap from history");
            let Some(view) = self.rooms.get_mut(&room) else {
                continue;
            };
            if let (true, Some(first)) = (fresh, backlog.messages.first()) {
                view.chat.restart_before(first.seq);
            }
            let mut ready = Vec::new();
            for chat in backlog.messages {
                let seq = chat.seq;
                let delivery = Arc::new(Delivery::chat(&room, &chat, None));
                view.chat.offer(seq, None, delivery, now, &mut ready)?;
            }
            if view.chat.gap_since().is_some() {
                tracing::warn!(%room, last = %view.chat.last(), "history lacks a missed message; resync");
                return Err(Exit::Close(CloseCode::Resync));
            }
            for delivery in ready {
                self.feed(socket, &delivery).await?;
            }
        }
        write(socket.flush(), self.shared.config.write_timeout).await
    }

    /// The answer to one text frame; `None` when it has none (a relayed
    /// signal). Writes nothing, so it can run while the socket is read.
    async fn respond(&mut self, text: &str) -> Option<ServerFrame> {
        let metrics = &self.shared.metrics;
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                metrics.received("invalid");
                return Some(ServerFrame::Error(ErrorFrame {
                    code: ErrorCode::InvalidMessage,
                    message: err.message().into(),
                    id: err.id,
                    room: err.room,
                }));
            }
        };
        metrics.received(frame.kind());
        let reply = match frame {
            ClientFrame::Auth { .. } => Err(ErrorFrame::new(
                ErrorCode::InvalidMessage,
                "already authenticated; send refresh for a new token",
            )),
            ClientFrame::Refresh { token } => self.refresh(&token).await,
            ClientFrame::Ping {} => Ok(ServerFrame::Pong),
            ClientFrame::Ice {} => Ok(ServerFrame::Ice(
                self.shared.ice.servers_for(&self.member.user.id),
            )),
            ClientFrame::Join {
                room,
                since,
                replaces,
            } => self.join(room, since, replaces).await,
            ClientFrame::Leave { room } => self.leave(room).await,
            ClientFrame::Signal {
                room,
                to,
                kind,
                data,
                ..
            } => match self.signal(room, to, kind, data).await {
                Ok(()) => return None,
                Err(error) => Err(error),
            },
            ClientFrame::Chat { room, id, text } => {
                let received = Instant::now();
                let reply = self.chat(room, id, text).await;
                self.shared
                    .metrics
                    .chat_ack
                    .observe(received.elapsed().as_secs_f64());
                reply
            }
        };
        Some(reply.unwrap_or_else(ServerFrame::Error))
    }

    /// Sends the answer to a client frame. Every `invalid_message` answer
    /// spends the connection's budget for them; past it the connection is
    /// closed, so a client cannot make the gateway answer a flood of junk.
    async fn reply(
        &mut self,
        socket: &mut HyperWebsocketStream,
        frame: ServerFrame,
    ) -> Result<(), Exit> {
        if let ServerFrame::Error(ErrorFrame {
            code: ErrorCode::InvalidMessage,
            ..
        }) = frame
        {
            let rate = self.shared.config.invalid_frame_rate();
            if !self.invalid_frames.try_take(rate, Instant::now()) {
                tracing::info!("too many invalid frames");
                return Err(Exit::Close(CloseCode::InvalidFrames));
            }
        }
        send(
            socket,
            frame.to_json().into(),
            self.shared.config.write_timeout,
        )
        .await?;
        self.shared.metrics.sent(&frame);
        Ok(())
    }

    /// Joins: subscribe, then the moderator's admission (capacity, members),
    /// then the backlog, in that order so that no chat message or presence
    /// change falls between what `joined` lists and what arrives live.
    async fn join(
        &mut self,
        room: RoomId,
        since: Option<Seq>,
        replaces: Option<ConnId>,
    ) -> Result<ServerFrame, Failure> {
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
        // Recorded before the hub knows the member, so that however this
        // join ends (even abandoned mid-way), the room is left on disconnect.
        let max_held = self.shared.config.send_queue_capacity;
        let attempt = JoinId(nuid::next().to_string());
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| RoomView::new(attempt.clone(), Seq(0), 0, max_held))
            .attempt = attempt.clone();
        let conn_id = self.member.conn_id.clone();
        if let Err(err) = self
            .shared
            .hub
            .join(&room, conn_id, self.handle.clone())
            .await
        {
            tracing::warn!(cause = %err, %room, "join failed");
            self.forget(&room);
            return Err(fail(
                ErrorCode::Unavailable,
                "cannot subscribe to room; retry",
            ));
        }
        let join = Action::Join {
            room: room.clone(),
            attempt: attempt.clone(),
            // Naming itself would only make the connection give up its own seat.
            replaces: replaces.filter(|old| *old != self.member.conn_id),
        };
        let (members, revision) = match self.moderate(join).await {
            Ok(Verdict::Admitted { members, revision }) => (members, revision),
            Ok(Verdict::Rejected { code, message }) => {
                self.forget(&room);
                return Err(fail(code, &message));
            }
            Ok(_) | Err(_) => {
                // The join may have been admitted without our hearing of it.
                self.depart(room.clone()).await;
                return Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE));
            }
        };
        self.shared.hub.admitted(&room, members.clone(), revision);
        let limit = self.shared.config.history_limit;
        let backlog = match self.shared.bus.backlog(&room, since, limit).await {
            Ok(backlog) => backlog,
            Err(err) => {
                tracing::warn!(cause = %err, %room, "backlog unavailable");
                self.depart(room.clone()).await;
                return Err(fail(ErrorCode::Unavailable, HISTORY_UNAVAILABLE));
            }
        };
        self.rooms.insert(
            room.clone(),
            RoomView::new(attempt, backlog.last_seq, revision, max_held),
        );
        Ok(ServerFrame::Joined {
            room,
            members: members.into_iter().map(|m| m.member).collect(),
            history: backlog.messages,
            last_seq: backlog.last_seq,
            truncated: backlog.truncated,
        })
    }

    /// Extends the connection's authentication to a fresh token's `exp`.
    /// The token must name the same user; a refused one changes nothing, and
    /// the connection still ends at the current token's `exp`.
    async fn refresh(&mut self, token: &str) -> Result<ServerFrame, Failure> {
        let refused = |message: &str| ErrorFrame::new(ErrorCode::Unauthorized, message);
        let verified = match self.shared.auth.verify(token).await {
            Ok(verified) => verified,
            Err(reason) => {
                tracing::info!(%reason, "refresh refused");
                return Err(refused("token refused"));
            }
        };
        if verified.user.id != self.member.user.id {
            tracing::warn!(other = %verified.user.id, "refresh with another user's token");
            return Err(refused("the token is for another user"));
        }
        if verified.expires_at <= self.expiry.exp {
            return Err(refused(
                "the token does not expire later than the current one",
            ));
        }
        self.expiry = Expiry::at(verified.expires_at);
        Ok(ServerFrame::Refreshed {
            expires_in: self.expiry.seconds_left(),
        })
    }

    /// Leaves on the moderator first, so a rejoin right after cannot be
    /// undone by a late leave; if the moderator cannot be reached, the
    /// departure is retried in the background.
    async fn leave(&mut self, room: RoomId) -> Result<ServerFrame, Failure> {
        if !self.rooms.contains_key(&room) {
            return Err(ErrorFrame::new(ErrorCode::NotInRoom, "not in this room").in_room(&room));
        }
        let leave = Action::Leave {
            room: room.clone(),
            attempt: self.rooms.get(&room).map(|view| view.attempt.clone()),
        };
        match self.moderate(leave).await {
            Ok(Verdict::Done) => self.forget(&room),
            _ => self.depart(room.clone()).await,
        }
        Ok(ServerFrame::Left { room })
    }

    /// Leaves `room` here and queues the moderator's side of it.
    async fn depart(&mut self, room: RoomId) {
        let attempt = self.rooms.get(&room).map(|view| view.attempt.clone());
        self.forget(&room);
        let departure = Departure {
            member: self.member.clone(),
            room,
            attempt,
            moderator: self.moderator.clone(),
        };
        self.shared.departures.send(departure).await;
    }

    /// Leaves `room` locally and in the hub.
    fn forget(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        self.shared.hub.leave(room, &self.member.conn_id);
    }

    /// Relays a signal; success has no reply, the target simply gets it.
    async fn signal(
        &mut self,
        room: RoomId,
        to: ConnId,
        kind: SignalKind,
        data: serde_json::Value,
    ) -> Result<(), Failure> {
        let fail = |code, message: &str| ErrorFrame::new(code, message).in_room(&room);
        if !self.rooms.contains_key(&room) {
            return Err(fail(ErrorCode::NotInRoom, "join the room first"));
        }
        let action = Action::Signal {
            room: room.clone(),
            to,
            signal: kind,
            data,
        };
        match self.moderate(action).await {
            Ok(Verdict::Relayed) => Ok(()),
            Ok(Verdict::Rejected { code, message }) => Err(fail(code, &message)),
            Ok(_) | Err(_) => Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE)),
        }
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
        let sent = self
            .shared
            .bus
            .chat(
                &mut self.moderator,
                &self.member,
                &self.handle.chat,
                &room,
                &id,
                &text,
            )
            .await;
        if let Err(err) = &sent {
            tracing::warn!(cause = %err, "chat request failed");
        }
        match sent {
            Ok(Verdict::Stored { seq, text }) => Ok(ServerFrame::Ack {
                id,
                room,
                seq,
                text,
            }),
            Ok(Verdict::Rejected { code, message }) => Err(fail(code, &message)),
            Ok(_) | Err(_) => Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE)),
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

/// What `cavlo_gateway_closed_total` counts for a connection that ended
/// without a close frame: the code a browser reports for it.
const CLOSED_WITHOUT_FRAME: u16 = 1006;

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

/// When a connection's token expires, on this process's clock.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    deadline: Instant,
    /// The token's `exp`, seconds since the Unix epoch.
    exp: u64,
}

impl Expiry {
    /// The moment `exp` (seconds since the Unix epoch) comes.
    fn at(exp: u64) -> Self {
        let now_ms = schemas::time::now_ms();
        // Capped: an `Instant` cannot hold an arbitrarily far future, and a
        // token forged with a huge `exp` must not overflow it.
        let left = Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms))
            .min(Duration::from_secs(10 * 365 * 24 * 3600));
        Self {
            deadline: Instant::now() + left,
            exp,
        }
    }

    /// Whole seconds left, rounded down, as the client is told.
    fn seconds_left(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

/// Writes one text frame and flushes it.
async fn send(
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
struct ReadAhead {
    frames: std::collections::VecDeque<Message>,
    bytes: usize,
}

impl ReadAhead {
    fn pop(&mut self) -> Option<Message> {
        let message = self.frames.pop_front()?;
        self.bytes -= message.len();
        Some(message)
    }

    /// Runs `work` while reading the socket ahead: a close (or a failed
    /// socket) ends the connection at once and abandons `work`, which is
    /// safe: an unanswered chat is resent by the client and stored once, and
    /// a join is undone on disconnect.
    async fn while_waiting<T>(
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
