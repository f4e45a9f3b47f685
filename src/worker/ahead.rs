//! Decoding ahead: a worker whose messages take long to decode (JSON
//! tensors of hundreds of kilobytes, JPEG and PNG files) gets a decoder
//! thread that decodes the next message while the engine runs this one.
//!
//! One message at a time, a worker leaves a core idle while it decodes and
//! the engine idle meanwhile: MobileNetV2's 958 KB JSON images took 2.0 ms
//! to parse and quantize and 2.4 ms to invoke (one intra-op thread), 4.6 ms
//! a message on one core of two. With the two overlapped, a message costs
//! the longer of the two. The price is a hand-off between two threads per
//! message, tens of microseconds, which only messages that take
//! milliseconds to decode repay ([`pays`]).
//!
//! Sets of input buffers take turns: the engine holds one, the decoder
//! fills the others, and the worker swaps one in before each invoke (every
//! engine copies its inputs at invoke). So the decoder is at most
//! [`depth`] messages ahead, in order. A message's payload leaves the
//! queue's byte budget once decoded.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use model_runtime::Engine;

use super::sched::{self, Before, SchedFit};
use super::serve::{self, decode_caught, internal_error, Decoded, Scratch};
use super::{JobReceiver, Queued};
use crate::codec::{Failure, MessageId};
use crate::config::{PayloadFormat, WorkerPriority};
use crate::cores;
use crate::models::{priority, typical_message_bytes, IntakeKind, ModelContext};
use crate::replies::Replies;
use crate::telemetry::{WorkerBeat, WorkerClass};

/// JSON tensor messages from this size on (about 8,000 numbers, some
/// 0.1 ms of parsing) are worth a decoder.
const JSON_FROM_BYTES: usize = 64 * 1024;

