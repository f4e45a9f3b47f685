//! The worker thread: one job at a time through
//! decode -> (quantize) -> invoke -> (dequantize) -> encode, answering every
//! job with exactly one result or one error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use model_runtime::{Engine, TensorSpec};

use super::batch::{self, Batching};
use super::{Job, JobReceiver};
use crate::codec::decode::{decode_json, decode_raw, Decoded};
use crate::codec::encode::{self, Latency, Outputs, ResultMessage};
use crate::codec::{ErrorCode, Failure, MessageId};
use crate::config::PayloadFormat;
use crate::mqtt::egress::{Egress, Outgoing};
use crate::telemetry::{ModelStats, WorkerBeat};
use crate::time::unix_now;

/// What every worker of one model shares (read-only).
pub struct ModelContext {
    pub name: String,
    pub sha256: String,
    pub device_id: String,
    pub errors_topic: String,
    pub input_topic: crate::topic::TopicFilter,
    pub output_topic: crate::topic::TopicTemplate,
    pub payload: PayloadFormat,
    /// The input tensors one message fills: the engine's own inputs, or with
    /// micro-batching one row of them (batch dimension 1). Decoding checks
    /// payloads against these.
    pub message_inputs: Vec<TensorSpec>,
    /// The output tensors one result reports, likewise: one row of the
    /// engine's outputs when micro-batching, so results look the same with
    /// batching on or off.
    pub message_outputs: Vec<TensorSpec>,
    /// Micro-batching (`max_batch` > 1) or one message per invoke.
    pub batching: Batching,
    pub labels: Option<Vec<String>>,
    pub top_k: Option<usize>,
    pub stats: Arc<ModelStats>,
}

/// Starts one thread per engine of `model`, all taking jobs from `rx`.
/// Each thread exits when the queue's senders are gone and it is empty.
/// A running worker thread and what the watchdog reads of it.
pub struct Worker {
    pub handle: JoinHandle<()>,
    pub beat: Arc<WorkerBeat>,
}

/// The engines of one worker thread.
pub struct WorkerEngines {
    /// Compiled at the model's batch (with micro-batching, `max_batch`).
    pub main: Box<dyn Engine>,
    /// With micro-batching only: the same model compiled at batch 1, for a
    /// message that arrives alone (a batch-`max_batch` invoke would compute
    /// every zero row for it: measured 3x the CPU at low rates).
    pub single: Option<Box<dyn Engine>>,
}

/// Starts one thread per entry of `engines`, all taking jobs from `rx`.
/// Each thread exits when the queue's senders are gone and it is empty.
pub fn spawn_workers(
    engines: Vec<WorkerEngines>,
    ctx: &Arc<ModelContext>,
    rx: &JobReceiver,
    egress: &Egress,
    epoch: Instant,
) -> std::io::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for (i, engines) in engines.into_iter().enumerate() {
        let ctx = Arc::clone(ctx);
        let rx = rx.clone();
        let egress = egress.clone();
        let beat = Arc::new(WorkerBeat::new(epoch));
        let thread_beat = Arc::clone(&beat);
        let handle = std::thread::Builder::new()
            .name(format!("infer-{}-{i}", ctx.name))
            .spawn(move || worker_loop(engines, &ctx, &rx, &egress, &thread_beat))?;
        workers.push(Worker { handle, beat });
    }
    Ok(workers)
}

fn worker_loop(
    engines: WorkerEngines,
    ctx: &ModelContext,
    rx: &JobReceiver,
    egress: &Egress,
    beat: &WorkerBeat,
) {
    if ctx.batching.max_batch > 1 {
        return batch::batch_loop(engines, ctx, rx, egress, beat);
    }
    let mut engine = engines.main;
    while let Some(queued) = rx.recv() {
        // `queued` keeps its payload bytes charged to the queue until this
        // message is answered.
        beat.busy();
        let out = serve_one(engine.as_mut(), ctx, &queued.job, Instant::now(), None);
        beat.idle();
        if let Some(out) = out {
            egress.send_blocking(out);
        }
    }
}

/// Serves one job on `engine`: its result or error (None only if that
/// could not be serialized, which is logged). `batch_size` is reported in
/// the result (micro-batching models say 1 for a message served alone).
pub(super) fn serve_one(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    job: &Job,
    dequeued: Instant,
    batch_size: Option<usize>,
) -> Option<Outgoing> {
    // A panic while serving one message must not take the model down: the
    // message gets an error and the worker goes on.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        serve(engine, ctx, job, dequeued, batch_size)
    }));
    match outcome {
        Ok(out) => out,
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            log::error!(
                "model {}: internal error serving {}: {what}",
                ctx.name,
                job.topic
            );
            error_reply(
                ctx,
                job,
                None,
                &Failure::new(
                    ErrorCode::InferenceFailed,
                    format!("internal error: {what}"),
                ),
            )
        }
    }
}

