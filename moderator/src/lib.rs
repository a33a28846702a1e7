//! The moderator: every client event that could reach a room passes here first.
//!
//! Gateways send [`ModerationRequest`]s over NATS request/reply. The moderator
//! checks rate limits, room names and sizes, sanitizes chat text, then stores
//! chat in JetStream (see [`room_writer`]) and only then announces it to
//! gateways and acknowledges the sender. It also keeps room membership (see
//! [`membership`]) and relays WebRTC signals between members.
//!
//! * [`config`]: the settings and their defaults.
//! * [`rules`]: room-name, size and signal-shape checks.
//! * [`rate_limit`]: per-connection token buckets and the candidate budget.
//! * [`sanitize`]: HTML to plain text.
//! * [`chat`] and [`room_writer`]: gap-free per-room sequencing on JetStream.
//! * [`membership`] and [`rooms`]: members per room, capacity, presence,
//!   signal relay and removal of dead gateways' members.
//!
//! Many moderators can run: a connection's first request goes to any of them
//! (queue group), the reply names the one that answered, and the gateway sends
//! the connection's later requests to that one, so each connection's rates
//! and budgets are counted in one place.

pub mod chat;
pub mod config;
pub mod membership;
pub mod rate_limit;
pub mod room_writer;
pub mod rooms;
pub mod rules;
pub mod sanitize;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, Message, Subscriber};
use bootstrap::liveness::Liveness;
use futures_util::StreamExt;
use schemas::client::SignalKind;
use schemas::code::ErrorCode;
use schemas::event::{
    self, Action, Heartbeat, ModerationReply, ModerationRequest, RoomMember, Verdict,
};
use schemas::id::ModeratorId;
use schemas::subject;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::chat::{Job, Writers};
use crate::config::ModeratorConfig;
use crate::membership::Membership;
use crate::rate_limit::{CandidateBudget, RateLimiter};
use crate::room_writer::Accepted;
use crate::rooms::{Rooms, Signal};
use crate::rules::{RuleError, Rules, Violation};

/// The moderator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configured rules are invalid.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// The rooms bucket could not be opened.
    #[error("cannot open the rooms bucket: {0}")]
    Rooms(#[from] membership::OpenError),
    /// Subscribing to the request subjects failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The server did not confirm the subscriptions.
    #[error(transparent)]
    RoundTrip(#[from] bootstrap::nats::RoundTripError),
}

/// A moderator whose subscriptions are in place.
pub struct Running {
    moderator: Moderator,
    any: Subscriber,
    direct: Subscriber,
    heartbeats: Subscriber,
}

/// Opens the rooms bucket and subscribes to the request subjects. When this
/// returns the server has the subscriptions, so requests sent from now on
/// reach this moderator.
pub async fn start(client: Client, config: ModeratorConfig) -> Result<Running, RunError> {
    let id = ModeratorId(nuid::next().to_string());
    let js = async_nats::jetstream::new(client.clone());
    let rooms = Arc::new(Rooms {
        moderator: id.clone(),
        client: client.clone(),
        membership: Membership::open(&js, config.room_capacity, config.rooms_replicas).await?,
        liveness: Mutex::new(Liveness::new(config.gateway_timeout, Instant::now())),
    });
    let moderator = Moderator {
        rules: Rules::new(&config)?,
        chat_limiter: RateLimiter::new(config.chat_rate_per_minute, config.chat_burst),
        signal_limiter: RateLimiter::new(config.signal_rate_per_minute, config.signal_burst),
        candidates: CandidateBudget::new(config.max_candidates_per_room),
        writers: Writers::new(
            client.clone(),
            id.clone(),
            config.room_queue_capacity,
            config.room_idle_timeout,
        ),
        requests: JoinSet::new(),
        permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
        client: client.clone(),
        rooms,
        config,
        id,
    };
    let any = client
        .queue_subscribe(subject::MODERATE, subject::MODERATOR_QUEUE.into())
        .await?;
    let direct = client
        .subscribe(subject::moderate_direct(&moderator.id))
        .await?;
    let heartbeats = client.subscribe(subject::GATEWAY_HEARTBEAT).await?;
    bootstrap::nats::round_trip(&client).await?;
    tracing::info!(moderator = %moderator.id, "moderator ready");
    Ok(Running {
        moderator,
        any,
        direct,
        heartbeats,
    })
}

/// Ready when NATS is connected and the chat stream and rooms bucket exist.
pub fn readiness(client: &Client) -> bootstrap::health::Check {
    bootstrap::health::streams_ready(client, &[subject::CHAT_STREAM, subject::ROOMS_STREAM])
}

/// Starts a moderator and runs it until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: ModeratorConfig,
    shutdown: impl Future,
) -> Result<(), RunError> {
    start(client, config).await?.run(shutdown).await;
    Ok(())
}

