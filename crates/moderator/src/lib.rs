//! The moderator: every client event that could reach a room passes here first.
//!
//! Gateways send [`ModerationRequest`]s over NATS request/reply. The moderator
//! checks rate limits, room names and sizes, sanitizes chat text, then stores
//! chat in JetStream (see [`room_writer`]) and only then announces it to
//! gateways and acknowledges the sender.
//!
//! * [`config`]: the settings and their defaults.
//! * [`rules`]: room-name and size checks.
//! * [`rate_limit`]: per-connection token buckets.
//! * [`sanitize`]: HTML to plain text.
//! * [`room_writer`]: gap-free per-room sequencing on top of JetStream.
//!
//! Many moderators can run: a connection's first request goes to any of them
//! (queue group), the reply names the one that answered, and the gateway sends
//! the connection's later requests to that one, so each connection's rate is
//! counted in one place.

pub mod config;
pub mod rate_limit;
pub mod room_writer;
pub mod rules;
pub mod sanitize;

use std::collections::HashMap;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, Message, Subscriber};
use futures_util::StreamExt;
use schemas::code::ErrorCode;
use schemas::event::{self, Action, ModerationReply, ModerationRequest, Verdict};
use schemas::id::{ModeratorId, RoomId};
use schemas::subject;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ModeratorConfig;
use crate::rate_limit::RateLimiter;
use crate::room_writer::{Accepted, RoomWriter};
use crate::rules::{RuleError, Rules, Violation};

/// The moderator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configured rules are invalid.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// Subscribing to the request subjects failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The server did not confirm the subscriptions.
    #[error(transparent)]
    RoundTrip(#[from] bootstrap::nats::RoundTripError),
}

/// A chat message waiting for its room's writer.
#[derive(Debug)]
struct Job {
    accepted: Accepted,
    reply: Option<async_nats::Subject>,
}

/// A moderator whose subscriptions are in place.
pub struct Running {
    moderator: Moderator,
    any: Subscriber,
    direct: Subscriber,
}

/// Subscribes to the request subjects. When this returns the server has the
/// subscriptions, so requests sent from now on reach this moderator.
pub async fn start(client: Client, config: ModeratorConfig) -> Result<Running, RunError> {
    let moderator = Moderator {
        id: ModeratorId(nuid::next().to_string()),
        rules: Rules::new(&config)?,
        limiter: RateLimiter::new(config.chat_rate_per_minute, config.chat_burst),
        js: async_nats::jetstream::new(client.clone()),
        client: client.clone(),
        writers: HashMap::new(),
        tasks: JoinSet::new(),
        config,
    };
    let any = client
        .queue_subscribe(subject::MODERATE, subject::MODERATOR_QUEUE.into())
        .await?;
    let direct = client
        .subscribe(subject::moderate_direct(&moderator.id))
        .await?;
    bootstrap::nats::round_trip(&client).await?;
    tracing::info!(moderator = %moderator.id, "moderator ready");
    Ok(Running {
        moderator,
        any,
        direct,
    })
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
    /// Answers requests until `shutdown` resolves, then lets every room
    /// writer finish the messages it already accepted.
    pub async fn run(self, shutdown: impl Future) {
        let Running {
            mut moderator,
            mut any,
            mut direct,
        } = self;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(msg) = any.next() => moderator.handle(msg).await,
                Some(msg) = direct.next() => moderator.handle(msg).await,
                Some(done) = moderator.tasks.join_next() => moderator.forget_writer(done),
            }
        }
        tracing::info!("moderator shutting down");
        let _ = any.unsubscribe().await;
        let _ = direct.unsubscribe().await;
        moderator.writers.clear();
        while moderator.tasks.join_next().await.is_some() {}
    }
}

struct Moderator {
    id: ModeratorId,
    client: Client,
    js: async_nats::jetstream::Context,
    config: ModeratorConfig,
    rules: Rules,
    limiter: RateLimiter,
    /// One writer task per room with pending chat; it exits when idle.
    writers: HashMap<RoomId, mpsc::Sender<Job>>,
    tasks: JoinSet<RoomId>,
}

