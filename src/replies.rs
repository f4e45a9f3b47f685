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
use crate::codec::{clip, clip_to, ErrorCode, Failure, MessageId};
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
        let size = reply.packet_size();
        if size > self.max_packet.0 {
            return self.cut_error(name, job, id, failure, size);
        }
        Some(reply)
    }

    /// The error answering `job` when in full it is more than one packet of
    /// the output link may hold: a request's correlation data and user
    /// properties (up to 64 KiB each), a long response topic, or a long
    /// input topic quoted in it. Sent as it was, the client would drop it
    /// and the input would come again, to the same fate, at every
    /// redelivery. So it goes to the errors topic without the request's
    /// properties and, only as far as needed, with its text and source
    /// topic cut, without its id, and without its text: the input still
    /// gets an answer an operator can find. Each step is measured as
    /// serialized (a control character in quoted input is six bytes of
    /// JSON); the message says what was left out.
    fn cut_error(
        &self,
        model: Option<&str>,
        job: &Job,
        id: Option<&MessageId>,
        failure: &Failure,
        size: usize,
    ) -> Option<Outgoing> {
        let (max, key) = self.max_packet;
        let response_topic = job
            .properties
            .as_deref()
            .and_then(|p| p.response_topic.as_deref());
        let mut reply = None;
        let mut tried = None;
        for n in 0..Cut::STEPS {
            let step = Cut::step(n);
            let last = n + 1 == Cut::STEPS;
            let cut = Cut {
                text_cut: step.text_cut && failure.message.len() > CUT_TEXT,
                no_text: step.no_text && !failure.message.is_empty(),
                topic_cut: step.topic_cut && job.topic.len() > CUT_TOPIC,
                no_id: step.no_id && id.is_some(),
            };
            if tried == Some((cut, step.no_text)) {
                // The same as a step already built.
                continue;
            }
            let text: std::borrow::Cow<'_, str> = match (cut.no_text, cut.text_cut) {
                (true, _) => "".into(),
                (false, true) => clip_to(&failure.message, CUT_TEXT),
                (false, false) => failure.message.as_str().into(),
            };
            // The last resort keeps a source topic of a few characters
            // (six bytes each at worst): with the names config bounds, it
            // fits the smallest max_packet_bytes (the unit test
            // `an_error_at_the_config_bounds_always_fits`).
            let source: std::borrow::Cow<'_, str> = match (step.no_text, cut.topic_cut) {
                (true, _) => clip_to(&job.topic, LAST_TOPIC),
                (false, true) => clip_to(&job.topic, CUT_TOPIC),
                (false, false) => job.topic.as_str().into(),
            };
            let mut left = Vec::new();
            if response_topic.is_some() {
                left.push("sent to the errors topic without them");
            }
            if cut.no_text {
                left.push("without its text");
            } else if cut.text_cut {
                left.push("its text cut");
            }
            if cut.topic_cut || (step.no_text && job.topic.len() > LAST_TOPIC) {
                left.push("its source topic cut");
            }
            if cut.no_id {
                left.push("without its id");
            }
            if left.is_empty() && !last {
                // Nothing left out: as it was, too large.
                continue;
            }
            tried = Some((cut, step.no_text));
            if left.is_empty() {
                // Only an empty text with a short topic and no id: sent
                // as it is (answered, if the link can take it at all).
                left.push("sent as it is");
            }
            let whole = match response_topic {
                Some(_) if step.no_text => {
                    format!("{size} bytes with the request's response topic, correlation data and user properties")
                }
                Some(t) => format!(
                    "{size} bytes with the request's response topic ({}), correlation data and user properties",
                    clip(t)
                ),
                None => format!("{size} bytes"),
            };
            let separator = if text.is_empty() { "" } else { " " };
            let failure = Failure::new(
                failure.code,
                format!(
                    "{text}{separator}(this error did not fit in one packet to the broker: {whole}, more than {key} = {max}; {})",
                    left.join(", ")
                ),
            );
            let id = if cut.no_id { None } else { id };
            let mut out =
                self.error_message(model, Some(&source), job.received_at, id, &failure)?;
            out.ack = job.ack.clone();
            let fits = out.packet_size() <= max;
            reply = Some(out);
            if fits {
                break;
            }
        }
        reply
    }

    /// Logs a panic caught while serving a message of `model`: the first
    /// per interval in full (`line` says which message and what the panic
    /// said), the rest summarized. A bug that one kind of input reaches
    /// would otherwise write a line per message, as a flood of bad input
    /// does (each is still answered and counted as `inference_failed`).
    pub fn log_panic(&self, model: &str, line: impl FnOnce() -> String) {
        if self.log_limit.admit(model, "panic") {
            log::error!(model = model; "{}", line());
        }
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
                // The content type every answer to a request carries is
                // the daemon's own, not the requester's doing.
                let own = properties_size(&Properties {
                    content_type: Some(JSON.into()),
                    ..Properties::default()
                });
                let message = if self.fits(&topic, &payload, own) {
                    format!(
                        "the result is {} bytes on topic {}; with the MQTT 5 properties of the answer ({extra} bytes at most: the request's correlation data and user properties, and a content type) it is more than one MQTT packet to the broker may hold ({key} = {max}); send smaller correlation data, or raise {key} (and the broker's limit)",
                        payload.len(),
                        clip(&topic)
                    )
                } else {
                    format!(
                        "the result is {} bytes on topic {}, more than one MQTT packet to the broker may hold ({key} = {max}); lower top_k or raise {key} (and the broker's limit)",
                        payload.len(),
                        clip(&topic)
                    )
                };
                let failure = Failure::new(ErrorCode::TooLarge, message);
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

/// What [`Replies::cut_error`] leaves out of an error, step by step.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Cut {
    text_cut: bool,
    topic_cut: bool,
    no_id: bool,
    no_text: bool,
}

