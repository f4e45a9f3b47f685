//! The LiteRT `CompiledModel` back end (`libLiteRt.so`).
//!
//! One [`LiteRtEngine`] owns every handle of one model (environment, model,
//! options, compiled model, tensor buffers) and destroys them in reverse
//! order. edgefirst-tflite's own `litert` types borrow each other through
//! lifetimes, which cannot be stored in a long-lived worker, and they keep the
//! raw handles private, so thread options and resizing could not be applied;
//! this module therefore calls the same resolved function table directly.
//! GPU and NPU models compile the same way with other hardware bits and
//! options ([`accel`]).

pub(crate) mod accel;
pub(crate) mod delegate;
pub mod ext;
mod vulkan;

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;

use edgefirst_tflite_sys::litert::{
    self as sys, kLiteRtStatusOk, kLiteRtTensorBufferLockModeRead,
    kLiteRtTensorBufferLockModeWrite, LiteRtFunctions, RankedTensorType, Status,
};

use crate::{
    Accelerator, DType, Delegation, Engine, LoadOptions, Quantization, RuntimeError, TensorSpec,
};
use accel::Target;
use ext::ExtFunctions;

const SIGNATURE: usize = 0;

#[derive(Clone, Copy)]
enum Side {
    Input,
    Output,
}

/// A process-wide LiteRT environment. Creating one probes for GPU/NPU
/// accelerator plugins (several dlopen attempts), so all models share one;
/// like the library it lives for the rest of the process. There are two:
/// the CPU one, and the one that registers the accelerators next to the
/// runtime library ([`accel`] says why they are apart).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedEnvironment {
    handle: sys::Environment,
    /// Where the accelerator libraries were looked for: the folder of
    /// `libLiteRt.so` (None for the CPU environment, and when the library
    /// was opened by its bare name).
    accelerator_dir: Option<&'static Path>,
}

// SAFETY: the environment is created once and only read afterwards (it is
// passed to model, compile and buffer calls); LiteRT shares one environment
// between compiled models by design.
unsafe impl Send for SharedEnvironment {}
unsafe impl Sync for SharedEnvironment {}

impl SharedEnvironment {
    /// The CPU environment: no options, as LiteRT starts by default.
    pub(crate) fn create(fns: &LiteRtFunctions) -> Result<SharedEnvironment, RuntimeError> {
        Ok(SharedEnvironment {
            handle: Self::create_with(fns, &[])?,
            accelerator_dir: None,
        })
    }

    /// The environment for GPU and NPU models, which registers the
    /// accelerator libraries lying next to the runtime library at
    /// `library`.
    pub(crate) fn create_for_accelerators(
        fns: &LiteRtFunctions,
        library: &Path,
    ) -> Result<SharedEnvironment, RuntimeError> {
        let setup = accel::EnvSetup::for_library(library);
        let handle = Self::create_with(fns, &setup.options)?;
        Ok(SharedEnvironment {
            handle,
            // Leaked like the environment itself: one per process.
            accelerator_dir: setup.dir.map(|d| &*Box::leak(d.into_boxed_path())),
        })
    }

    fn create_with(
        fns: &LiteRtFunctions,
        options: &[sys::EnvOption],
    ) -> Result<sys::Environment, RuntimeError> {
        let mut env: sys::Environment = std::ptr::null_mut();
        let count = i32::try_from(options.len()).unwrap_or(0);
        // SAFETY: `options` holds `count` initialised options whose strings
        // outlive the call (LiteRT copies them); valid out-pointer.
        check("LiteRtCreateEnvironment", unsafe {
            (fns.create_environment)(count, options.as_ptr(), &mut env)
        })?;
        if env.is_null() {
            return Err(RuntimeError::Call {
                call: "LiteRtCreateEnvironment",
                status: "returned no environment".into(),
            });
        }
        Ok(env)
    }

    /// An environment created elsewhere (an external delegate's), which
    /// registers no accelerator library.
    pub(crate) fn from_handle(handle: sys::Environment) -> SharedEnvironment {
        SharedEnvironment {
            handle,
            accelerator_dir: None,
        }
    }

