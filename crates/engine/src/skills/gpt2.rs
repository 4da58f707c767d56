//! GPT-2 decoders from a safetensors folder or a GGUF file (llama.cpp's
//! names, weights already `[out, in]`): learned absolute positions,
//! LayerNorm with biases before attention and MLP, one fused `c_attn`
//! projection for Q, K and V, a plain (ungated) GELU MLP, biases on every
//! projection, and the head tied to the token embeddings. transformers
//! stores these projections as `Conv1D` (`[in, out]`): they are transposed
//! once at load. The KV cache, attention and batching are the Llama path's.

use std::path::Path;

use serde_json::Value;

use super::llama::{CausalLm, DecoderConfig, FfnActivation, StepItem, flatten_step, logit_rows};
use crate::compute::attention::attention;
use crate::compute::ops::{self, RopeStyle};
use crate::compute::{ComputePool, Matrix};
use crate::error::{EngineError, Result};
use crate::formats::WeightSource;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::Checkpoint;
use crate::kv::KvPool;

pub const ARCHITECTURES: &[&str] = &["gpt2"];

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    /// `x`'s rows, normalised into `out`.
    fn apply(&self, x: &[f32], out: &mut [f32], eps: f32) {
        out.copy_from_slice(x);
        ops::layer_norm_in_place(out, &self.w, &self.b, eps);
    }
}

struct Layer {
    ln1: Norm,
    /// `[3 hidden, hidden]`: Q, K and V stacked.
    qkv: Matrix,
    b_qkv: Vec<f32>,
    o: Matrix,
    b_o: Vec<f32>,
    ln2: Norm,
    up: Matrix,
    b_up: Vec<f32>,
    down: Matrix,
    b_down: Vec<f32>,
}

pub struct Gpt2Model {
    cfg: DecoderConfig,
    embed: Matrix,
    /// The head where a file stores its own (llama.cpp's converter writes a
    /// copy of the token embeddings); None: tied to `embed`.
    output: Option<Matrix>,
    positions: Matrix,
    layers: Vec<Layer>,
    ln_f: Norm,
}

fn jusize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

/// Decoder shapes from a GPT-2 `config.json` (`n_embd`, `n_layer`…).
pub fn config_from_hf(cfg: &Value) -> Result<DecoderConfig> {
    let need = |key: &str| jusize(cfg, key).ok_or_else(|| EngineError::format(format!("config.json has no {key}")));
    let hidden = need("n_embd")?;
    let heads = need("n_head")?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(EngineError::format(format!(
            "n_embd {hidden} is not a multiple of n_head {heads}"
        )));
    }
    let ffn_act = match cfg
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new")
    {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => FfnActivation::GeluTanh,
        other => {
            return Err(EngineError::format(format!(
                "activation_function '{other}' is not supported (supported: gelu_new)"
            )));
        }
    };
    for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
        if cfg.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(EngineError::format(format!("{flag} is not supported")));
        }
    }
    // The shared attention always scales scores by 1/sqrt(head size).
    if cfg.get("scale_attn_weights").and_then(Value::as_bool) == Some(false) {
        return Err(EngineError::format("scale_attn_weights false is not supported"));
    }
    Ok(gpt2_config(
        hidden,
        heads,
        need("n_layer")?,
        jusize(cfg, "n_inner").unwrap_or(4 * hidden),
        need("vocab_size")?,
        need("n_positions")?,
        cfg.get("layer_norm_epsilon").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
        ffn_act,
    ))
}

/// Decoder shapes from GGUF metadata (`gpt2.*`, as llama.cpp writes them;
/// its GPT-2 uses the tanh GELU).
pub fn config_from_gguf(f: &GgufFile) -> Result<DecoderConfig> {
    let need = |key: &str| {
        f.get_u64(&format!("gpt2.{key}"))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| EngineError::format(format!("GGUF metadata gpt2.{key} is missing")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(EngineError::format(format!(
            "embedding length {hidden} is not a multiple of {heads} heads"
        )));
    }
    let vocab = f
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| EngineError::format("GGUF has no 2-D token_embd.weight"))? as usize;
    Ok(gpt2_config(
        hidden,
        heads,
        need("block_count")?,
        need("feed_forward_length")?,
        vocab,
        need("context_length")?,
        f.get_f64("gpt2.attention.layer_norm_epsilon").unwrap_or(1e-5) as f32,
        FfnActivation::GeluTanh,
    ))
}

