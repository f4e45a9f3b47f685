//! LiteRT's built-in accelerators: the GPU (`libLiteRtWebGpuAccelerator.so`,
//! Dawn's WebGPU over Vulkan) and the NPU (a vendor's dispatch library), as
//! `libLiteRt.so` 2.3.0 finds and configures them. Checked by hand:
//!
//! - **Where they are found.** `libLiteRt.so` has no RPATH and, unless the
//!   environment option `RuntimeLibraryDir` names a folder, `dlopen()`s
//!   `libLiteRtWebGpuAccelerator.so` by bare name: from `runtime/x86_64/`
//!   only `CpuAccelerator` registered. With the option set to the folder of
//!   `libLiteRt.so`, "GPU WebGPU" registers. The NPU accelerator registers
//!   only when `DispatchLibraryDir` is set (then whether or not a vendor
//!   library is there), so it is set only when a
//!   `libLiteRtDispatch_<Vendor>.so` lies next to `libLiteRt.so`.
//! - **Why a second environment.** Registering the GPU accelerator maps its
//!   19 MB library: about 13 MB more resident memory, measured, for a
//!   daemon that may never use it. CPU models keep the plain environment;
//!   the first GPU or NPU model (or [`offered`]) creates this one.
//! - **GPU options.** The `Lrt*GpuOptions*` setters are linked into the
//!   accelerator library, not exported by `libLiteRt.so`; what the
//!   accelerator reads is an opaque option with identifier `gpu_options`
//!   whose payload is a TOML string, parsed by its own
//!   `LrtCreateGpuOptionsFromToml` (LiteRT `litert/c/options/
//!   litert_gpu_options.cc`; seen in its log: "User provided gpu options
//!   found", and "Failed to parse GPU options TOML payload" for a bad one,
//!   after which it silently uses its defaults). `precision = 2` is
//!   `kLiteRtDelegatePrecisionFp32`, `1` is `Fp16`; without it the delegate
//!   chooses, so fp32 is always asked for unless fp16 is allowed.
//! - **Which ops stay on the CPU.** GPU|CPU (and NPU|CPU) compiles what the
//!   accelerator rejects onto XNNPACK or the built-in kernels.
//!   `LiteRtCompiledModelIsFullyAccelerated` counts XNNPACK as an
//!   accelerator: for a model whose only op (a 5-D ADD) the GPU rejected and
//!   XNNPACK took it says true, `LiteRtCompiledModelIsNonCpuFullyAccelerated`
//!   false. The latter is the one used (tests/gpu.rs builds that model).
//! - **Failures.** No Vulkan device: even GPU|CPU fails to compile
//!   (`kLiteRtStatusErrorRuntimeFailure`, "No adapters found" in LiteRT's
//!   log). No GPU accelerator registered: GPU|CPU compiles silently on the
//!   CPU, so registration is checked first. `libLiteRt.so` exports no
//!   logging API (no `LiteRtSetDefaultLogger`, no sink logger), so LiteRT's
//!   own message cannot be captured; the reason is worded from what the
//!   Vulkan loader reports ([`super::vulkan`]) instead.
//! - **Crashes, not errors, on a software device.** Mesa's lavapipe
//!   (Mesa 25.0.7 with LLVM 15, bookworm-backports) compiles shaders to
//!   machine code at run time, and the process dies with SIGSEGV at the
//!   first invoke (compiling succeeds) in two cases: when it may not make
//!   memory executable (systemd's `MemoryDenyWriteExecute=yes`, or
//!   `prctl(PR_SET_MDWE)`), and in fp16 for every op that uses `exp`
//!   (LOGISTIC, EXP, ELU, GELU: each alone in a model; fp32 runs them).
//!   So on a software device fp16 is never used (it gains nothing on a
//!   CPU), and without executable memory the GPU is refused up front.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgefirst_tflite_sys::litert::{
    self as sys, kLiteRtHwAcceleratorCpu, kLiteRtHwAcceleratorGpu, kLiteRtHwAcceleratorNpu,
    kLiteRtStatusOk, EnvOption, LiteRtFunctions,
};

