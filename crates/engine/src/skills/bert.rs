//! BERT-family encoders: bert, roberta, xlm-roberta, mpnet and ModernBERT
//! (pre-norm, rotary, local windows, GeGLU) from a safetensors folder,
//! nomic-bert (rotary positions, SwiGLU, no biases) from a GGUF file. `encode` takes many inputs at once as one flattened
//! `[tokens, hidden]` matrix: every linear layer runs once over all tokens of
//! the batch, attention runs per input, and nothing is padded.

use std::path::Path;

use serde_json::Value;

use crate::compute::ops::{self, Rope, RopeStyle};
use crate::compute::{ComputePool, Matrix, Projections, SharedMut};
use crate::error::{EngineError, Result};
use crate::formats::WeightSource;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::Checkpoint;
use crate::quant::kernels;

pub const ARCHITECTURES: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert"];

/// MPNet runs on the same code with a relative position bias; a skill of
/// its own, since the device backends do not run it.
pub const MPNET_ARCHITECTURES: &[&str] = &["mpnet"];

/// ModernBERT: pre-norm layers without biases, rotary positions with a
/// local base in its windowed layers, GeGLU; a skill of its own (CPU only).
pub const MODERNBERT_ARCHITECTURES: &[&str] = &["modernbert"];

/// Nomic's BERT (nomic-embed-text) as llama.cpp converts it to GGUF: BERT's
/// post-norm layers with rotary positions, a fused QKV projection, SwiGLU
/// and no biases in the layers.
pub const NOMIC_ARCHITECTURES: &[&str] = &["nomic-bert"];

/// How a CPU encoder holds its f32 layer weights (`--encoder-weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderWeights {
    /// As in the checkpoint.
    #[default]
    F32,
    /// IEEE half panels: half the memory, products in f32; vectors within
    /// cosine 0.99999 of f32.
    F16,
    /// bf16 pair panels, activations rounded to bf16 too (`vdpbf16ps`,
    /// where the CPU has AVX512_BF16: twice an FMA's multiply-adds); 8
    /// significant bits on both sides of each product.
    Bf16,
}

impl std::str::FromStr for EncoderWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("encoder weights {other:?}: expected f32, f16 or bf16")),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderConfig {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Longest input in tokens (position table size less any offset).
    pub max_positions: usize,
    pub layer_norm_eps: f32,
    /// RoBERTa numbers positions from `padding_idx + 1`.
    pub position_offset: usize,
    /// Rows of the token type table (2 for BERT, 1 for RoBERTa and XLM-R,
    /// whose second segments are type 0 too).
    pub token_types: usize,
}

/// One input to an encoder: its token ids, and where its second segment
/// starts (a cross-encoder's document: token type 1 from there on, in
/// models that have token types); `ids.len()` when there is one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderInput {
    pub ids: Vec<u32>,
    pub second_segment: usize,
}

impl EncoderInput {
    /// One segment.
    pub fn single(ids: Vec<u32>) -> Self {
        let second_segment = ids.len();
        EncoderInput { ids, second_segment }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The token type of position `p`.
    pub fn token_type(&self, p: usize) -> usize {
        usize::from(p >= self.second_segment)
    }
}

/// An encoder that embeds a batch of token sequences at once. The seam where
/// another backend would plug in.
pub trait Encoder: Send + Sync {
    fn config(&self) -> &EncoderConfig;
    /// Last hidden states of every token of every input, concatenated:
    /// `[sum(len), hidden]`.
    fn encode(&self, inputs: &[&EncoderInput], pool: &ComputePool) -> Result<Vec<f32>>;
    fn weight_bytes(&self) -> usize;
}

/// One encoder layer. Bias vectors are empty in models without biases.
struct Layer {
    /// Query, key and value projections (one fused product where they stack).
    qkv: Projections,
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
    o: Matrix,
    bo: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    /// The feed-forward's first projection (the "up" half of a GLU).
    inter: Matrix,
    b_inter: Vec<f32>,
    /// A gated unit's gate: the feed-forward is `act(gate x) * (inter x)`
    /// (SwiGLU when the activation is SiLU).
    gate: Option<Matrix>,
    out: Matrix,
    b_out: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

pub struct BertModel {
    cfg: EncoderConfig,
    word: Matrix,
    position: Positions,
    /// `[token_types, hidden]`: zeros where the checkpoint has no table.
    token_type: Vec<f32>,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<Layer>,
    act: Activation,
    /// MPNet's relative position bias, shared by every layer.
    relative: Option<RelativeBias>,
    /// Norms before attention and feed-forward, and a final one
    /// (ModernBERT), instead of BERT's after each residual sum.
    pre_norm: bool,
    /// The final norm's weight and bias (pre-norm models).
    final_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Per layer, how far a query sees (ModernBERT's local layers); empty
    /// when every layer sees the whole input.
    windows: Vec<Option<usize>>,
}

/// T5-style bucketed relative position bias (MPNet): a learned value per
/// (bucket, head) added to each attention score, the bucket a function of
/// the key's position less the query's.
struct RelativeBias {
    /// `[buckets, heads]`.
    table: Vec<f32>,
    buckets: usize,
    heads: usize,
}

impl RelativeBias {
    /// Longest distance with buckets of its own (transformers' default).
    const MAX_DISTANCE: i64 = 128;

