//! External delegate plugins: the classic `tflite_plugin_create_delegate`
//! ABI that libedgetpu and other vendor delegates implement, shared by both
//! back ends.
//!
//! A plugin library is opened once per path and leaked (unloading delegate
//! code under a live model is undefined behaviour). Each model gets a
//! delegate of its own, created with the spec's options and destroyed after
//! the interpreter (or compiled model) that used it.
//!
//! Why the plugin's delegate is wrapped: the runtime is handed a
//! `TfLiteDelegate` of ours ([`CountingDelegate`]) whose `Prepare` calls the
//! plugin's and counts the execution plan before and after, so
//! [`Engine::delegation`](crate::Engine::delegation) reports exact node
//! counts on both back ends (LiteRT 2.3.0 keeps its own counts private). It
//! also means the runtime only ever reads a delegate struct of the layout it
//! expects: plugins built against TensorFlow Lite before 2.11 allocate a
//! `TfLiteDelegate` without the trailing `opaque_delegate_builder` field.
//!
//! The structs read here are the stable prefixes of
//! `tensorflow/lite/core/c/common.h` (vendored in edgefirst-tflite-sys),
//! identical in TensorFlow Lite 2.2 (checked against the `common.h` shipped
//! with the TF 2.2.0 `libtensorflowlite_c.so` of `node-tflite@0.0.2`) and
//! in LiteRT 2.3.0's copy of TensorFlow Lite.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use crate::{DelegateSpec, Delegation, RuntimeError};

/// `TfLiteStatus`: 0 is `kTfLiteOk`, 1 `kTfLiteError`.
type TfLiteStatus = c_int;
const TFLITE_OK: TfLiteStatus = 0;
const TFLITE_ERROR: TfLiteStatus = 1;
/// `kTfLiteBuiltinDelegate`: the builtin code the runtime gives every node
/// that a delegate kernel replaced a subset of the graph with.
const BUILTIN_DELEGATE: i32 = 51;

type ReportFn = unsafe extern "C" fn(*const c_char);
type CreateFn = unsafe extern "C" fn(
    *mut *mut c_char,
    *mut *mut c_char,
    usize,
    Option<ReportFn>,
) -> *mut TfLiteDelegate;
type DestroyFn = unsafe extern "C" fn(*mut TfLiteDelegate);
type PrepareFn = unsafe extern "C" fn(*mut TfLiteContext, *mut TfLiteDelegate) -> TfLiteStatus;

/// `TfLiteIntArray`: a size followed by that many ints.
#[repr(C)]
struct TfLiteIntArray {
    size: c_int,
    data: [c_int; 0],
}

/// The first eight fields of `TfLiteContext`; only ever read through a
/// pointer the runtime passes to `Prepare`, never constructed or sized.
#[repr(C)]
pub(crate) struct TfLiteContext {
    tensors_size: usize,
    get_execution_plan:
        Option<unsafe extern "C" fn(*mut TfLiteContext, *mut *mut TfLiteIntArray) -> TfLiteStatus>,
    tensors: *mut c_void,
    impl_: *mut c_void,
    resize_tensor: *const c_void,
    report_error: *const c_void,
    add_tensors: *const c_void,
    get_node_and_registration: Option<
        unsafe extern "C" fn(
            *mut TfLiteContext,
            c_int,
            *mut *mut c_void,
            *mut *mut TfLiteRegistration,
        ) -> TfLiteStatus,
    >,
}

/// The first six fields of `TfLiteRegistration` (read through a pointer).
#[repr(C)]
struct TfLiteRegistration {
    init: *const c_void,
    free: *const c_void,
    prepare: *const c_void,
    invoke: *const c_void,
    profiling_string: *const c_void,
    builtin_code: i32,
}

