//! One WebSocket connection: authentication, then a loop over client frames
//! and room deliveries.
//!
//! The loop is a single task. Requests to the moderator and history are
//! awaited inline, so a client's frames are handled strictly in order (its
//! chat keeps its order, its join completes before its next chat); room
//! deliveries wait meanwhile in the connection's bounded queue
//! ([`crate::send_queue`]).
//!
//! * this module: the connection's state, its loop, and [`Connection::respond`],
//!   which parses a client frame once and hands it to its handler;
//! * [`socket`]: reading and writing the socket, closing it, and liveness
//!   (keepalive pings, the drain notice);
//! * [`authentication`]: the `auth` frame, the token's lifetime and `refresh`;
//! * [`rooms`]: what the connection holds per room, and delivering room
//!   traffic in order, filling gaps from history;
//! * the request handlers, one module each: [`join`] (`join`, `leave`),
//!   [`chat`], [`signal`], [`call`] (`call_join`, `call_leave`, and
//!   `call_moved` when a call's media node goes away).

mod authentication;
mod call;
mod chat;
mod join;
mod rooms;
mod signal;
mod socket;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bootstrap::token_bucket::TokenBucket;
use futures_util::StreamExt;
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::Message;
use schemas::client::{ClientFrame, ErrorFrame, Member, ServerFrame};
use schemas::code::{CloseCode, ErrorCode};
use schemas::event::{Action, Verdict};
use schemas::id::{ConnId, RoomId, UserId};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Shared;
use crate::admission::Entry;
use crate::bus::{BusError, Requester};
use crate::hub::MemberHandle;
use crate::media::Placed;
use crate::send_queue::{self, BusyClock, QueueReceiver};

use self::authentication::{Expiry, authenticate};
use self::rooms::JoinedRooms;
#[cfg(feature = "conformance")]
pub(crate) use self::socket::write;
use self::socket::{CLOSED_WITHOUT_FRAME, ReadAhead, send};
pub(crate) use self::socket::{Exit, close, end, read};

/// What a client is told when the moderator gave no usable answer.
const MODERATOR_UNAVAILABLE: &str = "moderator unavailable; retry";

/// What a client is told when history gave no usable answer.
const HISTORY_UNAVAILABLE: &str = "history unavailable; retry";

/// How a failed request looks to the client.
type Failure = ErrorFrame;

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
        media: shared.bus.media().view().available(),
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
    let (queue, deliveries) = send_queue::channel(shared.config.send_queue_limits());
    let requester = Requester::new(member);
    let handle = MemberHandle::new(queue, requester.chat_slot().clone());
    let reset = shared
        .hub
        .connect(requester.member.conn_id.clone(), handle.clone());
    let connection = Connection {
        requester,
        _user_slot: user_slot,
        expiry,
        invalid_frames: TokenBucket::full(shared.config.invalid_frame_rate(), Instant::now()),
        call_joins: TokenBucket::full(shared.config.call_join_rate(), Instant::now()),
        viewer: verified.viewer,
        calls: HashMap::new(),
        media: shared.bus.media().subscribe(),
        reset,
        rooms: JoinedRooms::new(shared.config.reorder_capacity),
        busy: deliveries.busy_clock(),
        handle,
        heard: Instant::now(),
        shared,
    };
    connection.run(socket, deliveries).instrument(span).await;
}

struct Connection {
    shared: Arc<Shared>,
    /// Who the connection is, and its sticky moderator.
    requester: Requester,
    /// Counts the connection against its user's cap while it lives.
    _user_slot: Entry<UserId>,
    /// When the connection's authentication ends.
    expiry: Expiry,
    /// What is left of its budget for `invalid_message` answers.
    invalid_frames: TokenBucket,
    /// What is left of its budget for `call_join`s.
    call_joins: TokenBucket,
    /// The token's `viewer` claim: its calls may receive media, not send it.
    viewer: bool,
    /// The calls it is in: the media node holding each, by the placement
    /// its join was answered by.
    calls: HashMap<RoomId, Placed>,
    /// Told when media nodes arrive, die or drain, and when a room's call
    /// is placed (see `move_calls`).
    media: tokio::sync::watch::Receiver<Arc<crate::media::NodeView>>,
    /// Joined rooms and what this client has seen of them.
    rooms: JoinedRooms,
    /// Where the time spent awaiting services for the client goes, so its
    /// queued deliveries' wait does not count it (see [`send_queue`]).
    busy: BusyClock,
    handle: MemberHandle,
    /// Cancelled when the gateway resets its connections.
    reset: CancellationToken,
    /// When something last came from the client (a frame, or a pong).
    heard: Instant,
}

