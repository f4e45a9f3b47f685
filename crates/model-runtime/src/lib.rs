//! Loads quantized TFLite/LiteRT models through a runtime library that is
//! opened at run time, and runs them on the calling thread.
//!
//! Nothing here knows about MQTT, JSON or async: the daemon hands a model's
//! bytes in, writes input tensors as bytes, calls [`Engine::invoke`] and reads
//! output bytes back. Two back ends sit behind the one [`Engine`] trait:
//!
//! - [`litert`]: the LiteRT `CompiledModel` API of `libLiteRt.so` (the default,
//!   XNNPACK on CPU; LiteRT's own GPU and NPU accelerators on request),
//!   driven through edgefirst-tflite's resolved function table plus the few
//!   symbols that crate does not resolve ([`litert::ext`]).
//! - `classic_abi`: the classic TFLite C API of `libtensorflowlite_c.so`
//!   through its stable ABI, on every target: the only runtime on armv7 (no
//!   LiteRT build exists there, and edgefirst-tflite does not build for
//!   32-bit targets).
//!
//! Both load external delegate plugins (libedgetpu's ABI) through
//! `delegate`; LiteRT registers them as an accelerator (`litert::delegate`).
//!
//! [`flatbuffer`] reads a model's tensor facts straight from the file, with
//! no runtime library at all (`inspect` and `check-config` on a board whose
//! runtime library is not installed yet).

mod classic_abi;
mod delegate;
mod error;
pub mod flatbuffer;
#[cfg(target_pointer_width = "64")]
pub mod litert;
mod locate;
mod tensor;

pub use error::RuntimeError;
pub use flatbuffer::{
    read_custom_ops, read_model_facts, ModelFacts, EDGETPU_CONFIG_HINT, EDGETPU_CUSTOM_OP,
};
pub use locate::{LibraryCandidate, LibrarySearch, ENV_LIBRARY};
pub use tensor::{DType, Quantization, TensorSpec};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model file's bytes, shared by every engine loaded from it: an
/// engine holds them as long as it lives, and a second copy per worker
/// (or per model serving the same file) would be megabytes for nothing.
pub type ModelBytes = Arc<Vec<u8>>;

/// Which C API the loaded runtime library speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFlavor {
    /// `libLiteRt.so`: `LiteRt*` symbols, CompiledModel.
    LiteRt,
    /// `libtensorflowlite_c.so`: `TfLite*` symbols, Interpreter.
    Classic,
}

impl ApiFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFlavor::LiteRt => "litert",
            ApiFlavor::Classic => "tflite-classic",
        }
    }
}

/// Where a model's graph runs. The daemon's config names these `cpu`,
/// `gpu`, `npu`, or the name of a `[delegates.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Accelerator {
    /// XNNPACK (LiteRT) or the interpreter's own CPU kernels (classic).
    #[default]
    Cpu,
    /// LiteRT's GPU accelerator (WebGPU over Vulkan); ops it cannot run
    /// stay on the CPU. `allow_fp16`: let it compute in half precision
    /// (faster on real GPUs, results drift further from the CPU's).
    Gpu { allow_fp16: bool },
    /// LiteRT's NPU dispatch (where the vendor's dispatch library is
    /// present); ops it cannot run stay on the CPU.
    Npu,
    /// An external delegate plugin: the `tflite_plugin_create_delegate`
    /// ABI that libedgetpu and other vendor delegates implement.
    Delegate(DelegateSpec),
}

impl Accelerator {
    /// The name the config uses for it.
    pub fn name(&self) -> &str {
        match self {
            Accelerator::Cpu => "cpu",
            Accelerator::Gpu { .. } => "gpu",
            Accelerator::Npu => "npu",
            Accelerator::Delegate(d) => &d.name,
        }
    }
}

/// An external delegate plugin and the options it is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateSpec {
    /// The config's name for it (`edgetpu`), used in messages.
    pub name: String,
    /// The plugin library: a path, or a bare file name that the dynamic
    /// linker searches for (`libedgetpu.so.1`).
    pub library: PathBuf,
    /// Handed to `tflite_plugin_create_delegate` as keys and values, in
    /// this order.
    pub options: Vec<(String, String)>,
}

