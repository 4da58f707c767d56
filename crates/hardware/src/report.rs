//! The detection report (serialized as JSON for `/status`) and its table form.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::platform::{DeviceId, Platform};

/// Bumped whenever a field is renamed or removed or its meaning changes;
/// adding an optional field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// What detection found on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareReport {
    pub schema_version: u32,
    /// The prefix `/proc`, `/sys` and `/etc` were read under (`/` on a live host).
    pub root: String,
    /// `std::env::consts::OS` / `ARCH` of this build.
    pub os: String,
    pub arch: String,
    /// Host CPU details; `None` only when the CPU probe timed out or panicked.
    pub cpu: Option<CpuDetails>,
    /// One entry per platform, always all six, in [`Platform::ALL`] order.
    pub platforms: Vec<PlatformReport>,
}

impl HardwareReport {
    pub fn platform(&self, platform: Platform) -> Option<&PlatformReport> {
        self.platforms.iter().find(|report| report.platform == platform)
    }

    /// Devices of every platform that is present, in report order.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.platforms
            .iter()
            .filter(|report| report.present)
            .flat_map(|report| report.devices.iter())
    }
}

/// What one platform's probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformReport {
    pub platform: Platform,
    /// The platform's hardware or runtime exists on this machine.
    pub present: bool,
    /// What was probed and what it showed, for operators.
    pub reason: String,
    /// This build of hfms has a backend for the platform.
    pub build_supports: bool,
    pub build_reason: String,
    /// Driver or runtime version when the probe could read one.
    pub driver_version: Option<String>,
    /// Runtime libraries the probe found (full paths).
    pub libraries: Vec<String>,
    /// Wall time the probe took.
    pub probe_ms: u64,
    pub devices: Vec<DeviceInfo>,
}

impl PlatformReport {
    /// Present, and this build can run models on it.
    pub fn usable(&self) -> bool {
        self.present && self.build_supports
    }
}

/// One device of a platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    pub name: String,
    /// `None` when the probe could not read it (e.g. NVML missing, or a
    /// device that shares host memory and reports none of its own).
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Short tags kernels care about: `sm_80`, `bf16`, `gfx90a`, `avx512f`, ...
    pub capabilities: Vec<String>,
    /// Everything else the probe read (`compute_capability`, `uuid`,
    /// `pci_bus_id`, `gfx_target`, ...).
    pub properties: BTreeMap<String, String>,
}

/// The host CPU and its memory, with container limits applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuDetails {
    pub model_name: String,
    pub vendor: Option<String>,
    pub logical_cores: usize,
    pub physical_cores: usize,
    pub sockets: usize,
    /// Where the core counts came from (cpuinfo ids, sysfs topology, or an
    /// assumption when a VM exposes neither).
    pub topology_source: String,
    pub simd: SimdFeatures,
    /// `/proc/meminfo` MemTotal / MemAvailable.
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub numa_nodes: Vec<NumaNode>,
    pub cgroup: Option<CgroupLimits>,
    /// MemTotal capped by the cgroup memory limit.
    pub effective_memory_bytes: Option<u64>,
    /// MemAvailable capped by what the cgroup still allows.
    pub effective_available_bytes: Option<u64>,
    /// Logical cores capped by the cgroup CPU quota (may be fractional).
    pub effective_cpus: f64,
}

/// SIMD features that decide which CPU kernels can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimdFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512_bf16: bool,
    pub avx512_vnni: bool,
    pub avx_vnni: bool,
    /// AArch64 Advanced SIMD (`asimd` in cpuinfo).
    pub neon: bool,
    /// Half-precision NEON arithmetic (`asimdhp`).
    pub neon_fp16: bool,
    /// SDOT/UDOT (`asimddp`).
    pub neon_dotprod: bool,
    /// Int8 matrix multiply (`i8mm`).
    pub i8mm: bool,
    /// AArch64 BF16 instructions (`bf16`).
    pub arm_bf16: bool,
    pub sve: bool,
    pub sve2: bool,
}

impl SimdFeatures {
    /// Names of the features that are set, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx512f, "avx512f"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx512_vnni, "avx512_vnni"),
            (self.avx_vnni, "avx_vnni"),
            (self.neon, "neon"),
            (self.neon_fp16, "neon_fp16"),
            (self.neon_dotprod, "neon_dotprod"),
            (self.i8mm, "i8mm"),
            (self.arm_bf16, "bf16"),
            (self.sve, "sve"),
            (self.sve2, "sve2"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    /// The node's `cpulist`, e.g. `0-31,64-95`.
    pub cpus: String,
    pub mem_total_bytes: Option<u64>,
}

/// Limits of the cgroup this process runs in; the tightest limit on the path
/// from the process's cgroup up to the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// 1 or 2.
    pub version: u8,
    /// The process's cgroup path, from `/proc/self/cgroup`.
    pub path: String,
    /// `None` means unlimited.
    pub memory_max_bytes: Option<u64>,
    pub memory_current_bytes: Option<u64>,
    /// CPU quota as a number of CPUs (`cpu.max` quota / period); `None` means
    /// unlimited.
    pub cpu_quota_cores: Option<f64>,
}

const GIB: f64 = (1u64 << 30) as f64;

