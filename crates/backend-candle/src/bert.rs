//! BERT-family encoders on a candle device: the batch's tokens flattened,
//! attention within each input.

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use hfms_engine::compute::ComputePool;
use hfms_engine::skills::bert::{Encoder, EncoderConfig, EncoderInput, config_from_hf};
use hfms_engine::skills::hf::HfFolder;
use hfms_engine::skills::{Format, ModelSource};
use hfms_engine::{EngineError, Result};

use crate::{Precision, err};

struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(self.w.dtype())?
            .matmul(&self.w.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&self.b)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

struct Layer {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    ln1: Norm,
    inter: Dense,
    out: Dense,
    ln2: Norm,
}

pub struct CandleBert {
    cfg: EncoderConfig,
    device: Device,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln: Norm,
    layers: Vec<Layer>,
    gelu_tanh: bool,
    weight_bytes: usize,
}

impl CandleBert {
    pub fn load(source: &ModelSource, device: Device, precision: Precision) -> Result<Self> {
        if source.format != Format::Safetensors {
            return Err(EngineError::format(
                "BERT-family encoders load from safetensors folders",
            ));
        }
        let meta = HfFolder::read(&source.path)?;
        let cfg = config_from_hf(&meta.config)?;
        let gelu_tanh = match meta.config.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu") {
            "gelu" => false,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => true,
            other => {
                return Err(EngineError::format(format!(
                    "hidden_act '{other}' is not supported by this backend"
                )));
            }
        };
        let files = hfms_engine::formats::safetensors::checkpoint_files(&source.path)?;
        // SAFETY: mapping is sound while the files do not change under the
        // maps: hfms only reads model files, and a file rewritten or truncated
        // by another process while a model is loaded is outside what a
        // mapping can guard against (docs/design.md, Soundness), as for the
        // native loader.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(err)?;
        let prefix = ["", "bert.", "roberta.", "model."]
            .into_iter()
            .find(|p| st.get(&format!("{p}embeddings.word_embeddings.weight")).is_ok())
            .ok_or_else(|| EngineError::format("no embeddings.word_embeddings.weight in the checkpoint"))?;
        let mut bytes = 0usize;
        // Tensors in the dtype they are kept in: f32, or for the weight
        // matrices the precision's.
        let mut load = |name: String, matrix: bool| -> Result<Tensor> {
            let t = st
                .load(&format!("{prefix}{name}"), &device)
                .map_err(|e| EngineError::format(format!("tensor {name}: {e}")))?;
            let dtype = if matrix {
                precision.weight_dtype(t.dtype())
            } else {
                DType::F32
            };
            let t = t.to_dtype(dtype).map_err(err)?;
            bytes += t.elem_count() * t.dtype().size_in_bytes();
            Ok(t)
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            let mut dense = |name: &str| -> Result<Dense> {
                Ok(Dense {
                    w: load(p(&format!("{name}.weight")), !name.ends_with("LayerNorm"))?,
                    b: load(p(&format!("{name}.bias")), false)?,
                })
            };
            let q = dense("attention.self.query")?;
            let k = dense("attention.self.key")?;
            let v = dense("attention.self.value")?;
            let o = dense("attention.output.dense")?;
            let ln1 = dense("attention.output.LayerNorm")?;
            let inter = dense("intermediate.dense")?;
            let out = dense("output.dense")?;
            let ln2 = dense("output.LayerNorm")?;
            layers.push(Layer {
                q,
                k,
                v,
                o,
                ln1: Norm { w: ln1.w, b: ln1.b },
                inter,
                out,
                ln2: Norm { w: ln2.w, b: ln2.b },
            });
        }
        let word = load("embeddings.word_embeddings.weight".into(), false)?;
        let position = load("embeddings.position_embeddings.weight".into(), false)?;
        let token_type = match load("embeddings.token_type_embeddings.weight".into(), false) {
            Ok(t) => t.narrow(0, 0, cfg.token_types).map_err(err)?,
            Err(_) => Tensor::zeros((cfg.token_types, cfg.hidden), DType::F32, &device).map_err(err)?,
        };
        let ln = Norm {
            w: load("embeddings.LayerNorm.weight".into(), false)?,
            b: load("embeddings.LayerNorm.bias".into(), false)?,
        };
        Ok(CandleBert {
            cfg,
            device,
            word,
            position,
            token_type,
            ln,
            layers,
            gelu_tanh,
            weight_bytes: bytes,
        })
    }

    fn layer_norm(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &n.w, &n.b, self.cfg.layer_norm_eps)
    }

    fn run(&self, inputs: &[&EncoderInput]) -> candle_core::Result<Vec<f32>> {
        let c = &self.cfg;
        let (h, heads) = (c.hidden, c.heads);
        let hd = h / heads;
        let dev = &self.device;
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.ids.iter().copied()).collect();
        // Models with one token type give the second segment type 0.
        let types: Vec<u32> = inputs
            .iter()
            .flat_map(|i| (0..i.len()).map(|p| i.token_type(p).min(c.token_types - 1) as u32))
            .collect();
        let pos: Vec<u32> = inputs
            .iter()
            .flat_map(|i| (0..i.len()).map(|p| (p + c.position_offset) as u32))
            .collect();
        let t = ids.len();
        let ids = Tensor::from_vec(ids, t, dev)?;
        let pos = Tensor::from_vec(pos, t, dev)?;
        let types = Tensor::from_vec(types, t, dev)?;
        let x = ((self.word.index_select(&ids, 0)? + self.position.index_select(&pos, 0)?)?
            + self.token_type.index_select(&types, 0)?)?;
        let mut x = self.layer_norm(&x, &self.ln)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let q = l.q.forward(&x)?;
            let k = l.k.forward(&x)?;
            let v = l.v.forward(&x)?;
            let mut outs = Vec::with_capacity(inputs.len());
            let mut row = 0;
            for inp in inputs {
                let n = inp.len();
                let split = |m: &Tensor| -> candle_core::Result<Tensor> {
                    m.narrow(0, row, n)?
                        .reshape((n, heads, hd))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let (qs, ks, vs) = (split(&q)?, split(&k)?, split(&v)?);
                let probs = candle_nn::ops::softmax_last_dim(&(qs.matmul(&ks.t()?)? * scale)?)?;
                outs.push(probs.matmul(&vs)?.transpose(0, 1)?.reshape((n, h))?);
                row += n;
            }
            let ctx = Tensor::cat(&outs, 0)?;
            x = self.layer_norm(&(x + l.o.forward(&ctx)?)?, &l.ln1)?;
            let i = l.inter.forward(&x)?;
            let i = if self.gelu_tanh { i.gelu()? } else { i.gelu_erf()? };
            x = self.layer_norm(&(x + l.out.forward(&i)?)?, &l.ln2)?;
        }
        x.flatten_all()?.to_vec1::<f32>()
    }
}

impl Encoder for CandleBert {
    fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn encode(&self, inputs: &[&EncoderInput], _pool: &ComputePool) -> Result<Vec<f32>> {
        for inp in inputs {
            if inp.len() > self.cfg.max_positions {
                return Err(EngineError::invalid(
                    format!(
                        "input of {} tokens exceeds the model's {} positions",
                        inp.len(),
                        self.cfg.max_positions
                    ),
                    Some("input"),
                ));
            }
            if let Some(&bad) = inp.ids.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(EngineError::invalid(
                    format!("token id {bad} is outside the vocabulary (size {})", self.cfg.vocab),
                    Some("input"),
                ));
            }
        }
        if inputs.iter().all(|i| i.is_empty()) {
            return Ok(Vec::new());
        }
        let non_empty: Vec<&EncoderInput> = inputs.iter().copied().filter(|i| !i.is_empty()).collect();
        self.run(&non_empty).map_err(err)
    }
}