    /// transformers' `relative_position_bucket` for `rel = key - query`:
    /// half the buckets for each direction, exact up to a quarter of them,
    /// then logarithmic up to `MAX_DISTANCE` (in f32, as torch computes it).
    fn bucket(&self, rel: i64) -> usize {
        let half = (self.buckets / 2) as i64;
        let n = -rel;
        let mut ret = if n < 0 { half } else { 0 };
        let n = n.abs();
        let max_exact = half / 2;
        ret += if n < max_exact {
            n
        } else {
            let ratio = (n as f32 / max_exact as f32).ln() / (Self::MAX_DISTANCE as f32 / max_exact as f32).ln();
            (max_exact + (ratio * (half - max_exact) as f32) as i64).min(half - 1)
        };
        ret as usize
    }

    /// Per head, the bias of every relative position `-(len-1)..=len-1`
    /// (index `rel + len - 1`): `[heads, 2 len - 1]`.
    fn by_distance(&self, len: usize) -> Vec<f32> {
        let w = 2 * len.max(1) - 1;
        let mut out = vec![0f32; self.heads * w];
        for r in 0..w {
            let b = self.bucket(r as i64 - (len.max(1) as i64 - 1));
            for head in 0..self.heads {
                out[head * w + r] = self.table[b * self.heads + head];
            }
        }
        out
    }
}

/// How tokens know where they are.
enum Positions {
    /// A learned table added to the embeddings (BERT).
    Learned(Matrix),
    /// Rotary embeddings on queries and keys (nomic-bert, ModernBERT); the
    /// windowed layers' own where their base differs (ModernBERT).
    Rotary { global: Rope, local: Option<Rope> },
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn apply(self, x: &mut [f32]) {
        match self {
            Activation::Gelu => ops::gelu_in_place(x),
            Activation::GeluTanh => ops::gelu_tanh_in_place(x),
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
        }
    }

