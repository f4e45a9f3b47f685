//! The classic TFLite C API back end (`libtensorflowlite_c.so`), called
//! through the C API's own stable ABI, on every target.
//!
//! Why not edgefirst-tflite's `Interpreter`: edgefirst-tflite-sys 0.10.3
//! ships bindings generated for 64-bit targets, with layout assertions that
//! do not compile (and struct layouts that would be wrong) on a 32-bit
//! target, and armv7 boards have only this library (no LiteRT build exists
//! there). The classic C API (`tensorflow/lite/core/c/c_api.h`) needs none
//! of those structs: every handle is opaque, and the only struct passed by
//! value is `TfLiteQuantizationParams { float scale; int32_t zero_point; }`,
//! whose layout is the same everywhere. So this file resolves the 23
//! functions it calls with libloading and declares their C signatures
//! itself, and one back end serves armv7 and 64-bit machines alike
//! (checked on x86_64 with the TF 2.2.0 `libtensorflowlite_c.so` of the npm
//! package `node-tflite@0.0.2`).
//!
//! Inputs and outputs are in interpreter (subgraph) order, which is the
//! order the LiteRT back end reports too; they are named by their signature
//! names, read from the model file with [`crate::flatbuffer`], so a model
//! looks the same with either library on every target (`accel`, not
//! `serving_default_accel:0`).
//!
//! External delegates ([`crate::delegate`]) go in through
//! `TfLiteInterpreterOptionsAddDelegate`, which the interpreter applies when
//! it is created; that symbol is resolved optionally, so a library without
//! it still serves the CPU.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;

use crate::delegate::{DelegationCounts, ExternalDelegate, TfLiteDelegate};
use crate::{
    Accelerator, DType, Delegation, Engine, LoadOptions, Quantization, RuntimeError, TensorSpec,
};
use std::sync::Arc;

#[repr(C)]
struct Opaque {
    _private: [u8; 0],
}
type Model = *mut Opaque;
type Options = *mut Opaque;
type Interpreter = *mut Opaque;
type Tensor = *mut Opaque;
/// `TfLiteStatus`, a C enum: 0 is `kTfLiteOk`.
type Status = c_int;

#[repr(C)]
#[derive(Clone, Copy)]
struct QuantizationParams {
    scale: f32,
    zero_point: i32,
}

/// The resolved C API. The library is leaked by [`ClassicApi::load`], so
/// the pointers stay valid for the process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClassicApi {
    model_create: unsafe extern "C" fn(*const c_void, usize) -> Model,
    model_delete: unsafe extern "C" fn(Model),
    options_create: unsafe extern "C" fn() -> Options,
    options_delete: unsafe extern "C" fn(Options),
    options_set_num_threads: unsafe extern "C" fn(Options, i32),
    interpreter_create: unsafe extern "C" fn(Model, Options) -> Interpreter,
    interpreter_delete: unsafe extern "C" fn(Interpreter),
    allocate_tensors: unsafe extern "C" fn(Interpreter) -> Status,
    resize_input_tensor: unsafe extern "C" fn(Interpreter, i32, *const c_int, i32) -> Status,
    invoke: unsafe extern "C" fn(Interpreter) -> Status,
    input_count: unsafe extern "C" fn(Interpreter) -> i32,
    input_tensor: unsafe extern "C" fn(Interpreter, i32) -> Tensor,
    output_count: unsafe extern "C" fn(Interpreter) -> i32,
    output_tensor: unsafe extern "C" fn(Interpreter, i32) -> Tensor,
    tensor_type: unsafe extern "C" fn(Tensor) -> c_int,
    tensor_num_dims: unsafe extern "C" fn(Tensor) -> i32,
    tensor_dim: unsafe extern "C" fn(Tensor, i32) -> i32,
    tensor_byte_size: unsafe extern "C" fn(Tensor) -> usize,
    tensor_data: unsafe extern "C" fn(Tensor) -> *mut c_void,
    tensor_name: unsafe extern "C" fn(Tensor) -> *const c_char,
    tensor_quantization: unsafe extern "C" fn(Tensor) -> QuantizationParams,
    copy_from_buffer: unsafe extern "C" fn(Tensor, *const c_void, usize) -> Status,
    copy_to_buffer: unsafe extern "C" fn(Tensor, *mut c_void, usize) -> Status,
    /// Optional: only external delegates need it.
    options_add_delegate: Option<unsafe extern "C" fn(Options, *mut TfLiteDelegate)>,
}

