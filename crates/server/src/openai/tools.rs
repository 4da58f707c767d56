//! Tool calling and structured outputs: what a request asks for (`tools`,
//! `tool_choice`, `response_format`), the grammar that enforces it, and the
//! parser that turns generated text back into `tool_calls`.
//!
//! Models write tool calls in their family's own format, which the chat
//! template reveals: Hermes/Qwen wrap each call in `<tool_call>…</tool_call>`,
//! Mistral opens a JSON list with `[TOOL_CALLS]`, Llama 3.x writes a bare
//! `{"name", "parameters"}` object. Small models often write the bare JSON
//! object whatever their template says, so every format also accepts that.

use hfms_engine::generate::grammar::GrammarSpec;
use hfms_engine::generate::{Constraint, Generator};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// Most tools one request may define.
pub const MAX_TOOLS: usize = 128;

/// One function the model may call.
#[derive(Debug, Clone)]
pub struct ToolDef {
    pub name: String,
    /// The JSON schema of its arguments (an object schema).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen).
    Hermes,
    /// `[TOOL_CALLS][{"name": …, "arguments": …}]` (Mistral).
    Mistral,
    /// `{"name": …, "parameters": …}` (Llama 3.x).
    Llama3,
    /// `{"name": …, "arguments": …}`, the fallback for any other template.
    Json,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";

impl ToolFormat {
    /// The format a chat template teaches its model.
    pub fn of_template(source: &str) -> Self {
        if source.contains(HERMES_OPEN) {
            ToolFormat::Hermes
        } else if source.contains(MISTRAL_OPEN) {
            ToolFormat::Mistral
        } else if source.contains("<|start_header_id|>") && source.contains("ipython") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Json
        }
    }

    /// The key that holds a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3 => "parameters",
            _ => "arguments",
        }
    }

    /// The text that opens a call, where the format has one.
    fn opener(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some(HERMES_OPEN),
            ToolFormat::Mistral => Some(MISTRAL_OPEN),
            ToolFormat::Llama3 | ToolFormat::Json => None,
        }
    }
}

fn invalid(param: impl Into<String>, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param.into()), msg)
}

/// A function name as OpenAI allows it: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Check `tools` and keep what the engine needs.
pub fn parse_tools(tools: &[Value]) -> ApiResult<Vec<ToolDef>> {
    if tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools may be given, got {}.", tools.len()),
        ));
    }
    let mut defs: Vec<ToolDef> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let p = |f: &str| format!("tools[{i}]{f}");
        let Value::Object(t) = t else {
            return Err(invalid(p(""), "each tool must be an object."));
        };
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(invalid(
                    p(".type"),
                    format!("tool type '{other}' is not supported; use 'function'."),
                ));
            }
            None => return Err(invalid(p(".type"), "each tool needs \"type\": \"function\".")),
        }
        let Some(Value::Object(f)) = t.get("function") else {
            return Err(invalid(p(".function"), "each tool needs a 'function' object."));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(Value::String(_)) => {
                return Err(invalid(
                    p(".function.name"),
                    "a function name must be 1 to 64 letters, digits, underscores or dashes.",
                ));
            }
            _ => return Err(invalid(p(".function.name"), "each function needs a string 'name'.")),
        };
        if defs.iter().any(|d| d.name == name) {
            return Err(invalid(
                p(".function.name"),
                format!("the function name '{name}' is given twice."),
            ));
        }
        match f.get("description") {
            None | Some(Value::String(_)) | Some(Value::Null) => {}
            Some(_) => return Err(invalid(p(".function.description"), "description must be a string.")),
        }
        match f.get("strict") {
            None | Some(Value::Bool(_)) | Some(Value::Null) => {}
            Some(_) => return Err(invalid(p(".function.strict"), "strict must be a boolean.")),
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(s)) => {
                match s.get("type") {
                    None => {}
                    Some(Value::String(t)) if t == "object" => {}
                    Some(_) => {
                        return Err(invalid(
                            p(".function.parameters.type"),
                            "function parameters must be a JSON schema of type 'object'.",
                        ));
                    }
                }
                Value::Object(s.clone())
            }
            Some(_) => {
                return Err(invalid(
                    p(".function.parameters"),
                    "function parameters must be a JSON schema object.",
                ));
            }
        };
        defs.push(ToolDef { name, parameters });
    }
    Ok(defs)
}

