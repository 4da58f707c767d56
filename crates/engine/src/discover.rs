//! Finding models on disk and describing each without loading it: the
//! configured models folders (`org/name/` layout, any depth up to 4), the
//! Hugging Face hub cache (`models--org--name/snapshots/<rev>/`), and single
//! `.gguf` files or model folders named explicitly.
//!
//! Ids: the Hugging Face repo id where it can be known (the hub cache, or a
//! models folder laid out as `org/name`), else the folder or file stem. A
//! folder with several GGUF files gives `org/name:QUANT` per file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::Checkpoint;
use crate::quant::GgmlType;
use crate::skills::{Format, ModelSource, Registry, Task, hf::HfFolder, is_safetensors_model, llama};

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct DiscoverConfig {
    pub models_dirs: Vec<PathBuf>,
    /// The hub cache folder (`…/huggingface/hub`); None: not scanned.
    pub hf_cache: Option<PathBuf>,
    /// Explicit `.gguf` files or model folders; `(id, path)`, id optional.
    pub extra: Vec<(Option<String>, PathBuf)>,
    /// alias → model id.
    pub aliases: BTreeMap<String, String>,
}

/// `HF_HOME` as `huggingface_hub` resolves it: the variable, else
/// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("huggingface"))
}

/// The hub cache location as `huggingface_hub` resolves it.
pub fn default_hf_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    hf_home().map(|h| h.join("hub"))
}

