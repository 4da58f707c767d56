//! Detection replayed against recorded machines under `tests/fixtures/`.
//! None of these depend on the machine running the tests.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hfms_hardware::{
    DeviceId, DeviceLoad, HardwareError, HardwareReport, ModelFootprint, NvmlSnapshot, NvmlSource, Placement,
    PlacementRequest, Platform, PlatformReport, ProbeRoots, detect, place, render_table,
};

const GIB: u64 = 1 << 30;

fn fixture(machine: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(machine)
}

fn roots(machine: &str) -> ProbeRoots {
    ProbeRoots::under(fixture(machine))
}

fn recorded_nvml(machine: &str) -> Arc<dyn NvmlSource> {
    let text = std::fs::read_to_string(fixture(machine).join("nvml-answer.json")).unwrap();
    let snapshot: NvmlSnapshot = serde_json::from_str(&text).unwrap();
    Arc::new(snapshot)
}

fn platform(report: &HardwareReport, platform: Platform) -> &PlatformReport {
    report.platform(platform).unwrap()
}

fn assert_contains(text: &str, expected: &str) {
    assert!(text.contains(expected), "expected {expected:?} in {text:?}");
}

fn model(bytes: u64) -> ModelFootprint {
    ModelFootprint {
        weights_bytes: bytes,
        kv_cache_bytes: 0,
        workspace_bytes: 0,
    }
}

/// Places with every detected device treated as runnable, so the policy can
/// be checked on real device tables whatever features this build has.
fn place_as_if_all_supported(report: &HardwareReport, request: &PlacementRequest) -> Result<Placement, HardwareError> {
    let mut states = report.device_states();
    for state in &mut states {
        state.build_supported = true;
    }
    place(request, &states)
}

fn assert_absent_everywhere_but_cpu(report: &HardwareReport, except: &[Platform]) {
    for report in &report.platforms {
        if report.platform != Platform::Cpu && !except.contains(&report.platform) {
            assert!(
                !report.present,
                "{} should be absent: {}",
                report.platform, report.reason
            );
            assert!(report.devices.is_empty());
        }
    }
}

#[test]
fn nvidia_host_with_recorded_nvml_answer() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(recorded_nvml("nvidia-a100-a10"));
    let report = detect(&roots);
    assert_eq!(report.platforms.len(), 6);

    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz");
    assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (8, 4, 2));
    assert_eq!(cpu.topology_source, "/proc/cpuinfo physical id/core id");
    assert!(cpu.simd.avx2 && cpu.simd.fma && cpu.simd.f16c);
    assert!(cpu.simd.avx512f && cpu.simd.avx512_vnni);
    assert!(!cpu.simd.avx512_bf16, "Ice Lake has no AVX-512 BF16");
    assert_eq!(cpu.mem_total_bytes, Some(527939544 * 1024));
    let numa: Vec<(u32, &str)> = cpu.numa_nodes.iter().map(|n| (n.id, n.cpus.as_str())).collect();
    assert_eq!(numa, [(0, "0-1,4-5"), (1, "2-3,6-7")]);
    let cgroup = cpu.cgroup.as_ref().unwrap();
    assert_eq!(
        (cgroup.version, cgroup.path.as_str()),
        (2, "/system.slice/hfms.service")
    );
    assert_eq!(cgroup.memory_max_bytes, None);
    assert_eq!(cgroup.cpu_quota_cores, None);
    assert_eq!(cpu.effective_cpus, 8.0);

    let cuda = platform(&report, Platform::Cuda);
    assert!(cuda.present, "{}", cuda.reason);
    assert_contains(
        &cuda.reason,
        "NVML (/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1) reports 2 device(s)",
    );
    assert_contains(&cuda.reason, "driver 535.129.03");
    assert_eq!(cuda.driver_version.as_deref(), Some("535.129.03"));
    assert_eq!(cuda.build_supports, cfg!(feature = "cuda"));
    assert_eq!(cuda.devices.len(), 2);
    let a100 = &cuda.devices[0];
    assert_eq!(a100.id.to_string(), "cuda:0");
    assert_eq!(a100.name, "NVIDIA A100 80GB PCIe");
    assert_eq!(a100.total_bytes, Some(80 * GIB));
    assert_eq!(a100.free_bytes, Some(84537753600));
    assert_eq!(a100.capabilities, ["sm_80", "fp16", "tensor_cores", "bf16", "tf32"]);
    // Bus location joined from /proc/driver/nvidia by UUID.
    assert_eq!(a100.properties["pci_bus_id"], "0000:17:00.0");
    assert_eq!(a100.properties["compute_capability"], "8.0");
    let a10 = &cuda.devices[1];
    assert_eq!(
        (a10.id.to_string().as_str(), a10.name.as_str()),
        ("cuda:1", "NVIDIA A10")
    );
    assert_eq!(a10.capabilities[0], "sm_86");
    assert_eq!(a10.properties["pci_bus_id"], "0000:ca:00.0");

    assert_contains(
        &platform(&report, Platform::Rocm).reason,
        "/sys/class/kfd/kfd/topology/nodes: not found",
    );
    assert_absent_everywhere_but_cpu(&report, &[Platform::Cuda]);

    let table = render_table(&report);
    let row = table.lines().find(|line| line.contains("cuda:0")).unwrap();
    assert_contains(row, "NVIDIA A100 80GB PCIe");
    assert_contains(row, "80.00");
    assert_contains(row, "78.73");
    assert_contains(row, "sm_80 fp16 tensor_cores bf16 tf32");
    let row = table.lines().find(|line| line.contains("cuda:1")).unwrap();
    assert_contains(row, "22.49");
    assert_contains(&table, "  version: 535.129.03");
}

