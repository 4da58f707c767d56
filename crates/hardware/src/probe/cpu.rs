//! CPU probe: model, cores, SIMD features, memory, NUMA and cgroup limits,
//! from `/proc` and `/sys` (with an OS fallback where those do not exist).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::files::{count_cpu_list, numbered_entries, parse_colon_separated, read_text, read_trimmed, read_u64};
use super::{Findings, ProbeRoots};
use crate::platform::DeviceId;
use crate::report::{CgroupLimits, CpuDetails, DeviceInfo, NumaNode, SimdFeatures, format_bytes};

/// cgroup v1 reports "no limit" as a page-aligned `i64::MAX`; anything this
/// large is no limit on any real machine.
const CGROUP_V1_UNLIMITED_THRESHOLD: u64 = 1 << 60;

pub(super) fn probe(roots: &ProbeRoots) -> (Findings, Option<CpuDetails>) {
    let cpuinfo_path = roots.path("/proc/cpuinfo");
    let processors = match read_text(&cpuinfo_path) {
        Ok(text) => parse_cpuinfo(&text),
        Err(error) => {
            tracing::debug!(%error, "cpuinfo unreadable");
            Vec::new()
        }
    };
    let mut notes = Vec::new();

    let identity = if processors.is_empty() {
        notes.push("/proc/cpuinfo: not readable".to_string());
        os_cpu_identity(roots)
    } else {
        cpuinfo_identity(&processors)
    };

    let logical_cores = if !processors.is_empty() {
        processors.len()
    } else if let Some(count) =
        read_trimmed(&roots.path("/sys/devices/system/cpu/online")).and_then(|list| count_cpu_list(&list))
    {
        count
    } else {
        identity.os_logical_cores.unwrap_or(1)
    };

    let (physical_cores, sockets, topology_source) = core_topology(roots, &processors, logical_cores)
        .or(identity
            .os_physical_cores
            .map(|physical| (physical, 1, "the OS (sysctl hw.physicalcpu)".to_string())))
        .unwrap_or_else(|| {
            (
                logical_cores,
                1,
                "no core ids in /proc/cpuinfo or sysfs topology (VM?): one core per logical CPU assumed".to_string(),
            )
        });

    let meminfo = read_text(&roots.path("/proc/meminfo"))
        .map(|text| parse_colon_separated(&text))
        .unwrap_or_default();
    let mem_total_bytes = meminfo_bytes(&meminfo, "MemTotal").or(identity.os_memory_bytes);
    let mem_available_bytes = meminfo_bytes(&meminfo, "MemAvailable").or_else(|| {
        // Kernels before 3.14 have no MemAvailable; free + page cache is the
        // usual stand-in.
        let free = meminfo_bytes(&meminfo, "MemFree")?;
        Some(free + meminfo_bytes(&meminfo, "Buffers").unwrap_or(0) + meminfo_bytes(&meminfo, "Cached").unwrap_or(0))
    });
    if meminfo.is_empty() {
        notes.push("/proc/meminfo: not readable".to_string());
    }

    let numa_nodes = numa_nodes(roots);
    let cgroup = cgroup_limits(roots);

    let effective_memory_bytes = match (mem_total_bytes, cgroup.as_ref().and_then(|c| c.memory_max_bytes)) {
        (Some(total), Some(limit)) => Some(total.min(limit)),
        (total, limit) => total.or(limit),
    };
    let cgroup_headroom = cgroup.as_ref().and_then(|c| {
        let limit = c.memory_max_bytes?;
        Some(limit.saturating_sub(c.memory_current_bytes.unwrap_or(0)))
    });
    let effective_available_bytes = match (mem_available_bytes, cgroup_headroom) {
        (Some(available), Some(headroom)) => Some(available.min(headroom)),
        (available, headroom) => available.or(headroom),
    };
    let effective_cpus = match cgroup.as_ref().and_then(|c| c.cpu_quota_cores) {
        Some(quota) => quota.min(logical_cores as f64),
        None => logical_cores as f64,
    };

    let simd = identity.simd;
    let details = CpuDetails {
        model_name: identity.model_name.clone(),
        vendor: identity.vendor.clone(),
        logical_cores,
        physical_cores,
        sockets,
        topology_source,
        simd,
        mem_total_bytes,
        mem_available_bytes,
        numa_nodes,
        cgroup,
        effective_memory_bytes,
        effective_available_bytes,
        effective_cpus,
    };

    let mut properties = BTreeMap::new();
    if let Some(vendor) = &identity.vendor {
        properties.insert("vendor".to_string(), vendor.clone());
    }
    properties.insert("physical_cores".to_string(), physical_cores.to_string());
    properties.insert("logical_cores".to_string(), logical_cores.to_string());
    properties.insert("sockets".to_string(), sockets.to_string());
    properties.insert("numa_nodes".to_string(), details.numa_nodes.len().max(1).to_string());

    let device = DeviceInfo {
        id: DeviceId::CPU,
        name: identity.model_name.clone(),
        total_bytes: effective_memory_bytes,
        free_bytes: effective_available_bytes,
        capabilities: simd.names().into_iter().map(str::to_string).collect(),
        properties,
    };

    let mut reason = format!(
        "{}: {}, {physical_cores} physical / {logical_cores} logical cores",
        identity.source, identity.model_name
    );
    if let Some(total) = mem_total_bytes {
        reason.push_str(&format!("; /proc/meminfo: {} total", format_bytes(total)));
    }
    for note in notes {
        reason.push_str("; ");
        reason.push_str(&note);
    }
    let findings = Findings {
        present: true,
        reason,
        driver_version: None,
        libraries: Vec::new(),
        devices: vec![device],
    };
    (findings, Some(details))
}

