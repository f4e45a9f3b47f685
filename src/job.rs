//! One inbound MQTT message as it travels the pipeline: from the event
//! loop through a model's queue to a worker and into its reply.

use std::time::Instant;

use bytes::Bytes;

use crate::delivery::AckHandle;

/// One message on its way to one model. Cloning shares the payload bytes.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub payload: Bytes,
    /// Unix time of arrival, seconds (reported in every reply).
    pub received_at: f64,
    /// Monotonic arrival time, for latencies.
    pub received: Instant,
    /// For a QoS 1 input: its acknowledgement, sent once every answer is
    /// safe (`delivery`). Every reply built from the job holds a clone.
    pub ack: Option<AckHandle>,
}