use super::vulkan::{self, DeviceKind, VulkanProbe};
use crate::{Accelerator, Delegation, LoadOptions, Offered, Runtime, RuntimeError};

/// The model [`offered`] compiles and runs on each accelerator: 2 KB, one
/// float FULLY_CONNECTED layer with a dynamic batch (models/README.md).
const PROBE_MODEL: &[u8] = include_bytes!("../../../../models/dynamic_batch_f32.tflite");

/// `kLiteRtEnvOptionTag*` (`litert_environment_options.h`).
const TAG_COMPILER_PLUGIN_LIBRARY_DIR: u32 = 0;
const TAG_DISPATCH_LIBRARY_DIR: u32 = 1;
const TAG_RUNTIME_LIBRARY_DIR: u32 = 22;
/// `kLiteRtAnyTypeString` (`litert_any.h`).
const ANY_TYPE_STRING: u32 = 8;

/// The GPU accelerator library in the ai-edge-litert wheel.
pub(crate) const GPU_LIBRARY: &str = "libLiteRtWebGpuAccelerator.so";
const DISPATCH_PREFIX: &str = "libLiteRtDispatch_";

/// The hardware a compiled model may use, as the bitmask
/// `LiteRtSetOptionsHardwareAccelerators` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Cpu,
    Gpu { allow_fp16: bool },
    Npu,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Gpu { .. } => "gpu",
            Target::Npu => "npu",
        }
    }

    /// The accelerator's own bit, then CPU so that what it rejects runs.
    pub fn hardware(self) -> i32 {
        match self {
            Target::Cpu => kLiteRtHwAcceleratorCpu,
            Target::Gpu { .. } => kLiteRtHwAcceleratorGpu | kLiteRtHwAcceleratorCpu,
            Target::Npu => kLiteRtHwAcceleratorNpu | kLiteRtHwAcceleratorCpu,
        }
    }

    /// The bit a registered accelerator must support, none for the CPU.
    fn required(self) -> Option<i32> {
        match self {
            Target::Cpu => None,
            Target::Gpu { .. } => Some(kLiteRtHwAcceleratorGpu),
            Target::Npu => Some(kLiteRtHwAcceleratorNpu),
        }
    }

    pub fn precision(self) -> &'static str {
        match self {
            Target::Gpu { allow_fp16: true } => "fp16",
            _ => "fp32",
        }
    }
}

/// The `gpu_options` payload: precision only; everything else stays at
/// the accelerator's defaults.
pub(crate) fn gpu_options_toml(allow_fp16: bool) -> String {
    // kLiteRtDelegatePrecisionFp16 = 1, kLiteRtDelegatePrecisionFp32 = 2.
    let precision = if allow_fp16 { 1 } else { 2 };
    format!("precision = {precision}\n")
}

/// The environment options that let LiteRT find the accelerators next to
/// the runtime library at `library`, and the strings they point into (kept
/// alive by the caller until the environment is created; LiteRT copies
/// them). `dir` is that folder, when the library was opened by a path
/// rather than a bare name.
pub(crate) struct EnvSetup {
    pub dir: Option<PathBuf>,
    pub options: Vec<EnvOption>,
    _strings: Vec<CString>,
}

