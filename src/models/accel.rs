//! The accelerators of one model: which one serves each of its engines,
//! the move to the next one in the model's list when one fails (at load,
//! or at invoke: the message in hand is retried once on the new one), and
//! the return to a better one, tried again every `retry_secs` on a thread
//! of its own so no worker waits for it.
//!
//! Every engine of a model (one per worker, two with micro-batching)
//! switches on its own: each owns its accelerator instance (a delegate is
//! created per interpreter), and an unplugged device fails each of them at
//! its next invoke anyway. What they share is [`Chain`]: the choices, the
//! model bytes each one runs, and the status health reports. Other models
//! have chains of their own and are never touched.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model_runtime::{
    Accelerator, Delegation, Engine, LoadOptions, Runtime, RuntimeError, TensorSpec,
};
use serde::Serialize;

/// One entry of a model's `accelerators`, with the file it runs.
pub struct Choice {
    pub accelerator: Accelerator,
    /// The model file, for messages (`path`, or `cpu_path` for the cpu).
    pub origin: String,
    /// The file's bytes as read and checked at load: a switch loads
    /// exactly these, never a file that has changed on disk since. None
    /// once the model's engines are loaded if nothing can load it again
    /// (a list of one): every engine holds its own copy already.
    bytes: Mutex<Option<Arc<Vec<u8>>>>,
}

impl Choice {
    pub fn new(accelerator: Accelerator, origin: String, bytes: Arc<Vec<u8>>) -> Choice {
        Choice {
            accelerator,
            origin,
            bytes: Mutex::new(Some(bytes)),
        }
    }

    fn name(&self) -> &str {
        self.accelerator.name()
    }
}

/// What every engine of one model shares.
pub struct Chain {
    model: String,
    /// Most preferred first; never empty.
    choices: Vec<Choice>,
    runtime: Arc<Runtime>,
    retry: Duration,
    switches: AtomicU64,
    status: Mutex<Status>,
}

/// Changed only when an engine starts, switches or fails to: rare, so one
/// lock, never taken per message.
#[derive(Default)]
struct Status {
    /// Per engine: the choice it runs on, what that took of the graph, and
    /// when it tries a better one again.
    engines: Vec<EngineState>,
    /// Per choice: why it was last skipped or left; None once it serves.
    reasons: Vec<Option<String>>,
}

#[derive(Clone, Copy)]
struct EngineState {
    on: usize,
    delegation: Delegation,
    retry_at: Option<Instant>,
}

/// The `acceleration` object of a model in the health record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccelReport {
    /// The accelerator most of the model's engines run on.
    pub serving: String,
    /// The first in the model's list.
    pub preferred: String,
    /// How many engines run on each accelerator in use (usually one entry).
    pub engines: std::collections::BTreeMap<String, usize>,
    /// Of the serving accelerator: "cpu", "full", "partial" or "none".
    pub delegation: &'static str,
    /// With "partial", when the runtime can count them.
    pub delegated_nodes: Option<usize>,
    pub total_nodes: Option<usize>,
    /// Why a more preferred accelerator is not serving (None when the
    /// preferred one is).
    pub fallback_reason: Option<String>,
    /// Moves to a less preferred accelerator at run time, since start.
    pub switches: u64,
    /// When the preferred accelerator is tried again (None when it serves).
    pub retry_in_secs: Option<f64>,
}

/// The message a load that found no working accelerator fails with.
pub struct NoAccelerator {
    /// (accelerator, why) for each one tried.
    pub reasons: Vec<(String, String)>,
}

impl std::fmt::Display for NoAccelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reasons.as_slice() {
            // The model's only accelerator: its failure is the model's.
            [(_, why)] => f.write_str(why),
            many => {
                let each: Vec<String> = many.iter().map(|(a, why)| format!("{a}: {why}")).collect();
                write!(
                    f,
                    "no accelerator in its list could run it: {}",
                    each.join("; ")
                )
            }
        }
    }
}

impl Chain {
    pub fn new(model: &str, choices: Vec<Choice>, runtime: Arc<Runtime>, retry: Duration) -> Chain {
        let reasons = vec![None; choices.len()];
        Chain {
            model: model.to_string(),
            choices,
            runtime,
            retry,
            switches: AtomicU64::new(0),
            status: Mutex::new(Status {
                engines: Vec::new(),
                reasons,
            }),
        }
    }