#[allow(clippy::too_many_arguments)]
fn gpt2_config(
    hidden: usize,
    heads: usize,
    layers: usize,
    ffn: usize,
    vocab: usize,
    context_length: usize,
    eps: f32,
    ffn_act: FfnActivation,
) -> DecoderConfig {
    DecoderConfig {
        arch: "gpt2".into(),
        hidden,
        layers,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        ffn,
        vocab,
        context_length,
        rms_eps: eps,
        rope_theta: 0.0,
        rope_style: RopeStyle::Halves,
        // Absolute positions: no rotary.
        rope_dims: 0,
        rope_linear_scale: 1.0,
        rope_freq_factors: None,
        sliding_window: None,
        rope_theta_local: None,
        embed_scale: 1.0,
        query_scale: 1.0,
        ffn_act,
        norm_offset: 0.0,
        rope_attention_factor: 1.0,
        moe: None,
        attn_softcap: None,
        final_softcap: None,
    }
}

impl Gpt2Model {
    pub fn from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
        let ck = Checkpoint::open(dir)?;
        // `GPT2LMHeadModel` prefixes `transformer.`; OpenAI's own upload does not.
        let prefix = ["", "transformer."]
            .into_iter()
            .find(|p| ck.has(&format!("{p}wte.weight")))
            .ok_or_else(|| EngineError::format("no wte.weight in the checkpoint"))?;
        let n = |s: &str| format!("{prefix}{s}");
        let (h, ffn) = (cfg.hidden, cfg.ffn);
        let vec = |name: String, len: usize| ck.vector_len(&name, len);
        let norm = |name: String| -> Result<Norm> {
            Ok(Norm {
                w: vec(format!("{name}.weight"), h)?,
                b: vec(format!("{name}.bias"), h)?,
            })
        };
        // Conv1D weights are `[in, out]`: transposed to `[out, in]` rows.
        let conv = |name: String, inputs: usize, outputs: usize| -> Result<Matrix> {
            let m = ck.matrix_shaped(&name, inputs, outputs)?;
            let data = m.to_f32();
            let mut t = vec![0f32; data.len()];
            for (i, row) in data.chunks_exact(outputs).enumerate() {
                for (o, v) in row.iter().enumerate() {
                    t[o * inputs + i] = *v;
                }
            }
            Matrix::from_f32(outputs, inputs, t)
        };
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |s: &str| n(&format!("h.{i}.{s}"));
            layers.push(Layer {
                ln1: norm(l("ln_1"))?,
                qkv: conv(l("attn.c_attn.weight"), h, 3 * h)?,
                b_qkv: vec(l("attn.c_attn.bias"), 3 * h)?,
                o: conv(l("attn.c_proj.weight"), h, h)?,
                b_o: vec(l("attn.c_proj.bias"), h)?,
                ln2: norm(l("ln_2"))?,
                up: conv(l("mlp.c_fc.weight"), h, ffn)?,
                b_up: vec(l("mlp.c_fc.bias"), ffn)?,
                down: conv(l("mlp.c_proj.weight"), ffn, h)?,
                b_down: vec(l("mlp.c_proj.bias"), h)?,
            });
        }
        let ln_f = norm(n("ln_f"))?;
        Self::assemble(
            cfg,
            ck.matrix(&n("wte.weight"))?,
            ck.matrix(&n("wpe.weight"))?,
            layers,
            ln_f,
        )
    }

    /// A GGUF GPT-2 (llama.cpp's tensor names; any ggml weight type).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let cfg = config_from_gguf(f)?;
        let (h, ffn) = (cfg.hidden, cfg.ffn);
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                w: f.vector_len(&format!("{name}.weight"), h)?,
                b: f.vector_len(&format!("{name}.bias"), h)?,
            })
        };
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                ln1: norm(&l("attn_norm"))?,
                qkv: f.matrix_shaped(&l("attn_qkv.weight"), 3 * h, h)?,
                b_qkv: f.vector_len(&l("attn_qkv.bias"), 3 * h)?,
                o: f.matrix_shaped(&l("attn_output.weight"), h, h)?,
                b_o: f.vector_len(&l("attn_output.bias"), h)?,
                ln2: norm(&l("ffn_norm"))?,
                up: f.matrix_shaped(&l("ffn_up.weight"), ffn, h)?,
                b_up: f.vector_len(&l("ffn_up.bias"), ffn)?,
                down: f.matrix_shaped(&l("ffn_down.weight"), h, ffn)?,
                b_down: f.vector_len(&l("ffn_down.bias"), h)?,
            });
        }
        let ln_f = norm("output_norm")?;
        let embed = f.matrix("token_embd.weight")?;
        let output = if f.has("output.weight") {
            Some(f.matrix_shaped("output.weight", embed.rows(), h)?)
        } else {
            None
        };
        let mut model = Self::assemble(cfg, embed, f.matrix("position_embd.weight")?, layers, ln_f)?;
        model.output = output;
        Ok(model)
    }

    /// The model from its parts, the tables checked against the config.
    fn assemble(cfg: DecoderConfig, embed: Matrix, positions: Matrix, layers: Vec<Layer>, ln_f: Norm) -> Result<Self> {
        let h = cfg.hidden;
        if embed.cols() != h || positions.cols() != h || positions.rows() < cfg.context_length {
            return Err(EngineError::format(format!(
                "embeddings are {}x{} and positions {}x{}; the config says {h} wide and {} positions",
                embed.rows(),
                embed.cols(),
                positions.rows(),
                positions.cols(),
                cfg.context_length
            )));
        }
        let mut cfg = cfg;
        cfg.vocab = embed.rows();
        Ok(Gpt2Model {
            ln_f,
            output: None,
            embed,
            positions,
            layers,
            cfg,
        })
    }
}

