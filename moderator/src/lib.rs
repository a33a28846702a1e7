//! The moderator: every client event that could reach a room passes here first.
//!
//! Gateways send [`ModerationRequest`](schemas::event::ModerationRequest)s
//! over NATS request/reply. Each request is parsed once into a
//! [`Command`](command::Command) and applied by the method for its action:
//! chat is rate-limited, checked, sanitized and handed to its room's
//! writer, which stores it in JetStream. A chat stored now gets no answer
//! from the moderator: the stream republishes it to the room's gateways,
//! and the sender's gateway acks the sender from that delivery. The
//! moderator answers only a chat it does not store now (rejected, failed,
//! a resend) or one whose gateway asks for every answer (an older gateway,
//! `acked_by_delivery` false). Joins, leaves and reaps change the room's
//! membership; signals are relayed to the target's gateway.
//!
//! * [`config`]: the settings and their defaults.
//! * [`command`]: one typed command per request, one method per action.
//! * [`reply`]: the answer every request ends with.
//! * [`rules`]: room-name, size and signal-shape checks.
//! * [`rate_limit`]: per-connection token buckets and the candidate budget.
//! * [`sanitize`]: HTML to plain text.
//! * [`writers`] and [`room_writer`]: one writer task per busy room, storing
//!   its chat with a gap-free per-room sequence.
//! * [`membership`]: the rooms bucket, changed by compare-and-set.
//! * [`race`]: telling a lost compare-and-set race from a failure, for
//!   both writers.
//! * [`roster`]: join, leave and dead-gateway removal, announced as presence.
//! * [`relay`]: signals from one member to another.
//! * [`metrics`]: what the moderator counts for Prometheus.
//!
//! Many moderators can run. Each announces itself with a heartbeat, and
//! gateways send each room's chat to one live moderator chosen by the room
//! (rendezvous hashing), so one writer stores a room's chat and moderators
//! rarely race for a room's tail. A connection's other requests go first to
//! any moderator (queue group), then to the one that answered, so its
//! signal budgets are counted in one place.

pub mod command;
pub mod config;
pub mod membership;
pub mod metrics;
pub mod race;
pub mod rate_limit;
pub mod relay;
pub mod reply;
pub mod room_writer;
pub mod roster;
pub mod rules;
pub mod sanitize;
pub mod writers;

use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::service::Service;
use async_nats::service::endpoint::Endpoint;
use async_nats::{Client, Subscriber};
use bootstrap::liveness::Liveness;
use futures_util::StreamExt;
use schemas::event::{self, Heartbeat, ModeratorHeartbeat};
use schemas::id::ModeratorId;
use schemas::subject;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::command::Moderator;
use crate::config::ModeratorConfig;
use crate::membership::Membership;
use crate::metrics::ModeratorMetrics;
use crate::rate_limit::{CandidateBudget, RateLimiter};
use crate::roster::Roster;
use crate::rules::{RuleError, Rules};
use crate::writers::Writers;

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
    /// Registering with the NATS services API failed.
    #[error(transparent)]
    Service(#[from] bootstrap::nats::ServiceError),
}

/// The moderators' name in the NATS services API (`$SRV.PING.cavlo-moderator`, …).
pub const SERVICE_NAME: &str = "cavlo-moderator";

/// A moderator whose subscriptions are in place.
pub struct Running {
    moderator: Moderator,
    gateway_timeout: std::time::Duration,
    heartbeat_interval: std::time::Duration,
    service: Service,
    any: Endpoint,
    direct: Endpoint,
    heartbeats: Subscriber,
}

