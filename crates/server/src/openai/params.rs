//! Validation of the sampling fields chat and completions share, turning a
//! request into the engine's `SamplingParams` or a 400 that names the field.

use std::collections::HashMap;

use hfms_engine::generate::SamplingParams;

use crate::error::{ApiError, ApiResult};
use crate::openai::types::Stop;
use crate::state::RequestLimits;

pub struct Common {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<i64>,
    /// How many alternatives per token; None = no logprobs.
    pub top_logprobs: Option<usize>,
}

/// The fields chat and completions requests share, read the same way from
/// either (`top_logprobs`: validated by the caller).
macro_rules! common_of {
    ($req:expr, $top_logprobs:expr) => {
        Common {
            temperature: $req.temperature,
            top_p: $req.top_p,
            top_k: $req.top_k,
            n: $req.n,
            stop: $req.stop.clone(),
            presence_penalty: $req.presence_penalty,
            frequency_penalty: $req.frequency_penalty,
            logit_bias: $req.logit_bias.clone(),
            seed: $req.seed,
            top_logprobs: $top_logprobs,
        }
    };
}

impl Common {
    pub fn of_chat(req: &crate::openai::types::ChatCompletionRequest, top_logprobs: Option<usize>) -> Self {
        common_of!(req, top_logprobs)
    }

    /// (`logprobs`: completions' number of alternatives, validated.)
    pub fn of_completion(req: &crate::openai::types::CompletionRequest, logprobs: Option<usize>) -> Self {
        common_of!(req, logprobs)
    }
}

pub struct Validated {
    pub sampling: SamplingParams,
    pub n: usize,
    pub stop: Vec<String>,
}

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> ApiResult<()> {
    if let Some(x) = v
        && (!x.is_finite() || x < lo || x > hi)
    {
        return Err(ApiError::invalid(
            Some(name.to_string()),
            format!("{x} is not a valid value for '{name}': it must be between {lo} and {hi}."),
        ));
    }
    Ok(())
}

/// A 400 for a request over one of the server's limits, naming the flag
/// that sets it.
pub fn over_limit(param: &str, message: String, flag: &str) -> ApiError {
    ApiError::invalid(
        Some(param.to_string()),
        format!("{message} (this server's limit; its operator sets it with --{flag})."),
    )
}

/// Everything that can be checked without the model.
pub fn validate_shape(c: &Common, limits: &RequestLimits) -> ApiResult<()> {
    if let Some(n) = c.n
        && n >= 1
        && n as u64 > limits.max_n as u64
    {
        return Err(over_limit(
            "n",
            format!("n must be between 1 and {}, got {n}", limits.max_n),
            "max-n",
        ));
    }
    if let Some(stop) = &c.stop {
        let longest = match stop {
            Stop::One(s) => s.len(),
            Stop::Many(v) => v.iter().map(String::len).max().unwrap_or(0),
        };
        if longest > limits.max_stop_bytes {
            return Err(over_limit(
                "stop",
                format!(
                    "a stop sequence may be at most {} bytes long, got {longest}",
                    limits.max_stop_bytes
                ),
                "max-stop-bytes",
            ));
        }
    }
    if let Some(b) = &c.logit_bias
        && b.len() > limits.max_logit_bias
    {
        return Err(over_limit(
            "logit_bias",
            format!(
                "logit_bias may hold at most {} entries, got {}",
                limits.max_logit_bias,
                b.len()
            ),
            "max-logit-bias",
        ));
    }
    Ok(())
}

