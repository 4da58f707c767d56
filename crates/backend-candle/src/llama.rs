//! Llama-family decoders on a candle device.

use std::fs::File;

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{D, DType, Device, Module, Tensor};
use hfms_engine::compute::ComputePool;
use hfms_engine::compute::ops::{Rope, RopeStyle};
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::kv::{BlockId, BlockStore, KvLayout, KvPool};
use hfms_engine::skills::hf::HfFolder;
use hfms_engine::skills::llama::{
    CausalLm, DecoderConfig, LogitsWanted, Names, StepItem, config_from_gguf, config_from_hf,
};
use hfms_engine::skills::{Format, ModelSource};
use hfms_engine::{EngineError, Result};

use crate::{Precision, err};

/// A weight matrix: quantised (GGUF) or a plain tensor `[out, in]`.
enum Linear {
    Quant(QMatMul),
    Dense(Tensor),
}

impl Linear {
    /// `x[t, in]` (f32) → `[t, out]` (f32).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quant(q) => q.forward(x),
            Linear::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32),
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct CandleLlama {
    cfg: DecoderConfig,
    device: Device,
    precision: Precision,
    rope: Rope,
    /// `[vocab, hidden]`, in the weights' precision.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    weight_bytes: usize,
}

/// Where tensors come from while loading.
enum Source {
    Gguf { content: gguf_file::Content, file: File },
    St(MmapedSafetensors),
}

impl Source {
    fn has(&self, name: &str) -> bool {
        match self {
            Source::Gguf { content, .. } => content.tensor_infos.contains_key(name),
            Source::St(st) => st.get(name).is_ok(),
        }
    }

    /// A table (the embeddings) in the dtype it is stored in; GGUF
    /// quantised tables dequantised to f32, or to f16 where the precision
    /// is 16-bit.
    fn table(&mut self, name: &str, device: &Device, precision: Precision) -> Result<Tensor> {
        match self {
            Source::Gguf { content, file } => content.tensor(file, name, device).and_then(|q| {
                if precision.weights == DType::F32 {
                    q.dequantize(device)
                } else {
                    q.dequantize_f16(device)
                }
            }),
            Source::St(st) => st.load(name, device),
        }
        .map_err(|e| load_err(name, e))
    }

    fn vector(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let t = match self {
            Source::Gguf { content, file } => content.tensor(file, name, device).and_then(|q| q.dequantize(device)),
            Source::St(st) => st.load(name, device),
        };
        t.and_then(|t| t.to_dtype(DType::F32)).map_err(|e| load_err(name, e))
    }

    fn linear(&mut self, name: &str, device: &Device, precision: Precision) -> Result<(Linear, usize)> {
        match self {
            Source::Gguf { content, file } => {
                let q = content.tensor(file, name, device).map_err(|e| load_err(name, e))?;
                let bytes = q.storage_size_in_bytes();
                Ok((
                    Linear::Quant(QMatMul::from_qtensor(q).map_err(|e| load_err(name, e))?),
                    bytes,
                ))
            }
            Source::St(st) => {
                // f32 on the CPU, like the native engine and the references
                // (16-bit products round every activation); 16-bit on a GPU.
                let t = st
                    .load(name, device)
                    .and_then(|t| {
                        let dtype = precision.weight_dtype(t.dtype());
                        t.to_dtype(dtype)
                    })
                    .map_err(|e| load_err(name, e))?;
                let bytes = t.elem_count() * t.dtype().size_in_bytes();
                Ok((Linear::Dense(t), bytes))
            }
        }
    }
}

fn load_err(name: &str, e: candle_core::Error) -> EngineError {
    EngineError::format(format!("tensor {name}: {e}"))
}

