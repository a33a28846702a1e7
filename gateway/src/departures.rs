//! Telling the moderator that a connection left its rooms, reliably.
//!
//! A connection that closes cannot wait for the moderator, and the moderator
//! may be unreachable for a while; a member left in the rooms bucket would be
//! a ghost that holds a seat for as long as its gateway lives. So departures
//! go through a queue whose worker retries each with backoff until a
//! moderator applies it, however long the outage; only once the gateway is
//! stopping does it give up (its members are then removed anyway, when the
//! moderators find the gateway gone).

use std::sync::Arc;
use std::time::Duration;

use schemas::client::Member;
use schemas::code::ErrorCode;
use schemas::event::{Action, Verdict};
use schemas::id::{JoinId, ModeratorId, RoomId};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Requester};

/// Departures waiting for the worker; past this, closing connections wait.
const QUEUE_CAPACITY: usize = 4096;
/// Departures under way at once, each retried until applied; past this,
/// the worker waits and the queue fills. Through an outage each waits
/// between its attempts without holding a request slot, so a few
/// thousand undeliverable leaves do not stall the ones that would pass.
const UNDER_WAY: usize = 4096;
/// Leave requests in flight at once.
const CONCURRENCY: usize = 64;
/// Attempts per departure once the gateway is stopping, with backoff from
/// 100 ms doubling to 5 s. Before that there is no limit: a departure given
/// up after a minute, as before, left a ghost in a room after every outage
/// longer than that.
const ATTEMPTS_WHEN_STOPPING: u32 = 16;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A connection left a room.
#[derive(Debug)]
pub struct Departure {
    /// Who.
    pub member: Member,
    /// Which room.
    pub room: RoomId,
    /// The connection's last join attempt there, cancelled if not applied yet.
    pub attempt: Option<JoinId>,
    /// The connection's moderator, which also forgets its budgets there.
    pub moderator: Option<ModeratorId>,
    /// Dropped once the departure is over (applied, refused, or given up
    /// as the gateway stops): the connection's next join of the room waits
    /// for it, so that its own late leave cannot undo that join.
    pub over: oneshot::Sender<()>,
}

/// The sending side, held by connections.
#[derive(Clone)]
pub struct Departures {
    queue: mpsc::Sender<Departure>,
}

impl Departures {
    /// Starts the worker; it finishes what is queued once `closing` is
    /// cancelled, then returns.
    pub fn start(bus: Bus, closing: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        (Self { queue }, tokio::spawn(work(bus, rx, closing)))
    }

    /// Queues a departure, waiting for room in the queue if it is full.
    pub async fn send(&self, departure: Departure) {
        if self.queue.send(departure).await.is_err() {
            tracing::warn!("departure dropped: the gateway is stopping");
        }
    }
}

async fn work(bus: Bus, mut rx: mpsc::Receiver<Departure>, closing: CancellationToken) {
    let under_way = Arc::new(Semaphore::new(UNDER_WAY));
    let in_flight = Arc::new(Semaphore::new(CONCURRENCY));
    let mut sending = JoinSet::new();
    loop {
        let departure = tokio::select! {
            Some(departure) = rx.recv() => departure,
            _ = closing.cancelled() => {
                rx.close();
                match rx.recv().await {
                    Some(departure) => departure,
                    None => break,
                }
            }
            Some(_) = sending.join_next() => continue,
        };
        let permit = under_way
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (bus, closing, in_flight) = (bus.clone(), closing.clone(), in_flight.clone());
        sending.spawn(async move {
            leave(&bus, departure, &in_flight, &closing).await;
            drop(permit);
        });
    }
    while sending.join_next().await.is_some() {}
}

async fn leave(
    bus: &Bus,
    departure: Departure,
    in_flight: &Semaphore,
    closing: &CancellationToken,
) {
    let Departure {
        member,
        room,
        attempt,
        moderator,
        // Named, not `_`: held until the departure is over, whose drop
        // tells the connection so.
        over: _over,
    } = departure;
    let mut from = Requester::new(member);
    from.moderator = moderator;
    let mut backoff = Duration::from_millis(100);
    for attempts in 1.. {
        let action = Action::Leave {
            room: room.clone(),
            attempt: attempt.clone(),
        };
        let verdict = {
            let _slot = in_flight.acquire().await.expect("never closed");
            bus.moderate(&mut from, action).await
        };
        match verdict {
            Ok(Verdict::Rejected { code, message })
                if !matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) =>
            {
                tracing::warn!(%room, %code, %message, "the moderator refused a departure");
                return;
            }
            Ok(Verdict::Rejected { .. }) | Err(_) => {}
            Ok(_) => return,
        }
        if attempts >= ATTEMPTS_WHEN_STOPPING && closing.is_cancelled() {
            tracing::error!(%room, conn_id = %from.member.conn_id, "gave up telling the moderator a member left");
            return;
        }
        if attempts == ATTEMPTS_WHEN_STOPPING {
            tracing::warn!(%room, conn_id = %from.member.conn_id, "still telling the moderator a member left");
        }
        tokio::time::sleep(bootstrap::backoff::jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