/// Aliases every hfms knows, for the two models its README serves.
pub fn builtin_aliases() -> BTreeMap<String, String> {
    [
        ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("all-minilm", "sentence-transformers/all-MiniLM-L6-v2"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelDescription {
    pub id: String,
    pub aliases: Vec<String>,
    pub path: PathBuf,
    pub format: Format,
    /// "models_dir", "hf_cache" or "config".
    pub origin: &'static str,
    pub architecture: Option<String>,
    pub skill: Option<String>,
    pub task: Option<Task>,
    pub parameters: Option<u64>,
    pub size_bytes: u64,
    /// What the weights take in memory once the CPU engine has loaded them:
    /// quantised matrices repacked into their 8-row layouts (where the CPU
    /// has the SIMD kernels for them) are larger than in the file (Q5_K
    /// ×1.64, Q5_0 ×1.55, Q6_K ×1.52, Q5_1 ×1.5, Q4_0 and Q4_K ×1.11; Q4_1
    /// and Q8_0 the same). Placement reserves this, not the file size, on
    /// every device (a GPU keeps GGUF blocks as in the file: see
    /// docs/design.md, the GPU path's gaps).
    pub memory_bytes: u64,
    /// Weight type: "Q4_1", "F32", "BF16"…
    pub dtype: Option<String>,
    pub context_length: Option<usize>,
    /// Hardware platforms that can run it in this build.
    pub hardware: Vec<String>,
    /// Why it cannot be served, when it cannot.
    pub error: Option<String>,
}

impl ModelDescription {
    pub fn source(&self) -> ModelSource {
        ModelSource {
            format: self.format,
            path: self.path.clone(),
        }
    }

    pub fn servable(&self) -> bool {
        self.error.is_none()
    }

    /// Every name the model answers to: its id, then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Describe one model source (reads headers and configs only).
pub fn describe(registry: &Registry, id: String, source: ModelSource, origin: &'static str) -> ModelDescription {
    let mut d = ModelDescription {
        id,
        aliases: Vec::new(),
        path: source.path.clone(),
        format: source.format,
        origin,
        architecture: None,
        skill: None,
        task: None,
        parameters: None,
        size_bytes: 0,
        memory_bytes: 0,
        dtype: None,
        context_length: None,
        hardware: Vec::new(),
        error: None,
    };
    let described = match source.format {
        Format::Gguf => describe_gguf(&mut d),
        Format::Safetensors => describe_folder(&mut d),
    };
    if let Err(e) = described {
        d.error = Some(e.to_string());
        return d;
    }
    let arch = d.architecture.clone().unwrap_or_default();
    match registry.find(&arch, source.format, crate::skills::is_classifier(&source)) {
        Ok(skill) => {
            let info = skill.info();
            d.skill = Some(info.name.to_string());
            d.task = Some(info.task);
            d.hardware = registry.platforms(info).iter().map(|p| p.to_string()).collect();
            if let Err(e) = skill.check(&d.source()) {
                d.error = Some(e.to_string());
            }
        }
        Err(e) => d.error = Some(e.to_string()),
    }
    d
}

/// A decoder of the Llama code serves the context its settings resolve to
/// (LongRoPE: the pretraining length), not always the metadata's.
fn runs_on_llama_code(arch: &str) -> bool {
    [
        llama::ARCHITECTURES,
        llama::GEMMA_ARCHITECTURES,
        llama::GEMMA2_ARCHITECTURES,
        llama::PHI3_ARCHITECTURES,
        llama::MOE_ARCHITECTURES,
    ]
    .iter()
    .any(|a| a.contains(&arch))
}

fn describe_gguf(d: &mut ModelDescription) -> crate::Result<()> {
    d.size_bytes = std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0);
    let f = GgufFile::open(&d.path)?;
    let arch = crate::skills::gguf_architecture(&f).unwrap_or_else(|| "unknown".into());
    let meta_arch = f.architecture().unwrap_or("unknown");
    d.context_length = f.get_u64(&format!("{meta_arch}.context_length")).map(|v| v as usize);
    if runs_on_llama_code(&arch)
        && let Ok(cfg) = llama::config_from_gguf(&f)
    {
        d.context_length = Some(cfg.context_length);
    }
    d.architecture = Some(arch);
    d.parameters = Some(f.parameter_count());
    // The type holding most of the 2-D weight bytes names the quantisation.
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in f.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *by_type.entry(t.dtype.name()).or_default() += t.byte_len().unwrap_or(0) as u64;
    }
    d.dtype = by_type.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t.to_string());
    // The file minus what the engine repacks, plus the repacked sizes.
    d.memory_bytes = f.tensors.iter().fold(d.size_bytes, |total, t| {
        let (Ok(file), &[cols, rows]) = (t.byte_len(), &t.dims[..]) else {
            return total;
        };
        let packed = crate::quant::packed::packing_enabled()
            .then(|| crate::quant::packed::packed_len(t.dtype, rows as usize, cols as usize))
            .flatten();
        match packed {
            Some(packed) => total.saturating_sub(file as u64).saturating_add(packed as u64),
            None => total,
        }
    });
    Ok(())
}

fn describe_folder(d: &mut ModelDescription) -> crate::Result<()> {
    d.size_bytes = dir_size(&d.path);
    d.memory_bytes = d.size_bytes;
    let meta = HfFolder::read(&d.path)?;
    d.architecture = Some(meta.arch.clone());
    d.context_length = meta.context_length();
    if runs_on_llama_code(&meta.arch)
        && let Ok(cfg) = llama::config_from_hf(&meta.config)
    {
        d.context_length = Some(cfg.context_length);
    }
    let ck = Checkpoint::open(&d.path)?;
    d.parameters = Some(ck.parameter_count());
    d.dtype = ck.main_dtype().map(|t: GgmlType| t.name().to_string());
    Ok(())
}

/// A quantisation tag from a GGUF file name: `model.Q4_K_M.gguf` → Q4_K_M.
pub fn quant_tag(stem: &str) -> Option<String> {
    let last = stem.rsplit(['.', '-']).next()?;
    let up = last.to_ascii_uppercase();
    let looks = (up.starts_with('Q') || up.starts_with("IQ") || up.starts_with('F') || up.starts_with("BF"))
        && up.chars().any(|c| c.is_ascii_digit())
        && up.len() <= 8;
    looks.then_some(up)
}

/// The quantisation tag of a GGUF file name, split suffix ignored:
/// `m-Q4_K_M-00001-of-00002.gguf` → Q4_K_M.
pub fn gguf_file_tag(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.strip_suffix(".gguf").unwrap_or(base);
    let stem = if is_split_shard(base) {
        stem.rsplitn(4, '-').nth(3).unwrap_or(stem)
    } else {
        stem
    };
    quant_tag(stem)
}

/// `org/name` → `models--org--name`, the hub cache's folder name.
pub fn hub_repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// `models--org--name` → `org/name`.
pub fn hub_repo_id(folder: &str) -> Option<String> {
    folder.strip_prefix("models--").map(|r| r.replacen("--", "/", 1))
}

pub fn is_split_shard(name: &str) -> bool {
    // llama.cpp's split naming: name-00002-of-00003.gguf
    let stem = name.trim_end_matches(".gguf");
    stem.rsplit_once("-of-")
        .map(|(head, tail)| {
            tail.chars().all(|c| c.is_ascii_digit())
                && head
                    .rsplit('-')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .unwrap_or(false)
}

/// GGUF files of a folder (no projector files, no later split shards).
fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let later_shard = is_split_shard(name) && !name.contains("-00001-of-");
        p.extension().is_some_and(|x| x == "gguf") && !name.starts_with("mmproj") && !later_shard
    });
    out.sort();
    out
}

