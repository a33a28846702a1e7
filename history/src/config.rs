//! History settings.

use std::time::Duration;

use bootstrap::service::{Common, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Everything the history binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`, `[log]`, `[health]`
    #[serde(flatten)]
    pub common: Common,
    /// `[history]`
    pub history: HistoryConfig,
}

/// The chat stream and the backlog service (`[history]`, `CAVLO_HISTORY__…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    /// Messages kept per room; older ones are trimmed and a resume past them
    /// reports `truncated`. Default 100.
    pub backlog_size: i64,
    /// Messages older than this are trimmed; `0s` keeps them until
    /// `backlog_size` or `max_bytes` pushes them out. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Bytes the whole stream may hold across all rooms; the oldest messages
    /// go first. Default 1 GiB.
    pub max_bytes: i64,
    /// JetStream replicas of the stream (1, 3 or 5; more than 1 needs a NATS
    /// cluster). Default 1.
    pub replicas: usize,
    /// How long a resent message (same user, room and client id) is
    /// recognised and not stored twice. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Backlog queries one history instance answers at once; more wait.
    /// Default 64.
    pub max_concurrent_queries: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            backlog_size: 100,
            max_age: Duration::ZERO,
            max_bytes: 1024 * 1024 * 1024,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_concurrent_queries: 64,
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}
