//! CUDA probe: NVIDIA GPUs through NVML (loaded at run time, never linked)
//! and the driver's `/proc/driver/nvidia` files.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};

use libloading::Library;
use serde::{Deserialize, Serialize};

use super::files::{describe_dirs, find_library, parse_colon_separated, read_text, sorted_names};
use super::{Findings, ProbeRoots, host_display};
use crate::error::HardwareError;
use crate::platform::{DeviceId, Platform};
use crate::report::DeviceInfo;

/// Where NVML answers come from. The real one loads libnvidia-ml at run time
/// ([`DynamicNvml`]); tests inject a recorded [`NvmlSnapshot`].
pub trait NvmlSource: Send + Sync {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError>;
}

/// Everything the CUDA probe asks NVML, in one answer. Serializable so an
/// answer recorded on a real host can be replayed from a fixture file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlSnapshot {
    /// The library that answered (full path), if any.
    pub library: Option<String>,
    /// `nvmlSystemGetDriverVersion`.
    pub driver_version: Option<String>,
    /// In NVML index order (PCI bus order).
    pub devices: Vec<NvmlDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlDevice {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub compute_capability: Option<ComputeCapability>,
    /// Per-device calls that failed (e.g. memory info on some MIG setups);
    /// the device is still reported.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl NvmlSource for NvmlSnapshot {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError> {
        Ok(self.clone())
    }
}

/// NVML loaded with `dlopen` from the given directories, so a host without
/// the NVIDIA driver simply reports "not found".
#[derive(Debug, Clone)]
pub struct DynamicNvml {
    pub library_dirs: Vec<PathBuf>,
}

const NVML_LIBRARY_NAMES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];
const NVML_SUCCESS: c_int = 0;
/// NVML_DEVICE_NAME_V2_BUFFER_SIZE / NVML_DEVICE_UUID_V2_BUFFER_SIZE.
const NVML_DEVICE_STRING_BUFFER: usize = 96;
/// NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE.
const NVML_DRIVER_VERSION_BUFFER: usize = 80;

type NvmlDeviceHandle = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

/// The NVML entry points the probe uses, resolved once. The function
/// pointers stay valid while `_library` is alive, which is as long as this
/// struct.
struct NvmlApi {
    path: PathBuf,
    init: unsafe extern "C" fn() -> c_int,
    shutdown: unsafe extern "C" fn() -> c_int,
    device_count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    handle_by_index: unsafe extern "C" fn(c_uint, *mut NvmlDeviceHandle) -> c_int,
    device_name: unsafe extern "C" fn(NvmlDeviceHandle, *mut c_char, c_uint) -> c_int,
    memory_info: unsafe extern "C" fn(NvmlDeviceHandle, *mut NvmlMemory) -> c_int,
    compute_capability: unsafe extern "C" fn(NvmlDeviceHandle, *mut c_int, *mut c_int) -> c_int,
    driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> c_int,
    /// Optional: only used to make messages and CUDA_VISIBLE_DEVICES
    /// matching better.
    device_uuid: Option<unsafe extern "C" fn(NvmlDeviceHandle, *mut c_char, c_uint) -> c_int>,
    error_string: Option<unsafe extern "C" fn(c_int) -> *const c_char>,
    _library: Library,
}

/// Resolves `name` in `library` as a function pointer of type `T`.
///
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