#[test]
fn nvidia_host_placement_follows_free_memory_and_load() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(recorded_nvml("nvidia-a100-a10"));
    let report = detect(&roots);
    let request = PlacementRequest::new(model(30 * GIB), [Platform::Cuda, Platform::Cpu]);

    // What this build does with the table as detected.
    let placement = place(&request, &report.device_states()).unwrap();
    if cfg!(feature = "cuda") {
        assert_eq!(placement.device.to_string(), "cuda:0");
    } else {
        assert_eq!(placement.device, DeviceId::CPU);
        assert_eq!(
            placement.skipped,
            ["cuda:0, cuda:1: this build cannot run models on cuda"]
        );
    }

    // The policy on the real table, with CUDA runnable: only the A100 fits.
    let placement = place_as_if_all_supported(&report, &request).unwrap();
    assert_eq!(placement.device.to_string(), "cuda:0");
    assert_eq!(placement.skipped.len(), 1);
    assert_contains(&placement.skipped[0], "cuda:1: needs 30.00 GiB");

    // Once 60 GiB are resident on the A100, the model goes to the CPU.
    let load = DeviceLoad::new();
    load.reserve("cuda:0".parse().unwrap(), 60 * GIB);
    let mut states = report.device_states();
    for state in &mut states {
        state.build_supported = true;
    }
    load.apply(&mut states);
    let placement = place(&request, &states).unwrap();
    assert_eq!(placement.device, DeviceId::CPU);
    assert_contains(&placement.skipped[0], "cuda:0: needs 30.00 GiB");
    assert_contains(&placement.skipped[0], "60.00 GiB reserved");
}

#[test]
fn nvidia_host_without_nvml_falls_back_to_procfs() {
    let report = detect(&roots("nvidia-a100-a10"));
    let cuda = platform(&report, Platform::Cuda);
    assert!(cuda.present, "{}", cuda.reason);
    assert_contains(&cuda.reason, "libnvidia-ml.so.1 not found in:");
    assert_contains(
        &cuda.reason,
        "/proc/driver/nvidia/gpus lists 2 GPU(s), driver 535.129.03",
    );
    assert_eq!(cuda.driver_version.as_deref(), Some("535.129.03"));
    let names: Vec<&str> = cuda.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["NVIDIA A100 80GB PCIe", "NVIDIA A10"]);
    assert!(
        cuda.devices
            .iter()
            .all(|d| d.total_bytes.is_none() && d.free_bytes.is_none())
    );
    assert_eq!(cuda.devices[1].properties["device_minor"], "1");
    assert_eq!(
        cuda.devices[0].properties["uuid"],
        "GPU-3b1c5f5e-8c7a-2d4f-b6e1-5a9c0d7e4f21"
    );

    // Unknown memory is not free memory: placement skips the GPUs.
    let placement = place_as_if_all_supported(&report, &PlacementRequest::new(model(GIB), Platform::ALL)).unwrap();
    assert_eq!(placement.device, DeviceId::CPU);
    assert_contains(&placement.skipped[0], "cuda:0: needs 1.00 GiB");
}

struct FailingNvml;

impl NvmlSource for FailingNvml {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError> {
        Err(HardwareError::ForeignCall {
            function: "nvmlInit_v2",
            message: "Driver/library version mismatch (NVML error 18)".to_string(),
        })
    }
}

