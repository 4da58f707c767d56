//! The Llama family of decoders (llama, mistral, qwen2, qwen3): RMSNorm,
//! rotary attention with grouped KV heads, SwiGLU MLP. Loaded from GGUF (any
//! ggml type in `quant`) or a safetensors folder (f32/f16/bf16). The same code
//! runs Gemma 2 and 3, Phi-3 (fused projections, LongRoPE) and
//! mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE) through
//! settings of [`DecoderConfig`].
//!
//! `forward` runs one step over a flattened batch: the new tokens of every
//! sequence (prefill chunks and decode tokens alike) go through each linear
//! layer as one `[tokens, hidden]` matrix, and attention runs per sequence
//! against that sequence's paged KV cache.

use std::path::Path;

use serde_json::Value;

use crate::compute::attention::{RowPlace, attention};
use crate::compute::ops::{self, Rope, RopeStyle};
use crate::compute::scratch::Scratch;
use crate::compute::{ComputePool, Matrix, Projections};
use crate::error::{EngineError, Result};
use crate::formats::WeightSource;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::Checkpoint;
use crate::kv::{BlockStore, CpuBlocks, KvLayout, KvPool, SeqKv};

/// Shapes and hyper-parameters of a decoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecoderConfig {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    #[serde(skip)]
    pub rope_style: RopeStyle,
    pub rope_dims: usize,
    /// Linear position scaling factor (1 = none).
    pub rope_linear_scale: f32,
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Sliding-window attention: in the layers marked, a query attends to the
    /// last `window` keys (itself included).
    pub sliding_window: Option<SlidingWindow>,
    /// Rotary base of the sliding layers where it differs (Gemma 3: 10000
    /// locally, 1e6 globally; linear scaling applies to global layers only).
    pub rope_theta_local: Option<f32>,
    /// Token embeddings are multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: f32,
    /// Queries are multiplied by this before attention's 1/sqrt(head_dim)
    /// (Gemma's `query_pre_attn_scalar`: sqrt(head_dim / scalar)).
    pub query_scale: f32,
    /// The gated feed-forward's activation.
    pub ffn_act: FfnActivation,
    /// Added to every RMSNorm weight at load (Gemma's checkpoints store
    /// `w` for `(1 + w)`; its GGUF files have the 1 added already).
    #[serde(skip)]
    pub norm_offset: f32,
    /// Rotary cos/sin are multiplied by this (LongRoPE's attention factor).
    pub rope_attention_factor: f32,
    /// Routed experts in place of the dense feed-forward (Mixtral, Qwen2-MoE,
    /// Qwen3-MoE).
    pub moe: Option<MoeConfig>,
    /// Gemma 2's soft caps: attention scores and final logits become
    /// `cap * tanh(x / cap)`.
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
}

/// A sparse mixture-of-experts feed-forward: a router scores every expert
/// per token, the `top_k` best run, their outputs summed by weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MoeConfig {
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's feed-forward width.
    pub expert_ffn: usize,
    /// The chosen experts' softmax weights rescaled to sum to 1 (Mixtral,
    /// Qwen3-MoE's `norm_topk_prob`); else kept as over all experts.
    pub renormalize: bool,
    /// Layers with a dense feed-forward instead (Qwen's `mlp_only_layers`
    /// and `decoder_sparse_step`).
    pub dense_layers: Vec<usize>,
    /// Qwen2-MoE's shared expert: its width (every token runs it, scaled by
    /// a sigmoid gate of its own).
    pub shared_expert_ffn: Option<usize>,
}

impl MoeConfig {
    pub fn is_sparse(&self, layer: usize) -> bool {
        !self.dense_layers.contains(&layer)
    }
}

/// The activation of the gate in `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnActivation {
    /// SwiGLU (Llama, Mistral, Qwen).
    #[default]
    Silu,
    /// GeGLU with tanh-approximated GELU (Gemma).
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlidingWindow {
    pub window: usize,
    pub layers: SlidingLayers,
}

/// The layers that slide (the others attend to every position).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SlidingLayers {
    /// This layer and every later one.
    From(usize),
    /// Per layer, as `layer_types` lists them.
    Listed(Vec<bool>),
}

impl SlidingLayers {
    fn contains(&self, layer: usize) -> bool {
        match self {
            SlidingLayers::From(first) => layer >= *first,
            SlidingLayers::Listed(v) => v.get(layer) == Some(&true),
        }
    }

    /// Whether any of the first `layers` layers slides.
    fn any(&self, layers: usize) -> bool {
        match self {
            SlidingLayers::From(first) => *first < layers,
            SlidingLayers::Listed(v) => v.iter().take(layers).any(|&s| s),
        }
    }
}

impl SlidingWindow {
    /// Whether `layer` slides.
    pub fn layers_contain(&self, layer: usize) -> bool {
        self.layers.contains(layer)
    }
}

impl DecoderConfig {
    /// The attention window of `layer` (None: every earlier position).
    pub fn window(&self, layer: usize) -> Option<usize> {
        let s = self.sliding_window.as_ref()?;
        s.layers.contains(layer).then_some(s.window)
    }
}

/// Which layers slide, as transformers reads a config: `layer_types`
/// ("sliding_attention") when present; else Mistral, Mixtral and Phi-3 slide
/// in every layer with `sliding_window` (Mistral: 4096 when the key is
/// absent; none when null); Gemma 2 in even layers (4096 when absent);
/// Qwen2/Qwen3 only with `use_sliding_window`, in the layers from
/// `max_window_layers` (default 28) on (Qwen3-MoE: all); Gemma 3 configs of transformers 4
/// give `sliding_window_pattern` (every n-th layer global; 6 when absent).
fn sliding_window_from_hf(cfg: &Value, arch: &str, layers: usize) -> Result<Option<SlidingWindow>> {
    let window = match cfg.get("sliding_window") {
        None if arch == "mistral" || arch == "gemma2" => Some(4096),
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|w| usize::try_from(w).ok())
                .ok_or_else(|| EngineError::format(format!("sliding_window {v} is not a count")))?,
        ),
    };
    let sliding = match cfg.get("layer_types").and_then(Value::as_array) {
        Some(types) => SlidingLayers::Listed(types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect()),
        None if ["mistral", "mixtral", "phi3"].contains(&arch) => SlidingLayers::From(0),
        // Gemma 2 before transformers 5: even layers slide.
        None if arch == "gemma2" => SlidingLayers::Listed((0..layers.min(1 << 16)).map(|i| i % 2 == 0).collect()),
        None if is_gemma3(arch) => {
            let every = ["sliding_window_pattern", "_sliding_window_pattern"]
                .iter()
                .find_map(|k| jusize(cfg, k))
                .unwrap_or(6)
                .max(1);
            SlidingLayers::Listed((0..layers.min(1 << 16)).map(|i| (i + 1) % every != 0).collect())
        }
        // Qwen3-MoE slides in every layer; Qwen2-MoE's rule (even layers
        // below max_window_layers) is not served.
        None if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => match arch {
            "qwen3_moe" => SlidingLayers::From(0),
            "qwen2_moe" => {
                return Err(EngineError::format("use_sliding_window in qwen2_moe is not supported"));
            }
            _ => SlidingLayers::From(jusize(cfg, "max_window_layers").unwrap_or(28)),
        },
        None => return Ok(None),
    };
    match window {
        Some(w) if sliding.any(layers) => {
            if w == 0 {
                return Err(EngineError::format("sliding_window is 0"));
            }
            Ok(Some(SlidingWindow {
                window: w,
                layers: sliding,
            }))
        }
        _ => Ok(None),
    }
}

