//! A test engine for the worker loops' unit tests (`batch`, `ahead`,
//! `one_at_a_time`), and what those tests share.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use model_runtime::{DType, Engine, RuntimeError, TensorSpec};
use serde_json::Value;

use crate::config::OverflowPolicy;
use crate::job::Job;
use crate::models::ModelContext;
use crate::replies::{Replies, ReplyReceiver};
use crate::telemetry::{DaemonStats, WorkerBeat};
use crate::worker::{JobReceiver, ModelQueue, Offer};

/// A JSON tensor model of two numbers, summed by [`Summer`].
pub fn summing() -> Arc<ModelContext> {
    Arc::new(ModelContext {
        message_inputs: vec![spec("x", 1, 2)],
        message_outputs: vec![spec("sum", 1, 1)],
        ..ModelContext::for_tests("m", "in/m")
    })
}

/// A queue holding `payloads` in order.
pub fn queue_of(payloads: impl Iterator<Item = String>) -> (ModelQueue, JobReceiver) {
    let (q, rx) = ModelQueue::bounded(64, 1 << 20, OverflowPolicy::RejectNew);
    for (i, payload) in payloads.enumerate() {
        let job = Job {
            topic: format!("in/m/{i}"),
            payload: Bytes::from(payload),
            received_at: 0.0,
            received: Instant::now(),
            ack: None,
            properties: None,
        };
        assert!(matches!(q.offer(job), Offer::Queued));
    }
    (q, rx)
}

/// The signature of a worker loop.
pub type WorkerLoop =
    fn(Box<dyn Engine>, &Arc<ModelContext>, &JobReceiver, &Replies, &Arc<WorkerBeat>);

/// `engine` served by `worker_loop` on a worker thread of its own, and
/// where its answers go.
pub fn serve_with(
    worker_loop: WorkerLoop,
    engine: Box<dyn Engine>,
    ctx: &Arc<ModelContext>,
    rx: &JobReceiver,
) -> (std::thread::JoinHandle<()>, ReplyReceiver, Arc<WorkerBeat>) {
    let (to, replies) = Replies::channel(
        "dev",
        Arc::new(DaemonStats::default()),
        (usize::MAX, "mqtt.max_packet_bytes"),
    );
    let beat = Arc::new(WorkerBeat::new(Instant::now()));
    let (ctx, rx, on_thread) = (Arc::clone(ctx), rx.clone(), Arc::clone(&beat));
    let worker = std::thread::Builder::new()
        .name("infer-m-0".into())
        .spawn(move || worker_loop(engine, &ctx, &rx, &to, &on_thread))
        .unwrap();
    (worker, replies, beat)
}

/// The `n` answers waiting, and no more.
pub fn answers(replies: &mut ReplyReceiver, n: usize) -> Vec<Value> {
    let all: Vec<Value> = (0..n)
        .map(|i| {
            let out = replies
                .try_recv()
                .unwrap_or_else(|| panic!("no answer {i}"));
            serde_json::from_slice(&out.payload).unwrap()
        })
        .collect();
    assert!(replies.try_recv().is_none(), "more than {n} answers");
    all
}

/// A model with input 'x' [rows, 2] and output 'sum' [rows, 1]: the sum
/// of each row. A row starting with 666 panics, 999 fails the invoke.
pub struct Summer {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub input: Vec<Vec<u8>>,
    pub output: Vec<Vec<u8>>,
    pub invokes: usize,
    /// The same count, readable after the engine moved into a loop.
    pub counted: Arc<std::sync::atomic::AtomicUsize>,
    /// If set, every invoke first waits for a token from it (an engine
    /// held up for as long as a test wants).
    pub gate: Option<std::sync::mpsc::Receiver<()>>,
}

pub fn spec(name: &str, rows: usize, cols: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![rows, cols],
        dtype: DType::F32,
        quantization: None,
        shape_signature: vec![-1, cols as i64],
    }
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Summer {
    pub fn new(rows: usize) -> Summer {
        Summer {
            inputs: vec![spec("x", rows, 2)],
            outputs: vec![spec("sum", rows, 1)],
            input: vec![vec![0xAA; rows * 8]],
            output: vec![vec![0; rows * 4]],
            invokes: 0,
            counted: Arc::default(),
            gate: None,
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
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
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
            self.output[0][r * 4..r * 4 + 4].copy_from_slice(&(pair[0] + pair[1]).to_le_bytes());
        }
        Ok(())
    }
    fn output(&self, index: usize) -> &[u8] {
        &self.output[index]
    }
    fn accelerator(&self) -> String {
        "test".into()
    }
    fn accelerator_name(&self) -> &str {
        "cpu"
    }
    fn delegation(&self) -> model_runtime::Delegation {
        model_runtime::Delegation::Cpu
    }
}

/// Serves `n` messages queued before `worker_loop` starts (so each finds
/// the next waiting) and checks every one got one answer, in order,
/// computed from its own inputs: a payload that does not decode gets its
/// error in its place, an invoke that panics or fails its error, and the
/// messages after them their results.
pub fn answers_each_in_order(worker_loop: WorkerLoop, n: usize) {
    let ctx = summing();
    let payload = |i: usize| match i % 7 {
        3 => "not json".to_string(),
        4 => format!(r#"{{"id": {i}, "data": [666, 1]}}"#),
        5 => format!(r#"{{"id": {i}, "data": [999, 1]}}"#),
        _ => format!(r#"{{"id": {i}, "data": [{i}, 0.5]}}"#),
    };
    let (q, rx) = queue_of((0..n).map(payload));
    let (worker, mut replies, beat) = serve_with(worker_loop, Box::new(Summer::new(1)), &ctx, &rx);
    drop(q);
    worker.join().unwrap();
    for (i, v) in answers(&mut replies, n).iter().enumerate() {
        match i % 7 {
            3 => assert_eq!(v["code"], "bad_json", "{i}: {v}"),
            4 | 5 => {
                assert_eq!(v["code"], "inference_failed", "{i}: {v}");
                assert_eq!(v["id"], i, "{v}");
            }
            _ => {
                assert_eq!(v["id"], i, "{v}");
                let sum = i as f64 + 0.5;
                assert_eq!(v["outputs"][0]["values"], serde_json::json!([sum]), "{v}");
            }
        }
    }
    assert!(beat.busy_for().is_none());
}