impl ClassicApi {
    /// Opens `path` and resolves the classic C API. `Err` carries the
    /// reason (the dlopen error, or the first missing symbol).
    pub(crate) fn load(path: &Path) -> Result<ClassicApi, String> {
        // SAFETY: opening a shared library runs its initialisers; the
        // runtime library is trusted code the operator configured.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| crate::delegate::with_sources(&e))?;
        // Leaked on purpose: see `Runtime`. One per process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the declared type is the C signature from c_api.h.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|_| {
                    format!(
                        "the classic TFLite C API is not exported ({} missing)",
                        $name
                    )
                })?
            };
        }
        Ok(ClassicApi {
            model_create: sym!("TfLiteModelCreate"),
            model_delete: sym!("TfLiteModelDelete"),
            options_create: sym!("TfLiteInterpreterOptionsCreate"),
            options_delete: sym!("TfLiteInterpreterOptionsDelete"),
            options_set_num_threads: sym!("TfLiteInterpreterOptionsSetNumThreads"),
            interpreter_create: sym!("TfLiteInterpreterCreate"),
            interpreter_delete: sym!("TfLiteInterpreterDelete"),
            allocate_tensors: sym!("TfLiteInterpreterAllocateTensors"),
            resize_input_tensor: sym!("TfLiteInterpreterResizeInputTensor"),
            invoke: sym!("TfLiteInterpreterInvoke"),
            input_count: sym!("TfLiteInterpreterGetInputTensorCount"),
            input_tensor: sym!("TfLiteInterpreterGetInputTensor"),
            output_count: sym!("TfLiteInterpreterGetOutputTensorCount"),
            output_tensor: sym!("TfLiteInterpreterGetOutputTensor"),
            tensor_type: sym!("TfLiteTensorType"),
            tensor_num_dims: sym!("TfLiteTensorNumDims"),
            tensor_dim: sym!("TfLiteTensorDim"),
            tensor_byte_size: sym!("TfLiteTensorByteSize"),
            tensor_data: sym!("TfLiteTensorData"),
            tensor_name: sym!("TfLiteTensorName"),
            tensor_quantization: sym!("TfLiteTensorQuantizationParams"),
            copy_from_buffer: sym!("TfLiteTensorCopyFromBuffer"),
            copy_to_buffer: sym!("TfLiteTensorCopyToBuffer"),
            // SAFETY: the declared type is the C signature from c_api.h.
            options_add_delegate: unsafe { lib.get(b"TfLiteInterpreterOptionsAddDelegate\0") }
                .ok()
                .map(|s| *s),
        })
    }
}

pub(crate) struct ClassicEngine {
    api: ClassicApi,
    model: Model,
    interpreter: Interpreter,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    input_host: Vec<Vec<u8>>,
    output_host: Vec<Vec<u8>>,
    threads: u32,
    /// `LoadOptions::accelerator`'s name.
    accelerator_name: String,
    /// The external delegate the interpreter was created with, and its
    /// node counts. Destroyed after the interpreter (fields drop after
    /// `Drop::drop` deleted it).
    delegate: Option<(String, ExternalDelegate, Arc<DelegationCounts>)>,
    /// The flatbuffer the model was created from: `TfLiteModelCreate` does
    /// not copy it, so it must outlive the model and interpreter (dropped
    /// after them, in `Drop`).
    _bytes: crate::ModelBytes,
}

// SAFETY: the engine exclusively owns its interpreter and model and is used
// from one thread at a time (`&mut self` for every call that touches them);
// the classic interpreter is not tied to the thread that created it.
unsafe impl Send for ClassicEngine {}