impl EnvSetup {
    pub fn for_library(library: &Path) -> EnvSetup {
        // A bare file name was found by the dynamic linker, which then also
        // finds the accelerator by its bare name: no option needed.
        let dir = library
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
        let mut setup = EnvSetup {
            dir: dir.clone(),
            options: Vec::new(),
            _strings: Vec::new(),
        };
        let Some(dir) = dir else {
            return setup;
        };
        let has_dispatch = !dispatch_libraries(&dir).is_empty();
        let Ok(dir_c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return setup;
        };
        let mut tags = vec![TAG_RUNTIME_LIBRARY_DIR];
        if has_dispatch {
            tags.extend([TAG_DISPATCH_LIBRARY_DIR, TAG_COMPILER_PLUGIN_LIBRARY_DIR]);
        }
        for tag in tags {
            // SAFETY: EnvOption is plain C data (integers, a union of
            // scalars and pointers) for which all-zero is a valid value.
            let mut option: EnvOption = unsafe { std::mem::zeroed() };
            option.tag = tag;
            option.value.type_ = ANY_TYPE_STRING;
            option.value.__bindgen_anon_1.str_value = dir_c.as_ptr();
            setup.options.push(option);
        }
        // Moving the CString moves only its pointer; the bytes stay put.
        setup._strings.push(dir_c);
        setup
    }
}

/// Vendor dispatch libraries in `dir`, by file name.
pub(crate) fn dispatch_libraries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(DISPATCH_PREFIX) && n.ends_with(".so"))
        .collect();
    found.sort();
    found
}

/// One accelerator the environment registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    /// LiteRT's name: "CpuAccelerator", "GPU WebGPU", "NpuAccelerator".
    pub name: String,
    /// `LiteRtHwAcceleratorSet` bits.
    pub hardware: i32,
}

/// The accelerators registered in `env`, in LiteRT's order.
pub(crate) fn registered(fns: &LiteRtFunctions, env: sys::Environment) -> Vec<Registered> {
    let mut out = Vec::new();
    let mut count = 0usize;
    // SAFETY: live environment; valid out-pointers; the name is copied
    // while the accelerator (owned by the environment) is alive.
    unsafe {
        if (fns.get_num_accelerators)(env, &mut count) != kLiteRtStatusOk {
            return out;
        }
        for i in 0..count {
            let mut acc: sys::Accelerator = std::ptr::null_mut();
            if (fns.get_accelerator)(env, i, &mut acc) != kLiteRtStatusOk || acc.is_null() {
                continue;
            }
            let mut name: *const c_char = std::ptr::null();
            let name = if (fns.get_accelerator_name)(acc, &mut name) == kLiteRtStatusOk
                && !name.is_null()
            {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            } else {
                format!("accelerator {i}")
            };
            let mut hardware = 0;
            if (fns.get_accelerator_hardware_support)(acc, &mut hardware) != kLiteRtStatusOk {
                hardware = 0;
            }
            out.push(Registered { name, hardware });
        }
    }
    out
}

/// The registered accelerator that serves `target`, or why there is none.
pub(crate) fn serving(
    target: Target,
    registered: &[Registered],
    dir: Option<&Path>,
) -> Result<Option<Registered>, String> {
    let Some(bit) = target.required() else {
        return Ok(None);
    };
    match registered.iter().find(|r| r.hardware & bit != 0) {
        Some(r) => Ok(Some(r.clone())),
        None => Err(match target {
            Target::Npu => npu_missing(dir),
            _ => gpu_missing(dir),
        }),
    }
}

fn gpu_missing(dir: Option<&Path>) -> String {
    match dir {
        Some(dir) if !dir.join(GPU_LIBRARY).exists() => format!(
            "no GPU accelerator: {} is missing. It comes in the same ai-edge-litert wheel as \
             libLiteRt.so and must lie next to it (scripts/fetch-runtime.sh puts both in \
             runtime/<arch>/, the .deb both in /usr/lib/edge-infer)",
            dir.join(GPU_LIBRARY).display()
        ),
        Some(dir) => format!(
            "no GPU accelerator: {} is there but LiteRT did not register it (not the same \
             LiteRT version as libLiteRt.so?); LiteRT's log above says why",
            dir.join(GPU_LIBRARY).display()
        ),
        None => format!(
            "no GPU accelerator: the runtime library was opened by its bare name and {GPU_LIBRARY} \
             is not on the dynamic linker's path; set [runtime] library to the full path of a \
             libLiteRt.so that has {GPU_LIBRARY} next to it"
        ),
    }
}

