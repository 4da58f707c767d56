//! Which files of a repo a model server needs.
//!
//! A safetensors repo: its config, tokenizer and generation files, the
//! sentence-transformers modules (`modules.json`, `N_Name/` folders), and
//! the weights: the shards `model.safetensors.index.json` names, else
//! `model.safetensors`, else every top-level `.safetensors`. Other formats
//! (PyTorch `.bin`, ONNX, OpenVINO, TF, Flax) are left on the Hub.
//!
//! A GGUF repo: the one file (or split set) whose quantisation tag is asked
//! for, `Q4_K_M` by default as llama.cpp's `-hf` does; a repo with a single
//! GGUF model needs no tag. Projector files (`mmproj*`) are skipped.
//!
//! `--include` replaces the automatic choice by the files matching any of
//! its globs; `--exclude` then removes files.

use std::collections::BTreeSet;

use globset::{Glob, GlobSet, GlobSetBuilder};
use hfms_engine::discover::{gguf_file_tag as gguf_tag, is_split_shard};

use crate::HubError;

/// The default quantisation, as llama.cpp's `-hf`.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// Top-level files a safetensors model may need besides its weights.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];

pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// Globs from `--include` / `--exclude`.
pub fn globset(patterns: &[String], flag: &str) -> Result<Option<GlobSet>, HubError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        if p.is_empty() || p.len() > 500 {
            return Err(HubError::InvalidSpec(format!(
                "{flag} {p:?}: a glob of 1–500 characters"
            )));
        }
        let g = Glob::new(p).map_err(|e| HubError::InvalidSpec(format!("{flag} {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| HubError::InvalidSpec(format!("{flag}: {e}")))
}

/// Does this repo hold safetensors weights?
pub fn has_safetensors(files: &[String]) -> bool {
    files
        .iter()
        .any(|f| !f.contains('/') && (f.ends_with(".safetensors") || f == SAFETENSORS_INDEX))
}

/// A sentence-transformers module folder: `1_Pooling/config.json`,
/// `2_Dense/model.safetensors`, …
fn is_module_file(f: &str) -> bool {
    let Some((dir, file)) = f.split_once('/') else {
        return false;
    };
    let numbered = dir
        .split_once('_')
        .is_some_and(|(n, rest)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty());
    numbered
        && !file.contains('/')
        && (file.ends_with(".json") || file.ends_with(".safetensors") || file.ends_with(".txt"))
}

/// The shard names an index's `weight_map` points at.
pub fn index_shards(index: &serde_json::Value) -> Result<BTreeSet<String>, HubError> {
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| HubError::NoMatchingFiles(format!("{SAFETENSORS_INDEX} has no weight_map object")))?;
    let mut out = BTreeSet::new();
    for v in map.values() {
        let s = v
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains("..") && !s.starts_with('/') && s.ends_with(".safetensors"))
            .ok_or_else(|| {
                HubError::NoMatchingFiles(format!(
                    "{SAFETENSORS_INDEX}: weight_map value {v} is not a .safetensors file name"
                ))
            })?;
        out.insert(s.to_string());
    }
    Ok(out)
}

fn safetensors_files(files: &[String], index: Option<&serde_json::Value>) -> Result<Vec<String>, HubError> {
    let mut out: BTreeSet<String> = files
        .iter()
        .filter(|f| MODEL_FILES.contains(&f.as_str()) || is_module_file(f))
        .cloned()
        .collect();
    if let Some(index) = index {
        out.insert(SAFETENSORS_INDEX.to_string());
        for shard in index_shards(index)? {
            if !files.contains(&shard) {
                return Err(HubError::NoMatchingFiles(format!(
                    "{SAFETENSORS_INDEX} names {shard}, which the repo does not have"
                )));
            }
            out.insert(shard);
        }
    } else if files.iter().any(|f| f == "model.safetensors") {
        out.insert("model.safetensors".to_string());
    } else {
        out.extend(
            files
                .iter()
                .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
                .cloned(),
        );
    }
    Ok(out.into_iter().collect())
}

fn gguf_files(files: &[String], quant: Option<&str>) -> Result<Vec<String>, HubError> {
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".gguf") && !f.rsplit('/').next().unwrap_or(f).starts_with("mmproj"))
        .collect();
    if ggufs.is_empty() && has_safetensors(files) {
        return Err(HubError::NoMatchingFiles(
            "the repo holds safetensors weights, not GGUF files: name it without :QUANT".into(),
        ));
    }
    if ggufs.is_empty() {
        return Err(HubError::NoMatchingFiles(
            "the repo has neither safetensors nor GGUF weights (hfms serves those two formats)".into(),
        ));
    }
    let tags: BTreeSet<String> = ggufs.iter().filter_map(|f| gguf_tag(f)).collect();
    let pick = |tag: &str| -> Vec<String> {
        ggufs
            .iter()
            .filter(|f| gguf_tag(f).as_deref() == Some(tag))
            .map(|f| f.to_string())
            .collect()
    };
    let chosen = match quant {
        Some(q) => pick(q),
        None => {
            let default = pick(DEFAULT_QUANT);
            if !default.is_empty() {
                default
            } else if tags.len() <= 1 && (ggufs.len() == 1 || ggufs.iter().all(|f| is_split_shard(f))) {
                ggufs.iter().map(|f| f.to_string()).collect()
            } else {
                Vec::new()
            }
        }
    };
    if chosen.is_empty() {
        let available = if tags.is_empty() {
            ggufs.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
        } else {
            tags.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
        };
        let asked = quant.unwrap_or(DEFAULT_QUANT);
        return Err(HubError::NoMatchingFiles(format!(
            "no GGUF file tagged {asked}; name one as ORG/NAME:TAG (available: {available})"
        )));
    }
    // Two files with the same tag in different folders: ambiguous.
    let dirs: BTreeSet<&str> = chosen.iter().map(|f| f.rsplit_once('/').map_or("", |x| x.0)).collect();
    let split = chosen.iter().all(|f| is_split_shard(f));
    if dirs.len() > 1 || (chosen.len() > 1 && !split) {
        return Err(HubError::NoMatchingFiles(format!(
            "several GGUF files match: {}; pick with --include",
            chosen.join(", ")
        )));
    }
    Ok(chosen)
}

