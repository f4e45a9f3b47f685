//! The runtime floor: raw invoke latency of one model in-process, through
//! model-runtime with the LoadOptions the daemon uses (threads, batch,
//! accelerator).
//!
//! `--batch N` fixes a dynamic (-1) batch dimension at N, as the daemon
//! does for `batch` and `max_batch`; the report then adds the time per row
//! (per invoke / N), what one micro-batched message costs the runtime.
//!
//! `--accelerator gpu` (or `--delegate LIB`) runs the graph where a model's
//! `accelerators` entry would. The report then names the accelerator and
//! how much of the graph it took. `load_ms` is what the daemon pays before
//! that accelerator serves at start: load, compile and the warm-up
//! inference; `reload_ms` is the same once the runtime's environment is
//! up, what a worker's thread pays when a failing accelerator moves its
//! model down the list (and a retry, on a thread of its own). With
//! `--fixture`, every input is filled from the case and the outputs are
//! compared with the same model on the CPU (loaded too) and with the
//! fixture's reference outputs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use model_runtime::{
    Accelerator, DType, DelegateSpec, Delegation, Engine, LibrarySearch, LoadOptions, Runtime,
    RuntimeError, TensorSpec,
};
use serde_json::{json, Value};

/// `--accelerator`: the names a model's `accelerators` list uses for the
/// runtime's own accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceleratorArg {
    Cpu,
    Gpu,
    Npu,
}

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
    /// Stop timing after this long even if --iters are not done (for
    /// accelerators whose speed is not known in advance)
    #[arg(long, value_name = "SECS", value_parser = crate::parse_secs)]
    pub max_seconds: Option<Duration>,
    /// Untimed invokes first (after the warm-up inference that load_ms
    /// includes)
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
    /// Fill every input with a case of this reference file
    /// (tests/fixtures/*.json) instead of zeros, and report how far the
    /// outputs are from the reference and, off the CPU, from the CPU's
    #[arg(long, value_name = "F.json")]
    pub fixture: Option<PathBuf>,
    /// The case of --fixture [default: its first]
    #[arg(long, value_name = "NAME", requires = "fixture")]
    pub case: Option<String>,
    /// This runtime library instead of the daemon's search
    #[arg(long, value_name = "LIB")]
    pub library: Option<PathBuf>,
    /// Where the graph runs, as a model's `accelerators` entry
    #[arg(long, value_enum, value_name = "cpu|gpu|npu", default_value = "cpu")]
    pub accelerator: AcceleratorArg,
    /// With --accelerator gpu: let it compute in half precision (a model's
    /// `gpu_allow_fp16`)
    #[arg(long)]
    pub gpu_fp16: bool,
    /// An external delegate plugin instead of --accelerator (the library of
    /// a `[delegates.NAME]` table)
    #[arg(long, value_name = "LIB", conflicts_with_all = ["accelerator", "gpu_fp16"])]
    pub delegate: Option<PathBuf>,
    /// An option of --delegate, KEY=VALUE (repeat for more)
    #[arg(
        long = "delegate-option",
        value_name = "KEY=VALUE",
        requires = "delegate"
    )]
    pub delegate_options: Vec<String>,
    /// When the accelerator cannot run the model here (no device, no
    /// driver, the delegate declined, the warm-up failed): print
    /// {"unavailable": why, ...} and exit 0 instead of failing
    #[arg(long)]
    pub unavailable_ok: bool,
}

