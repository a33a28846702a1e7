//! Moderator settings.

use std::time::Duration;

use bootstrap::service::{Common, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Everything the moderator binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`, `[log]`, `[health]`
    #[serde(flatten)]
    pub common: Common,
    /// `[moderator]`
    pub moderator: ModeratorConfig,
}

/// The rules the moderator enforces (`[moderator]`, `CAVLO_MODERATOR__…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ModeratorConfig {
    /// Largest chat text accepted, in bytes, before sanitizing; larger is
    /// rejected with `too_large`. Default 10 KiB.
    pub max_chat_bytes: usize,
    /// Regular expression a room name must match in full, else `invalid_room`.
    /// Whatever it allows, names with `.`, `*`, `>` or whitespace are refused.
    /// Default `^[A-Za-z0-9_-]{1,64}$`.
    pub room_name_pattern: String,
    /// Chat messages one connection may send per minute on average; more are
    /// rejected with `rate_limited`. Default 100.
    pub chat_rate_per_minute: u32,
    /// How many chat messages a connection may send at once before the average
    /// rate applies. Default 10.
    pub chat_burst: u32,
    /// Chat messages waiting to be stored, per room; when full, further ones
    /// get `unavailable` and the client retries. The room's writer takes
    /// what waits at once to check its senders' membership in one read, so
    /// a room holds at most twice this many. Default 256.
    pub room_queue_capacity: usize,
    /// How long a room's writer stays around without messages before it frees
    /// its memory. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub room_idle_timeout: Duration,
    /// Members a room may have; the join past it gets `room_full`. Default 10.
    pub room_capacity: usize,
    /// JetStream replicas of the room-membership bucket. Default 1.
    pub rooms_replicas: usize,
    /// Largest signal `data`, in bytes, as JSON; larger gets `too_large`.
    /// Default 64 KiB (an SDP offer fits).
    pub max_signal_bytes: usize,
    /// Signals one connection may send per minute on average; more get
    /// `rate_limited`. Default 300 (50 per 10 s).
    pub signal_rate_per_minute: u32,
    /// Signals a connection may send at once, enough for an ICE burst.
    /// Default 50.
    pub signal_burst: u32,
    /// ICE candidates one connection may send per room while it is in it;
    /// more get `rate_limited`. Default 100.
    pub max_candidates_per_room: u32,
    /// A gateway silent this long is dead: its members are removed and the
    /// others get `leave` events. Keep it at least 3 gateway heartbeat
    /// intervals. Default 9 s.
    #[serde(with = "humantime_serde")]
    pub gateway_timeout: Duration,
    /// How often this moderator announces it is alive. Gateways send each
    /// room's chat to one of the moderators they heard within their
    /// `gateway_timeout`. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Membership and signal requests handled at once; more wait in NATS.
    /// Default 256.
    pub max_concurrent_requests: usize,
}

impl Default for ModeratorConfig {
    fn default() -> Self {
        Self {
            max_chat_bytes: 10 * 1024,
            room_name_pattern: "^[A-Za-z0-9_-]{1,64}$".into(),
            chat_rate_per_minute: 100,
            chat_burst: 10,
            room_queue_capacity: 256,
            room_idle_timeout: Duration::from_secs(30),
            room_capacity: 10,
            rooms_replicas: 1,
            max_signal_bytes: 64 * 1024,
            signal_rate_per_minute: 300,
            signal_burst: 50,
            max_candidates_per_room: 100,
            gateway_timeout: Duration::from_secs(9),
            heartbeat_interval: Duration::from_secs(3),
            max_concurrent_requests: 256,
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}
