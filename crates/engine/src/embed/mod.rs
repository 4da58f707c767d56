//! Embeddings: an encoder's token states pooled into one vector per input
//! (mean, CLS, max or last token, as the model's sentence-transformers
//! config says), L2-normalised like sentence-transformers' Normalize, and
//! optionally cut to fewer `dimensions` (then normalised again).
//!
//! The same model type serves sequence classifiers (and so cross-encoder
//! rerankers): there a classification head turns each input's first token
//! state into one logit per label, and inputs may be (query, document) pairs.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

pub mod batcher;

use crate::compute::ComputePool;
use crate::error::{EngineError, Result};
use crate::skills::bert::{ClassifierHead, Encoder, EncoderInput};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    LastToken,
}

impl Pooling {
    /// From sentence-transformers' `1_Pooling/config.json` (or the folder a
    /// `modules.json` names); mean pooling when there is none.
    pub fn from_model_dir(dir: &Path) -> Result<Pooling> {
        let mut pooling_dir = dir.join("1_Pooling");
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.json"))
            && let Ok(Value::Array(mods)) = serde_json::from_str::<Value>(&text)
        {
            for m in mods {
                let ty = m.get("type").and_then(|v| v.as_str()).unwrap_or("");
                if ty.ends_with("Pooling")
                    && let Some(p) = m.get("path").and_then(|v| v.as_str())
                {
                    pooling_dir = dir.join(p);
                }
            }
        }
        let cfg = pooling_dir.join("config.json");
        let Ok(text) = std::fs::read_to_string(&cfg) else {
            return Ok(Pooling::Mean);
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| EngineError::format(format!("{}: {e}", cfg.display())))?;
        let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        Ok(if on("pooling_mode_cls_token") {
            Pooling::Cls
        } else if on("pooling_mode_max_tokens") {
            Pooling::Max
        } else if on("pooling_mode_lasttoken") {
            Pooling::LastToken
        } else {
            Pooling::Mean
        })
    }

    /// Pool `len` rows of `h` features.
    pub fn pool(self, states: &[f32], h: usize) -> Vec<f32> {
        let len = states.len() / h;
        if len == 0 {
            return vec![0.0; h];
        }
        match self {
            Pooling::Cls => states[..h].to_vec(),
            Pooling::LastToken => states[(len - 1) * h..].to_vec(),
            Pooling::Mean => {
                let mut out = vec![0f64; h];
                for row in states.chunks_exact(h) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += *v as f64;
                    }
                }
                out.into_iter().map(|v| (v / len as f64) as f32).collect()
            }
            Pooling::Max => {
                let mut out = vec![f32::NEG_INFINITY; h];
                for row in states.chunks_exact(h) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = o.max(*v);
                    }
                }
                out
            }
        }
    }
}

pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    // sentence-transformers divides by max(norm, 1e-12).
    let inv = 1.0 / norm.max(1e-12);
    for x in v.iter_mut() {
        *x = (*x as f64 * inv) as f32;
    }
}

/// One input to embed or classify: text, token ids given by the client, or
/// a (query, document) pair for a cross-encoder (the query shared by all
/// of a request's pairs).
#[derive(Debug, Clone)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
    Pair(Arc<str>, String),
}

/// How a request's `dimensions` shortens a vector (Matryoshka models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shortening {
    /// Keep the first features.
    #[default]
    Truncate,
    /// Layer-normalise (no weights) the whole vector, then keep the first
    /// features: nomic-embed-text-v1.5's model card recipe.
    LayerNormThenTruncate,
}

/// A loaded encoder model: encoder + tokenizer + pooling, or + a
/// classification head.
pub struct EmbeddingModel {
    pub encoder: Arc<dyn Encoder>,
    pub tokenizer: Arc<Tokenizer>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// A sequence classifier's head: the model's outputs are its logits,
    /// not pooled vectors.
    pub head: Option<ClassifierHead>,
    /// Inputs are truncated to this many tokens (sentence-transformers'
    /// `max_seq_length`, else the model's positions).
    pub max_tokens: usize,
    pub shortening: Shortening,
}

impl EmbeddingModel {
    pub fn dimensions(&self) -> usize {
        self.encoder.config().hidden
    }

