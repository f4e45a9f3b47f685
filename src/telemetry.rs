//! Counters every stage bumps, read by logs now and by the health topic
//! later. Lock-free: workers and the MQTT task update them concurrently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::codec::ErrorCode;

/// Per-model counters. Every message routed to a model ends in exactly one
/// of `succeeded` or one `errors` bucket (`overloaded` counts drops).
#[derive(Debug, Default)]
pub struct ModelStats {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl ModelStats {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Ordering::Relaxed)
    }

    /// "received=10 ok=8 bad_json=1 overloaded=1": nonzero error codes only.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "received={} ok={}",
            self.received.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed)
        );
        for code in ErrorCode::ALL {
            let n = self.errors(code);
            if n > 0 {
                s.push_str(&format!(" {}={n}", code.as_str()));
            }
        }
        s
    }
}

/// Daemon-wide counters.
#[derive(Debug, Default)]
pub struct DaemonStats {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Messages that matched no model (e.g. left over in a broker session).
    pub unrouted: AtomicU64,
    /// Results/errors that could not be handed to the MQTT client.
    pub publish_failures: AtomicU64,
    /// Publishes handed to the MQTT client.
    pub publishes_requested: AtomicU64,
    /// Publishes the broker acknowledged (QoS 1) or that were written (QoS 0).
    pub publishes_done: AtomicU64,
}