impl Moderator {
    /// Decides on one request. Checks run here, in arrival order, so the rate
    /// limiter sees a connection's messages in the order they were sent.
    async fn handle(&mut self, msg: Message) {
        let request: ModerationRequest = match event::decode(&msg.payload) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(cause = %err, "dropping malformed moderation request");
                return;
            }
        };
        let verdict = match request.action {
            Action::Join { room } => match self.rules.check_room(&room) {
                Ok(()) => Verdict::Admitted,
                Err(violation) => violation.into(),
            },
            Action::Chat { room, id, text } => {
                if !self
                    .limiter
                    .try_acquire(&request.from.conn_id, Instant::now())
                {
                    Violation {
                        code: ErrorCode::RateLimited,
                        message: "too many chat messages; slow down".into(),
                    }
                    .into()
                } else if let Err(violation) = self.rules.check_chat(&room, &id, &text) {
                    violation.into()
                } else {
                    let text = sanitize::plain_text(&text);
                    if text.trim().is_empty() {
                        Violation {
                            code: ErrorCode::InvalidMessage,
                            message: "chat text is empty after removing markup".into(),
                        }
                        .into()
                    } else {
                        let accepted = Accepted {
                            from: request.from,
                            id,
                            text,
                            ts: now_ms(),
                        };
                        match self.dispatch(
                            room,
                            Job {
                                accepted,
                                reply: msg.reply.clone(),
                            },
                        ) {
                            // The room writer replies once the message is stored.
                            Ok(()) => return,
                            Err(violation) => violation.into(),
                        }
                    }
                }
            }
        };
        reply(&self.client, &self.id, msg.reply, verdict).await;
    }

    /// Hands a job to its room's writer, starting one if needed.
    fn dispatch(&mut self, room: RoomId, job: Job) -> Result<(), Violation> {
        let job = match self.writers.get(&room) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Violation {
                        code: ErrorCode::Unavailable,
                        message: "room is busy; retry".into(),
                    });
                }
                // The writer went idle and closed; start a new one.
                Err(mpsc::error::TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel(self.config.room_queue_capacity.max(1));
        tx.try_send(job)
            .expect("a fresh channel with capacity >= 1 has room for one job");
        let writer = RoomWriter::new(self.js.clone(), self.client.clone(), room.clone());
        let (client, id, idle) = (
            self.client.clone(),
            self.id.clone(),
            self.config.room_idle_timeout,
        );
        self.tasks
            .spawn(write_room(writer, rx, client, id, idle, room.clone()));
        self.writers.insert(room, tx);
        Ok(())
    }

    fn forget_writer(&mut self, done: Result<RoomId, tokio::task::JoinError>) {
        match done {
            Ok(room) => {
                if self.writers.get(&room).is_some_and(|tx| tx.is_closed()) {
                    self.writers.remove(&room);
                }
            }
            Err(err) => tracing::error!(cause = %err, "room writer failed"),
        }
    }
}

/// A room writer's task: stores jobs in order until idle for `idle`.
async fn write_room(
    mut writer: RoomWriter,
    mut jobs: mpsc::Receiver<Job>,
    client: Client,
    moderator: ModeratorId,
    idle: std::time::Duration,
    room: RoomId,
) -> RoomId {
    loop {
        let job = match tokio::time::timeout(idle, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_) => {
                // Close first, then drain: a job sent before the close is
                // still stored, one sent after it is re-dispatched to a new writer.
                jobs.close();
                while let Ok(job) = jobs.try_recv() {
                    store(&mut writer, job, &client, &moderator).await;
                }
                break;
            }
        };
        store(&mut writer, job, &client, &moderator).await;
    }
    room
}

async fn store(writer: &mut RoomWriter, job: Job, client: &Client, moderator: &ModeratorId) {
    let verdict = match writer.store(job.accepted).await {
        Ok(seq) => Verdict::Stored { seq },
        Err(err) => {
            tracing::warn!(cause = %err, "chat not stored");
            Verdict::Rejected {
                code: ErrorCode::Unavailable,
                message: "message could not be stored; retry".into(),
            }
        }
    };
    reply(client, moderator, job.reply, verdict).await;
}

async fn reply(
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
