//! Skills: the code for one architecture family each. A skill says what it
//! serves (task), from which file formats, on which hardware, and loads a
//! model. The [`Registry`] maps a model's architecture name (GGUF
//! `general.architecture`, or `model_type` in a Hugging Face `config.json`) to
//! the skill that serves it.

pub mod bert;
pub mod gpt2;
pub mod hf;
pub mod llama;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hfms_hardware::{DeviceId, Platform};

use crate::compute::ComputePool;
use crate::embed::batcher::{BatcherConfig, EmbedBatcher};
use crate::embed::{EmbeddingModel, Pooling, Shortening};
use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::Checkpoint;
use crate::generate::{Generator, SchedulerConfig};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Text generation: chat and completions.
    Generate,
    /// Embeddings.
    Embed,
    /// Sequence classification, and so reranking with a cross-encoder.
    Classify,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Generate => "generate",
            Task::Embed => "embed",
            Task::Classify => "classify",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Gguf,
    Safetensors,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
        }
    }

    /// The weight types a model in this format may hold: every ggml type
    /// the engine loads for GGUF; F32, F16 and BF16 for safetensors (the
    /// loader refuses other dtypes).
    pub fn weight_types(self) -> Vec<&'static str> {
        match self {
            Format::Gguf => crate::quant::GgmlType::ALL.iter().map(|t| t.name()).collect(),
            Format::Safetensors => vec!["F32", "F16", "BF16"],
        }
    }
}

/// Where a model's files are: a `.gguf` file or a safetensors folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    pub format: Format,
    pub path: PathBuf,
}

/// The model families a backend can run (each skill is one family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Llama-style decoders (`llama::CausalLm`).
    Llama,
    /// Gemma 3 decoders: the Llama code with Gemma's settings; no device
    /// backend runs them yet.
    Gemma,
    /// GPT-2 decoders (`gpt2::Gpt2Model`); CPU only.
    Gpt2,
    /// Phi-3 decoders: the Llama code with fused projections and LongRoPE;
    /// CPU only.
    Phi3,
    /// Mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE): the Llama code
    /// with routed experts; CPU only.
    Moe,
    /// MPNet encoders (`bert::BertModel` with a relative position bias);
    /// CPU only.
    Mpnet,
    /// BERT-style encoders (`bert::Encoder`).
    Bert,
    /// ModernBERT encoders (`bert::BertModel`, pre-norm, local windows);
    /// CPU only.
    ModernBert,
    /// nomic-bert encoders (`bert::BertModel` with rotary positions and
    /// SwiGLU) from GGUF; CPU only.
    NomicBert,
}

/// What a skill declares about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkillInfo {
    pub name: &'static str,
    pub task: Task,
    pub family: Family,
    pub formats: &'static [Format],
    pub architectures: &'static [&'static str],
}

/// Runs a model family on a device other than the CPU (the native engine
/// is the CPU backend). Builds with the `cuda` or `metal` feature register
/// one per platform; skills ask it for the model maths and keep everything
/// else (tokenizers, templates, scheduling) their own.
pub trait DeviceBackend: Send + Sync {
    fn name(&self) -> &'static str;
    fn platform(&self) -> Platform;
    fn families(&self) -> &[Family];
    fn load_causal_lm(&self, source: &ModelSource, device: DeviceId) -> Result<Arc<dyn llama::CausalLm>>;
    fn load_encoder(&self, source: &ModelSource, device: DeviceId) -> Result<Arc<dyn bert::Encoder>>;
}

/// Everything a load needs besides the files.
#[derive(Clone)]
pub struct LoadContext {
    pub pool: ComputePool,
    pub scheduler: SchedulerConfig,
    pub batcher: BatcherConfig,
    /// Name for threads and logs.
    pub name: String,
    /// Where placement put the model.
    pub device: DeviceId,
    /// The backend for `device` when it is not the CPU.
    pub backend: Option<Arc<dyn DeviceBackend>>,
    /// How CPU encoders hold their f32 layer weights.
    pub encoder_weights: bert::EncoderWeights,
    /// Chat templates the operator gave (Jinja source).
    pub chat_template: ChatTemplateSource,
    /// The model's id (metric labels).
    pub model_id: String,
    pub observers: Arc<dyn crate::observe::Observers>,
}