impl NvmlApi {
    fn load(path: &Path) -> Result<NvmlApi, HardwareError> {
        // SAFETY: loading runs the library's initialisers; libnvidia-ml is
        // the driver's own library and is meant to be dlopened by monitoring
        // tools.
        let library = unsafe { Library::new(path) }.map_err(|source| HardwareError::LibraryLoad {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: every signature below is copied from nvml.h.
        unsafe {
            Ok(NvmlApi {
                path: path.to_path_buf(),
                init: symbol(&library, path, "nvmlInit_v2")?,
                shutdown: symbol(&library, path, "nvmlShutdown")?,
                device_count: symbol(&library, path, "nvmlDeviceGetCount_v2")?,
                handle_by_index: symbol(&library, path, "nvmlDeviceGetHandleByIndex_v2")?,
                device_name: symbol(&library, path, "nvmlDeviceGetName")?,
                memory_info: symbol(&library, path, "nvmlDeviceGetMemoryInfo")?,
                compute_capability: symbol(&library, path, "nvmlDeviceGetCudaComputeCapability")?,
                driver_version: symbol(&library, path, "nvmlSystemGetDriverVersion")?,
                device_uuid: symbol(&library, path, "nvmlDeviceGetUUID").ok(),
                error_string: symbol(&library, path, "nvmlErrorString").ok(),
                _library: library,
            })
        }
    }

    fn check(&self, function: &'static str, code: c_int) -> Result<(), HardwareError> {
        if code == NVML_SUCCESS {
            return Ok(());
        }
        let text = self.error_string.and_then(|error_string| {
            // SAFETY: nvmlErrorString returns a static NUL-terminated string
            // (or null) for any code.
            let pointer = unsafe { error_string(code) };
            if pointer.is_null() {
                return None;
            }
            // SAFETY: checked non-null above; NVML owns the static string.
            let text = unsafe { CStr::from_ptr(pointer) };
            Some(text.to_string_lossy().into_owned())
        });
        Err(HardwareError::ForeignCall {
            function,
            message: match text {
                Some(text) => format!("{text} (NVML error {code})"),
                None => format!("NVML error {code}"),
            },
        })
    }

    /// Calls NVML between init and shutdown.
    fn snapshot(&self) -> Result<NvmlSnapshot, HardwareError> {
        // SAFETY: nvmlInit_v2 takes no arguments.
        self.check("nvmlInit_v2", unsafe { (self.init)() })?;
        let result = self.query_initialised();
        // SAFETY: balanced with the successful init above.
        let shutdown = unsafe { (self.shutdown)() };
        if shutdown != NVML_SUCCESS {
            tracing::debug!(code = shutdown, "nvmlShutdown failed");
        }
        result
    }

    fn query_initialised(&self) -> Result<NvmlSnapshot, HardwareError> {
        let mut driver = [0 as c_char; NVML_DRIVER_VERSION_BUFFER];
        // SAFETY: the buffer is as long as the length we pass.
        let driver_code = unsafe { (self.driver_version)(driver.as_mut_ptr(), NVML_DRIVER_VERSION_BUFFER as c_uint) };
        let driver_version = self
            .check("nvmlSystemGetDriverVersion", driver_code)
            .ok()
            .map(|()| c_buffer_to_string(&driver));

        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid out pointer.
        self.check("nvmlDeviceGetCount_v2", unsafe { (self.device_count)(&mut count) })?;

        let mut devices = Vec::new();
        for index in 0..count {
            let mut handle: NvmlDeviceHandle = std::ptr::null_mut();
            // SAFETY: `handle` is a valid out pointer; index < count.
            let code = unsafe { (self.handle_by_index)(index, &mut handle) };
            if let Err(error) = self.check("nvmlDeviceGetHandleByIndex_v2", code) {
                // A device that cannot be opened (e.g. lost off the bus) is
                // skipped; the others are still usable.
                tracing::warn!(index, %error, "NVML device skipped");
                continue;
            }
            devices.push(self.device(index, handle));
        }
        Ok(NvmlSnapshot {
            library: Some(self.path.display().to_string()),
            driver_version,
            devices,
        })
    }

    fn device(&self, index: u32, handle: NvmlDeviceHandle) -> NvmlDevice {
        let mut errors = Vec::new();

        let mut name_buffer = [0 as c_char; NVML_DEVICE_STRING_BUFFER];
        // SAFETY: valid handle from NVML; buffer length matches.
        let code = unsafe { (self.device_name)(handle, name_buffer.as_mut_ptr(), NVML_DEVICE_STRING_BUFFER as c_uint) };
        let name = match self.check("nvmlDeviceGetName", code) {
            Ok(()) => c_buffer_to_string(&name_buffer),
            Err(error) => {
                errors.push(error.to_string());
                format!("NVIDIA GPU {index}")
            }
        };

        let uuid = self.device_uuid.and_then(|device_uuid| {
            let mut buffer = [0 as c_char; NVML_DEVICE_STRING_BUFFER];
            // SAFETY: valid handle; buffer length matches.
            let code = unsafe { device_uuid(handle, buffer.as_mut_ptr(), NVML_DEVICE_STRING_BUFFER as c_uint) };
            (code == NVML_SUCCESS).then(|| c_buffer_to_string(&buffer))
        });

        let mut memory = NvmlMemory::default();
        // SAFETY: valid handle; `memory` matches nvmlMemory_t.
        let code = unsafe { (self.memory_info)(handle, &mut memory) };
        let (total_bytes, free_bytes) = match self.check("nvmlDeviceGetMemoryInfo", code) {
            Ok(()) => (Some(memory.total), Some(memory.free)),
            Err(error) => {
                errors.push(error.to_string());
                (None, None)
            }
        };
        tracing::trace!(index, used = memory.used, "NVML memory");

        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: valid handle and out pointers.
        let code = unsafe { (self.compute_capability)(handle, &mut major, &mut minor) };
        let compute_capability = match self.check("nvmlDeviceGetCudaComputeCapability", code) {
            Ok(()) => Some(ComputeCapability {
                major: u32::try_from(major).unwrap_or(0),
                minor: u32::try_from(minor).unwrap_or(0),
            }),
            Err(error) => {
                errors.push(error.to_string());
                None
            }
        };

        NvmlDevice {
            index,
            name,
            uuid,
            total_bytes,
            free_bytes,
            compute_capability,
            errors,
        }
    }
}

fn c_buffer_to_string(buffer: &[c_char]) -> String {
    // c_char is i8 or u8 depending on the target; reinterpret as bytes.
    let bytes: Vec<u8> = buffer.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(text) => text.to_string_lossy().trim().to_string(),
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_string(),
    }
}

impl NvmlSource for DynamicNvml {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError> {
        let path =
            find_library(&self.library_dirs, &NVML_LIBRARY_NAMES).ok_or_else(|| HardwareError::LibraryNotFound {
                library: NVML_LIBRARY_NAMES[0].to_string(),
                searched: describe_dirs(&self.library_dirs),
            })?;
        NvmlApi::load(&path)?.snapshot()
    }
}

/// A GPU as listed in `/proc/driver/nvidia/gpus/<bus>/information`.
#[derive(Debug)]
struct ProcGpu {
    bus_location: String,
    model: String,
    uuid: Option<String>,
    device_minor: Option<String>,
}

struct ProcDriver {
    driver_version: Option<String>,
    gpus: Vec<ProcGpu>,
}

/// Reads the NVIDIA kernel driver's procfs files; `None` when the driver is
/// not loaded (the directory does not exist).
fn read_proc_driver(roots: &ProbeRoots) -> Option<ProcDriver> {
    let base = roots.path("/proc/driver/nvidia");
    if !base.is_dir() {
        return None;
    }
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct ..."
    let driver_version = read_text(&base.join("version")).ok().and_then(|text| {
        let line = text.lines().find(|line| line.starts_with("NVRM version:"))?;
        let after = line.split_once("Kernel Module")?.1;
        after.split_whitespace().next().map(str::to_string)
    });
    let gpus_dir = base.join("gpus");
    let gpus = sorted_names(&gpus_dir)
        .into_iter()
        .filter_map(|bus| {
            let info = parse_colon_separated(&read_text(&gpus_dir.join(&bus).join("information")).ok()?);
            Some(ProcGpu {
                bus_location: info.get("Bus Location").cloned().unwrap_or(bus),
                model: info.get("Model").cloned().unwrap_or_else(|| "NVIDIA GPU".to_string()),
                uuid: info.get("GPU UUID").cloned(),
                device_minor: info.get("Device Minor").cloned(),
            })
        })
        .collect();
    Some(ProcDriver { driver_version, gpus })
}

/// A device before CUDA_VISIBLE_DEVICES renumbering.
struct CudaCandidate {
    physical_index: u32,
    uuid: Option<String>,
    info: DeviceInfo,
}

/// Applies `CUDA_VISIBLE_DEVICES` as the CUDA runtime does: entries are
/// indices or UUID prefixes, the list stops at the first entry that names no
/// device, and the survivors are renumbered from 0 in list order.
fn apply_visible_devices(candidates: Vec<CudaCandidate>, visible: Option<&str>) -> (Vec<DeviceInfo>, Option<String>) {
    let Some(visible) = visible else {
        return (candidates.into_iter().map(|c| c.info).collect(), None);
    };
    let mut remaining: Vec<Option<CudaCandidate>> = candidates.into_iter().map(Some).collect();
    let total = remaining.len();
    let mut chosen = Vec::new();
    for entry in visible.split(',').map(str::trim) {
        let position = if let Ok(index) = entry.parse::<u32>() {
            remaining
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.physical_index == index))
        } else if !entry.is_empty() {
            let matches: Vec<usize> = remaining
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.as_ref()
                        .and_then(|c| c.uuid.as_deref())
                        .is_some_and(|uuid| uuid.starts_with(entry))
                })
                .map(|(position, _)| position)
                .collect();
            // An ambiguous prefix names no device, as in CUDA.
            (matches.len() == 1).then(|| matches[0])
        } else {
            None
        };
        let Some(candidate) = position.and_then(|position| remaining[position].take()) else {
            break;
        };
        chosen.push(candidate);
    }
    let note = format!(
        "CUDA_VISIBLE_DEVICES={visible:?} leaves {} of {total} device(s)",
        chosen.len()
    );
    let devices = chosen
        .into_iter()
        .enumerate()
        .map(|(new_index, mut candidate)| {
            candidate.info.id = DeviceId::new(Platform::Cuda, new_index as u32);
            candidate.info
        })
        .collect();
    (devices, Some(note))
}