/// `TfLiteDelegate` as TensorFlow Lite 2.11 and later define it (LiteRT
/// 2.3.0 reads all seven fields; TF 2.2 reads the first six).
#[repr(C)]
pub(crate) struct TfLiteDelegate {
    data: *mut c_void,
    prepare: Option<PrepareFn>,
    copy_from_buffer_handle: *const c_void,
    copy_to_buffer_handle: *const c_void,
    free_buffer_handle: *const c_void,
    flags: i64,
    opaque_delegate_builder: *mut c_void,
}

/// The six fields every `TfLiteDelegate` has had since TF 2.0: all that may
/// be read from a plugin's delegate, whatever headers it was built with.
#[repr(C)]
#[derive(Clone, Copy)]
struct PluginDelegatePrefix {
    data: *mut c_void,
    prepare: Option<PrepareFn>,
    copy_from_buffer_handle: *const c_void,
    copy_to_buffer_handle: *const c_void,
    free_buffer_handle: *const c_void,
    flags: i64,
}

// The offsets the runtime and plugins agree on (common.h; the same on every
// target with the C layout rules, asserted here for the pointer sizes we
// build for).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::offset_of!(TfLiteContext, get_execution_plan) == 8);
    assert!(std::mem::offset_of!(TfLiteContext, get_node_and_registration) == 56);
    assert!(std::mem::offset_of!(TfLiteRegistration, builtin_code) == 40);
    assert!(std::mem::size_of::<TfLiteDelegate>() == 56);
    assert!(std::mem::offset_of!(TfLiteDelegate, flags) == 40);
    assert!(std::mem::size_of::<PluginDelegatePrefix>() == 48);
};
#[cfg(target_pointer_width = "32")]
const _: () = {
    assert!(std::mem::offset_of!(TfLiteContext, get_execution_plan) == 4);
    assert!(std::mem::offset_of!(TfLiteContext, get_node_and_registration) == 28);
    assert!(std::mem::offset_of!(TfLiteRegistration, builtin_code) == 20);
    assert!(std::mem::offset_of!(TfLiteDelegate, flags) == 24);
    assert!(std::mem::size_of::<PluginDelegatePrefix>() == 32);
};

/// One opened plugin library: its two entry points. Leaked, one per path
/// per process.
#[derive(Debug)]
struct PluginLibrary {
    create: CreateFn,
    destroy: DestroyFn,
}

/// Opened plugins by the path the spec names. Only successes are kept, so
/// a library installed after a failed attempt loads on the next one.
fn plugins() -> &'static Mutex<HashMap<PathBuf, &'static PluginLibrary>> {
    static PLUGINS: OnceLock<Mutex<HashMap<PathBuf, &'static PluginLibrary>>> = OnceLock::new();
    PLUGINS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn accelerator_error(spec: &DelegateSpec, reason: String) -> RuntimeError {
    RuntimeError::Accelerator {
        accelerator: spec.name.clone(),
        reason,
    }
}

/// Opens (once) the plugin library of `spec`.
fn open_plugin(spec: &DelegateSpec) -> Result<&'static PluginLibrary, RuntimeError> {
    let lib_name = spec.library.display();
    let mut opened = plugins().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(plugin) = opened.get(&spec.library) {
        return Ok(plugin);
    }
    // A bare file name goes to the dynamic linker's search path; a path
    // must exist (dlopen's own message for a missing path is vaguer).
    if is_path(&spec.library) && !spec.library.exists() {
        return Err(accelerator_error(
            spec,
            format!("the delegate plugin {lib_name} does not exist"),
        ));
    }
    // SAFETY: opening a shared library runs its initialisers; the plugin is
    // code the operator configured, like the runtime library itself.
    let lib = unsafe { libloading::Library::new(&spec.library) }.map_err(|e| {
        accelerator_error(
            spec,
            format!(
                "cannot load the delegate plugin {lib_name}: {}",
                with_sources(&e)
            ),
        )
    })?;
    let missing = |symbol: &str| {
        accelerator_error(
            spec,
            format!(
                "the library {lib_name} does not export {symbol}: it is not an external delegate plugin"
            ),
        )
    };
    // SAFETY: the declared types are the plugin ABI's C signatures
    // (tensorflow/lite/delegates/external/external_delegate_interface.h).
    let create: CreateFn = *unsafe { lib.get::<CreateFn>(b"tflite_plugin_create_delegate\0") }
        .map_err(|_| missing("tflite_plugin_create_delegate"))?;
    // SAFETY: as above.
    let destroy: DestroyFn = *unsafe { lib.get::<DestroyFn>(b"tflite_plugin_destroy_delegate\0") }
        .map_err(|_| missing("tflite_plugin_destroy_delegate"))?;
    // Leaked on purpose: the function pointers above live in it, and
    // delegates created from it may outlive any handle we could drop.
    let _lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let plugin: &'static PluginLibrary = Box::leak(Box::new(PluginLibrary { create, destroy }));
    opened.insert(spec.library.clone(), plugin);
    Ok(plugin)
}