impl LoadContext {
    /// A CPU load with default scheduling (tests, tools).
    pub fn cpu(pool: ComputePool, name: &str) -> Self {
        LoadContext {
            pool,
            scheduler: SchedulerConfig::default(),
            batcher: BatcherConfig::default(),
            name: name.to_string(),
            device: DeviceId::CPU,
            backend: None,
            encoder_weights: bert::EncoderWeights::F32,
            chat_template: ChatTemplateSource::default(),
            model_id: name.to_string(),
            observers: Arc::new(crate::observe::Nothing),
        }
    }

    fn device_backend(&self) -> Result<Option<&Arc<dyn DeviceBackend>>> {
        if self.device.platform == Platform::Cpu {
            return Ok(None);
        }
        match &self.backend {
            Some(b) if b.platform() == self.device.platform => Ok(Some(b)),
            _ => Err(EngineError::internal(format!("no backend for device {}", self.device))),
        }
    }
}

/// A generation model ready to serve.
pub struct GenerationModel {
    pub generator: Generator,
    /// Shared, so a request can render it off the async threads.
    pub template: Option<Arc<ChatTemplate>>,
    pub context_length: usize,
}

/// A model in memory, ready to serve.
pub enum LoadedModel {
    Generation(Box<GenerationModel>),
    Embedding(EmbedBatcher),
}

impl LoadedModel {
    pub fn task(&self) -> Task {
        match self {
            LoadedModel::Generation(_) => Task::Generate,
            LoadedModel::Embedding(e) if e.model().head.is_some() => Task::Classify,
            LoadedModel::Embedding(_) => Task::Embed,
        }
    }

    /// Bytes of weights (memory the model pins once paged in).
    pub fn weight_bytes(&self) -> usize {
        match self {
            LoadedModel::Generation(g) => g.generator.model().weight_bytes(),
            LoadedModel::Embedding(e) => {
                let head = e.model().head.as_ref().map_or(0, |h| h.weight_bytes());
                e.model().encoder.weight_bytes() + head
            }
        }
    }
}

/// The operator's chat templates for one model (`--chat-template`).
#[derive(Debug, Clone, Default)]
pub struct ChatTemplateSource {
    /// Replaces the model's own template.
    pub replace: Option<Arc<str>>,
    /// Used when the model has none (a base model).
    pub if_missing: Option<Arc<str>>,
}

impl ChatTemplateSource {
    /// The template to serve with: the operator's replacement, else the
    /// model's own, else the operator's fallback; `bos`/`eos` are the
    /// model's special tokens as the template sees them.
    fn choose(&self, own: Option<ChatTemplate>, bos: &str, eos: &str) -> Result<Option<ChatTemplate>> {
        match (&self.replace, own, &self.if_missing) {
            (Some(src), _, _) => ChatTemplate::new(src, bos, eos).map(Some),
            (None, Some(t), _) => Ok(Some(t)),
            (None, None, Some(src)) => ChatTemplate::new(src, bos, eos).map(Some),
            (None, None, None) => Ok(None),
        }
    }
}

pub trait Skill: Send + Sync {
    fn info(&self) -> &SkillInfo;
    /// Check a model's metadata (shapes, tokenizer) without reading weights,
    /// so discovery can say up front why a model cannot be served.
    fn check(&self, source: &ModelSource) -> Result<()>;
    fn load(&self, source: &ModelSource, ctx: &LoadContext) -> Result<LoadedModel>;
}

struct LlamaSkill {
    info: SkillInfo,
}

impl Skill for LlamaSkill {
    fn info(&self) -> &SkillInfo {
        &self.info
    }

    fn check(&self, source: &ModelSource) -> Result<()> {
        match source.format {
            Format::Gguf => {
                let f = GgufFile::open(&source.path)?;
                check_decoder_gguf(&f)?;
                if f.tensor("token_embd.weight").is_none() {
                    return Err(EngineError::format(
                        "GGUF has no token_embd.weight: not a complete model",
                    ));
                }
                if f.get("tokenizer.ggml.tokens").is_none() {
                    return Err(EngineError::Tokenizer(
                        "GGUF carries no tokenizer (tokenizer.ggml.tokens)".into(),
                    ));
                }
                Ok(())
            }
            Format::Safetensors => {
                let meta = hf::HfFolder::read(&source.path)?;
                check_decoder_hf(&source.path, &meta.config)?;
                if !source.path.join("tokenizer.json").exists() {
                    return Err(EngineError::Tokenizer("tokenizer.json is missing".into()));
                }
                Ok(())
            }
        }
    }

