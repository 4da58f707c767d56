//! BERT-family encoders (bert, roberta, xlm-roberta) from a safetensors
//! folder. `encode` takes many inputs at once as one flattened
//! `[tokens, hidden]` matrix: every linear layer runs once over all tokens of
//! the batch, attention runs per input, and nothing is padded.

use std::path::Path;

use serde_json::Value;

use crate::compute::ops;
use crate::compute::{ComputePool, Matrix, Projections, SharedMut};
use crate::error::{EngineError, Result};
use crate::formats::WeightSource;
use crate::formats::safetensors::Checkpoint;
use crate::quant::kernels;

pub const ARCHITECTURES: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert"];

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
}

/// An encoder that embeds a batch of token sequences at once. The seam where
/// another backend would plug in.
pub trait Encoder: Send + Sync {
    fn config(&self) -> &EncoderConfig;
    /// Last hidden states of every token of every input, concatenated:
    /// `[sum(len), hidden]`.
    fn encode(&self, inputs: &[&[u32]], pool: &ComputePool) -> Result<Vec<f32>>;
    fn weight_bytes(&self) -> usize;
}

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
    inter: Matrix,
    b_inter: Vec<f32>,
    out: Matrix,
    b_out: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

pub struct BertModel {
    cfg: EncoderConfig,
    word: Matrix,
    position: Matrix,
    token_type: Vec<f32>,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<Layer>,
    act: Activation,
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
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
    let position_offset = if arch == "bert" {
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
        layer_norm_eps: cfg.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12) as f32,
        position_offset,
        arch,
    })
}

