//! ROCm probe: AMD GPUs from the KFD topology in sysfs, memory from the KFD
//! memory banks and, where the amdgpu driver exposes them, the DRM device's
//! VRAM counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::files::{numbered_entries, parse_space_separated, read_text, read_trimmed, read_u64};
use super::{Findings, ProbeRoots, host_display};
use crate::platform::{DeviceId, Platform};
use crate::report::DeviceInfo;

/// KFD memory bank heap types that are device memory (FB_PUBLIC,
/// FB_PRIVATE); 0 is system memory.
const VRAM_HEAP_TYPES: [u64; 2] = [1, 2];

/// `gfx_target_version` (e.g. 90010) as the LLVM target name (`gfx90a`):
/// major, minor and stepping, the last two as hex digits.
pub(crate) fn gfx_target_name(version: u64) -> Option<String> {
    if version == 0 {
        return None;
    }
    let major = version / 10000;
    let minor = (version / 100) % 100;
    let stepping = version % 100;
    (minor < 16 && stepping < 16).then(|| format!("gfx{major}{minor:x}{stepping:x}"))
}

/// Marketing names for common PCI device ids; sysfs only names the card on
/// some boards (`product_name`), so this fills the gap for the usual ones.
fn known_device_name(device_id: u64) -> Option<&'static str> {
    Some(match device_id {
        0x66a1 => "AMD Instinct MI50",
        0x738c => "AMD Instinct MI100",
        0x7408 => "AMD Instinct MI250X",
        0x740c => "AMD Instinct MI250X / MI250",
        0x740f => "AMD Instinct MI210",
        0x74a1 => "AMD Instinct MI300X",
        0x74a5 => "AMD Instinct MI325X",
        0x73bf => "AMD Radeon RX 6900 XT / 6800 XT",
        0x73df => "AMD Radeon RX 6700 XT",
        0x744c => "AMD Radeon RX 7900 XTX / XT",
        0x7448 => "AMD Radeon PRO W7900",
        0x7480 => "AMD Radeon RX 7600 / 7700S",
        _ => return None,
    })
}

fn property_u64(properties: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    properties.get(key)?.parse().ok()
}

/// The DRM device directory for a KFD node: the render node named by
/// `drm_render_minor`, else the matching `card<minor - 128>` if its PCI
/// device id agrees.
fn drm_device_dir(roots: &ProbeRoots, render_minor: Option<u64>, device_id: u64) -> Option<PathBuf> {
    let minor = render_minor.filter(|&minor| minor > 0)?;
    let drm = roots.path("/sys/class/drm");
    let render = drm.join(format!("renderD{minor}")).join("device");
    if render.is_dir() {
        return Some(render);
    }
    let card = drm.join(format!("card{}", minor.checked_sub(128)?)).join("device");
    let card_device_id =
        read_trimmed(&card.join("device")).and_then(|text| u64::from_str_radix(text.trim_start_matches("0x"), 16).ok());
    (card_device_id == Some(device_id)).then_some(card)
}

fn bank_vram_bytes(node_dir: &Path) -> Option<u64> {
    let banks = numbered_entries(&node_dir.join("mem_banks"), "");
    let mut total = 0u64;
    let mut found = false;
    for (_, bank) in banks {
        let Ok(text) = read_text(&bank.join("properties")) else {
            continue;
        };
        let properties = parse_space_separated(&text);
        let heap_type = property_u64(&properties, "heap_type").unwrap_or(1);
        if let (true, Some(size)) = (
            VRAM_HEAP_TYPES.contains(&heap_type),
            property_u64(&properties, "size_in_bytes"),
        ) {
            total = total.saturating_add(size);
            found = true;
        }
    }
    found.then_some(total)
}

