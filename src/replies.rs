//! Every message the daemon publishes is built here: results, errors (about
//! a message, or about the daemon such as `reload_failed`), and the
//! retained status and health records, each on its topic. This module owns
//! the device topics (`edge-infer/{device_id}/errors|status|health`) and
//! the one channel from the pipeline to `mqtt::egress`, so no other module
//! spells a topic or assembles a reply.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::codec::encode::{self, Extras, Latency, Outputs, ResultMessage};
use crate::codec::{ErrorCode, Failure, MessageId};
use crate::delivery::AckHandle;
use crate::job::{Job, Properties};
use crate::log_limit::RepeatLimiter;
use crate::models::ModelContext;
use crate::telemetry::{DaemonStats, StageTimes};
use crate::time::unix_now;

/// Capacity of each of the two pipeline -> publisher channels.
///
/// Results come from workers, which wait for room: when the broker is slow
/// this fills, workers wait, model queues fill, and new messages get
/// `overloaded` errors. Refusals and the supervisor's records come from
/// the event loop, which must never wait: they have a channel of their
/// own, so workers cannot take its room, and the event loop stops reading
/// from the broker long before it is full (see [`Replies::pressure`]).
/// No reply is ever dropped for lack of room.
///
/// Every waiting answer is memory (a HAR result is about 650 bytes), and
/// these channels come on top of the output link's window of unconfirmed
/// ones (`mqtt::inflight::WINDOW`). 1,024 rides out the event loop's stalls
/// (while it is stalled it takes no new input either, so the workers can
/// add at most their queues' contents); 4,096 only held more answers back
/// when the broker was slow: with the daemon stopped for 1 s in a HAR flood
/// at 20,000 msg/s, 1,024 peaked at 31.2-31.9 MB RSS against 33.2-34.0 MB
/// with 4,096, and answered more of it within 3 s.
pub const REPLY_CAPACITY: usize = 1024;

/// The longest topic MQTT can carry: its length is two bytes.
const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// Above this many unsent refusals the event loop pauses reading: one
/// read hands it at most a few dozen messages, so the rest of the channel
/// is the reserve that keeps every refusal's answer.
const URGENT_HIGH_WATER: usize = REPLY_CAPACITY / 4;

/// The device topics are spelled once, in `topic` (config validation needs
/// them too, and must not depend on this module).
pub use crate::topic::{errors_topic, health_topic, status_topic};

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    /// Status and health records are retained so a fleet tool that
    /// subscribes later still sees the latest. They are never kept in the
    /// outbox: a later one supersedes them.
    pub retain: bool,
    /// The acknowledgement of the input this answers (QoS 1 inputs): held
    /// until this is confirmed or committed to the outbox.
    pub ack: Option<AckHandle>,
    /// MQTT 5 only: the properties of an answer to a request that had a
    /// `response_topic` (its correlation data and user properties).
    pub properties: Option<Arc<Properties>>,
}

impl Outgoing {
    /// The most bytes its PUBLISH packet takes (see [`packet_size`]).
    pub fn packet_size(&self) -> usize {
        packet_size(&self.topic, &self.payload)
            + self.properties.as_deref().map_or(0, properties_size)
    }

    /// This answer is lost: the input it answers must not be acknowledged.
    pub fn lost(&self) {
        if let Some(ack) = &self.ack {
            ack.withhold();
        }
    }
}

/// The receiving end, drained by `mqtt::egress`: refusals and records
/// first, then results, each channel in order.
pub struct ReplyReceiver {
    urgent: mpsc::Receiver<Outgoing>,
    results: mpsc::Receiver<Outgoing>,
    drained: Arc<Notify>,
}

impl ReplyReceiver {
    /// The next reply; None once every `Replies` is gone and both
    /// channels are empty.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let next = tokio::select! {
            biased;
            Some(m) = self.urgent.recv() => Some(m),
            Some(m) = self.results.recv() => Some(m),
            else => None,
        };
        self.drained.notify_waiters();
        next
    }

    /// The next reply if one is waiting.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.urgent
            .try_recv()
            .or_else(|_| self.results.try_recv())
            .ok()
    }
}

