//! The gateway's registry of its connections and of the rooms that have
//! local members, and the NATS subscriptions that feed them.
//!
//! A room is subscribed (`cavlo.deliver.<room>.*`: chat and presence) while
//! at least one local connection is in it, and unsubscribed as soon as the
//! last one leaves, so a gateway only receives traffic for rooms it serves.
//! Each delivery is serialized to JSON once per room and shared by all its
//! local members. Signals arrive on the gateway's own subject and go to one
//! connection, and so do moderators' replies to chat; a chat's own delivery
//! answers its sender's wait (see [`crate::chat_acks`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hyper_tungstenite::tungstenite::Utf8Bytes;
use schemas::client::{ChatMessage, PresenceEvent, ServerFrame};
use schemas::event::{self, PresenceChange, RoomMember, SignalDelivery};
use schemas::id::{ConnId, GatewayId, RoomId, Seq};
use schemas::subject;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat_acks::ChatSlot;
use crate::send_queue::QueueSender;

/// A frame ready to write to a member's socket.
#[derive(Debug)]
pub struct Delivery {
    /// The room it concerns.
    pub room: RoomId,
    /// What it is, with what orders it.
    pub kind: DeliveryKind,
    /// The connection it is about, which does not get it (its own chat
    /// message, its own join).
    pub about: Option<ConnId>,
    /// The frame, serialized once.
    pub frame: Utf8Bytes,
}

impl Delivery {
    /// A chat message of `room`, live or fetched from history, with the
    /// seq stored right before it when known.
    pub fn chat(room: &RoomId, chat: &ChatMessage, prev: Option<Seq>) -> Self {
        Delivery {
            room: room.clone(),
            kind: DeliveryKind::Chat {
                seq: chat.seq,
                prev,
            },
            about: Some(chat.from.conn_id.clone()),
            frame: ServerFrame::chat_json(chat).into(),
        }
    }
}

/// What a delivery is, and what the connection uses to drop duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A chat message; delivered in `seq` order, dropped if the connection
    /// has it already. `prev`, the seq stored right before it, comes with
    /// messages the stream republished (not with history fills, nor with
    /// an older version's moderator announces): `Seq(0)` marks the room's
    /// first message.
    Chat {
        /// Its seq.
        seq: Seq,
        /// The seq stored right before it, if known.
        prev: Option<Seq>,
    },
    /// A membership change; dropped if the `joined` member list already
    /// included it (revision at or below the join's).
    Presence {
        /// The membership revision it leaves the room at.
        revision: u64,
        /// Whether a member left (or was removed).
        leave: bool,
    },
    /// A signal for this connection.
    Signal,
}

/// How the hub reaches one connection.
#[derive(Clone, Debug)]
pub struct MemberHandle {
    /// The connection's send queue.
    pub queue: QueueSender,
    /// Cancelled when the queue overflows: the connection must close as slow.
    pub slow: CancellationToken,
    /// Cancelled when a newer connection of the same user took this one's
    /// seat in a room: it must close, as it is no longer a member there.
    pub replaced: CancellationToken,
    /// The chat the connection waits for an answer to.
    pub chat: ChatSlot,
}

impl MemberHandle {
    /// A handle for a connection whose send queue is `queue` and whose
    /// chat waits in `chat`.
    pub fn new(queue: QueueSender, chat: ChatSlot) -> Self {
        Self {
            queue,
            slow: CancellationToken::new(),
            replaced: CancellationToken::new(),
            chat,
        }
    }

    /// Queues `delivery`, never waiting: a full queue flags the connection
    /// slow, and it closes and resumes from its last seq.
    fn offer(&self, delivery: Arc<Delivery>) {
        if !self.queue.offer(delivery) {
            self.slow.cancel();
        }
    }
}