/// `1.50 GiB`, `512.00 MiB`, `100 B`: for messages where raw byte counts are
/// hard to read.
pub fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / GIB)
    } else if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

fn gib_cell(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".to_string(), |b| format!("{:.2}", b as f64 / GIB))
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// The report as a human-readable table: one block per platform, one row per
/// device.
pub fn render_table(report: &HardwareReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(
        out,
        "hardware ({} {}, probed root {})",
        report.os, report.arch, report.root
    );
    for platform in &report.platforms {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<9} present: {:<3}  build can run: {} ({})",
            platform.platform,
            yes_no(platform.present),
            yes_no(platform.build_supports),
            platform.build_reason
        );
        let _ = writeln!(out, "  reason: {}", platform.reason);
        if let Some(version) = &platform.driver_version {
            let _ = writeln!(out, "  version: {version}");
        }
        if !platform.libraries.is_empty() {
            let _ = writeln!(out, "  libraries: {}", platform.libraries.join(", "));
        }
        if platform.platform == Platform::Cpu
            && let Some(cpu) = &report.cpu
        {
            render_cpu_lines(&mut out, cpu);
        }
        if !platform.devices.is_empty() {
            render_device_rows(&mut out, &platform.devices);
        }
    }
    out
}

fn render_cpu_lines(out: &mut String, cpu: &CpuDetails) {
    let _ = writeln!(
        out,
        "  cores: {} physical, {} logical, {} socket(s) ({}); effective cpus {}",
        cpu.physical_cores,
        cpu.logical_cores,
        cpu.sockets,
        cpu.topology_source,
        trim_float(cpu.effective_cpus)
    );
    let _ = writeln!(
        out,
        "  memory: total {} GiB, available {} GiB; effective (cgroup) total {} GiB, available {} GiB",
        gib_cell(cpu.mem_total_bytes),
        gib_cell(cpu.mem_available_bytes),
        gib_cell(cpu.effective_memory_bytes),
        gib_cell(cpu.effective_available_bytes)
    );
    if !cpu.numa_nodes.is_empty() {
        let nodes: Vec<String> = cpu
            .numa_nodes
            .iter()
            .map(|node| {
                format!(
                    "node{} (cpus {}, {} GiB)",
                    node.id,
                    node.cpus,
                    gib_cell(node.mem_total_bytes)
                )
            })
            .collect();
        let _ = writeln!(out, "  numa: {}", nodes.join(", "));
    }
    match &cpu.cgroup {
        Some(cgroup) => {
            let memory = cgroup
                .memory_max_bytes
                .map_or_else(|| "unlimited".to_string(), format_bytes);
            let cpus = cgroup
                .cpu_quota_cores
                .map_or_else(|| "unlimited".to_string(), trim_float);
            let _ = writeln!(
                out,
                "  cgroup: v{} {}: memory max {memory}, cpu quota {cpus}",
                cgroup.version, cgroup.path
            );
        }
        None => {
            let _ = writeln!(out, "  cgroup: none visible");
        }
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn render_device_rows(out: &mut String, devices: &[DeviceInfo]) {
    let header = ["device", "name", "total GiB", "free GiB", "capabilities"];
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|device| {
            [
                device.id.to_string(),
                device.name.clone(),
                gib_cell(device.total_bytes),
                gib_cell(device.free_bytes),
                device.capabilities.join(" "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "  {:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        )
        .trim_end()
        .to_string()
    };
    let _ = writeln!(out, "{}", line(header));
    for row in &rows {
        let _ = writeln!(out, "{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_formatting_picks_a_readable_unit() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 20), "3.00 MiB");
        assert_eq!(format_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn simd_names_follow_the_flags() {
        let simd = SimdFeatures {
            avx2: true,
            avx512_vnni: true,
            sve: true,
            ..SimdFeatures::default()
        };
        assert_eq!(simd.names(), ["avx2", "avx512_vnni", "sve"]);
    }

    #[test]
    fn table_has_a_block_per_platform_and_a_row_per_device() {
        let device = DeviceInfo {
            id: DeviceId::new(Platform::Cuda, 1),
            name: "NVIDIA A10".to_string(),
            total_bytes: Some(24 << 30),
            free_bytes: None,
            capabilities: vec!["sm_86".to_string(), "bf16".to_string()],
            properties: BTreeMap::new(),
        };
        let report = HardwareReport {
            schema_version: SCHEMA_VERSION,
            root: "/".to_string(),
            os: "linux".to_string(),
            arch: "x86_64".to_string(),
            cpu: None,
            platforms: vec![PlatformReport {
                platform: Platform::Cuda,
                present: true,
                reason: "NVML: 1 device".to_string(),
                build_supports: false,
                build_reason: "no CUDA backend".to_string(),
                driver_version: Some("535.129.03".to_string()),
                libraries: vec![],
                probe_ms: 3,
                devices: vec![device],
            }],
        };
        let table = render_table(&report);
        assert!(table.contains("cuda      present: yes  build can run: no (no CUDA backend)"));
        assert!(table.contains("  reason: NVML: 1 device"));
        let row = table.lines().find(|line| line.contains("cuda:1")).unwrap();
        assert!(row.contains("NVIDIA A10"));
        assert!(row.contains("24.00"));
        assert!(row.contains("?"));
        assert!(row.ends_with("sm_86 bf16"));
    }
}
