//! The metadata files of a Hugging Face model folder: `config.json`,
//! `tokenizer_config.json`, `generation_config.json`, and the
//! sentence-transformers files (`modules.json`, `sentence_bert_config.json`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::tokenizer::{ChatTemplate, Tokenizer};

pub struct HfFolder {
    pub dir: PathBuf,
    pub arch: String,
    pub config: Value,
    tokenizer_config: Value,
    generation_config: Value,
}

/// Config files (config.json, tokenizer_config.json with its chat template,
/// generation_config.json…) are small; anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_CONFIG_BYTES => {
            return Err(EngineError::format(format!(
                "{}: {} bytes is too large for a configuration file (at most {MAX_CONFIG_BYTES})",
                path.display(),
                m.len()
            )));
        }
        _ => {}
    }
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::format(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// `architectures: ["LlamaForCausalLM"]` → "llama", for configs that lack
/// `model_type`.
fn arch_from_class(class: &str) -> Option<String> {
    let known = [
        ("Llama", "llama"),
        ("Mistral", "mistral"),
        ("Qwen3", "qwen3"),
        ("Qwen2", "qwen2"),
        ("XLMRoberta", "xlm-roberta"),
        ("Roberta", "roberta"),
        ("Camembert", "camembert"),
        ("Bert", "bert"),
        ("MPNet", "mpnet"),
        ("GPT2", "gpt2"),
        ("Gemma3", "gemma3"),
    ];
    known
        .iter()
        .find(|(prefix, _)| class.starts_with(prefix))
        .map(|(_, a)| a.to_string())
}

/// A special token given as `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// Token ids given as a number or a list; ones that are not token ids (negative, past
/// `u32`) are dropped rather than wrapped onto some other token.
fn ids(v: Option<&Value>) -> Vec<u32> {
    let id = |x: &Value| x.as_u64().and_then(|x| u32::try_from(x).ok());
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(id).collect(),
        Some(x) => id(x).into_iter().collect(),
        None => Vec::new(),
    }
}

impl HfFolder {
    /// The architecture name and config of a folder.
    pub fn read_config(dir: &Path) -> Result<(String, Value)> {
        let path = dir.join("config.json");
        let config = read_json(&path)?.ok_or_else(|| EngineError::format(format!("{} is missing", path.display())))?;
        let arch = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
            .or_else(|| {
                config
                    .get("architectures")
                    .and_then(|a| a.as_array())
                    .and_then(|a| a.first())
                    .and_then(|c| c.as_str())
                    .and_then(arch_from_class)
            })
            .ok_or_else(|| EngineError::format(format!("{} names no model_type", path.display())))?;
        Ok((arch, config))
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let (arch, config) = Self::read_config(dir)?;
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            arch,
            config,
            tokenizer_config: read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null),
            generation_config: read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null),
        })
    }

    /// `tokenizer.json` with the special ids from the other config files.
    pub fn tokenizer(&self, max_length: Option<usize>) -> Result<Tokenizer> {
        let path = self.dir.join("tokenizer.json");
        if !path.exists() {
            return Err(EngineError::Tokenizer(format!(
                "{} is missing (only tokenizer.json is supported for safetensors models)",
                path.display()
            )));
        }
        let tok = Tokenizer::from_file(&path, max_length)?;
        let lookup = |key: &str| token_string(self.tokenizer_config.get(key)).and_then(|t| tok.token_id(&t));
        let bos = lookup("bos_token").or_else(|| ids(self.config.get("bos_token_id")).first().copied());
        let mut eos = ids(self.generation_config.get("eos_token_id"));
        eos.extend(ids(self.config.get("eos_token_id")));
        eos.extend(lookup("eos_token"));
        // tokenizer.json's post-processor already adds BOS where the model
        // wants it; never add it a second time.
        Ok(tok.with_specials(bos, eos, false))
    }

    /// The chat template: `chat_template.jinja`, or `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates: "default").
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        let file = self.dir.join("chat_template.jinja");
        let source = if file.exists() {
            Some(std::fs::read_to_string(&file).map_err(|e| EngineError::io(&file, e))?)
        } else {
            match self.tokenizer_config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let bos = token_string(self.tokenizer_config.get("bos_token")).unwrap_or_default();
        let eos = token_string(self.tokenizer_config.get("eos_token")).unwrap_or_default();
        ChatTemplate::new(&source, &bos, &eos).map(Some)
    }

    /// sentence-transformers' `max_seq_length`.
    pub fn max_seq_length(&self) -> Option<usize> {
        read_json(&self.dir.join("sentence_bert_config.json"))
            .ok()
            .flatten()
            .and_then(|v| v.get("max_seq_length").and_then(|x| x.as_u64()))
            .map(|x| x as usize)
    }

    /// Whether embeddings are L2-normalised: as `modules.json` says when the
    /// folder is a sentence-transformers model; otherwise yes, as OpenAI's
    /// embeddings are.
    pub fn normalizes(&self) -> bool {
        match read_json(&self.dir.join("modules.json")) {
            Ok(Some(Value::Array(mods))) => mods.iter().any(|m| {
                m.get("type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("Normalize"))
            }),
            _ => true,
        }
    }

    /// Context length from the config, for discovery.
    pub fn context_length(&self) -> Option<usize> {
        self.max_seq_length().or_else(|| {
            // GPT-2 calls it `n_positions`.
            ["max_position_embeddings", "n_positions"]
                .iter()
                .find_map(|k| self.config.get(*k).and_then(|v| v.as_u64()))
                .map(|v| v as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_past_u32_are_dropped_not_wrapped() {
        let v = serde_json::json!([2, 4294967297u64, -1, "3"]);
        assert_eq!(ids(Some(&v)), vec![2]);
        assert_eq!(ids(Some(&serde_json::json!(4294967298u64))), Vec::<u32>::new());
        assert_eq!(ids(Some(&serde_json::json!(7))), vec![7]);
    }
}