/// Check `tool_choice` against the tools given.
pub fn parse_tool_choice(choice: Option<&Value>, tools: &[ToolDef]) -> ApiResult<ToolChoice> {
    let choice = match choice {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            });
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!("tool_choice '{other}' is not valid; use 'none', 'auto', 'required' or a named function."),
                ));
            }
        },
        Some(Value::Object(o)) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid(
                    "tool_choice.type",
                    "a named tool_choice needs \"type\": \"function\".",
                ));
            }
            match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => ToolChoice::Named(name.to_string()),
                None => {
                    return Err(invalid(
                        "tool_choice.function.name",
                        "a named tool_choice needs function.name.",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "tool_choice must be a string or an object naming a function.",
            ));
        }
    };
    match &choice {
        ToolChoice::Auto if tools.is_empty() => {
            Err(invalid("tool_choice", "tool_choice 'auto' needs tools in 'tools'."))
        }
        ToolChoice::Required if tools.is_empty() => Err(invalid(
            "tool_choice",
            "tool_choice 'required' needs at least one tool in 'tools'.",
        )),
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => Err(invalid(
            "tool_choice.function.name",
            format!("tool_choice names '{name}', which is not among the tools."),
        )),
        _ => Ok(choice),
    }
}

/// The request's tools for the chat template, in OpenAI's shape (what
/// transformers' `apply_chat_template(tools=...)` passes).
pub fn template_tools(tools: &[Value]) -> Value {
    Value::Array(tools.to_vec())
}

/// JSON schema of one call to any of `tools`. Each function's parameters
/// move under the root's `$defs` (their own `#…` references rebased onto
/// that place), so local `$ref`s, as pydantic writes them, still resolve.
fn call_schema(tools: &[&ToolDef], format: ToolFormat) -> Value {
    let key = format.arguments_key();
    let mut defs = Map::new();
    let mut calls = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let name = format!("hfms_arguments_{i}");
        let mut parameters = t.parameters.clone();
        rebase_refs(&mut parameters, &format!("#/$defs/{name}"));
        defs.insert(name.clone(), parameters);
        calls.push(json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, key: {"$ref": format!("#/$defs/{name}")}},
            "required": ["name", key],
            "additionalProperties": false,
        }));
    }
    let mut schema = match calls.len() {
        1 => calls.remove(0),
        _ => json!({"anyOf": calls}),
    };
    schema["$defs"] = Value::Object(defs);
    schema
}

/// Point a schema's local references (`#`, `#/$defs/x`) at `base`, where
/// the schema now sits inside a larger document.
fn rebase_refs(v: &mut Value, base: &str) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match x {
                    // `#` and JSON pointers (`#/…`); anchors (`#name`) are
                    // left to fail to resolve.
                    Value::String(r) if k == "$ref" && (r == "#" || r.starts_with("#/")) => {
                        *r = format!("{base}{}", &r[1..])
                    }
                    // Values, not schemas: never rewritten.
                    _ if matches!(k.as_str(), "const" | "enum" | "default" | "examples") => {}
                    _ => rebase_refs(x, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| rebase_refs(x, base)),
        _ => {}
    }
}

/// Embed a JSON schema in a Lark grammar.
fn lark_json(schema: &Value) -> String {
    format!("%json {}", hfms_engine::generate::grammar::json_options(schema.clone()))
}

