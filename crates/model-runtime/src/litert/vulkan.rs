//! Which Vulkan devices this process can see, asked of the Vulkan loader
//! directly.
//!
//! LiteRT's GPU accelerator (Dawn's WebGPU over Vulkan) only says why it
//! failed in its own stderr log ("No adapters found"), and `libLiteRt.so`
//! 2.3.0 exports no way to capture that log nor to ask which adapter it
//! picked. Asking the loader ourselves gives both: the adapter's name for
//! [`crate::Engine::accelerator`], and a reason a person can act on when the
//! GPU cannot be used (no loader, no driver, a driver whose device Dawn
//! rejects). Only the stable core Vulkan 1.0 ABI is used: create an
//! instance, enumerate physical devices, read their properties, destroy.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

/// The loader's soname, as Dawn opens it.
const LOADER: &str = "libvulkan.so.1";

/// What the Vulkan loader reports on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VulkanProbe {
    /// `libvulkan.so.1` could not be opened (the dynamic linker's message).
    NoLoader(String),
    /// The loader found no driver (ICD), or no driver offered a device.
    NoDevice,
    /// `vkCreateInstance` or `vkEnumeratePhysicalDevices` failed otherwise.
    Failed(String),
    /// The devices, in the loader's order.
    Devices(Vec<VulkanDevice>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VulkanDevice {
    /// `deviceName`, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    pub kind: DeviceKind,
}

/// `VkPhysicalDeviceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    Other,
    Integrated,
    Discrete,
    Virtual,
    /// A software rasterizer on the CPU (Mesa's lavapipe).
    Cpu,
}

impl DeviceKind {
    fn from_raw(raw: i32) -> DeviceKind {
        match raw {
            1 => DeviceKind::Integrated,
            2 => DeviceKind::Discrete,
            3 => DeviceKind::Virtual,
            4 => DeviceKind::Cpu,
            _ => DeviceKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Other => "other",
            DeviceKind::Integrated => "integrated GPU",
            DeviceKind::Discrete => "discrete GPU",
            DeviceKind::Virtual => "virtual GPU",
            DeviceKind::Cpu => "software, on the CPU",
        }
    }

    /// Dawn's preference for a high-performance adapter (LiteRT asks for
    /// one: `use_low_power=0` in its log); lower is preferred.
    fn rank(self) -> u8 {
        match self {
            DeviceKind::Discrete => 0,
            DeviceKind::Integrated => 1,
            DeviceKind::Virtual => 2,
            DeviceKind::Cpu => 3,
            DeviceKind::Other => 4,
        }
    }
}

impl VulkanProbe {
    /// The device the GPU accelerator most likely runs on: the only one,
    /// or the one Dawn prefers by type when there are several (Dawn does
    /// not tell which it chose).
    pub fn likely_adapter(&self) -> Option<&VulkanDevice> {
        match self {
            VulkanProbe::Devices(devices) => devices.iter().min_by_key(|d| d.kind.rank()),
            _ => None,
        }
    }

    /// One line for people: the devices, or what is missing.
    pub fn describe(&self) -> String {
        match self {
            VulkanProbe::NoLoader(why) => format!("no Vulkan loader ({LOADER}: {why})"),
            VulkanProbe::NoDevice => "the Vulkan loader found no driver or device".into(),
            VulkanProbe::Failed(why) => format!("the Vulkan loader failed: {why}"),
            VulkanProbe::Devices(devices) => {
                let list: Vec<String> = devices
                    .iter()
                    .map(|d| format!("{} ({})", d.name, d.kind.as_str()))
                    .collect();
                format!("Vulkan devices: {}", list.join("; "))
            }
        }
    }
}

/// The probe, done once per process: the set of Vulkan devices does not
/// change while it runs, and each probe loads every installed driver.
pub(crate) fn probe() -> &'static VulkanProbe {
    static PROBE: OnceLock<VulkanProbe> = OnceLock::new();
    PROBE.get_or_init(probe_now)
}

/// `VkInstanceCreateInfo` (core 1.0).
#[repr(C)]
struct InstanceCreateInfo {
    s_type: i32,
    p_next: *const c_void,
    flags: u32,
    p_application_info: *const c_void,
    enabled_layer_count: u32,
    pp_enabled_layer_names: *const *const c_char,
    enabled_extension_count: u32,
    pp_enabled_extension_names: *const *const c_char,
}