/// One `processor` block of `/proc/cpuinfo`.
type CpuinfoBlock = BTreeMap<String, String>;

/// The `processor` blocks of `/proc/cpuinfo`. Blocks without a `processor`
/// key (the trailing `Hardware`/`Serial` block of some ARM kernels) are kept
/// apart: their keys are merged into every processor as fallbacks.
fn parse_cpuinfo(text: &str) -> Vec<CpuinfoBlock> {
    let mut blocks: Vec<CpuinfoBlock> = Vec::new();
    let mut extra = CpuinfoBlock::new();
    for chunk in text.split("\n\n") {
        let block = parse_colon_separated(chunk);
        if block.is_empty() {
            continue;
        }
        if block.contains_key("processor") {
            blocks.push(block);
        } else {
            extra.extend(block);
        }
    }
    for block in &mut blocks {
        for (key, value) in &extra {
            block.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    blocks
}

struct CpuIdentity {
    model_name: String,
    vendor: Option<String>,
    simd: SimdFeatures,
    /// Where the identity came from, for the reason line.
    source: &'static str,
    os_logical_cores: Option<usize>,
    os_physical_cores: Option<usize>,
    os_memory_bytes: Option<u64>,
}

fn cpuinfo_identity(processors: &[CpuinfoBlock]) -> CpuIdentity {
    let first = processors.first();
    let lookup = |key: &str| first.and_then(|block| block.get(key)).cloned();
    let arm_name = arm_model_name(processors);
    let model_name = lookup("model name")
        // 32-bit ARM kernels say "ARMv7 Processor rev 4 (v7l)"; the part
        // table names 64-bit cores better when both exist.
        .filter(|name| !(name.starts_with("ARMv") && arm_name.is_some()))
        .or(arm_name)
        .or_else(|| lookup("Hardware"))
        .or_else(|| lookup("cpu model"))
        .unwrap_or_else(|| "unknown CPU".to_string());
    let vendor = lookup("vendor_id").or_else(|| {
        let implementer = lookup("CPU implementer")?;
        Some(arm_implementer_name(&implementer).map_or_else(|| format!("implementer {implementer}"), str::to_string))
    });
    CpuIdentity {
        model_name,
        vendor,
        simd: simd_from_cpuinfo(processors),
        source: "/proc/cpuinfo",
        os_logical_cores: None,
        os_physical_cores: None,
        os_memory_bytes: None,
    }
}

/// Features every processor has: a kernel picked from these runs on any core
/// (big.LITTLE parts can differ).
fn simd_from_cpuinfo(processors: &[CpuinfoBlock]) -> SimdFeatures {
    let mut common: Option<BTreeSet<&str>> = None;
    for block in processors {
        let flags: BTreeSet<&str> = block
            .get("flags")
            .or_else(|| block.get("Features"))
            .map(|line| line.split_whitespace().collect())
            .unwrap_or_default();
        common = Some(match common {
            Some(previous) => previous.intersection(&flags).copied().collect(),
            None => flags,
        });
    }
    let flags = common.unwrap_or_default();
    let has = |name: &str| flags.contains(name);
    SimdFeatures {
        avx2: has("avx2"),
        fma: has("fma"),
        f16c: has("f16c"),
        avx512f: has("avx512f"),
        avx512_bf16: has("avx512_bf16"),
        avx512_vnni: has("avx512_vnni"),
        avx_vnni: has("avx_vnni"),
        neon: has("asimd"),
        neon_fp16: has("asimdhp"),
        neon_dotprod: has("asimddp"),
        i8mm: has("i8mm"),
        arm_bf16: has("bf16"),
        sve: has("sve"),
        sve2: has("sve2"),
    }
}

/// `Neoverse-V1`, or `4x Cortex-A78 + 4x Cortex-A55` for mixed cores, from
/// the implementer and part ids arm64 cpuinfo gives instead of a model name.
fn arm_model_name(processors: &[CpuinfoBlock]) -> Option<String> {
    let mut parts: Vec<((String, String), usize)> = Vec::new();
    for block in processors {
        let (Some(implementer), Some(part)) = (block.get("CPU implementer"), block.get("CPU part")) else {
            continue;
        };
        let key = (implementer.to_lowercase(), part.to_lowercase());
        match parts.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, count)) => *count += 1,
            None => parts.push((key, 1)),
        }
    }
    let describe = |(implementer, part): &(String, String)| {
        let vendor =
            arm_implementer_name(implementer).map_or_else(|| format!("implementer {implementer}"), str::to_string);
        match arm_part_name(implementer, part) {
            Some(name) => format!("{vendor} {name}"),
            None => format!("{vendor} part {part}"),
        }
    };
    match parts.as_slice() {
        [] => None,
        [(key, _)] => Some(describe(key)),
        many => Some(
            many.iter()
                .map(|(key, count)| format!("{count}x {}", describe(key)))
                .collect::<Vec<_>>()
                .join(" + "),
        ),
    }
}

