//! Wall-clock helpers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as published in messages.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