/// The head of `VkPhysicalDeviceProperties` (core 1.0, 824 bytes on 64-bit
/// targets), with room to spare for the limits and sparse properties that
/// follow `pipelineCacheUUID`; only the head is read.
#[repr(C)]
struct PhysicalDeviceProperties {
    api_version: u32,
    driver_version: u32,
    vendor_id: u32,
    device_id: u32,
    device_type: i32,
    device_name: [c_char; 256],
    rest: [u64; 128],
}

const _: () = {
    assert!(std::mem::offset_of!(PhysicalDeviceProperties, device_name) == 20);
    assert!(std::mem::size_of::<PhysicalDeviceProperties>() >= 824);
};

const STRUCTURE_TYPE_INSTANCE_CREATE_INFO: i32 = 1;
const SUCCESS: i32 = 0;
const INCOMPLETE: i32 = 5;
const ERROR_INCOMPATIBLE_DRIVER: i32 = -9;

type Handle = *mut c_void;
type VoidFn = unsafe extern "C" fn();
type GetInstanceProcAddr = unsafe extern "C" fn(Handle, *const c_char) -> Option<VoidFn>;
type CreateInstance =
    unsafe extern "C" fn(*const InstanceCreateInfo, *const c_void, *mut Handle) -> i32;
type DestroyInstance = unsafe extern "C" fn(Handle, *const c_void);
type EnumeratePhysicalDevices = unsafe extern "C" fn(Handle, *mut u32, *mut Handle) -> i32;
type GetPhysicalDeviceProperties = unsafe extern "C" fn(Handle, *mut PhysicalDeviceProperties);

fn result_name(result: i32) -> String {
    let name = match result {
        -1 => "VK_ERROR_OUT_OF_HOST_MEMORY",
        -2 => "VK_ERROR_OUT_OF_DEVICE_MEMORY",
        -3 => "VK_ERROR_INITIALIZATION_FAILED",
        -6 => "VK_ERROR_LAYER_NOT_PRESENT",
        -7 => "VK_ERROR_EXTENSION_NOT_PRESENT",
        -9 => "VK_ERROR_INCOMPATIBLE_DRIVER",
        _ => "VkResult",
    };
    format!("{name} ({result})")
}

fn probe_now() -> VulkanProbe {
    // SAFETY: opening the system Vulkan loader runs its initialisers, as
    // Dawn's own dlopen of it would.
    let lib = match unsafe { libloading::Library::new(LOADER) } {
        Ok(lib) => lib,
        // libloading's own text is only "dlopen failed"; the source is
        // the dynamic linker's message.
        Err(e) => {
            return VulkanProbe::NoLoader(match std::error::Error::source(&e) {
                Some(source) => source.to_string(),
                None => e.to_string(),
            })
        }
    };
    // Kept loaded for the life of the process: the GPU accelerator loads
    // the same library anyway, and unloading drivers (LLVM inside lavapipe)
    // only to load them again costs time for nothing.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: the symbol's type is the Vulkan 1.0 prototype.
    let gipa: GetInstanceProcAddr = match unsafe { lib.get(b"vkGetInstanceProcAddr\0") } {
        Ok(sym) => *sym,
        Err(e) => {
            return VulkanProbe::Failed(format!("{LOADER} has no vkGetInstanceProcAddr: {e}"))
        }
    };
    // SAFETY (whole block): every function pointer is obtained from the
    // loader under its Vulkan 1.0 name and transmuted to that prototype;
    // handles are used only between create and destroy; the out-buffers are
    // as large as the loader is told.
    unsafe {
        let lookup = |instance: Handle, name: &CStr| gipa(instance, name.as_ptr());
        let Some(create) = lookup(std::ptr::null_mut(), c"vkCreateInstance") else {
            return VulkanProbe::Failed("vkCreateInstance not found".into());
        };
        let create: CreateInstance = std::mem::transmute::<VoidFn, CreateInstance>(create);
        let info = InstanceCreateInfo {
            s_type: STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
            p_next: std::ptr::null(),
            flags: 0,
            p_application_info: std::ptr::null(),
            enabled_layer_count: 0,
            pp_enabled_layer_names: std::ptr::null(),
            enabled_extension_count: 0,
            pp_enabled_extension_names: std::ptr::null(),
        };
        let mut instance: Handle = std::ptr::null_mut();
        let result = create(&info, std::ptr::null(), &mut instance);
        if result == ERROR_INCOMPATIBLE_DRIVER {
            return VulkanProbe::NoDevice;
        }
        if result != SUCCESS || instance.is_null() {
            return VulkanProbe::Failed(format!("vkCreateInstance: {}", result_name(result)));
        }
        let destroy = lookup(instance, c"vkDestroyInstance")
            .map(|f| std::mem::transmute::<VoidFn, DestroyInstance>(f));
        let outcome = list_devices(instance, &lookup);
        if let Some(destroy) = destroy {
            destroy(instance, std::ptr::null());
        }
        outcome
    }
}