impl CandleLlama {
    pub fn load(source: &ModelSource, device: Device, precision: Precision) -> Result<Self> {
        let (cfg, mut src, names, tied) = match source.format {
            Format::Gguf => {
                let gguf = GgufFile::open(&source.path)?;
                let mut cfg = config_from_gguf(&gguf)?;
                let mut file = File::open(&source.path).map_err(|e| EngineError::io(&source.path, e))?;
                let content = gguf_file::Content::read(&mut file).map_err(err)?;
                let mut src = Source::Gguf { content, file };
                if src.has("rope_freqs.weight") {
                    cfg.rope_freq_factors =
                        Some(src.vector("rope_freqs.weight", &Device::Cpu)?.to_vec1().map_err(err)?);
                }
                (
                    cfg,
                    src,
                    Names {
                        gguf: true,
                        gemma: false,
                    },
                    true,
                )
            }
            Format::Safetensors => {
                let meta = HfFolder::read(&source.path)?;
                let mut cfg = config_from_hf(&meta.config)?;
                // This backend's attention has no window: cap the context at
                // it so results stay exact rather than silently diverge
                // (docs/design.md, the GPU path's gaps).
                if let Some(s) = cfg.sliding_window.take()
                    && (0..cfg.layers).any(|l| s.layers_contain(l))
                {
                    cfg.context_length = cfg.context_length.min(s.window);
                }
                let files = hfms_engine::formats::safetensors::checkpoint_files(&source.path)?;
                // SAFETY: mapping is sound while the files do not change under the
                // maps: hfms only reads model files, and a file rewritten or truncated
                // by another process while a model is loaded is outside what a
                // mapping can guard against (docs/design.md, Soundness), as for the
                // native loader.
                let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(err)?;
                let tied = meta
                    .config
                    .get("tie_word_embeddings")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                (
                    cfg,
                    Source::St(st),
                    Names {
                        gguf: false,
                        gemma: false,
                    },
                    tied,
                )
            }
        };
        // The embedding table says how the checkpoint is stored, which
        // decides the cache's dtype on a GPU (bf16 models keep bf16).
        let embed = src.table(names.embed(), &device, precision)?;
        let precision = precision.for_checkpoint(embed.dtype());
        let embed = embed.to_dtype(precision.weights).map_err(err)?;
        let mut weight_bytes = 0;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut lin = |part: &str| -> Result<Linear> {
                let (l, b) = src.linear(&names.layer(i, part), &device, precision)?;
                weight_bytes += b;
                Ok(l)
            };
            let (wq, wk, wv, wo) = (lin("q")?, lin("k")?, lin("v")?, lin("o")?);
            let (gate, up, down) = (lin("gate")?, lin("up")?, lin("down")?);
            let mut opt = |part: &str| -> Result<Option<Tensor>> {
                let n = names.layer(i, part);
                if src.has(&n) {
                    src.vector(&n, &device).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv, q_norm, k_norm) = (
                opt("q_bias")?,
                opt("k_bias")?,
                opt("v_bias")?,
                opt("q_norm")?,
                opt("k_norm")?,
            );
            layers.push(Layer {
                attn_norm: src.vector(&names.layer(i, "attn_norm"), &device)?,
                ffn_norm: src.vector(&names.layer(i, "ffn_norm"), &device)?,
                wq,
                wk,
                wv,
                wo,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                gate,
                up,
                down,
            });
        }
        let output = if src.has(names.output()) {
            let (l, b) = src.linear(names.output(), &device, precision)?;
            weight_bytes += b;
            l
        } else if tied {
            // Tied head: the embedding matrix, quantised in GGUF files.
            let (l, b) = src.linear(names.embed(), &device, precision)?;
            weight_bytes += b;
            l
        } else {
            return Err(EngineError::format("output projection is missing"));
        };
        weight_bytes += embed.elem_count() * embed.dtype().size_in_bytes();
        let mut cfg = cfg;
        cfg.vocab = embed.dim(0).map_err(err)?;
        let rope = Rope::new(
            cfg.rope_style,
            cfg.rope_dims,
            cfg.rope_theta,
            cfg.rope_freq_factors.as_deref(),
            cfg.rope_linear_scale,
        );
        Ok(CandleLlama {
            norm: src.vector(names.norm(), &device)?,
            cfg,
            device,
            precision,
            rope,
            embed,
            layers,
            output,
            weight_bytes,
        })
    }

