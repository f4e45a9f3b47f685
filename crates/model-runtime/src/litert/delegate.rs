//! External delegate plugins inside LiteRT, registered as a LiteRT
//! accelerator.
//!
//! LiteRT 2.3.0 has no call that takes a `TfLiteDelegate`; a compiled model
//! applies the delegates of the accelerators registered in its environment,
//! in registration order. So each delegate spec gets an environment of its
//! own, created (lazily, then kept for the process) with automatic
//! registration off (environment option `kLiteRtEnvOptionTagAutoRegisterAccelerators`
//! = 24, value 0): otherwise XNNPACK, registered first, would take every
//! node before the delegate is asked. The default environment keeps
//! automatic registration on, so cpu/gpu/npu models are unaffected. The one
//! accelerator registered there reports CPU hardware (LiteRT never asks an
//! NPU-flagged accelerator unless NPU compilation is requested) and
//! returns, from `CreateDelegate`, the delegate that the model being
//! compiled on this thread handed over just before
//! `LiteRtCreateCompiledModel` ([`compile_with`]). Nodes the delegate does
//! not take run on LiteRT's built-in CPU kernels.
//!
//! The symbols come from `litert/c/internal/litert_accelerator_registration.h`
//! and `litert_delegate_wrapper.h` (vendored in edgefirst-tflite-sys; the
//! signatures are unchanged in LiteRT 2.2.0 and 2.3.0's sources). They are
//! resolved when the library is opened, but only a delegate load needs them.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use edgefirst_tflite_sys::litert::{
    self as sys, kLiteRtHwAcceleratorCpu, kLiteRtStatusOk, LiteRtFunctions, Status,
};

use super::{status_name, SharedEnvironment};
use crate::delegate::{DelegationCounts, ExternalDelegate, TfLiteDelegate};
use crate::{Accelerator, DelegateSpec, RuntimeError};

/// `kLiteRtEnvOptionTagAutoRegisterAccelerators`.
const ENV_OPTION_AUTO_REGISTER: c_int = 24;
/// `kLiteRtAnyTypeInt`.
const ANY_TYPE_INT: c_int = 2;
/// `kLiteRtStatusErrorRuntimeFailure`.
const STATUS_RUNTIME_FAILURE: Status = 3;

/// One `LiteRtEnvOption` (litert_environment_options.h, litert_any.h: 24
/// bytes on 64-bit targets, the value at 8) holding the `int_value` member
/// of `LiteRtAny`'s union.
#[repr(C)]
struct EnvOption {
    tag: c_int,
    value: AnyInt,
}

#[repr(C)]
struct AnyInt {
    value_type: c_int,
    int_value: i64,
}

const _: () = {
    assert!(std::mem::size_of::<EnvOption>() == 24);
    assert!(std::mem::offset_of!(EnvOption, value) == 8);
    assert!(std::mem::offset_of!(AnyInt, int_value) == 8);
};

/// `LiteRtApiVersion`.
#[repr(C)]
struct ApiVersion {
    major: c_int,
    minor: c_int,
    patch: c_int,
}

type CreateDelegateFn = unsafe extern "C" fn(
    *mut c_void,
    sys::Environment,
    sys::Accelerator,
    sys::Options,
    *mut *mut c_void,
) -> Status;
type DeleterFn = unsafe extern "C" fn(*mut TfLiteDelegate);

/// The registration calls, resolved from the runtime library.
#[derive(Debug, Clone, Copy)]
struct RegistrationFunctions {
    create_accelerator: unsafe extern "C" fn(*mut sys::Accelerator) -> Status,
    destroy_accelerator: unsafe extern "C" fn(sys::Accelerator) -> Status,
    set_get_name: unsafe extern "C" fn(
        sys::Accelerator,
        Option<unsafe extern "C" fn(sys::Accelerator, *mut *const c_char) -> Status>,
    ) -> Status,
    set_get_version: unsafe extern "C" fn(
        sys::Accelerator,
        Option<unsafe extern "C" fn(sys::Accelerator, *mut ApiVersion) -> Status>,
    ) -> Status,
    set_get_hardware_support: unsafe extern "C" fn(
        sys::Accelerator,
        Option<unsafe extern "C" fn(sys::Accelerator, *mut sys::HwAcceleratorSet) -> Status>,
    ) -> Status,
    set_delegate_function:
        unsafe extern "C" fn(sys::Accelerator, Option<CreateDelegateFn>) -> Status,
    register_accelerator: unsafe extern "C" fn(
        sys::Environment,
        sys::Accelerator,
        *mut c_void,
        Option<unsafe extern "C" fn(*mut c_void)>,
    ) -> Status,
}

