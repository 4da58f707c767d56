//! OpenVINO probe: finds the runtime library and, when its C API loads, asks
//! it for the available devices (`CPU`, `GPU.0`, `NPU`, ...).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use libloading::Library;

use super::files::{describe_dirs, find_library, sorted_names};
use super::{Findings, ProbeRoots};
use crate::error::HardwareError;
use crate::platform::{DeviceId, Platform};
use crate::report::DeviceInfo;

const C_API_PATTERNS: [&str; 2] = ["libopenvino_c.so", "libopenvino_c.so.*"];
const CORE_PATTERNS: [&str; 2] = ["libopenvino.so", "libopenvino.so.*"];
/// `ov_status_e::OK`.
const OV_OK: c_int = 0;

/// `ov_available_devices_t`.
#[repr(C)]
struct OvAvailableDevices {
    devices: *mut *mut c_char,
    size: usize,
}

/// `ov_version_t`.
#[repr(C)]
struct OvVersion {
    build_number: *const c_char,
    description: *const c_char,
}

/// Directories an OpenVINO install puts its libraries in, for an install
/// rooted at `install` (`.../openvino_2024.4.0`).
fn runtime_lib_dirs(install: &Path) -> Vec<PathBuf> {
    ["intel64", "aarch64", "arm64", "armv7l"]
        .iter()
        .map(|arch| install.join("runtime/lib").join(arch))
        .collect()
}