impl FloorArgs {
    fn accelerator(&self) -> Result<Accelerator, String> {
        if self.gpu_fp16 && self.accelerator != AcceleratorArg::Gpu {
            return Err("--gpu-fp16 needs --accelerator gpu".into());
        }
        if let Some(library) = &self.delegate {
            let mut options = Vec::new();
            for kv in &self.delegate_options {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    format!("--delegate-option needs KEY=VALUE, got '{kv}' (no '=')")
                })?;
                options.push((k.to_string(), v.to_string()));
            }
            return Ok(Accelerator::Delegate(DelegateSpec {
                name: "delegate".into(),
                library: library.clone(),
                options,
            }));
        }
        Ok(match self.accelerator {
            AcceleratorArg::Cpu => Accelerator::Cpu,
            AcceleratorArg::Gpu => Accelerator::Gpu {
                allow_fp16: self.gpu_fp16,
            },
            AcceleratorArg::Npu => Accelerator::Npu,
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Loads the model and runs the warm-up inference, as the daemon does
/// before an accelerator serves. `fill` writes the inputs in between.
/// Returns the engine, the load (+ compile) time and the warm-up time.
fn load_and_warm(
    runtime: &Runtime,
    model: &str,
    bytes: &[u8],
    options: &LoadOptions,
    fill: &dyn Fn(&mut dyn Engine) -> Result<(), String>,
) -> Result<(Box<dyn Engine>, Duration, Duration), LoadFailure> {
    let t = Instant::now();
    let mut engine = runtime
        .load(model, bytes.to_vec(), options)
        .map_err(|e| match e {
            RuntimeError::Accelerator { reason, .. } => LoadFailure::Unavailable(reason),
            other => LoadFailure::Other(format!("cannot load {model}: {other}")),
        })?;
    let loaded = t.elapsed();
    fill(engine.as_mut()).map_err(LoadFailure::Other)?;
    let t = Instant::now();
    engine.invoke().map_err(|e| {
        let why = format!("the warm-up inference failed: {e}");
        if options.accelerator == Accelerator::Cpu {
            LoadFailure::Other(why)
        } else {
            LoadFailure::Unavailable(why)
        }
    })?;
    Ok((engine, loaded, t.elapsed()))
}

enum LoadFailure {
    /// The accelerator cannot run the model here; the daemon would fall
    /// back.
    Unavailable(String),
    Other(String),
}

pub fn main(a: &FloorArgs) -> Result<(), String> {
    let model = &a.model;
    let (threads, iters, warmup, batch) = (a.threads, a.iters, a.warmup, a.batch);
    let accelerator = a.accelerator()?;
    let requested = match &accelerator {
        Accelerator::Delegate(_) => "delegate".to_string(),
        other => other.name().to_string(),
    };
    let options = LoadOptions {
        cpu_threads: threads,
        dynamic_batch: batch,
        accelerator,
    };
    let runtime = Runtime::open(&LibrarySearch::for_process(a.library.clone()))
        .map_err(|e| format!("runtime library: {e}"))?;
    let bytes = std::fs::read(model).map_err(|e| format!("cannot read model {model}: {e}"))?;
    let case = match &a.fixture {
        Some(f) => Some(FixtureCase::read(f, a.case.as_deref())?),
        None => None,
    };
    // Real input bytes when a fixture is given (some kernels' speed depends
    // on the data), zeros otherwise.
    let fill = |engine: &mut dyn Engine| -> Result<(), String> {
        check_batch(engine, model, batch)?;
        match &case {
            Some(c) => c.fill(engine),
            None => Ok(()),
        }
    };
    let (mut engine, loaded, warm) = match load_and_warm(&runtime, model, &bytes, &options, &fill) {
        Ok(found) => found,
        Err(LoadFailure::Unavailable(why)) if a.unavailable_ok => {
            let out = json!({
                "model": model,
                "threads": threads,
                "batch": options.dynamic_batch,
                "accelerator_requested": requested,
                "gpu_fp16": a.gpu_fp16,
                "unavailable": why,
            });
            println!("{out}");
            return Ok(());
        }
        Err(LoadFailure::Unavailable(why)) => {
            return Err(format!("{requested} cannot run {model} here: {why}"))
        }
        Err(LoadFailure::Other(why)) => return Err(why),
    };
    // The same again with the runtime's environment (and any device) up:
    // what a fallback or a retry pays in a running daemon, where only the
    // first load of the process sets them up.
    let (reloaded, rewarm) = match load_and_warm(&runtime, model, &bytes, &options, &fill) {
        Ok((again, loaded, warm)) => {
            drop(again);
            (loaded, warm)
        }
        Err(LoadFailure::Unavailable(why) | LoadFailure::Other(why)) => {
            return Err(format!("loading {model} a second time: {why}"))
        }
    };
    for _ in 0..warmup {
        engine.invoke().map_err(|e| format!("invoke failed: {e}"))?;
    }
    let mut h: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < iters {
        let t = Instant::now();
        engine.invoke().map_err(|e| format!("invoke failed: {e}"))?;
        let _ = h.record((t.elapsed().as_nanos() as u64).max(1));
        done += 1;
        if a.max_seconds.is_some_and(|max| started.elapsed() >= max) {
            break;
        }
    }
    let total = started.elapsed().as_secs_f64();
    let us = |ns: u64| (ns as f64 / 1000.0 * 100.0).round() / 100.0;
    // Per row: one invoke's time shared by its `batch` rows.
    let row_us = |ns: u64| (ns as f64 / f64::from(batch)).round() / 1000.0;
    let mut out = json!({
        "model": model,
        "threads": threads,
        "batch": options.dynamic_batch,
        "iters": done,
        "accelerator": engine.accelerator(),
        "p50_us": us(h.value_at_quantile(0.5)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "mean_us": us(h.mean() as u64),
        "max_us": us(h.max()),
        "invokes_per_s": (done as f64 / total).round(),
        "row_p50_us": row_us(h.value_at_quantile(0.5)),
        "row_p99_us": row_us(h.value_at_quantile(0.99)),
        "row_mean_us": row_us(h.mean() as u64),
        "rows_per_s": (done as f64 * f64::from(batch) / total).round(),
        "accelerator_requested": requested,
        "accelerator_name": engine.accelerator_name(),
        "gpu_fp16": a.gpu_fp16,
        "delegation": delegation_json(engine.delegation()),
        "load_ms": ms(loaded + warm),
        "load_compile_ms": ms(loaded),
        "warmup_invoke_ms": ms(warm),
        "reload_ms": ms(reloaded + rewarm),
        "p95_us": us(h.value_at_quantile(0.95)),
        "timed_s": (total * 1000.0).round() / 1000.0,
    });
    if let Some(c) = &case {
        let compared = compare(&runtime, model, &bytes, &options, engine.as_ref(), c, &fill)?;
        if let (Value::Object(o), Value::Object(extra)) = (&mut out, compared) {
            o.extend(extra);
        }
    }
    println!("{out}");
    Ok(())
}

fn check_batch(engine: &dyn Engine, model: &str, batch: u32) -> Result<(), String> {
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
    Ok(())
}

fn delegation_json(d: Delegation) -> Value {
    match d {
        Delegation::Cpu => json!({"kind": "cpu"}),
        Delegation::Full => json!({"kind": "full"}),
        Delegation::None => json!({"kind": "none"}),
        Delegation::Partial { delegated, total } => {
            json!({"kind": "partial", "delegated_nodes": delegated, "total_nodes": total})
        }
    }
}

/// How far the engine's outputs are from the same model on the CPU
/// (loaded here with the same options otherwise) and from the fixture's
/// reference outputs. Keys: `max_abs_diff_vs_cpu` (in the outputs' float
/// domain; null on the CPU itself), `max_q_diff_vs_cpu` (quantization
/// steps, for quantized outputs), `max_abs_diff_vs_reference` (batch 1
/// only) and `fixture_case`.
fn compare(
    runtime: &Runtime,
    model: &str,
    bytes: &[u8],
    options: &LoadOptions,
    engine: &dyn Engine,
    case: &FixtureCase,
    fill: &dyn Fn(&mut dyn Engine) -> Result<(), String>,
) -> Result<Value, String> {
    let mine = outputs_of(engine)?;
    let mut o = serde_json::Map::new();
    o.insert("fixture_case".into(), json!(case.name));
    if options.accelerator == Accelerator::Cpu {
        o.insert("max_abs_diff_vs_cpu".into(), Value::Null);
        o.insert("max_q_diff_vs_cpu".into(), Value::Null);
    } else {
        let cpu_options = LoadOptions {
            accelerator: Accelerator::Cpu,
            ..options.clone()
        };
        let (cpu, _, _) =
            load_and_warm(runtime, model, bytes, &cpu_options, fill).map_err(|e| match e {
                LoadFailure::Unavailable(why) | LoadFailure::Other(why) => {
                    format!("the cpu engine to compare with: {why}")
                }
            })?;
        let theirs = outputs_of(cpu.as_ref())?;
        let (mut abs, mut q) = (0.0f64, None::<i64>);
        for (a, b) in mine.iter().zip(&theirs) {
            abs = abs.max(max_abs(&a.values, &b.values));
            if let (Some(qa), Some(qb)) = (&a.quantized, &b.quantized) {
                let d = qa.iter().zip(qb).map(|(x, y)| (x - y).abs()).max();
                q = q.max(d);
            }
        }
        o.insert("max_abs_diff_vs_cpu".into(), json!(abs));
        o.insert("max_q_diff_vs_cpu".into(), json!(q));
    }
    let reference = if options.dynamic_batch > 1 {
        None
    } else {
        case.max_abs_vs_reference(engine, &mine)
    };
    o.insert("max_abs_diff_vs_reference".into(), json!(reference));
    Ok(Value::Object(o))
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// One output read back: float-domain values (dequantized) and, for
/// quantized ones, the raw integers.
struct OutputValues {
    values: Vec<f64>,
    quantized: Option<Vec<i64>>,
}

fn outputs_of(engine: &dyn Engine) -> Result<Vec<OutputValues>, String> {
    engine
        .outputs()
        .iter()
        .enumerate()
        .map(|(i, spec)| read_output(spec, engine.output(i)))
        .collect()
}

fn read_output(spec: &TensorSpec, bytes: &[u8]) -> Result<OutputValues, String> {
    let ints = |size: usize, f: &dyn Fn(&[u8]) -> i64| -> Vec<i64> {
        bytes.chunks_exact(size).map(f).collect()
    };
    let raw: Vec<i64> = match spec.dtype {
        DType::F32 => {
            let values = bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            return Ok(OutputValues {
                values,
                quantized: None,
            });
        }
        DType::I8 => ints(1, &|c| i64::from(c[0] as i8)),
        DType::U8 | DType::Bool => ints(1, &|c| i64::from(c[0])),
        DType::I16 => ints(2, &|c| i64::from(i16::from_le_bytes([c[0], c[1]]))),
        DType::I32 => ints(4, &|c| {
            i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        }),
        DType::I64 => ints(8, &|c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        }),
        other => {
            return Err(format!(
                "output '{}' is {other}: the floor cannot compare it",
                spec.name
            ))
        }
    };
    let values = match spec.quantization {
        Some(q) => raw
            .iter()
            .map(|&v| (v - i64::from(q.zero_point)) as f64 * f64::from(q.scale))
            .collect(),
        None => raw.iter().map(|&v| v as f64).collect(),
    };
    let quantized = spec.quantization.map(|_| raw);
    Ok(OutputValues { values, quantized })
}

/// One case of a reference file (tests/fixtures/*.json): its inputs and
/// reference outputs, by name.
struct FixtureCase {
    name: String,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    shown: String,
}

impl FixtureCase {
    fn read(path: &Path, case: Option<&str>) -> Result<FixtureCase, String> {
        let shown = path.display().to_string();
        let mut case = crate::load::fixture_case(path, case)?;
        let chosen = &mut case;
        let list = |c: &mut Value, key: &str| -> Result<Vec<Value>, String> {
            c.get_mut(key)
                .and_then(Value::as_array_mut)
                .map(std::mem::take)
                .ok_or_else(|| format!("fixture {shown}: the case has no \"{key}\" array"))
        };
        Ok(FixtureCase {
            name: chosen
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)")
                .to_string(),
            inputs: list(chosen, "inputs")?,
            outputs: list(chosen, "outputs")?,
            shown,
        })
    }

    /// The case's entry for tensor `i` of `specs`: by name, else (when no
    /// name matches any) by position.
    fn entry<'a>(list: &'a [Value], specs: &[TensorSpec], i: usize) -> Option<&'a Value> {
        let named = |name: &str| {
            list.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        };
        let by_name = specs.iter().any(|s| named(&s.name).is_some());
        if by_name {
            named(&specs[i].name)
        } else {
            list.get(i)
        }
    }

    /// Writes every input; a batch-1 case fills every row of a larger batch.
    fn fill(&self, engine: &mut dyn Engine) -> Result<(), String> {
        let specs = engine.inputs().to_vec();
        for (i, spec) in specs.iter().enumerate() {
            let shown = &self.shown;
            let entry = Self::entry(&self.inputs, &specs, i)
                .ok_or_else(|| format!("fixture {shown} has no input '{}'", spec.name))?;
            let b = input_bytes(spec, entry).map_err(|e| format!("fixture {shown}: {e}"))?;
            let buf = &mut engine.input_buffers_mut()[i];
            if b.is_empty() || !buf.len().is_multiple_of(b.len()) {
                return Err(format!(
                    "fixture {shown} input '{}' is {} bytes, the model's input is {}",
                    spec.name,
                    b.len(),
                    buf.len()
                ));
            }
            for row in buf.chunks_exact_mut(b.len()) {
                row.copy_from_slice(&b);
            }
        }
        Ok(())
    }

    /// The largest difference of `outputs` from the reference's float
    /// values; None when the case has no comparable outputs.
    fn max_abs_vs_reference(&self, engine: &dyn Engine, outputs: &[OutputValues]) -> Option<f64> {
        let specs = engine.outputs();
        let mut worst: Option<f64> = None;
        for (i, got) in outputs.iter().enumerate() {
            let want: Vec<f64> = Self::entry(&self.outputs, specs, i)?
                .get("values")?
                .as_array()?
                .iter()
                .map(Value::as_f64)
                .collect::<Option<_>>()?;
            worst = Some(worst.unwrap_or(0.0).max(max_abs(&got.values, &want)));
        }
        worst
    }
}