impl BertModel {
    pub fn from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
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
        let prefix = ["", "bert.", "roberta.", "model."]
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
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |s: &str| n(&format!("encoder.layer.{i}.{s}"));
            layers.push(Layer {
                qkv: Projections::new(vec![
                    ck.matrix_shaped(&l("attention.self.query.weight"), h, h)?,
                    ck.matrix_shaped(&l("attention.self.key.weight"), h, h)?,
                    ck.matrix_shaped(&l("attention.self.value.weight"), h, h)?,
                ]),
                bq: ck.vector_len(&l("attention.self.query.bias"), h)?,
                bk: ck.vector_len(&l("attention.self.key.bias"), h)?,
                bv: ck.vector_len(&l("attention.self.value.bias"), h)?,
                o: ck.matrix_shaped(&l("attention.output.dense.weight"), h, h)?,
                bo: ck.vector_len(&l("attention.output.dense.bias"), h)?,
                ln1_w: ck.vector_len(&l("attention.output.LayerNorm.weight"), h)?,
                ln1_b: ck.vector_len(&l("attention.output.LayerNorm.bias"), h)?,
                inter: ck.matrix_shaped(&l("intermediate.dense.weight"), ffn, h)?,
                b_inter: ck.vector_len(&l("intermediate.dense.bias"), ffn)?,
                out: ck.matrix_shaped(&l("output.dense.weight"), h, ffn)?,
                b_out: ck.vector_len(&l("output.dense.bias"), h)?,
                ln2_w: ck.vector_len(&l("output.LayerNorm.weight"), h)?,
                ln2_b: ck.vector_len(&l("output.LayerNorm.bias"), h)?,
            });
        }
        let token_type = if ck.has(&n("embeddings.token_type_embeddings.weight")) {
            let m = ck.matrix(&n("embeddings.token_type_embeddings.weight"))?;
            if m.cols() != h {
                return Err(EngineError::format(format!(
                    "token type embeddings are {} wide; hidden_size is {h}",
                    m.cols()
                )));
            }
            let mut row = vec![0f32; h];
            m.row_f32(0, &mut row);
            row
        } else {
            vec![0f32; h]
        };
        let word = ck.matrix(&n("embeddings.word_embeddings.weight"))?;
        // Token ids are checked against `vocab`: every one must have a row.
        if word.cols() != h || word.rows() < cfg.vocab {
            return Err(EngineError::format(format!(
                "word embeddings are {}x{}; the config says at least {}x{h}",
                word.rows(),
                word.cols(),
                cfg.vocab
            )));
        }
        let position = ck.matrix(&n("embeddings.position_embeddings.weight"))?;
        if position.cols() != h || position.rows() < cfg.max_positions + cfg.position_offset {
            return Err(EngineError::format(format!(
                "position embeddings are {}x{}; the config says at least {}x{h}",
                position.rows(),
                position.cols(),
                cfg.max_positions + cfg.position_offset
            )));
        }
        let model = BertModel {
            word,
            position,
            token_type,
            ln_w: ck.vector_len(&n("embeddings.LayerNorm.weight"), h)?,
            ln_b: ck.vector_len(&n("embeddings.LayerNorm.bias"), h)?,
            layers,
            act,
            cfg,
        };
        Ok(model)
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
            for m in [&mut l.o, &mut l.inter, &mut l.out] {
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
        let mut n = self.word.byte_len() + self.position.byte_len();
        for l in &self.layers {
            n += l.qkv.byte_len();
            n += [&l.o, &l.inter, &l.out].iter().map(|m| m.byte_len()).sum::<usize>();
        }
        n
    }

    fn encode(&self, inputs: &[&[u32]], pool: &ComputePool) -> Result<Vec<f32>> {
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
            for (p, &id) in inp.iter().enumerate() {
                if id as usize >= self.word.rows() {
                    return Err(EngineError::invalid(
                        format!("token id {id} is outside the vocabulary (size {})", self.word.rows()),
                        Some("input"),
                    ));
                }
                let xr = &mut x[row * h..(row + 1) * h];
                self.word.row_f32(id as usize, xr);
                self.position.row_f32(p + c.position_offset, &mut pos_row);
                for ((a, b), tt) in xr.iter_mut().zip(&pos_row).zip(&self.token_type) {
                    *a += b + tt;
                }
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
        let mut q = vec![0f32; t * h];
        let mut k = vec![0f32; t * h];
        let mut v = vec![0f32; t * h];
        let mut ctx = vec![0f32; t * h];
        let mut tmp = vec![0f32; t * h];
        let mut inter = vec![0f32; t.min(FFN_CHUNK_TOKENS) * c.intermediate];
        for l in &self.layers {
            l.qkv.apply(&x, t, &mut [&mut q, &mut k, &mut v], pool);
            ops::add_bias(&mut q, &l.bq);
            ops::add_bias(&mut k, &l.bk);
            ops::add_bias(&mut v, &l.bv);
            self_attention(&spans, &q, &k, &v, c.heads, h, &mut ctx, pool);
            l.o.matmul(&ctx, t, &mut tmp, pool);
            ops::add_bias(&mut tmp, &l.bo);
            ops::add_in_place(&mut x, &tmp);
            ops::layer_norm_in_place(&mut x, &l.ln1_w, &l.ln1_b, c.layer_norm_eps);
            for start in (0..t).step_by(FFN_CHUNK_TOKENS) {
                let n = (t - start).min(FFN_CHUNK_TOKENS);
                let inter = &mut inter[..n * c.intermediate];
                l.inter.matmul(&x[start * h..(start + n) * h], n, inter, pool);
                ops::add_bias(inter, &l.b_inter);
                match self.act {
                    Activation::Gelu => ops::gelu_in_place(inter),
                    Activation::GeluTanh => ops::gelu_tanh_in_place(inter),
                    Activation::Relu => inter.iter_mut().for_each(|v| *v = v.max(0.0)),
                }
                l.out.matmul(inter, n, &mut tmp[start * h..(start + n) * h], pool);
            }
            ops::add_bias(&mut tmp, &l.b_out);
            ops::add_in_place(&mut x, &tmp);
            ops::layer_norm_in_place(&mut x, &l.ln2_w, &l.ln2_b, c.layer_norm_eps);
        }
        Ok(x)
    }
}

/// Tokens per pass of the feed-forward block. Its intermediate activations
/// (4× the hidden width) would be a batch's largest buffer — 11 MiB for 128
/// short sentences through all-MiniLM-L6-v2, 50 MiB at the 8192-token batch
/// limit; per-token maths, so chunking changes no result, and 256 tokens
/// keep the products as efficient as the whole batch.
const FFN_CHUNK_TOKENS: usize = 256;

/// Bidirectional attention within each input span, one task per (input, head).
#[allow(clippy::too_many_arguments)]
fn self_attention(
    spans: &[(usize, usize)],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    h: usize,
    out: &mut [f32],
    pool: &ComputePool,
) {
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
            let qi = &q[(start + i) * h + col..(start + i) * h + col + hd];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(qi, &k[(start + j) * h + col..(start + j) * h + col + hd]) * scale;
            }
            ops::softmax_in_place(&mut scores);
            // SAFETY: row `start + i` is below `end`, and columns
            // `col..col + hd` (`col + hd <= heads * hd <= h`) inside the row,
            // so inside `out` (asserted above). Task `(si, head)` is the only
            // one with this row (spans do not overlap, asserted above) and
            // these columns (one head), and holds the slice only here.
            let o = unsafe { dst.slice_mut((start + i) * h + col, hd) };
            o.fill(0.0);
            for (j, p) in scores.iter().enumerate() {
                ops::axpy(*p, &v[(start + j) * h + col..(start + j) * h + col + hd], o);
            }
        }
    });
}
