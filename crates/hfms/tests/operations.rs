//! Request ids, logs, health while busy, and cancellation on disconnect.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Server, client};
use serde_json::{Value, json};

#[test]
fn request_ids_are_honoured_or_generated_and_on_every_log_line() {
    let s = Server::shared();
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("x-request-id", "test-rid-123")
        .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "test-rid-123");
    assert_eq!(r.status(), 200);
    let r = client().get(s.url("/health")).send().unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated.starts_with("req-") && generated.len() > 10);
    // An error response carries the id too, and its log lines name it.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("x-request-id", "test-rid-bad")
        .json(&json!({"model": "smollm2", "messages": []}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "test-rid-bad");
    std::thread::sleep(Duration::from_millis(200));
    let logs = s.logs();
    for rid in ["test-rid-123", "test-rid-bad"] {
        let lines: Vec<Value> = logs
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.to_string().contains(rid))
            .collect();
        assert!(!lines.is_empty(), "no log line for {rid}");
        for l in &lines {
            assert_eq!(l["span"]["request_id"], rid, "{l}");
        }
    }
    let bad: Vec<&String> = logs.iter().filter(|l| l.contains("test-rid-bad")).collect();
    assert!(bad.iter().any(|l| l.contains("request rejected")), "{bad:?}");
}

#[test]
fn health_answers_while_a_long_generation_runs_and_disconnect_cancels_it() {
    let s = Server::shared();
    let before = s.get_json("/status").1;
    let cancelled_before = model_stat(&before, "cancelled");
    // A long streaming generation; read a little, then hang up.
    let mut resp = client()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": "smollm2", "prompt": "Tell me a very long story.", "max_tokens": 4000,
                      "temperature": 0.7, "stream": true, "ignore_eos": true}),
        )
        .send()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = resp.read(&mut buf).unwrap();
    assert!(n > 0);
    // The server keeps answering other requests meanwhile.
    let t = Instant::now();
    let (st, _) = s.get_json("/health");
    assert_eq!(st, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "health took {:?}", t.elapsed());
    let (st, _) = s.get_json("/v1/models");
    assert_eq!(st, 200);
    drop(resp);
    // The sequence is dropped at the next step: running goes to zero well
    // before 4000 tokens could have been generated.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.get_json("/status").1;
        if model_stat(&st, "cancelled") > cancelled_before && model_stat(&st, "running") == 0 {
            assert_eq!(model_stat(&st, "kv_blocks_used"), 0, "KV freed");
            break;
        }
        assert!(Instant::now() < deadline, "generation was not cancelled: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn model_stat(status: &Value, key: &str) -> u64 {
    status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct")
        .and_then(|m| m["scheduler"][key].as_u64())
        .unwrap_or(0)
}

#[test]
fn status_and_ready_describe_the_server() {
    let s = Server::shared();
    let (st, r) = s.get_json("/ready");
    assert_eq!(st, 200);
    assert_eq!(r["status"], "ready");
    let (_, v) = s.get_json("/status");
    assert!(v["version"].is_string());
    assert!(v["compute"]["threads"].as_u64().unwrap() >= 1);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        assert_eq!(m["state"], "loaded");
        assert_eq!(m["device"], "cpu");
        assert!(m["bytes"].as_u64().unwrap() > 1 << 20);
    }
}