/// `LiteRtWrapDelegate(TfLiteOpaqueDelegate*, deleter, LiteRtDelegateWrapper*)`,
/// needed inside the `CreateDelegate` callback, which has no user data to
/// carry it. One runtime library per process, so one value.
type WrapFn =
    unsafe extern "C" fn(*mut TfLiteDelegate, Option<DeleterFn>, *mut *mut c_void) -> Status;
static WRAP_DELEGATE: OnceLock<WrapFn> = OnceLock::new();

/// Delegate support of one opened LiteRT library: its registration calls
/// (or why they did not resolve) and the environments made so far.
#[derive(Debug)]
pub(crate) struct DelegateEnvironments {
    functions: Result<RegistrationFunctions, String>,
    /// One per spec, in the order first used. Few specs per process, so a
    /// list; the lock is held while an environment is created so two
    /// workers loading the same model make one.
    environments: Mutex<Vec<(DelegateSpec, SharedEnvironment)>>,
}

impl DelegateEnvironments {
    /// Resolves the registration calls from the library at `path` (already
    /// loaded); a library without them still serves cpu/gpu/npu.
    ///
    /// # Safety
    /// `path` is the LiteRT library the rest of the back end uses.
    pub(crate) unsafe fn load(path: &Path) -> DelegateEnvironments {
        DelegateEnvironments {
            // SAFETY: per the function contract.
            functions: unsafe { resolve(path) },
            environments: Mutex::new(Vec::new()),
        }
    }

    /// The environment models with `accelerator` compile in: the shared one
    /// for cpu/gpu/npu (created on first use by `default_env`), the spec's
    /// own for an external delegate.
    pub(crate) fn environment_for(
        &self,
        fns: &LiteRtFunctions,
        accelerator: &Accelerator,
        default_env: impl FnOnce() -> Result<SharedEnvironment, RuntimeError>,
    ) -> Result<SharedEnvironment, RuntimeError> {
        let Accelerator::Delegate(spec) = accelerator else {
            return default_env();
        };
        let functions = self
            .functions
            .as_ref()
            .map_err(|why| RuntimeError::Accelerator {
                accelerator: spec.name.clone(),
                reason: format!("this LiteRT library cannot register external delegates: {why}"),
            })?;
        let mut envs = self.environments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, env)) = envs.iter().find(|(s, _)| s == spec) {
            return Ok(*env);
        }
        let env = create_delegate_environment(fns, functions).map_err(|reason| {
            RuntimeError::Accelerator {
                accelerator: spec.name.clone(),
                reason: format!("cannot set up a LiteRT environment for the delegate: {reason}"),
            }
        })?;
        envs.push((spec.clone(), env));
        Ok(env)
    }
}

/// # Safety
/// As [`DelegateEnvironments::load`].
unsafe fn resolve(path: &Path) -> Result<RegistrationFunctions, String> {
    // SAFETY: the library is already loaded by the back end; this only
    // bumps its reference count.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // Leaked: the pointers below must stay valid for the process.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    macro_rules! sym {
        ($name:literal) => {{
            // SAFETY: the type on the binding matches the header.
            let s = unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|_| format!("symbol {} not exported", $name))?;
            *s
        }};
    }
    let wrap: WrapFn = sym!("LiteRtWrapDelegate");
    let _ = WRAP_DELEGATE.set(wrap);
    Ok(RegistrationFunctions {
        create_accelerator: sym!("LiteRtCreateAccelerator"),
        destroy_accelerator: sym!("LiteRtDestroyAccelerator"),
        set_get_name: sym!("LiteRtSetAcceleratorGetName"),
        set_get_version: sym!("LiteRtSetAcceleratorGetVersion"),
        set_get_hardware_support: sym!("LiteRtSetAcceleratorGetHardwareSupport"),
        set_delegate_function: sym!("LiteRtSetDelegateFunction"),
        register_accelerator: sym!("LiteRtRegisterAccelerator"),
    })
}

