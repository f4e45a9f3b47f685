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
use std::time::{Duration, Instant};

use model_runtime::Engine;

pub use queue::{Fullness, JobReceiver, ModelQueue, Offer, Queued, MAX_EVICTIONS};
use sched::StarveWatch;
pub use serve::outputs_for;

use crate::config::WorkerPriority;
use crate::cores;
use crate::models::{priority, typical_message_bytes, IntakeKind, ModelContext, WorkerEngines};
use crate::replies::{Outgoing, Replies};
use crate::telemetry::{WorkerBeat, WorkerClass};

/// A running worker thread, what the watchdog reads of it, and the
/// watchdog's watch for its starving in the background.
pub struct Worker {
    pub handle: JoinHandle<()>,
    pub beat: Arc<WorkerBeat>,
    pub starving: StarveWatch,
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
        let name = format!("infer-{}-{i}", ctx.name);
        let starving = StarveWatch::new(name.clone(), ctx.priority);
        let builder = std::thread::Builder::new().name(name);
        let handle = cores::spawn(builder, move || {
            let _on_thread = thread_beat.on_this_thread(false);
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
        workers.push(Worker {
            handle,
            beat,
            starving,
        });
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
    let mut held = Held::default();
    let mut next = rx.recv();
    while let Some(queued) = next {
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
        // Its answer is built: its payload bytes leave the queue's budget.
        drop(queued);
        held.push(out, dequeued);
        next = if held.may_wait(beat.class(), dequeued.elapsed()) {
            rx.try_recv()
        } else {
            None
        };
        if next.is_none() {
            held.send(replies);
            next = rx.recv();
        }
    }
}

/// Answers a worker holds back while more messages are already waiting,
/// to hand them to the publisher together: one wake-up of the event loop
/// (an eventfd write, a context switch) for the lot instead of one per
/// answer, and one write to the broker. Measured with the default config,
/// HAR at 19,000-23,000 msg/s on 2 cores: 6-10% less CPU per message
/// (bench/notes.md). It holds them for one more message only if that one,
/// taking as long as the last, would end within [`HOLD_FOR`] of the first
/// held message's start, and at most [`HOLD_MAX`]; when the queue is empty
/// they go at once, so a message that arrives alone is answered as before.
/// (A message that suddenly takes far longer than the one before still
/// delays them by its own time.)
#[derive(Default)]
struct Held {
    answers: Vec<Outgoing>,
    since: Option<Instant>,
}

/// The most answers held back.
const HOLD_MAX: usize = 16;
/// The longest from the first held message's start to its answer's
/// hand-off, as foreseen: a dozen light messages (HAR takes ~15 µs), less
/// than one heavy one (a heavy model's answers go one by one).
const HOLD_FOR: Duration = Duration::from_micros(250);

impl Held {
    /// Holds the answer of a message whose serving started at `started`:
    /// the time to its answer counts, so a message heavier than
    /// [`HOLD_FOR`] is sent at once.
    fn push(&mut self, out: Option<Outgoing>, started: Instant) {
        if let Some(out) = out {
            self.since.get_or_insert(started);
            self.answers.push(out);
        }
    }

    /// Whether the held answers may wait for one more message, expected
    /// to take `next` (as long as the last one took), on a worker of
    /// `class`: a background worker may wait for a core mid-message, so
    /// its answers go at once.
    fn may_wait(&self, class: WorkerClass, next: Duration) -> bool {
        class != WorkerClass::Background
            && self.answers.len() < HOLD_MAX
            && self.since.is_none_or(|t| t.elapsed() + next < HOLD_FOR)
    }

    fn send(&mut self, replies: &Replies) {
        self.since = None;
        for out in self.answers.drain(..) {
            replies.send_blocking(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_engine::{
        answers_each_in_order, queue_of, serve_with, summing, Summer, WorkerLoop,
    };

    const ONE_AT_A_TIME: WorkerLoop =
        |engine, ctx, rx, replies, beat| one_at_a_time(engine, ctx, rx, replies, beat);

    /// More messages than answers are held back, queued before the
    /// worker starts: each answered in order, as `ahead`'s loop does.
    #[test]
    fn a_backlog_is_answered_in_order() {
        answers_each_in_order(ONE_AT_A_TIME, 3 * HOLD_MAX + 5);
    }

    /// A message alone is answered while the worker waits for the next:
    /// nothing is held when the queue is empty.
    #[test]
    fn a_message_alone_is_answered_at_once() {
        let ctx = summing();
        let (q, rx) = queue_of(std::iter::once(r#"{"id": 1, "data": [1, 2]}"#.to_string()));
        let (worker, mut replies, _beat) =
            serve_with(ONE_AT_A_TIME, Box::new(Summer::new(1)), &ctx, &rx);
        let deadline = Instant::now() + Duration::from_secs(60);
        let answer = loop {
            if let Some(out) = replies.try_recv() {
                break out;
            }
            assert!(
                Instant::now() < deadline,
                "no answer while the queue stays open"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(v["outputs"][0]["values"], serde_json::json!([3.0]), "{v}");
        drop(q);
        worker.join().unwrap();
    }

    /// Held answers stop waiting at [`HOLD_MAX`], or when one more message
    /// as long as the last would end [`HOLD_FOR`] after the first held
    /// one started (a heavy one goes at once), and never wait on a
    /// background worker.
    #[test]
    fn held_answers_wait_for_a_few_light_messages_at_most() {
        let answer = || {
            Some(Outgoing {
                topic: "out".into(),
                payload: bytes::Bytes::from_static(b"{}"),
                retain: false,
                ack: None,
                properties: None,
            })
        };
        // Started "later", so no pause of this thread ages them past
        // HOLD_FOR: only the count is checked here.
        let light = Instant::now() + Duration::from_secs(3600);
        let quick = Duration::from_micros(15);
        let mut held = Held::default();
        assert!(held.may_wait(WorkerClass::Normal, quick));
        for _ in 0..HOLD_MAX - 1 {
            held.push(answer(), light);
            assert!(held.may_wait(WorkerClass::Normal, quick));
        }
        held.push(answer(), light);
        assert!(!held.may_wait(WorkerClass::Normal, quick));

        // A message as long as the last would end past HOLD_FOR.
        let mut slow = Held::default();
        slow.push(answer(), light);
        assert!(!slow.may_wait(WorkerClass::Normal, HOLD_FOR));

        let mut heavy = Held::default();
        let started = Instant::now() - HOLD_FOR;
        heavy.push(answer(), started);
        assert!(!heavy.may_wait(WorkerClass::Normal, Duration::ZERO));
        // No answer (none built), nothing held.
        let mut none = Held::default();
        none.push(None, started);
        assert!(none.may_wait(WorkerClass::Normal, quick));

        // A background worker's go at once; one refused the background
        // runs as a normal one.
        let mut background = Held::default();
        background.push(answer(), light);
        assert!(!background.may_wait(WorkerClass::Background, quick));
        assert!(background.may_wait(WorkerClass::Refused, quick));
    }
}
