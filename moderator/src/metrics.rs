//! What the moderator counts, for Prometheus (`cavlo_moderator_…`, on the
//! health listener's `/metrics`; docs/operations.md lists them).

use std::sync::Arc;

use bootstrap::metrics::{LATENCY_BUCKETS, Label, Metrics, PermitsInUse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use schemas::code::ErrorCode;
use tokio::sync::Semaphore;

/// The moderator's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct ModeratorMetrics {
    requests: Family<Label, Counter>,
    rejections: Family<Label, Counter>,
    /// From publishing a chat to JetStream to its ack, per attempt.
    pub store: Histogram,
    /// Publishes that lost the race for a room's tail and were retried.
    pub tail_races: Counter,
    /// Chat messages stored (a resend recognised as a duplicate is not).
    pub stored: Counter,
}

impl ModeratorMetrics {
    /// The moderator's metrics, registered in `metrics`; `permits` bounds
    /// the membership and signal requests under way (`max_concurrent`).
    pub fn register(metrics: &Metrics, permits: Arc<Semaphore>, max_concurrent: usize) -> Self {
        let this = Self {
            requests: Family::default(),
            rejections: Family::default(),
            store: Histogram::new(LATENCY_BUCKETS),
            tail_races: Counter::default(),
            stored: Counter::default(),
        };
        metrics.register("moderator", |registry| {
            registry.register(
                "requests",
                "Requests from gateways, by action",
                this.requests.clone(),
            );
            registry.register(
                "rejections",
                "Requests refused, by error code",
                this.rejections.clone(),
            );
            registry.register(
                "store_seconds",
                "JetStream publish of a chat message, from send to ack",
                this.store.clone(),
            );
            registry.register(
                "stored",
                "Chat messages stored (resends recognised as duplicates excluded)",
                this.stored.clone(),
            );
            registry.register(
                "tail_races",
                "Chat publishes that lost the race for the room's tail and were retried",
                this.tail_races.clone(),
            );
            registry.register_collector(Box::new(PermitsInUse {
                name: "requests_in_flight",
                help: "Membership and signal requests under way (the moderator's queue depth)",
                permits,
                max: max_concurrent,
            }));
        });
        this
    }

    /// Counts a request for `action`.
    pub fn request(&self, action: &'static str) {
        self.requests.get_or_create(&[("action", action)]).inc();
    }

    /// Counts a request refused with `code`.
    pub fn rejected(&self, code: ErrorCode) {
        self.rejections
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }
}