/// A Lark string literal.
fn lark_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The constraint for a request with tools: for `required` or a named
/// function, the whole output is one (or, with `parallel`, several) calls;
/// for `auto`, a call is constrained from its opening marker on (the
/// returned trigger), where the format has one. None: unconstrained.
pub fn tool_grammar(
    tools: &[ToolDef],
    choice: &ToolChoice,
    parallel: bool,
    format: ToolFormat,
) -> Option<(GrammarSpec, Option<String>)> {
    let allowed: Vec<&ToolDef> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    let call = lark_json(&call_schema(&allowed, format));
    match (choice, format) {
        (ToolChoice::Auto, ToolFormat::Hermes) => {
            // The model has written `<tool_call>`: the rest of this call,
            // then (parallel) more calls, then the end.
            let close = lark_str(&format!("\n{HERMES_CLOSE}"));
            let more = if parallel {
                format!(" more*\nmore: \"\\n\" {} \"\\n\" call {close}", lark_str(HERMES_OPEN))
            } else {
                String::new()
            };
            let grammar = format!("start: \"\\n\"? call {close}{more}\ncall: {call}\n");
            Some((GrammarSpec::Lark(grammar), Some(HERMES_OPEN.to_string())))
        }
        (ToolChoice::Auto, _) => None,
        (_, ToolFormat::Hermes) => {
            let one = format!(
                "{} \"\\n\" call {}",
                lark_str(HERMES_OPEN),
                lark_str(&format!("\n{HERMES_CLOSE}"))
            );
            let start = if parallel { "one (\"\\n\" one)*" } else { "one" };
            Some((
                GrammarSpec::Lark(format!("start: {start}\none: {one}\ncall: {call}\n")),
                None,
            ))
        }
        (_, ToolFormat::Mistral) => {
            // The list alone: `[TOOL_CALLS]` is a special token, which no
            // text spells and the output does not show; a bare list of
            // calls is parsed as calls.
            let mut call = call_schema(&allowed, format);
            let defs = call
                .as_object_mut()
                .and_then(|c| c.remove("$defs"))
                .unwrap_or(json!({}));
            let mut list = json!({"type": "array", "items": call, "minItems": 1, "$defs": defs});
            if !parallel {
                list["maxItems"] = json!(1);
            }
            Some((GrammarSpec::JsonSchema(list), None))
        }
        (_, ToolFormat::Llama3 | ToolFormat::Json) => {
            Some((GrammarSpec::JsonSchema(call_schema(&allowed, format)), None))
        }
    }
}

/// A parsed call, as OpenAI returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// A call as a stream carries it: the first chunk of a call has its id,
/// type and name; arguments follow.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl ToolCall {
    /// The call as one stream chunk entry: id, type, name and the whole
    /// arguments (the call is streamed once it is complete and checked).
    pub fn delta(&self, index: usize) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: Some(self.id.clone()),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(self.function.name.clone()),
                arguments: self.function.arguments.clone(),
            },
        }
    }
}

fn new_call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

/// One call from its JSON (`{"name", "arguments"|"parameters"}`), when it
/// names one of the tools.
fn call_of(v: &Value, tools: &[ToolDef]) -> Option<ToolCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let args = o.get("arguments").or_else(|| o.get("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => "{}".to_string(),
        // Some models write the arguments as a JSON text already.
        Some(Value::String(s)) if serde_json::from_str::<Map<String, Value>>(s).is_ok() => s.clone(),
        Some(a @ Value::Object(_)) => a.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall {
        id: new_call_id(),
        kind: "function",
        function: FunctionCall {
            name: name.to_string(),
            arguments,
        },
    })
}

/// Calls from a JSON text: one call object, or a list of them (all must be
/// calls).
fn calls_of_json(text: &str, tools: &[ToolDef]) -> Option<Vec<ToolCall>> {
    let text = text.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.trim_end().strip_suffix("```"))
        .unwrap_or(text)
        .trim();
    // Markers that are plain text in some vocabularies.
    let text = text.strip_prefix("<|python_tag|>").unwrap_or(text);
    let text = text.strip_prefix(MISTRAL_OPEN).unwrap_or(text);
    let v: Value = serde_json::from_str(text).ok()?;
    match &v {
        Value::Array(items) if !items.is_empty() => items.iter().map(|i| call_of(i, tools)).collect(),
        Value::Object(_) => call_of(&v, tools).map(|c| vec![c]),
        _ => None,
    }
}

/// What a stream of generated text holds so far: content to show, and
/// calls completed.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Turns a choice's generated text into content and tool calls as it
/// arrives. Content is released as soon as it cannot be the start of a
/// call; a call is released once it is closed (or at the end).
pub struct ToolParser {
    format: ToolFormat,
    tools: Vec<ToolDef>,
    /// Text not yet classified.
    buf: String,
    /// Inside a call opened by the format's marker.
    in_call: bool,
    /// Nothing released yet: the whole output may be a bare JSON call.
    at_start: bool,
    /// The output began with `{`, `[` or a code fence: held until the end,
    /// then taken as calls if it is one.
    bare_json: bool,
    /// A call has been parsed: whitespace after it (the separator between
    /// calls) is not content.
    seen_call: bool,
}