fn npu_missing(dir: Option<&Path>) -> String {
    let place = dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "the folder of libLiteRt.so".into());
    format!(
        "no NPU accelerator: LiteRT's NPU path needs the NPU vendor's dispatch library \
         ({DISPATCH_PREFIX}<Vendor>.so) next to libLiteRt.so, in {place}, and for models not \
         compiled ahead of time for that NPU its compiler plugin \
         (libLiteRtCompilerPlugin_<Vendor>.so); there is none"
    )
}

/// Why compiling for the GPU failed, worded from what the Vulkan loader
/// reports (LiteRT's own message went to its log).
pub(crate) fn gpu_compile_failed(status: &str) -> String {
    let probe = vulkan::probe();
    let cause = match probe {
        VulkanProbe::NoLoader(why) => format!(
            "no Vulkan device: the Vulkan loader libvulkan.so.1 cannot be loaded ({why}). \
             Install it (Debian: libvulkan1) and a Vulkan driver: the board's GPU driver, or \
             mesa-vulkan-drivers 25 or newer (lavapipe, on the CPU)"
        ),
        VulkanProbe::NoDevice => "no Vulkan device: the Vulkan loader finds no driver or device. \
             Install the board's GPU Vulkan driver, or mesa-vulkan-drivers 25 or newer (lavapipe, \
             on the CPU); under systemd, PrivateDevices=yes in the unit hides /dev/dri \
             (see docs/operators.md)"
            .to_string(),
        VulkanProbe::Failed(why) => format!("Vulkan does not work here: {why}"),
        VulkanProbe::Devices(_) => format!(
            "{}, but the GPU accelerator (Dawn/WebGPU) failed on them: a driver too old for \
             Dawn (Mesa's before 25 lacks features it needs), a device this process may not \
             open, or a part of the model the GPU accepted but could not build; LiteRT's log \
             above names the cause",
            probe.describe()
        ),
    };
    format!("compiling for the GPU failed ({status}): {cause}")
}

/// What the GPU will really run on, when the adapter is a software one:
/// fp32 even if fp16 is allowed (the returned flag says it was dropped),
/// or why it cannot run at all. See the module doc for the crashes this
/// avoids.
pub(crate) fn software_device_rules(target: Target) -> Result<(Target, bool), String> {
    let Target::Gpu { allow_fp16 } = target else {
        return Ok((target, false));
    };
    let probe = vulkan::probe();
    let Some(adapter) = probe.likely_adapter().filter(|a| a.kind == DeviceKind::Cpu) else {
        return Ok((target, false));
    };
    if !executable_memory_allowed() {
        return Err(format!(
            "the Vulkan device is {} ({}), which compiles shaders to machine code at run \
             time, and this process may not make memory executable (systemd's \
             MemoryDenyWriteExecute=yes, or PR_SET_MDWE): it would crash at the first \
             inference. Use a hardware GPU, or allow it in a drop-in (docs/operators.md)",
            adapter.name,
            adapter.kind.as_str()
        ));
    }
    Ok((Target::Gpu { allow_fp16: false }, allow_fp16))
}

