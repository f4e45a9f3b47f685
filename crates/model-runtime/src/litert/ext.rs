//! The few `LiteRt*` symbols that edgefirst-tflite 0.10.3 does not resolve.
//!
//! edgefirst-tflite's `LiteRtFunctions` table covers loading, compiling,
//! buffers and running, but a daemon also needs tensor names, per-tensor
//! quantization parameters, input resizing (dynamic batch), CPU thread and
//! GPU options, and whether an accelerator took the whole graph.
//! `libLiteRt.so` 2.3.0 exports all of them; the signatures below are copied
//! from the headers vendored in edgefirst-tflite-sys
//! (`litert/c/litert_model.h`, `litert_compiled_model.h`,
//! `litert_opaque_options.h`, `litert_options.h`), with every struct whose
//! layout we rely on asserted against the header's own static_asserts.
//! `LiteRtCompiledModelIsNonCpuFullyAccelerated` is newer than those headers;
//! its prototype is from LiteRT's own `litert/c/litert_compiled_model.h`.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;

use edgefirst_tflite_sys::litert::{CompiledModel, Options, ParamIndex, Signature, Status, Tensor};

/// `LiteRtQuantizationPerTensor` (`litert_model_types.h`: size 16, scale at
/// 0, zero_point at 8).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct QuantizationPerTensor {
    pub scale: f32,
    pub zero_point: i64,
}

const _: () = {
    assert!(std::mem::size_of::<QuantizationPerTensor>() == 16);
    assert!(std::mem::offset_of!(QuantizationPerTensor, zero_point) == 8);
};

/// `kLiteRtQuantizationPerTensor` of `LiteRtQuantizationTypeId`.
pub const QUANTIZATION_PER_TENSOR: c_int = 1;

/// `LiteRtOpaqueOptions` is an opaque pointer.
pub type OpaqueOptions = *mut c_void;

type NameFn = unsafe extern "C" fn(Tensor, *mut *const c_char) -> Status;
type QuantTypeFn = unsafe extern "C" fn(Tensor, *mut c_int) -> Status;
type PerTensorFn = unsafe extern "C" fn(Tensor, *mut QuantizationPerTensor) -> Status;
type SignatureNameFn = unsafe extern "C" fn(Signature, ParamIndex, *mut *const c_char) -> Status;
type ResizeFn =
    unsafe extern "C" fn(CompiledModel, ParamIndex, ParamIndex, *const c_int, usize) -> Status;
/// The layouts argument is `LiteRtLayout*`; callers pass an array of the
/// `layout` field type of `RankedTensorType`, which is that struct.
type OutputLayoutsFn =
    unsafe extern "C" fn(CompiledModel, ParamIndex, usize, *mut c_void, bool) -> Status;
type CreateOpaqueFn = unsafe extern "C" fn(
    *const c_char,
    *mut c_void,
    Option<unsafe extern "C" fn(*mut c_void)>,
    *mut OpaqueOptions,
) -> Status;
type AddOpaqueFn = unsafe extern "C" fn(Options, OpaqueOptions) -> Status;
type DestroyOpaqueFn = unsafe extern "C" fn(OpaqueOptions);
type FullyAcceleratedFn = unsafe extern "C" fn(CompiledModel, *mut bool) -> Status;

/// Resolved extra symbols. Copy, like edgefirst's table; valid for the
/// life of the process because the library handle is leaked on load.
#[derive(Debug, Clone, Copy)]
pub struct ExtFunctions {
    pub get_tensor_name: NameFn,
    pub get_quantization_type_id: QuantTypeFn,
    pub get_per_tensor_quantization: PerTensorFn,
    pub get_signature_input_name: SignatureNameFn,
    pub get_signature_output_name: SignatureNameFn,
    pub resize_input_tensor: ResizeFn,
    pub get_output_tensor_layouts: OutputLayoutsFn,
    pub create_opaque_options: CreateOpaqueFn,
    pub add_opaque_options: AddOpaqueFn,
    pub destroy_opaque_options: DestroyOpaqueFn,
    /// True when no node of the graph runs on the CPU: neither on XNNPACK
    /// nor on the built-in kernels. (`LiteRtCompiledModelIsFullyAccelerated`
    /// counts XNNPACK as an accelerator, so with GPU|CPU it says "fully"
    /// when the GPU took nothing and XNNPACK took everything.)
    pub is_non_cpu_fully_accelerated: FullyAcceleratedFn,
}

impl ExtFunctions {
    /// Resolves every symbol from the library at `path`, or names the first
    /// one missing.
    ///
    /// # Safety
    /// `path` must be a LiteRT runtime library whose exports match the
    /// vendored headers (checked for 2.3.0).
    pub unsafe fn load(path: &Path) -> Result<ExtFunctions, String> {
        // SAFETY: loading the library runs its initialisers, which is what the
        // caller asked for; it is already loaded by edgefirst, so this only
        // bumps the reference count.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| crate::delegate::with_sources(&e))?;
        // The handle is leaked so the pointers stay valid for the process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        macro_rules! sym {
            ($name:literal) => {{
                // SAFETY: the type on the binding matches the header.
                let s = unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|_| {
                    format!(
                        "symbol {} not exported (a LiteRT runtime older than 2.3.0?)",
                        $name
                    )
                })?;
                *s
            }};
        }
        Ok(ExtFunctions {
            get_tensor_name: sym!("LiteRtGetTensorName"),
            get_quantization_type_id: sym!("LiteRtGetQuantizationTypeId"),
            get_per_tensor_quantization: sym!("LiteRtGetPerTensorQuantization"),
            get_signature_input_name: sym!("LiteRtGetSignatureInputName"),
            get_signature_output_name: sym!("LiteRtGetSignatureOutputName"),
            resize_input_tensor: sym!("LiteRtCompiledModelResizeInputTensor"),
            get_output_tensor_layouts: sym!("LiteRtGetCompiledModelOutputTensorLayouts"),
            create_opaque_options: sym!("LiteRtCreateOpaqueOptions"),
            add_opaque_options: sym!("LiteRtAddOpaqueOptions"),
            destroy_opaque_options: sym!("LiteRtDestroyOpaqueOptions"),
            is_non_cpu_fully_accelerated: sym!("LiteRtCompiledModelIsNonCpuFullyAccelerated"),
        })
    }
}

/// The XNNPACK CPU options payload: identifier `"xnnpack"`, payload a
/// heap-allocated NUL-terminated TOML string the runtime frees through
/// [`free_toml_payload`].
pub fn xnnpack_threads_payload(threads: u32) -> *mut c_void {
    toml_payload(format!("num_threads = {threads}\n"))
}

/// An opaque-options payload as LiteRT's accelerators read them: a
/// heap-allocated NUL-terminated TOML string, freed by
/// [`free_toml_payload`]. Null if `toml` contains a NUL byte.
pub fn toml_payload(toml: String) -> *mut c_void {
    match std::ffi::CString::new(toml) {
        Ok(c) => c.into_raw().cast(),
        Err(_) => std::ptr::null_mut(),
    }
}

/// Destructor handed to `LiteRtCreateOpaqueOptions` for the payloads above.
///
/// # Safety
/// `payload` must come from [`toml_payload`] and be freed once.
pub unsafe extern "C" fn free_toml_payload(payload: *mut c_void) {
    if !payload.is_null() {
        // SAFETY: created by CString::into_raw in toml_payload.
        drop(unsafe { std::ffi::CString::from_raw(payload.cast()) });
    }
}
