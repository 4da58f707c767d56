//! Hostile clients: nothing a client sends crashes, stalls or exhausts the
//! server (the hardening issue's table, each row a test), browser safety,
//! limits, cancellation of clients that leave or stop reading, honest
//! readiness and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, client, error_of, model_status};
use serde_json::{Value, json};

const CHAT_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const EMBED_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// One raw HTTP/1.1 exchange: (status, headers, body). The connection is
/// closed after it, so a dropped connection shows as an error, not a hang.
fn raw(addr: &str, request: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    Ok((status, head.to_string(), body.to_string()))
}

fn post_raw(addr: &str, path: &str, host: &str, content_type: Option<&str>, body: &str) -> (u16, String, String) {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("a response, not a dropped connection")
}

/// Row 1 and 2 of the table: keep_alive values that used to panic the
/// handler (non-finite, huge) or poison every later listing (1e19).
#[test]
fn hostile_keep_alive_values_get_answers_and_listings_keep_working() {
    let s = Server::shared();
    // Non-finite: a 400 naming keep_alive.
    for ka in [json!("nan"), json!("inf"), json!("-inf"), json!("NaN")] {
        let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"keep_alive": ka})));
        assert_eq!(st, 400, "{ka} → {v}");
        assert_eq!(error_of(&v).2, Some("keep_alive"));
    }
    let (st, v) = s.post_json("/models/load", json!({"model": "smollm2", "keep_alive": "inf"}));
    assert_eq!(st, 400, "{v}");
    // Past ~100 years (or too large to represent): forever.
    for ka in [
        json!(1e300),
        json!(1e19),
        json!("99999999999999999999d"),
        json!("999999999h"),
    ] {
        let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"keep_alive": ka})));
        assert_eq!(st, 200, "{ka} → {v}");
        for path in ["/v1/models", "/status", "/v1/models/smollm2"] {
            let (st, v) = s.get_json(path);
            assert_eq!(st, 200, "{path} after keep_alive {ka}: {v}");
        }
        let (_, v) = s.get_json("/v1/models/smollm2");
        assert_eq!(v["keep_alive"], -1, "{ka} means forever: {v}");
        let (st, v) = s.post_json("/models/load", json!({"model": "smollm2", "keep_alive": ka}));
        assert_eq!(st, 200, "{v}");
    }
    // Wrong types are 400s too.
    for ka in [json!(true), json!([1]), json!({"s": 1}), json!(""), json!("5 parsecs")] {
        let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"keep_alive": ka})));
        assert_eq!(st, 400, "{ka} → {v}");
    }
    let (st, _) = s.post_json("/models/load", json!({"model": "smollm2", "keep_alive": -1}));
    assert_eq!(st, 200);
}

/// A positive temperature too small to divide by samples greedily (it used
/// to turn every probability into NaN).
#[test]
fn a_tiny_temperature_is_greedy() {
    let s = Server::shared();
    let greedy = s
        .post_json("/v1/chat/completions", chat(json!({"temperature": 0, "max_tokens": 8})))
        .1;
    for t in [1e-39, 1e-30, 1e-6] {
        let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"temperature": t, "max_tokens": 8})));
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["choices"][0]["message"]["content"], greedy["choices"][0]["message"]["content"],
            "temperature {t}"
        );
    }
}

/// POST bodies must say they are JSON: a web page can send `text/plain`
/// cross-site without a preflight, never `application/json`.
#[test]
fn post_bodies_need_a_json_content_type() {
    let s = Server::shared();
    let addr = s.addr();
    let body = r#"{"model": "all-minilm"}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
        None,
    ] {
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/models/load",
            "/models/unload",
        ] {
            let (st, _, b) = post_raw(&addr, path, "127.0.0.1", ct, body);
            assert_eq!(st, 415, "{path} with {ct:?}: {b}");
            let v: Value = serde_json::from_str(&b).unwrap();
            assert_eq!(error_of(&v).3, Some("unsupported_media_type"));
        }
    }
    // The model stayed loaded: the unload above was refused.
    let (_, st) = s.get_json("/status");
    assert_eq!(model_status(&st, EMBED_ID)["state"], "loaded");
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let (st, _, b) = post_raw(
            &addr,
            "/v1/embeddings",
            "127.0.0.1",
            Some(ct),
            r#"{"model": "all-minilm", "input": "x"}"#,
        );
        assert_eq!(st, 200, "{ct}: {b}");
    }
}