/// A fixture input's bytes for `spec`: float32 values as they are, int8
/// and uint8 from the reference's own `quantized` values.
fn input_bytes(spec: &TensorSpec, entry: &Value) -> Result<Vec<u8>, String> {
    let numbers = |key: &str| -> Result<Vec<f64>, String> {
        entry
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("input '{}' has no \"{key}\" array", spec.name))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| format!("input '{}': {x} is not a number", spec.name))
            })
            .collect()
    };
    let ints = |bits: u32, signed: bool| -> Result<Vec<i64>, String> {
        let (lo, hi) = if signed {
            (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
        } else {
            (0, (1i64 << bits) - 1)
        };
        let key = if entry.get("quantized").is_some() {
            "quantized"
        } else {
            "values"
        };
        numbers(key)?
            .into_iter()
            .map(|v| {
                let n = v as i64;
                if n as f64 != v || n < lo || n > hi {
                    Err(format!(
                        "input '{}': {v} is not a {} value",
                        spec.name, spec.dtype
                    ))
                } else {
                    Ok(n)
                }
            })
            .collect()
    };
    Ok(match spec.dtype {
        DType::F32 => numbers("values")?
            .into_iter()
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect(),
        DType::I8 => ints(8, true)?.into_iter().map(|n| n as i8 as u8).collect(),
        DType::U8 => ints(8, false)?.into_iter().map(|n| n as u8).collect(),
        DType::I32 => ints(32, true)?
            .into_iter()
            .flat_map(|n| (n as i32).to_le_bytes())
            .collect(),
        DType::I64 => numbers("values")?
            .into_iter()
            .flat_map(|v| (v as i64).to_le_bytes())
            .collect(),
        other => {
            return Err(format!(
                "input '{}' is {other}: the floor cannot fill it from a fixture",
                spec.name
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use model_runtime::{DType, Quantization, TensorSpec};
    use serde_json::json;

    use super::{input_bytes, max_abs, read_output, FixtureCase, FloorArgs};
    use clap::Parser;
    use model_runtime::Accelerator;

    #[derive(Debug, Parser)]
    struct Floor {
        #[command(flatten)]
        a: FloorArgs,
    }

    fn parse(args: &[&str]) -> Result<Floor, clap::Error> {
        Floor::try_parse_from([&["floor", "m.tflite"][..], args].concat())
    }

    #[test]
    fn the_accelerator_is_one_of_the_runtimes_or_a_delegate_with_its_options() {
        let accel = |args: &[&str]| parse(args).unwrap().a.accelerator();
        assert_eq!(accel(&[]), Ok(Accelerator::Cpu));
        assert_eq!(
            accel(&["--accelerator", "gpu", "--gpu-fp16"]),
            Ok(Accelerator::Gpu { allow_fp16: true })
        );
        assert_eq!(
            accel(&["--gpu-fp16"]),
            Err("--gpu-fp16 needs --accelerator gpu".into())
        );
        let Ok(Accelerator::Delegate(d)) = accel(&[
            "--delegate",
            "/x/libd.so",
            "--delegate-option",
            "ops=RELU,MUL",
            "--delegate-option=fail_invoke_at=3",
        ]) else {
            panic!("not a delegate");
        };
        assert_eq!(d.library, std::path::Path::new("/x/libd.so"));
        assert_eq!(
            d.options,
            [
                ("ops".to_string(), "RELU,MUL".to_string()),
                ("fail_invoke_at".to_string(), "3".to_string())
            ]
        );
        let bad = accel(&["--delegate", "d.so", "--delegate-option", "ops"]).unwrap_err();
        assert!(bad.contains("KEY=VALUE"), "{bad}");
        // A delegate is the accelerator: not both; options need one.
        for args in [
            &["--delegate", "d.so", "--accelerator", "gpu"][..],
            &["--delegate-option", "a=b"][..],
            &["--accelerator", "tpu"][..],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    fn spec(name: &str, dtype: DType, quantization: Option<Quantization>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: vec![1, 2],
            dtype,
            quantization,
            shape_signature: vec![1, 2],
        }
    }

    #[test]
    fn an_int8_output_is_compared_dequantized_and_in_steps() {
        let q = Quantization {
            scale: 0.5,
            zero_point: -128,
        };
        let out = read_output(&spec("probs", DType::I8, Some(q)), &[0x80, 0x02]).unwrap();
        assert_eq!(out.quantized, Some(vec![-128, 2]));
        assert_eq!(out.values, vec![0.0, 65.0]);
        let f = read_output(
            &spec("x", DType::F32, None),
            &[1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
        )
        .unwrap();
        assert_eq!((f.values, f.quantized), (vec![1.5, -2.0], None));
        assert_eq!(max_abs(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        // Different lengths never compare as close.
        assert_eq!(max_abs(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn fixture_inputs_become_the_tensor_bytes() {
        let int8 = json!({"name": "image", "values": [0.5, -1.0], "quantized": [3, -128]});
        assert_eq!(
            input_bytes(&spec("image", DType::I8, None), &int8).unwrap(),
            vec![3, 0x80]
        );
        let f32 = json!({"name": "temp", "values": [0.25, 2.0]});
        assert_eq!(
            input_bytes(&spec("temp", DType::F32, None), &f32).unwrap(),
            [0.25f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()
        );
        let out_of_range = json!({"quantized": [300]});
        let err = input_bytes(&spec("u", DType::U8, None), &out_of_range).unwrap_err();
        assert!(err.contains("300 is not a uint8 value"), "{err}");
    }

    #[test]
    fn fixture_entries_go_by_name_else_by_position() {
        let list = vec![json!({"name": "temp"}), json!({"name": "accel"})];
        let specs = [
            spec("accel", DType::F32, None),
            spec("temp", DType::F32, None),
        ];
        assert_eq!(
            FixtureCase::entry(&list, &specs, 0).unwrap()["name"],
            "accel"
        );
        let unnamed = [spec("a", DType::F32, None), spec("b", DType::F32, None)];
        assert_eq!(
            FixtureCase::entry(&list, &unnamed, 1).unwrap()["name"],
            "accel"
        );
    }
}