    /// The accelerators this environment registered.
    pub(crate) fn registered(&self, fns: &LiteRtFunctions) -> Vec<accel::Registered> {
        accel::registered(fns, self.handle)
    }

    pub(crate) fn accelerator_dir(&self) -> Option<&'static Path> {
        self.accelerator_dir
    }
}

/// What [`LiteRtEngine::load`] decided before compiling.
struct Setup {
    target: Target,
    /// The registered accelerator that serves `target` (None for the CPU).
    serving: Option<accel::Registered>,
    /// fp16 was allowed but is not used.
    fp16_dropped: bool,
}

pub struct LiteRtEngine {
    fns: LiteRtFunctions,
    env: sys::Environment,
    model: sys::Model,
    options: sys::Options,
    compiled: sys::CompiledModel,
    input_buffers: Vec<sys::TensorBuffer>,
    output_buffers: Vec<sys::TensorBuffer>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    input_host: Vec<Vec<u8>>,
    output_host: Vec<Vec<u8>>,
    /// What [`Engine::accelerator`] says, decided at load (for an
    /// external delegate, `delegate` says it instead).
    description: String,
    /// How much of the graph the GPU or NPU took (`Cpu` otherwise).
    delegation: Delegation,
    /// `LoadOptions::accelerator`'s name.
    accelerator_name: String,
    /// The external delegate it was compiled with (owned by the compiled
    /// model; this keeps its name and node counts).
    delegate: Option<delegate::AttachedDelegate>,
    /// The flatbuffer the model was created from; LiteRT reads it for the
    /// model's whole life, so it is dropped last.
    _bytes: crate::ModelBytes,
}

// SAFETY: the engine exclusively owns its handles and is used from one
// thread at a time (`&mut self` for every call that touches them). LiteRT
// handles are not tied to the thread that created them.
unsafe impl Send for LiteRtEngine {}

fn check(call: &'static str, status: Status) -> Result<(), RuntimeError> {
    if status == kLiteRtStatusOk {
        Ok(())
    } else {
        Err(RuntimeError::Call {
            call,
            status: status_name(status),
        })
    }
}

pub(crate) fn status_name(status: Status) -> String {
    let name = match status {
        1 => "invalid argument",
        2 => "memory allocation failure",
        3 => "runtime failure",
        4 => "missing input tensor",
        5 => "unsupported",
        6 => "not found",
        7 => "timeout",
        8 => "wrong version",
        9 => "unknown error",
        500 => "file I/O error",
        501 => "invalid flatbuffer",
        502 => "dynamic loading error",
        504 => "compilation failed",
        1000 => "index out of bounds",
        5001 => "shape inference failed",
        _ => "error",
    };
    format!("{name} (LiteRtStatus {status})")
}

fn dtype_of(element_type: u32) -> DType {
    match element_type {
        1 => DType::F32,
        9 => DType::I8,
        3 => DType::U8,
        7 => DType::I16,
        2 => DType::I32,
        4 => DType::I64,
        10 => DType::F16,
        6 => DType::Bool,
        other => DType::Other(other),
    }
}

fn dims_of(tt: &RankedTensorType) -> Vec<i64> {
    let rank = (tt.layout.rank() as usize).min(tt.layout.dimensions.len());
    tt.layout.dimensions[..rank]
        .iter()
        .map(|&d| i64::from(d))
        .collect()
}

/// # Safety
/// `ptr` is null or a NUL-terminated string owned by a live model.
unsafe fn owned_str(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the function contract.
    let s = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    (!s.is_empty()).then_some(s)
}