    fn load(&self, source: &ModelSource, ctx: &LoadContext) -> Result<LoadedModel> {
        let backend = ctx.device_backend()?;
        let (model, tokenizer, template): (Arc<dyn llama::CausalLm>, _, _) = match source.format {
            Format::Gguf => {
                let f = GgufFile::open(&source.path)?;
                let model: Arc<dyn llama::CausalLm> = match backend {
                    Some(b) => b.load_causal_lm(source, ctx.device)?,
                    None => {
                        check_decoder_gguf(&f)?;
                        if f.architecture().is_some_and(|a| gpt2::ARCHITECTURES.contains(&a)) {
                            Arc::new(gpt2::Gpt2Model::from_gguf(&f)?)
                        } else {
                            Arc::new(llama::LlamaModel::from_gguf(&f)?)
                        }
                    }
                };
                let tokenizer = Tokenizer::from_gguf(&f)?;
                // A replaced template is not compiled: replacing one that
                // does not compile is what the operator's template is for.
                let own = f
                    .get_str("tokenizer.chat_template")
                    .filter(|_| ctx.chat_template.replace.is_none());
                let template = match own {
                    Some(src) => {
                        let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
                        let bos = name(tokenizer.bos());
                        let eos = name(tokenizer.eos().first().copied());
                        Some(ChatTemplate::new(src, &bos, &eos)?)
                    }
                    None => None,
                };
                (model, tokenizer, template)
            }
            Format::Safetensors => {
                let meta = hf::HfFolder::read(&source.path)?;
                let model: Arc<dyn llama::CausalLm> = match backend {
                    Some(b) => b.load_causal_lm(source, ctx.device)?,
                    None => {
                        check_decoder_hf(&source.path, &meta.config)?;
                        if gpt2::ARCHITECTURES.contains(&meta.arch.as_str()) {
                            Arc::new(gpt2::Gpt2Model::from_safetensors(&source.path, &meta.config)?)
                        } else {
                            Arc::new(llama::LlamaModel::from_safetensors(&source.path, &meta.config)?)
                        }
                    }
                };
                let tokenizer = meta.tokenizer(None)?;
                let template = match ctx.chat_template.replace {
                    Some(_) => None,
                    None => meta.chat_template()?,
                };
                (model, tokenizer, template)
            }
        };
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let (bos, eos) = (name(tokenizer.bos()), name(tokenizer.eos().first().copied()));
        let template = ctx.chat_template.choose(template, &bos, &eos)?;
        let context_length = model.config().context_length;
        let generator = Generator::spawn_observed(
            model,
            Arc::new(tokenizer),
            ctx.pool.clone(),
            ctx.scheduler.clone(),
            &ctx.name,
            ctx.observers.generation(&ctx.model_id),
        )?;
        Ok(LoadedModel::Generation(Box::new(GenerationModel {
            generator,
            template: template.map(Arc::new),
            context_length,
        })))
    }
}

struct BertSkill {
    info: SkillInfo,
}

impl Skill for BertSkill {
    fn info(&self) -> &SkillInfo {
        &self.info
    }

    fn check(&self, source: &ModelSource) -> Result<()> {
        if source.format == Format::Gguf {
            let f = GgufFile::open(&source.path)?;
            check_encoder_gguf(&f)?;
            if f.get("tokenizer.ggml.tokens").is_none() {
                return Err(EngineError::Tokenizer(
                    "GGUF carries no tokenizer (tokenizer.ggml.tokens)".into(),
                ));
            }
            return Ok(());
        }
        let meta = hf::HfFolder::read(&source.path)?;
        check_encoder_hf(&source.path, &meta.config)?;
        if !source.path.join("tokenizer.json").exists() {
            return Err(EngineError::Tokenizer("tokenizer.json is missing".into()));
        }
        Ok(())
    }

    fn load(&self, source: &ModelSource, ctx: &LoadContext) -> Result<LoadedModel> {
        let model = match source.format {
            Format::Gguf => self.load_gguf(source, ctx)?,
            Format::Safetensors => self.load_safetensors(source, ctx)?,
        };
        Ok(LoadedModel::Embedding(EmbedBatcher::spawn_observed(
            Arc::new(model),
            ctx.pool.clone(),
            ctx.batcher.clone(),
            &ctx.name,
            ctx.observers.embedding(&ctx.model_id),
        )?))
    }
}