/// The files to fetch out of a repo's `files`. `index` is the parsed
/// `model.safetensors.index.json` when the repo has one (the caller fetches
/// it first).
pub fn select(
    files: &[String],
    quant: Option<&str>,
    include: Option<&GlobSet>,
    exclude: Option<&GlobSet>,
    index: Option<&serde_json::Value>,
) -> Result<Vec<String>, HubError> {
    let mut chosen = match include {
        Some(inc) => files.iter().filter(|f| inc.is_match(f.as_str())).cloned().collect(),
        None if quant.is_none() && has_safetensors(files) => safetensors_files(files, index)?,
        None => gguf_files(files, quant)?,
    };
    if let Some(exc) = exclude {
        chosen.retain(|f| !exc.is_match(f.as_str()));
    }
    if chosen.is_empty() {
        return Err(HubError::NoMatchingFiles(
            "no file of the repo matches --include/--exclude".into(),
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sentence_transformers_repo() {
        let files = names(&[
            ".gitattributes",
            "1_Pooling/config.json",
            "2_Normalize/.keep",
            "README.md",
            "config.json",
            "model.safetensors",
            "modules.json",
            "onnx/model.onnx",
            "pytorch_model.bin",
            "sentence_bert_config.json",
            "tokenizer.json",
            "vocab.txt",
        ]);
        let got = select(&files, None, None, None, None).unwrap();
        assert_eq!(
            got,
            names(&[
                "1_Pooling/config.json",
                "config.json",
                "model.safetensors",
                "modules.json",
                "sentence_bert_config.json",
                "tokenizer.json",
                "vocab.txt"
            ])
        );
    }

    #[test]
    fn sharded_repo_follows_the_index() {
        let files = names(&[
            "config.json",
            "consolidated.safetensors",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            SAFETENSORS_INDEX,
        ]);
        let index = serde_json::json!({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
        let got = select(&files, None, None, None, Some(&index)).unwrap();
        assert!(!got.contains(&"consolidated.safetensors".to_string()));
        assert_eq!(got.len(), 4);
        let bad = serde_json::json!({"weight_map": {"a": "../etc/passwd.safetensors"}});
        assert!(select(&files, None, None, None, Some(&bad)).is_err());
        let missing = serde_json::json!({"weight_map": {"a": "model-00009-of-00009.safetensors"}});
        assert!(select(&files, None, None, None, Some(&missing)).is_err());
    }

    #[test]
    fn gguf_by_tag() {
        let files = names(&["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf"]);
        assert_eq!(
            select(&files, None, None, None, None).unwrap(),
            names(&["m-Q4_K_M.gguf"])
        );
        assert_eq!(
            select(&files, Some("Q8_0"), None, None, None).unwrap(),
            names(&["m-Q8_0.gguf"])
        );
        let e = select(&files, Some("Q2_K"), None, None, None).unwrap_err().to_string();
        assert!(e.contains("Q4_K_M, Q8_0"), "{e}");
        // One file: no tag needed.
        let one = names(&["SmolLM2.Q4_1.gguf"]);
        assert_eq!(select(&one, None, None, None, None).unwrap(), one);
        // Split sets.
        let split = names(&[
            "big-Q4_K_M-00001-of-00002.gguf",
            "big-Q4_K_M-00002-of-00002.gguf",
            "big-Q8_0.gguf",
        ]);
        assert_eq!(select(&split, None, None, None, None).unwrap().len(), 2);
        assert!(select(&names(&["a.txt"]), None, None, None, None).is_err());
    }

    #[test]
    fn include_and_exclude() {
        let files = names(&["config.json", "model.safetensors", "onnx/model.onnx"]);
        let inc = globset(&["onnx/*".into(), "*.json".into()], "--include").unwrap();
        assert_eq!(
            select(&files, None, inc.as_ref(), None, None).unwrap(),
            names(&["config.json", "onnx/model.onnx"])
        );
        let exc = globset(&["*.safetensors".into()], "--exclude").unwrap();
        assert_eq!(
            select(&files, None, None, exc.as_ref(), None).unwrap(),
            names(&["config.json"])
        );
        let all = globset(&["*".into()], "--exclude").unwrap();
        assert!(select(&files, None, None, all.as_ref(), None).is_err());
        assert!(globset(&["[".into()], "--include").is_err());
        assert!(globset(&[String::new()], "--include").is_err());
    }
}