pub(super) fn probe(roots: &ProbeRoots) -> Findings {
    let nodes_dir = roots.path("/sys/class/kfd/kfd/topology/nodes");
    let nodes_display = host_display(&nodes_dir, roots);
    if !nodes_dir.is_dir() {
        return Findings::absent(format!("{nodes_display}: not found (amdgpu/KFD driver not loaded)"));
    }
    let nodes = numbered_entries(&nodes_dir, "");
    let driver_version = read_trimmed(&roots.path("/sys/module/amdgpu/version"));

    let mut devices = Vec::new();
    let mut cpu_nodes = 0usize;
    for (node, node_dir) in &nodes {
        let Ok(text) = read_text(&node_dir.join("properties")) else {
            continue;
        };
        let properties = parse_space_separated(&text);
        let simd_count = property_u64(&properties, "simd_count").unwrap_or(0);
        if simd_count == 0 {
            cpu_nodes += 1;
            continue;
        }
        let index = devices.len() as u32;
        let device_id = property_u64(&properties, "device_id").unwrap_or(0);
        let gfx_target = property_u64(&properties, "gfx_target_version").and_then(gfx_target_name);
        let drm_dir = drm_device_dir(roots, property_u64(&properties, "drm_render_minor"), device_id);

        let vram_total = drm_dir
            .as_ref()
            .and_then(|dir| read_u64(&dir.join("mem_info_vram_total")))
            .or_else(|| bank_vram_bytes(node_dir));
        let vram_used = drm_dir
            .as_ref()
            .and_then(|dir| read_u64(&dir.join("mem_info_vram_used")));
        let free_bytes = match (vram_total, vram_used) {
            (Some(total), Some(used)) => Some(total.saturating_sub(used)),
            // Without the DRM counters the usage is unknown.
            _ => None,
        };

        let name = drm_dir
            .as_ref()
            .and_then(|dir| read_trimmed(&dir.join("product_name")))
            .map(|name| format!("AMD {name}"))
            .or_else(|| known_device_name(device_id).map(str::to_string))
            .unwrap_or_else(|| {
                format!(
                    "AMD GPU {} (device {device_id:#06x})",
                    gfx_target.as_deref().unwrap_or("unknown gfx target")
                )
            });

        let mut properties_out = BTreeMap::from([
            ("kfd_node".to_string(), node.to_string()),
            ("device_id".to_string(), format!("{device_id:#06x}")),
            (
                "vendor_id".to_string(),
                format!("{:#06x}", property_u64(&properties, "vendor_id").unwrap_or(0)),
            ),
            ("simd_count".to_string(), simd_count.to_string()),
        ]);
        if let Some(simd_per_cu) = property_u64(&properties, "simd_per_cu").filter(|&n| n > 0) {
            properties_out.insert("compute_units".to_string(), (simd_count / simd_per_cu).to_string());
        }
        if let Some(target) = &gfx_target {
            properties_out.insert("gfx_target".to_string(), target.clone());
        }
        if let Some(dir) = &drm_dir {
            properties_out.insert("drm_device".to_string(), host_display(dir, roots));
        }
        if vram_used.is_none() {
            properties_out.insert(
                "memory_source".to_string(),
                "KFD mem_banks (no DRM VRAM counters; free unknown)".to_string(),
            );
        }

        let mut capabilities: Vec<String> = gfx_target.iter().cloned().collect();
        match property_u64(&properties, "wave_front_size") {
            Some(64) => capabilities.push("wave64".to_string()),
            Some(32) => capabilities.push("wave32".to_string()),
            _ => {}
        }

        devices.push(DeviceInfo {
            id: DeviceId::new(Platform::Rocm, index),
            name,
            total_bytes: vram_total,
            free_bytes,
            capabilities,
            properties: properties_out,
        });
    }

    if devices.is_empty() {
        return Findings {
            driver_version,
            ..Findings::absent(format!(
                "{nodes_display}: no GPU nodes ({} node(s), {cpu_nodes} CPU-only)",
                nodes.len()
            ))
        };
    }
    let reason = format!(
        "{nodes_display}: {} GPU node(s), {cpu_nodes} CPU node(s){}",
        devices.len(),
        driver_version
            .as_deref()
            .map(|version| format!("; amdgpu driver {version}"))
            .unwrap_or_default()
    );
    Findings {
        present: true,
        reason,
        driver_version,
        libraries: Vec::new(),
        devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfx_target_versions_map_to_llvm_names() {
        assert_eq!(gfx_target_name(90010).as_deref(), Some("gfx90a"));
        assert_eq!(gfx_target_name(110000).as_deref(), Some("gfx1100"));
        assert_eq!(gfx_target_name(90402).as_deref(), Some("gfx942"));
        assert_eq!(gfx_target_name(100300).as_deref(), Some("gfx1030"));
        assert_eq!(gfx_target_name(0), None);
    }
}
