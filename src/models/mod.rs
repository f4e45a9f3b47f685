//! The model set. Loading: read each file, hash it, load one engine per
//! worker, check labels and payload compatibility, and warm every engine
//! with one inference so the first real message pays no compile or
//! allocation cost. Serving: [`ModelContext`], the one record of a model
//! that routing, workers and replies share.

mod accel;
mod intake;
pub mod priority;
mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use model_runtime::{Accelerator, Engine, LoadOptions, Runtime, TensorSpec};
use sha2::{Digest, Sha256};

use crate::codec::quant;
use crate::config::{
    self, FileLimits, ModelSettings, PayloadFormat, Problem, Settings, WorkerPriority, LABELS_FILE,
    MODEL_FILE,
};
use crate::cores;
use crate::telemetry::ModelStats;
use crate::topic::{TopicFilter, TopicTemplate};

pub use accel::{AccelReport, Chain, Choice, NoAccelerator};
pub use intake::{Intake, IntakeKind, WindowIntake, WindowShape};
pub use shared::sharing as engine_sharers;

/// One served model as every stage of the message path sees it (read-only,
/// shared): routing matches `input_topic`, workers decode against
/// `message_inputs`, replies render `output_topic` and count in `stats`.
pub struct ModelContext {
    pub name: String,
    pub sha256: String,
    pub input_topic: TopicFilter,
    pub output_topic: TopicTemplate,
    pub payload: PayloadFormat,
    /// The input tensors one message fills: the engine's own inputs, or with
    /// micro-batching one row of them (batch dimension 1). Decoding checks
    /// payloads against these.
    pub message_inputs: Vec<TensorSpec>,
    /// The output tensors one result reports, likewise: one row of the
    /// engine's outputs when micro-batching, so results look the same with
    /// batching on or off.
    pub message_outputs: Vec<TensorSpec>,
    /// Micro-batching (`max_batch` > 1) or one message per invoke.
    pub batching: Batching,
    pub labels: Option<Vec<String>>,
    pub top_k: Option<usize>,
    /// How a message becomes the input: tensors, fields, windows, images.
    pub intake: Arc<Intake>,
    /// Counters of this model name; carried over when a reload replaces
    /// the model with a new version.
    pub stats: Arc<ModelStats>,
    /// The scheduling class its worker threads enter (`priority`).
    pub priority: WorkerPriority,
}

/// The byte budget of a model's queue when `queue_max_bytes` is unset:
/// room for [`QUEUE_BUDGET_MESSAGES`] typical messages, or for
/// [`QUEUE_BUDGET_FRAMES`] decoded frames for an image model, within
/// these bounds. A sensor model's 3 KiB messages get about 500 (25 ms at
/// 20,000 msg/s, a stall of its event loop or worker; the queue of 4,096
/// messages beyond rides out the longer stalls of smaller ones); a raw
/// image tensor model's the ceiling, a score, which keeps its worker busy
/// for as long. An image model's messages are compressed files, smaller than
/// the tensor the estimate counts, and each costs its worker a decode and
/// a resize on top of the invoke: 16 frames' worth holds about 30 640x480
/// JPEGs, over 100 ms of MobileNetV2 work, and under overload each more
/// only adds latency and costs its payload, and about as much again in
/// the allocator, in RSS (measured: a MobileNetV2 JPEG overload peaked
/// 1.6 MB lower than with 4 MiB, at the same sustained rate or better).
/// Raw tensors keep the ceiling: 16 of them are only about 30 ms of
/// invokes, and their sustained rate looked lower with that budget.
/// The ceiling and the message count are set by what the benchmark's
/// overloads cost against what they gained (HAR JSON, MobileNetV2 raw and
/// JSON, searches for the sustained rate, two interleaved runs each): at
/// 3 MiB and 512 messages instead of 4 MiB and 1,024, the peak RSS was
/// 1.2 to 1.4 MB lower in each at the median, and every sustained rate
/// within those runs' spread (HAR 20,885 and 19,264 msg/s against 21,938,
/// 19,086 and 17,380; MobileNetV2 JSON 295 and 277 against 289 and 260;
/// raw 447 and 476 against 476 and 447). Four interleaved pairs later put
/// MobileNetV2 JSON's cost at about 7% (median 254 against 274 msg/s),
/// and half the image budget cost JPEG 10%: the searches pay for each
/// message a queue cannot hold. The trade is kept for the 32 MB peak RSS
/// (bench/notes.md).
pub const QUEUE_BUDGET_MIN: usize = 1 << 20;
pub const QUEUE_BUDGET_MAX: usize = 3 << 20;
pub const QUEUE_BUDGET_MESSAGES: usize = 512;
pub const QUEUE_BUDGET_FRAMES: usize = 16;

