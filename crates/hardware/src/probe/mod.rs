//! Detection: one probe per platform, each on its own thread with a time
//! limit, each reading from injectable roots so recorded machines can be
//! replayed in tests.

mod cpu;
mod cuda;
mod files;
#[cfg(target_os = "macos")]
mod macos;
mod metal;
mod openvino;
mod qnn;
mod rocm;

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

pub use cuda::{ComputeCapability, DynamicNvml, NvmlDevice, NvmlSnapshot, NvmlSource};
pub use files::default_library_dirs;

use crate::error::HardwareError;
use crate::platform::Platform;
use crate::report::{CpuDetails, DeviceInfo, HardwareReport, PlatformReport, SCHEMA_VERSION};

/// How long a probe may run before it is reported as timed out. NVML and the
/// OpenVINO core can hang on a wedged driver; a report that comes back late
/// is worse than one that says "timed out".
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where probes read from. A live host uses `/`; tests point `root` at a
/// recorded tree (`tests/fixtures/<machine>/`) that holds the same paths.
#[derive(Clone)]
pub struct ProbeRoots {
    /// Prefix for `/proc`, `/sys`, `/etc` and `/opt`.
    pub root: PathBuf,
    /// Directories searched for runtime libraries (NVML, OpenVINO, QNN), in
    /// order. Absolute paths on this machine; they are not joined to `root`.
    pub library_dirs: Vec<PathBuf>,
    /// Where NVML answers come from; `None` loads libnvidia-ml from
    /// `library_dirs` at run time.
    pub nvml: Option<Arc<dyn NvmlSource>>,
    /// `CUDA_VISIBLE_DEVICES`: hides and renumbers CUDA devices the same way
    /// the CUDA runtime will, so `cuda:N` means the same device to both.
    pub cuda_visible_devices: Option<String>,
    /// `QNN_SDK_ROOT`: its `lib/*` directories are searched for QNN libraries.
    pub qnn_sdk_root: Option<PathBuf>,
    /// `INTEL_OPENVINO_DIR`: its `runtime/lib/*` directories are searched.
    pub openvino_dir: Option<PathBuf>,
    /// The roots describe the machine this process runs on, so probes may also
    /// ask the OS directly (sysctl on macOS, runtime CPU feature detection
    /// where `/proc/cpuinfo` does not exist). False for recorded trees.
    pub live_host: bool,
    pub probe_timeout: Duration,
}

impl ProbeRoots {
    /// The machine this process runs on: `/`, the default library search
    /// path (`LD_LIBRARY_PATH`, `/etc/ld.so.conf`, the usual lib dirs) and the
    /// relevant environment variables.
    pub fn host() -> Self {
        let root = PathBuf::from("/");
        let ld_library_path = std::env::var("LD_LIBRARY_PATH").ok();
        ProbeRoots {
            library_dirs: default_library_dirs(&root, ld_library_path.as_deref()),
            root,
            nvml: None,
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            qnn_sdk_root: std::env::var_os("QNN_SDK_ROOT").map(PathBuf::from),
            openvino_dir: std::env::var_os("INTEL_OPENVINO_DIR").map(PathBuf::from),
            live_host: true,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }

    /// A recorded tree at `root`: library dirs are the tree's own (from its
    /// `etc/ld.so.conf` and the usual lib dirs under it), no environment is
    /// read, and nothing is asked of the OS.
    pub fn under(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        ProbeRoots {
            library_dirs: default_library_dirs(&root, None),
            root,
            nvml: None,
            cuda_visible_devices: None,
            qnn_sdk_root: None,
            openvino_dir: None,
            live_host: false,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }

    /// `absolute` (e.g. `/proc/cpuinfo`) under `root`.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

impl fmt::Debug for ProbeRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeRoots")
            .field("root", &self.root)
            .field("library_dirs", &self.library_dirs)
            .field(
                "nvml",
                &if self.nvml.is_some() {
                    "injected"
                } else {
                    "loaded at run time"
                },
            )
            .field("cuda_visible_devices", &self.cuda_visible_devices)
            .field("qnn_sdk_root", &self.qnn_sdk_root)
            .field("openvino_dir", &self.openvino_dir)
            .field("live_host", &self.live_host)
            .field("probe_timeout", &self.probe_timeout)
            .finish()
    }
}

/// What a probe found, before detection adds the build's view and timing.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub present: bool,
    pub reason: String,
    pub driver_version: Option<String>,
    pub libraries: Vec<String>,
    pub devices: Vec<DeviceInfo>,
}

impl Findings {
    pub fn absent(reason: impl Into<String>) -> Self {
        Findings {
            present: false,
            reason: reason.into(),
            ..Findings::default()
        }
    }
}