    /// A gated linear unit: `gate = act(gate) * up`.
    fn glu(self, gate: &mut [f32], up: &[f32]) {
        match self {
            Activation::Silu => ops::silu_mul(gate, up),
            Activation::GeluTanh => ops::gelu_tanh_mul(gate, up),
            other => {
                other.apply(gate);
                gate.iter_mut().zip(up).for_each(|(g, u)| *g *= u);
            }
        }
    }
}

/// `ops::add_bias` for layers that may have no bias.
fn add_bias(x: &mut [f32], bias: &[f32]) {
    if !bias.is_empty() {
        ops::add_bias(x, bias);
    }
}

fn jusize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

pub fn config_from_hf(cfg: &Value) -> Result<EncoderConfig> {
    let arch = cfg
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("bert")
        .to_string();
    let need = |key: &str| jusize(cfg, key).ok_or_else(|| EngineError::format(format!("config.json has no {key}")));
    let positions = need("max_position_embeddings")?;
    let position_offset = if arch == "bert" || arch == "modernbert" {
        0
    } else {
        jusize(cfg, "pad_token_id").unwrap_or(1) + 1
    };
    Ok(EncoderConfig {
        hidden: need("hidden_size")?,
        layers: need("num_hidden_layers")?,
        heads: need("num_attention_heads")?,
        intermediate: need("intermediate_size")?,
        vocab: need("vocab_size")?,
        max_positions: positions.saturating_sub(position_offset),
        layer_norm_eps: ["layer_norm_eps", "norm_eps"]
            .iter()
            .find_map(|k| cfg.get(*k).and_then(|v| v.as_f64()))
            .unwrap_or(1e-12) as f32,
        position_offset,
        // ModernBERT has no token types.
        token_types: if arch == "modernbert" {
            1
        } else {
            jusize(cfg, "type_vocab_size").unwrap_or(2).max(1)
        },
        arch,
    })
}

/// A GGUF encoder's sizes (`{arch}.*` metadata, as llama.cpp writes them).
pub fn config_from_gguf(f: &GgufFile) -> Result<EncoderConfig> {
    let arch = f
        .architecture()
        .ok_or_else(|| EngineError::format("GGUF has no general.architecture"))?
        .to_string();
    if !NOMIC_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(EngineError::format(format!(
            "GGUF architecture {arch} is not an encoder served here"
        )));
    }
    let need = |key: &str| {
        f.get_u64(&format!("{arch}.{key}"))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| EngineError::format(format!("GGUF has no {arch}.{key}")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    if heads == 0 || !hidden.is_multiple_of(heads) || !(hidden / heads).is_multiple_of(2) {
        return Err(EngineError::format(format!(
            "embedding length {hidden} does not split into {heads} heads of an even size"
        )));
    }
    let vocab = f
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| EngineError::format("GGUF has no 2-D token_embd.weight"))? as usize;
    // Room for [CLS] and [SEP] at least (the tokenizer truncates to it).
    let max_positions = need("context_length")?;
    if max_positions < 3 {
        return Err(EngineError::format(format!(
            "{arch}.context_length {max_positions} leaves no room for text"
        )));
    }
    Ok(EncoderConfig {
        hidden,
        layers: need("block_count")?,
        heads,
        intermediate: need("feed_forward_length")?,
        vocab,
        max_positions,
        layer_norm_eps: f
            .get_f64(&format!("{arch}.attention.layer_norm_epsilon"))
            .unwrap_or(1e-12) as f32,
        position_offset: 0,
        token_types: f
            .tensor("token_types.weight")
            .and_then(|t| t.dims.get(1).copied())
            .unwrap_or(1)
            .max(1) as usize,
        arch,
    })
}

/// Every token id below the vocabulary size must have a row of the hidden width.
fn check_word_table(word: &Matrix, cfg: &EncoderConfig) -> Result<()> {
    if word.cols() != cfg.hidden || word.rows() < cfg.vocab {
        return Err(EngineError::format(format!(
            "the token embeddings are {}x{}; the config says at least {}x{}",
            word.rows(),
            word.cols(),
            cfg.vocab,
            cfg.hidden
        )));
    }
    Ok(())
}

/// The first `at` rows of `m` and the rest, as two matrices (f32).
fn split_rows(m: &Matrix, at: usize) -> Result<(Matrix, Matrix)> {
    let (rows, cols) = (m.rows(), m.cols());
    let mut all = m.to_f32();
    let rest = all.split_off(at * cols);
    Ok((
        Matrix::from_f32(at, cols, all)?,
        Matrix::from_f32(rows - at, cols, rest)?,
    ))
}

impl BertModel {
    /// A ModernBERT checkpoint (`ModernBertModel`, or the encoder of a
    /// task model under `model.`).
    fn modernbert_from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
        let (h, ffn) = (cfg.hidden, cfg.intermediate);
        if cfg.heads == 0 || !h.is_multiple_of(cfg.heads) || !(h / cfg.heads).is_multiple_of(2) {
            return Err(EngineError::format(format!(
                "hidden_size {h} does not split into {} heads of an even size",
                cfg.heads
            )));
        }
        for flag in ["attention_bias", "mlp_bias", "norm_bias"] {
            if cfg_json.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(EngineError::format(format!("ModernBERT with {flag} is not supported")));
            }
        }
        let act = match cfg_json
            .get("hidden_activation")
            .and_then(Value::as_str)
            .unwrap_or("gelu")
        {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" => Activation::Silu,
            "relu" => Activation::Relu,
            other => {
                return Err(EngineError::format(format!(
                    "hidden_activation '{other}' is not supported (supported: gelu, gelu_pytorch_tanh, silu, relu)"
                )));
            }
        };
        // Which layers are local: `layer_types`, else every layer but each
        // `global_attn_every_n_layers`-th.
        let local: Vec<bool> = match cfg_json.get("layer_types").and_then(Value::as_array) {
            Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
            None => {
                let every = jusize(cfg_json, "global_attn_every_n_layers").unwrap_or(3).max(1);
                (0..cfg.layers.min(1 << 16)).map(|i| i % every != 0).collect()
            }
        };
        let half_window = jusize(cfg_json, "local_attention").unwrap_or(128) / 2;
        let rope = cfg_json.get("rope_parameters").cloned().unwrap_or(Value::Null);
        let theta = |kind: &str, legacy: &str, default: f64| -> Result<f32> {
            let p = &rope[kind];
            if let Some(t) = p.get("rope_type").and_then(Value::as_str)
                && t != "default"
            {
                return Err(EngineError::format(format!(
                    "ModernBERT rope type '{t}' is not supported"
                )));
            }
            Ok(p.get("rope_theta")
                .or_else(|| cfg_json.get(legacy))
                .and_then(Value::as_f64)
                .unwrap_or(default) as f32)
        };
        let head_dim = h / cfg.heads;
        let global = Rope::new(
            RopeStyle::Halves,
            head_dim,
            theta("full_attention", "global_rope_theta", 160000.0)?,
            None,
            1.0,
        );
        let local_rope = Rope::new(
            RopeStyle::Halves,
            head_dim,
            theta("sliding_attention", "local_rope_theta", 10000.0)?,
            None,
            1.0,
        );

