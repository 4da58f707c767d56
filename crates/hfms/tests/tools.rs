//! Structured outputs and tool calling against the real server: schemas are
//! enforced by constrained decoding (SmolLM2 at temperature 1, where an
//! unconstrained model would stray), and Qwen2.5-Coder-0.5B-Instruct calls
//! tools through its own template's `<tool_call>` format.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Server, error_of};
use serde_json::{Value, json};

const QWEN: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct";

/// A server that also serves Qwen2.5-Coder-0.5B-Instruct (`make models-extra`).
fn qwen() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models-extra");
        assert!(dir.exists(), "{} is missing: run `make models-extra`", dir.display());
        let dir = dir.to_str().unwrap().to_string();
        Server::start(&["--models-dir", &dir, "--preload", QWEN])
    })
}

/// Two tools. The string arguments have a `maxLength`: sampled at
/// temperature 1, SmolLM2-135M writes an unbounded string until
/// `max_tokens` in ~10% of seeds (measured over 80 before and after the
/// sampler's rewrite), and which seeds do depends on the sampler's draw
/// order; the bound keeps the tests about the grammar, not about luck.
fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 32}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
             "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
         "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 32}}, "required": ["tz"],
                        "additionalProperties": false}}}
    ])
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                        "required": ["city"], "additionalProperties": false}
        },
        "required": ["name", "age", "pets", "address"],
        "additionalProperties": false
    })
}

fn check_person(v: &Value) {
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(o.len(), 4, "{v}");
    assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 24), "{v}");
    assert!(o["age"].as_u64().is_some_and(|a| a <= 120), "{v}");
    let pets = o["pets"].as_array().unwrap();
    assert!(
        pets.len() <= 3
            && pets
                .iter()
                .all(|p| ["cat", "dog", "fish"].contains(&p.as_str().unwrap())),
        "{v}"
    );
    let addr = o["address"].as_object().unwrap();
    assert_eq!(addr.len(), 1, "{v}");
    assert!(addr["city"].is_string(), "{v}");
}

#[test]
fn json_schema_output_validates_at_temperature_one() {
    let s = Server::shared();
    for seed in 0..4 {
        let (st, v) = s.post_json(
            "/v1/chat/completions",
            json!({"model": "smollm2", "temperature": 1, "seed": seed, "max_tokens": 300, "n": 2,
                   "messages": [{"role": "user", "content": "Invent a person."}],
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}}),
        );
        assert_eq!(st, 200, "{v}");
        // Each of the n choices follows its own copy of the grammar.
        for c in v["choices"].as_array().unwrap() {
            assert_eq!(c["finish_reason"], "stop", "{v}");
            let text = c["message"]["content"].as_str().unwrap();
            check_person(&serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")));
        }
    }
}