/// How much of a model's graph its accelerator took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delegation {
    /// Runs on the CPU: nothing was to be delegated.
    Cpu,
    /// Every node runs on the accelerator.
    Full,
    /// Some nodes stayed on the CPU. The node counts, when the back end
    /// can tell them.
    Partial {
        delegated: Option<usize>,
        total: Option<usize>,
    },
    /// The accelerator took none of the nodes (everything runs on the
    /// CPU kernels, e.g. a delegate that supports none of the model's ops).
    None,
}

/// Per-model knobs the daemon passes when it loads a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Intra-op CPU threads (XNNPACK). 0 and 1 both mean one thread, the
    /// LiteRT default.
    pub cpu_threads: u32,
    /// The batch size used to fix a dynamic (-1) leading dimension (0 is
    /// taken as 1).
    pub dynamic_batch: u32,
    /// Where the graph runs.
    pub accelerator: Accelerator,
}

/// A loaded model, ready to run on the thread that owns it.
///
/// Input and output bytes live in host buffers owned by the engine and keep
/// their addresses between calls, so a worker can write straight into them.
pub trait Engine: Send {
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// One byte buffer per input, each exactly `inputs()[i].byte_len()`
    /// long. Callers write into them and must not change their lengths.
    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>];
    /// Runs the model on the current input bytes.
    fn invoke(&mut self) -> Result<(), RuntimeError>;
    /// The bytes of output `index` from the last successful `invoke`.
    fn output(&self, index: usize) -> &[u8];
    /// What executes the graph, for people: e.g. "cpu/xnnpack (2 threads,
    /// litert)".
    fn accelerator(&self) -> String;
    /// The config's name of the accelerator it runs on (`cpu`, `gpu`,
    /// `npu`, a delegate's name): results carry it.
    fn accelerator_name(&self) -> &str;
    /// How much of the graph the accelerator took.
    fn delegation(&self) -> Delegation;
}

/// One accelerator as the runtime library and this machine offer it, for
/// `edge-infer inspect --accelerators`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// The config's name for it: `cpu`, `gpu`, `npu`.
    pub name: String,
    /// Whether a model can be compiled for it here (for the GPU: a small
    /// test model was compiled and run on it).
    pub available: bool,
    /// What serves it when available, why it cannot when not.
    pub detail: String,
}

/// The opened runtime library. Opened once per process and kept for its
/// whole life: every model borrows its function table, and unloading a
/// runtime library under live models is undefined behaviour.
#[derive(Debug)]
pub struct Runtime {
    path: PathBuf,
    backend: Backend,
}

/// The C API of the opened library, with what its models share.
#[derive(Debug)]
enum Backend {
    /// `libLiteRt.so` (64-bit targets only: no LiteRT build exists for
    /// 32-bit ones, and edgefirst-tflite does not compile there).
    #[cfg(target_pointer_width = "64")]
    LiteRt {
        /// edgefirst-tflite's table, in the leaked library.
        fns: &'static edgefirst_tflite_sys::litert::LiteRtFunctions,
        ext: litert::ext::ExtFunctions,
        /// Created on the first CPU model load.
        env: std::sync::OnceLock<litert::SharedEnvironment>,
        /// Created on the first GPU or NPU model load (or listing): it
        /// registers the accelerator libraries next to the runtime library.
        accel_env: std::sync::OnceLock<litert::SharedEnvironment>,
        /// External delegates' own environments.
        delegates: litert::delegate::DelegateEnvironments,
    },
    /// `libtensorflowlite_c.so`, through its stable ABI on every target.
    Classic(classic_abi::ClassicApi),
}

impl Runtime {
    /// Opens the first candidate of `search` that loads.
    pub fn open(search: &LibrarySearch) -> Result<Runtime, RuntimeError> {
        let mut tried = Vec::new();
        for candidate in search.candidates() {
            match Self::open_path(&candidate.path) {
                Ok(rt) => return Ok(rt),
                Err(RuntimeError::LibraryLoad { reason, .. }) => tried.push((candidate, reason)),
                Err(other) => tried.push((candidate, other.to_string())),
            }
        }
        Err(RuntimeError::LibraryNotFound {
            tried,
            hint: search.hint(),
        })
    }