/// Subscribing to a room's or the gateway's subject failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe: {0}")]
pub struct SubscribeError(#[from] async_nats::SubscribeError);

/// The local registry.
pub struct Hub {
    client: async_nats::Client,
    rooms: Rooms,
    connections: Mutex<HashMap<ConnId, MemberHandle>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled by [`Hub::reset`], then replaced.
    reset: Mutex<CancellationToken>,
    /// When the hub was made: `in_touch_at` counts from it.
    epoch: Instant,
    /// When the cluster task last found this gateway in touch with the
    /// cluster, in ms since `epoch` (see [`Hub::in_touch`]). An atomic, not
    /// a lock: every connection reads it at every wake-up.
    in_touch_at: AtomicU64,
}

/// Shared with each room's fan-out task. A std mutex: every critical
/// section is a few map operations and never awaits.
type Rooms = Arc<Mutex<HashMap<RoomId, LocalRoom>>>;

struct LocalRoom {
    /// Local members and how to reach them.
    locals: HashMap<ConnId, MemberHandle>,
    /// Every member on every gateway, as of `revision`.
    members: Vec<RoomMember>,
    revision: u64,
    /// Set once the room's subscription is in place; concurrent joiners wait
    /// on it, so nobody reads the backlog before the subscription exists.
    subscribed: Arc<OnceCell<()>>,
    /// Stops the room's fan-out task (and so unsubscribes).
    stop: CancellationToken,
}

impl LocalRoom {
    fn update(&mut self, members: Vec<RoomMember>, revision: u64) {
        if revision >= self.revision {
            self.members = members;
            self.revision = revision;
        }
    }
}

impl Hub {
    /// An empty registry on `client`.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            connections: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            reset: Mutex::new(CancellationToken::new()),
            epoch: Instant::now(),
            in_touch_at: AtomicU64::new(0),
        }
    }

    /// Makes `conn` reachable for signals. The token returned is cancelled
    /// when the gateway resets its connections (see [`Hub::reset`]).
    pub fn connect(&self, conn: ConnId, handle: MemberHandle) -> CancellationToken {
        self.connections
            .lock()
            .expect("hub lock poisoned")
            .insert(conn, handle);
        self.reset.lock().expect("hub lock poisoned").clone()
    }

    /// Tells every connection open now to close with the reset code: after
    /// this gateway was out of touch with the cluster, the others may have
    /// removed its members and given their seats away, so each client
    /// rejoins. Connections made afterwards are not affected.
    pub fn reset(&self) {
        let old = std::mem::take(&mut *self.reset.lock().expect("hub lock poisoned"));
        old.cancel();
    }

    /// The cluster task found this gateway in touch with the cluster at
    /// `now` (NATS connected, no pause since its last check).
    pub fn touched(&self, now: Instant) {
        let at = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.in_touch_at.fetch_max(at, Ordering::Relaxed);
    }

    /// Whether this gateway was last found in touch within `timeout` before
    /// `now`. A connection asks before it delivers or forwards anything:
    /// after a pause (SIGSTOP, a frozen VM, starvation) or a cut longer than
    /// the timeout, the others may have removed its members, and the
    /// cluster task, which would reset it, may not have run yet.
    pub fn in_touch(&self, now: Instant, timeout: Duration) -> bool {
        let at = self.epoch + Duration::from_millis(self.in_touch_at.load(Ordering::Relaxed));
        now.saturating_duration_since(at) <= timeout
    }

    /// Forgets `conn` (it closed).
    pub fn disconnect(&self, conn: &ConnId) {
        self.connections
            .lock()
            .expect("hub lock poisoned")
            .remove(conn);
    }

    /// Adds `conn` to `room`, subscribing the room first if it is new here.
    /// When this returns, every chat and presence change announced from now
    /// on reaches the member's queue, so the caller can safely ask the
    /// moderator and read the backlog next.
    pub async fn join(
        &self,
        room: &RoomId,
        conn: ConnId,
        handle: MemberHandle,
    ) -> Result<(), SubscribeError> {
        let (subscribed, stop) = {
            let mut rooms = self.rooms.lock().expect("hub lock poisoned");
            let local = rooms.entry(room.clone()).or_insert_with(|| LocalRoom {
                locals: HashMap::new(),
                members: Vec::new(),
                revision: 0,
                subscribed: Arc::new(OnceCell::new()),
                stop: self.shutdown.child_token(),
            });
            local.locals.insert(conn.clone(), handle);
            (local.subscribed.clone(), local.stop.clone())
        };
        let result = subscribed
            .get_or_try_init(|| self.subscribe(room, stop))
            .await;
        if let Err(err) = result {
            self.leave(room, &conn);
            return Err(err);
        }
        Ok(())
    }

    /// Records a member list the moderator returned for a join.
    pub fn admitted(&self, room: &RoomId, members: Vec<RoomMember>, revision: u64) {
        if let Some(local) = self.rooms.lock().expect("hub lock poisoned").get_mut(room) {
            local.update(members, revision);
        }
    }

    /// Removes `conn` from `room`; the last one out unsubscribes the room.
    pub fn leave(&self, room: &RoomId, conn: &ConnId) {
        let mut rooms = self.rooms.lock().expect("hub lock poisoned");
        if let Some(local) = rooms.get_mut(room) {
            local.locals.remove(conn);
            if local.locals.is_empty() {
                local.stop.cancel();
                rooms.remove(room);
            }
        }
    }

    /// Rooms with local members.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().expect("hub lock poisoned").len()
    }

    /// Memberships of local connections, over all rooms.
    pub fn local_member_count(&self) -> usize {
        let rooms = self.rooms.lock().expect("hub lock poisoned");
        rooms.values().map(|room| room.locals.len()).sum()
    }

    /// `(room, gateway)` pairs where this gateway's rooms list members of a
    /// gateway that `is_dead`: someone must remove them and tell the others.
    pub fn members_of_dead_gateways(
        &self,
        is_dead: impl Fn(&GatewayId) -> bool,
    ) -> Vec<(RoomId, GatewayId)> {
        let rooms = self.rooms.lock().expect("hub lock poisoned");
        let mut found = Vec::new();
        for (room, local) in rooms.iter() {
            for member in &local.members {
                let pair = (room.clone(), member.gateway.clone());
                if is_dead(&member.gateway) && !found.contains(&pair) {
                    found.push(pair);
                }
            }
        }
        found
    }

    /// Subscribes to the signals for this gateway's connections and routes
    /// them until shutdown.
    pub async fn route_signals(
        self: &Arc<Self>,
        gateway: &GatewayId,
    ) -> Result<(), SubscribeError> {
        let subscriber = self.client.subscribe(subject::signals(gateway)).await?;
        self.route(subscriber, Hub::deliver_signal);
        Ok(())
    }

    /// Subscribes to the moderators' replies to this gateway's chat, under
    /// `prefix` (see [`subject::chat_reply`]), and hands each to its
    /// connection until shutdown.
    pub async fn route_chat_replies(self: &Arc<Self>, prefix: &str) -> Result<(), SubscribeError> {
        let subscriber = self.client.subscribe(subject::chat_replies(prefix)).await?;
        self.route(subscriber, |hub, msg| {
            if let Some((conn, attempt)) = subject::parse_chat_reply(&msg.subject)
                && let Some(handle) = hub.connection(&conn)
            {
                handle.chat.replied(attempt, msg);
            }
        });
        Ok(())
    }

    /// Stops every subscription and waits for the tasks.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn subscribe(
        &self,
        room: &RoomId,
        stop: CancellationToken,
    ) -> Result<(), SubscribeError> {
        let subscriber = self
            .client
            .subscribe(subject::room_deliveries(room))
            .await?;
        self.tasks
            .spawn(fan_out(room.clone(), subscriber, stop, self.rooms.clone()));
        Ok(())
    }

    /// Hands each message on `subscriber` to `handle` until shutdown, in a
    /// task of the hub's.
    fn route(
        self: &Arc<Self>,
        mut subscriber: async_nats::Subscriber,
        handle: impl Fn(&Hub, async_nats::Message) + Send + 'static,
    ) {
        let hub = self.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = hub.shutdown.cancelled() => break,
                    msg = subscriber.next() => match msg {
                        Some(msg) => handle(&hub, msg),
                        None => break,
                    },
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
    }

    /// How to reach local connection `conn`, if it is still here.
    fn connection(&self, conn: &ConnId) -> Option<MemberHandle> {
        self.connections
            .lock()
            .expect("hub lock poisoned")
            .get(conn)
            .cloned()
    }

    /// Queues a signal for the connection it is for.
    fn deliver_signal(&self, msg: async_nats::Message) {
        let signal: SignalDelivery = match event::decode(&msg.payload) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(cause = %err, "dropping malformed signal");
                return;
            }
        };
        let Some(target) = self.connection(&signal.to) else {
            tracing::debug!(to = %signal.to, "signal for a connection that is gone");
            return;
        };
        let frame = ServerFrame::Signal {
            room: signal.room.clone(),
            from: signal.from.conn_id,
            user: signal.from.user,
            kind: signal.signal,
            data: signal.data,
        };
        target.offer(Arc::new(Delivery {
            room: signal.room,
            kind: DeliveryKind::Signal,
            about: None,
            frame: frame.to_json().into(),
        }));
    }
}

