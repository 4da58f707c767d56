//! Hardware detection and device placement for hfms.
//!
//! # Detection
//!
//! [`detect_default`] probes this machine; [`detect`] probes any
//! [`ProbeRoots`] (a recorded tree in tests). Six platforms are probed
//! concurrently, each on its own thread, each bounded by
//! [`ProbeRoots::probe_timeout`] and isolated with `catch_unwind`: a probe
//! that fails, panics or hangs becomes a platform reported as not present,
//! with the reason. Runtime libraries (NVML, OpenVINO, QNN) are loaded with
//! `dlopen` at run time; a missing library is a reason, never an error.
//!
//! | platform   | what is probed |
//! |------------|----------------|
//! | `cpu`      | `/proc/cpuinfo`, `/proc/meminfo`, `/sys/devices/system/{cpu,node}`, cgroup v2 `memory.max`/`cpu.max` (or v1 equivalents) along `/proc/self/cgroup` |
//! | `cuda`     | NVML (`libnvidia-ml.so.1`, or an injected [`NvmlSource`]), `/proc/driver/nvidia/{version,gpus/*/information}`; `CUDA_VISIBLE_DEVICES` is applied |
//! | `rocm`     | `/sys/class/kfd/kfd/topology/nodes/*/{properties,mem_banks}`, `/sys/class/drm/renderD*/device/mem_info_vram_*`, `/sys/module/amdgpu/version` |
//! | `metal`    | macOS only: `sysctl` `hw.memsize`, `machdep.cpu.brand_string` |
//! | `openvino` | `libopenvino_c.so` in the library path, `$INTEL_OPENVINO_DIR`, `/opt/intel/openvino*`; `ov_core_get_available_devices` when it loads |
//! | `qnn`      | `libQnnHtp.so` (and `libQnnCpu/Gpu/System.so`) in the library path and `$QNN_SDK_ROOT/lib/*`; `/sys/devices/soc0` |
//!
//! Whether *this build* can run models on a platform is reported separately
//! (`build_supports`): always for the CPU, for CUDA with the `cuda` feature,
//! for Metal with the `metal` feature, never for ROCm, OpenVINO and QNN.
//!
//! ## JSON shape (`schema_version` 1)
//!
//! [`HardwareReport`] serializes as follows; fields are only ever added
//! within a schema version.
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "root": "/",                        // prefix /proc, /sys were read under
//!   "os": "linux", "arch": "x86_64",
//!   "cpu": {                            // null only if the CPU probe failed
//!     "model_name": "AMD EPYC", "vendor": "AuthenticAMD",
//!     "logical_cores": 2, "physical_cores": 2, "sockets": 1,
//!     "topology_source": "/proc/cpuinfo physical id/core id",
//!     "simd": { "avx2": true, "fma": true, "f16c": true, "avx512f": true,
//!               "avx512_bf16": true, "avx512_vnni": true, "avx_vnni": false,
//!               "neon": false, "neon_fp16": false, "neon_dotprod": false,
//!               "i8mm": false, "arm_bf16": false, "sve": false, "sve2": false },
//!     "mem_total_bytes": 25276510208, "mem_available_bytes": 24954511360,
//!     "numa_nodes": [ { "id": 0, "cpus": "0-1", "mem_total_bytes": 4389556224 } ],
//!     "cgroup": { "version": 2, "path": "/", "memory_max_bytes": null,
//!                 "memory_current_bytes": null, "cpu_quota_cores": null },  // or null
//!     "effective_memory_bytes": 25276510208,
//!     "effective_available_bytes": 24954511360,
//!     "effective_cpus": 2.0
//!   },
//!   "platforms": [                      // always six, in order cpu, cuda, rocm, metal, openvino, qnn
//!     {
//!       "platform": "cuda",             // cpu | cuda | rocm | metal | openvino | qnn
//!       "present": true,
//!       "reason": "NVML (/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1) reports 2 device(s), driver 535.129.03",
//!       "build_supports": false,
//!       "build_reason": "this build has no CUDA backend; build with the `cuda` feature",
//!       "driver_version": "535.129.03", // or null
//!       "libraries": ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"],
//!       "probe_ms": 41,
//!       "devices": [
//!         {
//!           "id": "cuda:0",             // DeviceId as text
//!           "name": "NVIDIA A100 80GB PCIe",
//!           "total_bytes": 85899345920, // or null when unknown
//!           "free_bytes": 84544389120,  // or null when unknown
//!           "capabilities": ["sm_80", "fp16", "tensor_cores", "bf16", "tf32"],
//!           "properties": { "compute_capability": "8.0", "nvml_index": "0",
//!                           "pci_bus_id": "0000:17:00.0", "uuid": "GPU-..." }
//!         }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! Device `properties` keys by platform: cpu `vendor`, `physical_cores`,
//! `logical_cores`, `sockets`, `numa_nodes`; cuda `nvml_index`, `uuid`,
//! `pci_bus_id`, `compute_capability`, `device_minor`, `errors`; rocm
//! `kfd_node`, `device_id`, `vendor_id`, `simd_count`, `compute_units`,
//! `gfx_target`, `drm_device`, `memory_source`; metal `chip`,
//! `macos_version`; openvino `openvino_device`; qnn `soc_machine`,
//! `soc_family`, `soc_id`, `soc_revision`, `provider`.
//!
//! [`render_table`] prints the same report for people.
//!
//! # Placement
//!
//! [`place`] picks a device for a model from a table of [`DeviceState`]s
//! (from [`HardwareReport::device_states`], with load applied by
//! [`DeviceLoad::apply`]): platform preference cuda, rocm, metal, openvino,
//! qnn, cpu; within a platform the least loaded device that fits. The
//! [`Placement`] lists why better devices were skipped.
//!
//! Device indices follow NVML/KFD order (PCI bus order). The CUDA runtime
//! numbers devices fastest-first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`;
//! backends should set it so `cuda:N` names the same GPU in both.

// Every `unsafe` block says why it is sound (docs/design.md, Soundness).
#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
mod load;
mod placement;
mod platform;
mod probe;
mod report;

pub use error::HardwareError;
pub use load::{DeviceLoad, DeviceLoadSnapshot, InFlightGuard};
pub use placement::{DeviceState, ModelFootprint, Placement, PlacementError, PlacementRequest, place};
pub use platform::{DeviceId, Platform};
pub use probe::{
    ComputeCapability, DEFAULT_PROBE_TIMEOUT, DynamicNvml, NvmlDevice, NvmlSnapshot, NvmlSource, ProbeRoots,
    build_support, default_library_dirs, detect, detect_default,
};
pub use report::{
    CgroupLimits, CpuDetails, DeviceInfo, HardwareReport, NumaNode, PlatformReport, SCHEMA_VERSION, SimdFeatures,
    format_bytes, render_table,
};
