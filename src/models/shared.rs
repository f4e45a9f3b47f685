//! One engine for the models that serve the same file with the same
//! options: one model on several topics or payload formats (the
//! benchmark's MobileNetV2 as raw tensors, JSON and JPEG), or a reload that
//! changes a model's topics. The file's bytes were shared already
//! (`shared_bytes`); an engine adds the runtime's packed weights and its
//! activation arena, 5.1 MB of RSS for each further MobileNetV2 int8 entry
//! on XNNPACK (measured: 14.7 MB after ready with a small model, 21.3, 26.2
//! and 31.4 MB with one, two and three MobileNetV2 entries).
//!
//! Each model keeps its own queue and workers; their invokes on a shared
//! engine take turns under its lock. A [`SharedEngine`] handle has input
//! and output buffers of its own, so a worker decodes its payload (a JPEG,
//! 150,528 JSON numbers) and encodes its result outside the lock, which
//! is held for the copy in, the invoke and the copy out only: the copies
//! are 150 KB in and 1 KB out for MobileNetV2, against a 2.3 ms invoke.
//!
//! Worker `i` of every such model shares engine `i`, so the engines number
//! the largest `workers` among them, not the sum. A fixed pairing rather
//! than any free engine: a worker never waits for a model's other workers,
//! and what each engine serves stays predictable. A model that must invoke
//! on its own (two busy cameras on a 4-core board) sets `share_engine =
//! false`. Only models on the CPU alone share: an accelerator chain moves
//! each of its engines between accelerators on its own and reports per
//! model (`accel`), and a delegate instance belongs to one interpreter.
//!
//! The time a worker waits for the lock counts in its `invoke` stage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use model_runtime::{Delegation, Engine, RuntimeError, TensorSpec};

use crate::config::WorkerPriority;

/// What makes two engines interchangeable: the same file, compiled the
/// same way, for the same worker index, by models of the same
/// `worker_priority`: a normal model's invoke waiting for the lock held by
/// a background one would wait for whenever the cores are free. Two `auto`
/// models share: they run the same invokes, so their workers move to the
/// background alike (`worker::sched`), apart from what decoding adds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EngineKey {
    pub sha256: String,
    pub threads: u32,
    /// The batch the engine is compiled at (`LoadOptions::dynamic_batch`).
    pub batch: u32,
    pub priority: WorkerPriority,
    pub worker: usize,
}

struct Held {
    engine: Mutex<Box<dyn Engine>>,
    /// The models holding a handle on it, with how many handles each.
    holders: Mutex<BTreeMap<String, usize>>,
}

impl Held {
    /// Adds a handle of `model`; returns the models that held it before.
    fn join(&self, model: &str) -> Vec<String> {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        let before = holders.keys().cloned().collect();
        *holders.entry(model.to_string()).or_insert(0) += 1;
        before
    }

    fn leave(&self, model: &str) {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = holders.get_mut(model) {
            *n -= 1;
            if *n == 0 {
                holders.remove(model);
            }
        }
    }
}

/// The engines in use, so a model finds the one it can share; an entry
/// goes when the last model holding it does (a retired model's workers
/// hold theirs until they have answered what they took) and no load of
/// it is under way.
static ENGINES: Mutex<BTreeMap<EngineKey, Arc<Slot>>> = Mutex::new(BTreeMap::new());

/// One key's place in the registry.
#[derive(Default)]
struct Slot {
    /// Held for a load of this key, so two threads loading the same file
    /// at once (a reload and an update) do not both compile it and throw
    /// one engine away after its model's chain had counted it. Only this
    /// key's loaders wait on it: the registry's lock is not held during a
    /// load, so health (on the event loop) never waits for a compile,
    /// however long a starved `background` load takes.
    loading: Mutex<()>,
    /// The engine, once loaded and while a model holds it.
    engine: Mutex<Weak<Held>>,
}

impl Slot {
    fn held(&self) -> Option<Arc<Held>> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
    }
}