/// What the event loop reads of the reply channels without keeping the
/// publisher alive (it holds no sender).
pub struct PressureGauge {
    urgent: mpsc::WeakSender<Outgoing>,
    results: mpsc::WeakSender<Outgoing>,
    drained: Arc<Notify>,
}

impl PressureGauge {
    /// Whether the event loop should pause reading from the broker.
    pub fn pressure(&self) -> Pressure {
        let (Some(urgent), Some(results)) = (self.urgent.upgrade(), self.results.upgrade()) else {
            return Pressure::Normal;
        };
        let urgent_waiting = REPLY_CAPACITY - urgent.capacity();
        if urgent_waiting > URGENT_HIGH_WATER || results.capacity() == 0 {
            Pressure::High
        } else {
            Pressure::Normal
        }
    }

    /// Resolves when the publisher takes the next reply.
    pub async fn drained(&self) {
        self.drained.notified().await
    }
}

/// How full the reply channels are, for the event loop's flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Room to spare: keep reading from the broker.
    Normal,
    /// Refusals are piling up or workers wait for room: stop reading, so
    /// the broker holds what comes (and, past its own limits, drops it
    /// where its statistics count it), until the publisher catches up.
    High,
}

/// When one message's stages began and ended. Its queue time runs from
/// arrival to `decode_from` (with micro-batching that includes waiting for
/// the batch to fill); `invoke_*` is the invoke it shared.
pub struct Stages {
    pub decode_from: Instant,
    pub decoded_at: Instant,
    pub invoke_from: Instant,
    pub invoked_at: Instant,
    pub post_from: Instant,
    /// With micro-batching: how many messages shared the invoke.
    pub batch_size: Option<usize>,
}

/// Builds replies and hands them to the publisher. Cloned into the event
/// loop (refusals), every worker (results and errors) and the supervisor
/// (status, health, `reload_failed`). The publisher ends when the last
/// clone is dropped and everything sent has been handed to the client.
#[derive(Clone)]
pub struct Replies {
    device_id: Arc<str>,
    errors_topic: Arc<str>,
    /// Every device topic (errors, status, health), never consumed.
    own_topics: Arc<[String]>,
    /// From the event loop and the supervisor (never waits).
    urgent: mpsc::Sender<Outgoing>,
    /// From workers (wait for room).
    results: mpsc::Sender<Outgoing>,
    /// Signalled by the receiver whenever it takes a reply.
    drained: Arc<Notify>,
    stats: Arc<DaemonStats>,
    /// Repeated errors are logged once per interval and summarized.
    log_limit: Arc<RepeatLimiter>,
    /// The largest MQTT packet the output link may send, and the key that
    /// sets it: a bigger result could never be published (the client would
    /// drop the connection over it, again at every retry), so it is
    /// answered with an error instead.
    max_packet: (usize, &'static str),
}

impl Replies {
    /// `max_packet`: the output link's `max_packet_bytes` and its key.
    pub fn channel(
        device_id: &str,
        stats: Arc<DaemonStats>,
        max_packet: (usize, &'static str),
    ) -> (Replies, ReplyReceiver) {
        let (urgent, urgent_rx) = mpsc::channel(REPLY_CAPACITY);
        let (results, results_rx) = mpsc::channel(REPLY_CAPACITY);
        let drained = Arc::new(Notify::new());
        let replies = Replies {
            device_id: device_id.into(),
            errors_topic: errors_topic(device_id).into(),
            own_topics: crate::topic::device_topics(device_id)
                .into_iter()
                .map(|(_, t)| t)
                .collect(),
            urgent,
            results,
            drained: Arc::clone(&drained),
            stats,
            log_limit: Arc::default(),
            max_packet,
        };
        let rx = ReplyReceiver {
            urgent: urgent_rx,
            results: results_rx,
            drained,
        };
        (replies, rx)
    }

    /// Whether `topic` is one of this daemon's own device topics, which it
    /// must never consume (it would answer its own output).
    pub fn is_own_topic(&self, topic: &str) -> bool {
        self.own_topics.iter().any(|t| t == topic)
    }

    /// Counts (and logs, once per interval) a message on an own topic that
    /// was taken and ignored.
    pub fn own_topic_ignored(&self, topic: &str) {
        self.stats.own_ignored.fetch_add(1, Ordering::Relaxed);
        if self.log_limit.admit("", "own_topic") {
            log::warn!(
                topic = topic;
                "ignored a message on {topic}, one of this daemon's own topics (a subscription left in the broker session?); it is not answered, so the daemon never feeds on its own output"
            );
        }
    }

    /// The event loop's view of how full the channels are.
    /// The device id, for templates rendered outside replies (stream keys).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn gauge(&self) -> PressureGauge {
        PressureGauge {
            urgent: self.urgent.downgrade(),
            results: self.results.downgrade(),
            drained: Arc::clone(&self.drained),
        }
    }