fn arm_implementer_name(implementer: &str) -> Option<&'static str> {
    Some(match implementer.to_lowercase().as_str() {
        "0x41" => "ARM",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x46" => "Fujitsu",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x50" => "APM",
        "0x51" => "Qualcomm",
        "0x61" => "Apple",
        "0x6d" => "Microsoft",
        "0xc0" => "Ampere",
        _ => return None,
    })
}

fn arm_part_name(implementer: &str, part: &str) -> Option<&'static str> {
    Some(match (implementer, part) {
        ("0x41", "0xd03") => "Cortex-A53",
        ("0x41", "0xd04") => "Cortex-A35",
        ("0x41", "0xd05") => "Cortex-A55",
        ("0x41", "0xd07") => "Cortex-A57",
        ("0x41", "0xd08") => "Cortex-A72",
        ("0x41", "0xd09") => "Cortex-A73",
        ("0x41", "0xd0a") => "Cortex-A75",
        ("0x41", "0xd0b") => "Cortex-A76",
        ("0x41", "0xd0c") => "Neoverse-N1",
        ("0x41", "0xd0d") => "Cortex-A77",
        ("0x41", "0xd40") => "Neoverse-V1",
        ("0x41", "0xd41") => "Cortex-A78",
        ("0x41", "0xd44") => "Cortex-X1",
        ("0x41", "0xd46") => "Cortex-A510",
        ("0x41", "0xd47") => "Cortex-A710",
        ("0x41", "0xd48") => "Cortex-X2",
        ("0x41", "0xd49") => "Neoverse-N2",
        ("0x41", "0xd4b") => "Cortex-A78C",
        ("0x41", "0xd4d") => "Cortex-A715",
        ("0x41", "0xd4e") => "Cortex-X3",
        ("0x41", "0xd4f") => "Neoverse-V2",
        ("0x41", "0xd80") => "Cortex-A520",
        ("0x41", "0xd81") => "Cortex-A720",
        ("0x41", "0xd82") => "Cortex-X4",
        ("0x41", "0xd84") => "Neoverse-V3",
        ("0x41", "0xd8e") => "Neoverse-N3",
        ("0x51", "0x001") => "Oryon",
        ("0x51", "0x802") => "Kryo 3xx Gold",
        ("0x51", "0x803") => "Kryo 3xx Silver",
        ("0x51", "0x804") => "Kryo 4xx Gold",
        ("0x51", "0x805") => "Kryo 4xx Silver",
        ("0xc0", "0xac3") => "AmpereOne",
        ("0x48", "0xd01") => "TaiShan v110",
        _ => return None,
    })
}

