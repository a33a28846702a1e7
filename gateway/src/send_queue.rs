//! A connection's send queue: deliveries wait here between the hub, which
//! fills it from NATS and never waits, and the connection, which writes
//! them to the socket.
//!
//! A client that does not keep up is a slow consumer: it is closed with
//! 4100 and resumes with `since`. It is judged by what it costs the
//! gateway and by time, not by a count of frames: a tab that pauses for a
//! quarter of a second while its rooms deliver 1,000 frames a second falls
//! 250 frames behind and is healthy, while one that falls seconds behind
//! is not. So the queue is bounded by the bytes of the frames it holds
//! (`send_queue_bytes`) and by how long its oldest frame has waited
//! (`send_queue_delay`); either overrun flags the connection slow. A
//! client that stops reading altogether blocks the socket write first,
//! which `write_timeout` ends with the same code.
//!
//! A frame's wait counts only while the connection could have written it:
//! not while it awaited a service for its client (its frames are handled
//! one at a time, and a request may take a timeout when NATS fails over),
//! which is the gateway's delay, not the client's ([`BusyClock`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::Delivery;

/// What one connection's queue may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of queued frames.
    pub bytes: usize,
    /// How long a frame may wait in the queue.
    pub delay: Duration,
}

/// A queue with `limits`: the hub's end and the connection's.
pub fn channel(limits: Limits) -> (QueueSender, QueueReceiver) {
    let (queue, deliveries) = mpsc::unbounded_channel();
    let bytes = Arc::new(AtomicUsize::new(0));
    let busy = BusyClock::default();
    (
        QueueSender {
            queue,
            bytes: bytes.clone(),
            limit: limits.bytes,
            busy: busy.clone(),
        },
        QueueReceiver {
            deliveries,
            bytes,
            delay: limits.delay,
            busy,
        },
    )
}

/// The time a connection spent awaiting services for its client, in
/// total, the period under way included: what a queued frame's wait does
/// not count. Read by the hub as it queues a frame, so a frame queued in
/// the middle of a busy period is credited only the rest of it.
#[derive(Clone, Debug)]
pub struct BusyClock(Arc<Busy>);

#[derive(Debug)]
struct Busy {
    epoch: Instant,
    /// Microseconds of busy periods that ended.
    total: AtomicU64,
    /// When the period under way began, in microseconds since `epoch`
    /// plus one; 0 when the connection is not busy.
    since: AtomicU64,
}

impl Default for BusyClock {
    fn default() -> Self {
        Self(Arc::new(Busy {
            epoch: Instant::now(),
            total: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }))
    }
}

impl BusyClock {
    /// The connection is busy until the guard is dropped.
    pub fn begin(&self) -> BusyGuard {
        self.0.since.store(self.micros() + 1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }

    /// Microseconds busy so far.
    fn now(&self) -> u64 {
        let since = self.0.since.load(Ordering::Relaxed);
        let running = match since {
            0 => 0,
            since => self.micros().saturating_sub(since - 1),
        };
        self.0.total.load(Ordering::Relaxed) + running
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A busy period of a connection: it ends when this is dropped.
#[derive(Debug)]
pub struct BusyGuard(BusyClock);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let clock = &self.0;
        let since = clock.0.since.swap(0, Ordering::Relaxed);
        if since > 0 {
            let busy = clock.micros().saturating_sub(since - 1);
            clock.0.total.fetch_add(busy, Ordering::Relaxed);
        }
    }
}

/// A delivery, when it was queued, and the connection's busy total then.
#[derive(Debug)]
struct Queued {
    delivery: Arc<Delivery>,
    at: Instant,
    busy_at: u64,
}

/// The hub's end of a connection's queue.
#[derive(Clone, Debug)]
pub struct QueueSender {
    queue: mpsc::UnboundedSender<Queued>,
    bytes: Arc<AtomicUsize>,
    limit: usize,
    busy: BusyClock,
}

impl QueueSender {
    /// Queues `delivery`, never waiting; `false` if it would take the
    /// queue past its bytes (the connection is then a slow consumer). A
    /// frame larger than the whole limit still goes into an empty queue,
    /// so no single frame can close a client that keeps up.
    pub fn offer(&self, delivery: Arc<Delivery>) -> bool {
        let size = delivery.frame.len();
        let before = self.bytes.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > self.limit {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        let queued = Queued {
            delivery,
            at: Instant::now(),
            busy_at: self.busy.now(),
        };
        // The connection has ended if this fails; its queue goes with it.
        let _ = self.queue.send(queued);
        true
    }
}

/// The oldest queued frame waited longer than the queue's delay.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a frame waited {0:?} in the send queue")]
pub struct Overdue(pub Duration);

/// The connection's end of its queue.
#[derive(Debug)]
pub struct QueueReceiver {
    deliveries: mpsc::UnboundedReceiver<Queued>,
    bytes: Arc<AtomicUsize>,
    delay: Duration,
    busy: BusyClock,
}

impl QueueReceiver {
    /// The clock the connection adds its busy time to.
    pub fn busy_clock(&self) -> BusyClock {
        self.busy.clone()
    }