    /// Tokenize (truncating) every input.
    pub fn tokenize(&self, inputs: &[EmbedInput]) -> Result<Vec<EncoderInput>> {
        inputs
            .iter()
            .map(|i| match i {
                EmbedInput::Text(t) => {
                    let mut ids = self.tokenizer.encode(t, true)?;
                    ids.truncate(self.max_tokens);
                    Ok(EncoderInput::single(ids))
                }
                // The tokenizer truncates the longer text first, as
                // transformers' `truncation=True` does.
                EmbedInput::Pair(a, b) => {
                    let (ids, second_segment) = self.tokenizer.encode_pair(a, b)?;
                    if ids.len() > self.max_tokens {
                        return Err(EngineError::invalid(
                            format!(
                                "the pair is {} tokens after truncation; the model takes {}",
                                ids.len(),
                                self.max_tokens
                            ),
                            Some("documents"),
                        ));
                    }
                    Ok(EncoderInput { ids, second_segment })
                }
                EmbedInput::Tokens(ids) => {
                    let vocab = self.encoder.config().vocab;
                    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                        return Err(EngineError::invalid(
                            format!("token id {bad} is outside the vocabulary (size {vocab})"),
                            Some("input"),
                        ));
                    }
                    let mut ids = ids.clone();
                    ids.truncate(self.max_tokens);
                    Ok(EncoderInput::single(ids))
                }
            })
            .collect()
    }

    /// Tokens of a cross-encoder's query, which must leave room for a
    /// document: a query the model cannot take whole is refused (before it
    /// is paired with every document, which would tokenize it once per
    /// document).
    pub fn check_query(&self, query: &str) -> Result<()> {
        let (_, n) = self.tokenizer.encode_with_overflow(query, false)?;
        if n >= self.max_tokens {
            return Err(EngineError::invalid(
                format!(
                    "the query is {n} tokens; this model takes {} tokens for the query and a document together",
                    self.max_tokens
                ),
                Some("query"),
            ));
        }
        Ok(())
    }

    /// An error unless `d` features can be kept.
    pub fn check_dimensions(&self, dimensions: Option<usize>) -> Result<()> {
        let h = self.encoder.config().hidden;
        if self.head.is_some() && dimensions.is_some() {
            return Err(EngineError::invalid(
                "dimensions does not apply to a classifier's scores",
                Some("dimensions"),
            ));
        }
        match dimensions {
            Some(d) if d == 0 || d > h => Err(EngineError::invalid(
                format!("dimensions must be between 1 and {h} for this model, got {d}"),
                Some("dimensions"),
            )),
            _ => Ok(()),
        }
    }

    /// Pooled (and normalised, when the model does) vectors of several
    /// tokenized inputs, encoded as one flattened batch; a classifier's
    /// logits instead where the model has a head.
    pub fn pooled(&self, inputs: &[&EncoderInput], pool: &ComputePool) -> Result<Vec<Vec<f32>>> {
        let h = self.encoder.config().hidden;
        let states = self.encoder.encode(inputs, pool)?;
        if let Some(head) = &self.head {
            // Each input's first token ([CLS], <s>); zeros for an empty one.
            let mut first = vec![0f32; inputs.len() * h];
            let mut row = 0;
            for (i, inp) in inputs.iter().enumerate() {
                if !inp.is_empty() {
                    first[i * h..(i + 1) * h].copy_from_slice(&states[row * h..(row + 1) * h]);
                }
                row += inp.len();
            }
            return Ok(head.logits(&first, pool));
        }
        let mut out = Vec::with_capacity(inputs.len());
        let mut row = 0;
        for inp in inputs {
            let n = inp.len();
            let mut e = self.pooling.pool(&states[row * h..(row + n) * h], h);
            row += n;
            if self.normalize {
                l2_normalize(&mut e);
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Keep the first `d` features (after a layer norm, where the model's
    /// recipe says so: [`Shortening`]), and renormalise when the model does.
    pub fn apply_dimensions(&self, e: &mut Vec<f32>, dimensions: Option<usize>) {
        if let Some(d) = dimensions {
            if self.shortening == Shortening::LayerNormThenTruncate {
                let ones = vec![1f32; e.len()];
                let zeros = vec![0f32; e.len()];
                // torch's default eps; it scales every feature alike, which
                // the normalisation below undoes.
                crate::compute::ops::layer_norm_in_place(e, &ones, &zeros, 1e-5);
            }
            e.truncate(d);
            if self.normalize {
                l2_normalize(e);
            }
        }
    }

    /// Embed already-tokenized inputs. `dimensions`: keep the first N
    /// features (then renormalise).
    pub fn embed_tokens(
        &self,
        inputs: &[EncoderInput],
        dimensions: Option<usize>,
        pool: &ComputePool,
    ) -> Result<Vec<Vec<f32>>> {
        self.check_dimensions(dimensions)?;
        let refs: Vec<&EncoderInput> = inputs.iter().collect();
        let mut out = self.pooled(&refs, pool)?;
        for e in out.iter_mut() {
            self.apply_dimensions(e, dimensions);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let s = [1.0, 2.0, 3.0, -4.0, 5.0, 0.0];
        assert_eq!(Pooling::Mean.pool(&s, 2), vec![3.0, -2.0 / 3.0]);
        assert_eq!(Pooling::Cls.pool(&s, 2), vec![1.0, 2.0]);
        assert_eq!(Pooling::LastToken.pool(&s, 2), vec![5.0, 0.0]);
        assert_eq!(Pooling::Max.pool(&s, 2), vec![5.0, 2.0]);
    }

    #[test]
    fn normalize_to_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}
