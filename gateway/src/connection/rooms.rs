//! What a connection holds per room, and delivering room traffic to it:
//! chat released in seq order without duplicates, presence newer than what
//! `joined` listed, and gaps filled from history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::Message;
use schemas::code::CloseCode;
use schemas::id::{JoinId, RoomId, Seq};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::time::Instant;

use super::Connection;
use super::socket::{Exit, write};
use crate::hub::{Delivery, DeliveryKind};
use crate::reorder::{Overflow, Reorder};
use crate::send_queue::QueueReceiver;

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

/// The rooms a connection is in or joining, and what it has seen of each:
/// the one place its per-room state lives.
#[derive(Debug)]
pub(super) struct JoinedRooms {
    views: HashMap<RoomId, RoomView>,
    /// Rooms whose departure is still on its way to a moderator, each told
    /// when it is over (see [`JoinedRooms::departed`]). Finished ones are
    /// dropped on the next insert, so this holds at most one per room the
    /// connection departed while the gateway's departures were under way.
    departing: HashMap<RoomId, oneshot::Receiver<()>>,
    /// Most chat messages held behind a gap, per room.
    max_held: usize,
}

impl JoinedRooms {
    /// No rooms yet; each will hold at most `max_held` messages behind a gap.
    pub(super) fn new(max_held: usize) -> Self {
        Self {
            views: HashMap::new(),
            departing: HashMap::new(),
            max_held,
        }
    }

    /// Notes that `room`'s departure is on its way; `over` is told when it
    /// is over: applied, refused, or given up as the gateway stops.
    pub(super) fn departing(&mut self, room: RoomId, over: oneshot::Receiver<()>) {
        self.departing
            .retain(|_, over| matches!(over.try_recv(), Err(TryRecvError::Empty)));
        self.departing.insert(room, over);
    }

    /// Waits up to `timeout` for this connection's departure of `room`, if
    /// one is on its way; false if it still is. A join must not overtake
    /// it: the leave names the connection, and would undo the join.
    pub(super) async fn departed(&mut self, room: &RoomId, timeout: Duration) -> bool {
        let Some(mut over) = self.departing.remove(room) else {
            return true;
        };
        if tokio::time::timeout(timeout, &mut over).await.is_ok() {
            return true;
        }
        self.departing.insert(room.clone(), over);
        false
    }

    pub(super) fn contains(&self, room: &RoomId) -> bool {
        self.views.contains_key(room)
    }

    pub(super) fn len(&self) -> usize {
        self.views.len()
    }

    /// Every room, to leave them all.
    pub(super) fn ids(&self) -> Vec<RoomId> {
        self.views.keys().cloned().collect()
    }

    /// Records join `attempt` of `room` before anything else happens, so
    /// that however the join ends (even abandoned mid-way) the room is left
    /// on disconnect, under the attempt's name.
    pub(super) fn begin(&mut self, room: &RoomId, attempt: &JoinId) {
        let max_held = self.max_held;
        self.views
            .entry(room.clone())
            .or_insert_with(|| RoomView::new(attempt.clone(), Seq(0), 0, max_held))
            .attempt = attempt.clone();
    }

    /// `room` joined under `attempt`: the client has chat up to `last` and
    /// members as of `revision`.
    pub(super) fn joined(&mut self, room: RoomId, attempt: JoinId, last: Seq, revision: u64) {
        let view = RoomView::new(attempt, last, revision, self.max_held);
        self.views.insert(room, view);
    }

    /// The last join attempt of `room`.
    pub(super) fn attempt(&self, room: &RoomId) -> Option<JoinId> {
        self.views.get(room).map(|view| view.attempt.clone())
    }

    pub(super) fn remove(&mut self, room: &RoomId) {
        self.views.remove(room);
    }

    /// When the oldest gap in any room's chat has waited `timeout`.
    fn oldest_gap(&self, timeout: Duration) -> Option<Instant> {
        self.views
            .values()
            .filter_map(|view| view.chat.gap_since())
            .min()
            .map(|since| since + timeout)
    }