impl Running {
    /// Answers requests until `shutdown` resolves, then finishes the
    /// requests under way and lets every room writer store what it accepted.
    pub async fn run(self, shutdown: impl Future) {
        let Running {
            mut moderator,
            mut any,
            mut direct,
            mut heartbeats,
        } = self;
        let mut forget = tokio::time::interval(moderator.config.gateway_timeout);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(msg) = any.next() => moderator.handle(msg).await,
                Some(msg) = direct.next() => moderator.handle(msg).await,
                Some(msg) = heartbeats.next() => moderator.heard(&msg),
                Some(_) = moderator.requests.join_next() => {}
                () = moderator.writers.reap() => {}
                _ = forget.tick() => moderator.rooms.liveness.lock().expect("liveness lock poisoned").forget_dead(Instant::now()),
            }
        }
        tracing::info!("moderator shutting down");
        for subscriber in [&mut any, &mut direct, &mut heartbeats] {
            let _ = subscriber.unsubscribe().await;
        }
        while moderator.requests.join_next().await.is_some() {}
        moderator.writers.finish().await;
    }
}

struct Moderator {
    id: ModeratorId,
    client: Client,
    config: ModeratorConfig,
    rules: Rules,
    chat_limiter: RateLimiter,
    signal_limiter: RateLimiter,
    candidates: CandidateBudget,
    writers: Writers,
    rooms: Arc<Rooms>,
    /// Membership and signal requests under way.
    requests: JoinSet<()>,
    permits: Arc<Semaphore>,
}

impl Moderator {
    fn heard(&self, msg: &Message) {
        if let Ok(heartbeat) = event::decode::<Heartbeat>(&msg.payload) {
            let mut liveness = self.rooms.liveness.lock().expect("liveness lock poisoned");
            liveness.heard(heartbeat.gateway, Instant::now());
        }
    }

