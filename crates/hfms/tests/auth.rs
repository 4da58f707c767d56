//! API keys, scopes, model allow-lists and per-key limits with the real
//! server: the admin API and `hfms keys` on its database, OpenAI's
//! rate-limit headers and 429s, two replicas sharing one real Redis
//! (Debian's redis-server on a free loopback port) enforcing one limit, and
//! no secret ever in a log line.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::services::{Haproxy, Postgres, RedisServer};
use common::{Server, client};
use serde_json::{Value, json};

const ADMIN: &str = "admin-key-for-tests-0123456789";

fn send(s: &Server, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> reqwest::blocking::Response {
    let mut r = client().request(method.parse().unwrap(), s.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().unwrap()
}

fn call(s: &Server, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let r = send(s, method, path, key, body);
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
}

fn new_key(s: &Server, settings: Value) -> (String, String) {
    let (st, v) = call(s, "POST", "/admin/keys", Some(ADMIN), Some(settings));
    assert_eq!(st, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

fn data_dir(tag: &str) -> String {
    let d = std::env::temp_dir().join(format!("hfms-auth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.display().to_string()
}

#[test]
fn keys_gate_every_endpoint_by_scope_and_model_and_limit_requests_tokens_and_concurrency() {
    let s = Server::start_with_env(&["--preload", "smollm2,all-minilm"], &[("HFMS_ADMIN_KEY", ADMIN)]);
    let mut secrets = vec![ADMIN.to_string()];

    // Open: health and readiness. Everything else needs a key.
    assert_eq!(call(&s, "GET", "/health", None, None).0, 200);
    assert_eq!(call(&s, "GET", "/ready", None, None).0, 200);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/status"),
        ("GET", "/admin/keys"),
    ] {
        let (st, v) = call(&s, method, path, None, None);
        assert_eq!((st, code(&v)), (401, "invalid_api_key"), "{path}: {v}");
    }
    let hostile = [
        "sk-hfms-".to_string(),
        "sk-hfms-".to_string() + &"A".repeat(44),
        "x".repeat(8000),
        "Bearer Bearer".to_string(),
        ADMIN.to_uppercase(),
    ];
    for bad in &hostile {
        let (st, v) = call(&s, "GET", "/v1/models", Some(bad), None);
        assert_eq!((st, code(&v)), (401, "invalid_api_key"), "{bad:.30}");
    }
    assert_eq!(call(&s, "GET", "/metrics", Some(ADMIN), None).0, 200);

    // An inference key limited to one model and 3 requests a minute.
    let (id, key) = new_key(&s, json!({"name": "ci", "models": ["smollm2"], "rpm": 3}));
    secrets.push(key.clone());
    let (st, v) = call(&s, "GET", "/admin/keys", Some(&key), None);
    assert_eq!((st, code(&v)), (403, "insufficient_scope"));
    assert_eq!(call(&s, "GET", "/metrics", Some(&key), None).0, 403);
    let r = send(&s, "POST", "/v1/chat/completions", Some(&key), Some(chat("smollm2")));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(
        r.headers()["x-ratelimit-remaining-requests"],
        "2",
        "refused scopes are not counted"
    );
    assert!(
        r.headers()["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    let (st, v) = call(
        &s,
        "POST",
        "/v1/embeddings",
        Some(&key),
        Some(json!({"model": "all-minilm", "input": "x"})),
    );
    assert_eq!((st, code(&v)), (403, "model_not_allowed"), "{v}");
    assert_eq!(
        send(&s, "POST", "/v1/chat/completions", Some(&key), Some(chat("smollm2"))).status(),
        200
    );
    // The fourth request of the minute (the model refusal counted).
    let r = send(&s, "POST", "/v1/chat/completions", Some(&key), Some(chat("smollm2")));
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let v: Value = r.json().unwrap();
    assert_eq!(
        (v["error"]["type"].as_str(), code(&v)),
        (Some("requests"), "rate_limit_exceeded")
    );

    // A higher limit applies at once; x-api-key works as well as Bearer.
    let (st, v) = call(
        &s,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(ADMIN),
        Some(json!({"rpm": 1000})),
    );
    assert_eq!((st, v["rpm"].as_u64()), (200, Some(1000)), "{v}");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&chat("smollm2"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // It sees only its model.
    let (st, v) = call(&s, "GET", "/v1/models", Some(&key), None);
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["HuggingFaceTB/SmolLM2-135M-Instruct"], "{v}");
    let (st, v) = call(&s, "GET", "/v1/models/all-minilm", Some(&key), None);
    assert_eq!((st, code(&v)), (404, "model_not_found"));

    // Rotation: the old secret stops working, the new one works.
    let (st, v) = call(&s, "POST", &format!("/admin/keys/{id}/rotate"), Some(ADMIN), None);
    assert_eq!(st, 200);
    let rotated = v["secret"].as_str().unwrap().to_string();
    secrets.push(rotated.clone());
    assert_eq!(call(&s, "GET", "/v1/models", Some(&key), None).0, 401);
    assert_eq!(call(&s, "GET", "/v1/models", Some(&rotated), None).0, 200);
    // Revocation: 401 at once.
    assert_eq!(
        call(&s, "DELETE", &format!("/admin/keys/{id}"), Some(ADMIN), None).0,
        200
    );
    let (st, v) = call(&s, "GET", "/v1/models", Some(&rotated), None);
    assert_eq!((st, code(&v)), (401, "invalid_api_key"));
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));

    // Tokens per minute: the prompt is charged at admission.
    let (_, tkey) = new_key(&s, json!({"name": "tokens", "tpm": 60}));
    secrets.push(tkey.clone());
    let r = send(&s, "POST", "/v1/chat/completions", Some(&tkey), Some(chat("smollm2")));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "60");
    let left: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 60, "{left}");
    let long = json!({"model": "smollm2", "messages": [{"role": "user", "content": "word ".repeat(200)}],
                      "max_tokens": 2});
    let (st, v) = call(&s, "POST", "/v1/chat/completions", Some(&tkey), Some(long));
    assert_eq!(
        (st, v["error"]["type"].as_str(), code(&v)),
        (429, Some("tokens"), "rate_limit_exceeded")
    );

    // One request in flight at a time.
    let (_, ckey) = new_key(&s, json!({"name": "one-at-a-time", "max_concurrent": 1}));
    secrets.push(ckey.clone());
    let mut stream = send(
        &s,
        "POST",
        "/v1/completions",
        Some(&ckey),
        Some(json!({"model": "smollm2", "prompt": "Once", "max_tokens": 400, "ignore_eos": true, "stream": true})),
    );
    let mut buf = [0u8; 64];
    assert!(std::io::Read::read(&mut stream, &mut buf).unwrap() > 0);
    let (st, v) = call(&s, "GET", "/v1/models", Some(&ckey), None);
    assert_eq!((st, code(&v)), (429, "rate_limit_exceeded"));
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&s, "GET", "/v1/models", Some(&ckey), None).0 != 200 {
        assert!(Instant::now() < deadline, "the slot was never released");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Hostile admin input: 400s, never a key.
    for bad in [
        json!({"name": ""}),
        json!({"name": "x".repeat(300)}),
        json!({"name": "a", "rpm": -1}),
        json!({"name": "a", "rpm": 1e30}),
        json!({"name": "a", "rpm": 0}),
        json!({"name": "a", "rpm": "ten"}),
        json!({"name": "a", "models": ["["]}),
        json!({"name": "a", "scopes": []}),
        json!({"name": "a", "scopes": ["root"]}),
        json!({"name": "a", "expires_at": 1}),
        json!({"name": "a", "metadata": [1]}),
        json!({"name": "a", "unknown": 1}),
        json!({"rpm": 5}),
        json!([]),
    ] {
        let (st, v) = call(&s, "POST", "/admin/keys", Some(ADMIN), Some(bad.clone()));
        assert_eq!(st, 400, "{bad}: {v}");
    }
    for path in [
        "/admin/keys/nosuchkey00",
        &format!("/admin/keys/{}", "x".repeat(5000)),
        "/admin/keys/..%2F..%2Fetc",
    ] {
        let (st, _) = call(&s, "GET", path, Some(ADMIN), None);
        assert_eq!(st, 404, "{path:.40}");
    }
    let (st, v) = call(&s, "GET", "/admin/keys", Some(ADMIN), None);
    assert_eq!(st, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 3, "{v}");
    assert!(!v.to_string().contains("sk-hfms-"), "a listing shows no secret");

    // No secret in any log line.
    std::thread::sleep(Duration::from_millis(200));
    let logs = s.logs().join("\n");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
}

#[test]
fn keys_made_with_the_cli_turn_a_running_server_s_auth_on_and_an_open_network_server_is_refused() {
    let dir = data_dir("cli");
    let hfms = env!("CARGO_BIN_EXE_hfms");
    // A server without keys serves everyone, until a key appears in its
    // database (made here by the CLI while it runs).
    let s = Server::start(&[
        "--data-dir",
        &dir,
        "--auth-cache-seconds",
        "0",
        "--preload",
        "all-minilm",
    ]);
    assert_eq!(call(&s, "GET", "/v1/models", None, None).0, 200);
    let out = Command::new(hfms)
        .args([
            "keys",
            "--data-dir",
            &dir,
            "create",
            "--name",
            "cli",
            "--model",
            "all-minilm",
            "--rpm",
            "100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("sk-hfms-"), "{secret}");
    let list = Command::new(hfms)
        .args(["keys", "--data-dir", &dir, "list"])
        .output()
        .unwrap();
    let table = String::from_utf8(list.stdout).unwrap();
    assert!(
        table.contains("cli") && table.contains("active") && !table.contains(&secret),
        "{table}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&s, "GET", "/v1/models", None, None).0 != 401 {
        assert!(
            Instant::now() < deadline,
            "the running server never noticed the new key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let emb = json!({"model": "all-minilm", "input": "x"});
    assert_eq!(
        call(&s, "POST", "/v1/embeddings", Some(&secret), Some(emb.clone())).0,
        200
    );
    let id = &secret[8..20];
    let revoke = Command::new(hfms)
        .args(["keys", "--data-dir", &dir, "revoke", id])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    assert_eq!(call(&s, "POST", "/v1/embeddings", Some(&secret), Some(emb)).0, 401);
    let bad = Command::new(hfms)
        .args(["keys", "--data-dir", &dir, "revoke", "nosuch"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    drop(s);
    // Every key revoked: a restart does not open the server again.
    let s = Server::start(&["--data-dir", &dir]);
    assert_eq!(call(&s, "GET", "/v1/models", None, None).0, 401);
    drop(s);

    // No keys, no admin key, a network address: refused before binding.
    let out = Command::new(hfms)
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--no-hf-cache",
            "--models-dir",
            &dir,
        ])
        .args(["--data-dir", &data_dir("open")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-auth"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(data_dir("open"));
}

/// Successes of `n` requests alternating between two servers.
fn alternate(a: &Server, b: &Server, key: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let s = if i % 2 == 0 { a } else { b };
            call(s, "GET", "/v1/models", Some(key), None).0 == 200
        })
        .count()
}

#[test]
fn two_replicas_behind_haproxy_sharing_postgres_and_redis_enforce_one_limit_and_a_dead_redis_follows_the_policy() {
    let mut redis = RedisServer::start();
    let postgres = Postgres::start();
    let (redis_url, database_url) = (redis.url(), postgres.url());
    let env = [("HFMS_ADMIN_KEY", ADMIN)];
    // Keys in one PostgreSQL, limits in one Redis.
    let shared = [
        "--database-url",
        &database_url,
        "--redis-url",
        &redis_url,
        "--auth-cache-seconds",
        "5",
    ];
    let shared = [&shared[..], &["--preload", "all-minilm", "--usage-commit-ms", "200"]].concat();
    let a = Server::start_with_env(&shared, &env);
    let b = Server::start_with_env(&[&shared[..], &["--rate-limit-on-redis-error", "deny"]].concat(), &env);
    // Behind one HAProxy, round-robin, as clients would reach them.
    let lb = Haproxy::start(&[a.addr(), b.addr()]);
    let through = |method: &str, path: &str, key: &str, body: Option<Value>| {
        let mut r = client().request(method.parse().unwrap(), lb.url(path)).bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (st, made) = through("POST", "/admin/keys", ADMIN, Some(json!({"name": "shared", "rpm": 10})));
    assert_eq!(st, 201, "{made}");
    let (id, key) = (made["id"].as_str().unwrap(), made["secret"].as_str().unwrap());
    // The key made through one replica works on both, and the two together
    // admit the key's 10 requests a minute, not 20.
    let embed = json!({"model": "all-minilm", "input": "one limit"});
    let admitted = (0..30)
        .filter(|_| through("POST", "/v1/embeddings", key, Some(embed.clone())).0 == 200)
        .count();
    assert_eq!(admitted, 10);
    // Both replicas served some of them (their per-key metrics), and their
    // usage records landed in one table.
    let served = |s: &Server| -> f64 {
        let m = send(s, "GET", "/metrics", Some(ADMIN), None).text().unwrap();
        let series = format!("hfms_key_requests_total{{key_id=\"{id}\",outcome=\"success\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let (on_a, on_b) = (served(&a), served(&b));
    assert!(on_a >= 1.0 && on_b >= 1.0 && on_a + on_b == 10.0, "{on_a} + {on_b}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, usage) = through("GET", &format!("/admin/usage?key={id}"), ADMIN, None);
        assert_eq!(st, 200, "{usage}");
        if usage["data"][0]["requests"] == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{usage}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each replica on its own would have admitted 10: the bug one limit
    // store exists to prevent.
    let local_dir = data_dir("local");
    let c = Server::start_with_env(&["--data-dir", &local_dir], &env);
    let d = Server::start_with_env(&["--data-dir", &local_dir], &env);
    let (_, local) = new_key(&c, json!({"name": "local", "rpm": 10}));
    assert_eq!(alternate(&c, &d, &local, 30), 20);

    // Redis gone: `allow` (a) serves with a warning and a metric, `deny`
    // (b) refuses.
    redis.kill();
    let (_, fresh) = new_key(&a, json!({"name": "after", "rpm": 10}));
    assert_eq!(call(&a, "GET", "/v1/models", Some(&fresh), None).0, 200);
    assert_eq!(call(&b, "GET", "/v1/models", Some(&fresh), None).0, 429);
    let metrics = send(&a, "GET", "/metrics", Some(ADMIN), None).text().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hfms_rate_limit_store_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(a.logs().iter().any(|l| l.contains("rate limit store unavailable")));
    // Revoked through one replica, refused by the other (after its key cache).
    let (id, revoked) = new_key(&a, json!({"name": "to-revoke"}));
    assert_eq!(call(&b, "GET", "/v1/models", Some(&revoked), None).0, 200);
    assert_eq!(
        call(&a, "DELETE", &format!("/admin/keys/{id}"), Some(ADMIN), None).0,
        200
    );
    std::thread::sleep(Duration::from_millis(5200));
    assert_eq!(call(&b, "GET", "/v1/models", Some(&revoked), None).0, 401);
    let _ = std::fs::remove_dir_all(local_dir);
}

fn usage_of(v: &Value) -> (f64, f64, f64) {
    let u = &v["usage"];
    let cached = u["prompt_tokens_details"]["cached_tokens"].as_f64().unwrap_or(0.0);
    (
        u["prompt_tokens"].as_f64().unwrap(),
        cached,
        u["completion_tokens"].as_f64().unwrap_or(0.0),
    )
}

#[test]
fn usage_records_match_the_answers_are_priced_and_survive_a_graceful_stop() {
    let dir = data_dir("usage");
    let s = Server::start_with_env(
        &[
            "--data-dir",
            &dir,
            "--preload",
            "smollm2,all-minilm",
            "--usage-commit-ms",
            "200",
            "--price",
            "smollm2=1000000,500000,2000000",
        ],
        &[("HFMS_ADMIN_KEY", ADMIN)],
    );
    let (id, key) = new_key(&s, json!({"name": "metered"}));
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Name a color."}],
                      "max_tokens": 5, "temperature": 0});
    let (st, first) = call(&s, "POST", "/v1/chat/completions", Some(&key), Some(body.clone()));
    assert_eq!(st, 200);
    // The same again: answered from the cache, recorded as a hit.
    let r = send(&s, "POST", "/v1/chat/completions", Some(&key), Some(body));
    assert_eq!(r.headers()["x-cache"], "hit");
    let hit: Value = r.json().unwrap();
    // Another key asking the same is not told what the first asked.
    let (_, other) = new_key(&s, json!({"name": "other"}));
    let same = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Name a color."}],
                      "max_tokens": 5, "temperature": 0});
    let r = send(&s, "POST", "/v1/chat/completions", Some(&other), Some(same));
    assert_eq!(r.headers()["x-cache"], "miss", "the cache is per key");
    let streamed = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        Some(
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "Count to three."}],
                    "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .text()
    .unwrap();
    let last: Value = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .next_back()
        .unwrap();
    let (st, _) = call(
        &s,
        "POST",
        "/v1/embeddings",
        Some(ADMIN),
        Some(json!({"model": "all-minilm", "input": "x"})),
    );
    assert_eq!(st, 200);
    std::thread::sleep(Duration::from_millis(600));

    let (st, v) = call(&s, "GET", "/admin/usage?group_by=key", Some(ADMIN), None);
    assert_eq!(st, 200, "{v}");
    let rows = v["data"].as_array().unwrap();
    let mine = rows.iter().find(|r| r["group"] == id).unwrap_or_else(|| panic!("{v}"));
    let answers = [usage_of(&first), usage_of(&hit), usage_of(&last)];
    let sum = |f: fn(&(f64, f64, f64)) -> f64| answers.iter().map(f).sum::<f64>();
    assert_eq!(mine["requests"], 3);
    assert_eq!(mine["cache_hits"], 1);
    assert_eq!(mine["prompt_tokens"].as_f64(), Some(sum(|a| a.0)));
    assert_eq!(mine["cached_tokens"].as_f64(), Some(sum(|a| a.1)));
    assert_eq!(mine["completion_tokens"].as_f64(), Some(sum(|a| a.2)));
    // Priced per token here: input 1, cached input 0.5, output 2.
    let cost = sum(|a| a.0 - a.1) + 0.5 * sum(|a| a.1) + 2.0 * sum(|a| a.2);
    assert!((mine["cost"].as_f64().unwrap() - cost).abs() < 1e-6, "{mine} vs {cost}");
    let operator = rows.iter().find(|r| r["group"] == "-").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(operator["requests"], 1);

    let r = send(&s, "GET", "/admin/usage?group_by=model&format=csv", Some(ADMIN), None);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = r.text().unwrap();
    assert!(csv.starts_with("group,requests,"), "{csv}");
    assert!(csv.contains("HuggingFaceTB/SmolLM2-135M-Instruct,4,"), "{csv}");
    let (_, v) = call(
        &s,
        "GET",
        "/admin/usage?model=smollm2&from=2000-01-01T00:00:00Z",
        Some(ADMIN),
        None,
    );
    assert_eq!(v["data"][0]["requests"], 4, "{v}");
    let (_, v) = call(
        &s,
        "GET",
        &format!("/admin/usage?to={}", 946_684_800),
        Some(ADMIN),
        None,
    );
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "nothing before 2000: {v}");
    assert_eq!(call(&s, "GET", "/admin/usage", Some(&key), None).0, 403);
    for bad in [
        "group_by=week",
        "from=abc",
        "from=-1",
        "to=99999999999999999999",
        "from=9223372036854775807",
        "format=xml",
        "nonsense=1",
        "from=%ZZ",
    ] {
        let (st, v) = call(&s, "GET", &format!("/admin/usage?{bad}"), Some(ADMIN), None);
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{bad}: {v}");
    }

    // A graceful stop commits every record of the requests it answered.
    let before = total_requests(&dir);
    for i in 0..20 {
        let (st, _) = call(
            &s,
            "POST",
            "/v1/embeddings",
            Some(&key),
            Some(json!({"model": "all-minilm", "input": format!("n{i}")})),
        );
        assert_eq!(st, 200);
    }
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(total_requests(&dir), before + 20);
    let _ = std::fs::remove_dir_all(dir);
}

/// Requests recorded in a stopped server's database, through `hfms usage`.
fn total_requests(dir: &str) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_hfms"))
        .args(["usage", "--data-dir", dir, "--csv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    csv.lines()
        .nth(1)
        .map_or(0, |l| l.split(',').nth(1).unwrap().parse().unwrap())
}

#[test]
fn budgets_refuse_a_key_that_spent_them_until_raised() {
    let s = Server::start_with_env(
        &[
            "--preload",
            "all-minilm",
            "--price",
            // A million units per million tokens: a token costs 1.
            "all-minilm=1000000,1000000,1000000",
        ],
        &[("HFMS_ADMIN_KEY", ADMIN)],
    );
    // Hostile budgets.
    for bad in [json!(-1), json!("NaN"), json!("1"), json!(1e300), json!([1]), json!({})] {
        let (st, v) = call(
            &s,
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(json!({"name": "b", "budget_daily": bad})),
        );
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "budget_daily", "{v}");
    }
    let (id, key) = new_key(
        &s,
        json!({"name": "budgeted", "budget_daily": 3, "budget_monthly": 100}),
    );
    let embed = json!({"model": "all-minilm", "input": "five tokens or so"});
    // The first request spends more than the day's budget (the budget is
    // checked before a request, so one may overshoot it).
    let (st, v) = call(&s, "POST", "/v1/embeddings", Some(&key), Some(embed.clone()));
    assert_eq!(st, 200, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 3);
    let r = send(&s, "POST", "/v1/embeddings", Some(&key), Some(embed.clone()));
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let v: Value = r.json().unwrap();
    assert_eq!(
        (code(&v), v["error"]["type"].as_str()),
        ("insufficient_quota", Some("insufficient_quota"))
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("daily budget"), "{v}");
    // Other keys are not affected; lifting the daily budget (null) lets it
    // spend again, up to the monthly one.
    let (_, free) = new_key(&s, json!({"name": "free"}));
    assert_eq!(
        call(&s, "POST", "/v1/embeddings", Some(&free), Some(embed.clone())).0,
        200
    );
    let (st, k) = call(
        &s,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(ADMIN),
        Some(json!({"budget_daily": null})),
    );
    assert_eq!(
        (st, &k["budget_daily"], &k["budget_monthly"]),
        (200, &Value::Null, &json!(100.0))
    );
    assert_eq!(
        call(&s, "POST", "/v1/embeddings", Some(&key), Some(embed.clone())).0,
        200
    );
    let (st, _) = call(
        &s,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(ADMIN),
        Some(json!({"budget_monthly": 1})),
    );
    assert_eq!(st, 200);
    let (st, v) = call(&s, "POST", "/v1/embeddings", Some(&key), Some(embed));
    assert_eq!(
        (st, v["error"]["message"].as_str().unwrap_or("").contains("monthly")),
        (429, true),
        "{v}"
    );
    // Requests admitted together see each other's prompts: of 8 at once,
    // at most two get past a budget one of them nearly spends.
    let (_, burst) = new_key(&s, json!({"name": "burst", "budget_daily": 10}));
    let admitted = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (s, burst) = (&s, &burst);
                scope.spawn(move || {
                    let body = json!({"model": "all-minilm", "input": format!("request number {i} of the burst")});
                    call(s, "POST", "/v1/embeddings", Some(burst), Some(body)).0
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|st| *st == 200)
            .count()
    });
    assert!(
        (1..=2).contains(&admitted),
        "{admitted} of 8 admitted past a budget of 10"
    );
    // Spending shows per key id in /metrics.
    let m = send(&s, "GET", "/metrics", Some(ADMIN), None).text().unwrap();
    for series in [
        format!("hfms_key_requests_total{{key_id=\"{id}\",outcome=\"success\"}} 2"),
        format!(
            "hfms_rate_limited_requests_total{{kind=\"budget\"}} {}",
            2 + 8 - admitted
        ),
    ] {
        assert!(m.lines().any(|l| l == series), "{series} missing");
    }
    assert!(
        m.lines()
            .any(|l| l.starts_with(&format!("hfms_key_cost_total{{key_id=\"{id}\"}} ")))
    );
    assert!(!m.contains("budgeted"), "key names stay out of metrics");

    // Spending read again from the records (here every second) never
    // forgets what is queued but not yet committed (here for 20 s).
    let lagging = Server::start_with_env(
        &[
            "--preload",
            "all-minilm",
            "--price",
            "all-minilm=1000000,1000000,1000000",
            "--usage-commit-ms",
            "20000",
            "--auth-cache-seconds",
            "1",
        ],
        &[("HFMS_ADMIN_KEY", ADMIN)],
    );
    let (_, key) = new_key(&lagging, json!({"name": "lagging", "budget_daily": 10}));
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(1300));
            let body = json!({"model": "all-minilm", "input": format!("sequential request {i}")});
            call(&lagging, "POST", "/v1/embeddings", Some(&key), Some(body)).0
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
}

/// A request with the dashboard's session cookie (and maybe its CSRF token).
fn with_cookie(
    s: &Server,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client()
        .request(method.parse().unwrap(), s.url(path))
        .header("cookie", format!("hfms_session={cookie}"));
    if let Some(c) = csrf {
        r = r.header("x-csrf-token", c);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn the_dashboard_signs_in_admins_with_a_cookie_bound_session_and_csrf_token() {
    let s = Server::start_with_env(&[], &[("HFMS_ADMIN_KEY", ADMIN)]);
    // The page and its files are served to anyone, with a strict CSP.
    let page = send(&s, "GET", "/admin", None, None);
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().unwrap().contains("/admin/assets/app.js"));
    for (path, status) in [
        ("/admin/assets/app.js", 200),
        ("/admin/assets/vendor/uplot.iife.min.js", 200),
        ("/admin/assets/nope.js", 404),
    ] {
        assert_eq!(send(&s, "GET", path, None, None).status(), status, "{path}");
    }
    // Only the embedded files: no path reaches the disk.
    for path in ["/admin/assets/../../Cargo.toml", "/admin/assets/..%2f..%2fCargo.toml"] {
        let r = send(&s, "GET", path, None, None);
        assert_ne!(r.status(), 200, "{path}");
        assert!(!r.text().unwrap().contains("[workspace]"), "{path}");
    }
    // Not signed in.
    assert_eq!(call(&s, "GET", "/admin/session", None, None).0, 401);
    // Hostile sign-ins: wrong key, wrong types, empty, huge, unknown field.
    let (_, inference) = new_key(&s, json!({"name": "not-admin"}));
    for (body, status) in [
        (json!({"key": "sk-hfms-wrong"}), 401),
        (json!({"key": ""}), 401),
        (json!({"key": "x".repeat(100_000)}), 401),
        (json!({"key": 1}), 400),
        (json!({}), 400),
        (json!({"key": ADMIN, "admin": true}), 400),
        (json!({"key": inference}), 403),
    ] {
        let (st, v) = call(&s, "POST", "/admin/session", None, Some(body));
        assert_eq!(st, status, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // Sign in with an admin-scoped key (not only the bootstrap one).
    let (admin_id, admin_key) = new_key(&s, json!({"name": "ops", "scopes": ["admin"]}));
    let r = send(&s, "POST", "/admin/session", None, Some(json!({"key": admin_key})));
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert_eq!(r.headers()["cache-control"], "no-store");
    let signed: Value = r.json().unwrap();
    assert_eq!(signed["key"]["id"], admin_id.as_str());
    let csrf = signed["csrf_token"].as_str().unwrap().to_string();
    let cookie = set_cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("hfms_session=")
        .unwrap()
        .to_string();
    assert!(!set_cookie.contains(&admin_key) && !cookie.is_empty());
    // The cookie reads the admin API; it changes things only with the CSRF
    // token; it never opens the OpenAI API.
    assert_eq!(
        with_cookie(&s, "GET", "/admin/session", &cookie, None, None).1["csrf_token"],
        csrf.as_str()
    );
    assert_eq!(with_cookie(&s, "GET", "/admin/keys", &cookie, None, None).0, 200);
    assert_eq!(with_cookie(&s, "GET", "/metrics", &cookie, None, None).0, 200);
    let new = json!({"name": "from-dashboard"});
    for bad in [None, Some(""), Some("0".repeat(32).as_str()), Some(&csrf[1..])] {
        let (st, v) = with_cookie(&s, "POST", "/admin/keys", &cookie, bad, Some(new.clone()));
        assert_eq!((st, code(&v)), (403, "csrf_failed"), "{bad:?}");
    }
    let (st, made) = with_cookie(&s, "POST", "/admin/keys", &cookie, Some(&csrf), Some(new));
    assert_eq!(st, 201, "{made}");
    assert_eq!(with_cookie(&s, "GET", "/v1/models", &cookie, None, None).0, 401);
    for bad in ["", "x", &"A".repeat(32), &cookie[1..], &"é".repeat(40)] {
        assert_eq!(with_cookie(&s, "GET", "/admin/keys", bad, None, None).0, 401, "{bad}");
    }
    // A cookie planted beside the real one (another site on this host)
    // does not lock the session out.
    let (st, _) = with_cookie(
        &s,
        "GET",
        "/admin/keys",
        &format!("bogus; hfms_session={cookie}"),
        None,
        None,
    );
    assert_eq!(st, 200);
    // Limits are for the OpenAI API: an admin key's RPM does not throttle
    // the admin endpoints (the dashboard polls them).
    let (limited_id, limited) = new_key(
        &s,
        json!({"name": "ops-rpm1", "scopes": ["admin", "inference"], "rpm": 1}),
    );
    for _ in 0..3 {
        assert_eq!(call(&s, "GET", "/admin/keys", Some(&limited), None).0, 200);
    }
    // Rotating the key behind a session ends it, and so does taking its
    // admin scope (giving it back does not revive it).
    let sign_in = |secret: &str| -> String {
        let r = send(&s, "POST", "/admin/session", None, Some(json!({"key": secret})));
        assert_eq!(r.status(), 200);
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap()["hfms_session=".len()..].to_string()
    };
    let before_rotation = sign_in(&limited);
    assert_eq!(
        with_cookie(&s, "GET", "/admin/keys", &before_rotation, None, None).0,
        200
    );
    let (_, rotated) = call(
        &s,
        "POST",
        &format!("/admin/keys/{limited_id}/rotate"),
        Some(ADMIN),
        None,
    );
    assert_eq!(
        with_cookie(&s, "GET", "/admin/keys", &before_rotation, None, None).0,
        401
    );
    let after_rotation = sign_in(rotated["secret"].as_str().unwrap());
    assert_eq!(
        with_cookie(&s, "GET", "/admin/keys", &after_rotation, None, None).0,
        200
    );
    for scopes in [json!(["inference"]), json!(["admin"])] {
        let patch = Some(json!({"scopes": scopes}));
        let (st, _) = call(&s, "PATCH", &format!("/admin/keys/{limited_id}"), Some(ADMIN), patch);
        assert_eq!(st, 200);
        assert_eq!(
            with_cookie(&s, "GET", "/admin/keys", &after_rotation, None, None).0,
            401
        );
    }
    // Revoking the key behind a session ends it.
    let (st, _) = with_cookie(
        &s,
        "DELETE",
        &format!("/admin/keys/{admin_id}"),
        &cookie,
        Some(&csrf),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(with_cookie(&s, "GET", "/admin/keys", &cookie, None, None).0, 401);
    // The bootstrap key's session; signing out ends it.
    let r = send(&s, "POST", "/admin/session", None, Some(json!({"key": ADMIN})));
    let cookie =
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap()["hfms_session=".len()..].to_string();
    let csrf = r.json::<Value>().unwrap()["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(with_cookie(&s, "GET", "/status", &cookie, None, None).0, 200);
    assert_eq!(with_cookie(&s, "DELETE", "/admin/session", &cookie, None, None).0, 403);
    assert_eq!(
        with_cookie(&s, "DELETE", "/admin/session", &cookie, Some(&csrf), None).0,
        204
    );
    assert_eq!(with_cookie(&s, "GET", "/status", &cookie, None, None).0, 401);
    // Nothing secret in the logs.
    for line in s.logs() {
        assert!(!line.contains(&cookie) && !line.contains(&admin_key), "{line}");
    }
}

#[test]
fn requests_cut_short_by_their_client_are_recorded_with_the_tokens_they_generated() {
    let s = Server::start_with_env(
        &["--preload", "smollm2", "--usage-commit-ms", "100"],
        &[("HFMS_ADMIN_KEY", ADMIN)],
    );
    let long = |stream: bool| {
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}],
               "max_tokens": 2000, "ignore_eos": true, "stream": stream})
    };
    // A stream the client leaves after a few chunks.
    let (streamed_id, streamed_key) = new_key(&s, json!({"name": "stream-left", "tpm": 1_000_000}));
    let mut r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(&streamed_key),
        Some(long(true)),
    );
    assert_eq!(r.status(), 200);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < 12 {
        let n = std::io::Read::read(&mut r, &mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(r);
    // A whole answer the client stops waiting for.
    let (waited_id, waited_key) = new_key(&s, json!({"name": "gave-up"}));
    let gave_up = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&waited_key)
        .json(&long(false))
        .timeout(Duration::from_millis(1500))
        .send();
    assert!(gave_up.is_err(), "the answer came within the client's timeout");

    let usage = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = call(&s, "GET", &format!("/admin/usage?key={id}"), Some(ADMIN), None);
            if v["data"][0]["requests"] == 1 {
                return v["data"][0].clone();
            }
            assert!(Instant::now() < deadline, "no record for {id}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Both were recorded with what they generated (a streamed chunk is at
    // least one token; the first two chunks carry the role and nothing).
    let streamed = usage(&streamed_id);
    assert!(streamed["completion_tokens"].as_u64().unwrap() >= 10, "{streamed}");
    assert_eq!(streamed["errors"], 1, "recorded as 499, the client left: {streamed}");
    let waited = usage(&waited_id);
    assert!(waited["completion_tokens"].as_u64().unwrap() >= 1, "{waited}");
    assert!(waited["prompt_tokens"].as_u64().unwrap() > 5, "{waited}");
    assert_eq!(waited["errors"], 1, "recorded as 499, client closed: {waited}");
    // And counted per key in /metrics.
    let m = send(&s, "GET", "/metrics", Some(ADMIN), None).text().unwrap();
    let completion = |id: &str| -> u64 {
        let series = format!("hfms_key_tokens_total{{key_id=\"{id}\",kind=\"completion\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(
        completion(&streamed_id),
        streamed["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(completion(&waited_id), waited["completion_tokens"].as_u64().unwrap());
}

#[test]
fn usage_records_wait_out_a_database_outage_and_a_stop_during_one_is_kept_for_the_next_start() {
    let mut postgres = Postgres::start();
    let url = postgres.url();
    let dir = data_dir("outage");
    let flags = [
        "--database-url",
        &url,
        "--data-dir",
        &dir,
        "--preload",
        "all-minilm",
        "--usage-commit-ms",
        "100",
    ];
    let env = [("HFMS_ADMIN_KEY", ADMIN)];
    let embed = |s: &Server, n: usize| {
        for i in 0..n {
            let body = json!({"model": "all-minilm", "input": format!("during the outage {i}")});
            assert_eq!(call(s, "POST", "/v1/embeddings", Some(ADMIN), Some(body)).0, 200);
        }
    };
    let recorded = |s: &Server, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, v) = call(s, "GET", "/admin/usage", Some(ADMIN), None);
            if st == 200 && v["data"][0]["requests"].as_u64() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{want} records expected: {st} {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let s = Server::start_with_env(&flags, &env);
    embed(&s, 2);
    recorded(&s, 2);
    // The database goes away; requests (with the bootstrap key, which
    // needs no database) go on, and their records wait for it.
    postgres.stop();
    embed(&s, 5);
    std::thread::sleep(Duration::from_secs(3));
    postgres.restart();
    recorded(&s, 7);
    // Down again, and the server stops: the records go to the spill file…
    postgres.stop();
    embed(&s, 4);
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(30)).is_some_and(|e| e.success()));
    let spill = std::path::Path::new(&dir).join("usage-unwritten.jsonl");
    let lines = std::fs::read_to_string(&spill).unwrap_or_default();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    // …and the next start commits them.
    postgres.restart();
    let again = Server::start_with_env(&flags, &env);
    recorded(&again, 11);
    assert!(!spill.exists());
    drop(again);
    let _ = std::fs::remove_dir_all(dir);
}