#[test]
fn nvml_errors_become_reasons_and_procfs_still_counts() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(Arc::new(FailingNvml));
    let report = detect(&roots);
    let cuda = platform(&report, Platform::Cuda);
    assert!(cuda.present);
    assert_contains(
        &cuda.reason,
        "NVML unavailable (nvmlInit_v2 failed: Driver/library version mismatch",
    );
    assert_eq!(cuda.devices.len(), 2);
}

#[test]
fn cuda_visible_devices_hides_and_renumbers() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(recorded_nvml("nvidia-a100-a10"));
    roots.cuda_visible_devices = Some("1".to_string());
    let report = detect(&roots);
    let cuda = platform(&report, Platform::Cuda);
    assert_eq!(cuda.devices.len(), 1);
    assert_eq!(cuda.devices[0].id.to_string(), "cuda:0");
    assert_eq!(cuda.devices[0].name, "NVIDIA A10");
    assert_eq!(cuda.devices[0].properties["nvml_index"], "1");
    assert_contains(&cuda.reason, "CUDA_VISIBLE_DEVICES=\"1\" leaves 1 of 2 device(s)");

    roots.cuda_visible_devices = Some("-1".to_string());
    let report = detect(&roots);
    let cuda = platform(&report, Platform::Cuda);
    assert!(!cuda.present);
    assert!(cuda.devices.is_empty());
}

#[test]
fn amd_host_reads_kfd_topology_and_cgroup_limits() {
    let report = detect(&roots("amd-mi210-rx7900"));

    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "AMD EPYC 7543 32-Core Processor");
    assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (4, 2, 1));
    assert!(cpu.simd.avx2 && !cpu.simd.avx512f);
    let cgroup = cpu.cgroup.as_ref().unwrap();
    assert_eq!(cgroup.version, 2);
    assert!(cgroup.path.ends_with(".scope"));
    // The pod's 48 GiB is tighter than the container's 64 GiB.
    assert_eq!(cgroup.memory_max_bytes, Some(48 * GIB));
    assert_eq!(cgroup.memory_current_bytes, Some(2 * GIB));
    assert_eq!(cgroup.cpu_quota_cores, Some(4.0));
    assert_eq!(cpu.effective_memory_bytes, Some(48 * GIB));
    assert_eq!(cpu.effective_available_bytes, Some(46 * GIB));
    assert_eq!(cpu.effective_cpus, 4.0);
    let cpu_device = &platform(&report, Platform::Cpu).devices[0];
    assert_eq!(cpu_device.total_bytes, Some(48 * GIB));

    let rocm = platform(&report, Platform::Rocm);
    assert!(rocm.present, "{}", rocm.reason);
    assert_eq!(
        rocm.reason,
        "/sys/class/kfd/kfd/topology/nodes: 2 GPU node(s), 1 CPU node(s); amdgpu driver 6.7.0"
    );
    assert!(!rocm.build_supports);
    assert_eq!(rocm.build_reason, "this build has no ROCm backend");
    assert_eq!(rocm.driver_version.as_deref(), Some("6.7.0"));

    let mi210 = &rocm.devices[0];
    assert_eq!(mi210.id.to_string(), "rocm:0");
    assert_eq!(mi210.name, "AMD Instinct MI210");
    assert_eq!(mi210.capabilities, ["gfx90a", "wave64"]);
    assert_eq!(mi210.total_bytes, Some(68702699520));
    assert_eq!(mi210.free_bytes, Some(68702699520 - 10733223936));
    assert_eq!(mi210.properties["compute_units"], "104");
    assert_eq!(mi210.properties["device_id"], "0x740f");
    assert_eq!(mi210.properties["drm_device"], "/sys/class/drm/renderD128/device");

    let navi = &rocm.devices[1];
    assert_eq!(navi.id.to_string(), "rocm:1");
    assert_eq!(navi.name, "AMD Radeon RX 7900 XTX / XT");
    assert_eq!(navi.capabilities, ["gfx1100", "wave32"]);
    // From the KFD memory bank: the recording has no DRM counters for it.
    assert_eq!(navi.total_bytes, Some(25753026560));
    assert_eq!(navi.free_bytes, None);
    assert_eq!(navi.properties["compute_units"], "96");

    assert_absent_everywhere_but_cpu(&report, &[Platform::Rocm]);

    // No ROCm backend in this build: the CPU gets the model, with the reason.
    let placement = place(
        &PlacementRequest::new(model(8 * GIB), Platform::ALL),
        &report.device_states(),
    )
    .unwrap();
    assert_eq!(placement.device, DeviceId::CPU);
    assert_eq!(
        placement.skipped,
        ["rocm:0, rocm:1: this build cannot run models on rocm"]
    );
}