    /// Rotate `x[t, heads, hd]` by per-row angles.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let rd = self.rope.dims;
        let hd = self.cfg.head_dim;
        let (rot, pass) = if rd < hd {
            (x.narrow(D::Minus1, 0, rd)?, Some(x.narrow(D::Minus1, rd, hd - rd)?))
        } else {
            (x.clone(), None)
        };
        // rope wants [batch, heads, t, d] and cos/sin [t, d/2].
        let r = rot.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let r = match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&r, cos, sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&r, cos, sin)?,
        };
        let r = r.squeeze(0)?.transpose(0, 1)?;
        match pass {
            Some(p) => Tensor::cat(&[&r, &p], D::Minus1)?.contiguous(),
            None => r.contiguous(),
        }
    }

    fn step(&self, items: &[StepItem<'_>], kv: &mut CandleKv) -> candle_core::Result<Vec<f32>> {
        let c = &self.cfg;
        let hd = c.head_dim;
        let bs = kv.layout.block_size;
        let dev = &self.device;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut cache_rows = Vec::new();
        for it in items {
            for (i, &t) in it.tokens.iter().enumerate() {
                let pos = it.start + i;
                tokens.push(t);
                positions.push(pos);
                let (blk, slot) = it.kv.locate(bs, pos);
                cache_rows.push(blk as usize * bs + slot);
            }
        }
        let t = tokens.len();
        let half = self.rope.dims / 2;
        let mut cs = vec![0f32; 2 * half];
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for &p in &positions {
            self.rope.angles(p, &mut cs);
            cos.extend_from_slice(&cs[..half]);
            sin.extend_from_slice(&cs[half..]);
        }
        let cos = Tensor::from_vec(cos, (t, half), dev)?;
        let sin = Tensor::from_vec(sin, (t, half), dev)?;
        let ids = Tensor::from_vec(tokens, t, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let kv_dtype = kv.k.first().map_or(DType::F32, |k| k.dtype());

        // Everything the layers index with is built and uploaded once per
        // step, not once per layer: where each new token's key and value go
        // (a scatter wants an index per element), and per sequence the cache
        // rows it attends to and, when it has more than one new token, the
        // causal mask.
        let write_rows = Tensor::from_vec(cache_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), (t, 1, 1), dev)?
            .broadcast_as((t, c.kv_heads, hd))?
            .contiguous()?;
        let mut per_seq = Vec::with_capacity(items.len());
        for it in items {
            let n = it.tokens.len();
            let len = it.start + n;
            let rows: Vec<u32> = (0..len)
                .map(|p| {
                    let (blk, slot) = it.kv.locate(bs, p);
                    (blk as usize * bs + slot) as u32
                })
                .collect();
            let rows = Tensor::from_vec(rows, len, dev)?;
            // Query j sits at position start + j and sees 0..=start + j; a
            // single new token sees everything.
            let mask = if n > 1 {
                let mask: Vec<f32> = (0..n)
                    .flat_map(|j| (0..len).map(move |p| if p <= it.start + j { 0.0 } else { f32::NEG_INFINITY }))
                    .collect();
                Some(Tensor::from_vec(mask, (n, len), dev)?)
            } else {
                None
            };
            per_seq.push((n, len, rows, mask));
        }

        for (li, l) in self.layers.iter().enumerate() {
            let hn = candle_nn::ops::rms_norm(&x, &l.attn_norm, c.rms_eps)?;
            let mut q = l.wq.forward(&hn)?;
            let mut k = l.wk.forward(&hn)?;
            let mut v = l.wv.forward(&hn)?;
            if let Some(b) = &l.bq {
                q = q.broadcast_add(b)?;
            }
            if let Some(b) = &l.bk {
                k = k.broadcast_add(b)?;
            }
            if let Some(b) = &l.bv {
                v = v.broadcast_add(b)?;
            }
            let mut q = q.reshape((t, c.heads, hd))?;
            let mut k = k.reshape((t, c.kv_heads, hd))?;
            let v = v.reshape((t, c.kv_heads, hd))?.contiguous()?;
            if let Some(w) = &l.q_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, w, c.rms_eps)?;
            }
            if let Some(w) = &l.k_norm {
                k = candle_nn::ops::rms_norm(&k.contiguous()?, w, c.rms_eps)?;
            }
            let q = self.rotate(&q, &cos, &sin)?;
            let k = self.rotate(&k, &cos, &sin)?;
            kv.k[li].scatter_set(&write_rows, &k.to_dtype(kv_dtype)?.contiguous()?, 0)?;
            kv.v[li].scatter_set(&write_rows, &v.to_dtype(kv_dtype)?, 0)?;
            // Attention per sequence against its own cache rows.
            let mut outs = Vec::with_capacity(items.len());
            let mut row0 = 0;
            for (n, len, rows, mask) in &per_seq {
                let (n, len) = (*n, *len);
                // [kv, len, hd], f32
                let kc = kv.k[li]
                    .index_select(rows, 0)?
                    .to_dtype(DType::F32)?
                    .transpose(0, 1)?
                    .contiguous()?;
                let vc = kv.v[li]
                    .index_select(rows, 0)?
                    .to_dtype(DType::F32)?
                    .transpose(0, 1)?
                    .contiguous()?;
                // [heads, n, hd] → [kv, group * n, hd]
                let qs = q
                    .narrow(0, row0, n)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((c.kv_heads, group * n, hd))?;
                let scores = (qs.matmul(&kc.t()?)? * scale)?.reshape((c.kv_heads, group, n, len))?;
                let scores = match mask {
                    Some(mask) => scores.broadcast_add(mask)?,
                    None => scores,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let o = probs.reshape((c.kv_heads, group * n, len))?.matmul(&vc)?;
                // [kv, group*n, hd] → [heads, n, hd] → [n, heads*hd]
                let o = o
                    .reshape((c.heads, n, hd))?
                    .transpose(0, 1)?
                    .reshape((n, c.heads * hd))?;
                outs.push(o);
                row0 += n;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + l.wo.forward(&attn)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &l.ffn_norm, c.rms_eps)?;
            let g = candle_nn::ops::silu(&l.gate.forward(&hn)?)?;
            let u = l.up.forward(&hn)?;
            x = (x + l.down.forward(&(g * u)?)?)?;
        }

        let mut rows: Vec<u32> = Vec::new();
        let mut base = 0u32;
        for it in items {
            let n = it.tokens.len() as u32;
            match it.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push(base + n - 1),
                LogitsWanted::All => rows.extend(base..base + n),
            }
            base += n;
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let sel = x.index_select(&Tensor::from_vec(rows.clone(), rows.len(), dev)?, 0)?;
        let sel = candle_nn::ops::rms_norm(&sel, &self.norm, c.rms_eps)?;
        let logits = self.output.forward(&sel)?;
        logits.flatten_all()?.to_vec1::<f32>()
    }
}

