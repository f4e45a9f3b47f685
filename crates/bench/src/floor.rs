//! The runtime floor: raw invoke latency of one model in-process, through
//! model-runtime with the LoadOptions the daemon uses (threads, batch).
//!
//! `--batch N` fixes a dynamic (-1) batch dimension at N, as the daemon
//! does for `batch` and `max_batch`; the report then adds the time per row
//! (per invoke / N), what one micro-batched message costs the runtime.

use std::path::PathBuf;
use std::time::Instant;

use hdrhistogram::Histogram;
use model_runtime::{LibrarySearch, LoadOptions, Runtime};
use serde_json::json;

use crate::load::{fixture_payload, Payload};

#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// The model file (.tflite)
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// XNNPACK threads, as a model's `threads` setting
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: u32,
    /// Timed invokes
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub iters: u64,
    /// Untimed invokes first
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub warmup: u64,
    /// Fix a dynamic (-1) batch dimension at N (every input must have one
    /// when N > 1)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub batch: u32,
    /// Fill the input with a case of this reference file
    /// (tests/fixtures/*.json) instead of zeros
    #[arg(long, value_name = "F.json")]
    pub fixture: Option<PathBuf>,
    /// The case of --fixture [default: its first]
    #[arg(long, value_name = "NAME", requires = "fixture")]
    pub case: Option<String>,
    /// This runtime library instead of the daemon's search
    #[arg(long, value_name = "LIB")]
    pub library: Option<PathBuf>,
}

pub fn main(a: &FloorArgs) -> Result<(), String> {
    let model = &a.model;
    let (threads, iters, warmup, batch) = (a.threads, a.iters, a.warmup, a.batch);
    let options = LoadOptions {
        cpu_threads: threads,
        dynamic_batch: batch,
        ..Default::default()
    };
    let runtime = Runtime::open(&LibrarySearch::for_process(a.library.clone()))
        .map_err(|e| format!("runtime library: {e}"))?;
    let bytes = std::fs::read(model).map_err(|e| format!("cannot read model {model}: {e}"))?;
    let mut engine = runtime
        .load(model, bytes, &options)
        .map_err(|e| format!("cannot load {model}: {e}"))?;
    if batch > 1 {
        if let Some(fixed) = engine
            .inputs()
            .iter()
            .find(|s| s.shape_signature.first() != Some(&-1))
        {
            return Err(format!(
                "--batch {batch}: input '{}' of {model} has no dynamic batch dimension (shape signature {:?})",
                fixed.name, fixed.shape_signature
            ));
        }
    }
    // Real input bytes when a fixture is given (some kernels' speed depends
    // on the data), zeros otherwise.
    if let Some(f) = &a.fixture {
        if let Payload::Raw(b) = fixture_payload(f, a.case.as_deref(), true)? {
            let buf = engine
                .input_buffers_mut()
                .first_mut()
                .ok_or("model has no inputs")?;
            // A batch-1 fixture fills every row of a larger batch.
            if b.is_empty() || buf.len() % b.len() != 0 {
                return Err(format!(
                    "fixture input is {} bytes, the model's input is {}",
                    b.len(),
                    buf.len()
                ));
            }
            for row in buf.chunks_exact_mut(b.len()) {
                row.copy_from_slice(&b);
            }
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
    // Per row: one invoke's time shared by its `batch` rows.
    let row_us = |ns: u64| (ns as f64 / f64::from(batch)).round() / 1000.0;
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
        "row_p50_us": row_us(h.value_at_quantile(0.5)),
        "row_p99_us": row_us(h.value_at_quantile(0.99)),
        "row_mean_us": row_us(h.mean() as u64),
        "rows_per_s": (iters as f64 * f64::from(batch) / total).round(),
    });
    println!("{out}");
    Ok(())
}