#[test]
fn x86_vm_with_avx512_and_cgroup_v1_limit() {
    let report = detect(&roots("x86-vm-avx512"));
    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "AMD EPYC");
    assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (2, 2, 1));
    let simd = &cpu.simd;
    assert!(simd.avx2 && simd.fma && simd.f16c);
    assert!(simd.avx512f && simd.avx512_bf16 && simd.avx512_vnni);
    assert!(!simd.neon && !simd.sve);
    assert_eq!(cpu.mem_total_bytes, Some(24684092 * 1024));
    assert_eq!(cpu.mem_available_bytes, Some(24333592 * 1024));
    assert_eq!(cpu.numa_nodes.len(), 1);
    assert_eq!(cpu.numa_nodes[0].cpus, "0-1");
    let cgroup = cpu.cgroup.as_ref().unwrap();
    assert_eq!(cgroup.version, 1);
    assert_eq!(cgroup.path, "/process_api/5ffc9f16a9cc7d8c6745cb108dbe6cdc");
    // The 8 GiB limit sits on the parent cgroup; the leaf is unlimited.
    assert_eq!(cgroup.memory_max_bytes, Some(8 * GIB));
    assert_eq!(cgroup.cpu_quota_cores, None);
    assert_eq!(cpu.effective_memory_bytes, Some(8 * GIB));
    assert_eq!(cpu.effective_available_bytes, Some(7 * GIB));

    let cpu_platform = platform(&report, Platform::Cpu);
    assert!(cpu_platform.present && cpu_platform.build_supports);
    assert_eq!(
        cpu_platform.devices[0].capabilities,
        ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni"]
    );

    let cuda = platform(&report, Platform::Cuda);
    let lib_dir = fixture("x86-vm-avx512").join("usr/lib/x86_64-linux-gnu");
    assert_contains(
        &cuda.reason,
        &format!("libnvidia-ml.so.1 not found in: {}", lib_dir.display()),
    );
    assert_contains(&cuda.reason, "/proc/driver/nvidia: not found");
    assert_contains(
        &platform(&report, Platform::Rocm).reason,
        "/sys/class/kfd/kfd/topology/nodes: not found",
    );
    assert_eq!(
        platform(&report, Platform::Metal).reason,
        format!("not macOS (this is {})", std::env::consts::OS)
    );
    assert_contains(
        &platform(&report, Platform::OpenVino).reason,
        "libopenvino_c.so not found in:",
    );
    assert_contains(&platform(&report, Platform::Qnn).reason, "libQnnHtp.so not found in:");
    assert_absent_everywhere_but_cpu(&report, &[]);

    let table = render_table(&report);
    let row = table.lines().find(|line| line.starts_with("  cpu ")).unwrap();
    assert_contains(row, "AMD EPYC");
    assert_contains(row, "8.00");
    assert_contains(row, "7.00");
    assert_contains(
        &table,
        "cgroup: v1 /process_api/5ffc9f16a9cc7d8c6745cb108dbe6cdc: memory max 8.00 GiB",
    );

    // More than the cgroup allows: an error with the numbers, not a silent pick.
    let error = place(
        &PlacementRequest::new(model(10 * GIB), Platform::ALL),
        &report.device_states(),
    )
    .unwrap_err();
    let message = error.to_string();
    assert_contains(&message, &format!("needs 10.00 GiB ({} bytes)", 10 * GIB));
    assert_contains(&message, &format!("7.00 GiB ({} bytes on cpu)", 7 * GIB));
}