/// # Safety
/// `instance` is a live instance; `lookup` is `vkGetInstanceProcAddr`.
unsafe fn list_devices(
    instance: Handle,
    lookup: &dyn Fn(Handle, &CStr) -> Option<VoidFn>,
) -> VulkanProbe {
    // SAFETY: per the function contract; see probe_now.
    unsafe {
        let (Some(enumerate), Some(properties)) = (
            lookup(instance, c"vkEnumeratePhysicalDevices"),
            lookup(instance, c"vkGetPhysicalDeviceProperties"),
        ) else {
            return VulkanProbe::Failed("the loader lacks core Vulkan 1.0 functions".into());
        };
        let enumerate = std::mem::transmute::<VoidFn, EnumeratePhysicalDevices>(enumerate);
        let properties = std::mem::transmute::<VoidFn, GetPhysicalDeviceProperties>(properties);
        let mut count = 0u32;
        let result = enumerate(instance, &mut count, std::ptr::null_mut());
        if result != SUCCESS {
            return VulkanProbe::Failed(format!(
                "vkEnumeratePhysicalDevices: {}",
                result_name(result)
            ));
        }
        if count == 0 {
            return VulkanProbe::NoDevice;
        }
        let mut handles: Vec<Handle> = vec![std::ptr::null_mut(); count as usize];
        let result = enumerate(instance, &mut count, handles.as_mut_ptr());
        if result != SUCCESS && result != INCOMPLETE {
            return VulkanProbe::Failed(format!(
                "vkEnumeratePhysicalDevices: {}",
                result_name(result)
            ));
        }
        handles.truncate(count as usize);
        let devices = handles
            .into_iter()
            .map(|device| {
                let mut props: PhysicalDeviceProperties = std::mem::zeroed();
                properties(device, &mut props);
                // deviceName is NUL-terminated within its 256 bytes; the
                // last byte is forced to NUL in case a driver is careless.
                props.device_name[255] = 0;
                VulkanDevice {
                    name: CStr::from_ptr(props.device_name.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                    kind: DeviceKind::from_raw(props.device_type),
                }
            })
            .collect::<Vec<_>>();
        if devices.is_empty() {
            VulkanProbe::NoDevice
        } else {
            VulkanProbe::Devices(devices)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, kind: DeviceKind) -> VulkanDevice {
        VulkanDevice {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn the_adapter_dawn_prefers_is_the_discrete_one_then_integrated_then_software() {
        let probe = VulkanProbe::Devices(vec![
            device("llvmpipe", DeviceKind::Cpu),
            device("Mali-G610", DeviceKind::Integrated),
        ]);
        assert_eq!(
            probe.likely_adapter().map(|d| d.name.as_str()),
            Some("Mali-G610")
        );
        let probe = VulkanProbe::Devices(vec![
            device("Intel UHD", DeviceKind::Integrated),
            device("Radeon", DeviceKind::Discrete),
        ]);
        assert_eq!(
            probe.likely_adapter().map(|d| d.name.as_str()),
            Some("Radeon")
        );
        assert_eq!(VulkanProbe::NoDevice.likely_adapter(), None);
    }

    #[test]
    fn descriptions_name_what_is_missing() {
        assert!(VulkanProbe::NoLoader("cannot open".into())
            .describe()
            .contains("libvulkan.so.1"));
        assert!(VulkanProbe::NoDevice.describe().contains("no driver"));
        let d =
            VulkanProbe::Devices(vec![device("llvmpipe (LLVM 15)", DeviceKind::Cpu)]).describe();
        assert_eq!(
            d,
            "Vulkan devices: llvmpipe (LLVM 15) (software, on the CPU)"
        );
    }
}
