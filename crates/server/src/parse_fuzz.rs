//! Property tests of the request parsers: any JSON at all, and valid
//! requests with one field replaced by anything, give a value or a 400 —
//! never a panic — through every parsing and validation step a handler
//! runs before it reaches the engine.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::extract::{is_json, parse_json};
use crate::middleware::host::host_name;
use crate::openai::params::{self, Common};
use crate::openai::types::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};
use crate::state::RequestLimits;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![Just(0.0), Just(-0.0), Just(1e-39), Just(1e300), Just(-1e300), Just(2.5)].prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("nan"),
            Just("inf"),
            Just("-1"),
            Just("0"),
            Just("5m"),
            Just("99999999999999999999d"),
            Just("smollm2"),
            Just("user"),
            Just("text")
        ]
        .prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_chat() -> Value {
    json!({"model": "smollm2", "messages": [{"role": "system", "content": "be brief"},
           {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
           "temperature": 0.7, "top_p": 0.9, "top_k": 40, "n": 2, "stop": ["\n"], "max_tokens": 8,
           "presence_penalty": 0.1, "frequency_penalty": 0.1, "logit_bias": {"1": 2.0},
           "logprobs": true, "top_logprobs": 3, "seed": 7, "keep_alive": "5m", "stream": false})
}

fn valid_completion() -> Value {
    json!({"model": "smollm2", "prompt": ["a", "b"], "n": 1, "max_tokens": 4, "logprobs": 2,
           "echo": true, "stop": "x", "keep_alive": 0})
}

fn valid_embedding() -> Value {
    json!({"model": "all-minilm", "input": ["a", "b"], "encoding_format": "float", "dimensions": 8})
}

/// One field of `body` (or of its first nested object) replaced by `v`.
fn mutate(mut body: Value, field: usize, v: Value) -> Value {
    let obj = body.as_object_mut().unwrap();
    let keys: Vec<String> = obj.keys().cloned().collect();
    let k = &keys[field % keys.len()];
    obj.insert(k.clone(), v);
    body
}

fn limits() -> RequestLimits {
    RequestLimits::DEFAULT
}

/// Everything chat runs before the model: parse, messages, shape checks,
/// the sampling fields against a vocabulary, keep_alive, max_tokens.
fn chat_pipeline(bytes: &[u8]) {
    let Ok(req) = parse_json::<ChatCompletionRequest>(bytes) else {
        return;
    };
    let _ = crate::openai::chat::template_messages(&req.messages);
    let _ = params::parse_keep_alive(req.keep_alive.as_ref());
    let common = Common::of_chat(&req, req.top_logprobs.and_then(|k| usize::try_from(k).ok()));
    if params::validate_shape(&common, &limits()).is_ok() {
        let _ = params::validate(common, 49152, &limits());
    }
    for cap in [None, Some(16)] {
        let _ = params::max_tokens(req.max_tokens, "max_tokens", 10, 8192, "messages", cap);
        let _ = params::max_tokens(
            req.max_completion_tokens,
            "max_completion_tokens",
            9000,
            8192,
            "messages",
            cap,
        );
    }
}

fn completion_pipeline(bytes: &[u8]) {
    let Ok(req) = parse_json::<CompletionRequest>(bytes) else {
        return;
    };
    let _ = crate::openai::completions::prompt_count(req.prompt.as_ref());
    let _ = params::parse_keep_alive(req.keep_alive.as_ref());
}

fn embedding_pipeline(bytes: &[u8]) {
    let Ok(req) = parse_json::<EmbeddingRequest>(bytes) else {
        return;
    };
    let _ = crate::openai::embeddings::inputs(&req.input, 2048);
    let _ = params::parse_keep_alive(req.keep_alive.as_ref());
}

fn all(bytes: &[u8]) {
    chat_pipeline(bytes);
    completion_pipeline(bytes);
    embedding_pipeline(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_json_body_parses_or_is_refused(v in any_json()) {
        all(v.to_string().as_bytes());
    }

    #[test]
    fn valid_bodies_with_one_field_replaced_never_panic(field in 0usize..32, v in any_json()) {
        all(mutate(valid_chat(), field, v.clone()).to_string().as_bytes());
        all(mutate(valid_completion(), field, v.clone()).to_string().as_bytes());
        all(mutate(valid_embedding(), field, v).to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        all(&bytes);
    }

    #[test]
    fn header_values_never_panic(s in ".{0,40}") {
        let _ = is_json(&s);
        let _ = host_name(&s);
    }

    #[test]
    fn keep_alive_values_never_panic(s in ".{0,24}", f in any::<f64>()) {
        let _ = hfms_engine::manager::KeepAlive::parse_str(&s);
        if let Some(n) = serde_json::Number::from_f64(f) {
            let _ = hfms_engine::manager::KeepAlive::parse(&Value::Number(n));
        }
    }
}

#[test]
fn huge_counts_and_deep_nesting_are_refused_cleanly() {
    // Deep nesting: serde_json's recursion limit answers, not the stack.
    let deep = "[".repeat(100_000);
    all(deep.as_bytes());
    let many_stops = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": vec!["x"; 100_000]});
    all(many_stops.to_string().as_bytes());
    let big_n = json!({"model": "m", "prompt": vec!["x"; 10], "n": i64::MAX});
    all(big_n.to_string().as_bytes());
    assert_eq!(
        crate::openai::completions::prompt_count(Some(&json!(vec!["x"; 10]))),
        10
    );
}