pub fn validate(c: Common, vocab: usize, limits: &RequestLimits) -> ApiResult<Validated> {
    validate_shape(&c, limits)?;
    let max_n = limits.max_n;
    range("temperature", c.temperature, 0.0, 2.0)?;
    range("top_p", c.top_p, 0.0, 1.0)?;
    range("presence_penalty", c.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", c.frequency_penalty, -2.0, 2.0)?;
    if c.top_p == Some(0.0) {
        return Err(ApiError::invalid(Some("top_p".into()), "top_p must be greater than 0."));
    }
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k".into()),
                format!("top_k must be -1 (off) or positive, got {k}."),
            ));
        }
    };
    let n = match c.n {
        None => 1,
        Some(n) if n >= 1 && n as usize <= max_n => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                Some("n".into()),
                format!("n must be between 1 and {max_n}, got {n}."),
            ));
        }
    };
    let stop = c.stop.map(Stop::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            Some("stop".into()),
            "At most 4 stop sequences are allowed.",
        ));
    }
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            Some("stop".into()),
            "Stop sequences must not be empty strings.",
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.unwrap_or_default() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid(
                Some("logit_bias".into()),
                format!("logit_bias keys must be token ids, got {k:?}."),
            )
        })?;
        if id as usize >= vocab {
            return Err(ApiError::invalid(
                Some("logit_bias".into()),
                format!("token id {id} in logit_bias is outside the vocabulary (size {vocab})."),
            ));
        }
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::invalid(
                Some("logit_bias".into()),
                format!("logit_bias values must be between -100 and 100, got {v}."),
            ));
        }
        logit_bias.push((id, v));
    }
    logit_bias.sort_by_key(|(id, _)| *id);
    // Any i64 is a seed; negative ones are taken as their two's complement.
    let seed = c.seed.map(|s| s as u64);
    Ok(Validated {
        sampling: SamplingParams {
            temperature: c.temperature.unwrap_or(1.0),
            top_p: c.top_p.unwrap_or(1.0),
            top_k,
            seed,
            presence_penalty: c.presence_penalty.unwrap_or(0.0),
            frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            top_logprobs: c.top_logprobs,
        },
        n,
        stop,
    })
}

/// `max_tokens` against the context window: the OpenAI message when the
/// prompt and completion cannot fit, the room left when it is not given.
pub fn max_tokens(
    requested: Option<i64>,
    param: &str,
    prompt_len: usize,
    context: usize,
    what: &str,
    cap: Option<usize>,
) -> ApiResult<usize> {
    if let (Some(m), Some(cap)) = (requested, cap)
        && m > 0
        && m as u64 > cap as u64
    {
        return Err(over_limit(
            param,
            format!("{param} may be at most {cap}, got {m}"),
            "max-completion-tokens",
        ));
    }
    let room = |r: usize| cap.map_or(r, |c| r.min(c));
    if prompt_len >= context {
        return Err(ApiError::invalid(
            Some(what.to_string()),
            format!(
                "This model's maximum context length is {context} tokens. However, your {what} resulted in {prompt_len} tokens. Please reduce the length of the {what}."
            ),
        )
        .with_code("context_length_exceeded"));
    }
    match requested {
        None => Ok(room(context - prompt_len)),
        Some(m) if m < 1 => Err(ApiError::invalid(
            Some(param.to_string()),
            format!("{param} must be at least 1, got {m}."),
        )),
        Some(m) => {
            let m = m as usize;
            if prompt_len.saturating_add(m) > context {
                return Err(ApiError::invalid(
                    Some(what.to_string()),
                    format!(
                        "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_len} in the {what}, {m} in the completion). Please reduce the length of the {what} or completion.",
                        prompt_len.saturating_add(m)
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            Ok(m)
        }
    }
}

/// Ollama's `keep_alive` of a request (null or absent: none).
pub fn parse_keep_alive(v: Option<&serde_json::Value>) -> ApiResult<Option<hfms_engine::manager::KeepAlive>> {
    v.filter(|v| !v.is_null())
        .map(|v| hfms_engine::manager::KeepAlive::parse(v).map_err(|e| ApiError::invalid(Some("keep_alive".into()), e)))
        .transpose()
}

/// The seed of choice `i` of `n`: distinct per choice, reproducible.
pub fn choice_seed(seed: Option<u64>, i: usize) -> Option<u64> {
    seed.map(|s| s.wrapping_add(i as u64))
}