impl LiteRtEngine {
    /// Loads and compiles a model for the CPU, GPU or NPU (`env` must be
    /// the accelerator environment for the latter two). A GPU or NPU that
    /// is missing, or fails to compile or allocate the model, gives
    /// [`RuntimeError::Accelerator`].
    pub(crate) fn load(
        fns: LiteRtFunctions,
        ext: ExtFunctions,
        env: SharedEnvironment,
        origin: &str,
        bytes: crate::ModelBytes,
        options: &LoadOptions,
    ) -> Result<LiteRtEngine, RuntimeError> {
        let target = match &options.accelerator {
            Accelerator::Gpu { allow_fp16 } => Target::Gpu {
                allow_fp16: *allow_fp16,
            },
            Accelerator::Npu => Target::Npu,
            // An external delegate compiles for the CPU in its own
            // environment, which offers the delegate as a CPU accelerator
            // (`delegate`).
            Accelerator::Cpu | Accelerator::Delegate(_) => Target::Cpu,
        };
        let accelerator_error = |reason: String| RuntimeError::Accelerator {
            accelerator: target.name().to_string(),
            reason,
        };
        // Without a registered accelerator, GPU|CPU silently compiles for
        // the CPU alone: refuse instead, naming what is missing.
        let serving = if target == Target::Cpu {
            None
        } else {
            accel::serving(target, &env.registered(&fns), env.accelerator_dir())
                .map_err(accelerator_error)?
        };
        let (target, fp16_dropped) =
            accel::software_device_rules(target).map_err(accelerator_error)?;
        let setup = Setup {
            target,
            serving,
            fp16_dropped,
        };
        match Self::load_for(fns, ext, env, origin, bytes, options, setup) {
            // After a successful compile, a call that fails on a GPU or NPU
            // model (buffer requirements, resize) is the accelerator's.
            Err(RuntimeError::Call { call, status }) if target != Target::Cpu => {
                Err(accelerator_error(format!("{call} failed: {status}")))
            }
            other => other,
        }
    }

