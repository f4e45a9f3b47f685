//! What a scrape reads and how it is written: the daemon's counters
//! (`telemetry`), the served models, the process, turned into metric
//! families by prometheus-client's encoder at each scrape. Nothing is
//! copied ahead of time: every value is an atomic load (or, for the queue
//! depth and the accelerator, the same short reads health does).

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::process::ProcessProbe;
use crate::codec::ErrorCode;
use crate::telemetry::{
    CumulativeCounts, DaemonStats, LinkStats, ModelStats, WorkerClass, LATENCY_BOUNDS_NS,
};

/// What only the running pipeline knows about a model (its queue, its
/// accelerators); the supervisor implements it, so this module reads them
/// without importing the pipeline.
pub trait ModelGauges: Send + Sync {
    /// Messages waiting in the model's queue.
    fn queue_depth(&self) -> usize;
    /// The accelerator most of its engines run on, and how many times an
    /// engine moved to a less preferred one since start.
    fn accelerator(&self) -> (String, u64);
    /// How many of its worker threads run in `class`.
    fn workers_in(&self, class: WorkerClass) -> usize;
}

/// One served model as a scrape sees it.
pub struct ModelSource {
    pub name: String,
    /// Carried over by name across reloads, so its counters only grow.
    pub stats: Arc<ModelStats>,
    pub queue_capacity: usize,
    pub windowed: bool,
    pub gauges: Box<dyn ModelGauges>,
}

/// Everything a scrape reads. The model list is replaced whole after a
/// reload; a scrape takes the current list and reads it without the lock.
pub struct Sources {
    daemon: Arc<DaemonStats>,
    /// A std Mutex: held to clone or replace the `Arc`, never while
    /// encoding.
    models: Mutex<Arc<Vec<ModelSource>>>,
    /// Held for one sysinfo refresh per scrape (scrapes are one at a time
    /// in practice; a second waits for the first's few reads of /proc).
    process: Mutex<ProcessProbe>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    pub fn new(daemon: Arc<DaemonStats>) -> Sources {
        Sources {
            daemon,
            models: Mutex::new(Arc::new(Vec::new())),
            process: Mutex::new(ProcessProbe::new()),
        }
    }

    pub fn set_models(&self, models: Vec<ModelSource>) {
        let models = Arc::new(models);
        match self.models.lock() {
            Ok(mut g) => *g = models,
            Err(p) => *p.into_inner() = models,
        }
    }

    fn models(&self) -> Arc<Vec<ModelSource>> {
        match self.models.lock() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

/// The collector registered with prometheus-client's registry.
#[derive(Debug)]
pub struct Exposition(pub Arc<Sources>);

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let models = self.0.models();
        build_info(&mut enc)?;
        encode_models(&mut enc, &models)?;
        encode_daemon(&mut enc, &self.0.daemon)?;
        let sample = match self.0.process.lock() {
            Ok(mut p) => p.sample(),
            Err(p) => p.into_inner().sample(),
        };
        if let Some(s) = sample {
            encode_process(&mut enc, &s)?;
        }
        Ok(())
    }
}

/// Error codes a model's counters can hold: `no_model` and
/// `reload_failed` are never about a model.
fn model_codes() -> impl Iterator<Item = ErrorCode> {
    ErrorCode::ALL
        .into_iter()
        .filter(|c| !matches!(c, ErrorCode::NoModel | ErrorCode::ReloadFailed))
}

