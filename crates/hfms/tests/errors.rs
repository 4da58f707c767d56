//! Bad input gets a clear 4xx in the OpenAI error envelope — never a 500, a
//! panic or a hang.

mod common;

use common::{Server, client, error_of};
use serde_json::{Value, json};

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// POST and expect `status` with an envelope whose message contains `needle`.
fn expect(path: &str, body: Value, status: u16, needle: &str) -> Value {
    let s = Server::shared();
    let (st, v) = s.post_json(path, body.clone());
    assert_eq!(st, status, "{body} → {v}");
    let (msg, kind, _, _) = error_of(&v);
    assert!(!kind.is_empty());
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "message {msg:?} lacks {needle:?}"
    );
    v
}

#[test]
fn invalid_json_and_wrong_types_are_400() {
    let s = Server::shared();
    for raw in ["{", "not json", "[1,2", ""] {
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(raw.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{raw:?}");
        let v: Value = r.json().unwrap();
        let (_, kind, _, _) = error_of(&v);
        assert_eq!(kind, "invalid_request_error");
    }
    let v = expect(
        "/v1/chat/completions",
        chat(json!({"temperature": "hot"})),
        400,
        "temperature",
    );
    assert_eq!(error_of(&v).2, Some("temperature"));
    let v = expect(
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": "hi"}),
        400,
        "messages",
    );
    assert_eq!(error_of(&v).2, Some("messages"));
    expect(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}]}),
        400,
        "model",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"max_tokens": -5})),
        400,
        "max_tokens",
    );
    expect("/v1/chat/completions", chat(json!({"n": 0})), 400, "n must be");
    expect("/v1/chat/completions", chat(json!({"n": 1000})), 400, "n must be");
}

#[test]
fn messages_and_roles_are_checked() {
    expect(
        "/v1/chat/completions",
        chat(json!({"messages": []})),
        400,
        "at least one message",
    );
    let v = expect(
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
        400,
        "not a valid role",
    );
    assert_eq!(error_of(&v).2, Some("messages[0].role"));
    expect(
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "user"}]})),
        400,
        "content is required",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "user", "content": 5}]})),
        400,
        "content must be",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
        400,
        "image_url",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]})),
        400,
        "function name",
    );
}

#[test]
fn sampling_parameters_out_of_range_are_400() {
    expect(
        "/v1/chat/completions",
        chat(json!({"temperature": 3})),
        400,
        "temperature",
    );
    expect("/v1/chat/completions", chat(json!({"top_p": 1.5})), 400, "top_p");
    expect(
        "/v1/chat/completions",
        chat(json!({"presence_penalty": 9})),
        400,
        "presence_penalty",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"top_logprobs": 3})),
        400,
        "logprobs must be true",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"logprobs": true, "top_logprobs": 21})),
        400,
        "top_logprobs",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
        400,
        "stop",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"logit_bias": {"99999999": 1}})),
        400,
        "vocabulary",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"logit_bias": {"5": 500}})),
        400,
        "between -100 and 100",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"stream_options": {"include_usage": true}})),
        400,
        "stream_options",
    );
    expect(
        "/v1/chat/completions",
        chat(json!({"response_format": {"type": "json_schema"}})),
        400,
        "json_schema",
    );
}

#[test]
fn prompts_over_the_context_length_say_the_numbers() {
    // About 9000 tokens: more than SmolLM2's 8192.
    let long = "hello world ".repeat(4600);
    let v = expect(
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "user", "content": long}], "max_tokens": null})),
        400,
        "maximum context length is 8192 tokens",
    );
    let (msg, _, _, code) = error_of(&v);
    assert_eq!(code, Some("context_length_exceeded"));
    assert!(
        msg.contains("9231") || msg.chars().filter(|c| c.is_ascii_digit()).count() >= 8,
        "{msg}"
    );
    // Prompt fits, prompt + max_tokens does not.
    let v = expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "hello", "max_tokens": 9000}),
        400,
        "you requested",
    );
    assert!(error_of(&v).0.contains("9000 in the completion"), "{}", error_of(&v).0);
}

#[test]
fn unknown_models_are_404_model_not_found() {
    let s = Server::shared();
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let body = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x"});
        let (st, v) = s.post_json(path, body);
        assert_eq!(st, 404, "{path}: {v}");
        let (_, kind, param, code) = error_of(&v);
        assert_eq!(
            (kind, param, code),
            ("invalid_request_error", Some("model"), Some("model_not_found"))
        );
    }
    let (st, v) = s.get_json("/v1/models/no-such-model");
    assert_eq!(st, 404);
    assert_eq!(error_of(&v).3, Some("model_not_found"));
    let (st, v) = s.get_json("/v1/nothing-here");
    assert_eq!(st, 404);
    error_of(&v);
}

#[test]
fn wrong_task_for_the_model_is_400() {
    expect(
        "/v1/chat/completions",
        json!({"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]}),
        400,
        "embedding model",
    );
    expect(
        "/v1/completions",
        json!({"model": "all-minilm", "prompt": "x"}),
        400,
        "embedding model",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "smollm2", "input": "x"}),
        400,
        "text generation model",
    );
}

#[test]
fn oversized_bodies_are_413() {
    let s = Server::shared();
    let big = format!("{{\"model\": \"smollm2\", \"prompt\": \"{}\"}}", "a".repeat(9 << 20));
    let r = client()
        .post(s.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().unwrap();
    assert_eq!(error_of(&v).3, Some("request_too_large"));
}

#[test]
fn completions_and_embeddings_inputs_are_checked() {
    expect(
        "/v1/completions",
        json!({"model": "smollm2"}),
        400,
        "prompt is required",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": []}),
        400,
        "empty",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": [1, -2]}),
        400,
        "token ids",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": [999999]}),
        400,
        "vocabulary",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": {"a": 1}}),
        400,
        "prompt must be",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "x", "logprobs": 50}),
        400,
        "logprobs",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "x", "suffix": "y"}),
        400,
        "suffix",
    );
    expect(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "x", "best_of": 3}),
        400,
        "best_of",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": ""}),
        400,
        "empty",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": []}),
        400,
        "empty",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": [[]]}),
        400,
        "empty",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": [[1, 99999999]]}),
        400,
        "vocabulary",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": [1, "a"]}),
        400,
        "token ids",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "x", "encoding_format": "hex"}),
        400,
        "encoding_format",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "x", "dimensions": 0}),
        400,
        "dimensions",
    );
    expect(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "x", "dimensions": 1000}),
        400,
        "dimensions",
    );
    expect("/v1/embeddings", json!({"model": "all-minilm"}), 400, "input");
}

#[test]
fn nothing_a_client_sends_is_a_500() {
    let s = Server::shared();
    // A spread of odd but well-formed JSON bodies against every endpoint.
    let bodies = [
        json!({}),
        json!([]),
        json!(null),
        json!({"model": null}),
        json!({"model": 5, "messages": {}}),
        json!({"model": "smollm2", "messages": [null]}),
        json!({"model": "smollm2", "messages": [{"role": null, "content": "x"}]}),
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stop": 5}),
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "seed": "x"}),
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 2.5}),
        json!({"model": "smollm2", "prompt": [[1, 2], "x"]}),
        json!({"model": "smollm2", "prompt": [["x"]]}),
        json!({"model": "all-minilm", "input": {"x": 1}}),
        json!({"model": "all-minilm", "input": [[1.5]]}),
    ];
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        for b in &bodies {
            let (st, v) = s.post_json(path, b.clone());
            assert!((400..500).contains(&st), "{path} {b} → {st} {v}");
            error_of(&v);
        }
    }
}