/// `TfLiteType` codes of the classic C API.
fn dtype_of(code: c_int) -> DType {
    match code {
        1 => DType::F32,
        2 => DType::I32,
        3 => DType::U8,
        4 => DType::I64,
        6 => DType::Bool,
        7 => DType::I16,
        9 => DType::I8,
        10 => DType::F16,
        other => DType::Other(other as u32),
    }
}

fn status(call: &'static str, s: Status) -> Result<(), RuntimeError> {
    if s == 0 {
        Ok(())
    } else {
        Err(RuntimeError::Call {
            call,
            status: format!("TfLiteStatus {s}"),
        })
    }
}

impl ClassicEngine {
    pub(crate) fn load(
        api: ClassicApi,
        origin: &str,
        bytes: crate::ModelBytes,
        options: &LoadOptions,
    ) -> Result<ClassicEngine, RuntimeError> {
        let bad = |reason: String| RuntimeError::BadModel {
            origin: origin.to_string(),
            reason,
        };
        // Signature names and the static checks (per-channel quantization,
        // dynamic dimensions other than the batch) before the runtime sees
        // the bytes.
        let facts = crate::flatbuffer::read_model_facts(origin, &bytes, options.dynamic_batch)?;
        if facts.subgraph_index != 0 {
            return Err(RuntimeError::Unsupported {
                origin: origin.to_string(),
                reason: format!(
                    "the signature runs subgraph {}; the classic TFLite C API runs only the main subgraph",
                    facts.subgraph_index
                ),
            });
        }
        let threads = options.cpu_threads.max(1);
        let delegate = match &options.accelerator {
            Accelerator::Cpu => None,
            Accelerator::Delegate(spec) => {
                if api.options_add_delegate.is_none() {
                    return Err(RuntimeError::Accelerator {
                        accelerator: spec.name.clone(),
                        reason: "this classic TFLite library does not export TfLiteInterpreterOptionsAddDelegate, so it cannot load external delegates".into(),
                    });
                }
                let delegate = ExternalDelegate::create(spec)?;
                let counts = delegate.counts();
                Some((spec.name.clone(), delegate, counts))
            }
            other => {
                return Err(RuntimeError::Accelerator {
                    accelerator: other.name().to_string(),
                    reason: "not available with the classic TFLite runtime (libtensorflowlite_c.so serves the CPU and external delegates only)".into(),
                })
            }
        };
        // With a delegate, the failures below are the delegate's: the model
        // itself loads on the CPU.
        let delegate_name = delegate.as_ref().map(|(name, ..)| name.clone());
        let delegate_failed = |reason: String| match &delegate_name {
            Some(name) => RuntimeError::Accelerator {
                accelerator: name.clone(),
                reason,
            },
            None => RuntimeError::BadModel {
                origin: origin.to_string(),
                reason,
            },
        };
        let delegate_ptr = delegate.as_ref().map(|(_, d, _)| d.as_ptr());
        let mut engine = ClassicEngine {
            api,
            model: std::ptr::null_mut(),
            interpreter: std::ptr::null_mut(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_host: Vec::new(),
            output_host: Vec::new(),
            threads,
            accelerator_name: options.accelerator.name().to_string(),
            delegate,
            _bytes: bytes,
        };
        // SAFETY (block): every handle is checked for null before use and
        // owned by `engine`, whose Drop releases it; tensor pointers are
        // used only while the interpreter lives.
        unsafe {
            engine.model = (api.model_create)(engine._bytes.as_ptr().cast(), engine._bytes.len());
            if engine.model.is_null() {
                return Err(bad("the runtime rejected the model file".into()));
            }
            let opts = (api.options_create)();
            if opts.is_null() {
                return Err(bad("TfLiteInterpreterOptionsCreate failed".into()));
            }
            (api.options_set_num_threads)(opts, i32::try_from(threads).unwrap_or(1));
            if let (Some(ptr), Some(add)) = (delegate_ptr, api.options_add_delegate) {
                // The options only keep the pointer; the delegate is owned
                // by `engine` and outlives the interpreter.
                add(opts, ptr);
            }
            engine.interpreter = (api.interpreter_create)(engine.model, opts);
            (api.options_delete)(opts);
            if engine.interpreter.is_null() {
                return Err(if delegate_ptr.is_some() {
                    delegate_failed(
                        "the classic runtime could not apply the delegate to this model (its Prepare failed; the runtime's log above has the delegate's message)".into(),
                    )
                } else {
                    bad("creating the interpreter failed (see the runtime's log above)".into())
                });
            }
            let nin = (api.input_count)(engine.interpreter).max(0);
            if nin as usize != facts.inputs.len() {
                return Err(bad(format!(
                    "the interpreter has {nin} inputs, the file's signature {}",
                    facts.inputs.len()
                )));
            }
            // Dynamic batch: fix it before allocation, as the LiteRT back
            // end does.
            for (i, spec) in facts.inputs.iter().enumerate() {
                if spec.is_dynamic() {
                    let dims: Vec<c_int> = spec.shape.iter().map(|&d| d as c_int).collect();
                    let s = (api.resize_input_tensor)(
                        engine.interpreter,
                        i as i32,
                        dims.as_ptr(),
                        dims.len() as i32,
                    );
                    if s != 0 && delegate_ptr.is_some() {
                        // TF 2.2 refuses any resize once a delegate without
                        // dynamic-tensor support has been applied.
                        return Err(delegate_failed(format!(
                            "the classic runtime cannot resize input '{}' to {:?} once this delegate is applied (TfLiteStatus {s})",
                            spec.name, spec.shape
                        )));
                    }
                    status("TfLiteInterpreterResizeInputTensor", s)?;
                }
            }
            let s = (api.allocate_tensors)(engine.interpreter);
            if s != 0 && delegate_ptr.is_some() {
                return Err(delegate_failed(format!(
                    "allocating tensors failed with the delegate applied (TfLiteStatus {s}; the runtime's log above has the delegate's message)"
                )));
            }
            status("TfLiteInterpreterAllocateTensors", s)?;
            for (i, fact) in facts.inputs.iter().enumerate() {
                let t = (api.input_tensor)(engine.interpreter, i as i32);
                engine.inputs.push(engine.spec(t, fact, origin)?);
            }
            let nout = (api.output_count)(engine.interpreter).max(0);
            if nout as usize != facts.outputs.len() {
                return Err(bad(format!(
                    "the interpreter has {nout} outputs, the file's signature {}",
                    facts.outputs.len()
                )));
            }
            for (i, fact) in facts.outputs.iter().enumerate() {
                let t = (api.output_tensor)(engine.interpreter, i as i32);
                engine.outputs.push(engine.spec(t, fact, origin)?);
            }
        }
        engine.input_host = engine
            .inputs
            .iter()
            .map(|s| vec![0u8; s.byte_len()])
            .collect();
        engine.output_host = engine
            .outputs
            .iter()
            .map(|s| vec![0u8; s.byte_len()])
            .collect();
        Ok(engine)
    }

    /// The spec of a live tensor, named as the file's signature names it.
    ///
    /// # Safety
    /// `t` is null or a tensor of `self.interpreter`.
    unsafe fn spec(
        &self,
        t: Tensor,
        fact: &TensorSpec,
        origin: &str,
    ) -> Result<TensorSpec, RuntimeError> {
        let bad = |reason: String| RuntimeError::BadModel {
            origin: origin.to_string(),
            reason,
        };
        if t.is_null() {
            return Err(bad(format!(
                "the interpreter has no tensor '{}'",
                fact.name
            )));
        }
        let api = &self.api;
        // SAFETY (block): live tensor, per the function contract.
        unsafe {
            let rank = (api.tensor_num_dims)(t).max(0);
            let shape: Vec<usize> = (0..rank)
                .map(|d| (api.tensor_dim)(t, d).max(0) as usize)
                .collect();
            let dtype = dtype_of((api.tensor_type)(t));
            let q = (api.tensor_quantization)(t);
            let quantization = (matches!(dtype, DType::I8 | DType::U8 | DType::I16)
                && q.scale > 0.0)
                .then_some(Quantization {
                    scale: q.scale,
                    zero_point: q.zero_point,
                });
            let name_ptr = (api.tensor_name)(t);
            let tensor_name = if name_ptr.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name_ptr).to_string_lossy().into_owned()
            };
            let spec = TensorSpec {
                name: fact.name.clone(),
                shape,
                dtype,
                quantization,
                shape_signature: fact.shape_signature.clone(),
            };
            if spec.dtype.size().is_none() {
                return Err(RuntimeError::Unsupported {
                    origin: origin.to_string(),
                    reason: format!("tensor '{}' has element type {}", spec.name, spec.dtype),
                });
            }
            if spec.dtype != fact.dtype {
                return Err(bad(format!(
                    "tensor '{}' ({tensor_name}) is {} in the interpreter but {} in the file",
                    spec.name, spec.dtype, fact.dtype
                )));
            }
            let size = (api.tensor_byte_size)(t);
            if size != spec.byte_len() {
                return Err(bad(format!(
                    "tensor '{}' ({tensor_name}) has {size} bytes, its shape {} {} needs {}",
                    spec.name,
                    spec.shape_string(),
                    spec.dtype,
                    spec.byte_len()
                )));
            }
            Ok(spec)
        }
    }
}

