//! Media: a selective forwarding unit that holds rooms' calls. Each
//! participant sends its audio and video once, to the node holding its
//! room's call, and receives every other participant's from it.
//!
//! * [`config`]: settings and defaults.
//! * [`sfu`]: the forwarding loop: the UDP socket and every participant's
//!   WebRTC session.
//! * [`peer`]: one participant: its session, its tracks and the ones
//!   forwarded to it, and the data channel it renegotiates over.
//! * [`placement`]: which node holds each room's call (the calls bucket).
//! * [`simulcast`]: which layer of a publisher's video each subscriber
//!   gets.
//! * [`metrics`]: what a node counts for Prometheus.
//! * this module: the control side over NATS: joins and leaves from
//!   gateways, heartbeats, and draining.
//!
//! Many nodes can run. Each announces itself and its load with a heartbeat;
//! gateways send a room's first join to the least loaded, and the node that
//! records itself in the calls bucket first holds the call. A node joins a
//! connection only if the rooms bucket lists it as a member of the room:
//! the moderators' membership is the authority, so a call never holds more
//! participants than the room's capacity, nor anyone who is not in it. The
//! node watches the bucket too, and drops a participant as soon as the
//! room no longer lists it: a member removed without its gateway's word
//! (its gateway died or was cut off, or it rejoined through another one)
//! neither sends to nor hears the call any longer.

pub mod config;
pub mod metrics;
pub mod peer;
pub mod placement;
pub mod sfu;
pub mod simulcast;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::Client;
use async_nats::Subscriber;
use async_nats::jetstream::{self, kv};
use async_nats::service::endpoint::Endpoint;
use async_nats::service::{Request, Service};
use bootstrap::liveness::Liveness;
use futures_util::StreamExt;
use schemas::call::{CallJoin, CallLeave, CallReply, MediaHeartbeat};
use schemas::code::ErrorCode;
use schemas::event::{self, RoomState};
use schemas::id::{ConnId, MediaNodeId, RoomId};
use schemas::subject;
use str0m::change::SdpOffer;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::MediaConfig;
use crate::metrics::MediaMetrics;
use crate::placement::{Claim, Placement};
use crate::sfu::{Command, JoinError, Notice, Sfu, SfuConfig};