impl BertSkill {
    /// A GGUF embedder (CPU): llama.cpp's metadata says the pooling
    /// (`{arch}.pooling_type`); vectors are normalised, as llama-server's
    /// embeddings are.
    fn load_gguf(&self, source: &ModelSource, ctx: &LoadContext) -> Result<EmbeddingModel> {
        if ctx.device_backend()?.is_some() {
            return Err(EngineError::internal("GGUF encoders run on the CPU only"));
        }
        let f = GgufFile::open(&source.path)?;
        check_encoder_gguf(&f)?;
        let encoder: Arc<dyn bert::Encoder> =
            Arc::new(bert::BertModel::from_gguf(&f)?.with_layer_weights(ctx.encoder_weights)?);
        let max_tokens = encoder.config().max_positions;
        let arch = encoder.config().arch.clone();
        let pooling = match f.get_u64(&format!("{arch}.pooling_type")) {
            None | Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::LastToken,
            Some(other) => {
                return Err(EngineError::format(format!(
                    "{arch}.pooling_type {other} is not supported (1 mean, 2 cls, 3 last)"
                )));
            }
        };
        let tokenizer = Tokenizer::from_gguf(&f)?.with_max_length(max_tokens)?;
        Ok(EmbeddingModel {
            encoder,
            tokenizer: Arc::new(tokenizer),
            pooling,
            normalize: true,
            head: None,
            max_tokens,
            shortening: Shortening::LayerNormThenTruncate,
        })
    }

    fn load_safetensors(&self, source: &ModelSource, ctx: &LoadContext) -> Result<EmbeddingModel> {
        let meta = hf::HfFolder::read(&source.path)?;
        let model: Arc<dyn bert::Encoder> = match ctx.device_backend()? {
            Some(b) => b.load_encoder(source, ctx.device)?,
            None => {
                check_encoder_hf(&source.path, &meta.config)?;
                let bert = bert::BertModel::from_safetensors(&source.path, &meta.config)?;
                Arc::new(bert.with_layer_weights(ctx.encoder_weights)?)
            }
        };
        let max_tokens = meta
            .max_seq_length()
            .unwrap_or(model.config().max_positions)
            .min(model.config().max_positions);
        let tokenizer = meta.tokenizer(Some(max_tokens))?;
        let head = match self.info.task {
            Task::Classify => Some(bert::ClassifierHead::from_safetensors(&source.path, &meta.config)?),
            _ => None,
        };
        Ok(EmbeddingModel {
            encoder: model,
            tokenizer: Arc::new(tokenizer),
            pooling: Pooling::from_model_dir(&source.path)?,
            normalize: meta.normalizes(),
            head,
            max_tokens,
            shortening: Shortening::Truncate,
        })
    }
}

/// Sizes a model's metadata claims, checked against its weights before a
/// loader allocates by them (a corrupt `block_count` of 2^31 had the loader
/// reserve a terabyte for layers). Each layer has tensors of its own, and
/// every size here is a dimension of some weight, so none can exceed the
/// number of weights.
fn check_sizes(
    file: &Path,
    sizes: &[(&str, Option<usize>)],
    layers: usize,
    weights: u64,
    tensors: usize,
) -> Result<()> {
    if layers > tensors {
        return Err(EngineError::format(format!(
            "{}: {layers} layers, but the weights are {tensors} tensors",
            file.display()
        )));
    }
    for (what, size) in sizes {
        match size {
            Some(n) if *n as u64 <= weights => {}
            Some(n) => {
                return Err(EngineError::format(format!(
                    "{}: {what} {n} is larger than the whole model ({weights} weights)",
                    file.display()
                )));
            }
            None => return Err(EngineError::format(format!("{}: {what} overflows", file.display()))),
        }
    }
    Ok(())
}