        let ck = Checkpoint::open(dir)?;
        let prefix = ["", "model."]
            .into_iter()
            .find(|p| ck.has(&format!("{p}embeddings.tok_embeddings.weight")))
            .ok_or_else(|| EngineError::format("no embeddings.tok_embeddings.weight in the checkpoint"))?;
        let n = |s: &str| format!("{prefix}{s}");
        let zeros = vec![0f32; h];
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |s: &str| n(&format!("layers.{i}.{s}"));
            let qkv = ck.matrix_shaped(&l("attn.Wqkv.weight"), 3 * h, h)?;
            // Wi holds the activated half first, then the multiplier.
            let (gate, up) = split_rows(&ck.matrix_shaped(&l("mlp.Wi.weight"), 2 * ffn, h)?, ffn)?;
            let ln1_w = if ck.has(&l("attn_norm.weight")) {
                ck.vector_len(&l("attn_norm.weight"), h)?
            } else {
                Vec::new()
            };
            layers.push(Layer {
                qkv: Projections::from_fused(qkv, vec![h, h, h])?,
                bq: Vec::new(),
                bk: Vec::new(),
                bv: Vec::new(),
                o: ck.matrix_shaped(&l("attn.Wo.weight"), h, h)?,
                bo: Vec::new(),
                ln1_b: if ln1_w.is_empty() { Vec::new() } else { zeros.clone() },
                ln1_w,
                inter: up,
                b_inter: Vec::new(),
                gate: Some(gate),
                out: ck.matrix_shaped(&l("mlp.Wo.weight"), h, ffn)?,
                b_out: Vec::new(),
                ln2_w: ck.vector_len(&l("mlp_norm.weight"), h)?,
                ln2_b: zeros.clone(),
            });
        }
        let word = ck.matrix(&n("embeddings.tok_embeddings.weight"))?;
        check_word_table(&word, &cfg)?;
        Ok(BertModel {
            word,
            position: Positions::Rotary {
                global,
                local: Some(local_rope),
            },
            token_type: vec![0f32; h],
            ln_w: ck.vector_len(&n("embeddings.norm.weight"), h)?,
            ln_b: zeros.clone(),
            layers,
            act,
            relative: None,
            pre_norm: true,
            final_norm: Some((ck.vector_len(&n("final_norm.weight"), h)?, zeros)),
            windows: (0..cfg.layers)
                .map(|i| local.get(i).copied().unwrap_or(false).then_some(half_window))
                .collect(),
            cfg,
        })
    }