impl CausalLm for Gpt2Model {
    fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn weight_bytes(&self) -> usize {
        let mut n =
            self.embed.byte_len() + self.positions.byte_len() + self.output.as_ref().map_or(0, |m| m.byte_len());
        for l in &self.layers {
            n += l.qkv.byte_len() + l.o.byte_len() + l.up.byte_len() + l.down.byte_len();
        }
        n
    }

    fn forward(&self, items: &[StepItem<'_>], kv: &mut KvPool, pool: &ComputePool) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let h = c.hidden;
        let bs = kv.layout().block_size;
        let kv = kv
            .cpu_mut()
            .ok_or_else(|| EngineError::internal("the CPU decoder was given a KV cache that is not in CPU memory"))?;
        let (places, tokens) = flatten_step(items, bs, self.embed.rows())?;
        if let Some(p) = places.iter().find(|p| p.pos >= self.positions.rows()) {
            return Err(EngineError::invalid(
                format!(
                    "position {} is past the model's {} positions",
                    p.pos,
                    self.positions.rows()
                ),
                Some("prompt"),
            ));
        }
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let mut x = vec![0f32; t * h];
        let mut row = vec![0f32; h];
        for (i, (&tok, p)) in tokens.iter().zip(&places).enumerate() {
            let xr = &mut x[i * h..(i + 1) * h];
            self.embed.row_f32(tok as usize, xr);
            self.positions.row_f32(p.pos, &mut row);
            ops::add_in_place(xr, &row);
        }
        let mut hbuf = vec![0f32; t * h];
        let mut qkv = vec![0f32; t * 3 * h];
        let (mut q, mut k, mut v) = (vec![0f32; t * h], vec![0f32; t * h], vec![0f32; t * h]);
        let mut attn = vec![0f32; t * h];
        let mut o = vec![0f32; t * h];
        let mut up = vec![0f32; t * c.ffn];
        for (li, l) in self.layers.iter().enumerate() {
            l.ln1.apply(&x, &mut hbuf, c.rms_eps);
            l.qkv.matmul(&hbuf, t, &mut qkv, pool);
            ops::add_bias(&mut qkv, &l.b_qkv);
            for i in 0..t {
                let r = &qkv[i * 3 * h..(i + 1) * 3 * h];
                q[i * h..(i + 1) * h].copy_from_slice(&r[..h]);
                k[i * h..(i + 1) * h].copy_from_slice(&r[h..2 * h]);
                v[i * h..(i + 1) * h].copy_from_slice(&r[2 * h..]);
                let (blk, slot) = places[i].kv.locate(bs, places[i].pos);
                kv.write(blk, li, slot, &k[i * h..(i + 1) * h], &v[i * h..(i + 1) * h]);
            }
            attention(&places, &q, c.heads, li, None, None, kv, &mut attn, pool);
            l.o.matmul(&attn, t, &mut o, pool);
            ops::add_bias(&mut o, &l.b_o);
            ops::add_in_place(&mut x, &o);

            l.ln2.apply(&x, &mut hbuf, c.rms_eps);
            l.up.matmul(&hbuf, t, &mut up, pool);
            ops::add_bias(&mut up, &l.b_up);
            ops::gelu_tanh_in_place(&mut up);
            l.down.matmul(&up, t, &mut o, pool);
            ops::add_bias(&mut o, &l.b_down);
            ops::add_in_place(&mut x, &o);
        }
        let rows = logit_rows(items);
        let mut sel = vec![0f32; rows.len() * h];
        for (j, &r) in rows.iter().enumerate() {
            self.ln_f
                .apply(&x[r * h..(r + 1) * h], &mut sel[j * h..(j + 1) * h], c.rms_eps);
        }
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; rows.len() * head.rows()];
        head.matmul(&sel, rows.len(), &mut logits, pool);
        Ok(logits)
    }
}
