//! Micro-batching (`max_batch` > 1): a worker takes up to `max_batch`
//! queued messages, or what arrives within `max_delay` of the first one,
//! decodes each into its own row of the engine's input buffers, runs one
//! invoke and answers each message from its row of the outputs.
//!
//! The engine is loaded with its dynamic batch dimension fixed at
//! `max_batch` (resizing per call is slow in LiteRT), so rows no message
//! filled are zeroed. Every message still gets exactly one result or one
//! error: a payload that does not decode is answered at once and takes no
//! row; an invoke failure or a panic answers every unanswered message of
//! the batch with `inference_failed`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use model_runtime::Engine;

use super::sched::{self, SchedFit};
use super::serve::{decode, invoke_failure, logged_panic, serve_one, Scratch};
use super::{JobReceiver, Queued};
use crate::codec::encode::{Extras, Outputs};
use crate::codec::{peek_id, MessageId};
use crate::models::{ModelContext, WorkerEngines};
use crate::replies::{Outgoing, Replies, Stages};
use crate::telemetry::WorkerBeat;

/// Fills `out` with `first` and then whatever else `rx` yields, until `out`
/// holds `max` jobs or `max_delay` has passed since `started` (the moment
/// `first` was dequeued). With a zero delay it never waits: it takes only
/// what is already queued. It also stops when the queue is closed and
/// empty (shutdown).
pub fn collect(
    rx: &JobReceiver,
    first: Queued,
    max: usize,
    max_delay: Duration,
    started: Instant,
    out: &mut Vec<Queued>,
) {
    out.push(first);
    let deadline = started.checked_add(max_delay);
    while out.len() < max {
        let next = match deadline.filter(|_| !max_delay.is_zero()) {
            Some(deadline) => rx.recv_deadline(deadline),
            None => rx.try_recv(),
        };
        match next {
            Some(job) => out.push(job),
            None => break,
        }
    }
}

/// One message of a batch.
struct Slot {
    /// Holds the payload bytes charged to the queue until it is answered.
    queued: Queued,
    id: Option<MessageId>,
    /// What its result says besides the outputs (the image it was).
    extras: Extras<'static>,
    /// Its row, once decoded.
    row: Option<Row>,
    answered: bool,
}

struct Row {
    index: usize,
    decode_from: Instant,
    decoded_at: Instant,
}

/// A worker's reusable batch state: nothing here is allocated per batch.
struct Batcher {
    /// One buffer per input, sized for one row: a message is decoded here
    /// first so that a bad payload never touches the batch.
    scratch: Vec<Vec<u8>>,
    /// Decoding buffers (images, normalization).
    decoding: Scratch,
    taken: Vec<Queued>,
    slots: Vec<Slot>,
    /// Replies are sent once the batch is done and the worker is idle, so
    /// a slow publisher never reads as a stalled worker.
    replies: Vec<Outgoing>,
}

impl Batcher {
    fn new(ctx: &ModelContext) -> Batcher {
        let n = ctx.batching.max_batch;
        Batcher {
            scratch: ctx
                .message_inputs
                .iter()
                .map(|s| vec![0u8; s.byte_len()])
                .collect(),
            decoding: Scratch::default(),
            taken: Vec::with_capacity(n),
            slots: Vec::with_capacity(n),
            replies: Vec::with_capacity(n),
        }
    }
}

/// The worker loop of a micro-batching model.
pub(super) fn batch_loop(
    engines: WorkerEngines,
    ctx: &ModelContext,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &WorkerBeat,
) {
    let (mut engine, mut single) = (engines.main, engines.single);
    let mut b = Batcher::new(ctx);
    let mut fit = SchedFit::for_this_thread(ctx.priority);
    while let Some(first) = rx.recv() {
        let dequeued = Instant::now();
        beat.busy();
        collect(
            rx,
            first,
            ctx.batching.max_batch,
            ctx.batching.max_delay,
            dequeued,
            &mut b.taken,
        );
        // The wait for a batch to fill is not work: the slice fits what
        // follows it.
        let collected = Instant::now();
        if let (1, Some(single)) = (b.taken.len(), single.as_mut()) {
            // Alone: the batch-1 engine, not a batch of zero rows.
            let alone = b.taken.remove(0);
            let out = serve_one(
                single.as_mut(),
                ctx,
                replies,
                &alone.job,
                dequeued,
                Some(1),
                &mut b.decoding,
            );
            beat.idle();
            sched::observe(&mut fit, collected, beat);
            if let Some(out) = out {
                replies.send_blocking(out);
            }
            // Answered: release its payload bytes from the queue.
            drop(alone);
            continue;
        }
        b.slots.extend(b.taken.drain(..).map(|queued| Slot {
            queued,
            id: None,
            extras: Extras::default(),
            row: None,
            answered: false,
        }));
        run_batch(engine.as_mut(), ctx, replies, &mut b);
        beat.idle();
        sched::observe(&mut fit, collected, beat);
        for out in b.replies.drain(..) {
            replies.send_blocking(out);
        }
        // Answered: release their payload bytes from the queue.
        b.slots.clear();
    }
}