/// DNS rebinding: a loopback server answers only its own host names.
#[test]
fn a_loopback_server_refuses_foreign_host_names() {
    let s = Server::shared();
    let addr = s.addr();
    let port = addr.rsplit(':').next().unwrap();
    for host in ["evil.example", "evil.example:80", "127.0.0.1.nip.io"] {
        let (st, _, b) = raw(
            &addr,
            &format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(st, 403, "{host}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(error_of(&v).3, Some("host_not_allowed"));
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
    ] {
        let (st, _, _) = raw(
            &addr,
            &format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(st, 200, "{host}");
    }
    // No CORS headers unless configured.
    let (st, head, _) = raw(
        &addr,
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        !head.to_lowercase().contains("access-control-allow-origin"),
        "{st} {head}"
    );
}

#[test]
fn cors_and_allowed_hosts_are_configurable() {
    let s = Server::start(&[
        "--cors-allow-origin",
        "http://app.example",
        "--allowed-host",
        "models.internal,127.0.0.1",
    ]);
    let addr = s.addr();
    let (st, head, _) = raw(
        &addr,
        "OPTIONS /v1/models HTTP/1.1\r\nHost: models.internal\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(st < 300, "{st} {head}");
    assert!(
        head.to_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    let (_, head, _) = raw(
        &addr,
        "GET /v1/models HTTP/1.1\r\nHost: models.internal\r\nOrigin: http://other.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(!head.to_lowercase().contains("access-control-allow-origin"), "{head}");
    let (st, _, _) = raw(
        &addr,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(st, 403, "localhost is not in this server's list");
}

#[test]
fn unknown_methods_and_paths_get_the_envelope() {
    let s = Server::shared();
    let r = client().get(s.url("/v1/chat/completions")).send().unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().unwrap();
    assert_eq!(error_of(&v).3, Some("method_not_allowed"));
    let r = client().delete(s.url("/v1/nothing")).send().unwrap();
    assert_eq!(r.status(), 404);
    error_of(&r.json().unwrap());
}

/// Per-request limits are settings; each refusal names its flag.
#[test]
fn request_limits_are_400s_naming_their_flag() {
    let s = Server::shared();
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"stop": "x".repeat(2000)})),
            "stop",
            "max-stop-bytes",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"logit_bias": (0..1100).map(|i| (i.to_string(), json!(1))).collect::<serde_json::Map<_, _>>()}),
            ),
            "logit_bias",
            "max-logit-bias",
        ),
        ("/v1/chat/completions", chat(json!({"n": 17})), "n", "max-n"),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": vec!["x"; 65], "n": 2}),
            "prompt",
            "max-choices",
        ),
        (
            "/v1/embeddings",
            json!({"model": "all-minilm", "input": vec!["x"; 2049]}),
            "input",
            "2048",
        ),
    ];
    for (path, body, param, needle) in cases {
        let (st, v) = s.post_json(path, body);
        assert_eq!(st, 400, "{path} {param}: {v}");
        let (msg, _, p, _) = error_of(&v);
        assert_eq!(p, Some(param), "{v}");
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn configured_limits_apply() {
    let s = Server::start(&[
        "--preload",
        "smollm2,all-minilm",
        "--max-completion-tokens",
        "8",
        "--max-embedding-tokens",
        "100",
        "--max-n",
        "2",
    ]);
    let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"max_tokens": 9})));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).0.contains("max-completion-tokens"));
    // Without max_tokens the cap is the default length.
    let (st, v) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "Once upon a time", "ignore_eos": true, "max_tokens": null}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        chat(json!({"ignore_eos": true, "max_tokens": null})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let (st, v) = s.post_json("/v1/chat/completions", chat(json!({"n": 3})));
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": vec!["one two three four five six seven eight nine ten"; 20]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).0.contains("max-embedding-tokens"), "{v}");
}

