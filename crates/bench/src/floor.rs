//! The runtime floor: raw invoke latency of one model in-process, through
//! model-runtime with the LoadOptions the daemon uses (threads, batch).

use std::path::{Path, PathBuf};
use std::time::Instant;

use hdrhistogram::Histogram;
use model_runtime::{LibrarySearch, LoadOptions, Runtime};
use serde_json::json;

use crate::args::Args;
use crate::load::{fixture_payload, Payload};

pub fn main(a: &Args) -> Result<(), String> {
    a.check_known(&[
        "threads", "iters", "batch", "fixture", "case", "warmup", "library",
    ])?;
    let model = a
        .positional
        .get(1)
        .ok_or("usage: edge-infer-bench floor MODEL.tflite [--threads N] [--iters N]")?;
    let threads: u32 = a.num("threads", 1)?;
    let iters: u64 = a.num("iters", 1000)?;
    let warmup: u64 = a.num("warmup", 20)?;
    let options = LoadOptions {
        cpu_threads: threads,
        dynamic_batch: a.num("batch", 1)?,
    };
    let runtime = Runtime::open(&LibrarySearch::for_process(
        a.get("library").map(PathBuf::from),
    ))
    .map_err(|e| format!("runtime library: {e}"))?;
    let bytes = std::fs::read(model).map_err(|e| format!("cannot read model {model}: {e}"))?;
    let mut engine = runtime
        .load(model, bytes, &options)
        .map_err(|e| format!("cannot load {model}: {e}"))?;
    // Real input bytes when a fixture is given (some kernels' speed depends
    // on the data), zeros otherwise.
    if let Some(f) = a.get("fixture") {
        if let Payload::Raw(b) = fixture_payload(Path::new(f), a.get("case"), true)? {
            let buf = engine
                .input_buffers_mut()
                .first_mut()
                .ok_or("model has no inputs")?;
            if buf.len() != b.len() {
                return Err(format!(
                    "fixture input is {} bytes, the model's input is {}",
                    b.len(),
                    buf.len()
                ));
            }
            buf.copy_from_slice(&b);
        }
    }
    for _ in 0..warmup {
        engine.invoke().map_err(|e| format!("invoke failed: {e}"))?;
    }
    let mut h: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        engine.invoke().map_err(|e| format!("invoke failed: {e}"))?;
        let _ = h.record((t.elapsed().as_nanos() as u64).max(1));
    }
    let total = started.elapsed().as_secs_f64();
    let us = |ns: u64| (ns as f64 / 1000.0 * 100.0).round() / 100.0;
    let out = json!({
        "model": model,
        "threads": threads,
        "batch": options.dynamic_batch,
        "iters": iters,
        "accelerator": engine.accelerator(),
        "p50_us": us(h.value_at_quantile(0.5)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "mean_us": us(h.mean() as u64),
        "max_us": us(h.max()),
        "invokes_per_s": (iters as f64 / total).round(),
    });
    println!("{out}");
    Ok(())
}