/// Forwards one room's chat and presence to its local members until `stop`.
async fn fan_out(
    room: RoomId,
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
    rooms: Rooms,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = subscriber.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let is_chat = msg.subject.as_str().ends_with(subject::CHAT_TOKEN);
        let decoded = if is_chat {
            chat_delivery(&room, &msg)
        } else {
            presence_delivery(&room, &msg.payload)
        };
        let Decoded {
            delivery,
            membership: snapshot,
            chat,
        } = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                tracing::warn!(cause = %err, %room, "dropping malformed delivery");
                continue;
            }
        };
        let delivery = Arc::new(delivery);
        let mut rooms = rooms.lock().expect("hub lock poisoned");
        let Some(local) = rooms.get_mut(&room) else {
            break;
        };
        // The sender's gateway acks the sender from its own delivery, once
        // the rooms lock is released.
        let sender = chat.as_ref().and_then(|chat| {
            local
                .locals
                .get(&chat.from.conn_id)
                .map(|handle| handle.chat.clone())
        });
        if let Some(snapshot) = snapshot {
            local.update(snapshot.members, snapshot.revision);
            // The seat is gone: the connection gets nothing more of the room.
            if let Some(handle) = snapshot
                .replaced
                .and_then(|conn| local.locals.remove(&conn))
            {
                handle.replaced.cancel();
            }
        }
        for member in local.locals.values() {
            member.offer(delivery.clone());
        }
        drop(rooms);
        if let (Some(slot), Some(chat)) = (sender, &chat) {
            slot.delivered(chat);
        }
    }
    let _ = subscriber.unsubscribe().await;
}