/// Bytes per number in a JSON tensor message as devices send them
/// (`-0.0123,` or `127,`): the estimate behind a JSON model's budget.
const JSON_BYTES_PER_NUMBER: usize = 8;
/// Per message: the id, the keys, the braces.
const JSON_MESSAGE_OVERHEAD: usize = 64;

/// The queue's byte budget: `configured`, or room for
/// [`QUEUE_BUDGET_MESSAGES`] typical messages of a model with these
/// inputs (see [`typical_message_bytes`]), [`QUEUE_BUDGET_FRAMES`] for an
/// image model, within the bounds above.
pub fn queue_budget(
    configured: Option<usize>,
    payload: PayloadFormat,
    inputs: &[TensorSpec],
    intake: &Intake,
) -> usize {
    configured.unwrap_or_else(|| {
        let typical = typical_message_bytes(payload, inputs, intake);
        let messages = match intake.kind {
            IntakeKind::Image { .. } => QUEUE_BUDGET_FRAMES,
            _ => QUEUE_BUDGET_MESSAGES,
        };
        typical
            .saturating_mul(messages)
            .clamp(QUEUE_BUDGET_MIN, QUEUE_BUDGET_MAX)
    })
}

/// What one message of a model usually weighs, from its input: the tensor
/// bytes for raw payloads and images (a compressed photo is smaller than
/// its decoded tensor, a PNG rarely bigger), a number's worth of text per
/// element for JSON tensors and windows (a message may carry a whole
/// window of readings), a few bytes per field for named fields.
pub fn typical_message_bytes(
    payload: PayloadFormat,
    inputs: &[TensorSpec],
    intake: &Intake,
) -> usize {
    let elements: usize = inputs.iter().map(|t| t.element_count()).sum();
    let tensor_bytes: usize = inputs.iter().map(|t| t.byte_len()).sum();
    match (&intake.kind, payload) {
        (IntakeKind::Tensors, PayloadFormat::Raw) => tensor_bytes,
        (IntakeKind::Image { .. }, _) => tensor_bytes,
        (IntakeKind::Fields(fields), _) => {
            fields.len() * JSON_BYTES_PER_NUMBER * 2 + JSON_MESSAGE_OVERHEAD
        }
        _ => elements * JSON_BYTES_PER_NUMBER + JSON_MESSAGE_OVERHEAD,
    }
}

impl CheckedModel {
    /// This model's queue byte budget (see [`queue_budget`]).
    pub fn queue_budget(&self) -> usize {
        queue_budget(
            self.settings.queue_max_bytes,
            self.settings.payload,
            &self.inputs,
            &self.intake,
        )
    }
}

impl ModelContext {
    pub fn new(checked: &CheckedModel, stats: Arc<ModelStats>) -> ModelContext {
        let ms = &checked.settings;
        ModelContext {
            name: ms.name.clone(),
            sha256: checked.sha256.clone(),
            input_topic: ms.input_topic.clone(),
            output_topic: ms.output_topic.clone(),
            payload: ms.payload,
            message_inputs: checked.inputs.clone(),
            message_outputs: checked.outputs.clone(),
            batching: Batching {
                max_batch: ms.max_batch,
                max_delay: ms.max_delay,
            },
            labels: checked.labels.clone(),
            top_k: checked.top_k,
            intake: Arc::clone(&checked.intake),
            stats,
            priority: ms.worker_priority,
        }
    }
}

#[cfg(test)]
impl ModelContext {
    /// A model named `name` listening on `input_topic`, answering on
    /// `out/{model}`, with no tensors: tests set the fields they need.
    pub fn for_tests(name: &str, input_topic: &str) -> ModelContext {
        let input_topic = TopicFilter::parse(input_topic).unwrap();
        ModelContext {
            name: name.into(),
            sha256: "00".repeat(32),
            output_topic: TopicTemplate::parse("out/{model}", &input_topic).unwrap(),
            input_topic,
            payload: PayloadFormat::Json,
            message_inputs: Vec::new(),
            message_outputs: Vec::new(),
            batching: Batching {
                max_batch: 1,
                max_delay: Duration::ZERO,
            },
            labels: None,
            top_k: None,
            intake: Arc::new(Intake {
                kind: IntakeKind::Tensors,
                normalize: None,
                float_input: None,
            }),
            stats: Arc::default(),
            priority: WorkerPriority::Normal,
        }
    }
}