/// The KV cache in device memory: per layer, keys and values of every
/// block slot, `[max_blocks * block_size, kv_heads, head_dim]`.
pub struct CandleKv {
    layout: KvLayout,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl BlockStore for CandleKv {
    fn ensure(&mut self, _id: BlockId) -> Result<()> {
        // Allocated whole when the pool was made.
        Ok(())
    }

    fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()> {
        let bs = self.layout.block_size;
        for cache in self.k.iter().chain(self.v.iter()) {
            let src = cache
                .narrow(0, from as usize * bs, bs)
                .and_then(|t| t.copy())
                .map_err(err)?;
            cache.slice_set(&src, 0, to as usize * bs).map_err(err)?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl CausalLm for CandleLlama {
    fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn kv_elem_bytes(&self) -> usize {
        self.precision.kv.size_in_bytes()
    }

    fn new_block_store(&self, layout: KvLayout, max_blocks: usize) -> Result<Box<dyn BlockStore>> {
        let rows = max_blocks * layout.block_size;
        let make = || {
            Tensor::zeros(
                (rows, layout.kv_heads, layout.head_dim),
                self.precision.kv,
                &self.device,
            )
            .map_err(err)
        };
        let mut k = Vec::with_capacity(layout.layers);
        let mut v = Vec::with_capacity(layout.layers);
        for _ in 0..layout.layers {
            k.push(make()?);
            v.push(make()?);
        }
        Ok(Box::new(CandleKv { layout, k, v }))
    }

    fn forward(&self, items: &[StepItem<'_>], kv: &mut KvPool, _pool: &ComputePool) -> Result<Vec<f32>> {
        let bs = kv.layout().block_size;
        for it in items {
            if it.kv.blocks.len() * bs < it.start + it.tokens.len() {
                return Err(EngineError::internal("KV blocks were not reserved for a step"));
            }
            if let Some(&bad) = it.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(EngineError::invalid(
                    format!("token id {bad} is outside the vocabulary (size {})", self.cfg.vocab),
                    Some("prompt"),
                ));
            }
        }
        if items.iter().all(|it| it.tokens.is_empty()) {
            return Ok(Vec::new());
        }
        let store = kv
            .store_mut()
            .as_any_mut()
            .downcast_mut::<CandleKv>()
            .ok_or_else(|| EngineError::internal("the candle decoder was given a KV cache it did not make"))?;
        self.step(items, store).map_err(err)
    }
}