    /// The error answering `job`, counted against `model` (when it got as
    /// far as one; without one it reached no model and counts as
    /// unrouted) and logged with structured fields
    /// (`journalctl MODEL=har ERROR_CODE=bad_shape MSG_ID=...`), the first
    /// of its kind per interval in full and the rest summarized. None only
    /// if it could not be serialized, which is logged.
    pub fn error(
        &self,
        model: Option<&ModelContext>,
        job: &Job,
        id: Option<&MessageId>,
        failure: &Failure,
    ) -> Option<Outgoing> {
        let name = model.map(|m| m.name.as_str());
        match model {
            Some(m) => m.stats.error(failure.code),
            None => {
                self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self
            .log_limit
            .admit(name.unwrap_or(""), failure.code.as_str())
        {
            let message_id = id.map(|i| i.to_string()).unwrap_or_default();
            log::warn!(
                model = name.unwrap_or(""),
                topic = job.topic.as_str(),
                msg_id = message_id.as_str(),
                error_code = failure.code.as_str();
                "{}topic {}: {} {}",
                name.map(|n| format!("model {n} ")).unwrap_or_default(),
                job.topic,
                failure.code.as_str(),
                failure.message
            );
        }
        let mut reply = self.error_message(name, Some(&job.topic), job.received_at, id, failure)?;
        reply.ack = job.ack.clone();
        if let Some((topic, properties)) = response_to(job) {
            reply.topic = topic;
            reply.properties = Some(properties);
        }
        Some(reply)
    }

    /// Logs the summaries of repeated errors whose interval is over (about
    /// once a second), or all of them (`at_shutdown`).
    pub fn flush_log(&self, at_shutdown: bool) {
        if at_shutdown {
            self.log_limit.flush_all();
        } else {
            self.log_limit.flush();
        }
    }

    /// An error about the daemon rather than a message (`reload_failed`).
    pub fn notice(&self, failure: &Failure) -> Option<Outgoing> {
        self.error_message(None, None, unix_now(), None, failure)
    }

    fn error_message(
        &self,
        model: Option<&str>,
        source_topic: Option<&str>,
        received_at: f64,
        id: Option<&MessageId>,
        failure: &Failure,
    ) -> Option<Outgoing> {
        let payload = encode::error_json(
            &self.device_id,
            model,
            source_topic,
            received_at,
            id,
            failure,
        )?;
        Some(Outgoing {
            topic: self.errors_topic.to_string(),
            payload: payload.into(),
            retain: false,
            ack: None,
            properties: None,
        })
    }

    /// The result answering `job` from output `buffers` described by
    /// `specs`, counted (or its error, if it cannot be serialized).
    pub fn result(
        &self,
        ctx: &ModelContext,
        job: &Job,
        id: Option<&MessageId>,
        outputs: Outputs<'_>,
        at: Stages,
        extras: Extras<'_>,
    ) -> Option<Outgoing> {
        let Outputs {
            specs,
            buffers,
            accelerator,
        } = outputs;
        let top = ctx
            .top_k
            .map(|k| encode::top_k(&specs[0], buffers[0], k, ctx.labels.as_deref()));
        let (topic, properties) = match response_to(job) {
            Some((topic, properties)) => (topic, Some(properties)),
            None => (
                match ctx.input_topic.matches(&job.topic) {
                    Some(caps) => ctx.output_topic.render(&self.device_id, &ctx.name, &caps),
                    None => {
                        ctx.output_topic
                            .render(&self.device_id, &ctx.name, &Default::default())
                    }
                },
                None,
            ),
        };
        let done = Instant::now();
        let msg = ResultMessage {
            id,
            model: &ctx.name,
            model_sha256: &ctx.sha256,
            device_id: &self.device_id,
            source_topic: &job.topic,
            received_at: job.received_at,
            published_at: unix_now(),
            latency_ms: Latency {
                queue: ms_between(job.received, at.decode_from),
                pre: ms_between(at.decode_from, at.decoded_at),
                invoke: ms_between(at.invoke_from, at.invoked_at),
                post: ms_between(at.post_from, done),
                total: ms_between(job.received, done),
            },
            accelerator,
            outputs,
            top_k: top.as_deref(),
            batch_size: at.batch_size,
            window: extras.window,
            image: extras.image,
        };
        let extra = properties.as_deref().map_or(0, properties_size);
        if topic.len() > MAX_TOPIC_BYTES {
            // A wildcard capture rendered into output_topic can outgrow
            // what MQTT's two-byte length may spell; sent anyway, the
            // length would wrap and the broker read a corrupt packet.
            let failure = Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "the result's topic (output_topic of model {} with this message's topic in it) is {} bytes, more than the {MAX_TOPIC_BYTES} an MQTT topic may hold",
                    ctx.name,
                    topic.len()
                ),
            );
            return self.error(Some(ctx), job, id, &failure);
        }
        match encode::to_vec(&msg) {
            Ok(payload) if !self.fits(&topic, &payload, extra) => {
                let (max, key) = self.max_packet;
                let failure = Failure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the result is {} bytes on topic {topic}, more than one MQTT packet to the broker may hold ({key} = {max}); lower top_k or raise {key} (and the broker's limit)",
                        payload.len()
                    ),
                );
                self.error(Some(ctx), job, id, &failure)
            }
            Ok(payload) => {
                ctx.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                let total = done.saturating_duration_since(job.received);
                ctx.stats.record_latency(total.as_micros() as u64);
                ctx.stats.stages.record(&StageTimes {
                    queue: at.decode_from.saturating_duration_since(job.received),
                    pre: at.decoded_at.saturating_duration_since(at.decode_from),
                    invoke: at.invoked_at.saturating_duration_since(at.invoke_from),
                    post: done.saturating_duration_since(at.post_from),
                    total,
                });
                Some(Outgoing {
                    topic,
                    payload: payload.into(),
                    retain: false,
                    ack: job.ack.clone(),
                    properties,
                })
            }
            Err(e) => {
                let failure = Failure::new(
                    ErrorCode::InferenceFailed,
                    format!("cannot serialize the result: {e}"),
                );
                self.error(Some(ctx), job, id, &failure)
            }
        }
    }