/// Where to look: the library search path, `$INTEL_OPENVINO_DIR`, then the
/// archive installs under `/opt/intel/openvino*`.
fn search_dirs(roots: &ProbeRoots) -> Vec<PathBuf> {
    let mut dirs = roots.library_dirs.clone();
    if let Some(install) = &roots.openvino_dir {
        dirs.extend(runtime_lib_dirs(install));
    }
    let opt_intel = roots.path("/opt/intel");
    for name in sorted_names(&opt_intel).into_iter().rev() {
        // Newest version first: names sort by version within one scheme.
        if name.starts_with("openvino") {
            dirs.extend(runtime_lib_dirs(&opt_intel.join(name)));
        }
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if dir.is_dir() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

pub(super) fn probe(roots: &ProbeRoots) -> Findings {
    let dirs = search_dirs(roots);
    let c_api = find_library(&dirs, &C_API_PATTERNS);
    let core = find_library(&dirs, &CORE_PATTERNS);
    let libraries: Vec<String> = c_api
        .iter()
        .chain(core.iter())
        .map(|path| path.display().to_string())
        .collect();

    let Some(c_api) = c_api else {
        return match core {
            Some(core) => Findings {
                present: true,
                reason: format!(
                    "found {} but not the C API library libopenvino_c.so; devices not queried",
                    core.display()
                ),
                libraries,
                ..Findings::default()
            },
            None => Findings::absent(format!("libopenvino_c.so not found in: {}", describe_dirs(&dirs))),
        };
    };

    match query(&c_api) {
        Ok(answer) => {
            let reason = format!(
                "{}: {} device(s): {}",
                c_api.display(),
                answer.devices.len(),
                answer
                    .devices
                    .iter()
                    .map(|device| device.properties.get("openvino_device").cloned().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Findings {
                present: true,
                reason,
                driver_version: answer.version,
                libraries,
                devices: answer.devices,
            }
        }
        Err(error) => Findings {
            present: true,
            reason: format!("runtime present but devices not queried: {error}"),
            libraries,
            ..Findings::default()
        },
    }
}

struct OvAnswer {
    version: Option<String>,
    devices: Vec<DeviceInfo>,
}

/// The C API entry points used here. Function pointers stay valid while
/// `_library` is alive.
struct OvApi {
    core_create: unsafe extern "C" fn(*mut *mut c_void) -> c_int,
    core_free: unsafe extern "C" fn(*mut c_void),
    available_devices: unsafe extern "C" fn(*const c_void, *mut OvAvailableDevices) -> c_int,
    available_devices_free: unsafe extern "C" fn(*mut OvAvailableDevices),
    /// Optional extras: a device's full name and memory, the runtime version.
    core_get_property:
        Option<unsafe extern "C" fn(*const c_void, *const c_char, *const c_char, *mut *mut c_char) -> c_int>,
    free_string: Option<unsafe extern "C" fn(*const c_char)>,
    get_version: Option<unsafe extern "C" fn(*mut OvVersion) -> c_int>,
    version_free: Option<unsafe extern "C" fn(*mut OvVersion)>,
    _library: Library,
}

/// # Safety
/// `T` must be the symbol's real C signature.
unsafe fn symbol<T: Copy>(library: &Library, path: &Path, name: &str) -> Result<T, HardwareError> {
    // SAFETY: the caller guarantees `T` matches the symbol's signature.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|symbol| *symbol)
        .map_err(|source| HardwareError::MissingSymbol {
            path: path.to_path_buf(),
            symbol: name.to_string(),
            source,
        })
}

fn query(path: &Path) -> Result<OvAnswer, HardwareError> {
    // SAFETY: loading runs the library's initialisers; this is the OpenVINO
    // runtime's own C API library, meant to be loaded by applications.
    let library = unsafe { Library::new(path) }.map_err(|source| HardwareError::LibraryLoad {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: signatures copied from openvino/c/ov_core.h and ov_common.h.
    let api = unsafe {
        OvApi {
            core_create: symbol(&library, path, "ov_core_create")?,
            core_free: symbol(&library, path, "ov_core_free")?,
            available_devices: symbol(&library, path, "ov_core_get_available_devices")?,
            available_devices_free: symbol(&library, path, "ov_available_devices_free")?,
            core_get_property: symbol(&library, path, "ov_core_get_property").ok(),
            free_string: symbol(&library, path, "ov_free").ok(),
            get_version: symbol(&library, path, "ov_get_openvino_version").ok(),
            version_free: symbol(&library, path, "ov_version_free").ok(),
            _library: library,
        }
    };
    let version = api.version();

    let mut core: *mut c_void = std::ptr::null_mut();
    // SAFETY: `core` is a valid out pointer.
    let status = unsafe { (api.core_create)(&mut core) };
    if status != OV_OK || core.is_null() {
        return Err(HardwareError::ForeignCall {
            function: "ov_core_create",
            message: format!("status {status}"),
        });
    }
    let names = api.device_names(core);
    let devices = names.map(|names| {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| api.device_info(core, index as u32, name))
            .collect()
    });
    // SAFETY: `core` came from ov_core_create and is freed exactly once.
    unsafe { (api.core_free)(core) };
    Ok(OvAnswer {
        version,
        devices: devices?,
    })
}

/// Copies a C string the runtime returned; null becomes `None`.
///
/// # Safety
/// `pointer` must be null or a valid NUL-terminated string.
unsafe fn owned_string(pointer: *const c_char) -> Option<String> {
    if pointer.is_null() {
        return None;
    }
    // SAFETY: non-null, and the caller guarantees NUL termination.
    let text = unsafe { CStr::from_ptr(pointer) };
    Some(text.to_string_lossy().into_owned())
}

impl OvApi {
    fn version(&self) -> Option<String> {
        let (get_version, version_free) = (self.get_version?, self.version_free?);
        let mut version = OvVersion {
            build_number: std::ptr::null(),
            description: std::ptr::null(),
        };
        // SAFETY: `version` is a valid out struct of the C layout.
        if unsafe { get_version(&mut version) } != OV_OK {
            return None;
        }
        // SAFETY: on success the runtime filled in a valid string or null.
        let build = unsafe { owned_string(version.build_number) };
        // SAFETY: frees what ov_get_openvino_version allocated, once.
        unsafe { version_free(&mut version) };
        build
    }

    fn device_names(&self, core: *mut c_void) -> Result<Vec<String>, HardwareError> {
        let mut list = OvAvailableDevices {
            devices: std::ptr::null_mut(),
            size: 0,
        };
        // SAFETY: `core` is live; `list` is a valid out struct.
        let status = unsafe { (self.available_devices)(core, &mut list) };
        if status != OV_OK {
            return Err(HardwareError::ForeignCall {
                function: "ov_core_get_available_devices",
                message: format!("status {status}"),
            });
        }
        let mut names = Vec::with_capacity(list.size);
        if !list.devices.is_null() {
            for position in 0..list.size {
                // SAFETY: the runtime returned `size` entries at `devices`.
                let entry = unsafe { *list.devices.add(position) };
                // SAFETY: each entry is a NUL-terminated string or null.
                if let Some(name) = unsafe { owned_string(entry) } {
                    names.push(name);
                }
            }
        }
        // SAFETY: frees the list ov_core_get_available_devices filled, once.
        unsafe { (self.available_devices_free)(&mut list) };
        Ok(names)
    }

    /// A string property of a device, or `None` if the runtime lacks the
    /// calls or the device does not know the key.
    fn property(&self, core: *mut c_void, device: &str, key: &str) -> Option<String> {
        let (get_property, free_string) = (self.core_get_property?, self.free_string?);
        let device = CString::new(device).ok()?;
        let key = CString::new(key).ok()?;
        let mut value: *mut c_char = std::ptr::null_mut();
        // SAFETY: live core, NUL-terminated arguments, valid out pointer.
        let status = unsafe { get_property(core, device.as_ptr(), key.as_ptr(), &mut value) };
        if status != OV_OK {
            return None;
        }
        // SAFETY: on success `value` is a runtime-allocated string or null.
        let text = unsafe { owned_string(value) };
        if !value.is_null() {
            // SAFETY: `value` was allocated by the runtime; freed once.
            unsafe { free_string(value) };
        }
        text
    }

    fn device_info(&self, core: *mut c_void, index: u32, device: &str) -> DeviceInfo {
        let full_name = self.property(core, device, "FULL_DEVICE_NAME");
        // Discrete Intel GPUs report their memory; CPU and NPU use host memory.
        let total_bytes = device
            .starts_with("GPU")
            .then(|| self.property(core, device, "GPU_DEVICE_TOTAL_MEM_SIZE"))
            .flatten()
            .and_then(|text| text.trim().parse().ok());
        let kind = device.split('.').next().unwrap_or(device).to_lowercase();
        DeviceInfo {
            id: DeviceId::new(Platform::OpenVino, index),
            name: full_name.unwrap_or_else(|| device.to_string()),
            total_bytes,
            free_bytes: None,
            capabilities: vec![kind],
            properties: BTreeMap::from([("openvino_device".to_string(), device.to_string())]),
        }
    }
}