/// Whether this process may turn writable memory executable, as a JIT
/// does: an anonymous page is mapped read-write and `mprotect`ed to
/// read-execute. systemd's `MemoryDenyWriteExecute=yes` refuses that
/// (seccomp: EPERM; the kernel's PR_SET_MDWE: EACCES). Asked once.
fn executable_memory_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        // The C library's own prototypes (64-bit Linux: off_t is i64).
        extern "C" {
            fn mmap(
                addr: *mut c_void,
                len: usize,
                prot: c_int,
                flags: c_int,
                fd: c_int,
                offset: i64,
            ) -> *mut c_void;
            fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
            fn munmap(addr: *mut c_void, len: usize) -> c_int;
        }
        const PROT_READ: c_int = 1;
        const PROT_WRITE: c_int = 2;
        const PROT_EXEC: c_int = 4;
        const MAP_PRIVATE: c_int = 0x02;
        const MAP_ANONYMOUS: c_int = 0x20;
        const LEN: usize = 4096;
        // SAFETY: a fresh anonymous private mapping of one page, only
        // re-protected and unmapped here; nothing is written or executed.
        unsafe {
            let page = mmap(
                std::ptr::null_mut(),
                LEN,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            );
            if page as isize == -1 {
                return false;
            }
            let allowed = mprotect(page, LEN, PROT_READ | PROT_EXEC) == 0;
            munmap(page, LEN);
            allowed
        }
    })
}

/// How a GPU engine describes itself: "gpu/webgpu (Vulkan: llvmpipe
/// (LLVM 15.0.6, 256 bits), fp32, litert)". `fp16_dropped`: fp16 was
/// allowed but not used ([`software_device_rules`]).
pub(crate) fn describe(
    target: Target,
    serving: Option<&Registered>,
    threads: u32,
    fp16_dropped: bool,
) -> String {
    match target {
        Target::Cpu => format!("cpu/xnnpack ({threads} threads, litert)"),
        Target::Gpu { .. } => {
            let name = serving.map(|r| r.name.as_str()).unwrap_or("GPU");
            // "GPU WebGPU" -> "webgpu"; other LiteRT GPU accelerators are
            // named the same way ("GPU OpenCL").
            let flavor = name
                .strip_prefix("GPU")
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_ascii_lowercase);
            let mut parts = Vec::new();
            if flavor.as_deref() == Some("webgpu") {
                if let Some(adapter) = vulkan::probe().likely_adapter() {
                    parts.push(format!("Vulkan: {}", adapter.name));
                }
            }
            parts.push(if fp16_dropped {
                "fp32 (fp16 allowed, not used on a software device)".to_string()
            } else {
                target.precision().to_string()
            });
            parts.push("litert".into());
            match flavor {
                Some(f) => format!("gpu/{f} ({})", parts.join(", ")),
                None => format!("gpu ({})", parts.join(", ")),
            }
        }
        Target::Npu => match serving {
            Some(r) => format!("npu ({}, litert)", r.name),
            None => "npu (litert)".into(),
        },
    }
}

/// The listing of [`Runtime::offered`] for a LiteRT runtime library.
pub(crate) fn offered(runtime: &Runtime) -> Vec<Offered> {
    let mut out = vec![Offered {
        name: "cpu".into(),
        available: true,
        detail: "cpu/xnnpack (litert)".into(),
    }];
    let (registered, dir) = match runtime.litert_registered() {
        Ok(found) => found,
        Err(e) => {
            let reason = format!("the LiteRT accelerator environment cannot be created: {e}");
            for name in ["gpu", "npu"] {
                out.push(Offered {
                    name: name.into(),
                    available: false,
                    detail: reason.clone(),
                });
            }
            return out;
        }
    };
    for target in [Target::Gpu { allow_fp16: false }, Target::Npu] {
        let accelerator = match target {
            Target::Npu => Accelerator::Npu,
            _ => Accelerator::Gpu { allow_fp16: false },
        };
        let offered = match serving(target, &registered, dir) {
            Err(reason) => Offered {
                name: target.name().into(),
                available: false,
                detail: reason,
            },
            Ok(found) => {
                let litert_name = found.map(|r| r.name).unwrap_or_default();
                try_on(runtime, target, accelerator, &litert_name)
            }
        };
        out.push(offered);
    }
    out
}

