//! QNN probe: the Qualcomm AI Engine Direct (QNN) runtime libraries and the
//! SoC the kernel reports in `/sys/devices/soc0`.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};

use libloading::Library;

use super::files::{describe_dirs, find_library, read_trimmed, sorted_names, wildcard_match};
use super::{Findings, ProbeRoots, host_display};
use crate::error::HardwareError;
use crate::platform::{DeviceId, Platform};
use crate::report::DeviceInfo;

const HTP_LIBRARY: &str = "libQnnHtp.so";
/// Other backends and helpers worth reporting next to the HTP backend.
const OTHER_LIBRARIES: [(&str, &str); 3] = [
    ("libQnnCpu.so", "qnn_cpu"),
    ("libQnnGpu.so", "qnn_gpu"),
    ("libQnnSystem.so", "qnn_system"),
];
/// `QNN_SUCCESS`.
const QNN_SUCCESS: u64 = 0;

/// `Qnn_Version_t`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QnnVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

/// The leading fields of `QnnInterface_t` (QnnInterface.h). Only these are
/// read; the function table that follows is never touched, so its size does
/// not matter.
#[repr(C)]
struct QnnInterfaceHead {
    backend_id: u32,
    provider_name: *const c_char,
    core_api_version: QnnVersion,
    backend_api_version: QnnVersion,
}

/// The library search path, then `$QNN_SDK_ROOT/lib/<target>/`, with
/// directories for this build's architecture first (an SDK ships libraries
/// for several targets side by side).
fn search_dirs(roots: &ProbeRoots) -> Vec<PathBuf> {
    let mut dirs = roots.library_dirs.clone();
    if let Some(sdk) = &roots.qnn_sdk_root {
        let lib = sdk.join("lib");
        let mut targets = sorted_names(&lib);
        let arch = std::env::consts::ARCH;
        targets.sort_by_key(|name| !name.starts_with(arch));
        dirs.extend(targets.into_iter().map(|name| lib.join(name)));
    }
    dirs.retain(|dir| dir.is_dir());
    dirs
}

/// Hexagon versions the SDK has stubs for next to the HTP library
/// (`libQnnHtpV68Stub.so` -> `v68`): which DSP generations it can drive.
fn hexagon_versions(dir: &Path) -> Vec<String> {
    let mut versions: Vec<String> = sorted_names(dir)
        .into_iter()
        .filter(|name| wildcard_match("libQnnHtpV*Stub.so", name))
        .filter_map(|name| {
            let digits = name.strip_prefix("libQnnHtpV")?.strip_suffix("Stub.so")?;
            digits.chars().all(|c| c.is_ascii_digit()).then(|| format!("v{digits}"))
        })
        .collect();
    versions.dedup();
    versions
}

struct SocInfo {
    machine: Option<String>,
    family: Option<String>,
    soc_id: Option<String>,
    revision: Option<String>,
}

fn read_soc(roots: &ProbeRoots) -> SocInfo {
    let soc = roots.path("/sys/devices/soc0");
    SocInfo {
        machine: read_trimmed(&soc.join("machine")),
        family: read_trimmed(&soc.join("family")),
        soc_id: read_trimmed(&soc.join("soc_id")),
        revision: read_trimmed(&soc.join("revision")),
    }
}

