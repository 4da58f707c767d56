//! The `hfms discover` and `hfms hardware` commands as a user runs them.

mod common;

use std::process::Command;

use serde_json::Value;

fn hfms(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfms"))
        .args(args)
        .output()
        .expect("run hfms");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hardware_reports_six_platforms_as_json_and_a_table() {
    let (ok, out, err) = hfms(&["hardware", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let platforms: Vec<&str> = v["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["cpu", "cuda", "rocm", "metal", "openvino", "qnn"]);
    let cpu = &v["platforms"][0];
    assert_eq!(cpu["present"], true);
    assert_eq!(cpu["build_supports"], true);
    assert!(v["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    for p in v["platforms"].as_array().unwrap() {
        assert!(
            !p["reason"].as_str().unwrap().is_empty(),
            "every platform says what was probed: {p}"
        );
    }
    let (ok, table, _) = hfms(&["hardware"]);
    assert!(ok);
    for name in ["cpu", "cuda", "rocm", "metal", "openvino", "qnn"] {
        assert!(table.contains(name), "{table}");
    }
}

#[test]
fn discover_lists_the_packaged_models_with_skills_and_reasons() {
    let models = common::models_dir();
    let tiny = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let (ok, out, err) = hfms(&[
        "discover",
        "--json",
        "--no-hf-cache",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        &format!("tiny-spm={}", tiny.join("spm-tokenizer.gguf").display()),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let find = |id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing: {out}"))
    };
    let smol = find("HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(smol["skill"], "llama");
    assert_eq!(smol["task"], "generate");
    assert_eq!(smol["format"], "gguf");
    assert_eq!(smol["dtype"], "Q4_1");
    assert_eq!(smol["context_length"], 8192);
    assert_eq!(smol["aliases"], serde_json::json!(["smollm2"]));
    assert!(smol["parameters"].as_u64().unwrap() > 100_000_000);
    assert_eq!(smol["hardware"], serde_json::json!(["cpu"]));
    let mini = find("sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(
        (
            mini["skill"].as_str(),
            mini["task"].as_str(),
            mini["context_length"].as_u64()
        ),
        (Some("bert"), Some("embed"), Some(256))
    );
    // A GGUF with a tokenizer and no weights: listed, with why it cannot be served.
    let spm = find("tiny-spm");
    assert!(spm["error"].is_string(), "{spm}");
    let (ok, table, _) = hfms(&["discover", "--no-hf-cache", "--models-dir", models.to_str().unwrap()]);
    assert!(ok);
    assert!(
        table.contains("HuggingFaceTB/SmolLM2-135M-Instruct") && table.contains("all-minilm"),
        "{table}"
    );
}