/// The engine for `key`, as `model` holds it: one in use, or a new one
/// from `load`. Returns the handle and, when the engine was in use, the
/// models that held it (the model itself among them when its previous
/// version, which a reload replaces, still does).
pub fn engine<E>(
    key: EngineKey,
    model: &str,
    load: impl FnOnce() -> Result<Box<dyn Engine>, E>,
) -> Result<(SharedEngine, Option<Vec<String>>), E> {
    let slot = {
        let mut slots = registry();
        // A slot someone else holds an `Arc` of is being loaded or joined.
        slots.retain(|_, s| Arc::strong_count(s) > 1 || s.held().is_some());
        Arc::clone(slots.entry(key).or_default())
    };
    let _loading = slot.loading.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(held) = slot.held() {
        let before = held.join(model);
        return Ok((SharedEngine::new(held, model), Some(before)));
    }
    let held = Arc::new(Held {
        engine: Mutex::new(load()?),
        holders: Mutex::new(BTreeMap::new()),
    });
    // Joined before it is published, so health never sees it unheld.
    held.join(model);
    *slot.engine.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&held);
    Ok((SharedEngine::new(held, model), None))
}

/// The other models holding an engine `model` holds, now: what health
/// reports, so an operator sees why two models' invokes take turns. Read
/// from the engines themselves, so a model removed by a reload drops out
/// once its workers have let go of their engines. Never waits for a load.
pub fn sharing(model: &str) -> BTreeSet<String> {
    let slots: Vec<Arc<Slot>> = registry().values().cloned().collect();
    let mut others = BTreeSet::new();
    for held in slots.iter().filter_map(|s| s.held()) {
        let holders = held.holders.lock().unwrap_or_else(|p| p.into_inner());
        if holders.contains_key(model) {
            others.extend(holders.keys().filter(|h| *h != model).cloned());
        }
    }
    others
}

fn registry() -> MutexGuard<'static, BTreeMap<EngineKey, Arc<Slot>>> {
    // Nothing runs under this lock that can panic halfway: lookups and
    // inserts of slots only.
    ENGINES.lock().unwrap_or_else(|p| p.into_inner())
}

/// One model's worker's handle on a shared engine. It is an [`Engine`]
/// like any other to the worker.
pub struct SharedEngine {
    held: Arc<Held>,
    model: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    input_buffers: Vec<Vec<u8>>,
    output_buffers: Vec<Vec<u8>>,
    accelerator: String,
    accelerator_name: String,
    delegation: Delegation,
}

impl SharedEngine {
    fn new(held: Arc<Held>, model: &str) -> SharedEngine {
        let (inputs, outputs, input_buffers, accelerator, accelerator_name, delegation) = {
            let mut e = lock(&held);
            (
                e.inputs().to_vec(),
                e.outputs().to_vec(),
                e.input_buffers_mut().to_vec(),
                e.accelerator(),
                e.accelerator_name().to_string(),
                e.delegation(),
            )
        };
        let output_buffers = outputs.iter().map(|o| vec![0; o.byte_len()]).collect();
        SharedEngine {
            held,
            model: model.to_string(),
            inputs,
            outputs,
            input_buffers,
            output_buffers,
            accelerator,
            accelerator_name,
            delegation,
        }
    }
}

impl Drop for SharedEngine {
    fn drop(&mut self) {
        self.held.leave(&self.model);
    }
}