/// What the model should return for one item of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Nothing (a prefill chunk that is not the last).
    None,
    /// The last position only (the next token).
    Last,
    /// Every position (prompt logprobs / echo).
    All,
}

/// One sequence's share of a step.
#[derive(Debug)]
pub struct StepItem<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; the cache holds `0..start` already.
    pub start: usize,
    /// The sequence's cache, with blocks reserved for `start + tokens.len()`.
    pub kv: &'a SeqKv,
    pub logits: LogitsWanted,
}

/// A causal LM that can step any batch of sequences at once. The seam where a
/// GPU backend would plug in.
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &DecoderConfig;
    /// The cache layout this model needs, for a given block size.
    fn kv_layout(&self, block_size: usize) -> KvLayout {
        let c = self.config();
        KvLayout {
            layers: c.layers,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            block_size,
            elem_bytes: self.kv_elem_bytes(),
        }
    }
    /// Bytes of one cached key or value number where this model keeps its
    /// cache (f32 in CPU memory unless the model runs on a device).
    fn kv_elem_bytes(&self) -> usize {
        4
    }
    /// Storage for `max_blocks` KV blocks of `layout` where this model's
    /// forward reads them (CPU memory unless the model runs on a device).
    fn new_block_store(&self, layout: KvLayout, _max_blocks: usize) -> Result<Box<dyn BlockStore>> {
        Ok(Box::new(CpuBlocks::new(layout)))
    }
    /// Run one step: writes the new keys/values into `kv` and returns the
    /// logits rows asked for, item by item, in order (`vocab` floats each).
    fn forward(&self, items: &[StepItem<'_>], kv: &mut KvPool, pool: &ComputePool) -> Result<Vec<f32>>;
    /// Bytes of weights held.
    fn weight_bytes(&self) -> usize;
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V.
    qkv: Projections,
    wo: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: FeedForward,
    /// Gemma's norms of the attention and feed-forward outputs, before each
    /// joins the residual stream.
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A gated feed-forward: `down(act(gate x) * up x)`.
struct Mlp {
    /// gate and up.
    gate_up: Projections,
    down: Matrix,
}

impl Mlp {
    /// The gate, up and down matrices `name("gate" | "up" | "down")` of a
    /// feed-forward `width` wide.
    fn load(src: &dyn WeightSource, name: impl Fn(&str) -> String, width: usize, hidden: usize) -> Result<Self> {
        Ok(Mlp {
            gate_up: Projections::new(vec![
                src.matrix_shaped(&name("gate"), width, hidden)?,
                src.matrix_shaped(&name("up"), width, hidden)?,
            ]),
            down: src.matrix_shaped(&name("down"), hidden, width)?,
        })
    }

    fn byte_len(&self) -> usize {
        self.gate_up.byte_len() + self.down.byte_len()
    }

    /// `out[t, hidden] = down(act(gate x) * up x)`.
    fn apply(&self, x: &[f32], t: usize, act: FfnActivation, out: &mut [f32], pool: &ComputePool) {
        let ffn = self.down.cols();
        let mut gate = Scratch::<f32>::zeroed(t * ffn);
        let mut up = Scratch::<f32>::zeroed(t * ffn);
        self.gate_up.apply(x, t, &mut [&mut gate, &mut up], pool);
        match act {
            FfnActivation::Silu => ops::silu_mul(&mut gate, &up),
            FfnActivation::GeluTanh => ops::gelu_tanh_mul(&mut gate, &up),
        }
        self.down.matmul(&gate, t, out, pool);
    }
}

// One per layer, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum FeedForward {
    Dense(Mlp),
    Experts(Experts),
}

/// A router (`[experts, hidden]`) and the experts it routes to.
struct Experts {
    router: Matrix,
    experts: Vec<Mlp>,
    top_k: usize,
    renormalize: bool,
    /// Qwen2-MoE: an expert every token runs, weighted by
    /// `sigmoid(gate x)` (gate `[1, hidden]`).
    shared: Option<(Mlp, Matrix)>,
}

impl FeedForward {
    fn byte_len(&self) -> usize {
        match self {
            FeedForward::Dense(m) => m.byte_len(),
            FeedForward::Experts(e) => {
                e.router.byte_len()
                    + e.experts.iter().map(Mlp::byte_len).sum::<usize>()
                    + e.shared.as_ref().map_or(0, |(m, g)| m.byte_len() + g.byte_len())
            }
        }
    }

    fn apply(&self, x: &[f32], t: usize, act: FfnActivation, out: &mut [f32], pool: &ComputePool) {
        match self {
            FeedForward::Dense(m) => m.apply(x, t, act, out, pool),
            FeedForward::Experts(e) => e.apply(x, t, act, out, pool),
        }
    }
}

impl Experts {
    /// Route every token of `x` (`[t, hidden]`) to its `top_k` experts and
    /// sum their outputs by weight into `out`. Tokens are grouped by expert,
    /// so each expert's weights are read once per step for all the tokens
    /// it serves.
    fn apply(&self, x: &[f32], t: usize, act: FfnActivation, out: &mut [f32], pool: &ComputePool) {
        let Experts {
            router,
            experts,
            top_k,
            renormalize,
            shared,
        } = self;
        let (h, e) = (router.cols(), experts.len());
        let mut scores = vec![0f32; t * e];
        router.matmul(x, t, &mut scores, pool);
        // Per expert: (token, weight) of the tokens routed to it.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (tok, row) in scores.chunks_exact_mut(e).enumerate() {
            ops::softmax_in_place(row);
            let mut order: Vec<usize> = (0..e).collect();
            // Highest first; ties to the lower index, as torch.topk picks.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let chosen = &order[..*top_k];
            let sum: f32 = chosen.iter().map(|&i| row[i]).sum();
            for &i in chosen {
                let w = if *renormalize { row[i] / sum } else { row[i] };
                routed[i].push((tok, w));
            }
        }
        out.fill(0.0);
        for (expert, tokens) in experts.iter().zip(&routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let mut xs = vec![0f32; n * h];
            for (j, &(tok, _)) in tokens.iter().enumerate() {
                xs[j * h..(j + 1) * h].copy_from_slice(&x[tok * h..(tok + 1) * h]);
            }
            let mut ys = vec![0f32; n * h];
            expert.apply(&xs, n, act, &mut ys, pool);
            for (j, &(tok, w)) in tokens.iter().enumerate() {
                ops::axpy(w, &ys[j * h..(j + 1) * h], &mut out[tok * h..(tok + 1) * h]);
            }
        }
        if let Some((mlp, gate)) = shared {
            let mut ys = vec![0f32; t * h];
            mlp.apply(x, t, act, &mut ys, pool);
            let mut g = vec![0f32; t];
            gate.matmul(x, t, &mut g, pool);
            for (tok, g) in g.iter().enumerate() {
                let w = 1.0 / (1.0 + (-g).exp());
                ops::axpy(w, &ys[tok * h..(tok + 1) * h], &mut out[tok * h..(tok + 1) * h]);
            }
        }
    }
}