/// A model's micro-batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Messages per invoke at most; 1 is off.
    pub max_batch: usize,
    /// How long the first message of a batch may wait for more.
    pub max_delay: Duration,
}

/// The engines of one worker thread.
pub struct WorkerEngines {
    /// Compiled at the model's batch (with micro-batching, `max_batch`).
    pub main: Box<dyn Engine>,
    /// With micro-batching only: the same model compiled at batch 1, for a
    /// message that arrives alone (a batch-`max_batch` invoke would compute
    /// every zero row for it: measured 3x the CPU at low rates).
    pub single: Option<Box<dyn Engine>>,
}

/// A model loaded and warmed: what was checked, with the engines' own
/// tensor facts (rather than the file's), and the engines.
pub struct LoadedModel {
    pub checked: CheckedModel,
    /// One set per worker thread; a model on the CPU may share them with
    /// other models (`shared`), never between its own workers.
    pub engines: Vec<WorkerEngines>,
    /// What the first engine runs on, for people.
    pub accelerator: String,
    /// The model's accelerators and their state, shared by its engines.
    pub chain: Arc<Chain>,
    pub load_ms: f64,
}

/// Loads every configured model; returns every problem found, each keyed by
/// the model's config path.
pub fn load_all(
    settings: &Settings,
    runtime: &Arc<Runtime>,
) -> Result<Vec<LoadedModel>, Vec<Problem>> {
    each_model(settings, |ms| load_one(ms, &settings.file_limits, runtime))
}

