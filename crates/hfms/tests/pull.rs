//! `hfms pull`, `ls`, `rm`, `POST /models/pull` and `--allow-download`
//! against a Hub look-alike on loopback (tests/hub/testhub.py) serving the
//! packaged test models with the Hub's headers, redirects and ranges.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, client, error_of, models_dir};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SMOLLM_GGUF: &str = "HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A running testhub.py; killed on drop.
struct Hub {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Hub {
    /// The repos every test uses, plus `extra` flags.
    fn start(dir: &Path, extra: &[&str]) -> Hub {
        let models = models_dir();
        let gguf = models.join(SMOLLM_GGUF);
        // A small LFS file (by its extension) for the gated repo, so its
        // pull goes through the CDN redirect.
        // An empty file, as real repos have (added_tokens.json is not read
        // by hfms; its blob must still be made).
        let empty = dir.join("empty.json");
        std::fs::write(&empty, b"").unwrap();
        let gated_weights = dir.join("gated-weights.bin");
        std::fs::write(&gated_weights, (0..4096u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()).unwrap();
        let log = dir.join(format!(
            "hub-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/hub/testhub.py"))
            .arg("--repo")
            .arg(format!("hub-test/MiniLM={}", models.join(MINILM).display()))
            .arg("--file")
            .arg(format!("hub-test/SmolLM2-GGUF={}", gguf.display()))
            .arg("--file")
            .arg(format!(
                "hub-test/SmolLM2-GGUF={}:SmolLM2-135M-Instruct.Q8_0.gguf",
                gguf.display()
            ))
            .arg("--file")
            .arg(format!(
                "hub-test/gated={}",
                models.join(MINILM).join("config.json").display()
            ))
            .arg("--file")
            .arg(format!("hub-test/gated={}", gated_weights.display()))
            .arg("--file")
            .arg(format!("hub-test/MiniLM={}:added_tokens.json", empty.display()))
            .args([
                "--gated",
                "hub-test/gated",
                "--token",
                "hf_test_token",
                "--exit-on-stdin-eof",
            ])
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 tests/hub/testhub.py");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("testhub said {first:?}"));
        Hub {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hfms(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hfms"))
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_TOKEN_PATH", "/nonexistent/token")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .output()
        .expect("run hfms")
}

fn pull(hub: &Hub, cache: &Path, spec: &str, env: &[(&str, &str)]) -> Output {
    let mut all = vec![("HF_ENDPOINT", hub.endpoint.as_str())];
    all.extend_from_slice(env);
    hfms(&["pull", spec, "--hf-cache", cache.to_str().unwrap(), "--json"], &all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn outcome(o: &Output) -> Value {
    assert!(o.status.success(), "pull failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("pull --json")
}

fn snapshots(cache: &Path, repo: &str) -> Vec<PathBuf> {
    let dir = cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots");
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(files_under(&e.path()).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[test]
fn pull_safetensors_and_gguf_repos_then_serve_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let hub = Hub::start(tmp.path(), &[]);

    let st = outcome(&pull(&hub, &cache, "hub-test/MiniLM", &[]));
    let files: Vec<&str> = st["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "model.safetensors",
        "added_tokens.json",
    ] {
        assert!(files.contains(&f), "{f} not pulled: {files:?}");
    }
    assert!(
        !files.contains(&"README.md") && !files.contains(&"data_config.json"),
        "{files:?}"
    );
    let snap = PathBuf::from(st["snapshot"].as_str().unwrap());
    // Links into blobs/, bytes equal to the source.
    let link = std::fs::read_link(snap.join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        std::fs::read(models_dir().join(MINILM).join("model.safetensors")).unwrap()
    );
    let commit = st["commit"].as_str().unwrap();
    let refs_main = cache.join("models--hub-test--MiniLM/refs/main");
    assert_eq!(std::fs::read_to_string(refs_main).unwrap(), commit);

    // GGUF: the default tag Q4_K_M is not there; the error lists the tags.
    let no_tag = pull(&hub, &cache, "hub-test/SmolLM2-GGUF", &[]);
    assert!(!no_tag.status.success());
    assert!(stderr(&no_tag).contains("Q4_1, Q8_0"), "{}", stderr(&no_tag));
    let gg = outcome(&pull(&hub, &cache, "hub-test/SmolLM2-GGUF:q4_1", &[]));
    assert_eq!(gg["model"], "hub-test/SmolLM2-GGUF:Q4_1");
    assert_eq!(gg["files"], json!(["SmolLM2-135M-Instruct.Q4_1.gguf"]));

    // A second pull downloads nothing.
    let again = outcome(&pull(&hub, &cache, "hub-test/MiniLM", &[]));
    assert_eq!(again["downloaded_bytes"], 0);

    // hfms ls sees both; discovery serves them from the hub cache.
    let ls = hfms(&["ls", "--hf-cache", cache.to_str().unwrap(), "--json"], &[]);
    let listed: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let repos: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repo"].as_str().unwrap())
        .collect();
    assert_eq!(repos, vec!["hub-test/MiniLM", "hub-test/SmolLM2-GGUF"]);

    let server = Server::start(&["--hf-cache", cache.to_str().unwrap()]);
    let (s, pulled) = server.post_json(
        "/v1/embeddings",
        json!({"model": "hub-test/MiniLM", "input": "a pulled model"}),
    );
    assert_eq!(s, 200, "{pulled}");
    let (_, local) = server.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "a pulled model"}),
    );
    assert_eq!(pulled["data"][0]["embedding"], local["data"][0]["embedding"]);
    let (s, chat) = server.post_json(
        "/v1/chat/completions",
        json!({"model": "hub-test/SmolLM2-GGUF", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{chat}");

    // The pulled name keeps working after a restart (a folder's only GGUF
    // answers to org/name:QUANT too).
    let (s, chat) = server.post_json(
        "/v1/chat/completions",
        json!({"model": "hub-test/SmolLM2-GGUF:Q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{chat}");

    // rm takes a repo, not a revision; then deletes the repo and its locks.
    let rm_bad = hfms(
        &["rm", "hub-test/MiniLM@v1", "--hf-cache", cache.to_str().unwrap()],
        &[],
    );
    assert!(!rm_bad.status.success());
    assert!(stderr(&rm_bad).contains("takes ORG/NAME"), "{}", stderr(&rm_bad));
    assert!(cache.join("models--hub-test--MiniLM").exists());
    let rm = hfms(&["rm", "hub-test/MiniLM", "--hf-cache", cache.to_str().unwrap()], &[]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(!cache.join("models--hub-test--MiniLM").exists());
    let rm_again = hfms(&["rm", "hub-test/MiniLM", "--hf-cache", cache.to_str().unwrap()], &[]);
    assert!(!rm_again.status.success());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // The hub dies 30 MB into the 94 MB GGUF file.
    let mut dying = Hub::start(tmp.path(), &["--die-after-bytes", "30000000"]);
    let cut = pull(&dying, &cache, "hub-test/SmolLM2-GGUF:Q4_1", &[]);
    assert!(!cut.status.success());
    assert!(
        stderr(&cut).contains("run the pull again to resume"),
        "{}",
        stderr(&cut)
    );
    assert!(dying.wait_exit(Duration::from_secs(5)), "the hub did not die");
    // Nothing half-downloaded is visible to discovery.
    assert!(snapshots(&cache, "hub-test/SmolLM2-GGUF").is_empty());
    let blobs = cache.join("models--hub-test--SmolLM2-GGUF/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(partial.len(), 1);
    assert!(partial[0].to_string_lossy().ends_with(".incomplete"));
    let have = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(have >= 20_000_000, "only {have} bytes kept");

    let hub = Hub::start(tmp.path(), &[]);
    let done = outcome(&pull(&hub, &cache, "hub-test/SmolLM2-GGUF:Q4_1", &[]));
    let ranges: Vec<String> = hub
        .requests()
        .iter()
        .filter_map(|r| r["range"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ranges, vec![format!("bytes={have}-")], "{:?}", hub.requests());
    let path = PathBuf::from(done["model_path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(models_dir().join(SMOLLM_GGUF)).unwrap()
    );
    assert_eq!(files_under(&blobs).len(), 1, "the .incomplete file was not renamed");
}

#[test]
fn a_corrupted_byte_fails_the_hash_check_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let hub = Hub::start(tmp.path(), &["--corrupt", "hub-test/MiniLM/model.safetensors"]);
    let out = pull(&hub, &cache, "hub-test/MiniLM", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("model.safetensors") && err.contains("hash"), "{err}");
    assert!(snapshots(&cache, "hub-test/MiniLM").is_empty());
    let blobs = files_under(&cache.join("models--hub-test--MiniLM/blobs"));
    assert!(
        !blobs.iter().any(|b| b.len() == 64 || b.ends_with(".incomplete")),
        "{blobs:?}"
    );
}

#[test]
fn tokens_offline_mode_and_bad_specs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let hub = Hub::start(tmp.path(), &[]);
    let denied = pull(&hub, &cache, "hub-test/gated", &[]);
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("HF_TOKEN"), "{}", stderr(&denied));
    let wrong = pull(&hub, &cache, "hub-test/gated", &[("HF_TOKEN", "hf_wrong")]);
    assert!(stderr(&wrong).contains("no access"), "{}", stderr(&wrong));
    // (The gated repo holds a config and a .bin: --include names them.)
    let ok = hfms(
        &[
            "pull",
            "hub-test/gated",
            "--include",
            "*.json",
            "--include",
            "*.bin",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--json",
        ],
        &[("HF_ENDPOINT", &hub.endpoint), ("HF_TOKEN", "hf_test_token")],
    );
    let _ = outcome(&ok);
    // The token reached the Hub, never the CDN.
    let reqs = hub.requests();
    assert!(reqs.iter().any(|r| r["auth"] == true));
    let cdn: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/cdn/"))
        .collect();
    assert!(!cdn.is_empty(), "{reqs:?}");
    assert!(cdn.iter().all(|r| r["auth"] == false), "{cdn:?}");

    let missing = pull(&hub, &cache, "hub-test/nope", &[]);
    assert!(stderr(&missing).contains("no such model repo"), "{}", stderr(&missing));
    let rev = pull(&hub, &cache, "hub-test/MiniLM@v9", &[]);
    assert!(stderr(&rev).contains("no revision v9"), "{}", stderr(&rev));
    for bad in ["", "nope", "a/b/c", "../x/y", "a/b:Q4 K", "a/b@../../etc"] {
        let o = pull(&hub, &cache, bad, &[]);
        assert!(
            !o.status.success() && stderr(&o).contains("invalid model spec"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    let glob = hfms(
        &[
            "pull",
            "hub-test/MiniLM",
            "--include",
            "[",
            "--hf-cache",
            cache.to_str().unwrap(),
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    assert!(
        !glob.status.success() && stderr(&glob).contains("--include"),
        "{}",
        stderr(&glob)
    );

    // --include picks files by glob (all cached by now).
    let _ = outcome(&pull(&hub, &cache, "hub-test/MiniLM", &[]));
    let only = hfms(
        &[
            "pull",
            "hub-test/MiniLM",
            "--include",
            "*.json",
            "--exclude",
            "1_Pooling/*",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--json",
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let only = outcome(&only);
    assert!(only["files"].as_array().unwrap().iter().all(|f| {
        let f = f.as_str().unwrap();
        f.ends_with(".json") && !f.starts_with("1_Pooling")
    }));

    // Offline: the cache only; a repo not there is a clear error.
    drop(hub);
    let off = [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    let cached = hfms(
        &[
            "pull",
            "hub-test/MiniLM",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--json",
        ],
        &off,
    );
    assert_eq!(outcome(&cached)["offline"], true);
    let absent = hfms(
        &[
            "pull",
            "hub-test/SmolLM2-GGUF:Q4_1",
            "--hf-cache",
            cache.to_str().unwrap(),
        ],
        &off,
    );
    assert!(!absent.status.success());
    assert!(stderr(&absent).contains("HF_HUB_OFFLINE"), "{}", stderr(&absent));
    // The Hub unreachable but the repo cached: served from the cache.
    let unreachable = hfms(
        &[
            "pull",
            "hub-test/MiniLM",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--json",
        ],
        &[("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert_eq!(outcome(&unreachable)["offline"], true);
}

#[test]
fn the_server_pulls_over_sse_and_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    // 40 MB/s: the 94 MB GGUF takes over two seconds.
    let hub = Hub::start(tmp.path(), &["--throttle", "40000000"]);
    let server = Server::start_with_env(
        &[
            "--hf-cache",
            cache.to_str().unwrap(),
            "--allow-download",
            "--download-timeout",
            "1",
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );

    // POST /models/pull streams progress, then the model serves.
    let events = server.stream("/models/pull", json!({"model": "hub-test/SmolLM2-GGUF:Q4_1"}));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let statuses: Vec<&str> = parsed.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"resolved"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"done"), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == "progress").count() >= 3,
        "{statuses:?}"
    );
    assert!(statuses.contains(&"file_done"));
    let (s, chat) = server.post_json(
        "/v1/chat/completions",
        json!({"model": "hub-test/SmolLM2-GGUF:Q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{chat}");
    let (_, models) = server.get_json("/v1/models");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "hub-test/SmolLM2-GGUF:Q4_1")
    );

    // --allow-download: the first request waits 1 s, then a 503 with the
    // progress; the download goes on and a later request is served.
    let r = server.post(
        "/v1/embeddings",
        json!({"model": "hub-test/MiniLM", "input": "on demand"}),
    );
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some());
    let (_, _, _, code) = error_of(&body);
    assert_eq!(code, Some("model_downloading"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains('%'), "{body}");
    // Other models keep serving while it downloads.
    let (s, v) = server.post_json(
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        let (s, v) = server.post_json(
            "/v1/embeddings",
            json!({"model": "hub-test/MiniLM", "input": "on demand"}),
        );
        if s == 200 || Instant::now() > deadline {
            break (s, v);
        }
        assert_eq!(s, 503, "{v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(served.0, 200, "{}", served.1);
    // One download for all those requests (single-flight).
    let gets = hub
        .requests()
        .iter()
        .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap_or("").starts_with("/cdn/"))
        .count();
    assert_eq!(gets, 2, "{:?}", hub.requests());

    // Unknown repos, bad specs and wrong types: clear 4xx, never a 500.
    let (s, v) = server.post_json("/v1/embeddings", json!({"model": "hub-test/nope", "input": "x"}));
    assert_eq!(s, 404, "{v}");
    for body in [
        json!({"model": ""}),
        json!({"model": "not a repo"}),
        json!({"model": "a/b/c"}),
        json!({"model": "x".repeat(100_000)}),
        json!({"model": 7}),
        json!({"model": null}),
        json!({}),
        json!([1, 2]),
    ] {
        let (s, v) = server.post_json("/models/pull", body.clone());
        assert_eq!(s, 400, "{body}: {v}");
    }
    // A pull that fails before it starts answers with its own status.
    let (s, v) = server.post_json("/models/pull", json!({"model": "hub-test/nope"}));
    assert_eq!(s, 404, "{v}");
    assert!(error_of(&v).0.contains("no such model repo"), "{v}");
    let (s, v) = server.post_json("/models/pull", json!({"model": "hub-test/SmolLM2-GGUF:Q2_K"}));
    assert_eq!(s, 404, "{v}");
    // On demand: another spelling of a served model pulls nothing; a
    // revision cannot be picked by a request.
    let before = hub.requests().len();
    let (s, v) = server.post_json(
        "/v1/chat/completions",
        json!({"model": "hub-test/SmolLM2-GGUF:q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(hub.requests().len(), before);
    let (s, v) = server.post_json("/v1/embeddings", json!({"model": "hub-test/MiniLM@main", "input": "x"}));
    assert_eq!(s, 400, "{v}");
}

#[test]
fn without_allow_download_an_unknown_repo_is_a_404_and_the_cache_budget_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let hub = Hub::start(tmp.path(), &[]);
    // Fill the cache with MiniLM (91 MB), then pull the GGUF (98 MB) under
    // a 150 MB budget: MiniLM is evicted.
    let _ = outcome(&pull(&hub, &cache, "hub-test/MiniLM", &[]));
    let budget = hfms(
        &[
            "pull",
            "hub-test/SmolLM2-GGUF:Q4_1",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--max-cache-gb",
            "0.15",
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    assert!(budget.status.success(), "{}", stderr(&budget));
    assert!(!cache.join("models--hub-test--MiniLM").exists());
    // A budget smaller than the model: refused, nothing downloaded.
    let small = hfms(
        &[
            "pull",
            "hub-test/MiniLM",
            "--hf-cache",
            cache.to_str().unwrap(),
            "--max-cache-gb",
            "0.01",
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    assert!(!small.status.success());
    assert!(stderr(&small).contains("budget"), "{}", stderr(&small));
    for bad in ["0", "-1", "NaN", "inf", "abc", ""] {
        let flag = format!("--max-cache-gb={bad}");
        let o = hfms(
            &["pull", "hub-test/MiniLM", &flag, "--hf-cache", cache.to_str().unwrap()],
            &[],
        );
        assert!(
            !o.status.success() && stderr(&o).contains("max-cache-gb"),
            "{bad}: {}",
            stderr(&o)
        );
    }

    let server = Server::start_with_env(
        &["--hf-cache", cache.to_str().unwrap()],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let (s, v) = server.post_json("/v1/embeddings", json!({"model": "hub-test/MiniLM", "input": "x"}));
    assert_eq!(s, 404, "{v}");
    assert_eq!(error_of(&v).3, Some("model_not_found"));
    // The server refuses a pull over its budget with 507, and keeps the
    // loaded model's repo.
    drop(server);
    let server = Server::start_with_env(
        &[
            "--hf-cache",
            cache.to_str().unwrap(),
            "--max-cache-gb",
            "0.12",
            "--preload",
            "hub-test/SmolLM2-GGUF",
        ],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let (s, v) = server.post_json("/models/pull", json!({"model": "hub-test/MiniLM"}));
    assert_eq!(s, 507, "{v}");
    assert_eq!(error_of(&v).3, Some("cache_budget_exceeded"), "{v}");
    assert!(cache.join("models--hub-test--SmolLM2-GGUF").exists());
    // Without a hub cache the server refuses to pull; with keys, pulling
    // takes the admin scope.
    let admin = "hfms-test-admin-key-0123456789";
    let plain = Server::start(&["--admin-key", admin]);
    let (s, v) = plain.post_json("/models/pull", json!({"model": "hub-test/MiniLM"}));
    assert_eq!(s, 401, "{v}");
    let r = client()
        .post(plain.url("/models/pull"))
        .bearer_auth(admin)
        .json(&json!({"model": "hub-test/MiniLM"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("--no-hf-cache"), "{v}");
}

/// A sharded copy of MiniLM: the index names one shard; a stray
/// `consolidated.safetensors` and `model.safetensors` must not be pulled.
fn sharded_minilm(dir: &Path) -> Vec<String> {
    let src = models_dir().join(MINILM);
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let map: serde_json::Map<String, Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), json!("model-00001-of-00001.safetensors")))
        .collect();
    let index = dir.join("index.json");
    std::fs::write(
        &index,
        serde_json::to_vec(&json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
    let stray = dir.join("stray.safetensors");
    std::fs::write(&stray, b"not weights").unwrap();
    let mut flags = Vec::new();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        flags.push("--file".to_string());
        flags.push(format!("hub-test/sharded={}:{f}", src.join(f).display()));
    }
    for (path, name) in [
        (src.join("model.safetensors"), "model-00001-of-00001.safetensors"),
        (index, "model.safetensors.index.json"),
        (stray, "consolidated.safetensors"),
    ] {
        flags.push("--file".to_string());
        flags.push(format!("hub-test/sharded={}:{name}", path.display()));
    }
    flags
}

#[test]
fn a_sharded_checkpoint_follows_its_index_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let flags = sharded_minilm(tmp.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let hub = Hub::start(tmp.path(), &flags);
    let got = outcome(&pull(&hub, &cache, "hub-test/sharded", &[]));
    let files: Vec<&str> = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"model.safetensors.index.json") && files.contains(&"model-00001-of-00001.safetensors"),
        "{files:?}"
    );
    assert!(!files.contains(&"consolidated.safetensors"), "{files:?}");
    let server = Server::start(&["--hf-cache", cache.to_str().unwrap()]);
    let (s, sharded) = server.post_json(
        "/v1/embeddings",
        json!({"model": "hub-test/sharded", "input": "shards"}),
    );
    assert_eq!(s, 200, "{sharded}");
    let (_, local) = server.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": "shards"}));
    assert_eq!(sharded["data"][0]["embedding"], local["data"][0]["embedding"]);
}

#[test]
fn two_pulls_at_once_share_the_blob_and_a_killed_pull_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // 30 MB/s per connection: the 94 MB GGUF takes about three seconds.
    let hub = Hub::start(tmp.path(), &["--throttle", "30000000"]);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_hfms"))
            .args([
                "pull",
                "hub-test/SmolLM2-GGUF:Q4_1",
                "--hf-cache",
                cache.to_str().unwrap(),
            ])
            .env("HF_ENDPOINT", &hub.endpoint)
            .env_remove("HF_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Killed mid-download (the client this time, not the hub).
    let mut victim = spawn();
    let part = cache.join("models--hub-test--SmolLM2-GGUF/blobs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let incomplete = |p: &Path| -> u64 {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    while incomplete(&part) < 20_000_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let kept = incomplete(&part);
    assert!(kept >= 20_000_000, "{kept}");
    assert!(snapshots(&cache, "hub-test/SmolLM2-GGUF").is_empty());

    // Two pulls at once: one downloads (resuming), the other waits on the
    // blob's lock and finds it done.
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    let content_gets: Vec<Value> = hub
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap_or("").starts_with("/cdn/"))
        .collect();
    // The killed one, then exactly one resumed download.
    assert_eq!(content_gets.len(), 2, "{content_gets:?}");
    let range = content_gets[1]["range"].as_str().unwrap_or("");
    assert!(range.starts_with("bytes=") && range != "bytes=0-", "{range}");
    let blobs = files_under(&part);
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let snap = &snapshots(&cache, "hub-test/SmolLM2-GGUF")[0];
    assert_eq!(
        std::fs::read(snap.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap(),
        std::fs::read(models_dir().join(SMOLLM_GGUF)).unwrap()
    );
}