#[test]
fn characters_spelled_by_several_byte_tokens_complete() {
    // SmolLM2 spells these with tokens that are not UTF-8 on their own.
    let s = Server::shared();
    for text in ["😀", "漢字", "🎉 ok"] {
        let (st, v) = s.post_json(
            "/v1/chat/completions",
            chat(json!({"max_tokens": 20, "response_format": {"type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"const": text}}}})),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(content).unwrap(),
            json!(text),
            "{content}"
        );
    }
}

#[test]
fn tool_parameters_with_local_refs_are_enforced() {
    // As pydantic writes nested models (openai.pydantic_function_tool).
    let s = Server::shared();
    let tools = json!([{"type": "function", "function": {"name": "save_person", "parameters": {
        "$defs": {"Addr": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                           "required": ["city"], "additionalProperties": false}},
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "home": {"$ref": "#/$defs/Addr"}},
        "required": ["name", "home"], "additionalProperties": false}}}]);
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        chat(
            json!({"max_tokens": 120, "temperature": 1, "seed": 1, "tools": tools, "tool_choice": "required",
                    "messages": [{"role": "user", "content": "Save Ann from Rome."}]}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let calls = calls_of(&v);
    let args = calls[0].1.as_object().unwrap();
    assert!(args["name"].is_string() && args["home"]["city"].is_string(), "{v}");
    assert_eq!(args["home"].as_object().unwrap().len(), 1, "{v}");
}

#[test]
fn completions_take_response_format_too() {
    let s = Server::shared();
    let (st, v) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "A person:", "temperature": 1, "seed": 7, "max_tokens": 300,
               "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person_schema()}}}),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    check_person(&serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")));
}

#[test]
fn streamed_json_schema_output_validates() {
    let s = Server::shared();
    let events = s.stream(
        "/v1/chat/completions",
        json!({"model": "smollm2", "temperature": 1, "seed": 3, "max_tokens": 300, "stream": true,
               "messages": [{"role": "user", "content": "Invent a person."}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person_schema()}}}),
    );
    let mut text = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    check_person(&serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")));
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn hostile_schemas_and_tools_are_400() {
    let s = Server::shared();
    let deep = (0..200).fold(
        json!({"type": "string"}),
        |inner, _| json!({"type": "object", "properties": {"a": inner}, "required": ["a"]}),
    );
    // Past the grammar size bound (200k symbols): refused, after ~1 s of work.
    let huge_enum: Vec<String> = (0..200_000).map(|i| format!("value-{i}")).collect();
    let many_tools: Vec<Value> = (0..129)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    let cases = [
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "("}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nope"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 9, "maximum": 1}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes", "schema": {}}}}),
            "response_format.json_schema.strict",
        ),
        (json!({"response_format": {"type": "xml"}}), "response_format.type"),
        (json!({"response_format": {"type": 5}}), "response_format.type"),
        (json!({"response_format": "json"}), "response_format"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": huge_enum}}}}),
            "response_format",
        ),
        (json!({"tools": many_tools}), "tools"),
        (json!({"tools": "get_weather"}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "bogus"}}}}}], "tool_choice": "required"}),
            "tools",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": "always"}),
            "tool_choice",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": weather_tools(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "r"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}),
            "response_format",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
    ];
    for (extra, param) in cases {
        let (st, v) = s.post_json("/v1/chat/completions", chat(extra.clone()));
        let shown = extra.to_string();
        let shown = &shown[..shown.len().min(200)];
        assert!(st == 400 || st == 422, "{shown}: {st} {v}");
        if st == 400 {
            let (message, kind, p, _) = error_of(&v);
            assert_eq!(kind, "invalid_request_error", "{shown}: {message}");
            assert!(
                p.is_some_and(|p| p.starts_with(param)),
                "{shown}: param {p:?}, want {param}: {message}"
            );
        }
    }
    // The server is still answering, and a large schema within the bounds
    // is served.
    let enum_50k: Vec<String> = (0..50_000).map(|i| format!("value-{i}")).collect();
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        chat(json!({"max_tokens": 20, "response_format": {"type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"enum": enum_50k}}}})),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("\"value-"), "{text}");
}

fn calls_of(v: &Value) -> Vec<(String, Value)> {
    v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_calls: {v}"))
        .iter()
        .map(|c| {
            assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
            assert_eq!(c["type"], "function");
            let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            (c["function"]["name"].as_str().unwrap().to_string(), args)
        })
        .collect()
}

#[test]
fn required_and_named_calls_are_enforced_without_template_support() {
    // SmolLM2's template knows nothing of tools: the call is the bare JSON
    // object the grammar forces, at temperature 1 too.
    let s = Server::shared();
    for (choice, want) in [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            Some("get_time"),
        ),
    ] {
        for seed in 0..3 {
            let (st, v) = s.post_json(
                "/v1/chat/completions",
                chat(
                    json!({"max_tokens": 120, "temperature": 1, "seed": seed, "tools": weather_tools(),
                            "tool_choice": choice,
                            "messages": [{"role": "user", "content": "What time is it in Tokyo?"}]}),
                ),
            );
            assert_eq!(st, 200, "{v}");
            // OpenAI ends a call made by name with "stop".
            let finish = if want.is_some() { "stop" } else { "tool_calls" };
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{v}");
            assert!(v["choices"][0]["message"]["content"].is_null(), "{v}");
            let calls = calls_of(&v);
            assert_eq!(calls.len(), 1, "{v}");
            let (name, args) = &calls[0];
            if let Some(w) = want {
                assert_eq!(name, w);
            }
            match name.as_str() {
                "get_time" => {
                    assert!(args["tz"].is_string() && args.as_object().unwrap().len() == 1, "{args}")
                }
                "get_weather" => assert!(args["city"].is_string(), "{args}"),
                other => panic!("{other}"),
            }
        }
    }
}

