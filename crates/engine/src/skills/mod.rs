//! Skills: the code for one architecture family each. A skill says what it
//! serves (task), from which file formats, on which hardware, and loads a
//! model. The [`Registry`] maps a model's architecture name (GGUF
//! `general.architecture`, or `model_type` in a Hugging Face `config.json`) to
//! the skill that serves it.

pub mod bert;
pub mod hf;
pub mod llama;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compute::ComputePool;
use crate::embed::{EmbeddingModel, Pooling};
use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;
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
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Generate => "generate",
            Task::Embed => "embed",
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
}

/// Where a model's files are: a `.gguf` file or a safetensors folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    pub format: Format,
    pub path: PathBuf,
}

/// What a skill declares about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkillInfo {
    pub name: &'static str,
    pub task: Task,
    pub formats: &'static [Format],
    /// Hardware platforms this skill's code runs on in this build.
    pub platforms: &'static [&'static str],
    pub architectures: &'static [&'static str],
}

/// Everything a load needs besides the files.
#[derive(Debug, Clone)]
pub struct LoadContext {
    pub pool: ComputePool,
    pub scheduler: SchedulerConfig,
    /// Name for threads and logs.
    pub name: String,
}

/// A generation model ready to serve.
pub struct GenerationModel {
    pub generator: Generator,
    pub template: Option<ChatTemplate>,
    pub context_length: usize,
}

/// A model in memory, ready to serve.
pub enum LoadedModel {
    Generation(Box<GenerationModel>),
    Embedding(EmbeddingModel),
}

impl LoadedModel {
    pub fn task(&self) -> Task {
        match self {
            LoadedModel::Generation(_) => Task::Generate,
            LoadedModel::Embedding(_) => Task::Embed,
        }
    }

    /// Bytes of weights (memory the model pins once paged in).
    pub fn weight_bytes(&self) -> usize {
        match self {
            LoadedModel::Generation(g) => g.generator.model().weight_bytes(),
            LoadedModel::Embedding(e) => e.encoder.weight_bytes(),
        }
    }
}

pub trait Skill: Send + Sync {
    fn info(&self) -> &SkillInfo;
    fn load(&self, source: &ModelSource, ctx: &LoadContext) -> Result<LoadedModel>;
}

/// The CPU is the one platform every skill runs on in every build.
const CPU_ONLY: &[&str] = &["cpu"];

struct LlamaSkill {
    info: SkillInfo,
}

impl Skill for LlamaSkill {
    fn info(&self) -> &SkillInfo {
        &self.info
    }

    fn load(&self, source: &ModelSource, ctx: &LoadContext) -> Result<LoadedModel> {
        let (model, tokenizer, template) = match source.format {
            Format::Gguf => {
                let f = GgufFile::open(&source.path)?;
                let model = llama::LlamaModel::from_gguf(&f)?;
                let tokenizer = Tokenizer::from_gguf(&f)?;
                let template = match f.get_str("tokenizer.chat_template") {
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
                let model = llama::LlamaModel::from_safetensors(&source.path, &meta.config)?;
                let tokenizer = meta.tokenizer(None)?;
                let template = meta.chat_template()?;
                (model, tokenizer, template)
            }
        };
        use llama::CausalLm;
        let context_length = model.config().context_length;
        let generator = Generator::spawn(
            Arc::new(model),
            Arc::new(tokenizer),
            ctx.pool.clone(),
            ctx.scheduler.clone(),
            &ctx.name,
        )?;
        Ok(LoadedModel::Generation(Box::new(GenerationModel {
            generator,
            template,
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

    fn load(&self, source: &ModelSource, _ctx: &LoadContext) -> Result<LoadedModel> {
        let meta = hf::HfFolder::read(&source.path)?;
        let model = bert::BertModel::from_safetensors(&source.path, &meta.config)?;
        use bert::Encoder;
        let max_tokens = meta
            .max_seq_length()
            .unwrap_or(model.config().max_positions)
            .min(model.config().max_positions);
        let tokenizer = meta.tokenizer(Some(max_tokens))?;
        Ok(LoadedModel::Embedding(EmbeddingModel {
            encoder: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            pooling: Pooling::from_model_dir(&source.path)?,
            normalize: meta.normalizes(),
            max_tokens,
        }))
    }
}

/// All skills of this build.
pub struct Registry {
    skills: Vec<Box<dyn Skill>>,
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
                        formats: &[Format::Gguf, Format::Safetensors],
                        platforms: CPU_ONLY,
                        architectures: llama::ARCHITECTURES,
                    },
                }),
                Box::new(BertSkill {
                    info: SkillInfo {
                        name: "bert",
                        task: Task::Embed,
                        formats: &[Format::Safetensors],
                        platforms: CPU_ONLY,
                        architectures: bert::ARCHITECTURES,
                    },
                }),
            ],
        }
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
                format!("{} ({})", i.architectures.join(", "), formats.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The skill for an architecture in a format, or a clear error.
    pub fn find(&self, arch: &str, format: Format) -> Result<&dyn Skill> {
        let arch_l = arch.to_ascii_lowercase();
        self.skills
            .iter()
            .find(|s| s.info().formats.contains(&format) && s.info().architectures.contains(&arch_l.as_str()))
            .map(|s| s.as_ref())
            .ok_or_else(|| EngineError::UnsupportedArchitecture {
                arch: format!("{arch} ({})", format.as_str()),
                supported: self.supported(),
            })
    }

    /// Identify a source's architecture and find its skill.
    pub fn for_source(&self, source: &ModelSource) -> Result<&dyn Skill> {
        let arch = architecture_of(source)?;
        self.find(&arch, source.format)
    }
}

/// The architecture name of a model without loading it.
pub fn architecture_of(source: &ModelSource) -> Result<String> {
    match source.format {
        Format::Gguf => {
            let f = GgufFile::open(&source.path)?;
            f.architecture()
                .map(str::to_string)
                .ok_or_else(|| EngineError::format("GGUF has no general.architecture"))
        }
        Format::Safetensors => Ok(hf::HfFolder::read_config(&source.path)?.0),
    }
}

/// Is `path` a model folder (config.json beside safetensors weights)?
pub fn is_safetensors_model(dir: &Path) -> bool {
    dir.join("config.json").is_file() && crate::formats::safetensors::checkpoint_files(dir).is_ok()
}