/// A delivery, with for presence the membership it leaves, and for chat
/// the message, which may answer its sender's wait.
struct Decoded {
    delivery: Delivery,
    membership: Option<MembersAfter>,
    chat: Option<ChatMessage>,
}

/// The room's members after a presence change.
struct MembersAfter {
    members: Vec<RoomMember>,
    revision: u64,
    /// A local connection this change took the seat from, if any.
    replaced: Option<ConnId>,
}

fn chat_delivery(
    room: &RoomId,
    msg: &async_nats::Message,
) -> Result<Decoded, event::EventDecodeError> {
    let chat: ChatMessage = event::decode(&msg.payload)?;
    let prev = bootstrap::nats::previous_seq(msg.headers.as_ref());
    Ok(Decoded {
        delivery: Delivery::chat(room, &chat, prev),
        membership: None,
        chat: Some(chat),
    })
}

fn presence_delivery(room: &RoomId, payload: &[u8]) -> Result<Decoded, event::EventDecodeError> {
    let change: PresenceChange = event::decode(payload)?;
    let frame = ServerFrame::Presence {
        room: room.clone(),
        event: change.event,
        member: change.member.member.clone(),
    };
    let conn = change.member.member.conn_id;
    let membership = MembersAfter {
        members: change.members,
        revision: change.revision,
        replaced: change.replaced.then(|| conn.clone()),
    };
    let delivery = Delivery {
        room: room.clone(),
        kind: DeliveryKind::Presence {
            revision: change.revision,
            leave: change.event == PresenceEvent::Leave,
        },
        about: Some(conn),
        frame: frame.to_json().into(),
    };
    Ok(Decoded {
        delivery,
        membership: Some(membership),
        chat: None,
    })
}