    fn load_for(
        fns: LiteRtFunctions,
        ext: ExtFunctions,
        env: SharedEnvironment,
        origin: &str,
        bytes: crate::ModelBytes,
        options: &LoadOptions,
        setup: Setup,
    ) -> Result<LiteRtEngine, RuntimeError> {
        let target = setup.target;
        let threads = options.cpu_threads.max(1);
        let mut engine = LiteRtEngine {
            fns,
            env: env.handle,
            model: std::ptr::null_mut(),
            options: std::ptr::null_mut(),
            compiled: std::ptr::null_mut(),
            input_buffers: Vec::new(),
            output_buffers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_host: Vec::new(),
            output_host: Vec::new(),
            description: String::new(),
            delegation: Delegation::Cpu,
            accelerator_name: options.accelerator.name().to_string(),
            delegate: None,
            _bytes: bytes,
        };
        // Every handle is stored in `engine` as soon as it exists, so an early
        // return drops `engine` and frees whatever was created so far.
        let bad_model = |reason: String| RuntimeError::BadModel {
            origin: origin.to_string(),
            reason,
        };
        // SAFETY (whole block): each call gets live handles created above
        // and valid out-pointers; signatures come from the vendored headers.
        unsafe {
            let status = (fns.create_model_from_buffer)(
                engine.env,
                engine._bytes.as_ptr().cast(),
                engine._bytes.len(),
                &mut engine.model,
            );
            if status != kLiteRtStatusOk || engine.model.is_null() {
                return Err(bad_model(format!(
                    "the runtime rejected the model file: {}",
                    status_name(status)
                )));
            }
            let mut nsig = 0usize;
            check(
                "LiteRtGetNumModelSignatures",
                (fns.get_num_model_signatures)(engine.model, &mut nsig),
            )?;
            if nsig == 0 {
                return Err(bad_model(
                    "model has no signature (no subgraph to run)".into(),
                ));
            }
            let mut sig: sys::Signature = std::ptr::null_mut();
            check(
                "LiteRtGetModelSignature",
                (fns.get_model_signature)(engine.model, SIGNATURE, &mut sig),
            )?;
            let (mut nin, mut nout) = (0usize, 0usize);
            check(
                "LiteRtGetNumSignatureInputs",
                (fns.get_num_signature_inputs)(sig, &mut nin),
            )?;
            check(
                "LiteRtGetNumSignatureOutputs",
                (fns.get_num_signature_outputs)(sig, &mut nout),
            )?;

            let mut input_types = Vec::with_capacity(nin);
            for i in 0..nin {
                let mut tensor: sys::Tensor = std::ptr::null_mut();
                check(
                    "LiteRtGetSignatureInputTensorByIndex",
                    (fns.get_signature_input_tensor_by_index)(sig, i, &mut tensor),
                )?;
                let mut name: *const c_char = std::ptr::null();
                (ext.get_signature_input_name)(sig, i, &mut name);
                let (spec, tt) = tensor_spec(&fns, &ext, tensor, owned_str(name), i, origin)?;
                engine.inputs.push(spec);
                input_types.push(tt);
            }
            let mut output_types = Vec::with_capacity(nout);
            for i in 0..nout {
                let mut tensor: sys::Tensor = std::ptr::null_mut();
                check(
                    "LiteRtGetSignatureOutputTensorByIndex",
                    (fns.get_signature_output_tensor_by_index)(sig, i, &mut tensor),
                )?;
                let mut name: *const c_char = std::ptr::null();
                (ext.get_signature_output_name)(sig, i, &mut name);
                let (spec, tt) = tensor_spec(&fns, &ext, tensor, owned_str(name), i, origin)?;
                engine.outputs.push(spec);
                output_types.push(tt);
            }
            for spec in engine.inputs.iter().chain(engine.outputs.iter()) {
                if spec.dtype.size().is_none() {
                    return Err(RuntimeError::Unsupported {
                        origin: origin.to_string(),
                        reason: format!("tensor '{}' has element type {}", spec.name, spec.dtype),
                    });
                }
            }

            check(
                "LiteRtCreateOptions",
                (fns.create_options)(&mut engine.options),
            )?;
            check(
                "LiteRtSetOptionsHardwareAccelerators",
                (fns.set_options_hardware_accelerators)(engine.options, target.hardware()),
            )?;
            // XNNPACK's threads apply to whatever stays on the CPU too.
            add_opaque_options(
                &ext,
                engine.options,
                c"xnnpack",
                ext::xnnpack_threads_payload(threads),
            )?;
            if let Target::Gpu { allow_fp16 } = target {
                add_opaque_options(
                    &ext,
                    engine.options,
                    c"gpu_options",
                    ext::toml_payload(accel::gpu_options_toml(allow_fp16)),
                )?;
            }
            let (status, attached) = delegate::compile_with(&options.accelerator, || {
                (fns.create_compiled_model)(
                    engine.env,
                    engine.model,
                    engine.options,
                    &mut engine.compiled,
                )
            })?;
            engine.delegate = attached;
            if status != kLiteRtStatusOk || engine.compiled.is_null() {
                return Err(match target {
                    Target::Cpu => {
                        bad_model(format!("compiling for CPU failed: {}", status_name(status)))
                    }
                    Target::Gpu { .. } => RuntimeError::Accelerator {
                        accelerator: target.name().into(),
                        reason: accel::gpu_compile_failed(&status_name(status)),
                    },
                    Target::Npu => RuntimeError::Accelerator {
                        accelerator: target.name().into(),
                        reason: format!(
                            "compiling for the NPU failed ({}); LiteRT's log above says why",
                            status_name(status)
                        ),
                    },
                });
            }
            engine.description =
                accel::describe(target, setup.serving.as_ref(), threads, setup.fp16_dropped);
            if target != Target::Cpu {
                let mut full = false;
                let status = (ext.is_non_cpu_fully_accelerated)(engine.compiled, &mut full);
                engine.delegation = if status == kLiteRtStatusOk && full {
                    Delegation::Full
                } else {
                    // Neither call tells how many nodes stayed behind, nor
                    // whether the accelerator took any at all.
                    Delegation::Partial {
                        delegated: None,
                        total: None,
                    }
                };
            }

            // Fix dynamic dimensions before any buffer exists: LiteRT cannot
            // size a buffer for a -1 dimension.
            let mut resized = false;
            for (i, spec) in engine.inputs.iter_mut().enumerate() {
                if !spec.is_dynamic() {
                    continue;
                }
                let mut dims: Vec<i32> = Vec::with_capacity(spec.shape_signature.len());
                for (axis, &d) in spec.shape_signature.iter().enumerate() {
                    if d >= 0 {
                        dims.push(d as i32);
                    } else if axis == 0 {
                        dims.push(options.dynamic_batch.max(1) as i32);
                    } else {
                        return Err(RuntimeError::Unsupported {
                            origin: origin.to_string(),
                            reason: format!(
                                "input '{}' has a dynamic dimension at axis {axis} (shape signature {:?}); only a dynamic batch (axis 0) is supported",
                                spec.name, spec.shape_signature
                            ),
                        });
                    }
                }
                check(
                    "LiteRtCompiledModelResizeInputTensor",
                    (ext.resize_input_tensor)(
                        engine.compiled,
                        SIGNATURE,
                        i,
                        dims.as_ptr(),
                        dims.len(),
                    ),
                )?;
                spec.shape = dims.iter().map(|&d| d as usize).collect();
                let tt = &mut input_types[i];
                for (slot, &d) in tt.layout.dimensions.iter_mut().zip(dims.iter()) {
                    *slot = d;
                }
                resized = true;
            }
            if resized || engine.outputs.iter().any(TensorSpec::is_dynamic) {
                if let Some(first) = output_types.first() {
                    let mut layouts = vec![first.layout; output_types.len()];
                    check(
                        "LiteRtGetCompiledModelOutputTensorLayouts",
                        (ext.get_output_tensor_layouts)(
                            engine.compiled,
                            SIGNATURE,
                            layouts.len(),
                            layouts.as_mut_ptr().cast::<c_void>(),
                            true,
                        ),
                    )?;
                    for ((spec, tt), layout) in engine
                        .outputs
                        .iter_mut()
                        .zip(output_types.iter_mut())
                        .zip(layouts)
                    {
                        tt.layout = layout;
                        spec.shape = dims_of(tt).iter().map(|&d| d.max(0) as usize).collect();
                    }
                }
            }

            for (i, tt) in input_types.iter().enumerate() {
                let buf = engine.create_buffer(Side::Input, i, tt)?;
                engine.input_buffers.push(buf);
                check_buffer_size(&fns, buf, &engine.inputs[i], origin)?;
            }
            for (i, tt) in output_types.iter().enumerate() {
                let buf = engine.create_buffer(Side::Output, i, tt)?;
                engine.output_buffers.push(buf);
                check_buffer_size(&fns, buf, &engine.outputs[i], origin)?;
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

    /// A host buffer that satisfies the compiled model's requirements for
    /// input or output `index`, shaped as `tt`.
    fn create_buffer(
        &self,
        side: Side,
        index: usize,
        tt: &RankedTensorType,
    ) -> Result<sys::TensorBuffer, RuntimeError> {
        let fns = &self.fns;
        let mut reqs: sys::TensorBufferRequirements = std::ptr::null_mut();
        // SAFETY: live compiled model and environment; valid out-pointers;
        // the requirements are used before the compiled model can change.
        unsafe {
            let (call, status) = match side {
                Side::Input => (
                    "LiteRtGetCompiledModelInputBufferRequirements",
                    (fns.get_compiled_model_input_buffer_requirements)(
                        self.compiled,
                        SIGNATURE,
                        index,
                        &mut reqs,
                    ),
                ),
                Side::Output => (
                    "LiteRtGetCompiledModelOutputBufferRequirements",
                    (fns.get_compiled_model_output_buffer_requirements)(
                        self.compiled,
                        SIGNATURE,
                        index,
                        &mut reqs,
                    ),
                ),
            };
            check(call, status)?;
            let mut buf: sys::TensorBuffer = std::ptr::null_mut();
            check(
                "LiteRtCreateManagedTensorBufferFromRequirements",
                (fns.create_managed_tensor_buffer_from_requirements)(self.env, tt, reqs, &mut buf),
            )?;
            Ok(buf)
        }
    }

    fn copy_in(&self, index: usize) -> Result<(), RuntimeError> {
        let buf = self.input_buffers[index];
        let src = &self.input_host[index];
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: `buf` is a live host buffer at least `src.len()` bytes long
        // (checked at load); it is unlocked before returning.
        unsafe {
            check(
                "LiteRtLockTensorBuffer",
                (self.fns.lock_tensor_buffer)(buf, &mut ptr, kLiteRtTensorBufferLockModeWrite),
            )?;
            if !ptr.is_null() {
                std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.cast::<u8>(), src.len());
            }
            check(
                "LiteRtUnlockTensorBuffer",
                (self.fns.unlock_tensor_buffer)(buf),
            )?;
        }
        if ptr.is_null() {
            return Err(RuntimeError::Call {
                call: "LiteRtLockTensorBuffer",
                status: "returned no host address".into(),
            });
        }
        Ok(())
    }

    fn copy_out(&mut self, index: usize) -> Result<(), RuntimeError> {
        let buf = self.output_buffers[index];
        let dst = &mut self.output_host[index];
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: as in copy_in, reading instead of writing.
        unsafe {
            check(
                "LiteRtLockTensorBuffer",
                (self.fns.lock_tensor_buffer)(buf, &mut ptr, kLiteRtTensorBufferLockModeRead),
            )?;
            if !ptr.is_null() {
                std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), dst.as_mut_ptr(), dst.len());
            }
            check(
                "LiteRtUnlockTensorBuffer",
                (self.fns.unlock_tensor_buffer)(buf),
            )?;
        }
        if ptr.is_null() {
            return Err(RuntimeError::Call {
                call: "LiteRtLockTensorBuffer",
                status: "returned no host address".into(),
            });
        }
        Ok(())
    }
}