/// Physical cores and sockets, from cpuinfo `physical id`/`core id` (x86) or
/// sysfs topology (arm64 and VMs whose cpuinfo lacks the ids).
fn core_topology(
    roots: &ProbeRoots,
    processors: &[CpuinfoBlock],
    logical_cores: usize,
) -> Option<(usize, usize, String)> {
    let cpuinfo_pairs: Option<BTreeSet<(String, String)>> = processors
        .iter()
        .map(|block| Some((block.get("physical id")?.clone(), block.get("core id")?.clone())))
        .collect();
    if let Some(pairs) = cpuinfo_pairs.filter(|pairs| !pairs.is_empty()) {
        let sockets: BTreeSet<&String> = pairs.iter().map(|(socket, _)| socket).collect();
        return Some((
            pairs.len(),
            sockets.len(),
            "/proc/cpuinfo physical id/core id".to_string(),
        ));
    }

    let cpus = numbered_entries(&roots.path("/sys/devices/system/cpu"), "cpu");
    let mut pairs = BTreeSet::new();
    for (_, cpu_dir) in &cpus {
        let topology = cpu_dir.join("topology");
        // Offline CPUs have no topology directory; skip them rather than
        // give up on the whole count.
        let (Some(package), Some(core)) = (
            read_trimmed(&topology.join("physical_package_id")),
            read_trimmed(&topology.join("core_id")),
        ) else {
            continue;
        };
        pairs.insert((package, core));
    }
    if pairs.is_empty() {
        return None;
    }
    let sockets: BTreeSet<&String> = pairs.iter().map(|(package, _)| package).collect();
    // A physical core count above the logical count means the topology files
    // disagree with cpuinfo (e.g. hot-unplugged CPUs); trust the smaller.
    Some((
        pairs.len().min(logical_cores.max(1)),
        sockets.len(),
        "/sys/devices/system/cpu/cpu*/topology".to_string(),
    ))
}

fn meminfo_bytes(meminfo: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    let value = meminfo.get(key)?;
    let mut parts = value.split_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    // meminfo says "kB" but means KiB.
    match parts.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

fn numa_nodes(roots: &ProbeRoots) -> Vec<NumaNode> {
    numbered_entries(&roots.path("/sys/devices/system/node"), "node")
        .into_iter()
        .map(|(id, dir)| {
            let mem_total_bytes = read_text(&dir.join("meminfo")).ok().and_then(|text| {
                // Lines look like "Node 0 MemTotal:       4286676 kB".
                text.lines().find_map(|line| {
                    let rest = line.split_once("MemTotal:")?.1;
                    let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
                    kib.checked_mul(1024)
                })
            });
            NumaNode {
                id,
                cpus: read_trimmed(&dir.join("cpulist")).unwrap_or_default(),
                mem_total_bytes,
            }
        })
        .collect()
}

/// The limits of this process's cgroup: v2 when `/sys/fs/cgroup` is a
/// unified hierarchy, else v1 controllers. The effective limit is the
/// tightest one between the process's cgroup and the hierarchy root.
fn cgroup_limits(roots: &ProbeRoots) -> Option<CgroupLimits> {
    let membership = read_text(&roots.path("/proc/self/cgroup")).ok()?;
    let mut v2_path = None;
    let mut v1_paths: BTreeMap<String, String> = BTreeMap::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if controllers.is_empty() {
            v2_path = Some(path.to_string());
        } else {
            for controller in controllers.split(',') {
                v1_paths.insert(controller.to_string(), path.to_string());
            }
        }
    }

    let mount = roots.path("/sys/fs/cgroup");
    if mount.join("cgroup.controllers").is_file() {
        let path = v2_path.unwrap_or_else(|| "/".to_string());
        return Some(cgroup_v2_limits(&mount, &path));
    }
    let memory_path = v1_paths.get("memory");
    let cpu_path = v1_paths.get("cpu");
    if memory_path.is_none() && cpu_path.is_none() {
        return None;
    }
    Some(cgroup_v1_limits(&mount, memory_path, cpu_path))
}

