//! A real `hfms serve` on 127.0.0.1 with the two packaged models, for the
//! integration tests. One server per test binary; it exits when the test
//! process does (its stdin is a pipe the harness holds).
#![allow(dead_code)]

pub mod services;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

static NEXT_DATA_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub struct Server {
    child: Mutex<Child>,
    /// The temporary data folder the harness gave it (removed on drop).
    data_dir: Option<PathBuf>,
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("HFMS_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// `start`, with environment variables for the server.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Self::spawn(extra, env);
        server.wait_ready();
        server
    }

    fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let models = models_dir();
        assert!(
            models.join("HuggingFaceTB").exists(),
            "{} has no models: run scripts/fetch-models.sh",
            models.display()
        );
        // Its own database unless the test names one: keys another test
        // made must not apply here.
        let data_dir = (!extra.contains(&"--data-dir")).then(|| {
            std::env::temp_dir().join(format!(
                "hfms-test-data-{}-{}",
                std::process::id(),
                NEXT_DATA_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_hfms"))
            .args(["serve", "--port", "0"])
            // The machine's own hub cache is never scanned unless a test
            // names a cache of its own.
            .args((!extra.contains(&"--hf-cache")).then_some("--no-hf-cache"))
            .args(["--log-format", "json", "--exit-on-stdin-eof"])
            .arg("--models-dir")
            .arg(&models)
            .args(extra)
            .args(
                data_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--data-dir"), d.as_os_str()]),
            )
            .env("HFMS_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hfms");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("hfms listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("hfms did not start:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        Server {
            child: Mutex::new(child),
            data_dir,
            base,
            logs,
        }
    }

    /// The shared server of this test binary.
    pub fn shared() -> &'static Server {
        static S: OnceLock<Server> = OnceLock::new();
        S.get_or_init(|| Server::start(&["--preload", "smollm2,all-minilm"]))
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(self.url("/ready")).send()
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                panic!("hfms exited with {status}:\n{}", self.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("hfms never became ready:\n{}", self.logs().join("\n"));
    }

    /// Start, and wait only until it listens (not until /ready).
    pub fn start_unready(extra: &[&str]) -> Server {
        Self::spawn(extra, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Send a signal (e.g. "TERM") to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit; its status, or None after `limit`.
    pub fn wait_exit(&self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.lock().unwrap().try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// host:port
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::blocking::Response {
        client().post(self.url(path)).json(&body).send().expect("request")
    }

    pub fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.post(path, body);
        let status = r.status().as_u16();
        let text = r.text().expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, v)
    }

    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = client().get(self.url(path)).send().expect("request");
        let status = r.status().as_u16();
        (status, r.json().expect("json"))
    }

    /// POST with `stream: true`; the `data:` payloads, `[DONE]` included.
    pub fn stream(&self, path: &str, body: serde_json::Value) -> Vec<String> {
        let r = self.post(path, body);
        assert_eq!(r.status(), 200);
        let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let text = r.text().unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// The reference conversation and its expected output.
pub fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/smollm2_greedy_hf.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The error envelope's fields, asserting its shape.
pub fn error_of(v: &serde_json::Value) -> (&str, &str, Option<&str>, Option<&str>) {
    let e = v.get("error").unwrap_or_else(|| panic!("no error envelope: {v}"));
    let obj = e.as_object().unwrap();
    for k in ["message", "type", "param", "code"] {
        assert!(obj.contains_key(k), "envelope lacks {k}: {v}");
    }
    (
        e["message"].as_str().unwrap(),
        e["type"].as_str().unwrap(),
        e["param"].as_str(),
        e["code"].as_str(),
    )
}

/// One model's entry in a `/status` body.
pub fn model_status<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status}"))
}