/// Loads the HTP backend and asks it for its interface providers, which
/// carries the QNN API version. Fails with the loader's reason when the file
/// is not a loadable library for this machine.
fn query_providers(path: &Path) -> Result<(String, String), HardwareError> {
    // SAFETY: loading runs the library's initialisers; it is Qualcomm's QNN
    // backend library, meant to be dlopened by applications.
    let library = unsafe { Library::new(path) }.map_err(|source| HardwareError::LibraryLoad {
        path: path.to_path_buf(),
        source,
    })?;
    type GetProviders = unsafe extern "C" fn(*mut *const *const QnnInterfaceHead, *mut u32) -> u64;
    // SAFETY: signature from QnnInterface.h:
    // Qnn_ErrorHandle_t QnnInterface_getProviders(const QnnInterface_t***, uint32_t*).
    let get_providers = unsafe { library.get::<GetProviders>(b"QnnInterface_getProviders") }
        .map(|symbol| *symbol)
        .map_err(|source| HardwareError::MissingSymbol {
            path: path.to_path_buf(),
            symbol: "QnnInterface_getProviders".to_string(),
            source,
        })?;
    let mut providers: *const *const QnnInterfaceHead = std::ptr::null();
    let mut count: u32 = 0;
    // SAFETY: valid out pointers; the library stays loaded for this call.
    let status = unsafe { get_providers(&mut providers, &mut count) };
    if status != QNN_SUCCESS || providers.is_null() || count == 0 {
        return Err(HardwareError::ForeignCall {
            function: "QnnInterface_getProviders",
            message: format!("status {status}, {count} provider(s)"),
        });
    }
    // SAFETY: the backend returned `count` >= 1 pointers to static
    // interface records; only the leading fields are read.
    let first = unsafe { *providers };
    if first.is_null() {
        return Err(HardwareError::ForeignCall {
            function: "QnnInterface_getProviders",
            message: "null provider".to_string(),
        });
    }
    // SAFETY: checked non-null; points at a static QnnInterface_t inside the
    // library, which `library` keeps loaded until this function returns
    // (after the last read). `QnnInterfaceHead` is `repr(C)` with exactly
    // the leading fields of QnnInterface_t, so reading it stays in bounds.
    let head = unsafe { &*first };
    let name = if head.provider_name.is_null() {
        format!("backend {}", head.backend_id)
    } else {
        // SAFETY: provider names are static NUL-terminated strings.
        unsafe { CStr::from_ptr(head.provider_name) }
            .to_string_lossy()
            .into_owned()
    };
    let core = head.core_api_version;
    let backend = head.backend_api_version;
    Ok((
        name,
        format!(
            "QNN API {}.{}.{} (backend API {}.{}.{})",
            core.major, core.minor, core.patch, backend.major, backend.minor, backend.patch
        ),
    ))
}

pub(super) fn probe(roots: &ProbeRoots) -> Findings {
    let dirs = search_dirs(roots);
    let soc = read_soc(roots);
    let soc_display = host_display(&roots.path("/sys/devices/soc0"), roots);
    let Some(htp) = find_library(&dirs, &[HTP_LIBRARY]) else {
        let soc_note = soc
            .machine
            .as_deref()
            .map(|machine| format!("; SoC {machine} visible in {soc_display}"))
            .unwrap_or_default();
        return Findings::absent(format!(
            "{HTP_LIBRARY} not found in: {}{soc_note}",
            describe_dirs(&dirs)
        ));
    };

    let mut libraries = vec![htp.display().to_string()];
    let mut capabilities = vec!["htp".to_string()];
    let htp_dir = htp.parent().map(Path::to_path_buf).unwrap_or_default();
    for version in hexagon_versions(&htp_dir) {
        capabilities.push(format!("hexagon_{version}"));
    }
    for (library, tag) in OTHER_LIBRARIES {
        if let Some(path) = find_library(&dirs, &[library]) {
            libraries.push(path.display().to_string());
            capabilities.push(tag.to_string());
        }
    }

    let mut properties = BTreeMap::new();
    for (key, value) in [
        ("soc_machine", &soc.machine),
        ("soc_family", &soc.family),
        ("soc_id", &soc.soc_id),
        ("soc_revision", &soc.revision),
    ] {
        if let Some(value) = value {
            properties.insert(key.to_string(), value.clone());
        }
    }

    let mut reason = format!("{} found", htp.display());
    let driver_version = match query_providers(&htp) {
        Ok((provider, version)) => {
            properties.insert("provider".to_string(), provider);
            reason.push_str(&format!(", {version}"));
            Some(version)
        }
        Err(error) => {
            reason.push_str(&format!(", not queried: {error}"));
            None
        }
    };
    // Qualcomm kernels report the family as "Snapdragon"; other SoCs also
    // fill in soc0, and their name would mislabel the HTP.
    let qualcomm_soc = soc
        .family
        .as_deref()
        .is_some_and(|family| family.contains("Snapdragon"));
    match &soc.machine {
        Some(machine) => reason.push_str(&format!(
            "; SoC {machine}{}",
            soc.soc_id
                .as_deref()
                .map(|id| format!(" (soc_id {id})"))
                .unwrap_or_default()
        )),
        None => reason.push_str(&format!(
            "; {soc_display}: no SoC info (HTP hardware unconfirmed; an x86 SDK install only simulates it)"
        )),
    }

    let name = match &soc.machine {
        Some(machine) if qualcomm_soc => format!("Qualcomm {machine} HTP"),
        _ => "Qualcomm HTP".to_string(),
    };
    Findings {
        present: true,
        reason,
        driver_version,
        libraries,
        devices: vec![DeviceInfo {
            id: DeviceId::new(Platform::Qnn, 0),
            name,
            // The HTP works out of shared system memory and reports none of
            // its own.
            total_bytes: None,
            free_bytes: None,
            capabilities,
            properties,
        }],
    }
}