/// Directories from the process's cgroup up to the hierarchy mount,
/// innermost first. Inside a cgroup namespace the listed path may not exist
/// under the mount (the container sees its own cgroup as the root), in which
/// case the mount itself is the process's cgroup.
fn cgroup_ancestry(mount: &Path, path: &str) -> Vec<PathBuf> {
    let mut leaf = mount.join(path.trim_start_matches('/'));
    if !leaf.is_dir() {
        leaf = mount.to_path_buf();
    }
    let mut dirs = Vec::new();
    let mut current = Some(leaf.as_path());
    while let Some(dir) = current {
        dirs.push(dir.to_path_buf());
        if dir == mount {
            break;
        }
        current = dir.parent().filter(|parent| parent.starts_with(mount));
    }
    dirs
}

fn cgroup_v2_limits(mount: &Path, path: &str) -> CgroupLimits {
    let dirs = cgroup_ancestry(mount, path);
    let memory_max_bytes = dirs
        .iter()
        .filter_map(|dir| read_trimmed(&dir.join("memory.max")))
        .filter_map(|value| value.parse::<u64>().ok()) // "max" = unlimited
        .min();
    let memory_current_bytes = dirs.iter().find_map(|dir| read_u64(&dir.join("memory.current")));
    let cpu_quota_cores = dirs
        .iter()
        .filter_map(|dir| read_trimmed(&dir.join("cpu.max")))
        .filter_map(|value| {
            let mut fields = value.split_whitespace();
            let quota: f64 = fields.next()?.parse().ok()?; // "max" = unlimited
            let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
            (period > 0.0).then(|| quota / period)
        })
        .reduce(f64::min);
    CgroupLimits {
        version: 2,
        path: path.to_string(),
        memory_max_bytes,
        memory_current_bytes,
        cpu_quota_cores,
    }
}

