//! Wall-clock time as the wire carries it: seconds (token `exp`) and
//! milliseconds (event `ts`, ban expiries) since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 on a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch; 0 on a clock set before 1970.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
