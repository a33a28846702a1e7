//! What a media node counts, for Prometheus (`cavlo_media_…`, on the health
//! listener's `/metrics`; docs/operations.md lists them).

use bootstrap::metrics::{Label, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// A media node's metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct MediaMetrics {
    /// Participants connected to the node's calls.
    pub participants: Gauge,
    /// Calls (rooms) the node holds.
    pub calls: Gauge,
    /// Joins, by outcome.
    joins: Family<Label, Counter>,
    /// Media frames and audio packets forwarded to a participant.
    pub forwarded: Counter,
    /// Datagrams not sent because the socket's buffer was full.
    pub send_dropped: Counter,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: Counter,
    /// Participants dropped because their room no longer listed them.
    pub unlisted: Counter,
}

impl MediaMetrics {
    /// The node's metrics, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register("media", |registry| {
            registry.register(
                "participants",
                "Participants connected to this node's calls",
                this.participants.clone(),
            );
            registry.register("calls", "Calls this node holds", this.calls.clone());
            registry.register("joins", "Call joins, by outcome", this.joins.clone());
            registry.register(
                "forwarded",
                "Media frames forwarded to participants",
                this.forwarded.clone(),
            );
            registry.register(
                "send_dropped",
                "Datagrams dropped because the socket's send buffer was full",
                this.send_dropped.clone(),
            );
            registry.register(
                "keyframe_requests",
                "Keyframe requests sent to publishers",
                this.keyframe_requests.clone(),
            );
            registry.register(
                "unlisted",
                "Participants dropped because their room no longer listed them",
                this.unlisted.clone(),
            );
        });
        this
    }

    /// Counts a join that ended as `outcome` (`joined`, `elsewhere`,
    /// `refused`, `failed`).
    pub fn joined(&self, outcome: &'static str) {
        self.joins.get_or_create(&[("outcome", outcome)]).inc();
    }
}
