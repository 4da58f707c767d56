//! Metal probe: macOS only. Reads sysctl values (no Objective-C needed):
//! the unified memory size and the chip name, from which the Apple GPU
//! family is guessed.

use super::{Findings, ProbeRoots};

/// The Metal GPU family of an Apple chip, guessed from its brand string
/// (`Apple M2 Pro` -> `apple8`). `None` for chips this table does not know.
// Only the macOS probe calls it; it is platform-independent so Linux tests
// cover it.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn apple_gpu_family(brand: &str) -> Option<&'static str> {
    let chip = brand.strip_prefix("Apple ")?;
    let generation = chip.split_whitespace().next()?;
    Some(match generation {
        "M1" | "A14" => "apple7",
        "M2" | "A15" | "A16" => "apple8",
        "M3" | "M4" | "A17" | "A18" => "apple9",
        _ => return None,
    })
}

#[cfg(not(target_os = "macos"))]
pub(super) fn probe(_roots: &ProbeRoots) -> Findings {
    Findings::absent(format!("not macOS (this is {})", std::env::consts::OS))
}

#[cfg(target_os = "macos")]
pub(super) fn probe(roots: &ProbeRoots) -> Findings {
    use std::collections::BTreeMap;

    use super::macos::{sysctl_string, sysctl_u64};
    use crate::platform::{DeviceId, Platform};
    use crate::report::DeviceInfo;

    if !roots.live_host {
        return Findings::absent("Metal is only queried on the live host, not a recorded tree");
    }
    let brand = sysctl_string("machdep.cpu.brand_string").unwrap_or_else(|| "unknown Mac".to_string());
    let memory = sysctl_u64("hw.memsize");
    let os_version = sysctl_string("kern.osproductversion");
    let family = apple_gpu_family(&brand);
    let apple_silicon = brand.starts_with("Apple ");

    let mut capabilities = Vec::new();
    if let Some(family) = family {
        capabilities.push(family.to_string());
    }
    if apple_silicon {
        capabilities.push("unified_memory".to_string());
    }
    let mut properties = BTreeMap::from([("chip".to_string(), brand.clone())]);
    if let Some(version) = &os_version {
        properties.insert("macos_version".to_string(), version.clone());
    }
    let device = DeviceInfo {
        id: DeviceId::new(Platform::Metal, 0),
        name: if apple_silicon {
            format!("{brand} GPU")
        } else {
            format!("GPU of {brand}")
        },
        // Apple silicon GPUs share system memory; Intel Macs' discrete GPUs
        // are not visible through sysctl, so their memory is unknown.
        total_bytes: if apple_silicon { memory } else { None },
        free_bytes: None,
        capabilities,
        properties,
    };
    let reason = format!(
        "sysctl: {brand}{}{}",
        memory
            .map(|bytes| format!(", {} unified memory", crate::report::format_bytes(bytes)))
            .filter(|_| apple_silicon)
            .unwrap_or_default(),
        family
            .map(|family| format!(", Metal family {family} (guessed from the chip name)"))
            .unwrap_or_else(|| ", Metal family unknown".to_string())
    );
    Findings {
        present: true,
        reason,
        driver_version: os_version.map(|version| format!("macOS {version}")),
        libraries: Vec::new(),
        devices: vec![device],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_families_follow_the_chip_generation() {
        assert_eq!(apple_gpu_family("Apple M1"), Some("apple7"));
        assert_eq!(apple_gpu_family("Apple M2 Pro"), Some("apple8"));
        assert_eq!(apple_gpu_family("Apple M4 Max"), Some("apple9"));
        assert_eq!(apple_gpu_family("Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz"), None);
    }
}