/// An environment without auto-registered accelerators and with ours.
fn create_delegate_environment(
    fns: &LiteRtFunctions,
    f: &RegistrationFunctions,
) -> Result<SharedEnvironment, String> {
    let options = [EnvOption {
        tag: ENV_OPTION_AUTO_REGISTER,
        value: AnyInt {
            value_type: ANY_TYPE_INT,
            int_value: 0,
        },
    }];
    let mut env: sys::Environment = std::ptr::null_mut();
    // SAFETY: one option laid out as LiteRtEnvOption (asserted above);
    // valid out-pointer.
    let status = unsafe { (fns.create_environment)(1, options.as_ptr().cast(), &mut env) };
    if status != kLiteRtStatusOk || env.is_null() {
        return Err(format!("LiteRtCreateEnvironment: {}", status_name(status)));
    }
    // SAFETY (block): a fresh accelerator handle, configured then
    // registered (registration takes it over, on failure too); destroyed
    // ourselves only before registration.
    unsafe {
        let mut accel: sys::Accelerator = std::ptr::null_mut();
        let status = (f.create_accelerator)(&mut accel);
        if status != kLiteRtStatusOk || accel.is_null() {
            (fns.destroy_environment)(env);
            return Err(format!("LiteRtCreateAccelerator: {}", status_name(status)));
        }
        for (call, status) in [
            (
                "LiteRtSetAcceleratorGetName",
                (f.set_get_name)(accel, Some(accelerator_name)),
            ),
            (
                "LiteRtSetAcceleratorGetVersion",
                (f.set_get_version)(accel, Some(accelerator_version)),
            ),
            (
                "LiteRtSetAcceleratorGetHardwareSupport",
                (f.set_get_hardware_support)(accel, Some(accelerator_hardware)),
            ),
            (
                "LiteRtSetDelegateFunction",
                (f.set_delegate_function)(accel, Some(create_delegate)),
            ),
        ] {
            if status != kLiteRtStatusOk {
                (f.destroy_accelerator)(accel);
                (fns.destroy_environment)(env);
                return Err(format!("{call}: {}", status_name(status)));
            }
        }
        let status = (f.register_accelerator)(env, accel, std::ptr::null_mut(), None);
        if status != kLiteRtStatusOk {
            (fns.destroy_environment)(env);
            return Err(format!(
                "LiteRtRegisterAccelerator: {}",
                status_name(status)
            ));
        }
    }
    Ok(SharedEnvironment::from_handle(env))
}

unsafe extern "C" fn accelerator_name(
    _accel: sys::Accelerator,
    name: *mut *const c_char,
) -> Status {
    if !name.is_null() {
        // SAFETY: LiteRT's out-pointer; the string is static.
        unsafe { *name = c"edge-infer external delegate".as_ptr() };
    }
    kLiteRtStatusOk
}

unsafe extern "C" fn accelerator_version(_accel: sys::Accelerator, v: *mut ApiVersion) -> Status {
    if !v.is_null() {
        // SAFETY: LiteRT's out-pointer.
        unsafe {
            *v = ApiVersion {
                major: 1,
                minor: 0,
                patch: 0,
            }
        };
    }
    kLiteRtStatusOk
}

unsafe extern "C" fn accelerator_hardware(
    _accel: sys::Accelerator,
    hw: *mut sys::HwAcceleratorSet,
) -> Status {
    if !hw.is_null() {
        // SAFETY: LiteRT's out-pointer.
        unsafe { *hw = kLiteRtHwAcceleratorCpu as sys::HwAcceleratorSet };
    }
    kLiteRtStatusOk
}