/// Whether a model's workers decode ahead: its messages are images or big
/// JSON tensors, one at a time (micro-batching decodes a batch's messages
/// while it fills), and a core is left over by its workers' intra-op
/// threads (a decoder on a core XNNPACK computes on slows every invoke).
pub fn pays(ctx: &ModelContext, workers: usize, intra_op_threads: usize) -> bool {
    let heavy = match (&ctx.intake.kind, ctx.payload) {
        (IntakeKind::Image { .. }, _) => true,
        (IntakeKind::Tensors, PayloadFormat::Json) => {
            typical_message_bytes(ctx.payload, &ctx.message_inputs, &ctx.intake) >= JSON_FROM_BYTES
        }
        _ => false,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    heavy && ctx.batching.max_batch <= 1 && workers.saturating_mul(intra_op_threads) < cores
}

/// JSON tensors decoded ahead at most: three. Decoded, a message holds
/// its tensor instead of its text (MobileNetV2's 958 KB become 150 KB of
/// int8) and leaves the queue's byte budget, which holds only three such
/// payloads (`models::queue_budget`). While the engine's thread is held
/// up (on 2 cores shared with the broker, for a few milliseconds now and
/// then) the decoder keeps taking messages, and the budget has room for
/// the ones still arriving instead of refusing them.
const JSON_DEPTH: usize = 3;

/// What the sets of input buffers beyond the first may take together: a
/// model with big inputs decodes fewer messages ahead (one set of a
/// 224x224x3 float32 input is 588 KiB).
const EXTRA_SETS_MAX_BYTES: usize = 1 << 20;

/// How many messages the decoder may hold decoded ahead of the engine:
/// up to [`JSON_DEPTH`] for JSON tensors, as many as fit
/// [`EXTRA_SETS_MAX_BYTES`] after the first; one for images, whose decoded
/// tensor is bigger than their file (the budget counts frames for them).
fn depth(ctx: &ModelContext, input_bytes: usize) -> usize {
    match ctx.intake.kind {
        IntakeKind::Image { .. } => 1,
        _ => 1 + (JSON_DEPTH - 1).min(EXTRA_SETS_MAX_BYTES / input_bytes.max(1)),
    }
}

/// What the decoder hands the worker: a message, and its input buffers or
/// why it could not be decoded.
struct Ahead {
    /// Holds the payload bytes charged to the queue until it is answered.
    queued: Queued,
    outcome: Result<Decoded, (Option<MessageId>, Failure)>,
    buffers: Vec<Vec<u8>>,
    /// The decode's wall and CPU time.
    spent: Before,
}

/// The worker's loop with a decoder beside it; falls back to decoding
/// itself if the decoder thread cannot start. Returns when the queue is
/// closed and empty and both threads are done with it.
pub fn ahead_loop(
    mut engine: Box<dyn Engine>,
    ctx: &Arc<ModelContext>,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &Arc<WorkerBeat>,
) {
    let depth = depth(ctx, engine.input_buffers_mut().iter().map(Vec::len).sum());
    let spares: Vec<Vec<Vec<u8>>> = (0..depth)
        .map(|_| engine.input_buffers_mut().to_vec())
        .collect();
    // As many as there are spare sets: the decoder never waits to hand a
    // message over; it waits for the buffers the engine frees instead.
    let (ahead_tx, ahead_rx) = mpsc::sync_channel::<Ahead>(depth);
    let (free_tx, free_rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let name = std::thread::current().name().map_or_else(
        || format!("dec-{}", ctx.name),
        |n| n.replacen("infer", "dec", 1),
    );
    let decoder = {
        let (ctx, rx, replies, beat) = (
            Arc::clone(ctx),
            rx.clone(),
            replies.clone(),
            Arc::clone(beat),
        );
        cores::spawn(std::thread::Builder::new().name(name), move || {
            decode_loop(&ctx, &rx, &replies, &beat, spares, &free_rx, &ahead_tx)
        })
    };
    let decoder = match decoder {
        Ok(handle) => handle,
        Err(e) => {
            log::warn!(
                "model {}: no decoder thread ({e}): its worker decodes each message itself",
                ctx.name
            );
            return super::one_at_a_time(engine, ctx, rx, replies, beat);
        }
    };
    let mut fit = SchedFit::for_this_thread(ctx.priority);
    while let Ok(ahead) = ahead_rx.recv() {
        beat.busy();
        let started = Instant::now();
        let job = &ahead.queued.job;
        let out = match ahead.outcome {
            Ok(decoded) => {
                let mut buffers = ahead.buffers;
                for (engines, decoders) in engine.input_buffers_mut().iter_mut().zip(&mut buffers) {
                    std::mem::swap(engines, decoders);
                }
                let _ = free_tx.send(buffers);
                serve::serve_decoded(engine.as_mut(), ctx, replies, job, decoded)
            }
            Err((id, failure)) => {
                let _ = free_tx.send(ahead.buffers);
                replies.error(Some(ctx), job, id.as_ref(), &failure)
            }
        };
        beat.idle();
        sched::observe_after(&mut fit, started, ahead.spent, beat);
        if let Some(out) = out {
            replies.send_blocking(out);
        }
    }
    if decoder.join().is_err() {
        log::error!("model {}: its decoder thread panicked", ctx.name);
    }
}

/// The decoder: takes each message off the queue once a set of buffers is
/// free, decodes it into them and hands both to the worker.
fn decode_loop(
    ctx: &ModelContext,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &WorkerBeat,
    mut spares: Vec<Vec<Vec<u8>>>,
    free: &Receiver<Vec<Vec<u8>>>,
    ahead: &SyncSender<Ahead>,
) {
    let _on_thread = beat.on_this_thread(true);
    let mut class = Follow::enter(ctx.priority);
    let mut scratch = Scratch::default();
    loop {
        let Some(mut buffers) = spares.pop().or_else(|| free.recv().ok()) else {
            return;
        };
        let Some(mut queued) = rx.recv() else {
            return;
        };
        class.follow(beat);
        beat.decoding();
        let decode_from = Instant::now();
        let cpu_from = sched::thread_cpu_time();
        let outcome =
            decode_caught(ctx, replies, &queued.job, &mut buffers, &mut scratch).map(|intook| {
                Decoded {
                    intook,
                    decode_from,
                    decoded_at: Instant::now(),
                }
            });
        beat.decoded();
        let wall = decode_from.elapsed();
        let spent = Before {
            wall,
            // The wall time stands in if the clock cannot be read.
            cpu: cpu_from
                .zip(sched::thread_cpu_time())
                .map_or(wall, |(from, to)| to.saturating_sub(from)),
        };
        // Decoded, it waits for the engine without its payload: the
        // queue's byte budget counts the payloads still to decode, the
        // memory they hold (the decoder's buffers are there anyway).
        queued.drop_payload();
        let handed = ahead.send(Ahead {
            queued,
            outcome,
            buffers,
            spent,
        });
        if let Err(mpsc::SendError(lost)) = handed {
            // The worker is gone (it only ends when this thread does,
            // unless it panicked): the message still gets its answer.
            let failure = internal_error("the model's worker thread has ended");
            if let Some(out) = replies.error(Some(ctx), &lost.queued.job, None, &failure) {
                replies.send_blocking(out);
            }
            return;
        }
    }
}

/// The decoder keeps its worker's scheduling class: an `auto` worker that
/// moves to the background (`sched`) takes its decoder along, and back.
struct Follow {
    class: WorkerClass,
}

impl Follow {
    fn enter(priority: WorkerPriority) -> Follow {
        Follow {
            // Refused: the worker said so already (health counts it).
            class: super::enter(priority).unwrap_or(WorkerClass::Refused),
        }
    }

    fn follow(&mut self, beat: &WorkerBeat) {
        self.follow_class(beat.class());
        // The watchdog may have returned the worker between the read and
        // the move (`sched::StarveWatch`), moving this thread before it
        // entered SCHED_IDLE.
        if self.class == WorkerClass::Background && beat.class() != WorkerClass::Background {
            self.follow_class(beat.class());
        }
    }

    fn follow_class(&mut self, worker: WorkerClass) {
        let moved = match (self.class, worker) {
            (WorkerClass::Normal, WorkerClass::Background) => {
                priority::enter(WorkerPriority::Background)
            }
            (WorkerClass::Background, WorkerClass::Normal) => priority::leave_background(),
            _ => return,
        };
        if let Err(e) = moved {
            // Once: it tries again only when the worker moves again.
            log::warn!(
                "{}: stays in the scheduling class its worker left ({e})",
                std::thread::current().name().unwrap_or("decoder")
            );
        }
        self.class = worker;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder enters and leaves `SCHED_IDLE` as its worker's beat
    /// says, at its next message.
    #[test]
    fn the_decoder_follows_its_workers_class() {
        let can_come_back = priority::can_leave_background();
        std::thread::spawn(move || {
            // SAFETY: no arguments; pid 0 is this thread.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let beat = WorkerBeat::new(Instant::now());
            beat.entered(WorkerClass::Normal);
            let mut class = Follow::enter(WorkerPriority::Auto);
            class.follow(&beat);
            assert_eq!(policy(), libc::SCHED_OTHER);
            beat.entered(WorkerClass::Background);
            class.follow(&beat);
            assert_eq!(policy(), libc::SCHED_IDLE);
            beat.entered(WorkerClass::Normal);
            class.follow(&beat);
            let back = if can_come_back.is_ok() {
                libc::SCHED_OTHER
            } else {
                libc::SCHED_IDLE
            };
            assert_eq!(policy(), back);
        })
        .join()
        .unwrap();
    }
    use crate::replies::ReplyReceiver;
    use crate::worker::test_engine::{
        answers, answers_each_in_order, queue_of, serve_with, summing, Summer,
    };

    /// `engine` served by [`ahead_loop`] on a worker thread of its own,
    /// and where its answers go.
    fn serve(
        engine: Box<dyn Engine>,
        ctx: &Arc<ModelContext>,
        rx: &JobReceiver,
    ) -> (std::thread::JoinHandle<()>, ReplyReceiver, Arc<WorkerBeat>) {
        serve_with(ahead_loop, engine, ctx, rx)
    }

    /// Every message gets one answer, in order, computed from its own
    /// inputs while the decoder's buffers and the engine's take turns: a
    /// payload that does not decode gets its error in its place, an invoke
    /// that panics or fails its error, and the messages after them their
    /// results.
    #[test]
    fn every_message_is_answered_in_order_from_its_own_inputs() {
        answers_each_in_order(ahead_loop, 40);
    }

    /// While the engine is held up on one message, the decoder takes the
    /// next [`JSON_DEPTH`] off the queue and their payloads leave its byte
    /// budget (room for new ones instead of refusals); the rest wait with
    /// theirs. Released, every message is answered, in order.
    #[test]
    fn while_the_engine_is_held_up_the_decoder_frees_the_budget_of_the_next_messages() {
        let ctx = summing();
        assert_eq!(depth(&ctx, 8), JSON_DEPTH);
        // Sets of 588 KiB (224x224x3 float32): one more; of 4.7 MiB: none.
        assert_eq!(depth(&ctx, 224 * 224 * 3 * 4), 2);
        assert_eq!(depth(&ctx, 640 * 640 * 3 * 4), 1);
        const N: usize = 8;
        let payload = |i: usize| format!(r#"{{"id": {i}, "data": [{i}, 0.25]}}"#);
        let (q, rx) = queue_of((0..N).map(payload));
        let (release, tokens) = mpsc::channel();
        let engine = Summer {
            gate: Some(tokens),
            ..Summer::new(1)
        };
        let (worker, mut replies, _beat) = serve(Box::new(engine), &ctx, &rx);
        // One invoking, JSON_DEPTH decoded; the others queued.
        let waiting = N - 1 - JSON_DEPTH;
        let their_bytes: usize = (N - waiting..N).map(|i| payload(i).len()).sum();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while (rx.len(), q.held_bytes()) != (waiting, their_bytes) {
            assert!(
                Instant::now() < deadline,
                "queued {} holding {} bytes, expected {waiting} holding {their_bytes}",
                rx.len(),
                q.held_bytes()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(replies.try_recv().is_none(), "nothing answered yet");
        for _ in 0..N {
            release.send(()).unwrap();
        }
        drop(q);
        worker.join().unwrap();
        for (i, v) in answers(&mut replies, N).iter().enumerate() {
            assert_eq!(v["id"], i, "{v}");
            assert_eq!(
                v["outputs"][0]["values"],
                serde_json::json!([i as f64 + 0.25]),
                "{v}"
            );
        }
    }
}