impl ToolParser {
    pub fn new(format: ToolFormat, tools: Vec<ToolDef>) -> Self {
        ToolParser {
            format,
            tools,
            buf: String::new(),
            in_call: false,
            at_start: true,
            bare_json: false,
            seen_call: false,
        }
    }

    /// Parse a whole output at once.
    pub fn parse_all(format: ToolFormat, tools: Vec<ToolDef>, text: &str) -> Parsed {
        let mut p = ToolParser::new(format, tools);
        let mut out = p.push(text);
        let rest = p.finish();
        out.content.push_str(&rest.content);
        out.calls.extend(rest.calls);
        out
    }

    pub fn push(&mut self, delta: &str) -> Parsed {
        self.buf.push_str(delta);
        let mut out = Parsed::default();
        if self.at_start {
            let trimmed = self.buf.trim_start();
            if trimmed.is_empty() {
                return out;
            }
            self.at_start = false;
            if trimmed.starts_with('{')
                || trimmed.starts_with('[')
                || trimmed.starts_with("```")
                || trimmed.starts_with("<|python_tag|>")
            {
                self.bare_json = true;
            }
        }
        if self.bare_json {
            return out;
        }
        let Some(open) = self.format.opener() else {
            out.content = std::mem::take(&mut self.buf);
            return out;
        };
        loop {
            if self.in_call {
                if self.format == ToolFormat::Mistral {
                    // The list runs to the end of the output.
                    return out;
                }
                // The first closing tag after a whole JSON value: the tag
                // may also appear inside one of the arguments' strings.
                let mut from = 0;
                let end = loop {
                    let Some(at) = self.buf[from..].find(HERMES_CLOSE) else {
                        break None;
                    };
                    let end = from + at;
                    if serde_json::from_str::<Value>(self.buf[..end].trim()).is_ok() {
                        break Some(end);
                    }
                    from = end + HERMES_CLOSE.len();
                };
                let Some(end) = end else {
                    return out;
                };
                let body = self.buf[..end].to_string();
                self.buf.drain(..end + HERMES_CLOSE.len());
                self.in_call = false;
                match calls_of_json(&body, &self.tools) {
                    Some(calls) => {
                        self.seen_call = true;
                        out.calls.extend(calls);
                    }
                    // Not a call to a known tool: show it as it was written.
                    None => out.content.push_str(&format!("{open}{body}{HERMES_CLOSE}")),
                }
                continue;
            }
            if let Some(at) = self.buf.find(open) {
                let before = &self.buf[..at];
                if !(self.seen_call && before.trim().is_empty()) {
                    out.content.push_str(before);
                }
                self.buf.drain(..at + open.len());
                self.in_call = true;
                continue;
            }
            // Hold a tail that may be the start of the marker.
            let hold = (1..open.len())
                .rev()
                .find(|&k| self.buf.ends_with(&open[..k]))
                .unwrap_or(0);
            let upto = self.buf.len() - hold;
            if self.seen_call && self.buf[..upto].trim().is_empty() {
                // Perhaps only the separator before another call.
                return out;
            }
            out.content.push_str(&self.buf[..upto]);
            self.buf.drain(..upto);
            return out;
        }
    }

    /// The end of the output: whatever is held is a call or content.
    pub fn finish(&mut self) -> Parsed {
        let rest = std::mem::take(&mut self.buf);
        let mut out = Parsed::default();
        if self.bare_json {
            match calls_of_json(&rest, &self.tools) {
                Some(calls) => out.calls = calls,
                None => out.content = rest,
            }
            return out;
        }
        if self.in_call {
            match calls_of_json(&rest, &self.tools) {
                Some(calls) => out.calls = calls,
                None => out.content = format!("{}{rest}", self.format.opener().unwrap_or_default()),
            }
            return out;
        }
        if !(self.seen_call && rest.trim().is_empty()) {
            out.content = rest;
        }
        out
    }
}

/// Compile a request's grammar for the model (off the async runtime: the
/// first one builds the vocabulary's trie, and a schema compiles in up to
/// some milliseconds).
pub async fn constraint(
    generator: &Generator,
    spec: GrammarSpec,
    trigger: Option<String>,
    param: &'static str,
) -> ApiResult<Constraint> {
    let generator = generator.clone();
    super::off_async(move || {
        let grammar = generator.grammar_vocab()?.compile(&spec, param)?;
        Ok(Constraint { grammar, trigger })
    })
    .await
}