    pub fn from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
        if cfg.arch == "modernbert" {
            return Self::modernbert_from_safetensors(dir, cfg_json);
        }
        let act = match cfg_json.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(EngineError::format(format!(
                    "hidden_act '{other}' is not supported (supported: gelu, gelu_new, relu)"
                )));
            }
        };
        let ck = Checkpoint::open(dir)?;
        // Checkpoints saved from a task head prefix the encoder's names.
        let prefix = ["", "bert.", "roberta.", "mpnet.", "model."]
            .into_iter()
            .find(|p| ck.has(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| EngineError::format("no embeddings.word_embeddings.weight in the checkpoint"))?;
        let n = |s: &str| format!("{prefix}{s}");
        let (h, ffn) = (cfg.hidden, cfg.intermediate);
        if cfg.heads == 0 || !h.is_multiple_of(cfg.heads) {
            return Err(EngineError::format(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                cfg.heads
            )));
        }
        // MPNet names the attention's parts differently.
        let mpnet = cfg.arch == "mpnet";
        let (q, k, v, o, ln1) = if mpnet {
            (
                "attention.attn.q",
                "attention.attn.k",
                "attention.attn.v",
                "attention.attn.o",
                "attention.LayerNorm",
            )
        } else {
            (
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
            )
        };
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |part: &str, s: &str| n(&format!("encoder.layer.{i}.{part}.{s}"));
            layers.push(Layer {
                qkv: Projections::new(vec![
                    ck.matrix_shaped(&l(q, "weight"), h, h)?,
                    ck.matrix_shaped(&l(k, "weight"), h, h)?,
                    ck.matrix_shaped(&l(v, "weight"), h, h)?,
                ]),
                bq: ck.vector_len(&l(q, "bias"), h)?,
                bk: ck.vector_len(&l(k, "bias"), h)?,
                bv: ck.vector_len(&l(v, "bias"), h)?,
                o: ck.matrix_shaped(&l(o, "weight"), h, h)?,
                bo: ck.vector_len(&l(o, "bias"), h)?,
                ln1_w: ck.vector_len(&l(ln1, "weight"), h)?,
                ln1_b: ck.vector_len(&l(ln1, "bias"), h)?,
                inter: ck.matrix_shaped(&l("intermediate.dense", "weight"), ffn, h)?,
                b_inter: ck.vector_len(&l("intermediate.dense", "bias"), ffn)?,
                gate: None,
                out: ck.matrix_shaped(&l("output.dense", "weight"), h, ffn)?,
                b_out: ck.vector_len(&l("output.dense", "bias"), h)?,
                ln2_w: ck.vector_len(&l("output.LayerNorm", "weight"), h)?,
                ln2_b: ck.vector_len(&l("output.LayerNorm", "bias"), h)?,
            });
        }
        let mut token_type = vec![0f32; cfg.token_types * h];
        if ck.has(&n("embeddings.token_type_embeddings.weight")) {
            let m = ck.matrix(&n("embeddings.token_type_embeddings.weight"))?;
            if m.cols() != h || m.rows() < cfg.token_types {
                return Err(EngineError::format(format!(
                    "token type embeddings are {}x{}; the config says at least {}x{h}",
                    m.rows(),
                    m.cols(),
                    cfg.token_types
                )));
            }
            for (t, row) in token_type.chunks_exact_mut(h).enumerate() {
                m.row_f32(t, row);
            }
        }
        let word = ck.matrix(&n("embeddings.word_embeddings.weight"))?;
        // Token ids are checked against `vocab`: every one must have a row.
        check_word_table(&word, &cfg)?;
        let position = ck.matrix(&n("embeddings.position_embeddings.weight"))?;
        if position.cols() != h || position.rows() < cfg.max_positions + cfg.position_offset {
            return Err(EngineError::format(format!(
                "position embeddings are {}x{}; the config says at least {}x{h}",
                position.rows(),
                position.cols(),
                cfg.max_positions + cfg.position_offset
            )));
        }
        let relative = if mpnet {
            let name = n("encoder.relative_attention_bias.weight");
            let m = ck.matrix(&name)?;
            let buckets = jusize(cfg_json, "relative_attention_num_buckets").unwrap_or(32);
            // Buckets past 2 × MAX_DISTANCE would leave the logarithmic
            // range empty (transformers divides by log(1) there).
            if m.rows() != buckets
                || m.cols() != cfg.heads
                || !(4..2 * RelativeBias::MAX_DISTANCE as usize).contains(&buckets)
            {
                return Err(EngineError::format(format!(
                    "{name} is {}x{}; expected {buckets} buckets x {} heads",
                    m.rows(),
                    m.cols(),
                    cfg.heads
                )));
            }
            Some(RelativeBias {
                table: m.to_f32(),
                buckets,
                heads: cfg.heads,
            })
        } else {
            None
        };
        let model = BertModel {
            relative,
            word,
            position: Positions::Learned(position),
            token_type,
            ln_w: ck.vector_len(&n("embeddings.LayerNorm.weight"), h)?,
            ln_b: ck.vector_len(&n("embeddings.LayerNorm.bias"), h)?,
            layers,
            act,
            pre_norm: false,
            final_norm: None,
            windows: Vec::new(),
            cfg,
        };
        Ok(model)
    }

    /// A nomic-bert encoder from a GGUF file (llama.cpp's tensor names).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let cfg = config_from_gguf(f)?;
        let (h, ffn) = (cfg.hidden, cfg.intermediate);
        let arch = cfg.arch.clone();
        let rope_theta = f.get_f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0) as f32;
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |s: &str| format!("blk.{i}.{s}");
            let qkv = f.matrix_shaped(&l("attn_qkv.weight"), 3 * h, h)?;
            layers.push(Layer {
                qkv: Projections::from_fused(qkv, vec![h, h, h])?,
                bq: Vec::new(),
                bk: Vec::new(),
                bv: Vec::new(),
                o: f.matrix_shaped(&l("attn_output.weight"), h, h)?,
                bo: Vec::new(),
                ln1_w: f.vector_len(&l("attn_output_norm.weight"), h)?,
                ln1_b: f.vector_len(&l("attn_output_norm.bias"), h)?,
                inter: f.matrix_shaped(&l("ffn_up.weight"), ffn, h)?,
                b_inter: Vec::new(),
                gate: Some(f.matrix_shaped(&l("ffn_gate.weight"), ffn, h)?),
                out: f.matrix_shaped(&l("ffn_down.weight"), h, ffn)?,
                b_out: Vec::new(),
                ln2_w: f.vector_len(&l("layer_output_norm.weight"), h)?,
                ln2_b: f.vector_len(&l("layer_output_norm.bias"), h)?,
            });
        }
        let word = f.matrix("token_embd.weight")?;
        check_word_table(&word, &cfg)?;
        let types = f.matrix("token_types.weight")?;
        if types.cols() != h || types.rows() != cfg.token_types {
            return Err(EngineError::format(format!(
                "token_types.weight is {}x{}; expected {}x{h}",
                types.rows(),
                types.cols(),
                cfg.token_types
            )));
        }
        let token_type = types.to_f32();
        let head_dim = h / cfg.heads;
        Ok(BertModel {
            word,
            position: Positions::Rotary {
                global: Rope::new(RopeStyle::Halves, head_dim, rope_theta, None, 1.0),
                local: None,
            },
            token_type,
            ln_w: f.vector_len("token_embd_norm.weight", h)?,
            ln_b: f.vector_len("token_embd_norm.bias", h)?,
            layers,
            act: Activation::Silu,
            relative: None,
            pre_norm: false,
            final_norm: None,
            windows: Vec::new(),
            cfg,
        })
    }

    /// The same model with its f32 layer weights held as half precision:
    /// half the memory, and products over few tokens (bound by reading the
    /// weights) faster: all-MiniLM-L6-v2, one sentence, 2 threads, 3.6 → 3.05
    /// ms. Embedding tables, norms and biases stay f32; products accumulate
    /// in f32. This is also the path of checkpoints stored as f16.
    pub fn into_f16(self) -> Result<Self> {
        self.with_layer_weights(EncoderWeights::F16)
    }

    /// The same model with its f32 layer weights held as `w` (see
    /// [`EncoderWeights`]); embedding tables, norms and biases stay f32.
    pub fn with_layer_weights(mut self, w: EncoderWeights) -> Result<Self> {
        let narrow = |m: Matrix| match w {
            EncoderWeights::F32 => Ok(m),
            EncoderWeights::F16 => m.into_f16(),
            EncoderWeights::Bf16 => m.into_bf16(),
        };
        for l in &mut self.layers {
            let qkv = std::mem::replace(&mut l.qkv, Projections::new(Vec::new()));
            l.qkv = match w {
                EncoderWeights::F32 => qkv,
                EncoderWeights::F16 => qkv.into_f16()?,
                EncoderWeights::Bf16 => qkv.into_bf16()?,
            };
            for m in [&mut l.o, &mut l.inter, &mut l.out].into_iter().chain(l.gate.as_mut()) {
                let owned = std::mem::replace(m, Matrix::from_f32(0, 0, Vec::new())?);
                *m = narrow(owned)?;
            }
        }
        Ok(self)
    }
}