/// Row 3 of the table: 2048 inputs of ~400 words. Answered (memory per batch
/// is bounded; the figures are bench/hostile.sh's) or refused with a 400
/// under the default token limit — never a runaway.
#[test]
fn a_huge_embedding_request_is_refused_under_the_default_token_limit() {
    let s = Server::shared();
    let text = "server model token memory request batch vector ".repeat(57);
    let inputs = vec![text; 2048];
    let t = Instant::now();
    let (st, v) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": inputs}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).0.contains("max-embedding-tokens"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// A client that gives up on a large embeddings request: its remaining
/// batches are not computed.
#[test]
fn an_embedding_request_whose_client_leaves_is_dropped() {
    let s = Server::start(&["--preload", "all-minilm", "--embed-max-batch-tokens", "512"]);
    let text = "server model token memory request batch vector ".repeat(30);
    let body = json!({"model": "all-minilm", "input": vec![text; 1000]}).to_string();
    let mut c = TcpStream::connect(s.addr()).unwrap();
    write!(
        c,
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Let it start, then leave.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, st) = s.get_json("/status");
        if model_status(&st, EMBED_ID)["scheduler"]["batches"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no batch started: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, st) = s.get_json("/status");
        let b = &model_status(&st, EMBED_ID)["scheduler"];
        if b["cancelled"] == 1 && b["waiting"] == 0 {
            let inputs = b["inputs"].as_u64().unwrap();
            assert!(inputs < 900, "{inputs} of 1000 inputs computed for a client that left");
            break;
        }
        assert!(Instant::now() < deadline, "the request was not dropped: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(model_status(&s.get_json("/status").1, EMBED_ID)["in_flight"], 0);
}

/// A streaming client that stops reading (its socket buffers full) is cut
/// off after --write-timeout: its sequences, KV blocks and model lease go.
#[test]
fn a_stream_whose_client_stops_reading_is_cancelled() {
    let s = Server::start(&["--preload", "smollm2", "--write-timeout", "2"]);
    let before = s.get_json("/status").1;
    let cancelled_before = model_status(&before, CHAT_ID)["scheduler"]["cancelled"]
        .as_u64()
        .unwrap();
    // 16 choices with 20 alternatives per token: ~20 KB of events per step,
    // so the buffers between us fill within seconds.
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a long story."}],
                      "max_tokens": 4000, "n": 16, "stream": true, "logprobs": true, "top_logprobs": 20,
                      "ignore_eos": true, "temperature": 0.8})
    .to_string();
    let mut c = small_window_connection(&s.addr());
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Never read. The server must give up on us.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = s.get_json("/status").1;
        let m = model_status(&st, CHAT_ID);
        let cancelled = m["scheduler"]["cancelled"].as_u64().unwrap();
        if cancelled >= cancelled_before + 16 && m["in_flight"] == 0 && m["scheduler"]["running"] == 0 {
            assert_eq!(m["scheduler"]["kv_blocks_used"], 0);
            let generated = m["scheduler"]["generated_tokens"].as_u64().unwrap();
            assert!(generated < 16 * 4000, "it stopped early ({generated} tokens)");
            break;
        }
        assert!(Instant::now() < deadline, "a stalled client still holds its work: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        s.logs().iter().any(|l| l.contains("client stopped reading")),
        "the log says why"
    );
    drop(c);
}