/// What a caught panic says, for the log and the error message.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Builds the error message for `job`, counting it. None only if it could
/// not be serialized, which is logged.
pub fn error_reply(
    ctx: &ModelContext,
    job: &Job,
    id: Option<&MessageId>,
    failure: &Failure,
) -> Option<Outgoing> {
    ctx.stats.error(failure.code);
    // Structured fields: `journalctl MODEL=har ERROR_CODE=bad_shape MSG_ID=...`.
    let message_id = match id {
        Some(MessageId::Text(s)) => s.clone(),
        Some(MessageId::Number(n)) => n.to_string(),
        None => String::new(),
    };
    log::warn!(
        model = ctx.name.as_str(),
        topic = job.topic.as_str(),
        msg_id = message_id.as_str(),
        error_code = failure.code.as_str();
        "model {} topic {}: {} {}",
        ctx.name,
        job.topic,
        failure.code.as_str(),
        failure.message
    );
    encode::error_json(
        &ctx.device_id,
        Some(&ctx.name),
        Some(&job.topic),
        job.received_at,
        id,
        failure,
    )
    .map(|payload| Outgoing::message(ctx.errors_topic.clone(), payload))
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

/// Decodes `payload` into `buffers`, one per spec of
/// `ctx.message_inputs`.
pub(super) fn decode(
    ctx: &ModelContext,
    payload: &[u8],
    buffers: &mut [Vec<u8>],
) -> Result<Decoded, (Option<MessageId>, Failure)> {
    match ctx.payload {
        PayloadFormat::Json => decode_json(payload, &ctx.message_inputs, buffers),
        PayloadFormat::Raw => decode_raw(payload, &ctx.message_inputs, buffers)
            .map(|()| Decoded::default())
            .map_err(|f| (None, f)),
    }
}

fn serve(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    job: &Job,
    dequeued: Instant,
    batch_size: Option<usize>,
) -> Option<Outgoing> {
    let id = match decode(ctx, &job.payload, engine.input_buffers_mut()) {
        Ok(d) => d.id,
        Err((id, failure)) => return error_reply(ctx, job, id.as_ref(), &failure),
    };
    let decoded_at = Instant::now();
    if let Err(e) = engine.invoke() {
        return error_reply(ctx, job, id.as_ref(), &invoke_failure(&e));
    }
    let invoked_at = Instant::now();
    let outputs = engine.outputs();
    let buffers: Vec<&[u8]> = (0..outputs.len()).map(|i| engine.output(i)).collect();
    result_reply(
        ctx,
        job,
        id.as_ref(),
        outputs,
        &buffers,
        Stages {
            decode_from: dequeued,
            decoded_at,
            invoke_from: decoded_at,
            invoked_at,
            post_from: invoked_at,
            batch_size,
        },
    )
}

pub(super) fn invoke_failure(e: &model_runtime::RuntimeError) -> Failure {
    Failure::new(
        ErrorCode::InferenceFailed,
        format!("the runtime failed to run the model: {e}"),
    )
}

/// When one message's stages began and ended. Its queue time runs from
/// arrival to `decode_from` (with micro-batching that includes waiting for
/// the batch to fill); `invoke_*` is the invoke it shared.
pub(super) struct Stages {
    pub decode_from: Instant,
    pub decoded_at: Instant,
    pub invoke_from: Instant,
    pub invoked_at: Instant,
    pub post_from: Instant,
    /// With micro-batching: how many messages shared the invoke.
    pub batch_size: Option<usize>,
}

/// Builds the result message for `job` from output `buffers` described by
/// `specs`, counting it (or its error, if it cannot be serialized).
pub(super) fn result_reply(
    ctx: &ModelContext,
    job: &Job,
    id: Option<&MessageId>,
    specs: &[TensorSpec],
    buffers: &[&[u8]],
    at: Stages,
) -> Option<Outgoing> {
    let top = ctx
        .top_k
        .map(|k| encode::top_k(&specs[0], buffers[0], k, ctx.labels.as_deref()));
    let topic = match ctx.input_topic.matches(&job.topic) {
        Some(caps) => ctx.output_topic.render(&ctx.device_id, &ctx.name, &caps),
        None => ctx
            .output_topic
            .render(&ctx.device_id, &ctx.name, &Default::default()),
    };
    let done = Instant::now();
    let msg = ResultMessage {
        id,
        model: &ctx.name,
        model_sha256: &ctx.sha256,
        device_id: &ctx.device_id,
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
        outputs: Outputs { specs, buffers },
        top_k: top.as_deref(),
        batch_size: at.batch_size,
    };
    match encode::to_vec(&msg) {
        Ok(payload) => {
            ctx.stats.succeeded.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .record_latency(done.saturating_duration_since(job.received).as_micros() as u64);
            Some(Outgoing::message(topic, payload))
        }
        Err(e) => {
            let failure = Failure::new(
                ErrorCode::InferenceFailed,
                format!("cannot serialize the result: {e}"),
            );
            error_reply(ctx, job, id, &failure)
        }
    }
}
