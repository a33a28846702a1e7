//! What history counts, for Prometheus (`cavlo_history_…`, on the health
//! listener's `/metrics`; docs/operations.md lists them).

use std::sync::Arc;

use bootstrap::metrics::{LATENCY_BUCKETS, Label, Metrics, PermitsInUse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

/// How a backlog query ended.
#[derive(Clone, Copy, Debug)]
pub enum QueryOutcome {
    /// The backlog was sent.
    Answered,
    /// The read failed; the gateway was told `unavailable`.
    Unavailable,
    /// It ran past the answer limit and was dropped.
    Abandoned,
    /// It could not be decoded.
    Malformed,
}

impl QueryOutcome {
    fn label(self) -> &'static str {
        match self {
            QueryOutcome::Answered => "answered",
            QueryOutcome::Unavailable => "unavailable",
            QueryOutcome::Abandoned => "abandoned",
            QueryOutcome::Malformed => "malformed",
        }
    }
}

/// History's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct HistoryMetrics {
    queries: Family<Label, Counter>,
    /// Stored messages read from the stream to answer queries: what a
    /// query costs, which should follow what it asked for, not the backlog.
    pub read: Counter,
    /// From a query's arrival to its answer going out.
    pub query: Histogram,
}

impl HistoryMetrics {
    /// History's metrics, registered in `metrics`; `permits` bounds the
    /// queries answered at once (`max_concurrent`).
    pub fn register(metrics: &Metrics, permits: Arc<Semaphore>, max_concurrent: usize) -> Self {
        let this = Self {
            queries: Family::default(),
            read: Counter::default(),
            query: Histogram::new(LATENCY_BUCKETS),
        };
        metrics.register("history", |registry| {
            registry.register(
                "queries",
                "Backlog queries, by outcome",
                this.queries.clone(),
            );
            registry.register(
                "read_messages",
                "Stored messages read from the chat stream to answer backlog queries",
                this.read.clone(),
            );
            registry.register(
                "query_seconds",
                "Backlog queries, from arrival to answer",
                this.query.clone(),
            );
            registry.register_collector(Box::new(PermitsInUse {
                name: "queries_in_flight",
                help: "Backlog queries being answered",
                permits,
                max: max_concurrent,
            }));
        });
        this
    }

    /// Counts a query that ended as `outcome`.
    pub fn ended(&self, outcome: QueryOutcome) {
        self.queries
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }
}