    /// Once every engine is loaded: a model with one accelerator never
    /// loads again (nothing to fall back to, nothing to return to), so its
    /// copy of the file is memory for nothing.
    pub fn loaded(&self) {
        if self.choices.len() == 1 {
            for c in &self.choices {
                *c.bytes.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }

    /// Counts an engine this model shares with another model on the CPU
    /// (`shared`): loaded, warmed and recorded by that model's chain.
    pub fn adopt(&self, delegation: Delegation) {
        let mut st = self.status();
        st.engines.push(EngineState {
            on: 0,
            delegation,
            retry_at: None,
        });
        st.reasons[0] = None;
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding this lock left plain data behind; the
        // numbers are still the best there are.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new engine on the first choice at or after `from` that loads,
    /// compiles and passes a warm-up inference. `expected`: the tensors
    /// the engine must have (those of the model's other engines), so a
    /// `cpu_path` model that differs is refused rather than served.
    pub fn start(
        self: &Arc<Chain>,
        from: usize,
        options: &LoadOptions,
        expected: Option<&(Vec<TensorSpec>, Vec<TensorSpec>)>,
    ) -> Result<AcceleratedEngine, NoAccelerator> {
        let (on, engine) = self.load_first(from..self.choices.len(), options, expected)?;
        let expected = (engine.inputs().to_vec(), engine.outputs().to_vec());
        let retry_at = (on > 0).then(|| Instant::now() + self.retry);
        let slot = {
            let mut st = self.status();
            st.engines.push(EngineState {
                on,
                delegation: engine.delegation(),
                retry_at,
            });
            st.reasons[on] = None;
            st.engines.len() - 1
        };
        Ok(AcceleratedEngine {
            chain: Arc::clone(self),
            slot,
            on,
            engine,
            options: options.clone(),
            expected,
            retry_at,
            probe: None,
            next_fallback: None,
        })
    }

    /// Tries the choices of `range` in order; records why each that failed
    /// did, and logs it when the reason is new.
    fn load_first(
        &self,
        range: std::ops::Range<usize>,
        options: &LoadOptions,
        expected: Option<&(Vec<TensorSpec>, Vec<TensorSpec>)>,
    ) -> Result<(usize, Box<dyn Engine>), NoAccelerator> {
        let mut reasons = Vec::new();
        for i in range {
            match self.load_on(i, options, expected) {
                Ok(engine) => return Ok((i, engine)),
                Err(why) => {
                    self.note_failure(i, &why);
                    reasons.push((self.choices[i].name().to_string(), why));
                }
            }
        }
        Err(NoAccelerator { reasons })
    }

    /// One engine on choice `i`, warmed.
    fn load_on(
        &self,
        i: usize,
        options: &LoadOptions,
        expected: Option<&(Vec<TensorSpec>, Vec<TensorSpec>)>,
    ) -> Result<Box<dyn Engine>, String> {
        let choice = &self.choices[i];
        let options = LoadOptions {
            accelerator: choice.accelerator.clone(),
            ..options.clone()
        };
        let bytes = choice
            .bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("the model's bytes were released (a bug: nothing loads a model of one accelerator again)")?;
        let mut engine =
            self.runtime
                .load(&choice.origin, bytes, &options)
                .map_err(|e| match e {
                    // Already says which accelerator.
                    RuntimeError::Accelerator { reason, .. } => reason,
                    other => other.to_string(),
                })?;
        if let Some((inputs, outputs)) = expected {
            if engine.inputs() != inputs.as_slice() || engine.outputs() != outputs.as_slice() {
                return Err(format!(
                    "{} has other tensors than the model already served ({} in, {} out, against {} in, {} out); a cpu_path model must have the same inputs and outputs",
                    choice.origin,
                    describe(engine.inputs()),
                    describe(engine.outputs()),
                    describe(inputs),
                    describe(outputs)
                ));
            }
        }
        engine
            .invoke()
            .map_err(|e| format!("the warm-up inference failed: {e}"))?;
        Ok(engine)
    }

    /// Records why choice `i` did not serve; logs it only when the reason
    /// is new, so N engines failing alike, or a retry failing the same way
    /// every minute, make one line, not a flood.
    fn note_failure(&self, i: usize, why: &str) {
        let mut st = self.status();
        // With nothing to fall back to, the caller reports the failure.
        if st.reasons[i].as_deref() != Some(why) && i + 1 < self.choices.len() {
            log::warn!(
                "model {}: accelerator {} ({}) cannot serve: {why}",
                self.model,
                self.choices[i].name(),
                self.choices[i].origin
            );
            st.reasons[i] = Some(why.to_string());
        }
    }

    /// What health reports about this model's accelerators.
    pub fn report(&self) -> AccelReport {
        let st = self.status();
        let mut engines: Vec<(usize, usize)> = Vec::new();
        for e in &st.engines {
            match engines.iter_mut().find(|(on, _)| *on == e.on) {
                Some((_, n)) => *n += 1,
                None => engines.push((e.on, 1)),
            }
        }
        engines.sort();
        // The most engines; on a tie the more preferred choice.
        let serving = engines
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map_or(0, |(on, _)| *on);
        let delegation = st
            .engines
            .iter()
            .find(|e| e.on == serving)
            .map_or(Delegation::Cpu, |e| e.delegation);
        let (name, delegated_nodes, total_nodes) = delegation_fields(delegation);
        let best = engines.first().map_or(0, |(on, _)| *on);
        let fallback_reason = (best > 0).then(|| {
            (0..best)
                .filter_map(|i| {
                    st.reasons[i]
                        .as_ref()
                        .map(|r| format!("{}: {r}", self.choices[i].name()))
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let now = Instant::now();
        let retry_in_secs = st
            .engines
            .iter()
            .filter_map(|e| e.retry_at)
            .min()
            .map(|at| at.saturating_duration_since(now).as_secs_f64());
        AccelReport {
            serving: self.choices[serving].name().to_string(),
            preferred: self.choices[0].name().to_string(),
            engines: engines
                .iter()
                .map(|(on, n)| (self.choices[*on].name().to_string(), *n))
                .collect(),
            delegation: name,
            delegated_nodes,
            total_nodes,
            fallback_reason,
            switches: self.switches.load(Relaxed),
            retry_in_secs,
        }
    }

    fn set_engine(&self, slot: usize, state: EngineState) {
        let mut st = self.status();
        st.reasons[state.on] = None;
        if let Some(e) = st.engines.get_mut(slot) {
            *e = state;
        }
    }
}

fn delegation_fields(d: Delegation) -> (&'static str, Option<usize>, Option<usize>) {
    match d {
        Delegation::Cpu => ("cpu", None, None),
        Delegation::Full => ("full", None, None),
        Delegation::Partial { delegated, total } => ("partial", delegated, total),
        Delegation::None => ("none", None, None),
    }
}

/// `accel [1,128,3] int8`, for the message about differing tensors.
fn describe(specs: &[TensorSpec]) -> String {
    let each: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {} {}", s.name, s.shape_string(), s.dtype))
        .collect();
    format!("[{}]", each.join(", "))
}

/// A retry of better choices, loading on a thread of its own.
type Probe = Receiver<Result<(usize, Box<dyn Engine>), NoAccelerator>>;

/// An engine that moves between its model's accelerators. Workers use it
/// like any engine.
pub struct AcceleratedEngine {
    chain: Arc<Chain>,
    /// Its entry in the chain's status.
    slot: usize,
    /// The choice `engine` runs on.
    on: usize,
    engine: Box<dyn Engine>,
    /// Threads and batch size; the accelerator is each choice's.
    options: LoadOptions,
    /// The tensors every replacement must have.
    expected: (Vec<TensorSpec>, Vec<TensorSpec>),
    /// When to try the better choices again (only when not on the first).
    retry_at: Option<Instant>,
    probe: Option<Probe>,
    /// No fall back is tried before this: when none loads, each message
    /// would otherwise pay for failed loads.
    next_fallback: Option<Instant>,
}

/// How often a model whose every fallback failed to load tries again.
const FALLBACK_RETRY: Duration = Duration::from_secs(1);

impl AcceleratedEngine {
    /// The index of the choice it runs on.
    pub fn on(&self) -> usize {
        self.on
    }

    fn record(&self) {
        self.chain.set_engine(
            self.slot,
            EngineState {
                on: self.on,
                delegation: self.engine.delegation(),
                retry_at: self.retry_at,
            },
        );
    }

    /// Swaps in a better engine that a probe brought, or starts a probe
    /// when it is time.
    fn check_probe(&mut self) {
        if let Some(rx) = &self.probe {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(Ok((on, mut engine))) => {
                    // The caller has written this message's inputs into
                    // the engine being replaced.
                    for (dst, src) in engine
                        .input_buffers_mut()
                        .iter_mut()
                        .zip(self.engine.input_buffers_mut().iter())
                    {
                        dst.copy_from_slice(src);
                    }
                    log::info!(
                        "model {}: back on accelerator {} (from {})",
                        self.chain.model,
                        self.chain.choices[on].name(),
                        self.chain.choices[self.on].name()
                    );
                    self.engine = engine;
                    self.on = on;
                    self.retry_at = (on > 0).then(|| Instant::now() + self.chain.retry);
                }
                // Failed (each reason already noted) or the thread died.
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                    self.retry_at = Some(Instant::now() + self.chain.retry);
                }
            }
            self.probe = None;
            self.record();
            return;
        }
        let Some(at) = self.retry_at else { return };
        if Instant::now() < at {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let chain = Arc::clone(&self.chain);
        let options = self.options.clone();
        let expected = self.expected.clone();
        let better = 0..self.on;
        let builder = std::thread::Builder::new().name(format!("probe-{}", self.chain.model));
        let spawned = crate::cores::spawn(builder, move || {
            let found = chain.load_first(better, &options, Some(&expected));
            // The worker may be gone (reload, shutdown); then so is
            // the engine.
            let _ = tx.send(found);
        });
        match spawned {
            Ok(_) => self.probe = Some(rx),
            Err(e) => {
                log::warn!(
                    "model {}: cannot start a thread to try accelerator {} again: {e}",
                    self.chain.model,
                    self.chain.choices[0].name()
                );
                self.retry_at = Some(Instant::now() + self.chain.retry);
            }
        }
    }

    /// The current engine failed to run the message in its input buffers:
    /// move to the next choice that works and run the message there.
    fn fall_back(&mut self, failure: RuntimeError) -> Result<(), RuntimeError> {
        let from = self.on;
        let now = Instant::now();
        if from + 1 >= self.chain.choices.len() || self.next_fallback.is_some_and(|t| now < t) {
            return Err(failure);
        }
        let why = format!("invoke failed: {failure}");
        self.chain.note_failure(from, &why);
        let inputs: Vec<Vec<u8>> = self.engine.input_buffers_mut().to_vec();
        let (on, mut engine) = match self.chain.load_first(
            from + 1..self.chain.choices.len(),
            &self.options,
            Some(&self.expected),
        ) {
            Ok(found) => found,
            Err(none) => {
                self.next_fallback = Some(now + FALLBACK_RETRY);
                return Err(RuntimeError::Accelerator {
                    accelerator: self.chain.choices[from].name().to_string(),
                    reason: format!("{why}; and {none}"),
                });
            }
        };
        for (dst, src) in engine.input_buffers_mut().iter_mut().zip(&inputs) {
            dst.copy_from_slice(src);
        }
        self.chain.switches.fetch_add(1, Relaxed);
        log::warn!(
            "model {}: moved from accelerator {} to {} ({why}); {} is tried again in {} s",
            self.chain.model,
            self.chain.choices[from].name(),
            self.chain.choices[on].name(),
            self.chain.choices[0].name(),
            self.chain.retry.as_secs_f64()
        );
        self.engine = engine;
        self.on = on;
        self.retry_at = Some(Instant::now() + self.chain.retry);
        self.probe = None;
        self.next_fallback = None;
        self.record();
        // The message in hand, once, on the new accelerator.
        self.engine.invoke()
    }
}

impl Engine for AcceleratedEngine {
    fn inputs(&self) -> &[TensorSpec] {
        self.engine.inputs()
    }

    fn outputs(&self) -> &[TensorSpec] {
        self.engine.outputs()
    }

    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
        self.engine.input_buffers_mut()
    }

    fn invoke(&mut self) -> Result<(), RuntimeError> {
        if self.on > 0 {
            self.check_probe();
        }
        match self.engine.invoke() {
            Ok(()) => Ok(()),
            Err(e) => self.fall_back(e),
        }
    }

    fn output(&self, index: usize) -> &[u8] {
        self.engine.output(index)
    }

    fn accelerator(&self) -> String {
        self.engine.accelerator()
    }

    fn accelerator_name(&self) -> &str {
        self.chain.choices[self.on].name()
    }

    fn delegation(&self) -> Delegation {
        self.engine.delegation()
    }
}