    /// Opens exactly one library file.
    pub fn open_path(path: &Path) -> Result<Runtime, RuntimeError> {
        // A bare file name is searched on the system linker path by dlopen,
        // so only paths with a directory part must exist.
        if path.components().count() > 1 && !path.exists() {
            return Err(RuntimeError::LibraryLoad {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let backend = Self::open_backend(path).map_err(|reason| RuntimeError::LibraryLoad {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Runtime {
            path: path.to_path_buf(),
            backend,
        })
    }

    /// 32-bit targets: only the classic C API (no LiteRT build exists).
    #[cfg(not(target_pointer_width = "64"))]
    fn open_backend(path: &Path) -> Result<Backend, String> {
        classic_abi::ClassicApi::load(path).map(Backend::Classic)
    }

    /// LiteRT when the library exports it, else the classic C API.
    #[cfg(target_pointer_width = "64")]
    fn open_backend(path: &Path) -> Result<Backend, String> {
        let lib =
            edgefirst_tflite::Library::from_path(path).map_err(|e| delegate::with_sources(&e))?;
        if !lib.has_litert() {
            let missing = lib.litert_missing_symbol().unwrap_or("?");
            // Not needed for the classic API: classic_abi opens the same
            // file through its own handle (dlopen returns the same mapping).
            drop(lib);
            return classic_abi::ClassicApi::load(path)
                .map(Backend::Classic)
                .map_err(|classic| {
                    format!("the LiteRT C API is not exported ({missing} missing), and {classic}")
                });
        }
        // SAFETY: the path was just opened successfully as a LiteRT
        // library; dlopen of the same path returns the same mapping.
        let ext = unsafe { litert::ext::ExtFunctions::load(path) }?;
        // SAFETY: as above.
        let delegates = unsafe { litert::delegate::DelegateEnvironments::load(path) };
        // Leaked on purpose: see the type's doc. One per process.
        let lib: &'static edgefirst_tflite::Library = Box::leak(Box::new(lib));
        let fns = lib
            .litert()
            .ok_or("the LiteRT function table did not resolve")?;
        Ok(Backend::LiteRt {
            fns,
            ext,
            env: std::sync::OnceLock::new(),
            accel_env: std::sync::OnceLock::new(),
            delegates,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn flavor(&self) -> ApiFlavor {
        match self.backend {
            #[cfg(target_pointer_width = "64")]
            Backend::LiteRt { .. } => ApiFlavor::LiteRt,
            Backend::Classic(_) => ApiFlavor::Classic,
        }
    }

    /// Loads, compiles and allocates a model from its `.tflite` bytes.
    /// `origin` names the model in error messages (usually its path).
    /// The engine keeps `bytes` for its whole life (the runtime reads the
    /// model from them, it does not copy them), so engines of one file
    /// share one copy when given the same [`ModelBytes`].
    pub fn load(
        &self,
        origin: &str,
        bytes: impl Into<ModelBytes>,
        options: &LoadOptions,
    ) -> Result<Box<dyn Engine>, RuntimeError> {
        let bytes = bytes.into();
        check_flatbuffer(origin, &bytes)?;
        // Only the Edge TPU delegate runs an Edge TPU model; anything else
        // would fail on the unresolved custom op with a bare status code.
        // A file this reader cannot parse is left to the runtime, whose own
        // error then stands as before.
        if !matches!(options.accelerator, Accelerator::Delegate(_))
            && flatbuffer::read_custom_ops(origin, &bytes)
                .is_ok_and(|ops| ops.iter().any(|op| op == EDGETPU_CUSTOM_OP))
        {
            return Err(flatbuffer::edgetpu_refusal(
                origin,
                options.accelerator.name(),
            ));
        }
        match &self.backend {
            #[cfg(target_pointer_width = "64")]
            Backend::LiteRt {
                fns,
                ext,
                delegates,
                ..
            } => {
                let env = delegates.environment_for(fns, &options.accelerator, || {
                    self.litert_environment(&options.accelerator)
                })?;
                Ok(Box::new(litert::LiteRtEngine::load(
                    **fns, *ext, env, origin, bytes, options,
                )?))
            }
            Backend::Classic(api) => {
                if matches!(
                    options.accelerator,
                    Accelerator::Gpu { .. } | Accelerator::Npu
                ) {
                    return Err(RuntimeError::Accelerator {
                        accelerator: options.accelerator.name().to_string(),
                        reason: format!(
                            "needs the LiteRT runtime library (libLiteRt.so); {} is the classic \
                             TFLite C API, which has no built-in GPU or NPU",
                            self.path.display()
                        ),
                    });
                }
                Ok(Box::new(classic_abi::ClassicEngine::load(
                    *api, origin, bytes, options,
                )?))
            }
        }
    }

    /// The LiteRT environment for a model on `accelerator`, created on
    /// first use. A GPU or NPU environment that cannot be created is that
    /// accelerator's failure, not the model's.
    #[cfg(target_pointer_width = "64")]
    fn litert_environment(
        &self,
        accelerator: &Accelerator,
    ) -> Result<litert::SharedEnvironment, RuntimeError> {
        let Backend::LiteRt {
            fns,
            env,
            accel_env,
            ..
        } = &self.backend
        else {
            return Err(RuntimeError::Call {
                call: "LiteRtCreateEnvironment",
                status: "not a LiteRT runtime library".into(),
            });
        };
        fn shared(
            cell: &std::sync::OnceLock<litert::SharedEnvironment>,
            create: impl FnOnce() -> Result<litert::SharedEnvironment, RuntimeError>,
        ) -> Result<litert::SharedEnvironment, RuntimeError> {
            if let Some(env) = cell.get() {
                return Ok(*env);
            }
            let created = create()?;
            Ok(*cell.get_or_init(|| created))
        }
        match accelerator {
            Accelerator::Gpu { .. } | Accelerator::Npu => shared(accel_env, || {
                litert::SharedEnvironment::create_for_accelerators(fns, &self.path)
            })
            .map_err(|e| RuntimeError::Accelerator {
                accelerator: accelerator.name().to_string(),
                reason: e.to_string(),
            }),
            _ => shared(env, || litert::SharedEnvironment::create(fns)),
        }
    }

    /// What this runtime library and machine offer: `cpu`, and whether
    /// `gpu` and `npu` work here, each with what serves it or why not.
    /// Tries the GPU for real (a 2 KB float model is compiled and run on
    /// it), which takes a moment and creates the accelerator environment.
    pub fn offered(&self) -> Vec<Offered> {
        match &self.backend {
            #[cfg(target_pointer_width = "64")]
            Backend::LiteRt { .. } => litert::accel::offered(self),
            Backend::Classic(_) => {
                let need = "needs the LiteRT runtime library (libLiteRt.so); this one is the \
                            classic TFLite C API";
                vec![
                    Offered {
                        name: "cpu".into(),
                        available: true,
                        detail: "the interpreter's built-in CPU kernels (tflite-classic)".into(),
                    },
                    Offered {
                        name: "gpu".into(),
                        available: false,
                        detail: need.into(),
                    },
                    Offered {
                        name: "npu".into(),
                        available: false,
                        detail: need.into(),
                    },
                ]
            }
        }
    }

    /// The accelerators the LiteRT accelerator environment registered.
    #[cfg(target_pointer_width = "64")]
    pub(crate) fn litert_registered(
        &self,
    ) -> Result<(Vec<litert::accel::Registered>, Option<&'static Path>), RuntimeError> {
        let env = self.litert_environment(&Accelerator::Gpu { allow_fp16: false })?;
        match &self.backend {
            Backend::LiteRt { fns, .. } => Ok((env.registered(fns), env.accelerator_dir())),
            Backend::Classic(_) => Ok((Vec::new(), None)),
        }
    }
}

/// Rejects files that are not TFLite flatbuffers before the runtime sees
/// them, so the operator gets a precise message instead of a status code.
fn check_flatbuffer(origin: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
    if bytes.len() < 8 {
        return Err(RuntimeError::BadModel {
            origin: origin.to_string(),
            reason: format!(
                "file is {} bytes, too short to be a TFLite model",
                bytes.len()
            ),
        });
    }
    if &bytes[4..8] != b"TFL3" {
        return Err(RuntimeError::BadModel {
            origin: origin.to_string(),
            reason: format!(
                "not a TFLite flatbuffer: expected file identifier \"TFL3\" at byte 4, found \"{}\"",
                bytes[4..8].escape_ascii()
            ),
        });
    }
    Ok(())
}
