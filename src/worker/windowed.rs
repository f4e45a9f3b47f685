//! The worker loop of a windowed model (`[models.window]`): each message's
//! readings are appended to their stream (`window`), and every completed
//! window runs the model once. The model's workers share its streams; a
//! worker takes a message and appends its readings under the streams'
//! lock, so the readings of a stream stay in arrival order whichever
//! worker takes them. Inference runs outside the lock. The window's shape
//! is `[models.window]` (`config::WindowSettings`) resolved against the
//! input tensor by `models::intake`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use model_runtime::Engine;

use super::queue::Recv;
use super::sched::{self, SchedFit};
use super::serve::{invoke_failure, logged_panic, store_floats};
use super::window::{sweep_interval, Streams, Window};
use super::JobReceiver;
use crate::codec::encode::{Extras, Outputs, WindowInfo};
use crate::codec::readings::parse_readings;
use crate::codec::{peek_id, ErrorCode, Failure, MessageId};
use crate::job::Job;
use crate::models::{ModelContext, WindowIntake};
use crate::replies::{Outgoing, Replies, Stages};
use crate::telemetry::WorkerBeat;

/// Longest stream key: far above any sensor's name, small enough that
/// `max_streams` keys stay a few hundred kilobytes.
const MAX_KEY_BYTES: usize = 256;

pub(super) fn window_loop(
    mut engine: Box<dyn Engine>,
    ctx: &ModelContext,
    intake: &WindowIntake,
    streams: &Mutex<Streams>,
    rx: &JobReceiver,
    replies: &Replies,
    beat: &WorkerBeat,
) {
    let mut values = Vec::new();
    let mut out = Vec::new();
    let mut fit = SchedFit::for_this_thread(ctx.priority);
    loop {
        let mut guard = lock(streams);
        let deadline = Instant::now() + sweep_interval(&intake.shape);
        let queued = match rx.recv_until(deadline) {
            Recv::Job(q) => q,
            Recv::Closed => return,
            Recv::Timeout => {
                // No message for a while: silent streams are still forgotten.
                let now = Instant::now();
                if guard.sweep_due(now) {
                    let before = Counts::of(&guard);
                    guard.sweep(now);
                    publish_counts(ctx, &guard, before);
                }
                continue;
            }
        };
        beat.busy();
        let started = Instant::now();
        let before = Counts::of(&guard);
        let taken = catch_unwind(AssertUnwindSafe(|| {
            take(ctx, intake, &mut guard, &queued.job, replies, &mut out)
        }));
        publish_counts(ctx, &guard, before);
        drop(guard);
        match taken {
            Ok((id, windows)) => {
                for w in &windows {
                    let served = catch_unwind(AssertUnwindSafe(|| {
                        serve_window(
                            engine.as_mut(),
                            ctx,
                            replies,
                            &queued.job,
                            id.as_ref(),
                            w,
                            &mut values,
                        )
                    }));
                    out.extend(served.unwrap_or_else(|panic| {
                        let failure = logged_panic(ctx, replies, panic.as_ref(), || {
                            format!("serving window {} of stream {}", w.seq, w.key)
                        });
                        replies.error(Some(ctx), &queued.job, id.as_ref(), &failure)
                    }));
                }
            }
            Err(panic) => {
                let failure = logged_panic(ctx, replies, panic.as_ref(), || {
                    format!("taking {}", queued.job.topic)
                });
                let id = peek_id(&queued.job.payload);
                out.extend(replies.error(Some(ctx), &queued.job, id.as_ref(), &failure));
            }
        }
        beat.idle();
        sched::observe(&mut fit, started, beat);
        for msg in out.drain(..) {
            replies.send_blocking(msg);
        }
    }
}