impl Encoder for BertModel {
    fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    fn weight_bytes(&self) -> usize {
        let mut n = self.word.byte_len();
        if let Positions::Learned(m) = &self.position {
            n += m.byte_len();
        }
        for l in &self.layers {
            n += l.qkv.byte_len();
            n += [&l.o, &l.inter, &l.out]
                .into_iter()
                .chain(&l.gate)
                .map(|m| m.byte_len())
                .sum::<usize>();
        }
        n
    }

    fn encode(&self, inputs: &[&EncoderInput], pool: &ComputePool) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let h = c.hidden;
        let t: usize = inputs.iter().map(|i| i.len()).sum();
        if t == 0 {
            return Ok(Vec::new());
        }
        let mut x = vec![0f32; t * h];
        let mut pos_row = vec![0f32; h];
        let mut row = 0;
        for inp in inputs {
            if inp.len() > c.max_positions {
                return Err(EngineError::invalid(
                    format!(
                        "input of {} tokens exceeds the model's {} positions",
                        inp.len(),
                        c.max_positions
                    ),
                    Some("input"),
                ));
            }
            for (p, &id) in inp.ids.iter().enumerate() {
                if id as usize >= self.word.rows() {
                    return Err(EngineError::invalid(
                        format!("token id {id} is outside the vocabulary (size {})", self.word.rows()),
                        Some("input"),
                    ));
                }
                let xr = &mut x[row * h..(row + 1) * h];
                self.word.row_f32(id as usize, xr);
                if let Positions::Learned(table) = &self.position {
                    table.row_f32(p + c.position_offset, &mut pos_row);
                    ops::add_in_place(xr, &pos_row);
                }
                // Models with one token type give the second segment type 0.
                let ty = inp.token_type(p).min(c.token_types - 1);
                ops::add_in_place(xr, &self.token_type[ty * h..(ty + 1) * h]);
                row += 1;
            }
        }
        ops::layer_norm_in_place(&mut x, &self.ln_w, &self.ln_b, c.layer_norm_eps);