/// Whether this build carries a backend for `platform`, and why.
pub fn build_support(platform: Platform) -> (bool, &'static str) {
    match platform {
        Platform::Cpu => (true, "the CPU backend is always built"),
        Platform::Cuda if cfg!(feature = "cuda") => (true, "built with the `cuda` feature"),
        Platform::Cuda => (false, "this build has no CUDA backend; build with the `cuda` feature"),
        Platform::Metal if cfg!(feature = "metal") => (true, "built with the `metal` feature"),
        Platform::Metal => (false, "this build has no Metal backend; build with the `metal` feature"),
        Platform::Rocm => (false, "this build has no ROCm backend"),
        Platform::OpenVino => (false, "this build has no OpenVINO backend"),
        Platform::Qnn => (false, "this build has no QNN backend"),
    }
}

/// Probes the machine this process runs on.
pub fn detect_default() -> HardwareReport {
    detect(&ProbeRoots::host())
}

/// Runs every probe against `roots`, concurrently, each bounded by
/// `roots.probe_timeout`. Never fails: a probe that errors, panics or times
/// out becomes a platform reported as not present, with the reason.
///
/// A timed-out probe's thread cannot be killed; it is left to finish in the
/// background and its late answer is dropped.
pub fn detect(roots: &ProbeRoots) -> HardwareReport {
    let shared = Arc::new(roots.clone());
    let pending_cpu = spawn_probe(Platform::Cpu, &shared, cpu::probe);
    let pending_cuda = spawn_probe(Platform::Cuda, &shared, |r| (cuda::probe(r), None));
    let pending_rocm = spawn_probe(Platform::Rocm, &shared, |r| (rocm::probe(r), None));
    let pending_metal = spawn_probe(Platform::Metal, &shared, |r| (metal::probe(r), None));
    let pending_openvino = spawn_probe(Platform::OpenVino, &shared, |r| (openvino::probe(r), None));
    let pending_qnn = spawn_probe(Platform::Qnn, &shared, |r| (qnn::probe(r), None));

    // All probes started together, so they share one deadline.
    let deadline = Instant::now() + roots.probe_timeout;
    let mut cpu_details = None;
    let mut platforms = Vec::with_capacity(Platform::ALL.len());
    for pending in [
        pending_cpu,
        pending_cuda,
        pending_rocm,
        pending_metal,
        pending_openvino,
        pending_qnn,
    ] {
        let (report, details) = pending.wait(deadline, roots.probe_timeout);
        if details.is_some() {
            cpu_details = details;
        }
        platforms.push(report);
    }

    HardwareReport {
        schema_version: SCHEMA_VERSION,
        root: roots.root.display().to_string(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu: cpu_details,
        platforms,
    }
}

type ProbeOutput = (Findings, Option<CpuDetails>);

struct PendingProbe {
    platform: Platform,
    answer: Result<Receiver<thread::Result<(ProbeOutput, Duration)>>, HardwareError>,
}

fn spawn_probe(platform: Platform, roots: &Arc<ProbeRoots>, probe: fn(&ProbeRoots) -> ProbeOutput) -> PendingProbe {
    let roots = Arc::clone(roots);
    // Capacity 1 so a probe that finishes after the deadline can still send
    // and exit instead of blocking forever.
    let (sender, receiver) = mpsc::sync_channel(1);
    let spawned = thread::Builder::new()
        .name(format!("hfms-probe-{platform}"))
        .spawn(move || {
            let started = Instant::now();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| probe(&roots)));
            // The receiver is gone if detection already gave up on this probe.
            let _ = sender.send(outcome.map(|output| (output, started.elapsed())));
        });
    PendingProbe {
        platform,
        answer: spawned.map(|_| receiver).map_err(HardwareError::ProbeThread),
    }
}

impl PendingProbe {
    fn wait(self, deadline: Instant, timeout: Duration) -> (PlatformReport, Option<CpuDetails>) {
        let received = self.answer.and_then(|receiver| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(remaining) {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(payload)) => Err(HardwareError::ProbePanicked {
                    message: panic_message(payload.as_ref()),
                }),
                Err(RecvTimeoutError::Timeout) => Err(HardwareError::ProbeTimedOut {
                    timeout_ms: timeout.as_millis(),
                }),
                Err(RecvTimeoutError::Disconnected) => Err(HardwareError::ProbePanicked {
                    message: "the probe thread ended without an answer".to_string(),
                }),
            }
        });
        let ((findings, details), elapsed) = match received {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(platform = %self.platform, %error, "hardware probe failed");
                ((Findings::absent(error.to_string()), None), timeout)
            }
        };
        let (build_supports, build_reason) = build_support(self.platform);
        let report = PlatformReport {
            platform: self.platform,
            present: findings.present,
            reason: findings.reason,
            build_supports,
            build_reason: build_reason.to_string(),
            driver_version: findings.driver_version,
            libraries: findings.libraries,
            probe_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            devices: findings.devices,
        };
        (report, details)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

/// `path` for messages: the path as the probed host sees it (`/sys/...`),
/// so reasons read the same for a live host and a recorded tree.
pub(crate) fn host_display(path: &Path, roots: &ProbeRoots) -> String {
    match path.strip_prefix(&roots.root) {
        Ok(relative) => format!("/{}", relative.display()),
        Err(_) => path.display().to_string(),
    }
}
