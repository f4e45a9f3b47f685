//! One inbound MQTT message as it travels the pipeline: from the event
//! loop through a model's queue to a worker and into its reply.

use std::time::Instant;

use bytes::Bytes;

/// One message on its way to one model. Cloning shares the payload bytes.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub payload: Bytes,
    /// Unix time of arrival, seconds (reported in every reply).
    pub received_at: f64,
    /// Monotonic arrival time, for latencies.
    pub received: Instant,
}