/// Adds one opaque option (an accelerator's TOML `payload`, which LiteRT
/// frees with the options) to `options`.
///
/// # Safety
/// `options` is live; `payload` comes from [`ext::toml_payload`] (or null)
/// and is not used afterwards.
unsafe fn add_opaque_options(
    ext: &ExtFunctions,
    options: sys::Options,
    identifier: &CStr,
    payload: *mut c_void,
) -> Result<(), RuntimeError> {
    if payload.is_null() {
        return Err(RuntimeError::Call {
            call: "LiteRtCreateOpaqueOptions",
            status: format!("no payload for {identifier:?}"),
        });
    }
    let mut opaque: ext::OpaqueOptions = std::ptr::null_mut();
    // SAFETY: per the function contract; on failure the payload is still
    // ours and freed here, on success the opaque options own it.
    unsafe {
        let status = (ext.create_opaque_options)(
            identifier.as_ptr(),
            payload,
            Some(ext::free_toml_payload),
            &mut opaque,
        );
        if status != kLiteRtStatusOk {
            ext::free_toml_payload(payload);
            return Err(RuntimeError::Call {
                call: "LiteRtCreateOpaqueOptions",
                status: status_name(status),
            });
        }
        let status = (ext.add_opaque_options)(options, opaque);
        if status != kLiteRtStatusOk {
            (ext.destroy_opaque_options)(opaque);
            return Err(RuntimeError::Call {
                call: "LiteRtAddOpaqueOptions",
                status: status_name(status),
            });
        }
    }
    Ok(())
}

