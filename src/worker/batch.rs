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

use super::run::{
    decode, error_reply, invoke_failure, panic_message, result_reply, serve_one, ModelContext,
    Stages, WorkerEngines,
};
use super::{JobReceiver, Queued};
use crate::codec::{ErrorCode, Failure, MessageId};
use crate::mqtt::egress::{Egress, Outgoing};
use crate::telemetry::WorkerBeat;

/// A model's micro-batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Messages per invoke at most; 1 is off.
    pub max_batch: usize,
    /// How long the first message of a batch may wait for more.
    pub max_delay: Duration,
}

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
    egress: &Egress,
    beat: &WorkerBeat,
) {
    let (mut engine, mut single) = (engines.main, engines.single);
    let mut b = Batcher::new(ctx);
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
        if let (1, Some(single)) = (b.taken.len(), single.as_mut()) {
            // Alone: the batch-1 engine, not a batch of zero rows.
            let alone = b.taken.remove(0);
            let out = serve_one(single.as_mut(), ctx, &alone.job, dequeued, Some(1));
            beat.idle();
            if let Some(out) = out {
                egress.send_blocking(out);
            }
            // Answered: release its payload bytes from the queue.
            drop(alone);
            continue;
        }
        b.slots.extend(b.taken.drain(..).map(|queued| Slot {
            queued,
            id: None,
            row: None,
            answered: false,
        }));
        run_batch(engine.as_mut(), ctx, &mut b);
        beat.idle();
        for out in b.replies.drain(..) {
            egress.send_blocking(out);
        }
        // Answered: release their payload bytes from the queue.
        b.slots.clear();
    }
}

/// Serves the batch in `b.slots`, leaving exactly one reply per slot in
/// `b.replies` (fewer only if a reply could not be serialized, which
/// `error_reply` logs).
fn run_batch(engine: &mut dyn Engine, ctx: &ModelContext, b: &mut Batcher) {
    let Batcher {
        scratch,
        slots,
        replies,
        ..
    } = b;
    // A panic must not take the model down: every message of the batch not
    // yet answered gets an error and the worker goes on.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        serve_batch(engine, ctx, slots, scratch, replies)
    }));
    if let Err(panic) = outcome {
        let what = panic_message(panic.as_ref());
        log::error!(
            "model {}: internal error serving a batch of {}: {what}",
            ctx.name,
            slots.len()
        );
        let failure = Failure::new(
            ErrorCode::InferenceFailed,
            format!("internal error: {what}"),
        );
        for slot in slots.iter_mut().filter(|s| !s.answered) {
            slot.answered = true;
            replies.extend(error_reply(
                ctx,
                &slot.queued.job,
                slot.id.as_ref(),
                &failure,
            ));
        }
    }
}