    /// Decides on one request. Checks run here, in arrival order, so rate
    /// limits and budgets see a connection's events in the order it sent them.
    async fn handle(&mut self, msg: Message) {
        let request: ModerationRequest = match event::decode(&msg.payload) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(cause = %err, "dropping malformed moderation request");
                return;
            }
        };
        // A gateway that sends requests is alive, heartbeat or not.
        self.rooms
            .liveness
            .lock()
            .expect("liveness lock poisoned")
            .heard(request.gateway.clone(), Instant::now());
        let ModerationRequest {
            from,
            gateway,
            action,
        } = request;
        let rooms = self.rooms.clone();
        let verdict = match action {
            Action::Chat { room, id, text } => {
                match self.admit_chat(&from.conn_id, &room, &id, &text) {
                    Ok(()) => {
                        let accepted = Accepted {
                            from,
                            id,
                            text: sanitize::plain_text(&text),
                            ts: now_ms(),
                        };
                        if accepted.text.trim().is_empty() {
                            Violation::new(
                                ErrorCode::InvalidMessage,
                                "chat text is empty after removing markup",
                            )
                            .into()
                        } else {
                            match self.writers.dispatch(
                                room,
                                Job {
                                    accepted,
                                    reply: msg.reply,
                                },
                            ) {
                                // The room writer replies once the message is stored.
                                Ok(()) => return,
                                Err(violation) => {
                                    return self.reply_now(None, violation.into()).await;
                                }
                            }
                        }
                    }
                    Err(violation) => violation.into(),
                }
            }
            Action::Join { room } => match self.rules.check_room(&room) {
                Ok(()) => {
                    return self
                        .spawn(
                            msg.reply,
                            rooms.join(
                                room,
                                RoomMember {
                                    member: from,
                                    gateway,
                                },
                            ),
                        )
                        .await;
                }
                Err(violation) => violation.into(),
            },
            Action::Leave { room } => {
                self.candidates.clear(&from.conn_id, &room);
                return self.spawn(msg.reply, rooms.leave(room, from.conn_id)).await;
            }
            Action::Reap { room, gateway } => {
                return self.spawn(msg.reply, rooms.reap(room, gateway)).await;
            }
            Action::Signal {
                room,
                to,
                signal,
                data,
            } => match self.admit_signal(&from.conn_id, &room, signal, &data) {
                Ok(()) => {
                    let signal = Signal {
                        room,
                        to,
                        kind: signal,
                        data,
                    };
                    return self.spawn(msg.reply, rooms.relay(from, signal)).await;
                }
                Err(violation) => violation.into(),
            },
        };
        self.reply_now(msg.reply, verdict).await;
    }

    fn admit_chat(
        &mut self,
        conn: &schemas::id::ConnId,
        room: &schemas::id::RoomId,
        id: &schemas::id::ClientMsgId,
        text: &str,
    ) -> Result<(), Violation> {
        if !self.chat_limiter.try_acquire(conn, Instant::now()) {
            return Err(Violation::new(
                ErrorCode::RateLimited,
                "too many chat messages; slow down",
            ));
        }
        self.rules.check_chat(room, id, text)
    }

    fn admit_signal(
        &mut self,
        conn: &schemas::id::ConnId,
        room: &schemas::id::RoomId,
        kind: SignalKind,
        data: &serde_json::Value,
    ) -> Result<(), Violation> {
        if !self.signal_limiter.try_acquire(conn, Instant::now()) {
            return Err(Violation::new(
                ErrorCode::RateLimited,
                "too many signals; slow down",
            ));
        }
        self.rules.check_room(room)?;
        self.rules.check_signal(kind, data)?;
        if kind == SignalKind::Candidate && !self.candidates.try_take(conn, room) {
            return Err(Violation::new(
                ErrorCode::RateLimited,
                "too many ICE candidates in this room",
            ));
        }
        Ok(())
    }

    /// Runs a membership or signal request as its own task. Waits for a
    /// permit first, so a burst queues in NATS rather than in memory.
    async fn spawn(
        &mut self,
        to: Option<async_nats::Subject>,
        work: impl Future<Output = Verdict> + Send + 'static,
    ) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (client, id) = (self.client.clone(), self.id.clone());
        self.requests.spawn(async move {
            let verdict = work.await;
            reply(&client, &id, to, verdict).await;
            drop(permit);
        });
    }

    async fn reply_now(&self, to: Option<async_nats::Subject>, verdict: Verdict) {
        reply(&self.client, &self.id, to, verdict).await;
    }
}

/// Sends a verdict to the requesting gateway.
pub(crate) async fn reply(
    client: &Client,
    moderator: &ModeratorId,
    to: Option<async_nats::Subject>,
    verdict: Verdict,
) {
    let Some(to) = to else { return };
    let reply = ModerationReply {
        moderator: moderator.clone(),
        verdict,
    };
    if let Err(err) = client.publish(to, event::encode(&reply).into()).await {
        tracing::warn!(cause = %err, "failed to send moderation reply");
    }
}

impl From<Violation> for Verdict {
    fn from(violation: Violation) -> Self {
        Verdict::Rejected {
            code: violation.code,
            message: violation.message,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