/// An error and its sources: libloading's own message is only "dlopen
/// failed", the linker's reason is its source.
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether `library` is a path (has a directory part) rather than a file
/// name for the dynamic linker to search.
fn is_path(library: &Path) -> bool {
    library.components().count() > 1
}

thread_local! {
    /// What the plugin reported through `report_error` during the current
    /// `tflite_plugin_create_delegate` call on this thread.
    static REPORTED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The `report_error` callback handed to the plugin.
unsafe extern "C" fn capture_report(message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the plugin passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .trim()
        .to_string();
    // try_: never panic across the C boundary, even if re-entered.
    let _ = REPORTED.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            r.push(text);
        }
    });
}

fn take_reported() -> String {
    REPORTED
        .try_with(|r| {
            r.try_borrow_mut()
                .map(|mut r| std::mem::take(&mut *r).join("; "))
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// Node counts one `Prepare` saw, per runtime context (one per subgraph).
#[derive(Debug, Default)]
pub(crate) struct DelegationCounts {
    /// Context address → (nodes the delegate replaced, nodes it was
    /// offered), or `None` when the plan could not be read around a
    /// successful Prepare.
    by_context: Mutex<HashMap<usize, Option<(usize, usize)>>>,
}

impl DelegationCounts {
    fn record(&self, context: usize, counts: Option<(usize, usize)>) {
        self.by_context
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(context, counts);
    }

    /// Full, partial or none, summed over the subgraphs the runtime
    /// offered to the delegate.
    pub(crate) fn delegation(&self) -> Delegation {
        let by_context = self.by_context.lock().unwrap_or_else(|p| p.into_inner());
        let mut delegated = 0;
        let mut total = 0;
        for counts in by_context.values() {
            let Some((d, t)) = counts else {
                // The delegate took part; how much is unknown.
                return Delegation::Partial {
                    delegated: None,
                    total: None,
                };
            };
            delegated += d;
            total += t;
        }
        if delegated == 0 {
            Delegation::None
        } else if delegated >= total {
            Delegation::Full
        } else {
            Delegation::Partial {
                delegated: Some(delegated),
                total: Some(total),
            }
        }
    }
}

/// What the runtime is handed: our `TfLiteDelegate` first (a pointer to
/// this struct is a pointer to it), then what its `Prepare` needs.
#[repr(C)]
struct CountingDelegate {
    delegate: TfLiteDelegate,
    plugin: *mut TfLiteDelegate,
    plugin_prepare: PrepareFn,
    library: &'static PluginLibrary,
    counts: Arc<DelegationCounts>,
}

/// The execution plan's size and how many of its nodes are not delegate
/// kernels.
///
/// # Safety
/// `context` is the live context of a `Prepare` call.
unsafe fn census(context: *mut TfLiteContext) -> Option<(usize, usize)> {
    // SAFETY (block): the runtime's context with its function pointers,
    // valid during Prepare; the plan and registrations it returns are read
    // before anything can change them.
    unsafe {
        let get_plan = (*context).get_execution_plan?;
        let get_node = (*context).get_node_and_registration?;
        let mut plan: *mut TfLiteIntArray = std::ptr::null_mut();
        if get_plan(context, &mut plan) != TFLITE_OK || plan.is_null() {
            return None;
        }
        let size = usize::try_from((*plan).size).ok()?;
        let nodes =
            std::slice::from_raw_parts(std::ptr::addr_of!((*plan).data).cast::<c_int>(), size);
        let mut undelegated = 0;
        for &node_index in nodes {
            let mut node: *mut c_void = std::ptr::null_mut();
            let mut reg: *mut TfLiteRegistration = std::ptr::null_mut();
            if get_node(context, node_index, &mut node, &mut reg) != TFLITE_OK || reg.is_null() {
                return None;
            }
            if (*reg).builtin_code != BUILTIN_DELEGATE {
                undelegated += 1;
            }
        }
        Some((size, undelegated))
    }
}

/// Our `Prepare`: the plugin's, with the plan counted around it.
unsafe extern "C" fn counting_prepare(
    context: *mut TfLiteContext,
    delegate: *mut TfLiteDelegate,
) -> TfLiteStatus {
    if context.is_null() || delegate.is_null() {
        return TFLITE_ERROR;
    }
    // SAFETY: the runtime calls Prepare with the pointer we gave it, which
    // points at a live CountingDelegate (freed only after the runtime is
    // done with it).
    let this = unsafe { &*delegate.cast::<CountingDelegate>() };
    // SAFETY: Prepare's own context.
    let before = unsafe { census(context) };
    // SAFETY: the plugin's Prepare with its own delegate, as the runtime
    // would have called it.
    let status = unsafe { (this.plugin_prepare)(context, this.plugin) };
    // SAFETY: as above; still inside Prepare.
    let after = unsafe { census(context) };
    if status == TFLITE_OK {
        let counts = match (before, after) {
            (Some((_, offered)), Some((_, left))) => Some((offered.saturating_sub(left), offered)),
            _ => None,
        };
        this.counts.record(context as usize, counts);
    }
    status
}

/// One plugin delegate for one model, wrapped for counting. The runtime
/// gets [`ExternalDelegate::as_ptr`]; dropping this destroys the plugin's
/// delegate, so it must be dropped after whatever used it.
#[derive(Debug)]
pub(crate) struct ExternalDelegate {
    raw: NonNull<CountingDelegate>,
    counts: Arc<DelegationCounts>,
}

// SAFETY: the delegate is used by one engine, from one thread at a time;
// the plugin ABI does not tie a delegate to the thread that created it
// (libedgetpu's delegates are used from any thread).
unsafe impl Send for ExternalDelegate {}

impl ExternalDelegate {
    /// Opens the plugin (once per process) and creates a delegate with the
    /// spec's options.
    pub(crate) fn create(spec: &DelegateSpec) -> Result<ExternalDelegate, RuntimeError> {
        let plugin = open_plugin(spec)?;
        let lib_name = spec.library.display();
        let mut keys = Vec::with_capacity(spec.options.len());
        let mut values = Vec::with_capacity(spec.options.len());
        for (k, v) in &spec.options {
            let c = |s: &str| {
                CString::new(s).map_err(|_| {
                    accelerator_error(spec, format!("delegate option {k:?} contains a NUL byte"))
                })
            };
            keys.push(c(k)?);
            values.push(c(v)?);
        }
        let mut key_ptrs: Vec<*mut c_char> = keys.iter().map(|k| k.as_ptr().cast_mut()).collect();
        let mut value_ptrs: Vec<*mut c_char> =
            values.iter().map(|v| v.as_ptr().cast_mut()).collect();
        take_reported();
        // SAFETY: arrays of `n` NUL-terminated strings that outlive the
        // call (the ABI lets the plugin read them only during it); the
        // callback copies what it is given.
        let raw = unsafe {
            (plugin.create)(
                key_ptrs.as_mut_ptr(),
                value_ptrs.as_mut_ptr(),
                key_ptrs.len(),
                Some(capture_report),
            )
        };
        let reported = take_reported();
        let said = if reported.is_empty() {
            String::new()
        } else {
            format!("; it reported: {reported}")
        };
        if raw.is_null() {
            return Err(accelerator_error(
                spec,
                format!(
                    "the delegate plugin {lib_name} declined to create a delegate (it returns none when its device is missing: is the Edge TPU attached?){said}"
                ),
            ));
        }
        // SAFETY: a delegate the plugin just created; only the prefix every
        // TfLiteDelegate has is read.
        let prefix = unsafe { raw.cast::<PluginDelegatePrefix>().read() };
        let Some(plugin_prepare) = prefix.prepare else {
            // SAFETY: created by this plugin, destroyed once.
            unsafe { (plugin.destroy)(raw) };
            return Err(accelerator_error(
                spec,
                format!(
                    "the delegate plugin {lib_name} returned a delegate without a Prepare function (an opaque TfLiteOpaqueDelegate), which edge-infer does not support"
                ),
            ));
        };
        let counts = Arc::new(DelegationCounts::default());
        let wrapper = Box::new(CountingDelegate {
            delegate: TfLiteDelegate {
                // Copied so that the buffer-handle callbacks, if the runtime
                // ever calls them with our pointer, see the plugin's data.
                data: prefix.data,
                prepare: Some(counting_prepare),
                copy_from_buffer_handle: prefix.copy_from_buffer_handle,
                copy_to_buffer_handle: prefix.copy_to_buffer_handle,
                free_buffer_handle: prefix.free_buffer_handle,
                flags: prefix.flags,
                opaque_delegate_builder: std::ptr::null_mut(),
            },
            plugin: raw,
            plugin_prepare,
            library: plugin,
            counts: Arc::clone(&counts),
        });
        let raw = NonNull::from(Box::leak(wrapper));
        Ok(ExternalDelegate { raw, counts })
    }

    /// The `TfLiteDelegate*` to give the runtime.
    pub(crate) fn as_ptr(&self) -> *mut TfLiteDelegate {
        self.raw.as_ptr().cast()
    }

    /// The counts its `Prepare` records; shared, so they can be read after
    /// the delegate itself moved into the runtime.
    pub(crate) fn counts(&self) -> Arc<DelegationCounts> {
        Arc::clone(&self.counts)
    }

    /// Hands ownership to the runtime (LiteRT's delegate wrapper), which
    /// gives it back through [`ExternalDelegate::destroy_raw`].
    #[cfg(target_pointer_width = "64")]
    pub(crate) fn into_raw(self) -> *mut TfLiteDelegate {
        let ptr = self.as_ptr();
        std::mem::forget(self);
        ptr
    }

    /// Destroys a delegate given away by [`ExternalDelegate::into_raw`].
    ///
    /// # Safety
    /// `ptr` came from `into_raw` and is destroyed once, after the runtime
    /// stopped using it.
    #[cfg(target_pointer_width = "64")]
    pub(crate) unsafe fn destroy_raw(ptr: *mut TfLiteDelegate) {
        if let Some(raw) = NonNull::new(ptr.cast::<CountingDelegate>()) {
            // SAFETY: per the contract, a live CountingDelegate from into_raw.
            let counts = unsafe { Arc::clone(&raw.as_ref().counts) };
            drop(ExternalDelegate { raw, counts });
        }
    }
}

impl Drop for ExternalDelegate {
    fn drop(&mut self) {
        // SAFETY: `raw` came from Box::leak in `create` and is freed once,
        // here; the plugin's delegate is destroyed by the plugin that made
        // it, after every runtime object that used it (the owners drop this
        // last).
        unsafe {
            let wrapper = Box::from_raw(self.raw.as_ptr());
            (wrapper.library.destroy)(wrapper.plugin);
        }
    }
}