/// A connection whose receive buffer (and so its TCP window) is small from
/// the start, so a client that does not read stalls the server's writes
/// quickly.
fn small_window_connection(addr: &str) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// /health stays fast while chat streams and embedding batches keep every
/// core busy: the async threads do no model work.
#[test]
fn health_answers_quickly_while_the_machine_is_saturated() {
    let s = Server::start(&["--preload", "smollm2,all-minilm"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..6 {
        let (url, stop) = (s.url("/v1/chat/completions"), stop.clone());
        load.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client()
                    .post(&url)
                    .json(
                        &json!({"model": "smollm2", "messages": [{"role": "user", "content": format!("Story {i}")}],
                                  "max_tokens": 64, "stream": true, "temperature": 0.9, "ignore_eos": true}),
                    )
                    .send()
                    .and_then(|r| r.text());
            }
        }));
    }
    for _ in 0..2 {
        let (url, stop) = (s.url("/v1/embeddings"), stop.clone());
        load.push(std::thread::spawn(move || {
            let inputs = vec!["a sentence of some length to embed for the load ".repeat(4); 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client()
                    .post(&url)
                    .json(&json!({"model": "all-minilm", "input": inputs}))
                    .send()
                    .and_then(|r| r.text());
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut lat = Vec::new();
    for _ in 0..60 {
        let t = Instant::now();
        let (st, _, _) = raw(
            &s.addr(),
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        lat.push(t.elapsed());
        assert_eq!(st, 200);
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy = s.get_json("/status").1;
    for t in load {
        t.join().unwrap();
    }
    lat.sort();
    let median = lat[lat.len() / 2];
    eprintln!(
        "/health under load: median {median:?}, p90 {:?}, max {:?}",
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    assert!(
        model_status(&busy, CHAT_ID)["scheduler"]["steps"].as_u64().unwrap() > 0,
        "the load ran"
    );
    assert!(
        median < Duration::from_millis(50),
        "median /health {median:?} under load"
    );
}

/// /ready tells a failed preload apart from starting up; the other models
/// still serve.
#[test]
fn ready_is_503_with_the_reason_after_a_failed_preload() {
    let dir = std::env::temp_dir().join(format!("hfms-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.gguf");
    // A GGUF header and metadata, cut short before the tensors' data.
    let src = common::models_dir().join("HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut head = vec![0u8; 4 << 20];
    std::fs::File::open(src).unwrap().read_exact(&mut head).unwrap();
    std::fs::write(&broken, &head).unwrap();
    let s = Server::start_unready(&[
        "--model",
        &format!("test/broken={}", broken.display()),
        "--preload",
        "test/broken,all-minilm",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let r = client().get(s.url("/ready")).send().unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = r.json().unwrap();
        let reason = v["reason"].as_str().unwrap().to_string();
        if reason != "starting up" {
            break reason;
        }
        assert!(Instant::now() < deadline, "still starting");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("test/broken") && reason.contains("failed"), "{reason}");
    let (st, v) = s.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "still serving"}),
    );
    assert_eq!(st, 200, "{v}");
    let (_, st) = s.get_json("/status");
    assert_eq!(st["ready"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/models/unload` while a request runs unloads the model after it; the
/// unload does not stick: the next client's load keeps the model.
#[test]
fn an_unload_does_not_stick_to_the_next_load() {
    let s = Server::start(&["--preload", "all-minilm"]);
    let url = s.url("/v1/embeddings");
    let busy = std::thread::spawn(move || {
        client()
            .post(url)
            .json(&json!({"model": "all-minilm", "input": vec!["a long sentence to embed ".repeat(20); 400]}))
            .send()
            .unwrap()
            .status()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while model_status(&s.get_json("/status").1, EMBED_ID)["in_flight"] == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, v) = s.post_json("/models/unload", json!({"model": "all-minilm"}));
    assert_eq!(st, 200);
    assert_eq!(v["state"], "unloading");
    assert_eq!(busy.join().unwrap(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while model_status(&s.get_json("/status").1, EMBED_ID)["state"] != "unloaded" {
        assert!(Instant::now() < deadline, "not unloaded after its request");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A later client: the model loads and stays (default keep-alive).
    let (st, _) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": "again"}));
    assert_eq!(st, 200);
    std::thread::sleep(Duration::from_millis(300));
    let m = model_status(&s.get_json("/status").1, EMBED_ID).clone();
    assert_eq!(m["state"], "loaded", "{m}");
    assert_eq!(m["keep_alive"], -1, "{m}");
}

/// SIGTERM: no new connections, work in flight finishes within the grace
/// period, what runs longer is cancelled with an error event, exit code 0.
#[test]
fn sigterm_drains_then_cancels_then_exits_zero() {
    let s = Server::start(&["--preload", "smollm2", "--shutdown-grace", "3"]);
    // A stream that would run for minutes.
    let mut long = client()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": "smollm2", "prompt": "Tell me a story.", "max_tokens": 6000,
                      "stream": true, "ignore_eos": true, "temperature": 0.8}),
        )
        .send()
        .unwrap();
    let mut first = [0u8; 64];
    assert!(long.read(&mut first).unwrap() > 0);
    // A short one, started together with the signal.
    let url = s.url("/v1/chat/completions");
    let short = std::thread::spawn(move || {
        let r = client()
            .post(url)
            .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    s.signal("TERM");
    let (st, body) = short.join().unwrap();
    assert_eq!(st, 200, "in flight at the signal: finished ({body})");
    // New connections are refused while draining.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        client().get(s.url("/health")).send().is_err() || s.wait_exit(Duration::ZERO).is_some(),
        "a new connection was accepted after SIGTERM"
    );
    let mut rest = String::new();
    long.read_to_string(&mut rest).unwrap();
    let cut = signalled.elapsed();
    assert!(
        rest.contains("server_shutting_down"),
        "the stream ends with an error event: ...{}",
        &rest[rest.len().saturating_sub(300)..]
    );
    assert!(
        cut >= Duration::from_secs(2),
        "cancelled after the grace period, not before ({cut:?})"
    );
    let status = s.wait_exit(Duration::from_secs(15)).expect("the server exits");
    assert!(status.success(), "exit status {status}");
}