/// Runs `f` on every configured model, collecting every problem rather than
/// stopping at the first.
fn each_model<T>(
    settings: &Settings,
    mut f: impl FnMut(&ModelSettings) -> Result<T, Problem>,
) -> Result<Vec<T>, Vec<Problem>> {
    let mut done = Vec::new();
    let mut problems = Vec::new();
    for ms in &settings.models {
        match f(ms) {
            Ok(m) => done.push(m),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(problems)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A problem at `models[i].<field>`.
fn problem(ms: &ModelSettings, field: &str, message: String) -> Problem {
    Problem {
        key: format!("{}.{field}", ms.key),
        message,
    }
}

/// Reads a model file whole: only a regular file (symlinks followed) of at
/// most `max_bytes` (`limits.max_model_bytes`), and never more than that
/// many bytes even if it grows while being read. Every reader of a model
/// file goes through here: loading, the static check, and a reload's
/// hashing. The error names the file, what it is or its size, and the
/// limit; the caller adds the key (`models[i].path`).
pub fn read_model_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    config::read_file(path, MODEL_FILE, max_bytes).map_err(|e| e.to_string())
}

/// The bytes of every model file in use, by sha256, so models serving
/// the same file (one model on several topics or payload formats, a
/// reload that keeps a file) share one copy; an entry goes when the last
/// engine holding it does.
fn shared_bytes(sha256: &str, bytes: Vec<u8>) -> model_runtime::ModelBytes {
    static FILES: Mutex<BTreeMap<String, Weak<Vec<u8>>>> = Mutex::new(BTreeMap::new());
    let mut files = FILES.lock().unwrap_or_else(|p| p.into_inner());
    files.retain(|_, w| w.strong_count() > 0);
    if let Some(held) = files.get(sha256).and_then(Weak::upgrade) {
        return held;
    }
    let bytes = Arc::new(bytes);
    files.insert(sha256.to_string(), Arc::downgrade(&bytes));
    bytes
}

/// The model file's name for messages, its bytes and their sha256.
fn read_model(
    ms: &ModelSettings,
    limits: &FileLimits,
) -> Result<(String, Vec<u8>, String), Problem> {
    let origin = ms.path.display().to_string();
    let bytes =
        read_model_file(&ms.path, limits.max_model_bytes).map_err(|e| problem(ms, "path", e))?;
    let sha256 = sha256_hex(&bytes);
    Ok((origin, bytes, sha256))
}

/// Reads (within `limits`), loads one engine set per worker on the first
/// of the model's accelerators that works, checks and warms the model
/// `ms`. A `background` model loads on a thread of that class, so the
/// runtime's intra-op threads, started while compiling, have it too
/// (`priority`).
pub fn load_one(
    ms: &ModelSettings,
    limits: &FileLimits,
    runtime: &Arc<Runtime>,
) -> Result<LoadedModel, Problem> {
    if ms.worker_priority != WorkerPriority::Background {
        return load_here(ms, limits, runtime);
    }
    std::thread::scope(|s| {
        let loading = std::thread::Builder::new()
            .name(format!("load-{}", ms.name))
            .spawn_scoped(s, || {
                // The runtime's own threads (`threads` > 1) are started
                // here and keep this thread's cores.
                cores::release();
                match priority::enter(ms.worker_priority) {
                    Ok(()) => log::info!(
                        "model {}: worker_priority = \"{}\": its threads run in the kernel's SCHED_IDLE class, on cores no other thread wants; while the cores are all busy its queue fills and its messages are refused as overloaded",
                        ms.name,
                        ms.worker_priority.as_str()
                    ),
                    Err(e) => log::warn!(
                        "model {}: worker_priority = \"{}\" not applied, its threads run at normal priority: the kernel refused SCHED_IDLE ({e}; a seccomp filter without the @resources calls?)",
                        ms.name,
                        ms.worker_priority.as_str()
                    ),
                }
                load_here(ms, limits, runtime)
            });
        match loading {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(problem(
                ms,
                "worker_priority",
                format!("cannot start a thread to load the model in its class: {e}"),
            )),
        }
    })
}

fn load_here(
    ms: &ModelSettings,
    limits: &FileLimits,
    runtime: &Arc<Runtime>,
) -> Result<LoadedModel, Problem> {
    let started = Instant::now();
    let problem = |field: &str, message: String| problem(ms, field, message);
    let (origin, bytes, sha256) = read_model(ms, limits)?;
    check_edgetpu(ms, &origin, &bytes)?;
    let bytes = shared_bytes(&sha256, bytes);
    let cpu_file = match &ms.accel.cpu_path {
        Some(path) => {
            let cpu_bytes = read_model_file(path, limits.max_model_bytes)
                .map_err(|e| problem("cpu_path", e))?;
            check_cpu_twin(ms, &origin, &bytes, &cpu_bytes)?;
            Some((path.display().to_string(), Arc::new(cpu_bytes)))
        }
        None => None,
    };
    let choices = ms
        .accel
        .accelerators
        .iter()
        .map(|a| match (a, &cpu_file) {
            (Accelerator::Cpu, Some((cpu_origin, cpu_bytes))) => {
                Choice::new(a.clone(), cpu_origin.clone(), Arc::clone(cpu_bytes))
            }
            _ => Choice::new(a.clone(), origin.clone(), Arc::clone(&bytes)),
        })
        .collect();
    let chain = Arc::new(Chain::new(
        &ms.name,
        choices,
        Arc::clone(runtime),
        ms.accel.retry,
    ));
    let options = LoadOptions {
        cpu_threads: ms.threads,
        dynamic_batch: ms.engine_batch(),
        accelerator: Accelerator::Cpu,
    };
    // Micro-batching workers also get the model at batch 1, for a message
    // that arrives alone.
    let single_options = (ms.max_batch > 1).then(|| LoadOptions {
        dynamic_batch: 1,
        ..options.clone()
    });
    let failed = |e: NoAccelerator| {
        let field = if ms.accel.accelerators.len() > 1 {
            "accelerators"
        } else {
            "path"
        };
        problem(field, e.to_string())
    };
    // Models on the CPU alone share their engines with the models that
    // serve the same file the same way (`shared`).
    let shareable = ms.share_engine
        && ms.accel.cpu_path.is_none()
        && ms.accel.accelerators == [Accelerator::Cpu];
    // The other models this one shares engines with, and how many of its
    // engines are in use already (by them, or by its own previous version
    // that a reload replaces).
    let mut shares_with = BTreeSet::new();
    let mut in_use = 0;
    let mut start = |worker: usize,
                     from: usize,
                     options: &LoadOptions,
                     expected: Option<&(Vec<TensorSpec>, Vec<TensorSpec>)>|
     -> Result<(Box<dyn Engine>, usize), Problem> {
        if !shareable {
            let engine = chain.start(from, options, expected).map_err(failed)?;
            let on = engine.on();
            return Ok((Box::new(engine), on));
        }
        let key = shared::EngineKey {
            sha256: sha256.clone(),
            threads: options.cpu_threads,
            batch: options.dynamic_batch,
            priority: ms.worker_priority,
            worker,
        };
        let (engine, loaded_by) = shared::engine(key, &ms.name, || {
            chain
                .start(from, options, expected)
                .map(|e| Box::new(e) as Box<dyn Engine>)
        })
        .map_err(failed)?;
        if let Some(holders) = loaded_by {
            chain.adopt(engine.delegation());
            shares_with.extend(holders.into_iter().filter(|h| *h != ms.name));
            in_use += 1;
        }
        Ok((Box::new(engine), 0))
    };
    // The first engine finds the accelerator that works; the others start
    // there, and every one must have the first one's tensors.
    let mut engines: Vec<WorkerEngines> = Vec::with_capacity(ms.workers);
    let mut first_on = None;
    let mut specs = None;
    let mut single_specs = None;
    for worker in 0..ms.workers {
        let (main, on) = start(worker, first_on.unwrap_or(0), &options, specs.as_ref())?;
        first_on.get_or_insert(on);
        specs.get_or_insert_with(|| (main.inputs().to_vec(), main.outputs().to_vec()));
        let single = match &single_options {
            Some(o) => {
                let (single, _) = start(worker, on, o, single_specs.as_ref())?;
                single_specs
                    .get_or_insert_with(|| (single.inputs().to_vec(), single.outputs().to_vec()));
                Some(single)
            }
            None => None,
        };
        engines.push(WorkerEngines { main, single });
    }
    let Some(first) = engines.first() else {
        return Err(problem("workers", "must be at least 1".into()));
    };
    let checked = checked(
        ms,
        limits,
        sha256,
        first.main.inputs(),
        first.main.outputs(),
    )?;
    let accelerator = first.main.accelerator();
    chain.loaded();
    if in_use > 0 {
        let total = engines.len() + engines.iter().filter(|e| e.single.is_some()).count();
        if shares_with.is_empty() {
            // A reload that changed only its topics or payload settings.
            log::info!(
                "model {}: keeps {in_use} of its {total} compiled engine(s) (same file, threads and batch)",
                ms.name
            );
        } else {
            log::info!(
                "model {}: shares {in_use} of its {total} engine(s) with {} (same file, threads and batch on the CPU): no memory of its own for their weights and activations; invokes on a shared engine take turns (`share_engine = false` gives it engines of its own)",
                ms.name,
                shares_with.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(LoadedModel {
        checked,
        engines,
        accelerator,
        chain,
        load_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// A model's settings checked against its tensors: the labels, top_k and
/// payload settings, and the tensors as one message sees them. From the
/// file alone (`check_static`, what `check-config` reports when no runtime
/// library loads) or from the loaded engines (`LoadedModel::checked`).
pub struct CheckedModel {
    pub settings: ModelSettings,
    pub sha256: String,
    pub labels: Option<Vec<String>>,
    /// How many classes to report, when `top_k` applies.
    pub top_k: Option<usize>,
    /// The tensors as one message fills and one result reports them: the
    /// model's own tensors, or with micro-batching (`max_batch` > 1) one
    /// row of them (batch dimension 1).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// How a message becomes `inputs`.
    pub intake: Arc<Intake>,
}

/// Checks every configured model from its file alone; returns every
/// problem found, each keyed by the model's config path.
pub fn check_all_static(settings: &Settings) -> Result<Vec<CheckedModel>, Vec<Problem>> {
    each_model(settings, |ms| check_static(ms, &settings.file_limits))
}

pub fn check_static(ms: &ModelSettings, limits: &FileLimits) -> Result<CheckedModel, Problem> {
    let problem = |field: &str, message: String| problem(ms, field, message);
    let (origin, bytes, sha256) = read_model(ms, limits)?;
    check_edgetpu(ms, &origin, &bytes)?;
    if let Some(path) = &ms.accel.cpu_path {
        let cpu_bytes =
            read_model_file(path, limits.max_model_bytes).map_err(|e| problem("cpu_path", e))?;
        check_cpu_twin(ms, &origin, &bytes, &cpu_bytes)?;
    }
    let facts = model_runtime::read_model_facts(&origin, &bytes, ms.engine_batch())
        .map_err(|e| problem("path", e.to_string()))?;
    checked(ms, limits, sha256, &facts.inputs, &facts.outputs)
}

/// A model compiled for the Edge TPU runs only through a delegate, and on
/// the cpu only as its CPU build (`cpu_path`): a list that cannot serve it
/// is a config problem, found before anything is loaded. A delegate that
/// declines at run time (no TPU attached) is not: the model then runs from
/// `cpu_path`.
fn check_edgetpu(ms: &ModelSettings, origin: &str, bytes: &[u8]) -> Result<(), Problem> {
    let edgetpu = model_runtime::read_custom_ops(origin, bytes)
        .is_ok_and(|ops| ops.iter().any(|op| op == model_runtime::EDGETPU_CUSTOM_OP));
    if !edgetpu {
        return Ok(());
    }
    let accelerators = &ms.accel.accelerators;
    if !accelerators
        .iter()
        .any(|a| matches!(a, Accelerator::Delegate(_)))
    {
        return Err(problem(
            ms,
            "accelerators",
            format!(
                "model {origin} is compiled for the Edge TPU (it contains {}) and runs only through an Edge TPU delegate (libedgetpu), but accelerators lists none; {}",
                model_runtime::EDGETPU_CUSTOM_OP,
                model_runtime::EDGETPU_CONFIG_HINT
            ),
        ));
    }
    if accelerators.contains(&Accelerator::Cpu) && ms.accel.cpu_path.is_none() {
        return Err(problem(
            ms,
            "cpu_path",
            format!(
                "is needed: accelerators lists \"cpu\", but {origin} is compiled for the Edge TPU (it contains {}), which the cpu cannot run; set cpu_path to the CPU build of the model (the file edgetpu_compiler was given), or remove \"cpu\"",
                model_runtime::EDGETPU_CUSTOM_OP
            ),
        ));
    }
    Ok(())
}

/// `cpu_path` must be the same model for the CPU: the same inputs and
/// outputs as `path` (names, shapes, types, quantization), as the file
/// declares them, so a fall back changes nothing a message or a result
/// sees. Checked from both files before anything is loaded.
fn check_cpu_twin(
    ms: &ModelSettings,
    origin: &str,
    bytes: &[u8],
    cpu_bytes: &[u8],
) -> Result<(), Problem> {
    let Some(cpu_path) = &ms.accel.cpu_path else {
        return Ok(());
    };
    let cpu_origin = cpu_path.display().to_string();
    let batch = ms.engine_batch();
    let main = model_runtime::read_model_facts(origin, bytes, batch)
        .map_err(|e| problem(ms, "path", e.to_string()))?;
    let cpu = model_runtime::read_model_facts(&cpu_origin, cpu_bytes, batch)
        .map_err(|e| problem(ms, "cpu_path", e.to_string()))?;
    let side = |a: &[TensorSpec], b: &[TensorSpec], what: &str| -> Option<String> {
        if a.len() != b.len() {
            return Some(format!("{} {what}s against {}", b.len(), a.len()));
        }
        a.iter().zip(b).find(|(x, y)| x != y).map(|(x, y)| {
            format!(
                "{what} '{}' {} {}{} against '{}' {} {}{}",
                y.name,
                y.shape_string(),
                y.dtype,
                quantization(y),
                x.name,
                x.shape_string(),
                x.dtype,
                quantization(x)
            )
        })
    };
    let differs = side(&main.inputs, &cpu.inputs, "input")
        .or_else(|| side(&main.outputs, &cpu.outputs, "output"));
    match differs {
        None => Ok(()),
        Some(d) => Err(problem(
            ms,
            "cpu_path",
            format!(
                "{cpu_origin} must have the same inputs and outputs as {origin} (it is the same model built for the CPU), but it has {d}"
            ),
        )),
    }
}

fn quantization(t: &TensorSpec) -> String {
    t.quantization.map_or_else(String::new, |q| {
        format!(" (scale {} zero point {})", q.scale, q.zero_point)
    })
}

/// Checks `ms` against the tensors of the model as loaded with
/// `ms.engine_batch()`.
fn checked(
    ms: &ModelSettings,
    limits: &FileLimits,
    sha256: String,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<CheckedModel, Problem> {
    let (inputs, outputs) = message_specs(ms, inputs, outputs)?;
    let (labels, top_k) = check_facts(ms, limits, &inputs, &outputs)?;
    let intake =
        intake::plan(ms, &inputs).map_err(|(field, message)| problem(ms, &field, message))?;
    Ok(CheckedModel {
        settings: ms.clone(),
        sha256,
        labels,
        top_k,
        inputs,
        outputs,
        intake: Arc::new(intake),
    })
}

/// The tensors as one message sees them, from the tensors of a model
/// loaded with `ms.engine_batch()`. Without micro-batching they are the
/// model's own. With `max_batch` > 1 every input must have a dynamic (-1)
/// batch dimension and every output must come out with `max_batch` rows;
/// a message then fills, and a result reports, one row (batch dimension 1).
pub fn message_specs(
    ms: &ModelSettings,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), Problem> {
    let n = ms.max_batch;
    if n <= 1 {
        return Ok((inputs.to_vec(), outputs.to_vec()));
    }
    let problem = |message: String| problem(ms, "max_batch", message);
    let model = ms.path.display();
    for spec in inputs {
        if spec.shape_signature.first() != Some(&-1) {
            return Err(problem(format!(
                "is {n}, but input '{}' of model \"{}\" ({model}) has no dynamic batch dimension (shape signature {:?}); micro-batching needs a model whose inputs have -1 at axis 0. Remove max_batch (or set it to 1)",
                spec.name, ms.name, spec.shape_signature
            )));
        }
    }
    for spec in outputs {
        if spec.shape.first() != Some(&n) {
            return Err(problem(format!(
                "is {n}, but output '{}' of model \"{}\" ({model}) does not follow the batch dimension (shape {} at batch {n}, shape signature {:?}); micro-batching needs every output batched along axis 0",
                spec.name,
                ms.name,
                spec.shape_string(),
                spec.shape_signature
            )));
        }
    }
    let row = |spec: &TensorSpec| {
        let mut one = spec.clone();
        if let Some(rows) = one.shape.first_mut() {
            *rows = 1;
        }
        one
    };
    Ok((
        inputs.iter().map(row).collect(),
        outputs.iter().map(row).collect(),
    ))
}

/// The checks of a model's settings against its tensors, shared by the
/// runtime load and the static check: at least one input and output, JSON
/// payloads only for types JSON numbers can fill, labels one per class of
/// the first output, top_k within the classes.
fn check_facts(
    ms: &ModelSettings,
    limits: &FileLimits,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<(Option<Vec<String>>, Option<usize>), Problem> {
    let problem = |field: &str, message: String| problem(ms, field, message);
    if inputs.is_empty() || outputs.is_empty() {
        return Err(problem(
            "path",
            format!(
                "model {} has {} inputs and {} outputs; it needs at least one of each",
                ms.path.display(),
                inputs.len(),
                outputs.len()
            ),
        ));
    }
    if ms.payload == PayloadFormat::Json && ms.image.is_none() {
        if let Some(bad) = inputs.iter().find(|s| !quant::decodable(s.dtype)) {
            return Err(problem(
                "payload",
                format!(
                    "input '{}' is {}, which JSON numbers cannot fill; use payload = \"raw\"",
                    bad.name, bad.dtype
                ),
            ));
        }
    }
    if let Some(bad) = outputs.iter().find(|s| !quant::decodable(s.dtype)) {
        // Read as numbers it would give null in every result.
        return Err(problem(
            "path",
            format!(
                "output '{}' of {} is {}, which the daemon cannot read as numbers (it reads float32, int8, uint8, int16, int32, int64 and bool outputs)",
                bad.name,
                ms.path.display(),
                bad.dtype
            ),
        ));
    }
    let classes = outputs[0].element_count();
    let labels = match &ms.labels {
        None => None,
        Some(path) => {
            let labels =
                read_labels(path, limits.max_labels_bytes).map_err(|e| problem("labels", e))?;
            if labels.len() != classes {
                return Err(problem(
                    "labels",
                    format!(
                        "{} has {} labels, but output '{}' ({}) has {classes} classes",
                        path.display(),
                        labels.len(),
                        outputs[0].name,
                        outputs[0].shape_string()
                    ),
                ));
            }
            Some(labels)
        }
    };
    let top_k = match (ms.top_k, &labels) {
        (Some(k), _) if k > classes => {
            return Err(problem(
                "top_k",
                format!(
                    "is {k}, but output '{}' has only {classes} classes",
                    outputs[0].name
                ),
            ))
        }
        (Some(k), _) => Some(k),
        (None, Some(_)) => Some(classes.min(5)),
        (None, None) => None,
    };
    Ok((labels, top_k))
}

/// One label per line; a trailing empty line is not a label. Read as model
/// files are: a regular file of at most `max_bytes`
/// (`limits.max_labels_bytes`).
fn read_labels(path: &Path, max_bytes: u64) -> Result<Vec<String>, String> {
    let bytes = config::read_file(path, LABELS_FILE, max_bytes).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "cannot read labels file {}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    if labels.is_empty() {
        return Err(format!("labels file {} is empty", path.display()));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runtime::DType;

    fn int8(shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: "input".into(),
            shape: shape.to_vec(),
            dtype: DType::I8,
            quantization: None,
            shape_signature: shape.iter().map(|&d| d as i64).collect(),
        }
    }

    /// The budget of a tensors-intake model with one int8 input.
    fn budget(payload: PayloadFormat, shape: &[usize], configured: Option<usize>) -> usize {
        let ctx = ModelContext::for_tests("m", "in/m");
        queue_budget(configured, payload, &[int8(shape)], &ctx.intake)
    }

    #[test]
    fn an_output_that_cannot_be_read_as_numbers_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("c.toml");
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/har_accel_int8.tflite");
        let text = format!(
            "[[models]]\nname = \"m\"\npath = \"{}\"\ninput_topic = \"in/m\"\n",
            model.display()
        );
        std::fs::write(&config, text).expect("config");
        let settings = crate::config::load(&config).expect("a valid config");
        let mut scores = int8(&[1, 6]);
        scores.name = "scores".into();
        scores.dtype = DType::F16;
        let e = check_facts(
            &settings.models[0],
            &FileLimits::default(),
            &[int8(&[1, 128, 3])],
            &[scores],
        )
        .expect_err("a float16 output is refused");
        assert_eq!(e.key, "models[0].path");
        assert!(
            e.message.starts_with("output 'scores' of ")
                && e.message
                    .contains("is float16, which the daemon cannot read as numbers"),
            "{e}"
        );
    }

    #[test]
    fn the_default_queue_budget_follows_the_input() {
        // A sensor window as JSON: 384 numbers, about 3 KiB a message, so
        // about 500 of them.
        let ctx = ModelContext::for_tests("m", "in/m");
        let har = [int8(&[1, 128, 3])];
        assert_eq!(
            typical_message_bytes(PayloadFormat::Json, &har, &ctx.intake),
            384 * 8 + 64
        );
        assert_eq!(
            budget(PayloadFormat::Json, &[1, 128, 3], None),
            (384 * 8 + 64) * 512
        );
        // An image-sized tensor: the ceiling, a score of raw messages.
        let image = [int8(&[1, 224, 224, 3])];
        assert_eq!(
            typical_message_bytes(PayloadFormat::Raw, &image, &ctx.intake),
            224 * 224 * 3
        );
        assert_eq!(
            budget(PayloadFormat::Raw, &[1, 224, 224, 3], None),
            QUEUE_BUDGET_MAX
        );
        // The same tensor from images: 16 decoded frames' worth, whatever
        // the files weigh.
        let plan = crate::codec::image::ImagePlan::new(
            &crate::config::ImageSettings::default(),
            &image[0],
        )
        .map(Arc::new);
        let Ok(plan) = plan else {
            panic!("a 224x224x3 int8 input makes an image plan")
        };
        let images = Intake {
            kind: IntakeKind::Image {
                plan,
                payload: PayloadFormat::Image,
            },
            normalize: None,
            float_input: None,
        };
        assert_eq!(
            queue_budget(None, PayloadFormat::Image, &image, &images),
            224 * 224 * 3 * QUEUE_BUDGET_FRAMES
        );
        // Tiny messages: the floor.
        assert_eq!(budget(PayloadFormat::Raw, &[1, 4], None), QUEUE_BUDGET_MIN);
        // What the config says wins, whatever the input.
        assert_eq!(
            budget(PayloadFormat::Raw, &[1, 224, 224, 3], Some(1 << 30)),
            1 << 30
        );
        assert_eq!(budget(PayloadFormat::Raw, &[1, 4], Some(2048)), 2048);
    }
}