fn lock(held: &Held) -> MutexGuard<'_, Box<dyn Engine>> {
    // A worker that panicked mid-invoke (the worker catches it and answers
    // with an error) leaves an engine whose inputs every invoke rewrites
    // whole first, so it is as usable as before.
    held.engine.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine for SharedEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.input_buffers
    }

    fn invoke(&mut self) -> Result<(), RuntimeError> {
        let mut engine = lock(&self.held);
        for (dst, src) in engine
            .input_buffers_mut()
            .iter_mut()
            .zip(&self.input_buffers)
        {
            dst.copy_from_slice(src);
        }
        engine.invoke()?;
        for (i, out) in self.output_buffers.iter_mut().enumerate() {
            out.clear();
            out.extend_from_slice(engine.output(i));
        }
        Ok(())
    }

    fn output(&self, index: usize) -> &[u8] {
        &self.output_buffers[index]
    }

    fn accelerator(&self) -> String {
        self.accelerator.clone()
    }

    fn accelerator_name(&self) -> &str {
        &self.accelerator_name
    }

    fn delegation(&self) -> Delegation {
        self.delegation
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use model_runtime::DType;

    use super::*;

    /// Doubles each input byte into the output, slowly enough that two
    /// workers' invokes overlap if nothing keeps them apart; counts the
    /// invokes running at once.
    struct Doubler {
        specs: Vec<TensorSpec>,
        input: Vec<Vec<u8>>,
        output: Vec<u8>,
        running: Arc<AtomicUsize>,
        overlapped: Arc<AtomicUsize>,
    }

    impl Engine for Doubler {
        fn inputs(&self) -> &[TensorSpec] {
            &self.specs
        }
        fn outputs(&self) -> &[TensorSpec] {
            &self.specs
        }
        fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
            &mut self.input
        }
        fn invoke(&mut self) -> Result<(), RuntimeError> {
            if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
            self.output.clear();
            for &b in &self.input[0] {
                self.output.push(b.wrapping_mul(2));
                std::thread::yield_now();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        fn output(&self, _: usize) -> &[u8] {
            &self.output
        }
        fn accelerator(&self) -> String {
            "doubler".into()
        }
        fn accelerator_name(&self) -> &str {
            "cpu"
        }
        fn delegation(&self) -> Delegation {
            Delegation::Cpu
        }
    }

    fn doubler(overlapped: &Arc<AtomicUsize>) -> Box<dyn Engine> {
        let spec = TensorSpec {
            name: "x".into(),
            shape: vec![1, 64],
            dtype: DType::U8,
            quantization: None,
            shape_signature: vec![1, 64],
        };
        Box::new(Doubler {
            specs: vec![spec],
            input: vec![vec![0; 64]],
            output: vec![0; 64],
            running: Arc::new(AtomicUsize::new(0)),
            overlapped: Arc::clone(overlapped),
        })
    }

    fn key(sha256: &str, threads: u32, worker: usize) -> EngineKey {
        EngineKey {
            sha256: sha256.into(),
            threads,
            batch: 1,
            priority: WorkerPriority::Normal,
            worker,
        }
    }

    #[test]
    fn models_with_the_same_file_and_options_load_one_engine() {
        let overlapped = Arc::new(AtomicUsize::new(0));
        let loads = AtomicUsize::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(doubler(&overlapped))
        };
        let (a, by) = engine(key("same-file", 1, 0), "a", load).unwrap();
        assert_eq!(by, None);
        let (b, by) = engine(key("same-file", 1, 0), "b", load).unwrap();
        assert_eq!(by, Some(vec!["a".to_string()]));
        // A reload's new version of b, while the old one still holds it.
        let (b2, by) = engine(key("same-file", 1, 0), "b", load).unwrap();
        assert_eq!(by, Some(vec!["a".to_string(), "b".to_string()]));
        drop((a, b));
        let (c, by) = engine(key("same-file", 1, 0), "c", load).unwrap();
        assert_eq!(by, Some(vec!["b".to_string()]));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Other threads, another worker index, another file or another
        // worker_priority: engines of their own.
        let background = EngineKey {
            priority: WorkerPriority::Background,
            ..key("same-file", 1, 0)
        };
        for k in [
            key("same-file", 2, 0),
            key("same-file", 1, 1),
            key("other-file", 1, 0),
            background,
        ] {
            let (_, by) = engine(k, "c", load).unwrap();
            assert_eq!(by, None);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 5);
        // Once no model holds it, the engine is gone and the next model
        // loads its own.
        drop((b2, c));
        let (_, by) = engine(key("same-file", 1, 0), "d", load).unwrap();
        assert_eq!(by, None);
        assert_eq!(loads.load(Ordering::SeqCst), 6);
        // A failed load is the caller's error, and nothing is kept.
        assert_eq!(
            engine(key("broken-file", 1, 0), "e", || Err::<Box<dyn Engine>, _>(
                "no"
            ))
            .err(),
            Some("no")
        );
        let (_, by) = engine(key("broken-file", 1, 0), "f", load).unwrap();
        assert_eq!(by, None);
    }

    #[test]
    fn sharing_names_the_other_models_holding_an_engine_now() {
        let overlapped = Arc::new(AtomicUsize::new(0));
        let load = || Ok::<_, ()>(doubler(&overlapped));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let (s1, _) = engine(key("sharing-file", 1, 0), "s1", load).unwrap();
        assert_eq!(sharing("s1"), names(&[]));
        let (s2, _) = engine(key("sharing-file", 1, 0), "s2", load).unwrap();
        // s3 shares s2's second worker's engine only.
        let (s2w1, _) = engine(key("sharing-file", 1, 1), "s2", load).unwrap();
        let (s3, _) = engine(key("sharing-file", 1, 1), "s3", load).unwrap();
        // A model on engines of its own.
        let (alone, _) = engine(key("sharing-file", 4, 0), "s4", load).unwrap();
        assert_eq!(sharing("s1"), names(&["s2"]));
        assert_eq!(sharing("s2"), names(&["s1", "s3"]));
        assert_eq!(sharing("s3"), names(&["s2"]));
        assert_eq!(sharing("s4"), names(&[]));
        // A model that let go (removed by a reload) drops out.
        drop((s2, s2w1));
        assert_eq!(sharing("s1"), names(&[]));
        assert_eq!(sharing("s3"), names(&[]));
        drop((s1, s3, alone));
    }

    /// A load in progress (a starved background model's compile) holds
    /// up only the loads of its own key: health's query and the loads of
    /// other keys go on, and a second loader of the same key waits and
    /// then joins the engine instead of compiling it again.
    #[test]
    fn a_load_in_progress_blocks_only_loads_of_its_own_key() {
        use std::sync::mpsc;
        use std::time::Duration;
        let overlapped = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let loads = Arc::new(AtomicUsize::new(0));
        let slow = {
            let (overlapped, loads) = (Arc::clone(&overlapped), Arc::clone(&loads));
            std::thread::spawn(move || {
                let (h, by) = engine(key("slow-file", 1, 0), "slow", || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok::<_, ()>(doubler(&overlapped))
                })
                .unwrap();
                assert_eq!(by, None);
                h
            })
        };
        started_rx.recv().unwrap();
        // The same key: waits for the load in progress, then joins it.
        let joiner = {
            let (overlapped, loads) = (Arc::clone(&overlapped), Arc::clone(&loads));
            std::thread::spawn(move || {
                engine(key("slow-file", 1, 0), "joiner", || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(doubler(&overlapped))
                })
                .unwrap()
            })
        };
        // Neither health's query nor another file's load waits for it.
        let (done_tx, done_rx) = mpsc::channel();
        let other = {
            let overlapped = Arc::clone(&overlapped);
            std::thread::spawn(move || {
                let shared = sharing("slow");
                let (h, _) = engine(key("quick-file", 1, 0), "quick", || {
                    Ok::<_, ()>(doubler(&overlapped))
                })
                .unwrap();
                done_tx.send(shared).unwrap();
                h
            })
        };
        let shared = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sharing() or another key's load waited for a load in progress");
        assert!(shared.is_empty());
        assert!(!joiner.is_finished());
        release_tx.send(()).unwrap();
        let slow = slow.join().unwrap();
        let (joined, by) = joiner.join().unwrap();
        assert_eq!(by, Some(vec!["slow".to_string()]));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(sharing("joiner"), BTreeSet::from(["slow".to_string()]));
        drop((slow, joined, other.join().unwrap()));
    }

    #[test]
    fn workers_on_one_engine_take_turns_and_each_reads_its_own_outputs() {
        let overlapped = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let (mut handle, _) = engine(key("turns", 1, 0), "m", || {
                    Ok::<_, ()>(doubler(&overlapped))
                })
                .unwrap();
                std::thread::spawn(move || {
                    for round in 0..200u8 {
                        let fill = t.wrapping_mul(31).wrapping_add(round);
                        handle.input_buffers_mut()[0].fill(fill);
                        handle.invoke().unwrap();
                        let want = fill.wrapping_mul(2);
                        assert!(
                            handle.output(0).iter().all(|&b| b == want),
                            "worker {t} round {round}: another worker's output"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlapped.load(Ordering::SeqCst), 0);
    }
}