pub struct LlamaModel {
    cfg: DecoderConfig,
    rope: Rope,
    /// The sliding layers' rotary where its base differs (Gemma 3).
    rope_local: Option<Rope>,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// None: tied to `embed`.
    output: Option<Matrix>,
}

/// Tensor names of one checkpoint format (shared with other backends).
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub gguf: bool,
    /// Gemma's Hugging Face names: its `post_attention_layernorm` is the
    /// attention output's norm, `pre_feedforward_layernorm` the FFN's input.
    pub gemma: bool,
}

impl Names {
    pub fn embed(&self) -> &'static str {
        if self.gguf {
            "token_embd.weight"
        } else {
            "model.embed_tokens.weight"
        }
    }
    pub fn norm(&self) -> &'static str {
        if self.gguf {
            "output_norm.weight"
        } else {
            "model.norm.weight"
        }
    }
    pub fn output(&self) -> &'static str {
        if self.gguf { "output.weight" } else { "lm_head.weight" }
    }
    /// Layer `i`'s tensor: `part` is one of attn_norm, q, k, v, o, q_bias,
    /// k_bias, v_bias, q_norm, k_norm, ffn_norm, gate, up, down,
    /// post_attn_norm, post_ffn_norm, and the fused qkv and gate_up.
    pub fn layer(&self, i: usize, part: &str) -> String {
        if self.gguf {
            let p = match part {
                "attn_norm" => "attn_norm.weight",
                "q" => "attn_q.weight",
                "k" => "attn_k.weight",
                "v" => "attn_v.weight",
                "o" => "attn_output.weight",
                "q_bias" => "attn_q.bias",
                "k_bias" => "attn_k.bias",
                "v_bias" => "attn_v.bias",
                "q_norm" => "attn_q_norm.weight",
                "k_norm" => "attn_k_norm.weight",
                "ffn_norm" => "ffn_norm.weight",
                "post_attn_norm" => "post_attention_norm.weight",
                "post_ffn_norm" => "post_ffw_norm.weight",
                "gate" => "ffn_gate.weight",
                "up" => "ffn_up.weight",
                "qkv" => "attn_qkv.weight",
                "gate_up" => "ffn_up.weight",
                _ => "ffn_down.weight",
            };
            format!("blk.{i}.{p}")
        } else {
            let p = match part {
                "attn_norm" => "input_layernorm.weight",
                "q" => "self_attn.q_proj.weight",
                "k" => "self_attn.k_proj.weight",
                "v" => "self_attn.v_proj.weight",
                "o" => "self_attn.o_proj.weight",
                "q_bias" => "self_attn.q_proj.bias",
                "k_bias" => "self_attn.k_proj.bias",
                "v_bias" => "self_attn.v_proj.bias",
                "q_norm" => "self_attn.q_norm.weight",
                "k_norm" => "self_attn.k_norm.weight",
                "ffn_norm" if self.gemma => "pre_feedforward_layernorm.weight",
                "ffn_norm" => "post_attention_layernorm.weight",
                "post_attn_norm" => "post_attention_layernorm.weight",
                "post_ffn_norm" => "post_feedforward_layernorm.weight",
                "gate" => "mlp.gate_proj.weight",
                "up" => "mlp.up_proj.weight",
                "qkv" => "self_attn.qkv_proj.weight",
                "gate_up" => "mlp.gate_up_proj.weight",
                _ => "mlp.down_proj.weight",
            };
            format!("model.layers.{i}.{p}")
        }
    }

    /// Layer `i`'s router and, by expert and part (gate, up, down), its
    /// experts' tensors: Mixtral's `block_sparse_moe` (w1, w3, w2) or
    /// Qwen3-MoE's `mlp` names, whichever the checkpoint has.
    pub fn experts(&self, i: usize, src: &dyn WeightSource) -> (String, impl Fn(usize, &str) -> String) {
        let mixtral = src.has(&format!("model.layers.{i}.block_sparse_moe.gate.weight"));
        let router = if mixtral {
            format!("model.layers.{i}.block_sparse_moe.gate.weight")
        } else {
            format!("model.layers.{i}.mlp.gate.weight")
        };
        let expert = move |e: usize, part: &str| {
            let (m, g, u, d) = if mixtral {
                ("block_sparse_moe", "w1", "w3", "w2")
            } else {
                ("mlp", "gate_proj", "up_proj", "down_proj")
            };
            let p = match part {
                "gate" => g,
                "up" => u,
                _ => d,
            };
            format!("model.layers.{i}.{m}.experts.{e}.{p}.weight")
        };
        (router, expert)
    }
}