/// A stream's tool call deltas for choice 0, rebuilt as a client does.
fn streamed_calls(events: &[String]) -> (Vec<(String, String, String)>, String, String) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let (mut content, mut finish) = (String::new(), String::new());
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        let Some(choice) = c["choices"].get(0) else { continue };
        if let Some(t) = choice["delta"]["content"].as_str() {
            content.push_str(t);
        }
        for d in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = d["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push((d["id"].as_str().unwrap().to_string(), String::new(), String::new()));
            }
            let call = &mut calls[i];
            if let Some(n) = d["function"]["name"].as_str() {
                call.1.push_str(n);
            }
            call.2.push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (calls, content, finish)
}

#[test]
fn streamed_required_call_arrives_as_tool_call_deltas() {
    let s = Server::shared();
    let events = s.stream(
        "/v1/chat/completions",
        chat(
            json!({"stream": true, "max_tokens": 120, "temperature": 0, "tools": weather_tools(),
                    "tool_choice": "required",
                    "messages": [{"role": "user", "content": "Weather in Lima?"}]}),
        ),
    );
    let (calls, content, finish) = streamed_calls(&events);
    assert_eq!(finish, "tool_calls", "{events:?}");
    assert_eq!(content, "", "{events:?}");
    assert_eq!(calls.len(), 1, "{events:?}");
    assert!(calls[0].0.starts_with("call_"));
    let args: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert!(args.is_object());
}

#[test]
fn qwen_calls_a_tool_through_its_template() {
    let s = qwen();
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": QWEN, "temperature": 0, "max_tokens": 80, "tools": weather_tools(),
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let calls = calls_of(&v);
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0].0, "get_weather");
    assert_eq!(calls[0].1["city"], "Paris");
    // One call only, when parallel calls are off (required and named).
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ] {
        let (st, v) = s.post_json(
            "/v1/chat/completions",
            json!({"model": QWEN, "temperature": 0, "max_tokens": 120, "tools": weather_tools(),
                   "tool_choice": choice, "parallel_tool_calls": false,
                   "messages": [{"role": "user", "content": "Weather in Paris, and the time in Tokyo?"}]}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(calls_of(&v).len(), 1, "{v}");
    }
    // With tool_choice none the tools are not offered: a text answer.
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": QWEN, "temperature": 0, "max_tokens": 30, "tools": weather_tools(), "tool_choice": "none",
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
}

#[test]
fn qwen_streams_calls_and_answers_from_tool_results() {
    let s = qwen();
    let events = s.stream(
        "/v1/chat/completions",
        json!({"model": QWEN, "temperature": 0, "max_tokens": 120, "stream": true, "tools": weather_tools(),
               "tool_choice": "required",
               "messages": [{"role": "user", "content": "Weather in Paris, and the time in Tokyo?"}]}),
    );
    let (calls, _, finish) = streamed_calls(&events);
    assert_eq!(finish, "tool_calls", "{events:?}");
    assert!(!calls.is_empty(), "{events:?}");
    for (_, name, args) in &calls {
        assert!(["get_weather", "get_time"].contains(&name.as_str()), "{name}");
        assert!(serde_json::from_str::<Value>(args).unwrap().is_object(), "{args}");
    }
    // The calls and their results go back; the model answers.
    let assistant = json!({"role": "assistant", "content": null, "tool_calls": calls.iter().map(|(id, name, args)| json!(
        {"id": id, "type": "function", "function": {"name": name, "arguments": args}})).collect::<Vec<_>>()});
    let mut messages = vec![
        json!({"role": "user", "content": "Weather in Paris, and the time in Tokyo?"}),
        assistant,
    ];
    for (id, name, _) in &calls {
        let result = if name == "get_weather" {
            r#"{"temp_c": 18, "sky": "cloudy"}"#
        } else {
            "09:30"
        };
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
    }
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": QWEN, "temperature": 0, "max_tokens": 60, "tools": weather_tools(), "tool_choice": "none",
               "messages": messages}),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{v}");
}
