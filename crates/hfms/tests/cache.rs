//! The response cache with the real server: deterministic requests hit, a
//! hit is fresh (ids, created) with the original usage and does no engine
//! work, streams are replayed, Cache-Control bypasses, TTL expires; two
//! servers share one real Redis (Debian's redis-server on a free loopback
//! port), and a Redis that dies costs the clients nothing.

mod common;

use std::time::{Duration, Instant};

use common::services::RedisServer;
use common::{Server, client};
use serde_json::{Value, json};

fn chat(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 6});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// POST: status, x-cache header, body.
fn post(s: &Server, path: &str, body: &Value, cache_control: Option<&str>) -> (u16, Option<String>, String) {
    let mut r = client().post(s.url(path)).json(body);
    if let Some(c) = cache_control {
        r = r.header("cache-control", c);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let x = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string());
    (status, x, r.text().unwrap())
}

fn metric(s: &Server, name: &str, labels: &str) -> f64 {
    let text = client().get(s.url("/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SMOL: &str = "model=\"HuggingFaceTB/SmolLM2-135M-Instruct\"";

#[test]
fn deterministic_requests_are_answered_from_the_cache() {
    let s = Server::start(&["--preload", "smollm2,all-minilm"]);
    let body = chat("Name a color.", json!({"temperature": 0}));
    let (st, x, first) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!((st, x.as_deref()), (200, Some("miss")));
    std::thread::sleep(Duration::from_millis(100)); // stored in the background
    let tokens_before = metric(&s, "hfms_generation_tokens_total", SMOL);
    let (st, x, second) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!((st, x.as_deref()), (200, Some("hit")));
    let (a, b): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_ne!(a["id"], b["id"], "a fresh id");
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"], "the original usage");
    assert_eq!(
        metric(&s, "hfms_generation_tokens_total", SMOL),
        tokens_before,
        "no engine work on a hit"
    );
    assert!(metric(&s, "hfms_response_cache_requests_total", "result=\"hit\"") >= 1.0);

    // Replayed as a stream: the same text, usage and [DONE].
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (st, x, sse) = post(&s, "/v1/chat/completions", &sbody, None);
    assert_eq!((st, x.as_deref()), (200, Some("hit")));
    let events: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, a["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(events.last().unwrap()["usage"], a["usage"]);
    assert!(sse.trim_end().ends_with("data: [DONE]"));

    // Other fields make another entry; user/stream do not matter.
    let (_, x, _) = post(
        &s,
        "/v1/chat/completions",
        &chat("Name a color.", json!({"temperature": 0, "max_tokens": 7})),
        None,
    );
    assert_eq!(x.as_deref(), Some("miss"));
    let (_, x, _) = post(
        &s,
        "/v1/chat/completions",
        &chat("Name a color.", json!({"temperature": 0, "user": "someone"})),
        None,
    );
    assert_eq!(x.as_deref(), Some("hit"));
    // Not deterministic: not cached. A seed makes it so.
    let (_, x, _) = post(
        &s,
        "/v1/chat/completions",
        &chat("Name a color.", json!({"temperature": 0.8})),
        None,
    );
    assert_eq!(x, None);
    let seeded = chat("Name a color.", json!({"temperature": 0.8, "seed": 5}));
    assert_eq!(
        post(&s, "/v1/chat/completions", &seeded, None).1.as_deref(),
        Some("miss")
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        post(&s, "/v1/chat/completions", &seeded, None).1.as_deref(),
        Some("hit")
    );

    // Cache-Control: no-cache computes afresh; no-store neither reads nor writes.
    let (_, x, _) = post(&s, "/v1/chat/completions", &body, Some("no-cache"));
    assert_eq!(x.as_deref(), Some("miss"));
    let fresh = chat("Another question?", json!({"temperature": 0}));
    assert_eq!(
        post(&s, "/v1/chat/completions", &fresh, Some("no-store")).1.as_deref(),
        Some("miss")
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        post(&s, "/v1/chat/completions", &fresh, None).1.as_deref(),
        Some("miss"),
        "no-store stored nothing"
    );

    // Completions and embeddings too.
    let comp = json!({"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "temperature": 0});
    assert_eq!(post(&s, "/v1/completions", &comp, None).1.as_deref(), Some("miss"));
    std::thread::sleep(Duration::from_millis(100));
    let (_, x, c) = post(&s, "/v1/completions", &comp, None);
    assert_eq!(x.as_deref(), Some("hit"));
    assert!(c.starts_with("{\"id\":\"cmpl-"), "{c}");
    let emb = json!({"model": "all-minilm", "input": ["cached sentence"]});
    assert_eq!(post(&s, "/v1/embeddings", &emb, None).1.as_deref(), Some("miss"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(post(&s, "/v1/embeddings", &emb, None).1.as_deref(), Some("hit"));
    assert!(metric(&s, "hfms_response_cache_bytes", "") > 0.0);
}

/// The data events of an SSE body, without `[DONE]`.
fn sse_events(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn streamed_answers_are_stored_once_sent_whole() {
    let s = Server::start(&["--preload", "smollm2"]);
    // A streamed miss is stored as its non-streamed answer...
    let body = chat(
        "Name a fruit.",
        json!({"temperature": 0, "stream": true, "n": 2,
                                             "stream_options": {"include_usage": true}}),
    );
    let (st, x, sse) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!((st, x.as_deref()), (200, Some("miss")));
    let events = sse_events(&sse);
    let streamed: Vec<String> = (0..2)
        .map(|i| {
            events
                .iter()
                .flat_map(|e| e["choices"].as_array().unwrap())
                .filter(|c| c["index"] == i)
                .filter_map(|c| c["delta"]["content"].as_str())
                .collect()
        })
        .collect();
    let usage = events.last().unwrap()["usage"].clone();
    std::thread::sleep(Duration::from_millis(100));
    let tokens_before = metric(&s, "hfms_generation_tokens_total", SMOL);
    // ...that answers the same request as JSON...
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("stream");
    plain.as_object_mut().unwrap().remove("stream_options");
    let (st, x, json_hit) = post(&s, "/v1/chat/completions", &plain, None);
    assert_eq!((st, x.as_deref()), (200, Some("hit")));
    let hit: Value = serde_json::from_str(&json_hit).unwrap();
    for i in 0..2 {
        assert_eq!(hit["choices"][i]["message"]["content"], streamed[i].as_str());
        assert!(hit["choices"][i]["finish_reason"].is_string());
    }
    assert_eq!(hit["usage"], usage);
    // ...and as a stream, with no engine work.
    let (_, x, replay) = post(&s, "/v1/chat/completions", &body, None);
    assert_eq!(x.as_deref(), Some("hit"));
    assert_eq!(sse_events(&replay).last().unwrap()["usage"], usage);
    assert_eq!(metric(&s, "hfms_generation_tokens_total", SMOL), tokens_before);

    // Completions with echo: the stored answer has the echo.
    let comp = json!({"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "temperature": 0,
                      "echo": true, "stream": true});
    let (_, x, sse) = post(&s, "/v1/completions", &comp, None);
    assert_eq!(x.as_deref(), Some("miss"));
    let text: String = sse_events(&sse)
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert!(text.starts_with("The sky is"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    let mut plain = comp.clone();
    plain["stream"] = json!(false);
    let (_, x, c) = post(&s, "/v1/completions", &plain, None);
    assert_eq!(x.as_deref(), Some("hit"));
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["choices"][0]["text"], text.as_str());

    // no-store streams are not stored; a stream the client leaves is not.
    let fresh = chat("Name a tree.", json!({"temperature": 0, "stream": true}));
    assert_eq!(
        post(&s, "/v1/chat/completions", &fresh, Some("no-store")).1.as_deref(),
        Some("miss")
    );
    let long = chat(
        "Tell a long story.",
        json!({"temperature": 0, "stream": true, "max_tokens": 2000,
                                                   "ignore_eos": true}),
    );
    {
        use std::io::Read;
        let mut r = client().post(s.url("/v1/chat/completions")).json(&long).send().unwrap();
        let mut buf = [0u8; 64];
        assert!(r.read(&mut buf).unwrap() > 0);
    } // hung up
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        post(&s, "/v1/chat/completions", &fresh, None).1.as_deref(),
        Some("miss"),
        "no-store stored nothing"
    );
    // Headers come before the first token: a miss is seen at once.
    let r = client().post(s.url("/v1/chat/completions")).json(&long).send().unwrap();
    assert_eq!(r.headers()["x-cache"], "miss", "an abandoned stream was stored");
}

#[test]
fn entries_expire_and_the_cache_can_be_off() {
    let s = Server::start(&["--preload", "smollm2", "--cache-ttl", "1"]);
    let body = chat("Say yes.", json!({"temperature": 0}));
    assert_eq!(post(&s, "/v1/chat/completions", &body, None).1.as_deref(), Some("miss"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(post(&s, "/v1/chat/completions", &body, None).1.as_deref(), Some("hit"));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        post(&s, "/v1/chat/completions", &body, None).1.as_deref(),
        Some("miss"),
        "expired"
    );
    drop(s);
    let off = Server::start(&["--preload", "smollm2", "--no-response-cache"]);
    for _ in 0..2 {
        let (st, x, _) = post(&off, "/v1/chat/completions", &body, None);
        assert_eq!((st, x), (200, None));
    }
}

#[test]
fn two_servers_share_a_redis_cache_and_survive_it_going_away() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = Server::start(&["--preload", "smollm2", "--cache-url", &url]);
    let b = Server::start(&["--preload", "smollm2", "--cache-url", &url]);
    let body = chat("What is two plus two?", json!({"temperature": 0}));
    let (st, x, first) = post(&a, "/v1/chat/completions", &body, None);
    assert_eq!((st, x.as_deref()), (200, Some("miss")));
    // Stored by A in the background; B finds it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let (st, x, body2) = post(&b, "/v1/chat/completions", &body, None);
        assert_eq!(st, 200);
        if x.as_deref() == Some("hit") {
            break body2;
        }
        assert!(Instant::now() < deadline, "B never saw A's answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (fa, fb): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_eq!(fa["choices"], fb["choices"]);
    assert_eq!(fa["usage"], fb["usage"]);

    // Redis dies: answers still come, a little slower at most.
    redis.kill();
    for (s, q) in [(&a, "One more?"), (&b, "And another?"), (&a, "What is two plus two?")] {
        let t = Instant::now();
        let (st, _, text) = post(s, "/v1/chat/completions", &chat(q, json!({"temperature": 0})), None);
        assert_eq!(st, 200, "{text}");
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(metric(&a, "hfms_response_cache_errors_total", "backend=\"redis\"") >= 1.0);
    let logs = a.logs().join("\n");
    assert!(logs.contains("Redis"), "a warning names Redis");
}