/// Compiles and runs [`PROBE_MODEL`] on `target`.
fn try_on(runtime: &Runtime, target: Target, accelerator: Accelerator, name: &str) -> Offered {
    let options = LoadOptions {
        accelerator,
        ..LoadOptions::default()
    };
    let outcome = runtime
        .load("the test model", PROBE_MODEL.to_vec(), &options)
        .and_then(|mut engine| {
            engine.invoke()?;
            Ok(engine)
        });
    match outcome {
        Ok(engine) => {
            let placement = match engine.delegation() {
                Delegation::Full => "ran entirely on it",
                _ => "ran, but not entirely on it",
            };
            let mut detail = format!(
                "{} (LiteRT accelerator \"{name}\"); a test model {placement}",
                engine.accelerator()
            );
            if let (Target::Gpu { .. }, VulkanProbe::Devices(_)) = (target, vulkan::probe()) {
                detail.push_str(&format!("; {}", vulkan::probe().describe()));
            }
            if target == Target::Npu {
                detail.push_str(
                    "; a model runs on the NPU when compiled ahead of time for it or when the \
                     vendor's compiler plugin is next to libLiteRt.so",
                );
            }
            Offered {
                name: target.name().into(),
                available: true,
                detail,
            }
        }
        Err(e) => Offered {
            name: target.name().into(),
            available: false,
            detail: match e {
                RuntimeError::Accelerator { reason, .. } => reason,
                other => other.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, hardware: i32) -> Registered {
        Registered {
            name: name.into(),
            hardware,
        }
    }

    #[test]
    fn gpu_and_npu_keep_the_cpu_for_what_they_reject() {
        assert_eq!(Target::Cpu.hardware(), 1);
        assert_eq!(Target::Gpu { allow_fp16: false }.hardware(), 3);
        assert_eq!(Target::Npu.hardware(), 5);
    }

    #[test]
    fn precision_is_fp32_unless_fp16_is_allowed() {
        assert_eq!(gpu_options_toml(false), "precision = 2\n");
        assert_eq!(gpu_options_toml(true), "precision = 1\n");
    }

    #[test]
    fn a_missing_accelerator_is_named_with_where_it_was_looked_for() {
        let cpu_only = [reg("CpuAccelerator", kLiteRtHwAcceleratorCpu)];
        let dir = Path::new("/nonexistent/runtime");
        let gpu = serving(Target::Gpu { allow_fp16: false }, &cpu_only, Some(dir)).unwrap_err();
        assert!(
            gpu.contains("/nonexistent/runtime/libLiteRtWebGpuAccelerator.so is missing"),
            "{gpu}"
        );
        let npu = serving(Target::Npu, &cpu_only, Some(dir)).unwrap_err();
        assert!(npu.contains("libLiteRtDispatch_<Vendor>.so"), "{npu}");
        assert!(npu.contains("/nonexistent/runtime"), "{npu}");
        let with_gpu = [
            reg("GPU WebGPU", kLiteRtHwAcceleratorGpu),
            cpu_only[0].clone(),
        ];
        let found = serving(Target::Gpu { allow_fp16: true }, &with_gpu, Some(dir)).unwrap();
        assert_eq!(found.map(|r| r.name), Some("GPU WebGPU".to_string()));
        assert_eq!(serving(Target::Cpu, &cpu_only, None), Ok(None));
    }

    #[test]
    fn the_environment_looks_for_accelerators_next_to_the_library() {
        let setup = EnvSetup::for_library(Path::new("/opt/x/libLiteRt.so"));
        assert_eq!(setup.dir.as_deref(), Some(Path::new("/opt/x")));
        assert_eq!(
            setup.options.len(),
            1,
            "no dispatch library there: no NPU dirs"
        );
        assert_eq!(setup.options[0].tag, TAG_RUNTIME_LIBRARY_DIR);
        // SAFETY: set as a string just above.
        let dir = unsafe { CStr::from_ptr(setup.options[0].value.__bindgen_anon_1.str_value) };
        assert_eq!(dir.to_str(), Ok("/opt/x"));
        let bare = EnvSetup::for_library(Path::new("libLiteRt.so"));
        assert!(bare.dir.is_none() && bare.options.is_empty());
    }
}