        let spans: Vec<(usize, usize)> = inputs
            .iter()
            .scan(0, |start, i| {
                let s = *start;
                *start += i.len();
                Some((s, i.len()))
            })
            .collect();
        let longest = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
        let relative = self.relative.as_ref().map(|r| r.by_distance(longest));
        // Rotary cos/sin of every position up to the longest input, computed
        // once for all layers (`head_dim` values per position: cos then sin).
        let angles_of = |rope: &Rope| {
            let mut angles = vec![0f32; longest * h];
            for (p, cs) in angles.chunks_exact_mut(h).enumerate() {
                rope.angles(p, &mut cs[..h / c.heads]);
            }
            angles
        };
        let (angles, angles_local) = match &self.position {
            Positions::Rotary { global, local } => (angles_of(global), local.as_ref().map(angles_of)),
            Positions::Learned(_) => (Vec::new(), None),
        };
        let mut q = vec![0f32; t * h];
        let mut k = vec![0f32; t * h];
        let mut v = vec![0f32; t * h];
        let mut ctx = vec![0f32; t * h];
        let mut tmp = vec![0f32; t * h];
        let mut inter = vec![0f32; t.min(FFN_CHUNK_TOKENS) * c.intermediate];
        let gated = self.layers.iter().any(|l| l.gate.is_some());
        let mut gate = vec![0f32; if gated { inter.len() } else { 0 }];
        // A pre-norm layer's normed input (the residual stream stays in x).
        let mut normed = vec![0f32; if self.pre_norm { t * h } else { 0 }];
        for (li, l) in self.layers.iter().enumerate() {
            let window = self.windows.get(li).copied().flatten();
            let attn_in: &[f32] = if self.pre_norm {
                normed.copy_from_slice(&x);
                // ModernBERT's first layer has no attention norm.
                if !l.ln1_w.is_empty() {
                    ops::layer_norm_in_place(&mut normed, &l.ln1_w, &l.ln1_b, c.layer_norm_eps);
                }
                &normed
            } else {
                &x
            };
            l.qkv.apply(attn_in, t, &mut [&mut q, &mut k, &mut v], pool);
            add_bias(&mut q, &l.bq);
            add_bias(&mut k, &l.bk);
            add_bias(&mut v, &l.bv);
            if let Positions::Rotary { global, local } = &self.position {
                let (rope, angles) = match (local, &angles_local) {
                    (Some(local), Some(a)) if window.is_some() => (local, a),
                    _ => (global, &angles),
                };
                for &(start, len) in &spans {
                    for p in 0..len {
                        let rows = (start + p) * h..(start + p + 1) * h;
                        rope.apply(&mut q[rows.clone()], h / c.heads, &angles[p * h..(p + 1) * h]);
                        rope.apply(&mut k[rows], h / c.heads, &angles[p * h..(p + 1) * h]);
                    }
                }
            }
            self_attention(
                &spans,
                &q,
                &k,
                &v,
                c.heads,
                h,
                relative.as_deref(),
                window,
                &mut ctx,
                pool,
            );
            l.o.matmul(&ctx, t, &mut tmp, pool);
            add_bias(&mut tmp, &l.bo);
            ops::add_in_place(&mut x, &tmp);
            let ffn_in: &[f32] = if self.pre_norm {
                normed.copy_from_slice(&x);
                ops::layer_norm_in_place(&mut normed, &l.ln2_w, &l.ln2_b, c.layer_norm_eps);
                &normed
            } else {
                ops::layer_norm_in_place(&mut x, &l.ln1_w, &l.ln1_b, c.layer_norm_eps);
                &x
            };
            for start in (0..t).step_by(FFN_CHUNK_TOKENS) {
                let n = (t - start).min(FFN_CHUNK_TOKENS);
                let xs = &ffn_in[start * h..(start + n) * h];
                let inter = &mut inter[..n * c.intermediate];
                l.inter.matmul(xs, n, inter, pool);
                add_bias(inter, &l.b_inter);
                let activated: &[f32] = match &l.gate {
                    Some(g) => {
                        let gate = &mut gate[..n * c.intermediate];
                        g.matmul(xs, n, gate, pool);
                        self.act.glu(gate, inter);
                        gate
                    }
                    None => {
                        self.act.apply(inter);
                        inter
                    }
                };
                l.out.matmul(activated, n, &mut tmp[start * h..(start + n) * h], pool);
            }
            add_bias(&mut tmp, &l.b_out);
            ops::add_in_place(&mut x, &tmp);
            if !self.pre_norm {
                ops::layer_norm_in_place(&mut x, &l.ln2_w, &l.ln2_b, c.layer_norm_eps);
            }
        }
        if let Some((w, b)) = &self.final_norm {
            ops::layer_norm_in_place(&mut x, w, b, c.layer_norm_eps);
        }
        Ok(x)
    }
}

/// A sequence-classification head: the first token's last state through a
/// dense layer and tanh, then a linear map to one logit per label. BERT's
/// pooler + `classifier` and RoBERTa's `classifier.dense` +
/// `classifier.out_proj` are both this (their dropout is off at inference).
pub struct ClassifierHead {
    dense: Matrix,
    dense_b: Vec<f32>,
    out: Matrix,
    out_b: Vec<f32>,
    /// `id2label`, one name per logit (`LABEL_i` where the config has none).
    pub labels: Vec<String>,
}

/// Is a checkpoint a sequence classifier (`BertForSequenceClassification`,
/// `XLMRobertaForSequenceClassification`…), as its config's `architectures` say?
pub fn is_sequence_classifier(cfg: &Value) -> bool {
    cfg.get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|c| c.as_str())
        .is_some_and(|c| c.ends_with("ForSequenceClassification"))
}