/// Tags kernels select on, from the compute capability.
fn capabilities(cc: ComputeCapability) -> Vec<String> {
    let version = cc.major * 10 + cc.minor;
    let mut tags = vec![format!("sm_{}{}", cc.major, cc.minor)];
    for (minimum, tag) in [
        (53, "fp16"),
        (70, "tensor_cores"),
        (80, "bf16"),
        (80, "tf32"),
        (89, "fp8"),
    ] {
        if version >= minimum {
            tags.push(tag.to_string());
        }
    }
    tags
}

pub(super) fn probe(roots: &ProbeRoots) -> Findings {
    let dynamic;
    let source: &dyn NvmlSource = match &roots.nvml {
        Some(injected) => injected.as_ref(),
        None => {
            dynamic = DynamicNvml {
                library_dirs: roots.library_dirs.clone(),
            };
            &dynamic
        }
    };
    let nvml = source.query();
    let proc_driver = read_proc_driver(roots);
    let proc_path = host_display(&roots.path("/proc/driver/nvidia"), roots);

    // Bus locations from procfs, by UUID, to enrich NVML devices.
    let bus_by_uuid: BTreeMap<String, &ProcGpu> = proc_driver
        .iter()
        .flat_map(|driver| &driver.gpus)
        .filter_map(|gpu| Some((gpu.uuid.clone()?, gpu)))
        .collect();

    match nvml {
        Ok(snapshot) => {
            let candidates = snapshot
                .devices
                .iter()
                .map(|device| {
                    let mut properties = BTreeMap::from([("nvml_index".to_string(), device.index.to_string())]);
                    if let Some(uuid) = &device.uuid {
                        properties.insert("uuid".to_string(), uuid.clone());
                        if let Some(gpu) = bus_by_uuid.get(uuid) {
                            properties.insert("pci_bus_id".to_string(), gpu.bus_location.clone());
                        }
                    }
                    if let Some(cc) = device.compute_capability {
                        properties.insert("compute_capability".to_string(), format!("{}.{}", cc.major, cc.minor));
                    }
                    if !device.errors.is_empty() {
                        properties.insert("errors".to_string(), device.errors.join("; "));
                    }
                    CudaCandidate {
                        physical_index: device.index,
                        uuid: device.uuid.clone(),
                        info: DeviceInfo {
                            id: DeviceId::new(Platform::Cuda, device.index),
                            name: device.name.clone(),
                            total_bytes: device.total_bytes,
                            free_bytes: device.free_bytes,
                            capabilities: device.compute_capability.map(capabilities).unwrap_or_default(),
                            properties,
                        },
                    }
                })
                .collect();
            let (devices, visibility) = apply_visible_devices(candidates, roots.cuda_visible_devices.as_deref());
            let driver_version = snapshot
                .driver_version
                .clone()
                .or_else(|| proc_driver.as_ref().and_then(|d| d.driver_version.clone()));
            let mut reason = format!(
                "NVML{} reports {} device(s)",
                snapshot
                    .library
                    .as_deref()
                    .map(|library| format!(" ({library})"))
                    .unwrap_or_default(),
                snapshot.devices.len()
            );
            if let Some(version) = &driver_version {
                reason.push_str(&format!(", driver {version}"));
            }
            if let Some(note) = visibility {
                reason.push_str(&format!("; {note}"));
            }
            Findings {
                present: !devices.is_empty(),
                reason,
                driver_version,
                libraries: snapshot.library.into_iter().collect(),
                devices,
            }
        }
        Err(nvml_error) => match proc_driver {
            Some(driver) if !driver.gpus.is_empty() => {
                let candidates = driver
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(position, gpu)| {
                        let mut properties = BTreeMap::from([("pci_bus_id".to_string(), gpu.bus_location.clone())]);
                        if let Some(uuid) = &gpu.uuid {
                            properties.insert("uuid".to_string(), uuid.clone());
                        }
                        if let Some(minor) = &gpu.device_minor {
                            properties.insert("device_minor".to_string(), minor.clone());
                        }
                        // NVML numbers devices in PCI bus order, which is the
                        // order of the sorted bus directories.
                        CudaCandidate {
                            physical_index: position as u32,
                            uuid: gpu.uuid.clone(),
                            info: DeviceInfo {
                                id: DeviceId::new(Platform::Cuda, position as u32),
                                name: gpu.model.clone(),
                                total_bytes: None,
                                free_bytes: None,
                                capabilities: Vec::new(),
                                properties,
                            },
                        }
                    })
                    .collect();
                let (devices, visibility) = apply_visible_devices(candidates, roots.cuda_visible_devices.as_deref());
                let mut reason = format!(
                    "{proc_path}/gpus lists {} GPU(s){}; NVML unavailable ({nvml_error}), so memory and compute capability are unknown",
                    driver.gpus.len(),
                    driver
                        .driver_version
                        .as_deref()
                        .map(|version| format!(", driver {version}"))
                        .unwrap_or_default(),
                );
                if let Some(note) = visibility {
                    reason.push_str(&format!("; {note}"));
                }
                Findings {
                    present: !devices.is_empty(),
                    reason,
                    driver_version: driver.driver_version,
                    libraries: Vec::new(),
                    devices,
                }
            }
            Some(_) => Findings::absent(format!("{nvml_error}; {proc_path}/gpus lists no GPUs")),
            None => Findings::absent(format!(
                "{nvml_error}; {proc_path}: not found (NVIDIA driver not loaded)"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(index: u32, uuid: &str) -> CudaCandidate {
        CudaCandidate {
            physical_index: index,
            uuid: Some(uuid.to_string()),
            info: DeviceInfo {
                id: DeviceId::new(Platform::Cuda, index),
                name: format!("gpu{index}"),
                total_bytes: None,
                free_bytes: None,
                capabilities: Vec::new(),
                properties: BTreeMap::new(),
            },
        }
    }

    fn names(devices: &[DeviceInfo]) -> Vec<(String, String)> {
        devices.iter().map(|d| (d.id.to_string(), d.name.clone())).collect()
    }

    #[test]
    fn visible_devices_reorder_renumber_and_stop_at_unknown_entries() {
        let all = || {
            vec![
                candidate(0, "GPU-aaa"),
                candidate(1, "GPU-bbb"),
                candidate(2, "GPU-abc"),
            ]
        };
        let (devices, note) = apply_visible_devices(all(), Some("2,0"));
        assert_eq!(
            names(&devices),
            [("cuda:0".into(), "gpu2".into()), ("cuda:1".into(), "gpu0".into())]
        );
        assert!(note.unwrap().contains("leaves 2 of 3"));

        let (devices, _) = apply_visible_devices(all(), Some("GPU-bb,7,0"));
        assert_eq!(names(&devices), [("cuda:0".into(), "gpu1".into())]);

        // "GPU-a" matches two devices: ambiguous, so nothing is visible.
        let (devices, _) = apply_visible_devices(all(), Some("GPU-a"));
        assert!(devices.is_empty());

        let (devices, _) = apply_visible_devices(all(), Some(""));
        assert!(devices.is_empty());

        let (devices, note) = apply_visible_devices(all(), None);
        assert_eq!(devices.len(), 3);
        assert!(note.is_none());
    }

    #[test]
    fn compute_capability_maps_to_kernel_tags() {
        assert_eq!(
            capabilities(ComputeCapability { major: 8, minor: 0 }),
            ["sm_80", "fp16", "tensor_cores", "bf16", "tf32"]
        );
        assert_eq!(
            capabilities(ComputeCapability { major: 7, minor: 5 }),
            ["sm_75", "fp16", "tensor_cores"]
        );
        assert!(capabilities(ComputeCapability { major: 9, minor: 0 }).contains(&"fp8".to_string()));
    }

    #[test]
    fn c_buffers_stop_at_nul() {
        let mut buffer = [0 as c_char; 8];
        for (slot, byte) in buffer.iter_mut().zip(b"A100") {
            *slot = *byte as c_char;
        }
        assert_eq!(c_buffer_to_string(&buffer), "A100");
    }
}
