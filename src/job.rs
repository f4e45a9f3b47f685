//! One inbound MQTT message as it travels the pipeline: from the event
//! loop through a model's queue to a worker and into its reply.

use std::sync::Arc;
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
    /// MQTT 5 only: the request's properties (`response_topic`,
    /// `correlation_data`, user properties), when it carried any. Shared
    /// by every model the message fans out to.
    pub properties: Option<Arc<Properties>>,
}

/// The MQTT 5 properties of a request, or of its answer: an answer carries
/// the request's correlation data and user properties, with its own
/// content type and no response topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Where the requester wants its answer.
    pub response_topic: Option<String>,
    /// Opaque bytes the requester matches its answer by.
    pub correlation_data: Option<Bytes>,
    /// Name/value pairs, in order, repeats allowed.
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}