    /// The next delivery, waiting for one; `None` once the hub let go of
    /// the queue.
    pub async fn recv(&mut self) -> Option<Result<Arc<Delivery>, Overdue>> {
        let queued = self.deliveries.recv().await?;
        Some(self.take(queued))
    }

    /// The next delivery, if one is queued.
    pub fn try_recv(&mut self) -> Option<Result<Arc<Delivery>, Overdue>> {
        let queued = self.deliveries.try_recv().ok()?;
        Some(self.take(queued))
    }

    fn take(&self, queued: Queued) -> Result<Arc<Delivery>, Overdue> {
        self.bytes
            .fetch_sub(queued.delivery.frame.len(), Ordering::Relaxed);
        let busy = Duration::from_micros(self.busy.now().saturating_sub(queued.busy_at));
        let waited = queued.at.elapsed().saturating_sub(busy);
        if waited > self.delay {
            return Err(Overdue(waited));
        }
        Ok(queued.delivery)
    }
}

#[cfg(test)]
mod tests {
    use schemas::id::Seq;

    use super::*;
    use crate::hub::DeliveryKind;

    fn delivery(bytes: usize) -> Arc<Delivery> {
        Arc::new(Delivery {
            room: "r".into(),
            kind: DeliveryKind::Chat {
                seq: Seq(1),
                prev: None,
            },
            about: None,
            frame: "x".repeat(bytes).into(),
        })
    }

    const LIMITS: Limits = Limits {
        bytes: 1000,
        delay: Duration::from_secs(10),
    };

    #[tokio::test]
    async fn frames_are_taken_while_their_bytes_fit_and_freed_as_they_leave() {
        let (sender, mut receiver) = channel(LIMITS);
        for _ in 0..10 {
            assert!(sender.offer(delivery(100)));
        }
        assert!(!sender.offer(delivery(1)), "the eleventh byte over");
        assert_eq!(receiver.recv().await.unwrap().unwrap().frame.len(), 100);
        assert!(sender.offer(delivery(100)), "room again for one frame");
        let mut left = 0;
        while let Some(next) = receiver.try_recv() {
            next.unwrap();
            left += 1;
        }
        assert_eq!(left, 10);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_limit_goes_into_an_empty_queue_only() {
        let (sender, mut receiver) = channel(LIMITS);
        assert!(sender.offer(delivery(5000)));
        assert!(!sender.offer(delivery(10)));
        receiver.recv().await.unwrap().unwrap();
        assert!(sender.offer(delivery(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_waited_past_the_delay_is_overdue() {
        let (sender, mut receiver) = channel(LIMITS);
        assert!(sender.offer(delivery(10)));
        assert!(sender.offer(delivery(10)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(receiver.recv().await.unwrap().is_ok(), "9 s is within 10");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            receiver.try_recv().unwrap().unwrap_err(),
            Overdue(Duration::from_secs(11))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_connection_spent_awaiting_services_is_not_the_clients() {
        let (sender, mut receiver) = channel(LIMITS);
        let busy = receiver.busy_clock();
        assert!(sender.offer(delivery(10)));
        tokio::time::advance(Duration::from_secs(7)).await;
        let request = busy.begin();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(request);
        assert!(
            receiver.recv().await.unwrap().is_ok(),
            "12 s queued, 5 of them awaiting a service: 7 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_queued_during_a_busy_period_is_credited_only_its_rest() {
        let (sender, mut receiver) = channel(LIMITS);
        let busy = receiver.busy_clock();
        let request = busy.begin();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(sender.offer(delivery(10)));
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(request);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            receiver.recv().await.unwrap().unwrap_err(),
            Overdue(Duration::from_secs(11)),
            "13 s queued, 2 of them busy"
        );
    }
}