impl ClassifierHead {
    /// Read the head of a `*ForSequenceClassification` checkpoint.
    pub fn from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
        let h = cfg.hidden;
        let ck = Checkpoint::open(dir)?;
        let (dense, out) = if ck.has("classifier.out_proj.weight") {
            ("classifier.dense", "classifier.out_proj")
        } else if let Some(p) = ["bert.", ""]
            .into_iter()
            .find(|p| ck.has(&format!("{p}pooler.dense.weight")))
        {
            (
                if p.is_empty() {
                    "pooler.dense"
                } else {
                    "bert.pooler.dense"
                },
                "classifier",
            )
        } else {
            return Err(EngineError::format(
                "a sequence classifier without a classification head (no classifier.out_proj or pooler.dense weights)",
            ));
        };
        let out_w = ck.matrix(&format!("{out}.weight"))?;
        let n = out_w.rows();
        if out_w.cols() != h || n == 0 {
            return Err(EngineError::format(format!(
                "{out}.weight is {}x{}; expected labels x {h}",
                n,
                out_w.cols()
            )));
        }
        let names = cfg_json.get("id2label").and_then(|v| v.as_object());
        let labels = (0..n)
            .map(|i| {
                names
                    .and_then(|m| m.get(&i.to_string()))
                    .and_then(|v| v.as_str())
                    .map_or_else(|| format!("LABEL_{i}"), str::to_string)
            })
            .collect();
        Ok(ClassifierHead {
            dense: ck.matrix_shaped(&format!("{dense}.weight"), h, h)?,
            dense_b: ck.vector_len(&format!("{dense}.bias"), h)?,
            out_b: ck.vector_len(&format!("{out}.bias"), n)?,
            out: out_w,
            labels,
        })
    }

    /// The logits of each input from its first token's state, given those
    /// states as rows of `[inputs, hidden]`.
    pub fn logits(&self, first_states: &[f32], pool: &ComputePool) -> Vec<Vec<f32>> {
        let h = self.dense.cols();
        let n = first_states.len() / h;
        let mut x = vec![0f32; n * h];
        self.dense.matmul(first_states, n, &mut x, pool);
        ops::add_bias(&mut x, &self.dense_b);
        x.iter_mut().for_each(|v| *v = v.tanh());
        let labels = self.labels.len();
        let mut out = vec![0f32; n * labels];
        self.out.matmul(&x, n, &mut out, pool);
        ops::add_bias(&mut out, &self.out_b);
        out.chunks_exact(labels).map(<[f32]>::to_vec).collect()
    }

    pub fn weight_bytes(&self) -> usize {
        self.dense.byte_len() + self.out.byte_len()
    }
}

/// Tokens per pass of the feed-forward block. Its intermediate activations
/// (4× the hidden width) would be a batch's largest buffer — 11 MiB for 128
/// short sentences through all-MiniLM-L6-v2, 50 MiB at the 8192-token batch
/// limit; per-token maths, so chunking changes no result, and 256 tokens
/// keep the products as efficient as the whole batch.
const FFN_CHUNK_TOKENS: usize = 256;

/// Bidirectional attention within each input span, one task per (input, head).
/// `relative`: per head, a bias by key-less-query distance (from
/// [`RelativeBias::by_distance`] for the longest span). `window`: a query
/// sees only the keys at most this far from it (ModernBERT's local layers).
#[allow(clippy::too_many_arguments)]
fn self_attention(
    spans: &[(usize, usize)],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    h: usize,
    relative: Option<&[f32]>,
    window: Option<usize>,
    out: &mut [f32],
    pool: &ComputePool,
) {
    let longest = spans.iter().map(|s| s.1).max().unwrap_or(0).max(1);
    let width = 2 * longest - 1;
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let dot = kernels().f32_dot;
    // The tasks' writes are disjoint when the spans are: checked once.
    let mut end = 0usize;
    for &(start, len) in spans {
        assert!(start >= end, "overlapping spans");
        end = start.checked_add(len).expect("span end");
    }
    assert!(
        end.checked_mul(h).is_some_and(|n| n <= out.len()),
        "spans past the output"
    );
    let dst = SharedMut::new(out);
    pool.for_each(spans.len() * heads, |task| {
        let (si, head) = (task / heads, task % heads);
        let (start, len) = spans[si];
        let col = head * hd;
        let mut scores = vec![0f32; len];
        for i in 0..len {
            // The keys this query sees: all, or those within the window.
            let (lo, hi) = match window {
                Some(w) => (i.saturating_sub(w), i.saturating_add(w).saturating_add(1).min(len)),
                None => (0, len),
            };
            let scores = &mut scores[..hi - lo];
            let qi = &q[(start + i) * h + col..(start + i) * h + col + hd];
            for (j, s) in (lo..hi).zip(scores.iter_mut()) {
                *s = dot(qi, &k[(start + j) * h + col..(start + j) * h + col + hd]) * scale;
            }
            if let Some(rel) = relative {
                // Key j less query i, offset by longest - 1.
                let row = &rel[head * width + longest - 1 - i + lo..];
                for (s, b) in scores.iter_mut().zip(row) {
                    *s += b;
                }
            }
            ops::softmax_in_place(scores);
            // SAFETY: row `start + i` is below `end`, and columns
            // `col..col + hd` (`col + hd <= heads * hd <= h`) inside the row,
            // so inside `out` (asserted above). Task `(si, head)` is the only
            // one with this row (spans do not overlap, asserted above) and
            // these columns (one head), and holds the slice only here.
            let o = unsafe { dst.slice_mut((start + i) * h + col, hd) };
            o.fill(0.0);
            for (j, p) in (lo..hi).zip(scores.iter()) {
                ops::axpy(*p, &v[(start + j) * h + col..(start + j) * h + col + hd], o);
            }
        }
    });
}