fn model(name: &str) -> [(&'static str, &str); 1] {
    [("model", name)]
}

/// One sample per label set of a counter family.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, f64>(&v, None)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// A counter or gauge without labels.
fn single(
    enc: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

fn histogram_of(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &impl EncodeLabelSet,
    c: &CumulativeCounts,
) -> fmt::Result {
    let mut buckets = [(f64::INFINITY, 0u64); crate::telemetry::LATENCY_BUCKETS];
    for (i, b) in buckets.iter_mut().enumerate() {
        b.1 = c.buckets[i];
        if let Some(bound) = LATENCY_BOUNDS_NS.get(i) {
            b.0 = *bound as f64 / 1e9;
        }
    }
    m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
        c.sum_ns as f64 / 1e9,
        c.count(),
        &buckets,
        None,
    )
}

fn build_info(enc: &mut DescriptorEncoder) -> fmt::Result {
    gauges(
        enc,
        "edge_infer_build_info",
        "The running edge-infer version (always 1).",
        None,
        [([("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    )
}

fn encode_models(enc: &mut DescriptorEncoder, models: &[ModelSource]) -> fmt::Result {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
    counters(
        enc,
        "edge_infer_messages_received",
        "Messages routed to the model; each is answered by one result or one error (readings of a windowed model by its windows).",
        None,
        models.iter().map(|m| (model(&m.name), load(&m.stats.received))),
    )?;
    counters(
        enc,
        "edge_infer_results",
        "Results published by the model (answers without an error).",
        None,
        models
            .iter()
            .map(|m| (model(&m.name), m.stats.succeeded() as f64)),
    )?;
    counters(
        enc,
        "edge_infer_errors",
        "Errors answered about the model's messages, by error code (README, Errors).",
        None,
        models.iter().flat_map(|m| {
            model_codes().map(move |c| {
                (
                    [("model", m.name.as_str()), ("code", c.as_str())],
                    m.stats.errors(c) as f64,
                )
            })
        }),
    )?;
    gauges(
        enc,
        "edge_infer_queue_depth",
        "Messages waiting in the model's queue (not counting those being served).",
        None,
        models
            .iter()
            .map(|m| (model(&m.name), m.gauges.queue_depth() as f64)),
    )?;
    gauges(
        enc,
        "edge_infer_queue_capacity",
        "The most messages the model's queue holds (queue_capacity).",
        None,
        models
            .iter()
            .map(|m| (model(&m.name), m.queue_capacity as f64)),
    )?;

    let mut h = enc.encode_descriptor(
        "edge_infer_result_latency",
        "Arrival to result built, per result (the total of the result's latency_ms).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for m in models {
        histogram_of(&mut h, &model(&m.name), &m.stats.stages.total.counts())?;
    }
    let mut h = enc.encode_descriptor(
        "edge_infer_stage_latency",
        "Per result, the time of each stage of its latency_ms: queue (waiting for a worker), pre (decoding and quantizing), invoke (the model run), post (dequantizing and ranking).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for m in models {
        for (stage, c) in m.stats.stages.each() {
            if stage == "total" {
                continue;
            }
            histogram_of(
                &mut h,
                &[("model", m.name.as_str()), ("stage", stage)],
                &c.counts(),
            )?;
        }
    }

    let accel: Vec<(String, u64)> = models.iter().map(|m| m.gauges.accelerator()).collect();
    gauges(
        enc,
        "edge_infer_model_accelerator",
        "The accelerator most of the model's engines run on (always 1; the accelerator is the label).",
        None,
        models.iter().zip(&accel).map(|(m, (a, _))| {
            (
                [("model", m.name.as_str()), ("accelerator", a.as_str())],
                1.0,
            )
        }),
    )?;
    counters(
        enc,
        "edge_infer_accelerator_switches",
        "Moves of one of the model's engines to a less preferred accelerator after an invoke failed.",
        None,
        models
            .iter()
            .zip(&accel)
            .map(|(m, (_, n))| (model(&m.name), *n as f64)),
    )?;

    gauges(
        enc,
        "edge_infer_model_background_workers",
        "Worker threads of the model running in the kernel's SCHED_IDLE class (worker_priority = \"background\", or moved there by \"auto\").",
        None,
        models.iter().map(|m| {
            (
                model(&m.name),
                m.gauges.workers_in(WorkerClass::Background) as f64,
            )
        }),
    )?;
    gauges(
        enc,
        "edge_infer_model_priority_refused_workers",
        "Worker threads of the model whose worker_priority the kernel refused: they run at normal priority.",
        None,
        models
            .iter()
            .map(|m| (model(&m.name), m.gauges.workers_in(WorkerClass::Refused) as f64)),
    )?;

    let windowed: Vec<&ModelSource> = models.iter().filter(|m| m.windowed).collect();
    if !windowed.is_empty() {
        gauges(
            enc,
            "edge_infer_window_open_streams",
            "Streams a windowed model holds readings of.",
            None,
            windowed
                .iter()
                .map(|m| (model(&m.name), load(&m.stats.window.open_streams))),
        )?;
        counters(
            enc,
            "edge_infer_windows",
            "Windows completed by a windowed model (each runs the model once).",
            None,
            windowed
                .iter()
                .map(|m| (model(&m.name), load(&m.stats.window.windows))),
        )?;
        counters(
            enc,
            "edge_infer_window_readings",
            "Readings taken into a windowed model's streams.",
            None,
            windowed
                .iter()
                .map(|m| (model(&m.name), load(&m.stats.window.readings))),
        )?;
        counters(
            enc,
            "edge_infer_window_readings_discarded",
            "Readings dropped before any window used them (stream restarted, forgotten or refused).",
            None,
            windowed
                .iter()
                .map(|m| (model(&m.name), load(&m.stats.window.readings_discarded))),
        )?;
    }
    Ok(())
}

fn encode_daemon(enc: &mut DescriptorEncoder, d: &DaemonStats) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
    let seconds = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64 / 1e6;
    let s = Some(&Unit::Seconds);
    single(enc, Counter, "edge_infer_unrouted_messages", "Messages answered with an error before reaching any model (no_model, or refused before routing).", None, load(&d.unrouted))?;
    single(
        enc,
        Counter,
        "edge_infer_own_topic_messages_ignored",
        "Messages on the daemon's own device topics, taken and ignored (never answered).",
        None,
        load(&d.own_ignored),
    )?;
    single(
        enc,
        Counter,
        "edge_infer_publish_failures",
        "Answers that could not be handed to the MQTT client.",
        None,
        load(&d.publish_failures),
    )?;
    single(
        enc,
        Counter,
        "edge_infer_answers_confirmed",
        "Answers the receiving broker confirmed (PUBACK).",
        None,
        load(&d.answers_confirmed),
    )?;
    single(enc, Counter, "edge_infer_acks_stale", "Input acknowledgements not sent because their message came on an earlier connection (the broker redelivers it).", None, load(&d.acks_stale))?;
    single(enc, Counter, "edge_infer_acks_withheld", "Inputs left unacknowledged because an answer to them was lost (the broker redelivers them).", None, load(&d.acks_withheld))?;
    single(
        enc,
        Counter,
        "edge_infer_input_paused",
        "Time the input link did not read because answers were not going out fast enough.",
        s,
        seconds(&d.input_paused_us),
    )?;
    single(
        enc,
        Counter,
        "edge_infer_broker_connections",
        "Connections of the input link to its broker.",
        None,
        load(&d.connections),
    )?;
    single(
        enc,
        Counter,
        "edge_infer_broker_connection_errors",
        "Failed connection attempts and lost connections of the input link.",
        None,
        load(&d.connection_errors),
    )?;
    single(
        enc,
        Counter,
        "edge_infer_broker_offline",
        "Time the input link was down, counted when it is back.",
        s,
        seconds(&d.offline_us),
    )?;
    let links: [(&str, &LinkStats); 2] = [("input", &d.input_link), ("output", &d.output_link)];
    let brokers: Vec<String> = links.iter().map(|(_, l)| l.broker()).collect();
    gauges(
        enc,
        "edge_infer_broker_up",
        "Whether the broker link is connected (1) or not (0): input (subscriptions) and output (answers, status, health).",
        None,
        links.iter().zip(&brokers).map(|((name, l), broker)| {
            (
                [("link", *name), ("broker", broker.as_str())],
                if l.connected.load(Relaxed) { 1.0 } else { 0.0 },
            )
        }),
    )?;

    counters(
        enc,
        "edge_infer_broker_pings_unanswered",
        "Keep-alive pings the broker left unanswered while it kept sending: its queue for this client was long or full (a full one drops messages too). The connection stays up.",
        None,
        links
            .iter()
            .map(|(name, l)| ([("link", *name)], load(&l.pings_unanswered))),
    )?;

    let o = &d.outbox;
    if o.enabled.load(Relaxed) {
        single(
            enc,
            Gauge,
            "edge_infer_outbox_records",
            "Answers waiting in the disk outbox.",
            None,
            load(&o.records),
        )?;
        single(
            enc,
            Gauge,
            "edge_infer_outbox_size",
            "Bytes the outbox's records take on disk.",
            Some(&Unit::Bytes),
            load(&o.bytes),
        )?;
        single(
            enc,
            Gauge,
            "edge_infer_outbox_oldest_record_timestamp",
            "When the oldest waiting record was written (Unix time); 0 when the outbox is empty.",
            s,
            load(&o.oldest_ms) / 1e3,
        )?;
        single(
            enc,
            Counter,
            "edge_infer_outbox_stored",
            "Answers committed to the outbox.",
            None,
            load(&o.stored),
        )?;
        single(
            enc,
            Counter,
            "edge_infer_outbox_replayed",
            "Outbox records replayed and confirmed by the broker.",
            None,
            load(&o.replayed),
        )?;
        counters(
            enc,
            "edge_infer_outbox_drops",
            "Answers the outbox lost, by reason: full (dropped to make room, on_full = drop_oldest), rejected (no room, on_full = reject_new), expired (older than max_age_secs), write_error (could not be written), too_large (more than max_packet_bytes at replay).",
            None,
            [
                ("full", &o.dropped_full),
                ("rejected", &o.rejected_full),
                ("expired", &o.expired),
                ("write_error", &o.write_errors),
                ("too_large", &o.too_large),
            ]
            .map(|(reason, n)| ([("reason", reason)], load(n))),
        )?;
    }
    Ok(())
}

fn encode_process(enc: &mut DescriptorEncoder, p: &super::process::ProcessSample) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    single(
        enc,
        Counter,
        "process_cpu",
        "Total user and system CPU time spent.",
        Some(&Unit::Seconds),
        p.cpu_seconds,
    )?;
    single(
        enc,
        Gauge,
        "process_resident_memory",
        "Resident memory size.",
        Some(&Unit::Bytes),
        p.resident_bytes as f64,
    )?;
    single(
        enc,
        Gauge,
        "process_virtual_memory",
        "Virtual memory size.",
        Some(&Unit::Bytes),
        p.virtual_bytes as f64,
    )?;
    single(
        enc,
        Gauge,
        "process_start_time",
        "Start time of the process since the Unix epoch.",
        Some(&Unit::Seconds),
        p.start_time as f64,
    )?;
    if let Some(n) = p.open_fds {
        single(
            enc,
            Gauge,
            "process_open_fds",
            "Open file descriptors.",
            None,
            n as f64,
        )?;
    }
    if let Some(n) = p.max_fds {
        single(
            enc,
            Gauge,
            "process_max_fds",
            "The most file descriptors the process may open.",
            None,
            n as f64,
        )?;
    }
    Ok(())
}