/// Ids for the GGUF files in a folder whose id is `base`.
fn gguf_ids(base: &str, files: &[PathBuf]) -> Vec<(String, PathBuf)> {
    if files.len() == 1 {
        return vec![(base.to_string(), files[0].clone())];
    }
    files
        .iter()
        .map(|f| {
            let name = f.file_name().and_then(|s| s.to_str()).unwrap_or("model");
            let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let id = match gguf_file_tag(name) {
                Some(q) if !base.is_empty() => format!("{base}:{q}"),
                _ if !base.is_empty() => format!("{base}/{stem}"),
                _ => stem.to_string(),
            };
            (id, f.clone())
        })
        .collect()
}

fn rel_id(root: &Path, dir: &Path) -> String {
    dir.strip_prefix(root)
        .unwrap_or(dir)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn scan_models_dir(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, ModelSource)>) {
    if is_safetensors_model(dir) {
        let id = rel_id(root, dir);
        let id = if id.is_empty() {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            id
        };
        out.push((
            id,
            ModelSource {
                format: Format::Safetensors,
                path: dir.to_path_buf(),
            },
        ));
        return;
    }
    let files = gguf_files(dir);
    let base = rel_id(root, dir);
    for (id, path) in gguf_ids(&base, &files) {
        let id = if id.is_empty() {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            id
        };
        out.push((
            id,
            ModelSource {
                format: Format::Gguf,
                path,
            },
        ));
    }
    if depth == 0 {
        return;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    subdirs.sort();
    for sub in subdirs {
        let hidden = sub
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !hidden {
            scan_models_dir(root, &sub, depth - 1, out);
        }
    }
}

/// The snapshot folder a hub cache entry points at: `refs/main`, else the
/// most recently modified snapshot.
fn hub_snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snaps = repo_dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let p = snaps.join(rev.trim());
        if p.is_dir() {
            return Some(p);
        }
    }
    // Hidden folders are snapshots still being built (hfms pull).
    std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn scan_hf_cache(cache: &Path, out: &mut Vec<(String, ModelSource)>) {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    let mut repos: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    repos.sort();
    for repo in repos {
        let Some(name) = repo.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = hub_repo_id(name) else {
            continue;
        };
        let Some(snap) = hub_snapshot(&repo) else {
            continue;
        };
        if is_safetensors_model(&snap) {
            out.push((
                id,
                ModelSource {
                    format: Format::Safetensors,
                    path: snap,
                },
            ));
        } else {
            // Large quantisations often sit in a folder of their own.
            let mut files = gguf_files(&snap);
            if files.is_empty() {
                let mut subdirs: Vec<PathBuf> = std::fs::read_dir(&snap)
                    .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                    .unwrap_or_default();
                subdirs.sort();
                for d in subdirs {
                    files.extend(gguf_files(&d));
                }
            }
            for (gid, path) in gguf_ids(&id, &files) {
                out.push((
                    gid,
                    ModelSource {
                        format: Format::Gguf,
                        path,
                    },
                ));
            }
        }
    }
}

