//! `hfms bench` against a real `hfms serve`: the JSON lines it writes, and
//! the pure parts (percentiles, the SSE decoder) directly.

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

#[allow(dead_code)]
#[path = "../src/bench/stats.rs"]
mod stats;

#[allow(dead_code)]
#[path = "../src/bench/sse.rs"]
mod sse;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfms"))
        .arg("bench")
        .args(args)
        .env_remove("HFMS_BENCH_BASE_URL")
        .output()
        .expect("run hfms bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or not a number: {v}"))
}

#[test]
fn chat_and_embeddings_against_hfms_serve() {
    let server = Server::shared();
    let base = server.url("/v1");
    let (ok, stdout, stderr) = bench(&[
        "--base-url",
        &base,
        "--mode",
        "chat,embeddings",
        "--concurrency",
        "1,2",
        "--requests",
        "4",
        "--max-tokens",
        "8",
        "--prompt-tokens",
        "16",
        "--batch-sizes",
        "1,4",
        "--json",
        "-",
    ]);
    assert!(ok, "hfms bench failed:\n{stderr}");
    let records = lines(&stdout);
    assert_eq!(records.len(), 4, "2 chat levels + 2 embeddings levels:\n{stdout}");
    // The table went to stderr, as stdout carries the JSON lines.
    assert!(stderr.contains("TTFT ms p50/p90/p99"), "{stderr}");
    // So did the kernel set the figures came from.
    let kernels = hfms_engine::quant::kernels().name;
    assert!(stderr.contains(&format!("kernels {kernels}, ")), "{stderr}");

    for r in &records {
        for key in [
            "base_url",
            "model",
            "timestamp",
            "hfms_version",
            "mode",
            "requests",
            "errors",
        ] {
            assert!(r.get(key).is_some(), "{key} missing: {r}");
        }
        assert_eq!(r["base_url"], base.as_str());
        assert_eq!(r["hfms_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["first_error"].is_null(), "{r}");
        assert_eq!(r["requests"], 4, "{r}");
    }

    let chat: Vec<&Value> = records.iter().filter(|r| r["mode"] == "chat").collect();
    assert_eq!(
        chat.iter()
            .map(|r| r["concurrency"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for r in chat {
        assert_eq!(r["model"], "smollm2");
        // ignore_eos: every request generates exactly max_tokens.
        assert_eq!(r["completion_tokens_min"], 8, "{r}");
        assert_eq!(r["completion_tokens_max"], 8, "{r}");
        assert_eq!(r["completion_tokens_total"], 32, "{r}");
        assert_eq!(r["usage_reported"], 4, "{r}");
        assert!(num(r, "output_tokens_per_s") > 0.0, "{r}");
        assert!(num(r, "requests_per_s") > 0.0, "{r}");
        assert!(num(r, "prompt_tokens_mean") > 16.0, "{r}");
        for m in ["ttft", "itl", "e2e"] {
            let (p50, p90, p99) = (
                num(r, &format!("{m}_p50_ms")),
                num(r, &format!("{m}_p90_ms")),
                num(r, &format!("{m}_p99_ms")),
            );
            assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{m}: {r}");
        }
        assert!(num(r, "ttft_p50_ms") < num(r, "e2e_p50_ms"), "{r}");
    }

    let emb: Vec<&Value> = records.iter().filter(|r| r["mode"] == "embeddings").collect();
    assert_eq!(
        emb.iter()
            .map(|r| r["batch_size"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 4]
    );
    for r in emb {
        assert_eq!(r["model"], "all-minilm");
        let batch = r["batch_size"].as_u64().unwrap();
        assert_eq!(r["inputs_total"].as_u64().unwrap(), 4 * batch, "{r}");
        assert!(num(r, "inputs_per_s") > 0.0, "{r}");
        assert!(num(r, "tokens_per_s") > 0.0, "{r}");
        // Each sentence is several tokens plus [CLS] and [SEP].
        assert!(r["prompt_tokens_total"].as_u64().unwrap() > 5 * 4 * batch, "{r}");
        assert!(num(r, "latency_p50_ms") > 0.0, "{r}");
    }
}

#[test]
fn swap_alternates_between_a_chat_and_an_embedding_model() {
    let server = Server::shared();
    let (ok, stdout, stderr) = bench(&[
        "--base-url",
        &server.url("/v1"),
        "--mode",
        "swap",
        "--swap-models",
        "smollm2,all-minilm",
        "--requests",
        "6",
        "--json",
        "-",
    ]);
    assert!(ok, "hfms bench failed:\n{stderr}");
    let records = lines(&stdout);
    assert_eq!(records.len(), 1, "{stdout}");
    let r = &records[0];
    assert_eq!(r["mode"], "swap");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["per_model"]["smollm2"]["task"], "chat", "{r}");
    assert_eq!(r["per_model"]["all-minilm"]["task"], "embeddings", "{r}");
    assert_eq!(r["per_model"]["smollm2"]["requests"], 3, "{r}");
    assert_eq!(r["latencies_ms"].as_array().unwrap().len(), 6, "{r}");
    assert!(r["slow_requests"].is_u64(), "{r}");
    assert!(num(r, "latency_p50_ms") > 0.0, "{r}");
}

#[test]
fn errors_are_counted_not_fatal_hangs() {
    let server = Server::shared();
    let (ok, stdout, stderr) = bench(&[
        "--base-url",
        &server.url("/v1"),
        "--mode",
        "chat",
        "--model",
        "no-such-model",
        "--concurrency",
        "2",
        "--requests",
        "3",
        "--json",
        "-",
    ]);
    assert!(!ok, "a run with failed requests exits non-zero");
    let records = lines(&stdout);
    assert_eq!(records.len(), 1, "{stdout}");
    assert_eq!(records[0]["errors"], 3, "{}", records[0]);
    let first = records[0]["first_error"].as_str().unwrap();
    assert!(first.contains("404"), "{first}");
    assert!(stderr.contains("3 request(s) failed"), "{stderr}");
}

#[test]
fn remote_hosts_need_allow_remote() {
    let (ok, _, stderr) = bench(&["--base-url", "http://192.0.2.1:8000/v1", "--mode", "chat"]);
    assert!(!ok);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    for loopback in ["http://localhost:9/v1", "http://127.0.0.2:9/v1", "http://[::1]:9/v1"] {
        // Loopback hosts are accepted (and nothing listens on port 9: one
        // counted error, quickly).
        let (ok, stdout, stderr) = bench(&[
            "--base-url",
            loopback,
            "--mode",
            "embeddings",
            "--batch-sizes",
            "1",
            "--requests",
            "1",
            "--warmup",
            "0",
            "--json",
            "-",
        ]);
        assert!(!ok);
        assert!(!stderr.contains("--allow-remote"), "{loopback}: {stderr}");
        assert_eq!(lines(&stdout)[0]["errors"], 1, "{loopback}: {stdout}");
    }
}

#[test]
fn print_sentences_is_deterministic_and_distinct() {
    let (ok, a, _) = bench(&["--print-sentences", "2000"]);
    assert!(ok);
    let (_, b, _) = bench(&["--print-sentences", "2000"]);
    assert_eq!(a, b);
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 2000);
    let distinct: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(distinct.len(), 2000);
}

#[test]
fn percentiles_interpolate_like_numpy() {
    use stats::{Summary, percentile, slow_outliers, sorted};
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    let s = sorted(vec![4.0, 1.0, 3.0, 2.0]);
    assert_eq!(percentile(&s, 0.0), Some(1.0));
    assert_eq!(percentile(&s, 100.0), Some(4.0));
    assert_eq!(percentile(&s, 50.0), Some(2.5));
    // numpy.percentile([1, 2, 3, 4], 90) == 3.7
    assert!((percentile(&s, 90.0).unwrap() - 3.7).abs() < 1e-12);
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    // numpy.percentile(range(1, 101), 99) == 99.01
    assert!((percentile(&hundred, 99.0).unwrap() - 99.01).abs() < 1e-9);
    assert_eq!(percentile(&hundred, 50.0), Some(50.5));
    let sum = Summary::of(vec![3.0, 1.0, 2.0]);
    assert_eq!((sum.p50, sum.mean), (Some(2.0), Some(2.0)));
    assert_eq!(Summary::of(vec![]), Summary::default());
    // Fastest quartile of 8 = the 2 fastest (10, 11.5): median 10.75, threshold 53.75.
    let (fast, threshold, slow) = slow_outliers(&[10.0, 12.0, 13.0, 11.5, 300.0, 12.5, 56.0, 54.0], 5.0).unwrap();
    assert_eq!((fast, threshold, slow), (10.75, 53.75, 3));
}

#[test]
fn sse_decoder_handles_split_and_multi_line_events() {
    let mut d = sse::Decoder::new();
    let mut events = Vec::new();
    let stream = b": comment\r\nevent: x\r\ndata: {\"a\":1}\r\n\r\ndata:b1\ndata: b2\n\ndata: [DONE]\n\n";
    for piece in stream.chunks(3) {
        events.extend(d.feed(piece));
    }
    assert_eq!(events, ["{\"a\":1}", "b1\nb2", "[DONE]"]);
    let mut d = sse::Decoder::new();
    assert!(d.feed(b"data: tail").is_empty());
    assert_eq!(d.finish().as_deref(), Some("tail"));
}