thread_local! {
    /// The delegate of the model being compiled on this thread, from
    /// [`compile_with`] to [`create_delegate`] (LiteRT applies accelerators
    /// synchronously inside `LiteRtCreateCompiledModel`).
    static PENDING: RefCell<Option<ExternalDelegate>> = const { RefCell::new(None) };
}

/// LiteRT asks the accelerator for a delegate for the model it compiles.
unsafe extern "C" fn create_delegate(
    _runtime_context: *mut c_void,
    _env: sys::Environment,
    _accel: sys::Accelerator,
    _options: sys::Options,
    wrapper: *mut *mut c_void,
) -> Status {
    if wrapper.is_null() {
        return STATUS_RUNTIME_FAILURE;
    }
    // SAFETY: LiteRT's out-pointer. Null means "no delegate": LiteRT skips
    // the accelerator (and compile_with then reports it).
    unsafe { *wrapper = std::ptr::null_mut() };
    let Some(delegate) = PENDING
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
        .ok()
        .flatten()
    else {
        return kLiteRtStatusOk;
    };
    let Some(wrap) = WRAP_DELEGATE.get() else {
        return STATUS_RUNTIME_FAILURE;
    };
    let raw = delegate.into_raw();
    // SAFETY: a live delegate; LiteRT owns it from here and calls
    // `delete_delegate` once, when the compiled model is destroyed (after
    // its interpreter, LiteRtCompiledModelT declares `delegates_` before
    // `interp_`).
    let status = unsafe { wrap(raw, Some(delete_delegate), wrapper) };
    if status != kLiteRtStatusOk {
        // SAFETY: LiteRT did not take it; ours to destroy, once.
        unsafe {
            *wrapper = std::ptr::null_mut();
            ExternalDelegate::destroy_raw(raw);
        }
    }
    status
}

/// The deleter LiteRT calls on the delegate it was given.
unsafe extern "C" fn delete_delegate(delegate: *mut TfLiteDelegate) {
    // SAFETY: the pointer create_delegate gave away, deleted once by LiteRT.
    unsafe { ExternalDelegate::destroy_raw(delegate) };
}

/// The delegate a compiled model was built with: its name and node counts.
#[derive(Debug)]
pub(crate) struct AttachedDelegate {
    pub(crate) name: String,
    pub(crate) counts: Arc<DelegationCounts>,
}

/// Runs `compile` (the `LiteRtCreateCompiledModel` call) with the model's
/// external delegate handed over to the accelerator, if it has one. Returns
/// the status for the caller to judge, except that a failure with a delegate
/// is the delegate's ([`RuntimeError::Accelerator`]), as is a plugin that
/// declines or a delegate LiteRT never asked for.
pub(crate) fn compile_with(
    accelerator: &Accelerator,
    compile: impl FnOnce() -> Status,
) -> Result<(Status, Option<AttachedDelegate>), RuntimeError> {
    let Accelerator::Delegate(spec) = accelerator else {
        return Ok((compile(), None));
    };
    let delegate = ExternalDelegate::create(spec)?;
    let counts = delegate.counts();
    let put = PENDING.try_with(|p| p.try_borrow_mut().map(|mut p| p.replace(delegate)).is_ok());
    if put != Ok(true) {
        return Err(RuntimeError::Accelerator {
            accelerator: spec.name.clone(),
            reason: "cannot hand the delegate to LiteRT (re-entered on this thread)".into(),
        });
    }
    let status = compile();
    // Whatever LiteRT did not take is destroyed here, not left for the
    // next model compiled on this thread.
    let not_taken = PENDING
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
        .ok()
        .flatten();
    let failed = |reason: String| RuntimeError::Accelerator {
        accelerator: spec.name.clone(),
        reason,
    };
    if status != kLiteRtStatusOk {
        return Err(failed(format!(
            "LiteRT could not compile the model with the delegate: {} (the runtime's log above has the delegate's message)",
            status_name(status)
        )));
    }
    if not_taken.is_some() {
        return Err(failed(
            "LiteRT compiled the model without asking the delegate's accelerator for its delegate"
                .into(),
        ));
    }
    Ok((
        status,
        Some(AttachedDelegate {
            name: spec.name.clone(),
            counts,
        }),
    ))
}
