//! History: owns the JetStream chat stream and answers backlog queries.
//!
//! * [`config`]: settings and defaults.
//! * [`stream`]: the stream's configuration (bounded per room).
//! * [`backlog`]: reading a room's retained messages and choosing what a
//!   join or resume gets.
//! * [`metrics`]: what history counts for Prometheus.
//!
//! Any number of history instances can run; they share queries through a
//! queue group and all apply the same stream configuration.

pub mod backlog;
pub mod config;
pub mod metrics;
pub mod stream;

use std::future::Future;
use std::sync::Arc;

use async_nats::Client;
use async_nats::service::endpoint::Endpoint;
use async_nats::service::{Request, Service};
use futures_util::StreamExt;
use schemas::event::{self, BacklogReply, BacklogRequest};
use schemas::id::Seq;
use schemas::subject;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::backlog::RoomEnd;
use crate::config::HistoryConfig;
use crate::metrics::{HistoryMetrics, QueryOutcome};

/// History could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The chat stream could not be created or updated.
    #[error("cannot set up the chat stream: {0}")]
    Stream(#[from] stream::EnsureStreamError),
    /// Subscribing to the query subject failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The server did not confirm the subscription.
    #[error(transparent)]
    RoundTrip(#[from] bootstrap::nats::RoundTripError),
    /// Registering with the NATS services API failed.
    #[error(transparent)]
    Service(#[from] bootstrap::nats::ServiceError),
}

/// History's name in the NATS services API (`$SRV.PING.cavlo-history`, …).
pub const SERVICE_NAME: &str = "cavlo-history";

/// A history instance whose stream and subscription are in place.
pub struct Running {
    client: Client,
    js: async_nats::jetstream::Context,
    service: Service,
    queries: Endpoint,
    /// Bounds the queries answered at once.
    permits: Arc<Semaphore>,
    /// Messages a room keeps at most: the size of one read.
    backlog_size: usize,
    metrics: HistoryMetrics,
}

/// How long one backlog read may take: less than the gateways' request
/// timeout (5 s by default), so a slow answer is still an answer.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// How long answering one query may take in all; past it nobody waits for
/// the answer any more.
const ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates or updates the chat stream and subscribes to queries. When this
/// returns, the stream exists and queries sent from now on are answered.
pub async fn start(
    client: Client,
    config: HistoryConfig,
    metrics: &bootstrap::metrics::Metrics,
) -> Result<Running, RunError> {
    let js = async_nats::jetstream::new(client.clone());
    bootstrap::nats::set_up("creating the chat stream", || stream::ensure(&js, &config)).await?;
    // Queries arrive through the NATS services API, so `nats micro`-style
    // tools list each instance with its stats.
    let service = bootstrap::nats::register_service(
        &client,
        SERVICE_NAME,
        "cavlo history: the chat stream and backlog queries",
        subject::HISTORY_QUEUE,
    )
    .await?;
    let queries =
        bootstrap::nats::add_endpoint(&service, "backlog", subject::HISTORY_BACKLOG).await?;
    bootstrap::nats::round_trip(&client).await?;
    tracing::info!(backlog_size = config.backlog_size, "history ready");
    let max_concurrent = config.max_concurrent_queries.max(1);
    let permits = Arc::new(Semaphore::new(max_concurrent));
    Ok(Running {
        client,
        js,
        service,
        queries,
        metrics: HistoryMetrics::register(metrics, permits.clone(), max_concurrent),
        permits,
        backlog_size: usize::try_from(config.backlog_size)
            .unwrap_or(usize::MAX)
            .max(1),
    })
}

/// Ready when NATS is connected and the chat stream exists.
pub fn readiness(client: &Client) -> bootstrap::health::Check {
    bootstrap::health::streams_ready(client, &[subject::CHAT_STREAM])
}

impl Running {
    /// Answers backlog queries until `shutdown` resolves and the queries in
    /// flight are answered.
    pub async fn run(self, shutdown: impl Future) {
        let Running {
            client,
            js,
            service,
            mut queries,
            permits,
            backlog_size,
            metrics,
        } = self;
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(msg) = queries.next() => {
                    // Wait for a permit here, not in the task, so a burst of
                    // queries queues in NATS rather than in memory.
                    let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                    let (client, js, metrics) = (client.clone(), js.clone(), metrics.clone());
                    tasks.spawn(async move {
                        let arrived = std::time::Instant::now();
                        // Bounded as a whole, not only the read: a query that
                        // hangs anywhere (a subscribe or publish while the
                        // client reconnects) must give its permit back, or
                        // enough of them stop history for good.
                        let outcome = tokio::time::timeout(ANSWER_LIMIT, answer(&client, &js, &metrics, backlog_size, msg))
                            .await
                            .unwrap_or_else(|_| {
                                tracing::warn!("backlog query abandoned after {ANSWER_LIMIT:?}");
                                QueryOutcome::Abandoned
                            });
                        metrics.ended(outcome);
                        metrics.query.observe(arrived.elapsed().as_secs_f64());
                        drop(permit);
                    });
                }
                Some(_) = tasks.join_next() => {}
            }
        }
        tracing::info!("history shutting down");
        // Out of the queue group first, so new queries go to the others
        // while this one answers what it holds. A failure here does not
        // stop the shutdown: the connection closes once the queries in
        // hand are answered, which ends the subscription too.
        if let Err(err) = queries.stop().await {
            tracing::warn!(cause = %err, "cannot leave the query subject");
        }
        if let Err(err) = service.stop().await {
            tracing::warn!(cause = %err, "cannot leave the services API");
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Answers one query; says how it ended.
async fn answer(
    client: &Client,
    js: &async_nats::jetstream::Context,
    metrics: &HistoryMetrics,
    backlog_size: usize,
    query: Request,
) -> QueryOutcome {
    let request = match event::decode::<BacklogRequest>(&query.message.payload) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(cause = %err, "dropping a malformed backlog query");
            return QueryOutcome::Malformed;
        }
    };
    let (reply, outcome) = match read_current(client, js, metrics, &request, backlog_size).await {
        Ok(retained) => {
            let selected = backlog::select(retained, request.since, request.limit);
            let backlog = backlog::fit(selected, reply_budget(client));
            (BacklogReply::Backlog(backlog), QueryOutcome::Answered)
        }
        Err(err) => {
            tracing::warn!(cause = %err, room = %request.room, "backlog query failed");
            (BacklogReply::Unavailable, QueryOutcome::Unavailable)
        }
    };
    if let Err(err) = query.respond(Ok(event::encode(&reply).into())).await {
        tracing::warn!(cause = %err, "failed to send backlog");
    }
    outcome
}

/// How long a query waits for the stream leader's word on where the room
/// ends before reading the whole room without it.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The wait before reading again from a replica that was behind, or when
/// none answered.
const BEHIND_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads what a query needs of the room's retained messages, as current as
/// the stream's leader.
///
/// The leader is asked first for the room's last message: where the room
/// ends and how densely it sits in the stream tell where to start reading
/// so that only about what the query needs is read ([`backlog::read_from`]),
/// rather than the whole retained room; a read that falls short starts
/// further back.
///
/// A direct get is answered by whichever replica the server picks, and a
/// replica back from a partition, or just a few ms behind, can lack the
/// room's latest messages. A join served from it would miss them until the
/// room's next message revealed the gap; one whose `since` lay past the
/// replica's end looked like a reset stream, and the client was sent its
/// last messages again: the duplicates and reorderings of the 30 s
/// partition in the fault suite. So the read is repeated until it reaches
/// the leader's last message, within the read timeout (else the query fails
/// and the client retries). If the leader does not answer (an election),
/// the whole room is read, and trusted unless it ends before `since`.
async fn read_current(
    client: &Client,
    js: &async_nats::jetstream::Context,
    metrics: &HistoryMetrics,
    request: &BacklogRequest,
    backlog_size: usize,
) -> Result<Vec<backlog::Retained>, backlog::ReadError> {
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    // A stream without a leader (an election) may not answer at all: wait
    // for it only briefly, and leave the read its time.
    let end = match tokio::time::timeout(LEADER_WAIT, bootstrap::room_tail::read(js, &request.room))
        .await
    {
        Ok(Ok(Some(tail))) => RoomEnd::At(tail),
        Ok(Ok(None)) => RoomEnd::Empty,
        Ok(Err(err)) => {
            tracing::debug!(cause = %err, room = %request.room, "no word from the leader; trusting the read");
            RoomEnd::Unknown
        }
        Err(_) => {
            tracing::debug!(room = %request.room, "no word from the leader within {LEADER_WAIT:?}; trusting the read");
            RoomEnd::Unknown
        }
    };
    // While no replica answers direct gets (one catching up after a restart
    // stops answering them), ask again until the deadline rather than fail
    // the join at once.
    let read = async |from: u64| loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match backlog::read_room(client, &request.room, from, backlog_size, left).await {
            Err(backlog::ReadError::NoResponders) if left > BEHIND_RETRY => {
                tokio::time::sleep(BEHIND_RETRY).await;
            }
            read => {
                if let Ok(messages) = &read {
                    metrics.read.inc_by(messages.len() as u64);
                }
                return read;
            }
        }
    };
    let wanted = match (request.since, end.last_seq()) {
        (Some(since), Some(last)) if since < last => last.0 - since.0,
        _ => request.limit as u64,
    };
    let mut from = backlog::read_from(end.tail(), wanted);
    loop {
        let mut retained = read(from).await?;
        while backlog::is_behind(&retained, end, request.since) {
            if tokio::time::Instant::now() + BEHIND_RETRY >= deadline {
                let behind = end.last_seq().or(request.since).unwrap_or(Seq(0));
                return Err(backlog::ReadError::Behind(behind));
            }
            tokio::time::sleep(BEHIND_RETRY).await;
            retained = read(from).await?;
        }
        match end.tail() {
            Some(tail) if from > 1 && !backlog::covers(&retained, request.since, wanted) => {
                from = backlog::further_back(tail, from);
            }
            _ => return Ok(retained),
        }
    }
}

/// Bytes a reply may take: the server's payload limit less room for headers.
fn reply_budget(client: &Client) -> usize {
    (client.server_info().max_payload).saturating_sub(4096)
}