/// # Safety
/// `buf` is a live tensor buffer.
unsafe fn check_buffer_size(
    fns: &LiteRtFunctions,
    buf: sys::TensorBuffer,
    spec: &TensorSpec,
    origin: &str,
) -> Result<(), RuntimeError> {
    let mut size = 0usize;
    // SAFETY: per the function contract.
    check("LiteRtGetTensorBufferSize", unsafe {
        (fns.get_tensor_buffer_size)(buf, &mut size)
    })?;
    if size < spec.byte_len() {
        return Err(RuntimeError::BadModel {
            origin: origin.to_string(),
            reason: format!(
                "runtime allocated {size} bytes for tensor '{}' ({} {}), which needs {}",
                spec.name,
                spec.shape_string(),
                spec.dtype,
                spec.byte_len()
            ),
        });
    }
    Ok(())
}

/// Reads name, shape, type and quantization of one signature tensor.
///
/// # Safety
/// `tensor` is a live tensor of a live model.
unsafe fn tensor_spec(
    fns: &LiteRtFunctions,
    ext: &ExtFunctions,
    tensor: sys::Tensor,
    signature_name: Option<String>,
    index: usize,
    origin: &str,
) -> Result<(TensorSpec, RankedTensorType), RuntimeError> {
    // SAFETY (block): live tensor, valid out-pointers.
    unsafe {
        let mut tt: RankedTensorType = std::mem::zeroed();
        let status = (fns.get_ranked_tensor_type)(tensor, &mut tt);
        if status != kLiteRtStatusOk {
            return Err(RuntimeError::Unsupported {
                origin: origin.to_string(),
                reason: format!("tensor {index} is unranked ({})", status_name(status)),
            });
        }
        let name = signature_name.or_else(|| {
            let mut p: *const c_char = std::ptr::null();
            (ext.get_tensor_name)(tensor, &mut p);
            owned_str(p)
        });
        let dtype = dtype_of(tt.element_type as u32);
        let mut quantization = None;
        let mut qtype = 0;
        if (ext.get_quantization_type_id)(tensor, &mut qtype) == kLiteRtStatusOk
            && qtype == ext::QUANTIZATION_PER_TENSOR
        {
            let mut q = ext::QuantizationPerTensor::default();
            check(
                "LiteRtGetPerTensorQuantization",
                (ext.get_per_tensor_quantization)(tensor, &mut q),
            )?;
            quantization = Some(Quantization {
                scale: q.scale,
                zero_point: i32::try_from(q.zero_point).unwrap_or(0),
            });
        } else if matches!(dtype, DType::I8 | DType::U8) && qtype != 0 {
            return Err(RuntimeError::Unsupported {
                origin: origin.to_string(),
                reason: format!(
                    "tensor {index} uses per-channel quantization on an input/output; only per-tensor is supported there"
                ),
            });
        }
        let signature = dims_of(&tt);
        let spec = TensorSpec {
            name: name.unwrap_or_else(|| format!("tensor_{index}")),
            shape: signature.iter().map(|&d| d.max(1) as usize).collect(),
            dtype,
            quantization,
            shape_signature: signature,
        };
        Ok((spec, tt))
    }
}