fn cgroup_v1_limits(mount: &Path, memory_path: Option<&String>, cpu_path: Option<&String>) -> CgroupLimits {
    let (memory_max_bytes, memory_current_bytes) = match memory_path {
        Some(path) => {
            let dirs = cgroup_ancestry(&mount.join("memory"), path);
            let limit = dirs
                .iter()
                .filter_map(|dir| read_u64(&dir.join("memory.limit_in_bytes")))
                .filter(|&limit| limit < CGROUP_V1_UNLIMITED_THRESHOLD)
                .min();
            let usage = dirs.iter().find_map(|dir| read_u64(&dir.join("memory.usage_in_bytes")));
            (limit, usage)
        }
        None => (None, None),
    };
    let cpu_quota_cores = cpu_path.and_then(|path| {
        // The cpu controller is mounted as `cpu`, or co-mounted as
        // `cpu,cpuacct` (with `cpu` a symlink on most distributions).
        let controller_mount = ["cpu", "cpu,cpuacct", "cpuacct,cpu"]
            .iter()
            .map(|name| mount.join(name))
            .find(|dir| dir.is_dir())?;
        cgroup_ancestry(&controller_mount, path)
            .iter()
            .filter_map(|dir| {
                let quota: i64 = read_trimmed(&dir.join("cpu.cfs_quota_us"))?.parse().ok()?;
                let period: i64 = read_trimmed(&dir.join("cpu.cfs_period_us"))?.parse().ok()?;
                // A quota of -1 means unlimited.
                (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
            })
            .reduce(f64::min)
    });
    CgroupLimits {
        version: 1,
        path: memory_path.or(cpu_path).cloned().unwrap_or_else(|| "/".to_string()),
        memory_max_bytes,
        memory_current_bytes,
        cpu_quota_cores,
    }
}

/// Identity when `/proc/cpuinfo` is missing: ask the OS on a live host
/// (macOS sysctl, std's runtime feature detection); a recorded tree without
/// cpuinfo has nothing to tell.
fn os_cpu_identity(roots: &ProbeRoots) -> CpuIdentity {
    if !roots.live_host {
        return CpuIdentity {
            model_name: "unknown CPU".to_string(),
            vendor: None,
            simd: SimdFeatures::default(),
            source: "recorded tree without /proc/cpuinfo",
            os_logical_cores: None,
            os_physical_cores: None,
            os_memory_bytes: None,
        };
    }
    #[cfg(target_os = "macos")]
    let (model_name, physical, memory) = (
        super::macos::sysctl_string("machdep.cpu.brand_string").unwrap_or_else(|| "unknown CPU".to_string()),
        super::macos::sysctl_u64("hw.physicalcpu").and_then(|n| usize::try_from(n).ok()),
        super::macos::sysctl_u64("hw.memsize"),
    );
    #[cfg(not(target_os = "macos"))]
    let (model_name, physical, memory) = ("unknown CPU".to_string(), None, None);
    CpuIdentity {
        model_name,
        vendor: None,
        simd: runtime_simd(),
        source: "the OS (runtime detection)",
        os_logical_cores: std::thread::available_parallelism().ok().map(usize::from),
        os_physical_cores: physical,
        os_memory_bytes: memory,
    }
}

#[cfg(target_arch = "x86_64")]
fn runtime_simd() -> SimdFeatures {
    SimdFeatures {
        avx2: std::arch::is_x86_feature_detected!("avx2"),
        fma: std::arch::is_x86_feature_detected!("fma"),
        f16c: std::arch::is_x86_feature_detected!("f16c"),
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
        avx512_vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
        avx_vnni: std::arch::is_x86_feature_detected!("avxvnni"),
        ..SimdFeatures::default()
    }
}

#[cfg(target_arch = "aarch64")]
fn runtime_simd() -> SimdFeatures {
    SimdFeatures {
        neon: std::arch::is_aarch64_feature_detected!("neon"),
        neon_fp16: std::arch::is_aarch64_feature_detected!("fp16"),
        neon_dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
        i8mm: std::arch::is_aarch64_feature_detected!("i8mm"),
        arm_bf16: std::arch::is_aarch64_feature_detected!("bf16"),
        sve: std::arch::is_aarch64_feature_detected!("sve"),
        sve2: std::arch::is_aarch64_feature_detected!("sve2"),
        ..SimdFeatures::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn runtime_simd() -> SimdFeatures {
    SimdFeatures::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_little_arm_cores_are_named_with_counts() {
        let block = |part: &str| {
            CpuinfoBlock::from([
                ("processor".to_string(), "0".to_string()),
                ("CPU implementer".to_string(), "0x41".to_string()),
                ("CPU part".to_string(), part.to_string()),
            ])
        };
        let processors = vec![block("0xd05"), block("0xd05"), block("0xd41")];
        assert_eq!(
            arm_model_name(&processors).unwrap(),
            "2x ARM Cortex-A55 + 1x ARM Cortex-A78"
        );
    }

    #[test]
    fn simd_features_are_those_all_cores_share() {
        let text = "processor\t: 0\nFeatures\t: fp asimd asimddp sve\n\nprocessor\t: 1\nFeatures\t: fp asimd asimddp\n";
        let simd = simd_from_cpuinfo(&parse_cpuinfo(text));
        assert!(simd.neon && simd.neon_dotprod);
        assert!(!simd.sve);
    }

    #[test]
    fn meminfo_values_are_kib() {
        let meminfo = parse_colon_separated("MemTotal:       24684092 kB\nHugePages_Total:       0\n");
        assert_eq!(meminfo_bytes(&meminfo, "MemTotal"), Some(24684092 * 1024));
        assert_eq!(meminfo_bytes(&meminfo, "HugePages_Total"), Some(0));
    }
}