impl Cut {
    const STEPS: usize = 4;

    /// Each step leaves out what the one before did, and more.
    fn step(n: usize) -> Cut {
        Cut {
            text_cut: n >= 1,
            topic_cut: n >= 1,
            no_id: n >= 2,
            no_text: n >= 3,
        }
    }
}

/// A cut error's text and source topic, in bytes before JSON escaping.
const CUT_TEXT: usize = 256;
const CUT_TOPIC: usize = 64;
/// The source topic of the last resort, in bytes before JSON escaping.
const LAST_TOPIC: usize = 16;

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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const MAX: usize = 1024;

    fn replies() -> Replies {
        Replies::channel("gw", Arc::default(), (MAX, "uplink.max_packet_bytes")).0
    }

    fn request(topic: &str, correlation: usize) -> Job {
        Job {
            topic: topic.into(),
            payload: Bytes::from_static(b"{not json"),
            received_at: 1.0,
            received: Instant::now(),
            ack: None,
            properties: Some(Arc::new(Properties {
                response_topic: Some("reply/a".into()),
                correlation_data: Some(Bytes::from(vec![7u8; correlation])),
                user_properties: vec![("site".into(), "north".into())],
                content_type: None,
            })),
        }
    }

    /// A cut error's JSON and message, checked to fit in one packet.
    fn fitted(out: &Outgoing) -> (Value, String) {
        assert!(out.packet_size() <= MAX, "{}", out.packet_size());
        let v: Value = serde_json::from_slice(&out.payload).unwrap();
        let message = v["message"].as_str().unwrap().to_owned();
        (v, message)
    }

    fn bad_json() -> Failure {
        Failure::new(
            ErrorCode::BadJson,
            "expected a JSON object, got `{not json`",
        )
    }

    #[test]
    fn an_error_that_fits_goes_to_the_response_topic_with_its_properties() {
        let out = replies()
            .error(None, &request("in/x", 100), None, &bad_json())
            .unwrap();
        assert_eq!(out.topic, "reply/a");
        assert!(out.properties.is_some());
        assert!(out.packet_size() <= MAX);
    }

    /// Correlation data of 2,000 bytes cannot go back in a 1,024-byte
    /// packet: the error comes on the errors topic instead, with its code,
    /// id and a message that says why.
    #[test]
    fn an_error_too_large_with_its_properties_is_cut_onto_the_errors_topic() {
        let id = MessageId::Text("m-1".into());
        let out = replies()
            .error(None, &request("in/x", 2000), Some(&id), &bad_json())
            .unwrap();
        assert_eq!(out.topic, "edge-infer/gw/errors");
        assert!(out.properties.is_none());
        let (v, message) = fitted(&out);
        assert_eq!(v["code"], "bad_json", "{v}");
        assert_eq!(v["id"], "m-1", "{v}");
        assert_eq!(v["source_topic"], "in/x", "{v}");
        assert!(message.starts_with("expected a JSON object, got `{not json` (this error did not fit in one packet to the broker:"), "{message}");
        assert!(message.contains("with the request's response topic (reply/a), correlation data and user properties, more than uplink.max_packet_bytes = 1024; sent to the errors topic without them)"), "{message}");
    }

    /// A 5,000-byte input topic (quoted twice: source_topic and the
    /// message) and an id of 256 control characters, six bytes each in
    /// JSON: the topic is cut, and the id left out when even then the
    /// error would not fit.
    #[test]
    fn a_cut_error_clips_the_topic_and_leaves_out_an_id_it_cannot_hold() {
        let topic = format!("in/{}", "t".repeat(5000));
        let failure = Failure::new(ErrorCode::BadJson, format!("on {topic}: bad"));
        let id = MessageId::Text("\u{1}".repeat(256));
        let out = replies()
            .error(None, &request(&topic, 0), Some(&id), &failure)
            .unwrap();
        let (v, message) = fitted(&out);
        assert!(v.get("id").is_none(), "{v}");
        let source = v["source_topic"].as_str().unwrap();
        assert!(source.ends_with("(5003 bytes)"), "{source}");
        assert!(message.starts_with("on in/ttt"), "{message}");
        assert!(
            message.ends_with(", its text cut, its source topic cut, without its id)"),
            "{message}"
        );
    }

    /// Quoted input of control characters, six bytes each in JSON even
    /// when cut: the error comes with its code and why, without its text.
    #[test]
    fn a_cut_error_leaves_out_a_text_that_cannot_fit_even_cut() {
        let failure = Failure::new(ErrorCode::BadJson, "\u{1}".repeat(1000));
        let out = replies()
            .error(None, &request("in/x", 0), None, &failure)
            .unwrap();
        let (v, message) = fitted(&out);
        assert_eq!(v["code"], "bad_json", "{v}");
        assert!(message.starts_with("(this error did not fit"), "{message}");
        assert!(
            message.ends_with("; sent to the errors topic without them, without its text)"),
            "{message}"
        );
    }

    /// Nothing to leave out (an empty text, a short topic, no id, no
    /// response topic) and still too large (a device id longer than config
    /// allows): still an answer, for the link to refuse, never none.
    #[test]
    fn a_cut_error_with_nothing_to_leave_out_is_still_an_answer() {
        let (r, _rx) = Replies::channel(
            &"d".repeat(1000),
            Arc::default(),
            (MAX, "mqtt.max_packet_bytes"),
        );
        let mut job = request("in/x", 0);
        job.properties = None;
        let out = r.error(None, &job, None, &Failure::new(ErrorCode::BadJson, ""));
        let out = out.expect("an answer");
        let v: Value = serde_json::from_slice(&out.payload).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(message.ends_with("; sent as it is)"), "{message}");
    }

    /// The worst an error about a message can be at the smallest
    /// `max_packet_bytes`: a device id and model name as long as config
    /// allows, of characters JSON doubles, the longest code, a 65,535-byte
    /// topic, text and id of control characters (six bytes each in JSON),
    /// a response topic, correlation data and a nine-digit size: it still
    /// fits.
    #[test]
    fn an_error_at_the_config_bounds_always_fits() {
        // `"` is two bytes in JSON: the longest names config allows.
        let longest = "\"".repeat(crate::config::MAX_LEVEL_BYTES);
        let (r, _rx) =
            Replies::channel(&longest, Arc::default(), (1024, "uplink.max_packet_bytes"));
        let topic = "\u{1}".repeat(65_535);
        let failure = Failure::new(ErrorCode::BadResponseTopic, "\u{1}".repeat(5000));
        let id = MessageId::Text("\u{1}".repeat(5000));
        let mut job = request(&topic, 65_535);
        job.received_at = unix_now();
        let out = r
            .cut_error(Some(&longest), &job, Some(&id), &failure, 999_999_999)
            .expect("an answer");
        assert!(out.packet_size() <= 1024, "{}", out.packet_size());
    }

    /// The log macros evaluate nothing without a logger (as here), so this
    /// checks that panics go through the limiter under their own key: the
    /// first of an interval admitted, the rest held back
    /// (log_limit's tests cover what it does with them).
    #[test]
    fn repeated_panics_are_logged_once_per_interval() {
        let r = replies();
        for _ in 0..100 {
            r.log_panic("har", || "model har: internal error".into());
        }
        assert!(!r.log_limit.admit("har", "panic"));
        assert!(r.log_limit.admit("other", "panic"));
    }
}