impl Engine for ClassicEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.input_host
    }

    fn invoke(&mut self) -> Result<(), RuntimeError> {
        let api = self.api;
        // SAFETY (block): live interpreter; each buffer is exactly the
        // tensor's byte size (checked at load, lengths never change).
        unsafe {
            for (i, src) in self.input_host.iter().enumerate() {
                let t = (api.input_tensor)(self.interpreter, i as i32);
                if t.is_null() {
                    return Err(RuntimeError::Call {
                        call: "TfLiteInterpreterGetInputTensor",
                        status: format!("no input {i}"),
                    });
                }
                status(
                    "TfLiteTensorCopyFromBuffer",
                    (api.copy_from_buffer)(t, src.as_ptr().cast(), src.len()),
                )?;
            }
            status("TfLiteInterpreterInvoke", (api.invoke)(self.interpreter))?;
            for (i, dst) in self.output_host.iter_mut().enumerate() {
                let t = (api.output_tensor)(self.interpreter, i as i32);
                if t.is_null() || (api.tensor_data)(t).is_null() {
                    return Err(RuntimeError::Call {
                        call: "TfLiteInterpreterGetOutputTensor",
                        status: format!("no data for output {i}"),
                    });
                }
                status(
                    "TfLiteTensorCopyToBuffer",
                    (api.copy_to_buffer)(t, dst.as_mut_ptr().cast(), dst.len()),
                )?;
            }
        }
        Ok(())
    }

    fn output(&self, index: usize) -> &[u8] {
        &self.output_host[index]
    }

    fn delegation(&self) -> Delegation {
        match &self.delegate {
            Some((_, _, counts)) => counts.delegation(),
            None => Delegation::Cpu,
        }
    }

    fn accelerator_name(&self) -> &str {
        self.accelerator_name.as_str()
    }

    fn accelerator(&self) -> String {
        match &self.delegate {
            Some((name, ..)) => format!(
                "{name} (external delegate; CPU kernels with {} threads for the rest, tflite-classic)",
                self.threads
            ),
            None => format!("cpu ({} threads, tflite-classic)", self.threads),
        }
    }
}

impl Drop for ClassicEngine {
    fn drop(&mut self) {
        // SAFETY: each handle is deleted once, the interpreter before its
        // model; the model bytes (`_bytes`) and the delegate are dropped
        // after this.
        unsafe {
            if !self.interpreter.is_null() {
                (self.api.interpreter_delete)(self.interpreter);
            }
            if !self.model.is_null() {
                (self.api.model_delete)(self.model);
            }
        }
    }
}
