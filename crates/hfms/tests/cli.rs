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
    // The last line names the kernel sets this host runs (and the tests
    // check) and those it cannot.
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kernel sets run and tested here: scalar") && last.contains("untested here: "),
        "{last}"
    );
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
    assert_eq!(
        smol["aliases"],
        serde_json::json!(["smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct:Q4_1"])
    );
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

/// `serve --print-config`: the effective settings, flag > env > file >
/// default, as TOML that `--config` reads back; bad settings fail at start.
#[test]
fn serve_print_config_shows_the_effective_settings() {
    let dir = std::env::temp_dir().join(format!("hfms-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hfms.toml");
    std::fs::write(
        &file,
        "port = 9000\nmax_n = 4\nthreads = 3\n[aliases]\nmine = \"org/mine\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfms"))
        .args(["serve", "--print-config", "--port", "9100", "--config"])
        .arg(&file)
        .env("HFMS_THREADS", "5")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(v["port"].as_integer(), Some(9100), "flag beats file");
    assert_eq!(v["threads"].as_integer(), Some(5), "env beats file");
    assert_eq!(v["max_n"].as_integer(), Some(4), "file beats default");
    assert_eq!(v["max_batch_tokens"].as_integer(), Some(512), "default");
    assert!(
        v["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("mine=org/mine"))
    );
    assert!(!v.contains_key("print_config") && !v.contains_key("config"));
    // What it printed is a configuration file.
    let again = dir.join("again.toml");
    std::fs::write(&again, &text).unwrap();
    let (ok, out2, err) = hfms(&["serve", "--print-config", "--config", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        toml::from_str::<toml::Table>(&out2).unwrap()["port"].as_integer(),
        Some(9100)
    );
    // Bad settings fail before serving, naming the setting.
    for (args, needle) in [
        (vec!["--keep-alive", "nan"], "keep-alive"),
        (vec!["--max-n", "0"], "max-n"),
        (vec!["--memory-fraction", "2"], "memory-fraction"),
        (vec!["--encoder-weights", "fp8"], "encoder-weights"),
        (vec!["--encoder-weights", ""], "encoder-weights"),
        (vec!["--encoder-weights", "F16"], "encoder-weights"),
        (vec!["--encoder-f16"], "--encoder-f16"),
        (vec!["--chat-template", "/no/such/file.jinja"], "--chat-template"),
        (vec!["--chat-template", ""], "--chat-template"),
        (vec!["--chat-template", "smollm2="], "--chat-template"),
        (vec!["--chat-template", "/"], "--chat-template"),
    ] {
        let mut a = vec!["serve", "--print-config"];
        a.extend(args);
        let (ok, _, err) = hfms(&a);
        assert!(!ok && err.contains(needle), "{err}");
    }
    assert_eq!(v["encoder_weights"].as_str(), Some("f32"), "default");
    // A file's values pass the same checks as the flags', and an error
    // names the setting.
    for (bad, needle) in [
        ("encoder_weights = \"bf17\"\n", "encoder_weights"),
        ("encoder_weights = 16\n", "encoder_weights"),
        ("encoder_weights = []\n", "encoder_weights"),
        ("max_n = 0\n", "max_n"),
        ("memory_fraction = 2.0\n", "memory_fraction"),
        ("threads = -1\n", "threads"),
        ("port = \"http\"\n", "port"),
    ] {
        std::fs::write(&file, bad).unwrap();
        let (ok, _, err) = hfms(&["serve", "--print-config", "--config", file.to_str().unwrap()]);
        assert!(!ok && err.contains(needle), "{bad}: {err}");
    }
    // Template files: too large, not text, not a template; a table in the
    // file names models.
    let tmpl = dir.join("t.jinja");
    for (content, needle) in [
        (vec![b'a'; (1 << 20) + 1], "more than 1 MiB"),
        (vec![0xff, 0xfe, 0x00], "not UTF-8"),
        (b"{% for %}".to_vec(), "does not compile"),
    ] {
        std::fs::write(&tmpl, &content).unwrap();
        let (ok, _, err) = hfms(&["serve", "--print-config", "--chat-template", tmpl.to_str().unwrap()]);
        assert!(!ok && err.contains(needle), "{needle}: {err}");
    }
    std::fs::write(&tmpl, "{{ messages[0]['content'] }}").unwrap();
    std::fs::write(
        &file,
        format!("[chat_templates]\nsmollm2 = {:?}\n\"*\" = {:?}\n", tmpl, tmpl),
    )
    .unwrap();
    let (ok, out, err) = hfms(&["serve", "--print-config", "--config", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("smollm2="), "{out}");
    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let (ok, _, err) = hfms(&["serve", "--print-config", "--config", file.to_str().unwrap()]);
    assert!(!ok && err.contains("no_such_setting"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `skills`: every skill of the build with its architectures, task,
/// formats, weight types and platforms, as JSON and as a table.
#[test]
fn skills_lists_the_registry() {
    let (ok, out, err) = hfms(&["skills", "--json"]);
    assert!(ok, "{err}");
    let skills: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let llama = skills.iter().find(|s| s["name"] == "llama").expect("llama skill");
    assert_eq!(llama["task"], "generate");
    assert!(llama["architectures"].as_array().unwrap().iter().any(|a| a == "qwen2"));
    assert!(
        llama["weight_types"]["gguf"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "Q4_K")
    );
    assert_eq!(
        llama["weight_types"]["safetensors"],
        serde_json::json!(["F32", "F16", "BF16"])
    );
    let bert = skills.iter().find(|s| s["name"] == "bert").expect("bert skill");
    assert_eq!(bert["task"], "embed");
    assert_eq!(bert["formats"], serde_json::json!(["safetensors"]));
    for (name, task, family) in [
        ("bert_classifier", "classify", "bert"),
        ("mpnet", "embed", "mpnet"),
        ("mpnet_classifier", "classify", "mpnet"),
        ("nomic_bert", "embed", "nomic_bert"),
        ("modernbert", "embed", "modern_bert"),
        ("gemma3", "generate", "gemma"),
        ("gpt2", "generate", "gpt2"),
        ("phi3", "generate", "phi3"),
        ("gemma2", "generate", "gemma"),
        ("moe", "generate", "moe"),
    ] {
        let s = skills
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} skill"));
        assert_eq!(
            (s["task"].as_str(), s["family"].as_str()),
            (Some(task), Some(family)),
            "{s}"
        );
    }
    for s in &skills {
        assert!(s["platforms"].as_array().unwrap().iter().any(|p| p == "cpu"), "{s}");
    }
    let (ok, table, err) = hfms(&["skills"]);
    assert!(ok, "{err}");
    assert!(
        table.starts_with("SKILL") && table.contains("xlm-roberta") && table.contains("gguf: F32"),
        "{table}"
    );
}