fn check_decoder(file: &Path, cfg: &llama::DecoderConfig, weights: u64, tensors: usize) -> Result<()> {
    check_sizes(
        file,
        &[
            ("hidden size", Some(cfg.hidden)),
            ("head count", Some(cfg.heads)),
            ("KV head count", Some(cfg.kv_heads)),
            ("head size", Some(cfg.head_dim)),
            ("query width", cfg.heads.checked_mul(cfg.head_dim)),
            ("KV width", cfg.kv_heads.checked_mul(cfg.head_dim)),
            ("feed-forward size", Some(cfg.ffn)),
            ("vocabulary size", Some(cfg.vocab)),
            ("expert count", Some(cfg.moe.as_ref().map_or(0, |m| m.experts))),
            ("expert width", Some(cfg.moe.as_ref().map_or(0, |m| m.expert_ffn))),
            (
                "shared expert width",
                Some(cfg.moe.as_ref().and_then(|m| m.shared_expert_ffn).unwrap_or(0)),
            ),
        ],
        cfg.layers,
        weights,
        tensors,
    )?;
    if cfg.rope_dims > cfg.head_dim {
        return Err(EngineError::format(format!(
            "{}: {} rotary dimensions in heads of {}",
            file.display(),
            cfg.rope_dims,
            cfg.head_dim
        )));
    }
    Ok(())
}

fn check_decoder_gguf(f: &GgufFile) -> Result<()> {
    let cfg = match f.architecture() {
        Some(a) if gpt2::ARCHITECTURES.contains(&a) => gpt2::config_from_gguf(f)?,
        _ => llama::config_from_gguf(f)?,
    };
    check_decoder(&f.path, &cfg, f.parameter_count(), f.tensors.len())
}

fn check_decoder_hf(dir: &Path, config: &serde_json::Value) -> Result<()> {
    let cfg = match config.get("model_type").and_then(|v| v.as_str()) {
        Some(arch) if gpt2::ARCHITECTURES.contains(&arch) => gpt2::config_from_hf(config)?,
        _ => llama::config_from_hf(config)?,
    };
    let ck = Checkpoint::open(dir)?;
    check_decoder(dir, &cfg, ck.parameter_count(), ck.names().count())
}

fn check_encoder_hf(dir: &Path, config: &serde_json::Value) -> Result<()> {
    let cfg = bert::config_from_hf(config)?;
    let ck = Checkpoint::open(dir)?;
    check_sizes(
        dir,
        &[
            ("hidden size", Some(cfg.hidden)),
            ("head count", Some(cfg.heads)),
            ("intermediate size", Some(cfg.intermediate)),
            ("vocabulary size", Some(cfg.vocab)),
            ("token type table", cfg.token_types.checked_mul(cfg.hidden)),
        ],
        cfg.layers,
        ck.parameter_count(),
        ck.names().count(),
    )
}

fn check_encoder_gguf(f: &GgufFile) -> Result<()> {
    let cfg = bert::config_from_gguf(f)?;
    check_sizes(
        &f.path,
        &[
            ("hidden size", Some(cfg.hidden)),
            ("head count", Some(cfg.heads)),
            ("feed-forward size", Some(cfg.intermediate)),
            ("vocabulary size", Some(cfg.vocab)),
            ("token type table", cfg.token_types.checked_mul(cfg.hidden)),
        ],
        cfg.layers,
        f.parameter_count(),
        f.tensors.len(),
    )
}

