//! Moderator settings.

use std::time::Duration;

use bootstrap::nats::NatsConfig;
use bootstrap::service::ServiceConfig;
use bootstrap::telemetry::LogConfig;
use serde::{Deserialize, Serialize};

/// Everything the moderator binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`
    pub nats: NatsConfig,
    /// `[log]`
    pub log: LogConfig,
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
    /// get `unavailable` and the client retries. Default 256.
    pub room_queue_capacity: usize,
    /// How long a room's writer stays around without messages before it frees
    /// its memory. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub room_idle_timeout: Duration,
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
        }
    }
}

impl ServiceConfig for Config {
    fn nats(&self) -> &NatsConfig {
        &self.nats
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}
