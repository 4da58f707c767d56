//! OpenAI request and response bodies (`../shared/reference/openai-openapi.yaml`):
//! the fields these models can honour. Unknown request fields are ignored, as
//! OpenAI-compatible servers do; fields that cannot be honoured are rejected
//! by the handlers with a 400 that says so.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

// ---- schema-only shapes of fields kept as JSON values -------------------------
// The handlers take these fields as `Value` to give precise 400s; these enums
// only describe them in /openapi.json.

/// A message's content: text, or a list of content parts (only `text`
/// parts are supported); null for an assistant message.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[schema(rename = "type")]
    kind: String,
    text: String,
}

/// A prompt or an embeddings input: a string, a list of strings, a list of
/// token ids, or a list of lists of token ids.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum TextOrTokens {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// A chat message's role (`developer` is taken as `system`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
}

/// `response_format.type`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatType {
    Text,
    JsonObject,
    JsonSchema,
}

/// `response_format.json_schema`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JsonSchemaFormat {
    /// 1 to 64 letters, digits, underscores or dashes.
    name: String,
    description: Option<String>,
    /// The schema the output must validate against (absent: any object).
    #[schema(value_type = Object)]
    schema: Option<Value>,
    /// Accepted; the schema is always enforced.
    strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or
/// `{"type": "function", "function": {"name": …}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ToolChoiceValue {
    Mode(String),
    #[schema(value_type = Object)]
    Named(Value),
}

/// `encoding_format` of embeddings: floats, or base64 of little-endian f32.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// Ollama's keep_alive: seconds (negative: forever, 0: unload when idle)
/// or a duration such as "5m"; past ~100 years means forever; non-finite
/// numbers are refused.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum KeepAliveValue {
    Seconds(f64),
    Duration(String),
}

/// `stop`: a string or up to four strings.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`: text, any JSON object, or JSON valid against a schema
/// (enforced by constrained decoding).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ResponseFormat {
    #[schema(rename = "type", value_type = ResponseFormatType)]
    kind: String,
    json_schema: Option<JsonSchemaFormat>,
}

/// A chat message as clients send it. `content` is a string or a list of
/// content parts; it may be null for assistant messages.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    #[schema(value_type = ChatRole)]
    pub role: String,
    /// Required, except that an assistant message may have null content.
    #[serde(default)]
    #[schema(value_type = MessageContent, required = true)]
    pub content: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls: `[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tool_call_id: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A model id or alias (`GET /v1/models`).
    #[schema(examples("smollm2"))]
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// 0 is greedy.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; accepted as vLLM and llama.cpp do (-1 or 0: off).
    #[serde(default)]
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    /// Choices; at most `--max-n` (default 16).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Needs `logprobs: true`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Option<ResponseFormat>)]
    pub response_format: Option<Value>,
    /// Functions the model may call (`{"type": "function", "function":
    /// {"name", "description", "parameters", "strict"}}`), at most 128.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<ToolChoiceValue>)]
    pub tool_choice: Option<Value>,
    /// Whether the model may make several calls in one answer (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated `functions` API: not supported (use `tools`).
    #[serde(default)]
    #[schema(ignore)]
    pub functions: Option<Vec<Value>>,
    #[serde(default)]
    pub user: Option<String>,
    /// Ollama-style: how long to keep the model loaded after this request.
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
    /// vLLM's extension: keep generating past end-of-sequence (benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A model id or alias (`GET /v1/models`).
    #[schema(examples("smollm2"))]
    pub model: String,
    #[serde(default)]
    #[schema(value_type = TextOrTokens, required = true)]
    pub prompt: Option<Value>,
    /// Not supported (no insertion): absent, null or empty.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    /// Choices per prompt; at most `--max-n`, and prompts × n at most
    /// `--max-choices`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<i64>,
    /// Only equal to n.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub best_of: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Default 16.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Completions' legacy `logprobs`: how many alternatives per token.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// vLLM's extension: constrain the text as chat's `response_format` does.
    #[serde(default)]
    #[schema(value_type = Option<ResponseFormat>)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
    /// vLLM's extension: keep generating past end-of-sequence (benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// A model id or alias (`GET /v1/models`).
    #[schema(examples("all-minilm"))]
    pub model: String,
    /// At most `--max-embedding-inputs` inputs and `--max-embedding-tokens`
    /// tokens (after truncation to the model's length).
    #[schema(value_type = TextOrTokens)]
    pub input: Value,
    #[serde(default)]
    #[schema(value_type = Option<EncodingFormat>)]
    pub encoding_format: Option<String>,
    /// Keep the first N features (then normalise again).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
}

/// `POST /v1/rerank` (Jina, Cohere and vLLM's shape).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// A cross-encoder (a `*ForSequenceClassification` model with one label).
    pub model: String,
    pub query: String,
    /// Strings, or objects with a `text`; at most `--max-embedding-inputs`.
    /// Each (query, document) pair is truncated to the model's length,
    /// the longer text first.
    #[schema(value_type = Vec<String>)]
    pub documents: Value,
    /// Return the best N (0 or absent: all).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub top_n: Option<i64>,
    /// Echo each document's text (default true).
    #[serde(default)]
    pub return_documents: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
}

/// TEI's `POST /rerank`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TeiRerankRequest {
    /// May be left out when this server has exactly one classifier.
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub texts: Vec<String>,
    /// Logits instead of sigmoid scores.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text.
    #[serde(default)]
    pub return_text: bool,
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
}

/// `POST /v1/classify` (vLLM's shape).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ClassifyRequest {
    /// A `*ForSequenceClassification` model.
    pub model: String,
    /// As `/v1/embeddings`' `input`, with its limits.
    #[schema(value_type = TextOrTokens)]
    pub input: Value,
    #[serde(default)]
    #[schema(value_type = Option<KeepAliveValue>)]
    pub keep_alive: Option<Value>,
}

// ---- responses -------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: cached },
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprobJson {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprobJson {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprobJson>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Option<Vec<TokenLogprobJson>>,
    pub refusal: Option<Vec<TokenLogprobJson>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<super::tools::ToolCall>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Default, ToSchema)]
pub struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<super::tools::ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChunkDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Present (null) on every chunk when `include_usage` is set; the last
    /// chunk carries the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// The legacy completions `logprobs` object.
#[derive(Debug, Clone, Serialize, Default, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    #[schema(value_type = Vec<Option<std::collections::HashMap<String, f64>>>)]
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankDocument {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankResult {
    /// The document's position in the request.
    pub index: usize,
    /// Sigmoid of the cross-encoder's logit.
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankUsage {
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    /// Best first.
    pub results: Vec<RerankResult>,
    pub usage: RerankUsage,
}

/// One entry of TEI's rerank answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeiRank {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClassifyData {
    pub index: usize,
    /// The most probable label (`id2label`).
    pub label: String,
    /// Per label: softmax of the logits (sigmoid for a one-label model).
    pub probs: Vec<f32>,
    pub num_classes: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClassifyResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub data: Vec<ClassifyData>,
    pub usage: EmbeddingUsage,
}

/// `/v1/models` entries, with hfms' state fields beside OpenAI's four.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// hfms' fields: aliases, task, format, architecture, parameters,
    /// state, device, bytes, keep_alive, expires_at…
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Value,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}