/// `response_format` as a grammar (None: plain text).
pub fn response_grammar(format: Option<&Value>, param: &str) -> ApiResult<Option<GrammarSpec>> {
    let Some(format) = format else {
        return Ok(None);
    };
    let Value::Object(f) = format else {
        return Err(invalid(param, "response_format must be an object."));
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let Some(Value::Object(js)) = f.get("json_schema") else {
                return Err(invalid(
                    format!("{param}.json_schema"),
                    "response_format of type 'json_schema' needs a 'json_schema' object.",
                ));
            };
            match js.get("name") {
                Some(Value::String(n)) if valid_name(n) => {}
                Some(Value::String(_)) => {
                    return Err(invalid(
                        format!("{param}.json_schema.name"),
                        "the schema name must be 1 to 64 letters, digits, underscores or dashes.",
                    ));
                }
                _ => {
                    return Err(invalid(
                        format!("{param}.json_schema.name"),
                        "json_schema needs a string 'name'.",
                    ));
                }
            }
            match js.get("strict") {
                None | Some(Value::Bool(_)) | Some(Value::Null) => {}
                Some(_) => {
                    return Err(invalid(
                        format!("{param}.json_schema.strict"),
                        "strict must be a boolean.",
                    ));
                }
            }
            match js.get("schema") {
                // OpenAI's default: any JSON object.
                None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonObject)),
                Some(s @ Value::Object(_)) => Ok(Some(GrammarSpec::JsonSchema(s.clone()))),
                Some(_) => Err(invalid(
                    format!("{param}.json_schema.schema"),
                    "the schema must be a JSON schema object.",
                )),
            }
        }
        Some(other) => Err(invalid(
            format!("{param}.type"),
            format!("response_format type '{other}' is not supported; use 'text', 'json_object' or 'json_schema'."),
        )),
        None => Err(invalid(
            format!("{param}.type"),
            "response_format needs a string 'type'.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<ToolDef> {
        parse_tools(&[json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})])
        .unwrap()
    }

    #[test]
    fn hermes_calls_are_parsed_from_any_split() {
        let text =
            "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        for split in 0..text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            let mut p = ToolParser::new(ToolFormat::Hermes, weather());
            let mut a = p.push(&text[..split]);
            let b = p.push(&text[split..]);
            let c = p.finish();
            a.content.push_str(&b.content);
            a.content.push_str(&c.content);
            a.calls.extend(b.calls);
            a.calls.extend(c.calls);
            assert_eq!(a.content, "Let me check.", "split {split}");
            assert_eq!(a.calls.len(), 1);
            assert_eq!(a.calls[0].function.name, "get_weather");
            assert_eq!(a.calls[0].function.arguments, r#"{"city":"Paris"}"#);
            assert!(a.calls[0].id.starts_with("call_"));
        }
    }

    #[test]
    fn separators_between_calls_are_not_content() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"B\"}}\n</tool_call>\n";
        let mut p = ToolParser::new(ToolFormat::Hermes, weather());
        let mut content = String::new();
        let mut calls = 0;
        for ch in text.chars() {
            let out = p.push(&ch.to_string());
            content.push_str(&out.content);
            calls += out.calls.len();
        }
        let out = p.finish();
        content.push_str(&out.content);
        calls += out.calls.len();
        assert_eq!((content.as_str(), calls), ("", 2));
    }

    #[test]
    fn local_refs_in_parameters_resolve_in_the_call_schema() {
        let tools = parse_tools(&[json!({"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "$defs": {"u": {"type": "string"}},
            "properties": {"v": {"$ref": "#/$defs/u"}, "me": {"$ref": "#"}}}}})])
        .unwrap();
        let schema = call_schema(&tools.iter().collect::<Vec<_>>(), ToolFormat::Hermes);
        let args = &schema["$defs"]["hfms_arguments_0"];
        assert_eq!(args["properties"]["v"]["$ref"], "#/$defs/hfms_arguments_0/$defs/u");
        assert_eq!(args["properties"]["me"]["$ref"], "#/$defs/hfms_arguments_0");
        assert_eq!(schema["properties"]["arguments"]["$ref"], "#/$defs/hfms_arguments_0");
    }

    #[test]
    fn a_closing_tag_inside_arguments_does_not_end_the_call() {
        let text =
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"</tool_call>\"}}\n</tool_call>";
        let p = ToolParser::parse_all(ToolFormat::Hermes, weather(), text);
        assert_eq!(p.content, "");
        assert_eq!(p.calls[0].function.arguments, r#"{"city":"</tool_call>"}"#);
    }

    /// Every format's grammar compiles for every choice, on a real
    /// vocabulary (SmolLM2's, from `scripts/fetch-models.sh`).
    #[test]
    fn every_tool_grammar_compiles() {
        use std::sync::Arc;
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let g = hfms_engine::formats::gguf::GgufFile::open(&path).unwrap();
        let tok = hfms_engine::tokenizer::Tokenizer::from_gguf(&g)
            .unwrap()
            .with_specials(None, vec![2], false);
        let n = tok.vocab_size();
        let vocab = Arc::new(hfms_engine::generate::grammar::GrammarVocab::new(Arc::new(tok), n).unwrap());
        let mut tools = weather();
        tools.extend(
            parse_tools(&[
                json!({"type": "function", "function": {"name": "nested", "parameters": {
            "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "c": {"const": {"$ref": "#/not/a/ref"}}}}}}),
            ])
            .unwrap(),
        );
        for format in [
            ToolFormat::Hermes,
            ToolFormat::Mistral,
            ToolFormat::Llama3,
            ToolFormat::Json,
        ] {
            for choice in [
                ToolChoice::Auto,
                ToolChoice::Required,
                ToolChoice::Named("nested".into()),
            ] {
                for parallel in [true, false] {
                    if let Some((spec, _)) = tool_grammar(&tools, &choice, parallel, format) {
                        vocab
                            .compile(&spec, "tools")
                            .unwrap_or_else(|e| panic!("{format:?} {choice:?} {parallel}: {e}"));
                    }
                }
            }
        }
    }

    #[test]
    fn bare_json_and_lists_are_calls() {
        for text in [
            r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#,
            "```json\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n```",
            r#"[{"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}]"#,
        ] {
            let p = ToolParser::parse_all(ToolFormat::Hermes, weather(), text);
            assert_eq!(p.content, "", "{text}");
            assert_eq!(p.calls[0].function.arguments.replace(' ', ""), r#"{"city":"Oslo"}"#);
        }
        // JSON that is not a call to a known tool stays content.
        let p = ToolParser::parse_all(ToolFormat::Json, weather(), r#"{"name": "other", "arguments": {}}"#);
        assert!(p.calls.is_empty());
        assert_eq!(p.content, r#"{"name": "other", "arguments": {}}"#);
        // Mistral's list, with its marker or without it (a special token,
        // which the output does not show).
        for text in [
            r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "X"}}]"#,
            r#"[{"name": "get_weather", "arguments": {"city": "X"}}]"#,
        ] {
            let p = ToolParser::parse_all(ToolFormat::Mistral, weather(), text);
            assert_eq!((p.calls.len(), p.content.as_str()), (1, ""), "{text}");
        }
    }

    #[test]
    fn hostile_tools_are_refused() {
        for (bad, param) in [
            (json!([1]), "tools[0]"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {"name": ""}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "x".repeat(65)}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": 5}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
                "tools[0].function.parameters.type",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                "tools[1].function.name",
            ),
        ] {
            let e = parse_tools(bad.as_array().unwrap()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {}", e.message);
        }
        let many: Vec<Value> = (0..=MAX_TOOLS)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
            .collect();
        assert!(parse_tools(&many).is_err());
        let tools = weather();
        for bad in [
            json!("sometimes"),
            json!(3),
            json!({"type": "function", "function": {"name": "nope"}}),
            json!({"type": "x"}),
        ] {
            assert!(parse_tool_choice(Some(&bad), &tools).is_err(), "{bad}");
        }
        assert!(parse_tool_choice(Some(&json!("required")), &[]).is_err());
        assert_eq!(parse_tool_choice(None, &tools).unwrap(), ToolChoice::Auto);
        assert_eq!(parse_tool_choice(None, &[]).unwrap(), ToolChoice::None);
    }
}
