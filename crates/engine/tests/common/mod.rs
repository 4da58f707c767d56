//! Paths shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The models folder filled by `scripts/fetch-models.sh`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("HFMS_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"))
}

pub fn smollm2_gguf() -> PathBuf {
    let p = models_dir().join("HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

pub fn minilm_dir() -> PathBuf {
    let p = models_dir().join("sentence-transformers/all-MiniLM-L6-v2");
    assert!(
        p.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

pub fn reference(name: &str) -> serde_json::Value {
    let p = workspace().join("tests/reference").join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}