/// Architectures this skill serves (GGUF `general.architecture` and HF
/// `model_type` share these names).
pub const ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Gemma 3 runs on the same code (its differences are settings of
/// [`DecoderConfig`] and optional norms); a skill of its own, since the
/// device backends do not run it.
pub const GEMMA_ARCHITECTURES: &[&str] = &["gemma3", "gemma3_text"];

/// Phi-3 (fused projections, partial rotary, LongRoPE): settings of the
/// same code; CPU only.
pub const PHI3_ARCHITECTURES: &[&str] = &["phi3"];

/// Mixture-of-experts decoders: Llama-style attention, routed SwiGLU
/// experts; CPU only; safetensors, and Mixtral GGUF files (see
/// `skills::gguf_architecture`).
pub const MOE_ARCHITECTURES: &[&str] = &["mixtral", "qwen2_moe", "qwen3_moe"];

/// Gemma 2 (safetensors): Gemma 3's code with soft caps, no QK-norm and
/// one rotary base; a skill of its own, since its GGUF files are not read.
pub const GEMMA2_ARCHITECTURES: &[&str] = &["gemma2"];

/// Is `arch` Gemma 3?
fn is_gemma3(arch: &str) -> bool {
    GEMMA_ARCHITECTURES.contains(&arch)
}

/// Is `arch` Gemma 2 or 3 (scaled embeddings, GeGLU, (1 + w) norms,
/// post norms)?
fn is_gemma(arch: &str) -> bool {
    is_gemma3(arch) || GEMMA2_ARCHITECTURES.contains(&arch)
}

/// What Gemma does the same in every checkpoint format: embeddings scaled
/// by sqrt(hidden), GeGLU.
fn gemma_settings(cfg: DecoderConfig) -> DecoderConfig {
    DecoderConfig {
        embed_scale: (cfg.hidden as f32).sqrt(),
        ffn_act: FfnActivation::GeluTanh,
        ..cfg
    }
}

fn gguf_u(f: &GgufFile, arch: &str, key: &str) -> Option<usize> {
    f.get_u64(&format!("{arch}.{key}")).map(|v| v as usize)
}

/// Decoder shapes from GGUF metadata (no tensor data read).
pub fn config_from_gguf(f: &GgufFile) -> Result<DecoderConfig> {
    let arch = f.architecture().unwrap_or("llama").to_string();
    let need = |key: &str| {
        gguf_u(f, &arch, key).ok_or_else(|| EngineError::format(format!("GGUF metadata {arch}.{key} is missing")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = gguf_u(f, &arch, "attention.head_count_kv").unwrap_or(heads);
    let head_dim = gguf_u(f, &arch, "attention.key_length").unwrap_or(hidden / heads.max(1));
    let vocab = gguf_u(f, &arch, "vocab_size")
        .or_else(|| {
            f.get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
        })
        .ok_or_else(|| EngineError::format("GGUF has no vocabulary size"))?;
    let rope_style = match arch.as_str() {
        "llama" | "mistral" => RopeStyle::Interleaved,
        _ => RopeStyle::Halves,
    };
    let rope_theta = f.get_f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0) as f32;
    let rope_linear_scale = match f.get_str(&format!("{arch}.rope.scaling.type")) {
        Some("linear") => f.get_f64(&format!("{arch}.rope.scaling.factor")).unwrap_or(1.0) as f32,
        _ => 1.0,
    };
    let layers = need("block_count")?;
    // llama.cpp writes Mixtral as `llama` with experts (renormalised top-k,
    // as Mixtral is); other MoE architectures' GGUF routing is not read.
    let moe = match gguf_u(f, &arch, "expert_count") {
        Some(experts) if experts > 0 => {
            if arch != "llama" {
                return Err(EngineError::format(format!(
                    "GGUF mixture-of-experts models of architecture {arch} are not supported (Mixtral's, written as llama, are)"
                )));
            }
            let top_k = gguf_u(f, &arch, "expert_used_count").unwrap_or(2);
            if top_k == 0 || top_k > experts {
                return Err(EngineError::format(format!(
                    "{arch}.expert_used_count {top_k} with {experts} experts"
                )));
            }
            Some(MoeConfig {
                experts,
                top_k,
                expert_ffn: need("feed_forward_length")?,
                renormalize: true,
                dense_layers: Vec::new(),
                shared_expert_ffn: None,
            })
        }
        _ => None,
    };
    let gemma = is_gemma3(&arch);
    // llama.cpp's Gemma 3: every sixth layer global, the others sliding
    // with a rotary base of 10000; queries scaled by 1/sqrt(hidden/heads)
    // in the 27B model, by 1/sqrt(head_dim) in the others.
    let phi3 = arch == "phi3";
    let sliding_window = match gguf_u(f, &arch, "attention.sliding_window") {
        Some(window) if gemma && window > 0 => Some(SlidingWindow {
            window,
            layers: SlidingLayers::Listed((0..layers.min(1 << 16)).map(|i| (i + 1) % 6 != 0).collect()),
        }),
        // llama.cpp's Phi-3 slides in every layer.
        Some(window) if phi3 && window > 0 => Some(SlidingWindow {
            window,
            layers: SlidingLayers::From(0),
        }),
        // llama.cpp's Llama/Qwen2 GGUF keys carry no window (it runs
        // Mistral GGUFs with full attention too).
        _ => None,
    };
    let query_scale = if gemma && layers == 62 && heads > 0 {
        (head_dim as f32 / (hidden / heads) as f32).sqrt()
    } else {
        1.0
    };
    let mut context_length = gguf_u(f, &arch, "context_length").unwrap_or(2048);
    // Phi-3's LongRoPE as llama.cpp writes it: `rope_factors_short` (read
    // by the loader), an attention factor, the pretraining length; served
    // with the short factors, so up to that length (see config_from_hf).
    let mut rope_attention_factor = 1.0;
    if phi3 && f.has("rope_factors_short.weight") {
        rope_attention_factor = match f.get_f64(&format!("{arch}.rope.scaling.attn_factor")) {
            Some(a) if a.is_finite() && a > 0.0 => a as f32,
            Some(a) => {
                return Err(EngineError::format(format!(
                    "{arch}.rope.scaling.attn_factor {a} is not positive"
                )));
            }
            None => 1.0,
        };
        if let Some(original) = gguf_u(f, &arch, "rope.scaling.original_context_length") {
            context_length = context_length.min(original);
        }
    }
    let cfg = DecoderConfig {
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        ffn: need("feed_forward_length")?,
        vocab,
        context_length,
        sliding_window,
        rope_theta_local: gemma.then_some(10000.0),
        embed_scale: 1.0,
        query_scale,
        ffn_act: FfnActivation::Silu,
        norm_offset: 0.0,
        rope_attention_factor,
        moe,
        attn_softcap: None,
        final_softcap: None,
        rms_eps: f
            .get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32,
        rope_theta,
        rope_style,
        rope_dims: gguf_u(f, &arch, "rope.dimension_count").unwrap_or(head_dim),
        rope_linear_scale,
        rope_freq_factors: None,
        arch,
    };
    Ok(if gemma { gemma_settings(cfg) } else { cfg })
}

/// Mixture-of-experts settings of a Hugging Face config: `num_local_experts`
/// (Qwen3-MoE's configs before transformers 5: `num_experts`, with its own
/// `moe_intermediate_size` and dense layers); None for a dense model.
fn moe_from_hf(cfg: &Value, arch: &str, layers: usize) -> Result<Option<MoeConfig>> {
    let Some(experts) = jusize(cfg, "num_local_experts").or_else(|| jusize(cfg, "num_experts")) else {
        return Ok(None);
    };
    if experts == 0 {
        return Ok(None);
    }
    // transformers' defaults differ by architecture (2, 4, 8): required.
    let top_k = jusize(cfg, "num_experts_per_tok")
        .ok_or_else(|| EngineError::format("config.json has no num_experts_per_tok"))?;
    if top_k == 0 || top_k > experts {
        return Err(EngineError::format(format!(
            "num_experts_per_tok {top_k} with {experts} experts"
        )));
    }
    // Mixtral's experts are intermediate_size wide, Qwen's moe_intermediate_size.
    let expert_ffn = if arch == "mixtral" {
        jusize(cfg, "intermediate_size")
    } else {
        jusize(cfg, "moe_intermediate_size")
    }
    .ok_or_else(|| EngineError::format("config.json has no expert width (moe_intermediate_size)"))?;
    // Mixtral always renormalises; Qwen2/3-MoE as `norm_topk_prob` says.
    let renormalize = arch == "mixtral" || cfg.get("norm_topk_prob").and_then(Value::as_bool).unwrap_or(false);
    let mut dense_layers: Vec<usize> = cfg
        .get("mlp_only_layers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_u64().map(|x| x as usize)).collect())
        .unwrap_or_default();
    let step = jusize(cfg, "decoder_sparse_step").unwrap_or(1).max(1);
    dense_layers.extend((0..layers.min(1 << 16)).filter(|l| (l + 1) % step != 0));
    dense_layers.sort_unstable();
    dense_layers.dedup();
    // Qwen2-MoE always has a shared expert (transformers builds one whatever
    // the config says): its width is required.
    let shared_expert_ffn = jusize(cfg, "shared_expert_intermediate_size").filter(|&n| n > 0);
    match (arch, shared_expert_ffn) {
        ("qwen2_moe", None) => {
            return Err(EngineError::format(
                "config.json has no shared_expert_intermediate_size",
            ));
        }
        ("qwen2_moe", Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(EngineError::format(format!(
                "a shared expert in {arch} is not supported"
            )));
        }
    }
    Ok(Some(MoeConfig {
        experts,
        top_k,
        expert_ffn,
        renormalize,
        dense_layers,
        shared_expert_ffn,
    }))
}

fn jusize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

fn jf32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(|x| x.as_f64()).map(|x| x as f32)
}

/// Decoder shapes from a Hugging Face `config.json`.
pub fn config_from_hf(cfg: &Value) -> Result<DecoderConfig> {
    let arch = cfg
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("llama")
        .to_string();
    let need = |key: &str| jusize(cfg, key).ok_or_else(|| EngineError::format(format!("config.json has no {key}")));
    let hidden = need("hidden_size")?;
    let heads = need("num_attention_heads")?;
    let head_dim = jusize(cfg, "head_dim").unwrap_or(hidden / heads.max(1));
    // transformers 5 moved rope settings into `rope_parameters`.
    let rope_params = cfg.get("rope_parameters").cloned().unwrap_or(Value::Null);
    let scaling = cfg
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| rope_params.clone());
    // Gemma 3 in transformers 5 nests rope settings per layer type.
    let full = rope_params.get("full_attention").cloned().unwrap_or(Value::Null);
    let local = rope_params.get("sliding_attention").cloned().unwrap_or(Value::Null);
    let rope_theta = jf32(cfg, "rope_theta")
        .or_else(|| jf32(&rope_params, "rope_theta"))
        .or_else(|| jf32(&full, "rope_theta"))
        .unwrap_or(10000.0);
    let scaling = if full.is_null() || cfg.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        scaling
    } else {
        full.clone()
    };
    let partial = jf32(cfg, "partial_rotary_factor")
        .or_else(|| jf32(&rope_params, "partial_rotary_factor"))
        .unwrap_or(1.0);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(EngineError::format(format!(
            "partial_rotary_factor {partial} is not in (0, 1]"
        )));
    }
    let rope_dims = (head_dim as f32 * partial) as usize;
    let rope_type = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default")
        .to_string();
    let mut rope_linear_scale = 1.0;
    let mut rope_freq_factors = None;
    let mut rope_attention_factor = 1.0;
    let mut context_length = jusize(cfg, "max_position_embeddings").unwrap_or(2048);
    match rope_type.as_str() {
        "default" => {}
        "linear" => rope_linear_scale = jf32(&scaling, "factor").unwrap_or(1.0),
        "llama3" => {
            rope_freq_factors = Some(Rope::llama3_factors(
                rope_dims,
                rope_theta,
                jf32(&scaling, "factor").unwrap_or(8.0),
                jf32(&scaling, "low_freq_factor").unwrap_or(1.0),
                jf32(&scaling, "high_freq_factor").unwrap_or(4.0),
                jf32(&scaling, "original_max_position_embeddings").unwrap_or(8192.0),
            ))
        }
        // Phi-3's LongRoPE: per-frequency divisors, the short ones up to the
        // pretraining length, the long ones past it. transformers switches
        // when a sequence grows past it, recomputing every position; a
        // cache of rotated keys cannot, so this serves the pretraining
        // length with the short factors (llama.cpp chooses by its context
        // size the same way).
        "longrope" => {
            // The GPU backends do not run it: Phi-3 is CPU only.
            if arch != "phi3" {
                return Err(EngineError::format(format!(
                    "longrope rotary in {arch} is not supported"
                )));
            }
            // transformers' order: the top-level key, the rope settings', the context.
            let original = jusize(cfg, "original_max_position_embeddings")
                .or_else(|| jusize(&scaling, "original_max_position_embeddings"))
                .unwrap_or(context_length);
            let short: Vec<f32> = scaling
                .get("short_factor")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_f64().map(|x| x as f32)).collect())
                .unwrap_or_default();
            if short.len() != rope_dims / 2 || short.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                return Err(EngineError::format(format!(
                    "longrope short_factor must hold {} positive numbers",
                    rope_dims / 2
                )));
            }
            let factor = jf32(&scaling, "factor").unwrap_or(context_length as f32 / original.max(1) as f32);
            rope_attention_factor = match jf32(&scaling, "attention_factor") {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f32).ln()).sqrt(),
            };
            rope_freq_factors = Some(short);
            context_length = context_length.min(original);
        }
        other => {
            return Err(EngineError::format(format!(
                "rope scaling '{other}' is not supported (supported: default, linear, llama3, longrope)"
            )));
        }
    }
    let sliding_window = sliding_window_from_hf(cfg, &arch, need("num_hidden_layers")?)?;
    let gemma = is_gemma(&arch);
    // Gemma 2's defaults where a key is absent (null turns a cap off).
    let softcap = |key: &str, gemma2_default: f32| -> Result<Option<f32>> {
        match cfg.get(key) {
            None if arch == "gemma2" => Ok(Some(gemma2_default)),
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(c) if c > 0.0 && c.is_finite() => Ok(Some(c as f32)),
                _ => Err(EngineError::format(format!("{key} {v} is not a positive number"))),
            },
        }
    };
    let (attn_softcap, final_softcap) = (
        softcap("attn_logit_softcapping", 50.0)?,
        softcap("final_logit_softcapping", 30.0)?,
    );
    if (attn_softcap.is_some() || final_softcap.is_some()) && arch != "gemma2" {
        return Err(EngineError::format("logit soft-capping is supported for gemma2 only"));
    }
    if gemma {
        match cfg.get("hidden_activation").and_then(Value::as_str) {
            None | Some("gelu_pytorch_tanh") => {}
            Some(other) => {
                return Err(EngineError::format(format!(
                    "hidden_activation '{other}' is not supported (supported: gelu_pytorch_tanh)"
                )));
            }
        }
    }
    let moe = moe_from_hf(cfg, &arch, need("num_hidden_layers")?)?;
    let query_scale = match jf32(cfg, "query_pre_attn_scalar") {
        Some(s) if gemma && s > 0.0 => (head_dim as f32 / s).sqrt(),
        _ => 1.0,
    };
    let cfg = DecoderConfig {
        hidden,
        layers: need("num_hidden_layers")?,
        heads,
        kv_heads: jusize(cfg, "num_key_value_heads").unwrap_or(heads),
        head_dim,
        ffn: need("intermediate_size")?,
        vocab: need("vocab_size")?,
        context_length,
        sliding_window,
        rope_theta_local: if is_gemma3(&arch) {
            Some(
                jf32(cfg, "rope_local_base_freq")
                    .or_else(|| jf32(&local, "rope_theta"))
                    .unwrap_or(10000.0),
            )
        } else {
            None
        },
        embed_scale: 1.0,
        query_scale,
        ffn_act: FfnActivation::Silu,
        norm_offset: if gemma { 1.0 } else { 0.0 },
        rope_attention_factor,
        moe,
        attn_softcap,
        final_softcap,
        rms_eps: jf32(cfg, "rms_norm_eps").unwrap_or(1e-6),
        rope_theta,
        rope_style: RopeStyle::Halves,
        rope_dims,
        rope_linear_scale,
        rope_freq_factors,
        arch,
    };
    Ok(if gemma { gemma_settings(cfg) } else { cfg })
}

