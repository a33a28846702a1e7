//! The gateway's registry of rooms that have local members, and the NATS
//! subscriptions that feed them.
//!
//! A room is subscribed (`cavlo.deliver.<room>`) while at least one local
//! connection is in it, and unsubscribed as soon as the last one leaves, so a
//! gateway only receives traffic for rooms it serves. Each delivery is
//! serialized to JSON once per room and shared by all its local members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use hyper_tungstenite::tungstenite::Utf8Bytes;
use schemas::client::{ChatMessage, ServerFrame};
use schemas::event;
use schemas::id::{ConnId, RoomId, Seq};
use schemas::subject;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A chat message ready to write to any member's socket.
#[derive(Debug)]
pub struct Delivery {
    /// The room.
    pub room: RoomId,
    /// Its seq, for deduplication against the backlog.
    pub seq: Seq,
    /// The sending connection, which does not get its own message back.
    pub from: ConnId,
    /// The `chat` frame, serialized once.
    pub frame: Utf8Bytes,
}

/// How the hub reaches one connection.
#[derive(Clone, Debug)]
pub struct MemberHandle {
    /// The connection's bounded send queue.
    pub queue: mpsc::Sender<Arc<Delivery>>,
    /// Cancelled when the queue overflows: the connection must close as slow.
    pub slow: CancellationToken,
}

/// Subscribing a room failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot subscribe to room: {0}")]
pub struct SubscribeError(String);

/// The local room registry.
pub struct Hub {
    client: async_nats::Client,
    rooms: Rooms,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Shared with each room's fan-out task, which reads the member list. A std
/// mutex: every critical section is a few map operations and never awaits.
type Rooms = Arc<Mutex<HashMap<RoomId, LocalRoom>>>;

struct LocalRoom {
    members: HashMap<ConnId, MemberHandle>,
    /// Set once the room's subscription is in place; concurrent joiners wait
    /// on it, so nobody reads the backlog before the subscription exists.
    subscribed: Arc<OnceCell<()>>,
    /// Stops the room's fan-out task (and so unsubscribes).
    stop: CancellationToken,
}

impl Hub {
    /// An empty registry on `client`.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Adds `conn` to `room`, subscribing the room first if it is new here.
    /// When this returns, every message announced from now on reaches the
    /// member's queue, so the caller can safely read the backlog next.
    pub async fn join(
        &self,
        room: &RoomId,
        conn: ConnId,
        handle: MemberHandle,
    ) -> Result<(), SubscribeError> {
        let (subscribed, stop) = {
            let mut rooms = self.rooms.lock().expect("hub lock poisoned");
            let local = rooms.entry(room.clone()).or_insert_with(|| LocalRoom {
                members: HashMap::new(),
                subscribed: Arc::new(OnceCell::new()),
                stop: self.shutdown.child_token(),
            });
            local.members.insert(conn.clone(), handle);
            (local.subscribed.clone(), local.stop.clone())
        };
        let result = subscribed
            .get_or_try_init(|| self.subscribe(room, stop))
            .await;
        if let Err(err) = result {
            self.leave(room, &conn);
            return Err(err.clone());
        }
        Ok(())
    }

    /// Removes `conn` from `room`; the last one out unsubscribes the room.
    pub fn leave(&self, room: &RoomId, conn: &ConnId) {
        let mut rooms = self.rooms.lock().expect("hub lock poisoned");
        if let Some(local) = rooms.get_mut(room) {
            local.members.remove(conn);
            if local.members.is_empty() {
                local.stop.cancel();
                rooms.remove(room);
            }
        }
    }

    /// Rooms with local members.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().expect("hub lock poisoned").len()
    }

    /// Stops every room's fan-out and waits for them.
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
            .subscribe(subject::chat_deliver(room))
            .await
            .map_err(|err| SubscribeError(err.to_string()))?;
        self.tasks
            .spawn(fan_out(room.clone(), subscriber, stop, self.rooms.clone()));
        Ok(())
    }
}

/// Forwards one room's announcements to its local members until `stop`.
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
        let chat: ChatMessage = match event::decode(&msg.payload) {
            Ok(chat) => chat,
            Err(err) => {
                tracing::warn!(cause = %err, %room, "dropping malformed delivery");
                continue;
            }
        };
        let delivery = Arc::new(Delivery {
            room: room.clone(),
            seq: chat.seq,
            from: chat.from.conn_id.clone(),
            frame: ServerFrame::Chat(chat).to_json().into(),
        });
        let rooms = rooms.lock().expect("hub lock poisoned");
        let Some(local) = rooms.get(&room) else { break };
        for member in local.members.values() {
            // Never wait for a slow reader: a full queue closes that client,
            // which resumes from its last seq on reconnect.
            if let Err(mpsc::error::TrySendError::Full(_)) = member.queue.try_send(delivery.clone())
            {
                member.slow.cancel();
            }
        }
    }
    let _ = subscriber.unsubscribe().await;
}