    /// Whether a publish of `payload` on `topic` with `extra` bytes of
    /// properties fits in one packet of the output link (fixed header of
    /// up to 5 bytes, topic length, packet id).
    fn fits(&self, topic: &str, payload: &[u8], extra: usize) -> bool {
        packet_size(topic, payload) + extra <= self.max_packet.0
    }

    /// The retained status record (online or offline).
    pub fn status(&self, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic: status_topic(&self.device_id),
            payload: payload.into(),
            retain: true,
            ack: None,
            properties: None,
        }
    }

    /// The retained health record.
    pub fn health(&self, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic: health_topic(&self.device_id),
            payload: payload.into(),
            retain: true,
            ack: None,
            properties: None,
        }
    }

    /// A retained Home Assistant discovery config (an empty payload
    /// removes the entity). Topic and payload come from `homeassistant`,
    /// which spells them through `topic`.
    pub fn discovery(&self, topic: String, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic,
            payload: payload.into(),
            retain: true,
            ack: None,
            properties: None,
        }
    }

    /// The retained update state record of `model` (`[updates]`).
    pub fn model_state(&self, model: &str, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic: crate::topic::model_state_topic(&self.device_id, model),
            payload: payload.into(),
            retain: true,
            ack: None,
            properties: None,
        }
    }

    /// For worker threads: waits for room.
    pub fn send_blocking(&self, msg: Outgoing) {
        if let Err(mpsc::error::SendError(msg)) = self.results.blocking_send(msg) {
            self.lost(&msg, "publisher stopped");
        }
    }

    /// For the supervisor's drain, which answers more than the channel
    /// holds at once: waits for room while the publisher takes them, up
    /// to `until` (room that is there is taken even after it). False if
    /// the reply was not handed over: then it is counted and its input
    /// withheld, and the caller says so once for all of them.
    pub async fn send_before(&self, msg: Outgoing, until: Instant) -> bool {
        match tokio::time::timeout_at(until.into(), self.urgent.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(msg);
                true
            }
            Ok(Err(_)) | Err(_) => {
                self.count_lost(&msg);
                false
            }
        }
    }

    /// For the event loop and the supervisor, which must never wait. The
    /// event loop keeps this channel far from full (see `pressure`).
    pub fn try_send(&self, msg: Outgoing) {
        if let Err(e) = self.urgent.try_send(msg) {
            let (msg, why) = match e {
                mpsc::error::TrySendError::Full(m) => (m, "publish queue full"),
                mpsc::error::TrySendError::Closed(m) => (m, "publisher stopped"),
            };
            self.lost(&msg, why);
        }
    }

    fn lost(&self, msg: &Outgoing, why: &str) {
        self.count_lost(msg);
        log::error!("a reply could not be published: {why}");
    }

    /// A reply that will not be published: its input withheld, counted.
    fn count_lost(&self, msg: &Outgoing) {
        msg.lost();
        self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The most bytes an MQTT PUBLISH of `payload` on `topic` takes: fixed
/// header (up to 5 bytes), topic length (2), packet id (2).
pub fn packet_size(topic: &str, payload: &[u8]) -> usize {
    topic.len() + payload.len() + 9
}

/// MQTT 5 request/response: where the answer to `job` goes when its
/// request named a `response_topic` (routing has refused the ones the
/// daemon could consume), with the request's correlation data and user
/// properties and a JSON content type. None: the model's output topic (or
/// the errors topic), as with 3.1.1.
fn response_to(job: &Job) -> Option<(String, Arc<Properties>)> {
    let request = job.properties.as_deref()?;
    let topic = request.response_topic.clone()?;
    Some((
        topic,
        Arc::new(Properties {
            response_topic: None,
            correlation_data: request.correlation_data.clone(),
            user_properties: request.user_properties.clone(),
            content_type: Some(JSON.into()),
        }),
    ))
}

/// The content type of every answer.
const JSON: &str = "application/json";

/// The most bytes MQTT 5 properties add to a PUBLISH: the properties
/// length (up to 4), and per property its identifier (1) and, for strings
/// and binary data, a 2-byte length.
pub fn properties_size(p: &Properties) -> usize {
    let mut n = 4;
    if let Some(t) = &p.response_topic {
        n += 3 + t.len();
    }
    if let Some(c) = &p.correlation_data {
        n += 3 + c.len();
    }
    if let Some(c) = &p.content_type {
        n += 3 + c.len();
    }
    for (k, v) in &p.user_properties {
        n += 5 + k.len() + v.len();
    }
    n
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}