impl LlamaModel {
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let mut cfg = config_from_gguf(f)?;
        // Per-frequency divisors: Llama 3's rope_freqs, Phi-3's short factors.
        for name in ["rope_freqs.weight", "rope_factors_short.weight"] {
            if f.has(name) {
                let factors = f.vector_len(name, cfg.rope_dims / 2)?;
                if factors.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(EngineError::format(format!(
                        "{name} holds a factor that is not positive"
                    )));
                }
                cfg.rope_freq_factors = Some(factors);
            }
        }
        Self::load(
            cfg,
            f,
            Some(f),
            Names {
                gguf: true,
                gemma: false,
            },
            true,
        )
    }

    pub fn from_safetensors(dir: &Path, cfg_json: &Value) -> Result<Self> {
        let cfg = config_from_hf(cfg_json)?;
        let ckpt = Checkpoint::open(dir)?;
        let tied = cfg_json
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let names = Names {
            gguf: false,
            gemma: is_gemma(&cfg.arch),
        };
        // Gemma ties its head unless the config says otherwise.
        let tied = tied || (names.gemma && cfg_json.get("tie_word_embeddings").is_none());
        Self::load(cfg, &ckpt, None, names, tied)
    }

    /// `gguf_experts`: the file, when `src` is a GGUF, whose experts are
    /// stacked 3-D tensors.
    fn load(
        cfg: DecoderConfig,
        src: &dyn WeightSource,
        gguf_experts: Option<&GgufFile>,
        n: Names,
        may_tie: bool,
    ) -> Result<Self> {
        if cfg.heads == 0 || cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
            return Err(EngineError::format(format!(
                "{} query heads cannot be grouped over {} KV heads",
                cfg.heads, cfg.kv_heads
            )));
        }
        let opt_vec = |name: String, len: usize| -> Result<Option<Vec<f32>>> {
            if src.has(&name) {
                src.vector_len(&name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let norm_offset = cfg.norm_offset;
        let offset = move |mut w: Vec<f32>| {
            w.iter_mut().for_each(|v| *v += norm_offset);
            w
        };
        let norm = |name: String, len: usize| src.vector_len(&name, len).map(offset);
        let opt_norm = |name: String, len: usize| opt_vec(name, len).map(|w| w.map(offset));
        // Grown as layers load: a huge layer count in the metadata fails on
        // its first missing tensor, never in one allocation.
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let q_out = cfg.heads * cfg.head_dim;
            let kv_out = cfg.kv_heads * cfg.head_dim;
            let h = cfg.hidden;
            // Phi-3 stores Q, K and V as one matrix.
            let qkv = if src.has(&n.layer(i, "qkv")) {
                let m = src.matrix_shaped(&n.layer(i, "qkv"), q_out + 2 * kv_out, h)?;
                Projections::from_fused(m, vec![q_out, kv_out, kv_out])?
            } else {
                Projections::new(vec![
                    src.matrix_shaped(&n.layer(i, "q"), q_out, h)?,
                    src.matrix_shaped(&n.layer(i, "k"), kv_out, h)?,
                    src.matrix_shaped(&n.layer(i, "v"), kv_out, h)?,
                ])
            };
            let wo = src.matrix_shaped(&n.layer(i, "o"), h, q_out)?;
            let ffn = match &cfg.moe {
                Some(moe) if moe.is_sparse(i) => {
                    let (router, experts) = match gguf_experts {
                        Some(f) => {
                            let stack = |part: &str, rows: usize, cols: usize| {
                                f.matrix_stack(&format!("blk.{i}.ffn_{part}_exps.weight"), moe.experts, rows, cols)
                            };
                            let gates = stack("gate", moe.expert_ffn, h)?;
                            let ups = stack("up", moe.expert_ffn, h)?;
                            let downs = stack("down", h, moe.expert_ffn)?;
                            let experts = gates
                                .into_iter()
                                .zip(ups)
                                .zip(downs)
                                .map(|((gate, up), down)| Mlp {
                                    gate_up: Projections::new(vec![gate, up]),
                                    down,
                                })
                                .collect();
                            (format!("blk.{i}.ffn_gate_inp.weight"), experts)
                        }
                        None => {
                            let (router, expert) = n.experts(i, src);
                            let mut experts = Vec::new();
                            for e in 0..moe.experts {
                                let name = |part: &str| expert(e, part);
                                experts.push(Mlp::load(src, name, moe.expert_ffn, h)?);
                            }
                            (router, experts)
                        }
                    };
                    let shared = match moe.shared_expert_ffn {
                        Some(w) => {
                            let p = |part: &str| format!("model.layers.{i}.mlp.shared_expert.{part}_proj.weight");
                            let gate = format!("model.layers.{i}.mlp.shared_expert_gate.weight");
                            Some((Mlp::load(src, p, w, h)?, src.matrix_shaped(&gate, 1, h)?))
                        }
                        None => None,
                    };
                    FeedForward::Experts(Experts {
                        shared,
                        router: src.matrix_shaped(&router, moe.experts, h)?,
                        experts,
                        top_k: moe.top_k,
                        renormalize: moe.renormalize,
                    })
                }
                _ => {
                    // Phi-3 stores gate and up as one matrix, gate first
                    // (llama.cpp's: `ffn_up` twice as high, no `ffn_gate`).
                    let fused = if n.gguf {
                        !src.has(&n.layer(i, "gate"))
                    } else {
                        src.has(&n.layer(i, "gate_up"))
                    };
                    FeedForward::Dense(if fused {
                        let m = src.matrix_shaped(&n.layer(i, "gate_up"), 2 * cfg.ffn, h)?;
                        Mlp {
                            gate_up: Projections::from_fused(m, vec![cfg.ffn, cfg.ffn])?,
                            down: src.matrix_shaped(&n.layer(i, "down"), h, cfg.ffn)?,
                        }
                    } else {
                        Mlp::load(src, |part| n.layer(i, part), cfg.ffn, h)?
                    })
                }
            };
            let l = Layer {
                attn_norm: norm(n.layer(i, "attn_norm"), cfg.hidden)?,
                qkv,
                wo,
                bq: opt_vec(n.layer(i, "q_bias"), q_out)?,
                bk: opt_vec(n.layer(i, "k_bias"), kv_out)?,
                bv: opt_vec(n.layer(i, "v_bias"), kv_out)?,
                // Per-head norms (Qwen3): one weight per head dimension.
                q_norm: opt_norm(n.layer(i, "q_norm"), cfg.head_dim)?,
                k_norm: opt_norm(n.layer(i, "k_norm"), cfg.head_dim)?,
                ffn_norm: norm(n.layer(i, "ffn_norm"), cfg.hidden)?,
                ffn,
                // Llama's HF names reuse `post_attention_layernorm` for the
                // FFN's input norm: only Gemma has these two.
                post_attn_norm: match n.gguf || n.gemma {
                    true => opt_norm(n.layer(i, "post_attn_norm"), cfg.hidden)?,
                    false => None,
                },
                post_ffn_norm: opt_norm(n.layer(i, "post_ffn_norm"), cfg.hidden)?,
            };
            layers.push(l);
        }
        if is_gemma(&cfg.arch)
            && let Some(i) = layers
                .iter()
                .position(|l: &Layer| l.post_attn_norm.is_none() || l.post_ffn_norm.is_none())
        {
            return Err(EngineError::format(format!(
                "layer {i} lacks Gemma's post-attention or post-feed-forward norm"
            )));
        }
        let embed = src.matrix(n.embed())?;
        if embed.cols() != cfg.hidden {
            return Err(EngineError::format(
                "token embedding width does not match the hidden size",
            ));
        }
        let output = if src.has(n.output()) {
            let out = src.matrix(n.output())?;
            if out.cols() != cfg.hidden {
                return Err(EngineError::format(
                    "output projection width does not match the hidden size",
                ));
            }
            Some(out)
        } else if may_tie {
            None
        } else {
            return Err(EngineError::format("output projection is missing"));
        };
        let final_norm = norm(n.norm().to_string(), cfg.hidden)?;
        let mut cfg = cfg;
        // The real vocabulary is the output projection's height.
        cfg.vocab = output.as_ref().map(|m| m.rows()).unwrap_or(embed.rows());
        let rope = Rope::new(
            cfg.rope_style,
            cfg.rope_dims,
            cfg.rope_theta,
            cfg.rope_freq_factors.as_deref(),
            cfg.rope_linear_scale,
        )
        .with_attention_factor(cfg.rope_attention_factor);
        let rope_local = cfg
            .rope_theta_local
            .map(|theta| Rope::new(cfg.rope_style, cfg.rope_dims, theta, None, 1.0));
        Ok(LlamaModel {
            norm: final_norm,
            rope,
            rope_local,
            embed,
            layers,
            output,
            cfg,
        })
    }

    fn output_matrix(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

/// A step's items flattened, one row per new token: where each row's
/// key and value go, and its token (checked against a vocabulary of
/// `vocab` rows; `bs`: the cache's block size).
pub(crate) fn flatten_step<'a>(
    items: &'a [StepItem<'a>],
    bs: usize,
    vocab: usize,
) -> Result<(Vec<RowPlace<'a>>, Vec<u32>)> {
    let mut places = Vec::new();
    let mut tokens = Vec::new();
    for it in items {
        if it.kv.blocks.len() * bs < it.start + it.tokens.len() {
            return Err(EngineError::internal("KV blocks were not reserved for a step"));
        }
        for (i, &t) in it.tokens.iter().enumerate() {
            if t as usize >= vocab {
                return Err(EngineError::invalid(
                    format!("token id {t} is outside the vocabulary (size {vocab})"),
                    Some("prompt"),
                ));
            }
            places.push(RowPlace {
                kv: it.kv,
                pos: it.start + i,
            });
            tokens.push(t);
        }
    }
    Ok((places, tokens))
}