impl Connection {
    async fn run(mut self, mut socket: HyperWebsocketStream, mut deliveries: QueueReceiver) {
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
                _ = slow.cancelled() => {
                    tracing::info!("its send queue is over its bytes; closing a slow consumer");
                    Err(Exit::Close(CloseCode::SlowConsumer))
                }
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
        self.shared.hub.disconnect(&self.requester.member.conn_id);
        for room in self.rooms.ids() {
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
        deliveries: &mut QueueReceiver,
        ahead: &mut ReadAhead,
        mut keepalive: Pin<&mut Sleep>,
    ) -> Result<(), Exit> {
        if let Some(message) = ahead.pop() {
            self.in_touch()?;
            return self.on_message(socket, message, ahead).await;
        }
        let gap = self.oldest_gap();
        let in_call = !self.calls.is_empty();
        tokio::select! {
            // Here, between requests, not in `run`'s select: a change of
            // media nodes must not cancel a request under way.
            Ok(()) = self.media.changed(), if in_call => self.move_calls(socket).await,
            Some(delivery) = deliveries.recv() => {
                self.in_touch()?;
                let delivery = delivery.map_err(|overdue| self.overdue(overdue))?;
                self.deliver_queued(socket, delivery, deliveries).await
            }
            () = keepalive.as_mut() => self.keep_alive(socket, keepalive).await,
            () = tokio::time::sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => {
                self.in_touch()?;
                Box::pin(self.fill_gaps(socket)).await
            }
            frame = socket.next() => {
                let message = read(frame)?;
                self.in_touch()?;
                self.on_message(socket, message, ahead).await
            }
        }
    }

    /// Ends the connection with the reset code if the gateway has not been
    /// in touch with the cluster for longer than the gateway timeout (see
    /// [`crate::hub::Hub::in_touch`]): checked after every wake-up, before
    /// the connection delivers, forwards or answers anything, since its
    /// members may be gone from their rooms by now.
    fn in_touch(&self) -> Result<(), Exit> {
        let timeout = self.shared.config.gateway_timeout;
        if self.shared.hub.in_touch(Instant::now(), timeout) {
            return Ok(());
        }
        tracing::warn!("out of touch with the cluster longer than the gateway timeout; closing");
        Err(Exit::Close(CloseCode::Reset))
    }

    /// Ends the connection with the reset code if `refusal` of a chat is
    /// the moderator's `not_in_room` about a room the connection joined:
    /// its seat there was taken away without its leave (another service
    /// took this gateway for dead), and the presence change that says so
    /// has not come, or never will. The client must not take the refusal
    /// for the end of its message: it rejoins and resends instead. Only a
    /// chat's refusal counts: the moderator checks it against the rooms
    /// bucket's leader (`Membership::members_expecting`), where a signal's
    /// check may read a replica that lags behind a join.
    fn still_a_member(&self, refusal: &ErrorFrame) -> Result<(), Exit> {
        if let ErrorFrame {
            code: ErrorCode::NotInRoom,
            room: Some(room),
            ..
        } = refusal
            && self.rooms.contains(room)
        {
            tracing::warn!(%room, "the moderator no longer lists this connection in a room it joined; closing");
            return Err(Exit::Close(CloseCode::Reset));
        }
        Ok(())
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
                let busy = self.busy.begin();
                let respond = Box::pin(self.respond(&text));
                let answer = ahead.while_waiting(socket, respond).await;
                drop(busy);
                match answer?? {
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

    /// The answer to one text frame; `None` when it has none (a relayed
    /// signal); an exit when the connection must end instead. Writes
    /// nothing, so it can run while the socket is read.
    async fn respond(&mut self, text: &str) -> Result<Option<ServerFrame>, Exit> {
        let metrics = &self.shared.metrics;
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                metrics.received("invalid");
                return Ok(Some(ServerFrame::Error(ErrorFrame {
                    code: ErrorCode::InvalidMessage,
                    message: err.message().into(),
                    id: err.id,
                    room: err.room,
                    request: None,
                })));
            }
        };
        let kind = frame.kind();
        metrics.received(kind);
        let reply = match frame {
            ClientFrame::Auth { .. } => Err(ErrorFrame::new(
                ErrorCode::InvalidMessage,
                "already authenticated; send refresh for a new token",
            )),
            ClientFrame::Refresh { token } => self.refresh(&token).await,
            ClientFrame::Ping {} => Ok(ServerFrame::Pong),
            ClientFrame::Ice {} => Ok(ServerFrame::Ice(
                self.shared.ice.servers_for(&self.requester.member.user.id),
            )),
            ClientFrame::CallJoin { room, sdp } => self.call_join(room, sdp).await,
            ClientFrame::CallLeave { room } => {
                self.call_leave(&room);
                return Ok(None);
            }
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
                Ok(()) => return Ok(None),
                Err(error) => Err(error),
            },
            ClientFrame::Chat { room, id, text } => {
                let received = Instant::now();
                let reply = self.chat(room, id, text).await;
                self.shared
                    .metrics
                    .chat_ack
                    .observe(received.elapsed().as_secs_f64());
                if let Err(refusal) = &reply {
                    self.still_a_member(refusal)?;
                }
                reply
            }
        };
        Ok(Some(reply.unwrap_or_else(|error| {
            ServerFrame::Error(error.answering(kind))
        })))
    }

    /// Sends the answer to a client frame. Every `invalid_message` answer
    /// spends the connection's budget for them; past it the connection is
    /// closed, so a client cannot make the gateway answer a flood of junk.
    async fn reply(
        &mut self,
        socket: &mut HyperWebsocketStream,
        frame: ServerFrame,
    ) -> Result<(), Exit> {
        self.in_touch()?;
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

    async fn moderate(&mut self, action: Action) -> Result<Verdict, BusError> {
        let result = self.shared.bus.moderate(&mut self.requester, action).await;
        if let Err(err) = &result {
            tracing::warn!(cause = %err, "moderation request failed");
        }
        result
    }
}

/// Logs a verdict that does not answer the request it came for (a
/// moderator of another version, or a bug): the client is then told the
/// moderator is unavailable, and the log must say why.
fn unexpected(verdict: &Verdict, request: &'static str) {
    tracing::error!(
        ?verdict,
        request,
        "the moderator's verdict does not fit the request"
    );
}