/// All skills of this build, and the device backends beside the CPU.
pub struct Registry {
    skills: Vec<Box<dyn Skill>>,
    backends: Vec<Arc<dyn DeviceBackend>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Self {
        Registry {
            skills: vec![
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "llama",
                        task: Task::Generate,
                        family: Family::Llama,
                        formats: &[Format::Gguf, Format::Safetensors],
                        architectures: llama::ARCHITECTURES,
                    },
                }),
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "gpt2",
                        task: Task::Generate,
                        family: Family::Gpt2,
                        formats: &[Format::Gguf, Format::Safetensors],
                        architectures: gpt2::ARCHITECTURES,
                    },
                }),
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "gemma3",
                        task: Task::Generate,
                        family: Family::Gemma,
                        formats: &[Format::Gguf, Format::Safetensors],
                        architectures: llama::GEMMA_ARCHITECTURES,
                    },
                }),
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "gemma2",
                        task: Task::Generate,
                        family: Family::Gemma,
                        formats: &[Format::Safetensors],
                        architectures: llama::GEMMA2_ARCHITECTURES,
                    },
                }),
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "phi3",
                        task: Task::Generate,
                        family: Family::Phi3,
                        formats: &[Format::Gguf, Format::Safetensors],
                        architectures: llama::PHI3_ARCHITECTURES,
                    },
                }),
                Box::new(LlamaSkill {
                    info: SkillInfo {
                        name: "moe",
                        task: Task::Generate,
                        family: Family::Moe,
                        formats: &[Format::Gguf, Format::Safetensors],
                        architectures: llama::MOE_ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "bert",
                        task: Task::Embed,
                        family: Family::Bert,
                        formats: &[Format::Safetensors],
                        architectures: bert::ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "mpnet",
                        task: Task::Embed,
                        family: Family::Mpnet,
                        formats: &[Format::Safetensors],
                        architectures: bert::MPNET_ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "modernbert",
                        task: Task::Embed,
                        family: Family::ModernBert,
                        formats: &[Format::Safetensors],
                        architectures: bert::MODERNBERT_ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "nomic_bert",
                        task: Task::Embed,
                        family: Family::NomicBert,
                        formats: &[Format::Gguf],
                        architectures: bert::NOMIC_ARCHITECTURES,
                    },
                }),
                // The same encoders with a `*ForSequenceClassification` head:
                // classifiers and cross-encoder rerankers.
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "bert_classifier",
                        task: Task::Classify,
                        family: Family::Bert,
                        formats: &[Format::Safetensors],
                        architectures: bert::ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "mpnet_classifier",
                        task: Task::Classify,
                        family: Family::Mpnet,
                        formats: &[Format::Safetensors],
                        architectures: bert::MPNET_ARCHITECTURES,
                    },
                }),
            ],
            backends: Vec::new(),
        }
    }

    /// Add a device backend (GPU builds).
    pub fn with_backend(mut self, backend: Arc<dyn DeviceBackend>) -> Self {
        self.backends.push(backend);
        self
    }

    pub fn backends(&self) -> &[Arc<dyn DeviceBackend>] {
        &self.backends
    }

    /// The backend that runs `family` on `platform` (None for the CPU, which
    /// the engine runs itself).
    pub fn backend_for(&self, family: Family, platform: Platform) -> Option<Arc<dyn DeviceBackend>> {
        self.backends
            .iter()
            .find(|b| b.platform() == platform && b.families().contains(&family))
            .cloned()
    }

    /// Platforms a skill's models can run on in this build: the CPU, plus
    /// every platform a backend runs the skill's family on.
    pub fn platforms(&self, info: &SkillInfo) -> Vec<Platform> {
        let mut out = vec![Platform::Cpu];
        for b in &self.backends {
            if b.families().contains(&info.family) && !out.contains(&b.platform()) {
                out.push(b.platform());
            }
        }
        out
    }

    pub fn skills(&self) -> impl Iterator<Item = &SkillInfo> {
        self.skills.iter().map(|s| s.info())
    }

    /// "llama, mistral, qwen2, qwen3 (gguf, safetensors); bert, … (safetensors)"
    pub fn supported(&self) -> String {
        self.skills
            .iter()
            .map(|s| {
                let i = s.info();
                let formats: Vec<&str> = i.formats.iter().map(|f| f.as_str()).collect();
                let head = if i.task == Task::Classify {
                    " sequence classifiers"
                } else {
                    ""
                };
                format!("{}{head} ({})", i.architectures.join(", "), formats.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The skill for an architecture in a format, or a clear error.
    /// `classifier`: the checkpoint ends in a sequence-classification head,
    /// which only a classifying skill serves.
    pub fn find(&self, arch: &str, format: Format, classifier: bool) -> Result<&dyn Skill> {
        let arch_l = arch.to_ascii_lowercase();
        self.skills
            .iter()
            .find(|s| {
                let i = s.info();
                i.formats.contains(&format)
                    && i.architectures.contains(&arch_l.as_str())
                    && (i.task == Task::Classify) == classifier
            })
            .map(|s| s.as_ref())
            .ok_or_else(|| EngineError::UnsupportedArchitecture {
                arch: format!(
                    "{arch}{} ({})",
                    if classifier { " sequence classifier" } else { "" },
                    format.as_str()
                ),
                supported: self.supported(),
            })
    }

    /// Identify a source's architecture and find its skill.
    pub fn for_source(&self, source: &ModelSource) -> Result<&dyn Skill> {
        let arch = architecture_of(source)?;
        self.find(&arch, source.format, is_classifier(source))
    }
}

/// Does a source end in a sequence-classification head (config.json's
/// `architectures`)? GGUF files served here never do.
pub fn is_classifier(source: &ModelSource) -> bool {
    source.format == Format::Safetensors
        && hf::HfFolder::read_config(&source.path).is_ok_and(|(_, cfg)| bert::is_sequence_classifier(&cfg))
}

/// The architecture name of a model without loading it.
pub fn architecture_of(source: &ModelSource) -> Result<String> {
    match source.format {
        Format::Gguf => {
            let f = GgufFile::open(&source.path)?;
            gguf_architecture(&f).ok_or_else(|| EngineError::format("GGUF has no general.architecture"))
        }
        Format::Safetensors => Ok(hf::HfFolder::read_config(&source.path)?.0),
    }
}

/// A GGUF's architecture as the skills name it: llama.cpp writes Mixtral as
/// `llama` with experts, which the Llama skill (and its device backends) do
/// not run.
pub fn gguf_architecture(f: &GgufFile) -> Option<String> {
    let arch = f.architecture()?;
    let experts = f.get_u64(&format!("{arch}.expert_count")).unwrap_or(0);
    Some(
        if arch == "llama" && experts > 0 {
            "mixtral"
        } else {
            arch
        }
        .to_string(),
    )
}

/// Is `path` a model folder (config.json beside safetensors weights)?
pub fn is_safetensors_model(dir: &Path) -> bool {
    dir.join("config.json").is_file() && crate::formats::safetensors::checkpoint_files(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(layers: usize) -> llama::DecoderConfig {
        llama::config_from_hf(&serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": layers,
            "intermediate_size": 128, "vocab_size": 384
        }))
        .unwrap()
    }

    #[test]
    fn gemma3_configs_without_layer_types_slide_five_layers_in_six() {
        let cfg = llama::config_from_hf(&serde_json::json!({
            "model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 7, "intermediate_size": 128, "vocab_size": 384, "head_dim": 16,
            "sliding_window": 512, "sliding_window_pattern": 6,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 16
        }))
        .unwrap();
        let windows: Vec<_> = (0..7).map(|l| cfg.window(l)).collect();
        let s = Some(512);
        assert_eq!(windows, vec![s, s, s, s, s, None, s]);
        assert_eq!((cfg.rope_theta, cfg.rope_theta_local), (1e6, Some(1e4)));
        assert_eq!((cfg.query_scale, cfg.ffn_act), (1.0, llama::FfnActivation::GeluTanh));
        assert_eq!((cfg.norm_offset, cfg.embed_scale), (1.0, 8.0));
    }

    #[test]
    fn hostile_phi3_and_moe_settings_are_refused_at_load() {
        use serde_json::json;
        let base = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 128, "vocab_size": 384
        });
        let with = |extra: serde_json::Value| {
            let mut c = base.clone();
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            llama::config_from_hf(&c).map(|_| ()).map_err(|e| e.to_string())
        };
        let longrope = |short: serde_json::Value| {
            serde_json::json!({"model_type": "phi3", "max_position_embeddings": 512, "rope_parameters": {
                "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                "long_factor": [1, 1, 1, 1, 1, 1, 1, 1], "original_max_position_embeddings": 128}})
        };
        assert!(with(longrope(serde_json::json!([1, 1, 1, 1, 1, 1, 1, 1]))).is_ok());
        for short in [
            serde_json::json!([1, 1]),
            serde_json::json!([1, 1, 1, 1, 1, 1, 1, -1]),
            serde_json::json!([1, 1, 1, 1, 1, 1, 1, 0]),
            serde_json::json!("x"),
            serde_json::json!(null),
        ] {
            let e = with(longrope(short.clone())).unwrap_err();
            assert!(e.contains("short_factor"), "{short}: {e}");
        }
        // LongRoPE elsewhere than Phi-3 (the GPU backends would drop its factor).
        let e = with(serde_json::json!({"max_position_embeddings": 512, "rope_parameters": {
            "rope_type": "longrope", "short_factor": [1, 1, 1, 1, 1, 1, 1, 1]}}))
        .unwrap_err();
        assert!(e.contains("longrope rotary in llama"), "{e}");
        // Without original_max_position_embeddings: the context, as transformers.
        let mut c = base.clone();
        c.as_object_mut().unwrap().extend(
            serde_json::json!({"model_type": "phi3", "max_position_embeddings": 512, "rope_parameters": {
                "rope_type": "longrope", "short_factor": [1, 1, 1, 1, 1, 1, 1, 1]}})
            .as_object()
            .unwrap()
            .clone(),
        );
        assert_eq!(llama::config_from_hf(&c).unwrap().context_length, 512);
        for f in [0.0, -0.5, 1.5] {
            let e = with(serde_json::json!({"partial_rotary_factor": f})).unwrap_err();
            assert!(e.contains("partial_rotary_factor"), "{f}: {e}");
        }
        for (experts, k) in [(4, json!(0)), (4, json!(5)), (4, json!(null))] {
            let e = with(json!({"model_type": "mixtral", "num_local_experts": experts, "num_experts_per_tok": k}))
                .unwrap_err();
            assert!(e.contains("num_experts_per_tok"), "{e}");
        }
        // Qwen's experts need their own width, Qwen2-MoE its shared expert's;
        // a shared expert elsewhere is refused.
        let qwen = |arch: &str, extra: serde_json::Value| {
            let mut c = json!({"model_type": arch, "num_experts": 4, "num_experts_per_tok": 2});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            with(c)
        };
        assert!(
            qwen("qwen3_moe", json!({}))
                .unwrap_err()
                .contains("moe_intermediate_size")
        );
        assert!(qwen("qwen3_moe", json!({"moe_intermediate_size": 32})).is_ok());
        let e = qwen("qwen2_moe", json!({"moe_intermediate_size": 32})).unwrap_err();
        assert!(e.contains("shared_expert_intermediate_size"), "{e}");
        let e = qwen(
            "qwen3_moe",
            json!({"moe_intermediate_size": 32, "shared_expert_intermediate_size": 8}),
        )
        .unwrap_err();
        assert!(e.contains("shared expert in qwen3_moe"), "{e}");
        let e = qwen(
            "qwen2_moe",
            json!({"moe_intermediate_size": 32, "shared_expert_intermediate_size": 8, "use_sliding_window": true, "sliding_window": 16}),
        )
        .unwrap_err();
        assert!(e.contains("use_sliding_window"), "{e}");
        // Gemma 2 without its caps or window: transformers' defaults.
        let g = llama::config_from_hf(&{
            let mut c = base.clone();
            c["model_type"] = json!("gemma2");
            c
        })
        .unwrap();
        assert_eq!(
            (g.attn_softcap, g.final_softcap, g.window(0), g.window(1)),
            (Some(50.0), Some(30.0), Some(4096), None)
        );
        for cap in [json!(0), json!(-1), json!("x")] {
            let e = with(json!({"model_type": "gemma2", "attn_logit_softcapping": cap})).unwrap_err();
            assert!(e.contains("attn_logit_softcapping"), "{e}");
        }
        let e = with(json!({"final_logit_softcapping": 30.0})).unwrap_err();
        assert!(e.contains("gemma2 only"), "{e}");
        // A huge expert count fails against the weights, before any allocation.
        let mut c = base.clone();
        c["model_type"] = serde_json::json!("mixtral");
        c["num_local_experts"] = serde_json::json!(1u64 << 40);
        c["num_experts_per_tok"] = serde_json::json!(2);
        let cfg = llama::config_from_hf(&c).unwrap();
        let e = check_decoder(Path::new("m"), &cfg, 1_000_000, 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expert count"), "{e}");
    }

    #[test]
    fn metadata_sizes_are_checked_against_the_weights() {
        let file = Path::new("m.gguf");
        let ok = decoder(2);
        check_decoder(file, &ok, 1_000_000, 20).unwrap();
        // A corrupt layer count used to size the loader's layer vector.
        let e = check_decoder(file, &decoder(1 << 31), 1_000_000, 20).unwrap_err();
        assert!(e.to_string().contains("2147483648 layers"), "{e}");
        let mut c = decoder(2);
        c.hidden = 1 << 40;
        let e = check_decoder(file, &c, 1_000_000, 20).unwrap_err().to_string();
        assert!(e.contains("m.gguf: hidden size 1099511627776"), "{e}");
        let mut c = decoder(2);
        (c.heads, c.head_dim) = (1 << 40, 1 << 40);
        assert!(
            check_decoder(file, &c, u64::MAX, 20)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        let mut c = decoder(2);
        c.rope_dims = c.head_dim + 2;
        assert!(
            check_decoder(file, &c, 1_000_000, 20)
                .unwrap_err()
                .to_string()
                .contains("rotary")
        );
    }
}
