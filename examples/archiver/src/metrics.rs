//! What the archiver counts, for Prometheus (`cavlo_archiver_…`, on the
//! health listener's `/metrics`; docs/operations.md lists them).

use bootstrap::metrics::{Label, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::archive::Appended;

/// The archiver's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct ArchiverMetrics {
    messages: Family<Label, Counter>,
    gaps: Counter,
    /// Messages in the stream the archiver has not read yet, as of its
    /// last read: how far behind it is while it catches up.
    pub pending: Gauge,
}

impl ArchiverMetrics {
    /// The archiver's metrics, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            messages: Family::default(),
            gaps: Counter::default(),
            pending: Gauge::default(),
        };
        metrics.register("archiver", |registry| {
            registry.register(
                "messages",
                "Messages read from the chat stream, by outcome: written, duplicate (already archived), malformed",
                this.messages.clone(),
            );
            registry.register(
                "gaps",
                "Messages archived after a gap: the ones before them left the bounded backlog unread",
                this.gaps.clone(),
            );
            registry.register(
                "pending",
                "Messages in the chat stream not read yet",
                this.pending.clone(),
            );
        });
        this
    }

    /// Counts what [`crate::archive::Archive::append`] did.
    pub fn appended(&self, appended: Appended) {
        let outcome = match appended {
            Appended::Written => "written",
            Appended::AfterGap { .. } => {
                self.gaps.inc();
                "written"
            }
            Appended::Duplicate => "duplicate",
        };
        self.messages.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts a stream message that is not a chat message.
    pub fn malformed(&self) {
        self.messages
            .get_or_create(&[("outcome", "malformed")])
            .inc();
    }
}
