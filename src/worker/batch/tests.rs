//! Micro-batching: collecting from the queue, rows per message, one
//! answer per message whatever fails (a panic, an invoke error, bad
//! payloads), and the batch-1 engine for a message that arrives alone.

use std::sync::Arc;

use bytes::Bytes;

use serde_json::Value;

use super::*;
use crate::codec::ErrorCode;
use crate::config::OverflowPolicy;
use crate::job::Job;
use crate::models::Batching;
use crate::replies::ReplyReceiver;
use crate::telemetry::DaemonStats;
use crate::worker::test_engine::{f32s, spec, Summer};
use crate::worker::{ModelQueue, Offer};

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
        ack: None,
        properties: None,
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
    assert_eq!(
        collect_from(&rx, 4, Duration::ZERO, Instant::now()),
        [0, 1, 2, 3]
    );
    put(&q, 10);
    // The producer is still alive, so a collect that waits for more would
    // block: on a thread of its own, that fails the test instead of
    // hanging it.
    let (done, finished) = std::sync::mpsc::channel();
    let taker = std::thread::spawn(move || {
        let got = collect_from(&rx, 4, Duration::ZERO, Instant::now());
        let _ = done.send(());
        got
    });
    let returned = finished.recv_timeout(LONG);
    drop(q);
    assert!(returned.is_ok(), "a zero delay waited for more items");
    assert_eq!(
        taker.join().unwrap(),
        [4, 5, 10],
        "only what was already queued"
    );
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

fn context(max_batch: usize) -> ModelContext {
    ModelContext {
        message_inputs: vec![spec("x", 1, 2)],
        message_outputs: vec![spec("sum", 1, 1)],
        batching: Batching {
            max_batch,
            max_delay: Duration::ZERO,
        },
        ..ModelContext::for_tests("m", "in/m")
    }
}

/// Where the replies of a test go; the receiver must live as long as the
/// replies are sent.
fn to() -> (Replies, ReplyReceiver) {
    Replies::channel(
        "dev",
        Arc::new(DaemonStats::default()),
        (usize::MAX, "mqtt.max_packet_bytes"),
    )
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
            ack: None,
            properties: None,
        };
        assert!(matches!(q.offer(job), Offer::Queued));
    }
    let mut b = Batcher::new(ctx);
    b.slots.extend(rx.take_all().into_iter().map(|queued| Slot {
        queued,
        id: None,
        extras: Extras::default(),
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
    let (to, _replies) = to();
    let mut engine = Summer::new(4);
    let mut b = batch_of(
        &ctx,
        &[
            r#"{"id": 1, "data": [1, 2]}"#,
            r#"{"id": 2, "data": [1, 2, 3]}"#,
            r#"{"id": 3, "data": [10, 20]}"#,
        ],
    );
    run_batch(&mut engine, &ctx, &to, &mut b);
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
    let (to, _replies) = to();
    let mut engine = Summer::new(4);
    let mut b = batch_of(&ctx, &["nope", r#"{"id": "x"}"#]);
    run_batch(&mut engine, &ctx, &to, &mut b);
    assert_eq!(engine.invokes, 0);
    let got = replies(&mut b);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(t, _)| t == "edge-infer/dev/errors"));
}

#[test]
fn an_invoke_failure_answers_every_decoded_message() {
    let ctx = context(4);
    let (to, _replies) = to();
    let mut engine = Summer::new(4);
    let mut b = batch_of(
        &ctx,
        &[
            r#"{"id": 1, "data": [1, 2]}"#,
            r#"{"id": 2, "data": [999, 2]}"#,
            r#"{"id": 3}"#,
        ],
    );
    run_batch(&mut engine, &ctx, &to, &mut b);
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
    let (to, _replies) = to();
    let mut engine = Summer::new(4);
    let mut b = batch_of(
        &ctx,
        &[
            r#"{"id": 1, "data": [666, 2]}"#,
            r#"{"id": 2, "data": "x"}"#,
            r#"{"id": 3, "data": [1, 2]}"#,
        ],
    );
    run_batch(&mut engine, &ctx, &to, &mut b);
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
    run_batch(&mut engine, &ctx, &to, &mut b);
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
            ack: None,
            properties: None,
        };
        assert!(matches!(q.offer(job), Offer::Queued));
    }
    drop(q);
    let (to, mut replies) = to();
    let engines = WorkerEngines {
        main: Box::new(main),
        single: Some(Box::new(single)),
    };
    batch_loop(engines, &ctx, &rx, &to, &WorkerBeat::new(Instant::now()));
    let mut answered = 0;
    while let Some(out) = replies.try_recv() {
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
