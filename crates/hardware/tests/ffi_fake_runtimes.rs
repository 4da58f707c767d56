//! The dlopen paths (NVML, OpenVINO C API, QNN providers) against stand-in
//! libraries built from `tests/fake_runtimes/*.c` with the system C compiler.
//! These check the FFI plumbing (symbol signatures, buffers, frees, error
//! codes) without any vendor runtime. Without a C compiler (`cc`) the test
//! says so and returns.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use hfms_hardware::{Platform, ProbeRoots, detect};

fn compile(source: &str, output: &Path) -> bool {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake_runtimes")
        .join(source);
    match Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(output)
        .arg(&source)
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => false,
    }
}

#[test]
fn probes_query_runtimes_through_dlopen() {
    let lib_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-runtimes");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let built = [
        ("nvml.c", "libnvidia-ml.so.1"),
        ("openvino.c", "libopenvino_c.so"),
        ("qnn.c", "libQnnHtp.so"),
    ]
    .iter()
    .all(|(source, library)| compile(source, &lib_dir.join(library)));
    if !built {
        eprintln!("skipping: no working C compiler (`cc`) to build the stand-in runtimes");
        return;
    }

    // A tree with nothing in it, so only the libraries can make platforms
    // present.
    let mut roots = ProbeRoots::under(lib_dir.join("empty-root"));
    roots.library_dirs = vec![lib_dir.clone()];
    roots.cuda_visible_devices = Some("GPU-aaaa,0".to_string());
    let report = detect(&roots);

    let cuda = report.platform(Platform::Cuda).unwrap();
    assert!(cuda.present, "{}", cuda.reason);
    assert_eq!(cuda.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(
        cuda.libraries,
        [lib_dir.join("libnvidia-ml.so.1").display().to_string()]
    );
    // CUDA_VISIBLE_DEVICES picked the L4 by UUID prefix first.
    let l4 = &cuda.devices[0];
    assert_eq!((l4.id.to_string().as_str(), l4.name.as_str()), ("cuda:0", "NVIDIA L4"));
    assert_eq!(l4.total_bytes, None);
    assert_eq!(
        l4.properties["errors"],
        "nvmlDeviceGetMemoryInfo failed: Not Supported (NVML error 3)"
    );
    assert_eq!(l4.properties["uuid"], "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
    assert_eq!(l4.capabilities[0], "sm_89");
    let h100 = &cuda.devices[1];
    assert_eq!(h100.name, "NVIDIA H100 80GB HBM3");
    assert_eq!(h100.total_bytes, Some(85520809984));
    assert_eq!(h100.free_bytes, Some(84934656000));
    assert_eq!(h100.properties["compute_capability"], "9.0");
    assert_eq!(h100.properties["nvml_index"], "0");

    let openvino = report.platform(Platform::OpenVino).unwrap();
    assert!(openvino.present, "{}", openvino.reason);
    assert_eq!(
        openvino.driver_version.as_deref(),
        Some("2024.4.0-16579-c3152d32c9c-releases/2024/4")
    );
    let devices: Vec<(String, &str, Option<u64>)> = openvino
        .devices
        .iter()
        .map(|d| (d.id.to_string(), d.name.as_str(), d.total_bytes))
        .collect();
    assert_eq!(
        devices,
        [
            ("openvino:0".to_string(), "Intel(R) Core(TM) Ultra 7 155H", None),
            (
                "openvino:1".to_string(),
                "Intel(R) Arc(TM) Graphics (iGPU)",
                Some(16722853888)
            ),
            ("openvino:2".to_string(), "Intel(R) AI Boost", None),
        ]
    );
    assert_eq!(openvino.devices[1].properties["openvino_device"], "GPU.0");
    assert_eq!(openvino.devices[2].capabilities, ["npu"]);

    let qnn = report.platform(Platform::Qnn).unwrap();
    assert!(qnn.present, "{}", qnn.reason);
    assert_eq!(
        qnn.driver_version.as_deref(),
        Some("QNN API 2.20.0 (backend API 5.26.0)")
    );
    assert_eq!(qnn.devices[0].properties["provider"], "HTP_QTI_AISW");
    assert!(qnn.reason.contains("no SoC info"), "{}", qnn.reason);
}