/// Opens the rooms bucket and subscribes to the request subjects. When this
/// returns the server has the subscriptions, so requests sent from now on
/// reach this moderator.
pub async fn start(
    client: Client,
    config: ModeratorConfig,
    metrics: &bootstrap::metrics::Metrics,
) -> Result<Running, RunError> {
    let id = ModeratorId(nuid::next().to_string());
    let max_concurrent = config.max_concurrent_requests.max(1);
    let permits = Arc::new(Semaphore::new(max_concurrent));
    let metrics = ModeratorMetrics::register(metrics, permits.clone(), max_concurrent);
    let js = async_nats::jetstream::new(client.clone());
    let membership = bootstrap::nats::set_up("opening the rooms bucket", || {
        Membership::open(&js, config.room_capacity, config.rooms_replicas)
    })
    .await?;
    let roster = Arc::new(Roster {
        client: client.clone(),
        membership: membership.clone(),
        liveness: Mutex::new(Liveness::new(config.gateway_timeout, Instant::now())),
    });
    let moderator = Moderator {
        rules: Rules::new(&config)?,
        chat_limiter: RateLimiter::new(config.chat_rate_per_minute, config.chat_burst),
        signal_limiter: RateLimiter::new(config.signal_rate_per_minute, config.signal_burst),
        candidates: CandidateBudget::new(config.max_candidates_per_room),
        writers: Writers::new(
            js.clone(),
            membership,
            config.room_queue_capacity,
            config.room_idle_timeout,
            metrics.clone(),
        ),
        requests: JoinSet::new(),
        permits,
        metrics,
        client: client.clone(),
        roster,
        id,
    };
    // Requests arrive through the NATS services API, so `nats micro`-style
    // tools list each moderator with its endpoints' stats.
    let service = bootstrap::nats::register_service(
        &client,
        SERVICE_NAME,
        "cavlo moderator: checks, rate limits and sanitizes client events, stores chat",
        subject::MODERATOR_QUEUE,
    )
    .await?;
    let any = bootstrap::nats::add_endpoint(&service, "moderate", subject::MODERATE).await?;
    // Only this moderator listens on its direct subject: the queue group
    // changes nothing there.
    let direct =
        bootstrap::nats::add_endpoint(&service, "direct", subject::moderate_direct(&moderator.id))
            .await?;
    let heartbeats = client.subscribe(subject::GATEWAY_HEARTBEAT).await?;
    bootstrap::nats::round_trip(&client).await?;
    tracing::info!(moderator = %moderator.id, "moderator ready");
    Ok(Running {
        moderator,
        gateway_timeout: config.gateway_timeout,
        heartbeat_interval: config.heartbeat_interval,
        service,
        any,
        direct,
        heartbeats,
    })
}

/// Ready when NATS is connected, the rooms bucket exists and the chat
/// stream republishes what it stores. A moderator delivers no chat itself:
/// on a stream that an older history set up without the republish, it
/// would store chat that no member sees live (see docs/operations.md,
/// "Upgrading").
pub fn readiness(client: &Client) -> bootstrap::health::Check {
    let client = client.clone();
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            bootstrap::health::nats_connected(&client)?;
            let js = async_nats::jetstream::new(client);
            bootstrap::health::stream_info(&js, subject::ROOMS_STREAM).await?;
            let chat = bootstrap::health::stream_info(&js, subject::CHAT_STREAM).await?;
            republishes(&chat.cached_info().config)
        })
    })
}

/// Whether the chat stream's `config` delivers what it stores.
fn republishes(config: &async_nats::jetstream::stream::Config) -> Result<(), String> {
    match &config.republish {
        Some(republish) if republish.destination == subject::CHAT_REPUBLISH => Ok(()),
        _ => Err(format!(
            "stream {} does not republish to {}: upgrade history first",
            subject::CHAT_STREAM,
            subject::CHAT_REPUBLISH
        )),
    }
}

impl Running {
    /// Answers requests until `shutdown` resolves, then finishes the
    /// requests under way and lets every room writer store what it accepted.
    pub async fn run(self, shutdown: impl Future) {
        let Running {
            mut moderator,
            gateway_timeout,
            heartbeat_interval,
            service,
            mut any,
            mut direct,
            mut heartbeats,
        } = self;
        let mut forget = tokio::time::interval(gateway_timeout);
        let mut announce = tokio::time::interval(heartbeat_interval);
        let beat: bytes::Bytes = event::encode(&ModeratorHeartbeat {
            moderator: moderator.id.clone(),
        })
        .into();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(msg) = any.next() => moderator.handle(msg).await,
                Some(msg) = direct.next() => moderator.handle(msg).await,
                Some(msg) = heartbeats.next() => match event::decode::<Heartbeat>(&msg.payload) {
                    Ok(heartbeat) => moderator.roster.heard(heartbeat.gateway),
                    // Its gateway goes unheard: heard no other way (its
                    // requests), it is taken for dead.
                    Err(err) => tracing::warn!(cause = %err, "dropping a malformed gateway heartbeat"),
                },
                Some(_) = moderator.requests.join_next() => {}
                () = moderator.writers.reap() => {}
                _ = forget.tick() => moderator.roster.forget_dead(),
                _ = announce.tick() => {
                    if let Err(err) = moderator.client.publish(subject::MODERATOR_HEARTBEAT, beat.clone()).await {
                        tracing::warn!(cause = %err, "heartbeat not sent");
                    }
                }
            }
        }
        tracing::info!("moderator shutting down");
        // Out of the queue group first, so new requests go to the others
        // while this one finishes what it holds. A failure here does not
        // stop the shutdown: the connection closes once the work in hand
        // is done, which ends these subscriptions too.
        for endpoint in [&mut any, &mut direct] {
            if let Err(err) = endpoint.stop().await {
                tracing::warn!(cause = %err, "cannot leave the request subjects");
            }
        }
        if let Err(err) = heartbeats.unsubscribe().await {
            tracing::warn!(cause = %err, "cannot stop listening to heartbeats");
        }
        if let Err(err) = service.stop().await {
            tracing::warn!(cause = %err, "cannot leave the services API");
        }
        moderator.finish().await;
    }
}
