//! Per-model inference workers: a bounded queue per model (`queue`) feeding
//! dedicated OS threads that decode, quantize, invoke, dequantize and
//! encode (`serve`), one message per invoke (big messages decoded ahead
//! on a thread beside the worker: `ahead`) or, with micro-batching
//! (`batch`), up to `max_batch` messages per invoke; windowed models
//! (`windowed`) append each message's readings to its stream (`window`)
//! and invoke once per completed window. Inference never runs on the async
//! runtime's threads. Every job taken gets exactly one reply, handed to
//! `replies`; for windowed models, every completed window gets its result
//! and every refused reading its error.

mod ahead;
mod batch;
mod colocate;
pub mod queue;
mod sched;
mod serve;
#[cfg(test)]
mod test_engine;
mod window;
mod windowed;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use model_runtime::Engine;

pub use queue::{JobReceiver, ModelQueue, Offer, Queued, MAX_EVICTIONS};
pub use serve::outputs_for;

use crate::config::WorkerPriority;
use crate::cores;
use crate::models::{priority, typical_message_bytes, IntakeKind, ModelContext, WorkerEngines};
use crate::replies::Replies;
use crate::telemetry::{WorkerBeat, WorkerClass};

/// A running worker thread and what the watchdog reads of it.
pub struct Worker {
    pub handle: JoinHandle<()>,
    pub beat: Arc<WorkerBeat>,
}

/// Starts one thread per entry of `engines`, all taking jobs from `rx`
/// (each with a decoder thread beside it where that pays: `ahead`).
/// Each thread exits when the queue's senders are gone and it is empty.
/// If a thread cannot be started, the ones already started are left to
/// exit with the queue (the caller drops its sender) and the error is
/// returned.
pub fn spawn_workers(
    engines: Vec<WorkerEngines>,
    ctx: &Arc<ModelContext>,
    intra_op_threads: usize,
    rx: &JobReceiver,
    replies: &Replies,
    epoch: Instant,
) -> std::io::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    let decode_ahead = ahead::pays(ctx, engines.len(), intra_op_threads);
    if decode_ahead {
        log::info!(
            "model {}: each worker decodes the next message on a thread of its own while the engine runs this one (messages of ~{} KB)",
            ctx.name,
            typical_message_bytes(ctx.payload, &ctx.message_inputs, &ctx.intake) / 1000
        );
    }
    // A windowed model's workers share its streams.
    let streams = match &ctx.intake.kind {
        IntakeKind::Window(w) => Some(Arc::new(Mutex::new(window::Streams::new(
            w.shape,
            Instant::now(),
        )))),
        _ => None,
    };
    for (i, engines) in engines.into_iter().enumerate() {
        let ctx = Arc::clone(ctx);
        let rx = rx.clone();
        let replies = replies.clone();
        let beat = Arc::new(WorkerBeat::new(epoch));
        let thread_beat = Arc::clone(&beat);
        let streams = streams.clone();
        let builder = std::thread::Builder::new().name(format!("infer-{}-{i}", ctx.name));
        let handle = cores::spawn(builder, move || {
            // A thread starts in its starter's class: the daemon's
            // threads are normal, so only background needs a call.
            let class = match enter(ctx.priority) {
                Ok(class) => class,
                Err(e) => {
                    // The load said so already, with the reason;
                    // health counts the worker as refused.
                    log::debug!(
                        "worker infer-{}-{i}: worker_priority = \"{}\" not applied: {e}",
                        ctx.name,
                        ctx.priority.as_str()
                    );
                    WorkerClass::Refused
                }
            };
            thread_beat.entered(class);
            worker_loop(
                engines,
                &ctx,
                &rx,
                &replies,
                &thread_beat,
                streams.as_deref(),
                decode_ahead,
            )
        })?;
        workers.push(Worker { handle, beat });
    }
    Ok(workers)
}

/// Puts the calling thread in `priority`'s class; the class it is in.
fn enter(priority: WorkerPriority) -> std::io::Result<WorkerClass> {
    priority::enter(priority)?;
    Ok(match priority {
        WorkerPriority::Background => WorkerClass::Background,
        // An auto worker starts normal (`sched` may move it).
        WorkerPriority::Normal | WorkerPriority::Auto => WorkerClass::Normal,
    })
}

fn worker_loop(
    engines: WorkerEngines,
    ctx: &Arc<ModelContext>,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &Arc<WorkerBeat>,
    streams: Option<&Mutex<window::Streams>>,
    decode_ahead: bool,
) {
    if let (IntakeKind::Window(intake), Some(streams)) = (&ctx.intake.kind, streams) {
        return windowed::window_loop(engines.main, ctx, intake, streams, rx, replies, beat);
    }
    if ctx.batching.max_batch > 1 {
        return batch::batch_loop(engines, ctx, rx, replies, beat);
    }
    if decode_ahead {
        return ahead::ahead_loop(engines.main, ctx, rx, replies, beat);
    }
    one_at_a_time(engines.main, ctx, rx, replies, beat)
}

/// Decodes, invokes and answers each message in turn.
fn one_at_a_time(
    mut engine: Box<dyn Engine>,
    ctx: &ModelContext,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &WorkerBeat,
) {
    let mut scratch = serve::Scratch::default();
    let mut fit = sched::SchedFit::for_this_thread(ctx.priority);
    while let Some(queued) = rx.recv() {
        // `queued` keeps its payload bytes charged to the queue until this
        // message is answered.
        beat.busy();
        let dequeued = Instant::now();
        let out = serve::serve_one(
            engine.as_mut(),
            ctx,
            replies,
            &queued.job,
            dequeued,
            None,
            &mut scratch,
        );
        beat.idle();
        sched::observe(&mut fit, dequeued, beat);
        if let Some(out) = out {
            replies.send_blocking(out);
        }
    }
}