/// Every model found, described, with aliases attached. Ids are unique: the
/// first source to claim an id keeps it (models folders, then the hub cache,
/// then explicit entries — explicit ids override).
pub fn discover(registry: &Registry, cfg: &DiscoverConfig) -> Vec<ModelDescription> {
    let mut found: Vec<(String, ModelSource, &'static str)> = Vec::new();
    for (id, path) in &cfg.extra {
        let format = if path.is_dir() {
            Format::Safetensors
        } else {
            Format::Gguf
        };
        let id = id.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        found.push((
            id,
            ModelSource {
                format,
                path: path.clone(),
            },
            "config",
        ));
    }
    for root in &cfg.models_dirs {
        let mut v = Vec::new();
        scan_models_dir(root, root, 4, &mut v);
        found.extend(v.into_iter().map(|(i, s)| (i, s, "models_dir")));
    }
    if let Some(cache) = &cfg.hf_cache {
        let mut v = Vec::new();
        scan_hf_cache(cache, &mut v);
        found.extend(v.into_iter().map(|(i, s)| (i, s, "hf_cache")));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (id, source, origin) in found {
        if id.is_empty() || !seen.insert(id.clone()) {
            if !id.is_empty() {
                tracing::debug!(%id, path = %source.path.display(), "duplicate model id; keeping the first");
            }
            continue;
        }
        out.push(describe(registry, id, source, origin));
    }
    let ids: HashSet<String> = out.iter().map(|d| d.id.clone()).collect();
    for d in out.iter_mut() {
        d.aliases = cfg
            .aliases
            .iter()
            .filter(|(_, target)| **target == d.id)
            .map(|(a, _)| a.clone())
            .collect();
        // A folder's only GGUF file answers to `org/name:QUANT` too, so the
        // name `hfms pull org/name:QUANT` gave keeps working.
        let tag = d.path.file_name().and_then(|n| n.to_str()).and_then(gguf_file_tag);
        if d.format == Format::Gguf
            && !d.id.contains(':')
            && let Some(tag) = tag
        {
            let alias = format!("{}:{tag}", d.id);
            if !ids.contains(&alias) {
                d.aliases.push(alias);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quant_tags_and_split_shards() {
        assert_eq!(quant_tag("SmolLM2-135M-Instruct.Q4_1").as_deref(), Some("Q4_1"));
        assert_eq!(quant_tag("qwen2.5-0.5b-instruct-q4_k_m").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_tag("model-f16").as_deref(), Some("F16"));
        assert_eq!(quant_tag("model"), None);
        assert!(is_split_shard("big-00002-of-00003.gguf"));
        assert!(!is_split_shard("SmolLM2.Q4_1.gguf"));
    }

    #[test]
    fn ids_for_several_quantisations() {
        let files = vec![PathBuf::from("/m/a.Q4_K_M.gguf"), PathBuf::from("/m/a.Q8_0.gguf")];
        let ids: Vec<String> = gguf_ids("org/a", &files).into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec!["org/a:Q4_K_M", "org/a:Q8_0"]);
        let one = gguf_ids("org/a", &files[..1]);
        assert_eq!(one[0].0, "org/a");
        assert_eq!(
            gguf_file_tag("Q4_K_M/m-Q4_K_M-00001-of-00002.gguf").as_deref(),
            Some("Q4_K_M")
        );
        assert_eq!(hub_repo_id(&hub_repo_folder("org/na-me")).as_deref(), Some("org/na-me"));
    }

    #[test]
    fn hub_cache_layout_and_unsupported_architecture() {
        let root = std::env::temp_dir().join(format!("hfms-disc-{}", std::process::id()));
        let snap = root.join("models--acme--tiny-gpt/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("models--acme--tiny-gpt/refs")).unwrap();
        std::fs::write(root.join("models--acme--tiny-gpt/refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
        // A minimal valid safetensors file: empty header.
        let mut st = Vec::new();
        let header = b"{}      ";
        st.extend_from_slice(&(header.len() as u64).to_le_bytes());
        st.extend_from_slice(header);
        std::fs::write(snap.join("model.safetensors"), st).unwrap();
        let found = discover(
            &Registry::builtin(),
            &DiscoverConfig {
                hf_cache: Some(root.clone()),
                ..Default::default()
            },
        );
        assert_eq!(found.len(), 1);
        let d = &found[0];
        assert_eq!(d.id, "acme/tiny-gpt");
        assert_eq!(d.origin, "hf_cache");
        let err = d.error.as_deref().unwrap();
        assert!(err.contains("unsupported architecture gpt_neox"), "{err}");
        assert!(err.contains("llama"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }
}