/// The flattened rows whose logits the items asked for, in order.
pub(crate) fn logit_rows(items: &[StepItem<'_>]) -> Vec<usize> {
    let mut rows = Vec::new();
    let mut base = 0;
    for it in items {
        let n = it.tokens.len();
        match it.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last => rows.push(base + n - 1),
            LogitsWanted::All => rows.extend(base..base + n),
        }
        base += n;
    }
    rows
}

impl CausalLm for LlamaModel {
    fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn weight_bytes(&self) -> usize {
        let mut n = self.embed.byte_len() + self.output.as_ref().map_or(0, |m| m.byte_len());
        for l in &self.layers {
            n += l.qkv.byte_len() + l.ffn.byte_len() + l.wo.byte_len();
        }
        n
    }

    fn forward(&self, items: &[StepItem<'_>], kv: &mut KvPool, pool: &ComputePool) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim);
        let q_dim = c.heads * hd;
        let kv_dim = c.kv_heads * hd;
        let bs = kv.layout().block_size;
        let kv = kv
            .cpu_mut()
            .ok_or_else(|| EngineError::internal("the CPU decoder was given a KV cache that is not in CPU memory"))?;

        let (places, tokens) = flatten_step(items, bs, self.embed.rows())?;
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }

        let mut x = Scratch::<f32>::zeroed(t * h);
        for (i, &tok) in tokens.iter().enumerate() {
            self.embed.row_f32(tok as usize, &mut x[i * h..(i + 1) * h]);
        }
        if c.embed_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= c.embed_scale);
        }
        let half = self.rope.dims / 2;
        let angles_of = |rope: &Rope| {
            let mut cs = vec![0f32; t * 2 * half];
            for (i, p) in places.iter().enumerate() {
                rope.angles(p.pos, &mut cs[i * 2 * half..(i + 1) * 2 * half]);
            }
            cs
        };
        let cs_global = angles_of(&self.rope);
        let cs_local = self.rope_local.as_ref().map(angles_of);

        let mut hbuf = Scratch::<f32>::zeroed(t * h);
        let mut q = Scratch::<f32>::zeroed(t * q_dim);
        let mut k = Scratch::<f32>::zeroed(t * kv_dim);
        let mut v = Scratch::<f32>::zeroed(t * kv_dim);
        let mut attn = Scratch::<f32>::zeroed(t * q_dim);
        let mut o = Scratch::<f32>::zeroed(t * h);

        for (li, l) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &l.attn_norm, c.rms_eps, &mut hbuf);
            l.qkv.apply(&hbuf, t, &mut [&mut q, &mut k, &mut v], pool);
            if let Some(b) = &l.bq {
                ops::add_bias(&mut q, b);
            }
            if let Some(b) = &l.bk {
                ops::add_bias(&mut k, b);
            }
            if let Some(b) = &l.bv {
                ops::add_bias(&mut v, b);
            }
            if let Some(w) = &l.q_norm {
                ops::rms_norm_in_place(&mut q, w, c.rms_eps);
            }
            if let Some(w) = &l.k_norm {
                ops::rms_norm_in_place(&mut k, w, c.rms_eps);
            }
            if c.query_scale != 1.0 {
                q.iter_mut().for_each(|v| *v *= c.query_scale);
            }
            let cs = match &cs_local {
                Some(local) if c.window(li).is_some() => local,
                _ => &cs_global,
            };
            for i in 0..t {
                let angles = &cs[i * 2 * half..(i + 1) * 2 * half];
                self.rope.apply(&mut q[i * q_dim..(i + 1) * q_dim], hd, angles);
                self.rope.apply(&mut k[i * kv_dim..(i + 1) * kv_dim], hd, angles);
                let (blk, slot) = places[i].kv.locate(bs, places[i].pos);
                kv.write(
                    blk,
                    li,
                    slot,
                    &k[i * kv_dim..(i + 1) * kv_dim],
                    &v[i * kv_dim..(i + 1) * kv_dim],
                );
            }
            attention(
                &places,
                &q,
                c.heads,
                li,
                c.window(li),
                c.attn_softcap,
                kv,
                &mut attn,
                pool,
            );
            l.wo.matmul(&attn, t, &mut o, pool);
            if let Some(w) = &l.post_attn_norm {
                ops::rms_norm_in_place(&mut o, w, c.rms_eps);
            }
            ops::add_in_place(&mut x, &o);

            ops::rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut hbuf);
            l.ffn.apply(&hbuf, t, c.ffn_act, &mut o, pool);
            if let Some(w) = &l.post_ffn_norm {
                ops::rms_norm_in_place(&mut o, w, c.rms_eps);
            }
            ops::add_in_place(&mut x, &o);
        }

        // Only the rows whose logits were asked for go through the head.
        let rows = logit_rows(items);
        let mut sel = Scratch::<f32>::zeroed(rows.len() * h);
        for (j, &r) in rows.iter().enumerate() {
            ops::rms_norm(
                &x[r * h..(r + 1) * h],
                &self.norm,
                c.rms_eps,
                &mut sel[j * h..(j + 1) * h],
            );
        }
        let out_m = self.output_matrix();
        // A step buffer too: the scheduler gives it back once it has sampled.
        let mut logits = Scratch::<f32>::zeroed(rows.len() * out_m.rows()).into_vec();
        out_m.matmul(&sel, rows.len(), &mut logits, pool);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Ok(logits)
    }
}
