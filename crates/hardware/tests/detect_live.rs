//! `detect_default()` on whatever machine runs the tests: only checks that
//! hold everywhere (no GPU assumed).

use std::time::{Duration, Instant};

use hfms_hardware::{Platform, detect_default, render_table};

#[test]
fn detect_default_reports_this_machine() {
    let started = Instant::now();
    let report = detect_default();
    // Probes run concurrently under a 2 s limit each.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.root, "/");
    assert_eq!(report.platforms.len(), 6);
    let cpu = report.cpu.as_ref().expect("CPU probe answered");
    assert!(cpu.logical_cores >= 1);
    assert!(cpu.physical_cores >= 1 && cpu.physical_cores <= cpu.logical_cores);
    assert!(cpu.effective_cpus > 0.0);
    let cpu_platform = report.platform(Platform::Cpu).unwrap();
    assert!(cpu_platform.present && cpu_platform.build_supports);
    assert_eq!(cpu_platform.devices.len(), 1);
    if cfg!(target_os = "linux") {
        assert!(cpu.mem_total_bytes.is_some_and(|bytes| bytes > 0));
        assert!(!report.platform(Platform::Metal).unwrap().present);
    }
    for platform in &report.platforms {
        assert!(!platform.reason.is_empty(), "{} has no reason", platform.platform);
    }
    assert!(render_table(&report).contains("cpu       present: yes"));
}

/// What cpuinfo says must agree with what the CPU says about itself.
#[cfg(target_arch = "x86_64")]
#[test]
fn cpuinfo_flags_agree_with_runtime_detection() {
    let report = detect_default();
    let simd = report.cpu.expect("CPU probe answered").simd;
    if !std::path::Path::new("/proc/cpuinfo").exists() {
        return;
    }
    assert_eq!(simd.avx2, std::arch::is_x86_feature_detected!("avx2"));
    assert_eq!(simd.fma, std::arch::is_x86_feature_detected!("fma"));
    assert_eq!(simd.f16c, std::arch::is_x86_feature_detected!("f16c"));
    assert_eq!(simd.avx512f, std::arch::is_x86_feature_detected!("avx512f"));
    assert_eq!(simd.avx512_vnni, std::arch::is_x86_feature_detected!("avx512vnni"));
    assert_eq!(simd.avx512_bf16, std::arch::is_x86_feature_detected!("avx512bf16"));
}