#[test]
fn arm64_host_with_sve_and_sysfs_topology() {
    let report = detect(&roots("arm64-graviton3"));
    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "ARM Neoverse-V1");
    assert_eq!(cpu.vendor.as_deref(), Some("ARM"));
    assert_eq!((cpu.logical_cores, cpu.physical_cores), (4, 4));
    assert_eq!(cpu.topology_source, "/sys/devices/system/cpu/cpu*/topology");
    let simd = &cpu.simd;
    assert!(simd.neon && simd.neon_fp16 && simd.neon_dotprod);
    assert!(simd.sve && !simd.sve2);
    assert!(simd.i8mm && simd.arm_bf16);
    assert!(!simd.avx2 && !simd.avx512f);
    assert_eq!(
        platform(&report, Platform::Cpu).devices[0].capabilities,
        ["neon", "neon_fp16", "neon_dotprod", "i8mm", "bf16", "sve"]
    );
    let cgroup = cpu.cgroup.as_ref().unwrap();
    assert_eq!((cgroup.version, cgroup.path.as_str()), (2, "/"));
    assert_eq!(cgroup.memory_max_bytes, None);
    assert_eq!(cpu.effective_memory_bytes, Some(15856452 * 1024));

    // The arm64 tree's ld.so.conf include is followed.
    let cuda = platform(&report, Platform::Cuda);
    assert_contains(
        &cuda.reason,
        &fixture("arm64-graviton3")
            .join("usr/lib/aarch64-linux-gnu")
            .display()
            .to_string(),
    );
    assert_absent_everywhere_but_cpu(&report, &[]);
}

#[test]
fn qnn_host_with_sdk_libraries_and_soc_info() {
    let mut with_sdk = roots("qnn-qcm6490");
    with_sdk.qnn_sdk_root = Some(fixture("qnn-qcm6490").join("opt/qcom/aistack/qairt/2.26.0"));
    let report = detect(&with_sdk);

    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "4x ARM Cortex-A55 + 4x ARM Cortex-A78");
    // No core ids anywhere: one core per logical CPU, and the report says so.
    assert_eq!((cpu.logical_cores, cpu.physical_cores), (8, 8));
    assert_contains(&cpu.topology_source, "one core per logical CPU assumed");
    assert!(cpu.simd.neon && cpu.simd.neon_dotprod && !cpu.simd.sve);
    assert!(cpu.cgroup.is_none());

    let qnn = platform(&report, Platform::Qnn);
    assert!(qnn.present, "{}", qnn.reason);
    assert!(!qnn.build_supports);
    assert_eq!(qnn.build_reason, "this build has no QNN backend");
    // The recorded libraries are empty files: found, but not loadable here.
    assert_contains(&qnn.reason, "libQnnHtp.so found, not queried:");
    assert_contains(&qnn.reason, "could not be loaded");
    assert_contains(&qnn.reason, "SoC QCM6490 (soc_id 497)");
    assert_eq!(qnn.libraries.len(), 4);
    assert!(
        qnn.libraries
            .iter()
            .any(|l| l.ends_with("aarch64-ubuntu-gcc9.4/libQnnSystem.so"))
    );
    let htp = &qnn.devices[0];
    assert_eq!(htp.id.to_string(), "qnn:0");
    assert_eq!(htp.name, "Qualcomm QCM6490 HTP");
    assert_eq!(
        htp.capabilities,
        ["htp", "hexagon_v68", "qnn_cpu", "qnn_gpu", "qnn_system"]
    );
    assert_eq!(htp.properties["soc_id"], "497");
    assert_eq!(htp.properties["soc_family"], "Snapdragon");
    assert_eq!(htp.total_bytes, None);

    // The HTP shares host memory: placement sees the host's available memory.
    let states = report.device_states();
    let qnn_state = states.iter().find(|s| s.id.platform == Platform::Qnn).unwrap();
    assert_eq!(qnn_state.free_bytes, 6401232 * 1024);
    let placement = place_as_if_all_supported(&report, &PlacementRequest::new(model(2 * GIB), Platform::ALL)).unwrap();
    assert_eq!(placement.device.to_string(), "qnn:0");

    // Without the SDK path the libraries are not found; the SoC is still named.
    let report = detect(&roots("qnn-qcm6490"));
    let qnn = platform(&report, Platform::Qnn);
    assert!(!qnn.present);
    assert_contains(&qnn.reason, "libQnnHtp.so not found in:");
    assert_contains(&qnn.reason, "SoC QCM6490 visible in /sys/devices/soc0");
}