fn serve_batch(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    slots: &mut [Slot],
    scratch: &mut [Vec<u8>],
    replies: &mut Vec<Outgoing>,
) {
    let mut rows = 0;
    for slot in slots.iter_mut() {
        let decode_from = Instant::now();
        match decode(ctx, &slot.queued.job.payload, scratch) {
            Ok(d) => {
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
                replies.extend(error_reply(
                    ctx,
                    &slot.queued.job,
                    slot.id.as_ref(),
                    &failure,
                ));
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
            replies.extend(error_reply(
                ctx,
                &slot.queued.job,
                slot.id.as_ref(),
                &failure,
            ));
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
        let reply = result_reply(
            ctx,
            &slot.queued.job,
            slot.id.as_ref(),
            specs,
            &buffers,
            Stages {
                decode_from: row.decode_from,
                decoded_at: row.decoded_at,
                invoke_from,
                invoked_at,
                post_from,
                batch_size: Some(rows),
            },
        );
        slot.answered = true;
        replies.extend(reply);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use model_runtime::{DType, RuntimeError, TensorSpec};
    use serde_json::Value;

    use super::*;
    use crate::config::{OverflowPolicy, PayloadFormat};
    use crate::telemetry::ModelStats;
    use crate::topic::{TopicFilter, TopicTemplate};
    use crate::worker::{Job, ModelQueue, Offer};

    const LONG: Duration = Duration::from_secs(30);

    /// A queue of jobs named by number, and the numbers of collected jobs.
    fn queue() -> (ModelQueue, JobReceiver) {
        ModelQueue::bounded(64, 1 << 20, OverflowPolicy::RejectNew)
    }

    fn put(q: &ModelQueue, n: u32) {
        let job = Job {
            topic: n.to_string(),
            payload: Bytes::from_static(b"x"),
            received_at: 0.0,
            received: Instant::now(),
        };
        assert!(matches!(q.offer(job), Offer::Queued));
    }

    fn numbers(out: &[Queued]) -> Vec<u32> {
        out.iter().map(|q| q.job.topic.parse().unwrap()).collect()
    }

    /// Collects after taking `first` off the queue, as the worker does.
    fn collect_from(rx: &JobReceiver, max: usize, delay: Duration, started: Instant) -> Vec<u32> {
        let first = rx.recv().unwrap();
        let mut out = Vec::new();
        collect(rx, first, max, delay, started, &mut out);
        numbers(&out)
    }

    #[test]
    fn takes_what_is_queued_up_to_max_without_waiting_when_delay_is_zero() {
        let (q, rx) = queue();
        for i in 0..=5 {
            put(&q, i);
        }
        let started = Instant::now();
        assert_eq!(collect_from(&rx, 4, Duration::ZERO, started), [0, 1, 2, 3]);
        put(&q, 10);
        assert_eq!(
            collect_from(&rx, 4, Duration::ZERO, Instant::now()),
            [4, 5, 10],
            "only what was already queued"
        );
        // The producer is still alive: a zero delay returned without waiting.
        assert!(started.elapsed() < LONG);
        drop(q);
    }

    #[test]
    fn waits_for_late_items_but_returns_as_soon_as_the_batch_is_full() {
        let (q, rx) = queue();
        put(&q, 0);
        let late = std::thread::spawn(move || {
            for i in 1..=3 {
                std::thread::sleep(Duration::from_millis(5));
                put(&q, i);
            }
            // Keeps the queue open well past the point the batch is full.
            std::thread::sleep(Duration::from_millis(200));
        });
        let started = Instant::now();
        assert_eq!(collect_from(&rx, 4, LONG, started), [0, 1, 2, 3]);
        assert!(started.elapsed() < LONG / 2, "{:?}", started.elapsed());
        late.join().unwrap();
    }

    #[test]
    fn stops_at_the_deadline_counted_from_the_first_item() {
        let (q, rx) = queue();
        put(&q, 7);
        let delay = Duration::from_millis(30);
        // The first item was dequeued 20 ms ago: only ~10 ms are left.
        let started = Instant::now() - Duration::from_millis(20);
        assert_eq!(collect_from(&rx, 8, delay, started), [7]);
        let waited = started.elapsed();
        assert!(waited >= delay, "returned early: {waited:?}");
        assert!(waited < LONG, "{waited:?}");
        drop(q);
    }

    #[test]
    fn stops_when_the_queue_is_closed_and_empty() {
        let (q, rx) = queue();
        put(&q, 0);
        put(&q, 1);
        drop(q);
        let started = Instant::now();
        assert_eq!(collect_from(&rx, 8, LONG, started), [0, 1]);
        assert!(started.elapsed() < LONG / 2);
    }

    /// A model with input 'x' [rows, 2] and output 'sum' [rows, 1]: the sum
    /// of each row. A row starting with 666 panics, 999 fails the invoke.
    struct Summer {
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        input: Vec<Vec<u8>>,
        output: Vec<Vec<u8>>,
        invokes: usize,
        /// The same count, readable after the engine moved into a loop.
        counted: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn spec(name: &str, rows: usize, cols: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: vec![rows, cols],
            dtype: DType::F32,
            quantization: None,
            shape_signature: vec![-1, cols as i64],
        }
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    impl Summer {
        fn new(rows: usize) -> Summer {
            Summer {
                inputs: vec![spec("x", rows, 2)],
                outputs: vec![spec("sum", rows, 1)],
                input: vec![vec![0xAA; rows * 8]],
                output: vec![vec![0; rows * 4]],
                invokes: 0,
                counted: Arc::default(),
            }
        }
    }

    impl Engine for Summer {
        fn inputs(&self) -> &[TensorSpec] {
            &self.inputs
        }
        fn outputs(&self) -> &[TensorSpec] {
            &self.outputs
        }
        fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
            &mut self.input
        }
        fn invoke(&mut self) -> Result<(), RuntimeError> {
            self.invokes += 1;
            self.counted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let x = f32s(&self.input[0]);
            for (r, pair) in x.chunks_exact(2).enumerate() {
                if pair[0] == 666.0 {
                    panic!("kernel bug");
                }
                if pair[0] == 999.0 {
                    return Err(RuntimeError::Call {
                        call: "Invoke",
                        status: "runtime failure".into(),
                    });
                }
                self.output[0][r * 4..r * 4 + 4]
                    .copy_from_slice(&(pair[0] + pair[1]).to_le_bytes());
            }
            Ok(())
        }
        fn output(&self, index: usize) -> &[u8] {
            &self.output[index]
        }
        fn accelerator(&self) -> String {
            "test".into()
        }
    }

    fn context(max_batch: usize) -> ModelContext {
        let filter = TopicFilter::parse("in/m").unwrap();
        ModelContext {
            name: "m".into(),
            sha256: "00".into(),
            device_id: "dev".into(),
            errors_topic: "edge-infer/dev/errors".into(),
            output_topic: TopicTemplate::parse("out/{model}", &filter).unwrap(),
            input_topic: filter,
            payload: PayloadFormat::Json,
            message_inputs: vec![spec("x", 1, 2)],
            message_outputs: vec![spec("sum", 1, 1)],
            batching: Batching {
                max_batch,
                max_delay: Duration::ZERO,
            },
            labels: None,
            top_k: None,
            stats: Arc::new(ModelStats::default()),
        }
    }

    /// A batcher holding one slot per payload, as the queue hands them out.
    fn batch_of(ctx: &ModelContext, payloads: &[&str]) -> Batcher {
        let (q, rx) = ModelQueue::bounded(64, 1 << 20, OverflowPolicy::RejectNew);
        for p in payloads {
            let job = Job {
                topic: "in/m".into(),
                payload: Bytes::from(p.to_string()),
                received_at: 0.0,
                received: Instant::now(),
            };
            assert!(matches!(q.offer(job), Offer::Queued));
        }
        let mut b = Batcher::new(ctx);
        b.slots.extend(rx.take_all().into_iter().map(|queued| Slot {
            queued,
            id: None,
            row: None,
            answered: false,
        }));
        b
    }

    fn replies(b: &mut Batcher) -> Vec<(String, Value)> {
        b.replies
            .drain(..)
            .map(|o| (o.topic, serde_json::from_slice(&o.payload).unwrap()))
            .collect()
    }

    #[test]
    fn each_message_gets_its_own_row_and_bad_ones_take_none() {
        let ctx = context(4);
        let mut engine = Summer::new(4);
        let mut b = batch_of(
            &ctx,
            &[
                r#"{"id": 1, "data": [1, 2]}"#,
                r#"{"id": 2, "data": [1, 2, 3]}"#,
                r#"{"id": 3, "data": [10, 20]}"#,
            ],
        );
        run_batch(&mut engine, &ctx, &mut b);
        assert_eq!(engine.invokes, 1);
        // Rows 0 and 1 hold messages 1 and 3; the rest are zeroed.
        assert_eq!(
            f32s(&engine.input[0]),
            [1.0, 2.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0]
        );
        let got = replies(&mut b);
        assert_eq!(got.len(), 3);
        let by_id = |id: i64| &got.iter().find(|(_, v)| v["id"] == id).unwrap().1;
        assert_eq!(by_id(2)["code"], "bad_shape");
        assert!(
            by_id(2)["message"].as_str().unwrap().contains("1x2"),
            "{}",
            by_id(2)
        );
        for (id, sum) in [(1, 3.0), (3, 30.0)] {
            let r = by_id(id);
            assert_eq!(r["outputs"][0]["shape"], serde_json::json!([1, 1]), "{r}");
            assert_eq!(r["outputs"][0]["values"], serde_json::json!([sum]), "{r}");
        }
        assert_eq!(ctx.stats.succeeded(), 2);
        assert_eq!(ctx.stats.errors(ErrorCode::BadShape), 1);
    }

    #[test]
    fn a_batch_of_bad_messages_runs_nothing() {
        let ctx = context(4);
        let mut engine = Summer::new(4);
        let mut b = batch_of(&ctx, &["nope", r#"{"id": "x"}"#]);
        run_batch(&mut engine, &ctx, &mut b);
        assert_eq!(engine.invokes, 0);
        let got = replies(&mut b);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(t, _)| t == "edge-infer/dev/errors"));
    }

    #[test]
    fn an_invoke_failure_answers_every_decoded_message() {
        let ctx = context(4);
        let mut engine = Summer::new(4);
        let mut b = batch_of(
            &ctx,
            &[
                r#"{"id": 1, "data": [1, 2]}"#,
                r#"{"id": 2, "data": [999, 2]}"#,
                r#"{"id": 3}"#,
            ],
        );
        run_batch(&mut engine, &ctx, &mut b);
        let got = replies(&mut b);
        let codes: Vec<(i64, &str)> = got
            .iter()
            .map(|(_, v)| (v["id"].as_i64().unwrap(), v["code"].as_str().unwrap()))
            .collect();
        assert_eq!(
            codes,
            [
                (3, "bad_json"),
                (1, "inference_failed"),
                (2, "inference_failed")
            ]
        );
        assert_eq!(ctx.stats.succeeded(), 0);
    }

    #[test]
    fn a_panic_answers_every_unanswered_message_once() {
        let ctx = context(4);
        let mut engine = Summer::new(4);
        let mut b = batch_of(
            &ctx,
            &[
                r#"{"id": 1, "data": [666, 2]}"#,
                r#"{"id": 2, "data": "x"}"#,
                r#"{"id": 3, "data": [1, 2]}"#,
            ],
        );
        run_batch(&mut engine, &ctx, &mut b);
        let got = replies(&mut b);
        let mut ids: Vec<i64> = got.iter().map(|(_, v)| v["id"].as_i64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3], "{got:?}");
        for (_, v) in &got {
            if v["id"] != 2 {
                assert_eq!(v["code"], "inference_failed", "{v}");
                assert!(v["message"].as_str().unwrap().contains("kernel bug"));
            }
        }
        // The next batch runs normally and does not see the old rows.
        let mut b = batch_of(&ctx, &[r#"{"id": 4, "data": [2, 2]}"#]);
        run_batch(&mut engine, &ctx, &mut b);
        let got = replies(&mut b);
        assert_eq!(got[0].1["outputs"][0]["values"], serde_json::json!([4.0]));
        assert_eq!(f32s(&engine.input[0])[2..], [0.0; 6]);
    }

    /// Runs `batch_loop` over `payloads` (all queued before it starts, the
    /// queue then closed) and says how often each engine ran.
    fn loop_over(payloads: &[&str]) -> (usize, usize, usize) {
        let ctx = context(4);
        let (main, single) = (Summer::new(4), Summer::new(1));
        let (main_runs, single_runs) = (Arc::clone(&main.counted), Arc::clone(&single.counted));
        let (q, rx) = queue();
        for p in payloads {
            let job = Job {
                topic: "in/m".into(),
                payload: Bytes::from(p.to_string()),
                received_at: 0.0,
                received: Instant::now(),
            };
            assert!(matches!(q.offer(job), Offer::Queued));
        }
        drop(q);
        let stats = Arc::new(crate::telemetry::DaemonStats::default());
        let (egress, mut replies) = Egress::channel(stats);
        let engines = WorkerEngines {
            main: Box::new(main),
            single: Some(Box::new(single)),
        };
        batch_loop(
            engines,
            &ctx,
            &rx,
            &egress,
            &WorkerBeat::new(Instant::now()),
        );
        let mut answered = 0;
        while let Ok(out) = replies.try_recv() {
            let v: Value = serde_json::from_slice(&out.payload).unwrap();
            assert!(v["outputs"].is_array(), "{v}");
            answered += 1;
        }
        let runs =
            |c: &Arc<std::sync::atomic::AtomicUsize>| c.load(std::sync::atomic::Ordering::Relaxed);
        (runs(&main_runs), runs(&single_runs), answered)
    }

    #[test]
    fn a_job_alone_runs_at_batch_one_and_a_burst_as_one_batch() {
        let one = r#"{"id": 1, "data": [1, 2]}"#;
        // Alone: the batch-1 engine, no batch of zero rows.
        assert_eq!(loop_over(&[one]), (0, 1, 1));
        // Three queued together: one invoke of the batched engine.
        assert_eq!(loop_over(&[one, one, one]), (1, 0, 3));
        // Five with max_batch 4: a batch of four, then the fifth alone.
        assert_eq!(loop_over(&[one; 5]), (1, 1, 5));
    }
}
