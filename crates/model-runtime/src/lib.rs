//! Loads quantized TFLite/LiteRT models through a runtime library that is
//! opened at run time, and runs them on the calling thread.
//!
//! Nothing here knows about MQTT, JSON or async: the daemon hands a model's
//! bytes in, writes input tensors as bytes, calls [`Engine::invoke`] and reads
//! output bytes back. Two back ends sit behind the one [`Engine`] trait:
//!
//! - [`litert`]: the LiteRT `CompiledModel` API of `libLiteRt.so` (the default,
//!   XNNPACK on CPU), driven through edgefirst-tflite's resolved function table
//!   plus the few symbols that crate does not resolve ([`litert::ext`]).
//! - `classic_abi`: the classic TFLite C API of `libtensorflowlite_c.so`
//!   through its stable ABI, on every target: the only runtime on armv7 (no
//!   LiteRT build exists there, and edgefirst-tflite does not build for
//!   32-bit targets) and, later, the way to external delegates.
//!
//! [`flatbuffer`] reads a model's tensor facts straight from the file, with
//! no runtime library at all (`inspect` and `check-config` on a board whose
//! runtime library is not installed yet).

mod classic_abi;
mod error;
pub mod flatbuffer;
#[cfg(target_pointer_width = "64")]
pub mod litert;
mod locate;
mod tensor;

pub use error::RuntimeError;
pub use flatbuffer::{read_model_facts, ModelFacts};
pub use locate::{LibraryCandidate, LibrarySearch, ENV_LIBRARY};
pub use tensor::{DType, Quantization, TensorSpec};

use std::path::{Path, PathBuf};

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

/// Per-model knobs the daemon passes when it loads a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Intra-op CPU threads (XNNPACK). 1 is the LiteRT default.
    pub cpu_threads: u32,
    /// The batch size used to fix a dynamic (-1) leading dimension.
    pub dynamic_batch: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            cpu_threads: 1,
            dynamic_batch: 1,
        }
    }
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
    /// What executes the graph, e.g. "cpu/xnnpack (litert)".
    fn accelerator(&self) -> String;
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
        /// Created on the first model load.
        env: std::sync::OnceLock<litert::SharedEnvironment>,
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
        let lib = edgefirst_tflite::Library::from_path(path).map_err(|e| e.to_string())?;
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
        // Leaked on purpose: see the type's doc. One per process.
        let lib: &'static edgefirst_tflite::Library = Box::leak(Box::new(lib));
        let fns = lib
            .litert()
            .ok_or("the LiteRT function table did not resolve")?;
        Ok(Backend::LiteRt {
            fns,
            ext,
            env: std::sync::OnceLock::new(),
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
    pub fn load(
        &self,
        origin: &str,
        bytes: Vec<u8>,
        options: &LoadOptions,
    ) -> Result<Box<dyn Engine>, RuntimeError> {
        check_flatbuffer(origin, &bytes)?;
        match &self.backend {
            #[cfg(target_pointer_width = "64")]
            Backend::LiteRt { fns, ext, env } => {
                let env = match env.get() {
                    Some(env) => *env,
                    None => {
                        let created = litert::SharedEnvironment::create(fns)?;
                        *env.get_or_init(|| created)
                    }
                };
                Ok(Box::new(litert::LiteRtEngine::load(
                    **fns, *ext, env, origin, bytes, options,
                )?))
            }
            Backend::Classic(api) => Ok(Box::new(classic_abi::ClassicEngine::load(
                *api, origin, bytes, options,
            )?)),
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