/// Parses a message's readings and appends them to their stream; errors
/// (a bad reading, a gap, an older reading, a refused stream) go to `out`.
/// Returns the message's id and the windows it completed.
fn take(
    ctx: &ModelContext,
    intake: &WindowIntake,
    streams: &mut Streams,
    job: &Job,
    replies: &Replies,
    out: &mut Vec<Outgoing>,
) -> (Option<MessageId>, Vec<Window>) {
    let key = stream_key(ctx, intake, job, replies.device_id());
    if key.len() > MAX_KEY_BYTES {
        // Keys are held as long as their stream: bounded like the streams.
        let failure = Failure::new(
            ErrorCode::BadReading,
            format!(
                "the stream key rendered from topic \"{}\" is {} bytes; at most {MAX_KEY_BYTES} (set [models.window] key to the topic levels that name the sensor)",
                job.topic.chars().take(64).collect::<String>(),
                key.len()
            ),
        );
        out.extend(replies.error(Some(ctx), job, None, &failure));
        return (None, Vec::new());
    }
    let readings = match parse_readings(&job.payload, &intake.fields, intake.timestamp.as_ref()) {
        Ok(r) => r,
        Err((id, mut failure)) => {
            // The stream's partial window would hold a hole: it restarts.
            if failure.code == ErrorCode::BadReading {
                let dropped = streams.restart(&key);
                failure.message.push_str(&format!(
                    "; the message is refused and stream \"{key}\" restarts ({dropped} earlier reading(s) that were in no window yet discarded)"
                ));
            }
            out.extend(replies.error(Some(ctx), job, id.as_ref(), &failure));
            return (id, Vec::new());
        }
    };
    let stamps: Vec<f64> = readings
        .timestamps
        .iter()
        .map(|t| t.unwrap_or(job.received_at))
        .collect();
    let pushed = streams.push(&key, &readings.values, &stamps, Instant::now());
    for failure in &pushed.failures {
        out.extend(replies.error(Some(ctx), job, readings.id.as_ref(), failure));
    }
    (readings.id, pushed.windows)
}

/// The stream a message belongs to: the key template rendered from its
/// topic, or the topic itself.
fn stream_key(ctx: &ModelContext, intake: &WindowIntake, job: &Job, device_id: &str) -> String {
    match (&intake.key, ctx.input_topic.matches(&job.topic)) {
        (Some(template), Some(caps)) => template.render(device_id, &ctx.name, &caps),
        _ => job.topic.clone(),
    }
}

fn serve_window(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    id: Option<&MessageId>,
    w: &Window,
    values: &mut Vec<f32>,
) -> Option<Outgoing> {
    let decode_from = Instant::now();
    values.clear();
    values.extend_from_slice(&w.values);
    let spec = &ctx.message_inputs[0];
    if let Err(failure) = store_floats(
        values,
        ctx.intake.normalize.as_ref(),
        spec,
        &mut engine.input_buffers_mut()[0],
    ) {
        return replies.error(Some(ctx), job, id, &failure);
    }
    let decoded_at = Instant::now();
    if let Err(e) = engine.invoke() {
        return replies.error(Some(ctx), job, id, &invoke_failure(&e));
    }
    let invoked_at = Instant::now();
    let outputs = engine.outputs();
    let buffers: Vec<&[u8]> = (0..outputs.len()).map(|i| engine.output(i)).collect();
    let info = WindowInfo {
        key: &w.key,
        seq: w.seq,
        start: w.start,
        end: w.end,
        readings: w.readings,
    };
    replies.result(
        ctx,
        job,
        id,
        Outputs {
            specs: outputs,
            buffers: &buffers,
            accelerator: engine.accelerator_name(),
        },
        Stages {
            decode_from,
            decoded_at,
            invoke_from: decoded_at,
            invoked_at,
            post_from: invoked_at,
            batch_size: None,
        },
        Extras {
            window: Some(info),
            image: None,
        },
    )
}

/// The streams' cumulative counters at one moment. Health gets what
/// changed since, so its counts carry on when a reload replaces the model
/// (and its streams) under the same name.
struct Counts {
    windows: u64,
    readings: u64,
    discarded: u64,
}

impl Counts {
    fn of(streams: &Streams) -> Counts {
        Counts {
            windows: streams.windows,
            readings: streams.readings,
            discarded: streams.discarded,
        }
    }
}

fn publish_counts(ctx: &ModelContext, streams: &Streams, before: Counts) {
    let w = &ctx.stats.window;
    let now = Counts::of(streams);
    w.open_streams.store(streams.open() as u64, Relaxed);
    w.windows
        .fetch_add(now.windows.saturating_sub(before.windows), Relaxed);
    w.readings
        .fetch_add(now.readings.saturating_sub(before.readings), Relaxed);
    w.readings_discarded
        .fetch_add(now.discarded.saturating_sub(before.discarded), Relaxed);
}

fn lock(streams: &Mutex<Streams>) -> MutexGuard<'_, Streams> {
    // A panic while appending is caught inside the lock (`take`), so the
    // streams are never left half-updated by one; a poisoned lock can only
    // come from a panic elsewhere, and the streams are still consistent.
    streams.lock().unwrap_or_else(|p| p.into_inner())
}