    /// The rooms whose gap has waited `timeout` by `now`, with the last seq
    /// the client has of each.
    fn gaps_due(&self, now: Instant, timeout: Duration) -> Vec<(RoomId, Seq)> {
        self.views
            .iter()
            .filter(|(_, view)| {
                view.chat
                    .gap_since()
                    .is_some_and(|since| since + timeout <= now)
            })
            .map(|(room, view)| (room.clone(), view.chat.last()))
            .collect()
    }
}

/// A room holding more chat behind a gap than allowed must resync.
impl From<Overflow> for Exit {
    fn from(Overflow: Overflow) -> Self {
        Exit::Close(CloseCode::Resync)
    }
}

impl Connection {
    /// Writes `first` and whatever else is already queued, then flushes
    /// once: under load one write carries many frames instead of one each.
    pub(super) async fn deliver_queued(
        &mut self,
        socket: &mut HyperWebsocketStream,
        first: Arc<Delivery>,
        deliveries: &mut QueueReceiver,
    ) -> Result<(), Exit> {
        self.deliver(socket, first).await?;
        while let Some(next) = deliveries.try_recv() {
            let next = next.map_err(|overdue| self.overdue(overdue))?;
            self.deliver(socket, next).await?;
        }
        write(socket.flush(), self.shared.config.write_timeout).await
    }

    /// Buffers a delivery unless the client has it already or it is about
    /// the client itself; chat waits until every earlier seq went out.
    pub(super) async fn deliver(
        &mut self,
        socket: &mut HyperWebsocketStream,
        delivery: Arc<Delivery>,
    ) -> Result<(), Exit> {
        let Some(view) = self.rooms.views.get_mut(&delivery.room) else {
            return Ok(());
        };
        let mut ready = Vec::new();
        match delivery.kind {
            DeliveryKind::Chat { seq, prev } => {
                view.chat
                    .offer(seq, prev, delivery, Instant::now(), &mut ready)?
            }
            DeliveryKind::Presence { revision, .. } if revision <= view.members_revision => {}
            // Its own leave while it still holds the room: a leave it asked
            // for removes the view before any queued delivery is handled,
            // so this one it did not ask for. It is no longer a member
            // (see `Connection::still_a_member`).
            DeliveryKind::Presence { leave: true, .. }
                if delivery.about.as_ref() == Some(&self.requester.member.conn_id) =>
            {
                tracing::warn!(room = %delivery.room, "removed from a room it joined; closing");
                return Err(Exit::Close(CloseCode::Reset));
            }
            DeliveryKind::Presence { .. } | DeliveryKind::Signal => ready.push(delivery),
        }
        for delivery in ready {
            self.feed(socket, &delivery).await?;
        }
        Ok(())
    }

    /// Buffers one frame, unless it is about this client itself.
    pub(super) async fn feed(
        &self,
        socket: &mut HyperWebsocketStream,
        delivery: &Delivery,
    ) -> Result<(), Exit> {
        if delivery.about.as_ref() == Some(&self.requester.member.conn_id) {
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
    pub(super) fn oldest_gap(&self) -> Option<Instant> {
        let timeout = self.shared.config.reorder_timeout;
        self.rooms.oldest_gap(timeout)
    }

    /// Fills timed-out gaps from history. A gap history cannot fill (the
    /// message was trimmed, or history does not answer) ends the connection
    /// with the resync code; the client resumes with `since`.
    pub(super) async fn fill_gaps(
        &mut self,
        socket: &mut HyperWebsocketStream,
    ) -> Result<(), Exit> {
        let timeout = self.shared.config.reorder_timeout;
        let now = Instant::now();
        for (room, last) in self.rooms.gaps_due(now, timeout) {
            let limit = self.shared.config.reorder_capacity;
            // A client that joined the room while it was empty has no seq to
            // count from (a room's first seq is not 1, see room_writer.rs):
            // it needs the room from its first message on, which history
            // answers for `since` 0 unless that message was trimmed.
            let fresh = last == Seq(0);
            let busy = self.busy.begin();
            let fetched = self.shared.bus.backlog(&room, Some(last), limit).await;
            drop(busy);
            let backlog = match fetched {
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
            let Some(view) = self.rooms.views.get_mut(&room) else {
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
}