/// Serves the batch in `b.slots`, leaving exactly one reply per slot in
/// `b.replies` (fewer only if a reply could not be serialized, which
/// is logged).
fn run_batch(engine: &mut dyn Engine, ctx: &ModelContext, to: &Replies, b: &mut Batcher) {
    let Batcher {
        scratch,
        decoding,
        slots,
        replies,
        ..
    } = b;
    // A panic must not take the model down: every message of the batch not
    // yet answered gets an error and the worker goes on.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        serve_batch(engine, ctx, to, slots, scratch, decoding, replies)
    }));
    if let Err(panic) = outcome {
        let failure = logged_panic(ctx, to, panic.as_ref(), || {
            format!("serving a batch of {}", slots.len())
        });
        for slot in slots.iter_mut().filter(|s| !s.answered) {
            slot.answered = true;
            // Not decoded yet (or its decode panicked): the id at the top.
            let id = slot
                .id
                .clone()
                .or_else(|| peek_id(&slot.queued.job.payload));
            replies.extend(to.error(Some(ctx), &slot.queued.job, id.as_ref(), &failure));
        }
    }
}

fn serve_batch(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    to: &Replies,
    slots: &mut [Slot],
    scratch: &mut [Vec<u8>],
    decoding: &mut Scratch,
    replies: &mut Vec<Outgoing>,
) {
    let mut rows = 0;
    for slot in slots.iter_mut() {
        let decode_from = Instant::now();
        match decode(ctx, &slot.queued.job.payload, scratch, decoding) {
            Ok(d) => {
                slot.extras = d.extras();
                slot.id = d.id;
                for (buf, one) in engine.input_buffers_mut().iter_mut().zip(scratch.iter()) {
                    let len = one.len();
                    buf[rows * len..(rows + 1) * len].copy_from_slice(one);
                }
                slot.row = Some(Row {
                    index: rows,
                    decode_from,
                    decoded_at: Instant::now(),
                });
                rows += 1;
            }
            Err((id, failure)) => {
                slot.id = id;
                slot.answered = true;
                replies.extend(to.error(Some(ctx), &slot.queued.job, slot.id.as_ref(), &failure));
            }
        }
    }
    if rows == 0 {
        return;
    }
    // Rows no message filled: zeros, not the previous batch's inputs.
    for (buf, one) in engine.input_buffers_mut().iter_mut().zip(scratch.iter()) {
        buf[rows * one.len()..].fill(0);
    }
    let invoke_from = Instant::now();
    if let Err(e) = engine.invoke() {
        let failure = invoke_failure(&e);
        for slot in slots.iter_mut().filter(|s| !s.answered) {
            slot.answered = true;
            // Not decoded yet (or its decode panicked): the id at the top.
            let id = slot
                .id
                .clone()
                .or_else(|| peek_id(&slot.queued.job.payload));
            replies.extend(to.error(Some(ctx), &slot.queued.job, id.as_ref(), &failure));
        }
        return;
    }
    let invoked_at = Instant::now();
    let specs = &ctx.message_outputs;
    let mut buffers: Vec<&[u8]> = Vec::with_capacity(specs.len());
    for slot in slots.iter_mut().filter(|s| !s.answered) {
        let Some(row) = &slot.row else { continue };
        let post_from = Instant::now();
        buffers.clear();
        buffers.extend(specs.iter().enumerate().map(|(i, spec)| {
            let len = spec.byte_len();
            &engine.output(i)[row.index * len..(row.index + 1) * len]
        }));
        let reply = to.result(
            ctx,
            &slot.queued.job,
            slot.id.as_ref(),
            Outputs {
                specs,
                buffers: &buffers,
                accelerator: engine.accelerator_name(),
            },
            Stages {
                decode_from: row.decode_from,
                decoded_at: row.decoded_at,
                invoke_from,
                invoked_at,
                post_from,
                batch_size: Some(rows),
            },
            slot.extras,
        );
        slot.answered = true;
        replies.extend(reply);
    }
}

#[cfg(test)]
mod tests;