/// A media node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The media socket could not be bound.
    #[error("cannot bind the media socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The calls bucket could not be opened.
    #[error("cannot open the calls bucket: {0}")]
    Calls(#[from] jetstream::context::CreateKeyValueError),
    /// The rooms bucket (the moderators create it) could not be opened.
    #[error("cannot open the rooms bucket: {0}")]
    Rooms(#[from] jetstream::context::KeyValueError),
    /// The rooms bucket could not be watched.
    #[error("cannot watch the rooms bucket: {0}")]
    Watch(#[from] kv::WatchError),
    /// Subscribing failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The server did not confirm the subscriptions.
    #[error(transparent)]
    RoundTrip(#[from] bootstrap::nats::RoundTripError),
    /// Registering with the NATS services API failed.
    #[error(transparent)]
    Service(#[from] bootstrap::nats::ServiceError),
}

/// The media service's name in the NATS services API.
pub const SERVICE_NAME: &str = "cavlo-media";

/// Ready when NATS is connected and the buckets exist.
pub fn readiness(client: &Client) -> bootstrap::health::Check {
    bootstrap::health::streams_ready(client, &[subject::ROOMS_STREAM])
}

/// A media node whose socket and subscriptions are in place.
pub struct Running {
    node: Arc<Node>,
    config: MediaConfig,
    service: Service,
    joins: Endpoint,
    leaves: Subscriber,
    heartbeats: Subscriber,
    /// Changes to rooms' members, from the rooms bucket; `None` after the
    /// watch ended, until it is opened again (on the next heartbeat).
    memberships: Option<kv::Watch>,
    /// The last revision of the rooms bucket heard, to watch on from.
    heard: u64,
    notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
}

/// What the control side's tasks share.
struct Node {
    id: MediaNodeId,
    client: Client,
    sfu: Sfu,
    placement: Placement,
    rooms: kv::Store,
    peers: Mutex<Peers>,
    draining: AtomicBool,
    /// One lock per room with a join or a release under way, so a release
    /// never deletes the placement of a call a join is adding to.
    room_locks: Mutex<HashMap<RoomId, Weak<tokio::sync::Mutex<()>>>>,
    max_offer_bytes: usize,
    max_participants: usize,
    metrics: MediaMetrics,
}

/// The other media nodes, as their heartbeats tell.
struct Peers {
    liveness: Liveness<MediaNodeId>,
    draining: HashSet<MediaNodeId>,
}

/// How long a node waits before it reads a room's members again when the
/// joining connection is not among them: the join may have been written a
/// moment ago, and a replica may not have it yet.
const MEMBERSHIP_RECHECK: Duration = Duration::from_millis(300);

/// Binds the media socket, opens the buckets and subscribes. When this
/// returns, joins sent from now on reach this node.
pub async fn start(
    client: Client,
    config: MediaConfig,
    metrics: &bootstrap::metrics::Metrics,
) -> Result<Running, RunError> {
    let id = MediaNodeId(nuid::next().to_string());
    let metrics = MediaMetrics::register(metrics);
    let socket = tokio::net::UdpSocket::bind(config.udp_listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.udp_listen,
            source,
        })?;
    let bound = socket.local_addr().map_err(|source| RunError::Bind {
        addr: config.udp_listen,
        source,
    })?;
    let public = config.public_addr(bound);
    let (sfu, notices) = Sfu::spawn(
        socket,
        SfuConfig {
            public,
            max_participants: config.max_participants,
            keyframe_interval: config.keyframe_interval,
        },
        metrics.clone(),
    );
    let js = jetstream::new(client.clone());
    let placement = bootstrap::nats::set_up("opening the calls bucket", || {
        Placement::open(&js, id.clone(), config.calls_replicas)
    })
    .await?;
    let rooms = bootstrap::nats::set_up("opening the rooms bucket", || {
        js.get_key_value(subject::ROOMS_BUCKET)
    })
    .await?;
    // Changes from now on: a join reads the members itself, and a change
    // older than that read never drops the joined participant (below).
    let memberships = rooms.watch_all().await?;
    let service = bootstrap::nats::register_service(
        &client,
        SERVICE_NAME,
        "cavlo media: forwards the media of rooms' calls",
        "media",
    )
    .await?;
    let joins = bootstrap::nats::add_endpoint(&service, "join", subject::media_join(&id)).await?;
    let leaves = client.subscribe(subject::media_leave(&id)).await?;
    let heartbeats = client.subscribe(subject::MEDIA_HEARTBEAT).await?;
    bootstrap::nats::round_trip(&client).await?;
    tracing::info!(node = %id, udp = %bound, %public, "media node ready");
    let node = Arc::new(Node {
        id,
        client,
        sfu,
        placement,
        rooms,
        peers: Mutex::new(Peers {
            liveness: Liveness::new(config.node_timeout, Instant::now()),
            draining: HashSet::new(),
        }),
        draining: AtomicBool::new(false),
        room_locks: Mutex::new(HashMap::new()),
        max_offer_bytes: config.max_offer_bytes,
        max_participants: config.max_participants,
        metrics,
    });
    Ok(Running {
        node,
        config,
        service,
        joins,
        leaves,
        heartbeats,
        memberships: Some(memberships),
        heard: 0,
        notices,
    })
}

impl Running {
    /// This node's id.
    pub fn id(&self) -> &MediaNodeId {
        &self.node.id
    }

    /// Serves joins until `shutdown` resolves, then drains: announces it,
    /// so gateways move its calls to other nodes, and waits for its
    /// participants to leave (at most `drain_timeout`).
    pub async fn run(mut self, shutdown: impl Future) {
        let mut tasks = JoinSet::new();
        let mut announce = tokio::time::interval(self.config.heartbeat_interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = announce.tick() => {
                    self.node.announce().await;
                    self.watch_again().await;
                }
                () = self.step(&mut tasks) => {}
            }
        }
        tracing::info!(node = %self.node.id, "media node draining");
        self.node.draining.store(true, Ordering::Relaxed);
        self.node.announce().await;
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        while self.node.sfu.participants() > 0 {
            tokio::select! {
                () = &mut deadline => {
                    tracing::warn!(left = self.node.sfu.participants(), "drain timed out; ending the calls left");
                    break;
                }
                _ = announce.tick() => self.node.announce().await,
                () = self.step(&mut tasks) => {}
            }
        }
        if let Err(err) = self.joins.stop().await {
            tracing::warn!(cause = %err, "cannot leave the join subject");
        }
        if let Err(err) = self.service.stop().await {
            tracing::warn!(cause = %err, "cannot leave the services API");
        }
        tasks.shutdown().await;
    }

    /// Opens the rooms bucket's watch again if it ended, from the change
    /// after the last one heard.
    async fn watch_again(&mut self) {
        if self.memberships.is_some() {
            return;
        }
        let watch = match self.heard {
            0 => self.node.rooms.watch_all().await,
            heard => self.node.rooms.watch_all_from_revision(heard + 1).await,
        };
        match watch {
            Ok(watch) => self.memberships = Some(watch),
            Err(err) => tracing::warn!(cause = %err, "cannot watch the rooms bucket; trying again"),
        }
    }

    /// Handles one join, leave, heartbeat, notice or finished task.
    async fn step(&mut self, tasks: &mut JoinSet<()>) {
        tokio::select! {
            Some(request) = self.joins.next() => {
                tasks.spawn(self.node.clone().answer(request));
            }
            Some(msg) = self.leaves.next() => match event::decode::<CallLeave>(&msg.payload) {
                Ok(leave) => {
                    self.node.sfu.send(Command::Leave { room: leave.room, conn: leave.conn }).await;
                }
                Err(err) => tracing::warn!(cause = %err, "dropping a malformed leave"),
            },
            Some(msg) = self.heartbeats.next() => match event::decode::<MediaHeartbeat>(&msg.payload) {
                Ok(beat) => self.node.heard(beat),
                Err(err) => tracing::warn!(cause = %err, "dropping a malformed media heartbeat"),
            },
            change = next_change(&mut self.memberships) => match change {
                Some(Ok(entry)) => {
                    self.heard = self.heard.max(entry.revision);
                    if let Some(command) = members_changed(entry) {
                        self.node.sfu.send(command).await;
                    }
                }
                Some(Err(err)) => tracing::warn!(cause = %err, "a rooms bucket change not read"),
                None => {
                    tracing::error!("the rooms bucket's watch ended; watching it again");
                    self.memberships = None;
                }
            },
            Some(Notice::Empty(room)) = self.notices.recv() => {
                tasks.spawn(self.node.clone().release(room));
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

impl Node {
    async fn announce(&self) {
        let beat = MediaHeartbeat {
            node: self.id.clone(),
            participants: self.sfu.participants(),
            draining: self.draining.load(Ordering::Relaxed),
        };
        if let Err(err) = self
            .client
            .publish(subject::MEDIA_HEARTBEAT, event::encode(&beat).into())
            .await
        {
            tracing::warn!(cause = %err, "heartbeat not sent");
        }
    }

    fn heard(&self, beat: MediaHeartbeat) {
        if beat.node == self.id {
            return;
        }
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        let now = Instant::now();
        peers.liveness.heard(beat.node.clone(), now);
        if beat.draining {
            peers.draining.insert(beat.node);
        } else {
            peers.draining.remove(&beat.node);
        }
        // Nodes come and go (each process is a new id): forget the dead.
        peers.liveness.forget_dead(now);
        let Peers { liveness, draining } = &mut *peers;
        draining.retain(|node| liveness.alive(now).any(|alive| alive == node));
    }

    /// Whether `node` may hold a call: heard within the timeout, not draining.
    fn usable(&self, node: &MediaNodeId) -> bool {
        let peers = self.peers.lock().expect("peers lock poisoned");
        !peers.liveness.is_dead(node, Instant::now()) && !peers.draining.contains(node)
    }

    async fn answer(self: Arc<Self>, request: Request) {
        let reply = match event::decode::<CallJoin>(&request.message.payload) {
            Ok(join) => self.join(join).await,
            Err(err) => refused(ErrorCode::InvalidMessage, format!("malformed join: {err}")),
        };
        let outcome = match &reply {
            CallReply::Answer { .. } => "joined",
            CallReply::Elsewhere { .. } => "elsewhere",
            CallReply::Refused { .. } => "refused",
        };
        self.metrics.joined(outcome);
        if let Err(err) = request.respond(Ok(event::encode(&reply).into())).await {
            tracing::warn!(cause = %err, "join answer not sent");
        }
    }

    async fn join(&self, join: CallJoin) -> CallReply {
        if join.offer.len() > self.max_offer_bytes {
            return refused(
                ErrorCode::TooLarge,
                format!("the offer is over {} bytes", self.max_offer_bytes),
            );
        }
        let offer = match SdpOffer::from_sdp_string(&join.offer) {
            Ok(offer) => offer,
            Err(err) => {
                return refused(
                    ErrorCode::InvalidMessage,
                    format!("the offer does not parse: {err}"),
                );
            }
        };
        if !join.publish && peer::sends_media(&join.offer) {
            return refused(
                ErrorCode::Forbidden,
                "a viewer's offer may not send audio or video",
            );
        }
        if self.draining.load(Ordering::Relaxed) {
            return refused(ErrorCode::Unavailable, "the media node is draining");
        }
        // Before the room is claimed: a full node must not take a call it
        // cannot hold (the gateway moves on to the next node).
        if self.sfu.participants() as usize >= self.max_participants {
            return refused(ErrorCode::Unavailable, "the media node is full");
        }
        let lock = self.room_lock(&join.room);
        let _held = lock.lock().await;
        let listed = match self.is_member(&join).await {
            Ok(Some(revision)) => revision,
            Ok(None) => {
                return refused(ErrorCode::NotInRoom, "join the room before its call");
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot read the room's members");
                return refused(ErrorCode::Unavailable, "cannot check membership; retry");
            }
        };
        let placed = match self
            .placement
            .claim(&join.room, |node| self.usable(node))
            .await
        {
            Ok(Claim::Mine(revision)) => revision,
            Ok(Claim::Elsewhere(node)) => return CallReply::Elsewhere { node },
            Err(err) => {
                tracing::warn!(room = %join.room, cause = %err, "cannot place the call");
                return refused(ErrorCode::Unavailable, "cannot place the call; retry");
            }
        };
        let (reply, answer) = oneshot::channel();
        let sent = self
            .sfu
            .send(Command::Join {
                room: join.room.clone(),
                conn: join.conn.clone(),
                offer: Box::new(offer),
                publish: join.publish,
                listed,
                reply,
            })
            .await;
        match (sent, answer.await) {
            (true, Ok(Ok(sdp))) => {
                tracing::debug!(room = %join.room, conn = %join.conn, "joined the call");
                CallReply::Answer { sdp, placed }
            }
            (_, Ok(Err(JoinError::Full))) => {
                refused(ErrorCode::Unavailable, "the media node is full")
            }
            (_, Ok(Err(err @ JoinError::Offer(_)))) => {
                refused(ErrorCode::InvalidMessage, err.to_string())
            }
            (_, Ok(Err(err @ JoinError::Unlisted))) => {
                refused(ErrorCode::NotInRoom, err.to_string())
            }
            _ => refused(ErrorCode::Unavailable, "the media node is stopping"),
        }
    }

    /// The revision of the rooms bucket's entry that lists the joining
    /// connection in its room, read again once after a short wait if not
    /// listed; `None` if it is not.
    async fn is_member(&self, join: &CallJoin) -> Result<Option<u64>, kv::EntryError> {
        let key = subject::room_key(&join.room);
        for recheck in [false, true] {
            if recheck {
                tokio::time::sleep(MEMBERSHIP_RECHECK).await;
            }
            let Some(entry) = self.rooms.entry(key.clone()).await? else {
                continue;
            };
            let Some(members) = listed(&join.room, &entry.value) else {
                return Ok(None);
            };
            if members.contains(&join.conn) {
                return Ok(Some(entry.revision));
            }
        }
        Ok(None)
    }

    /// Deletes the placement of `room`'s call if it is still empty here.
    async fn release(self: Arc<Self>, room: RoomId) {
        let lock = self.room_lock(&room);
        let _held = lock.lock().await;
        let (reply, count) = oneshot::channel();
        if !self
            .sfu
            .send(Command::Count {
                room: room.clone(),
                reply,
            })
            .await
            || count.await.unwrap_or(1) > 0
        {
            return;
        }
        if let Err(err) = self.placement.release(&room).await {
            tracing::warn!(%room, cause = %err, "the ended call's placement stays");
        }
    }

    fn room_lock(&self, room: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.room_locks.lock().expect("room locks poisoned");
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(room).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(room.clone(), Arc::downgrade(&lock));
        lock
    }
}

/// The next change from `watch`; never, while there is none.
async fn next_change(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// What a change in the rooms bucket tells the loop: the room's members as
/// of that revision (none once the room is deleted). `None` for an entry
/// that names no room or cannot be read.
fn members_changed(entry: kv::Entry) -> Option<Command> {
    let room = subject::room_of_key(&entry.key)?;
    let members = match entry.operation {
        kv::Operation::Put => listed(&room, &entry.value)?,
        kv::Operation::Delete | kv::Operation::Purge => HashSet::new(),
    };
    Some(Command::Members {
        room,
        revision: entry.revision,
        members,
    })
}

/// The connections a rooms bucket entry of `room` lists; `None` (and a
/// warning) if it cannot be read.
fn listed(room: &RoomId, value: &[u8]) -> Option<HashSet<ConnId>> {
    match event::decode::<RoomState>(value) {
        Ok(state) => Some(
            state
                .members
                .into_iter()
                .map(|m| m.member.conn_id)
                .collect(),
        ),
        Err(err) => {
            tracing::warn!(%room, cause = %err, "an unreadable rooms entry");
            None
        }
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> CallReply {
    CallReply::Refused {
        code,
        message: message.into(),
    }
}