impl Engine for LiteRtEngine {
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
        for i in 0..self.input_buffers.len() {
            self.copy_in(i)?;
        }
        // SAFETY: live compiled model and buffers matching its signature.
        let status = unsafe {
            (self.fns.run_compiled_model)(
                self.compiled,
                SIGNATURE,
                self.input_buffers.len(),
                self.input_buffers.as_mut_ptr(),
                self.output_buffers.len(),
                self.output_buffers.as_mut_ptr(),
            )
        };
        check("LiteRtRunCompiledModel", status)?;
        for i in 0..self.output_buffers.len() {
            self.copy_out(i)?;
        }
        Ok(())
    }

    fn output(&self, index: usize) -> &[u8] {
        &self.output_host[index]
    }

    fn delegation(&self) -> Delegation {
        match &self.delegate {
            Some(d) => d.counts.delegation(),
            None => self.delegation,
        }
    }

    fn accelerator_name(&self) -> &str {
        self.accelerator_name.as_str()
    }

    fn accelerator(&self) -> String {
        match &self.delegate {
            Some(d) => format!(
                "{} (external delegate; LiteRT's CPU kernels for the rest, litert)",
                d.name
            ),
            None => self.description.clone(),
        }
    }
}

impl Drop for LiteRtEngine {
    fn drop(&mut self) {
        // SAFETY: each handle is destroyed once, children before parents.
        unsafe {
            for b in self
                .input_buffers
                .drain(..)
                .chain(self.output_buffers.drain(..))
            {
                (self.fns.destroy_tensor_buffer)(b);
            }
            if !self.compiled.is_null() {
                (self.fns.destroy_compiled_model)(self.compiled);
            }
            if !self.options.is_null() {
                (self.fns.destroy_options)(self.options);
            }
            if !self.model.is_null() {
                (self.fns.destroy_model)(self.model);
            }
            // The environment is shared and outlives every engine.
        }
    }
}
