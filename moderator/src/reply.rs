//! The answer every request ends with.
//!
//! A path that forgets to answer leaves the client waiting for its request
//! timeout and then shows it the wrong error, so the reply is a value each
//! path moves on to whoever answers: the request loop for a check that
//! fails, a room's writer for chat, the task that changes a room or relays
//! a signal.

use async_nats::service;
use schemas::event::{self, ModerationReply, Verdict};
use schemas::id::ModeratorId;

use crate::metrics::ModeratorMetrics;

/// Where a request's verdict goes. Sending consumes it.
#[must_use = "every request must be answered, or left to its delivery"]
#[derive(Debug)]
pub struct Reply {
    /// The request, answered through the NATS services API so that its
    /// per-endpoint stats count it.
    request: service::Request,
    moderator: ModeratorId,
    metrics: ModeratorMetrics,
}

impl Reply {
    /// The answer to `request`, given by `moderator`; rejections are
    /// counted in `metrics`.
    pub(crate) fn new(
        request: service::Request,
        moderator: ModeratorId,
        metrics: ModeratorMetrics,
    ) -> Self {
        Self {
            request,
            moderator,
            metrics,
        }
    }

    /// Leaves the answer to the stored message's delivery: the gateway
    /// asked for that (see [`Action::Chat`](schemas::event::Action::Chat)),
    /// and it saves one NATS message each way per chat.
    pub fn left_to_delivery(self) {}

    /// Sends `verdict` to the requesting gateway.
    pub async fn send(self, verdict: Verdict) {
        if let Verdict::Rejected { code, .. } = &verdict {
            self.metrics.rejected(*code);
        }
        let reply = ModerationReply {
            moderator: self.moderator,
            verdict,
        };
        if let Err(err) = self.request.respond(Ok(event::encode(&reply).into())).await {
            tracing::warn!(cause = %err, "failed to send moderation reply");
        }
    }
}