#[test]
fn openvino_host_with_unloadable_runtime_is_present_but_unqueried() {
    let report = detect(&roots("openvino-tigerlake"));
    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "11th Gen Intel(R) Core(TM) i7-1185G7 @ 3.00GHz");
    assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (8, 4, 1));
    assert!(cpu.simd.avx512f && cpu.simd.avx512_vnni && !cpu.simd.avx512_bf16);
    assert!(cpu.cgroup.is_none());

    let openvino = platform(&report, Platform::OpenVino);
    assert!(openvino.present, "{}", openvino.reason);
    assert!(!openvino.build_supports);
    assert_contains(&openvino.reason, "runtime present but devices not queried:");
    assert_contains(&openvino.reason, "libopenvino_c.so.2024.4.0 could not be loaded:");
    let expected_dir = fixture("openvino-tigerlake").join("opt/intel/openvino_2024.4.0/runtime/lib/intel64");
    let expected: Vec<String> = ["libopenvino_c.so.2024.4.0", "libopenvino.so.2024.4.0"]
        .iter()
        .map(|name| expected_dir.join(name).display().to_string())
        .collect();
    assert_eq!(openvino.libraries, expected);
    assert!(openvino.devices.is_empty());
    assert_absent_everywhere_but_cpu(&report, &[Platform::OpenVino]);
}

struct SlowNvml;

impl NvmlSource for SlowNvml {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError> {
        std::thread::sleep(Duration::from_secs(5));
        Ok(NvmlSnapshot {
            library: None,
            driver_version: None,
            devices: Vec::new(),
        })
    }
}

struct PanickingNvml;

impl NvmlSource for PanickingNvml {
    fn query(&self) -> Result<NvmlSnapshot, HardwareError> {
        panic!("recorded NVML blew up")
    }
}

#[test]
fn a_hanging_probe_times_out_without_holding_up_the_rest() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(Arc::new(SlowNvml));
    roots.probe_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let report = detect(&roots);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let cuda = platform(&report, Platform::Cuda);
    assert!(!cuda.present);
    assert_eq!(cuda.reason, "probe timed out after 300 ms");
    assert_eq!(report.cpu.as_ref().unwrap().logical_cores, 8);
}

#[test]
fn a_panicking_probe_is_contained() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(Arc::new(PanickingNvml));
    let report = detect(&roots);
    let cuda = platform(&report, Platform::Cuda);
    assert!(!cuda.present);
    assert_eq!(cuda.reason, "probe panicked: recorded NVML blew up");
    assert!(platform(&report, Platform::Cpu).present);
}

#[test]
fn an_empty_tree_still_yields_a_full_report() {
    let report = detect(&ProbeRoots::under(fixture("no-such-machine")));
    assert_eq!(report.platforms.len(), 6);
    let cpu = report.cpu.as_ref().unwrap();
    assert_eq!(cpu.model_name, "unknown CPU");
    assert_eq!(cpu.logical_cores, 1);
    assert!(cpu.mem_total_bytes.is_none());
    let cpu_platform = platform(&report, Platform::Cpu);
    assert!(cpu_platform.present);
    assert_contains(&cpu_platform.reason, "/proc/cpuinfo: not readable");
    assert_absent_everywhere_but_cpu(&report, &[]);
}

#[test]
fn report_json_shape_is_stable() {
    let mut roots = roots("nvidia-a100-a10");
    roots.nvml = Some(recorded_nvml("nvidia-a100-a10"));
    let report = detect(&roots);
    let value = serde_json::to_value(&report).unwrap();

    let keys = |value: &serde_json::Value| -> BTreeSet<String> { value.as_object().unwrap().keys().cloned().collect() };
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        keys(&value),
        set(&["schema_version", "root", "os", "arch", "cpu", "platforms"])
    );
    assert_eq!(value["schema_version"], 1);
    let platforms: Vec<&str> = value["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["cpu", "cuda", "rocm", "metal", "openvino", "qnn"]);
    assert_eq!(
        keys(&value["platforms"][1]),
        set(&[
            "platform",
            "present",
            "reason",
            "build_supports",
            "build_reason",
            "driver_version",
            "libraries",
            "probe_ms",
            "devices"
        ])
    );
    let device = &value["platforms"][1]["devices"][0];
    assert_eq!(
        keys(device),
        set(&["id", "name", "total_bytes", "free_bytes", "capabilities", "properties"])
    );
    assert_eq!(device["id"], "cuda:0");
    assert_eq!(device["total_bytes"], 85899345920u64);
    assert_eq!(
        keys(&value["cpu"]),
        set(&[
            "model_name",
            "vendor",
            "logical_cores",
            "physical_cores",
            "sockets",
            "topology_source",
            "simd",
            "mem_total_bytes",
            "mem_available_bytes",
            "numa_nodes",
            "cgroup",
            "effective_memory_bytes",
            "effective_available_bytes",
            "effective_cpus"
        ])
    );

    let back: HardwareReport = serde_json::from_value(value).unwrap();
    assert_eq!(back, report);
}
