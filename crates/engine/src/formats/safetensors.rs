//! safetensors checkpoints: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors stay in the file mappings.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::gguf::MappedBytes;
use crate::error::{EngineError, Result};
use crate::quant::GgmlType;

#[derive(Debug, Clone)]
pub struct StTensor {
    /// The safetensors dtype; only F32/F16/BF16 can become weights, and a
    /// checkpoint may carry others (e.g. BERT's I64 `position_ids` buffer).
    pub st_dtype: Dtype,
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    len: usize,
}

/// All tensors of a checkpoint folder, by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    maps: Vec<Arc<Mmap>>,
    tensors: HashMap<String, StTensor>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("files", &self.maps.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The safetensors files of a model folder, in load order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::format(format!("{}: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::format(format!("{} has no weight_map", index.display())))?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut any: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    any.sort();
    if any.is_empty() {
        return Err(EngineError::format(format!(
            "{} holds no .safetensors file",
            dir.display()
        )));
    }
    Ok(any)
}

fn ggml_type(d: Dtype, name: &str) -> Result<GgmlType> {
    match d {
        Dtype::F32 => Ok(GgmlType::F32),
        Dtype::F16 => Ok(GgmlType::F16),
        Dtype::BF16 => Ok(GgmlType::BF16),
        other => Err(EngineError::format(format!(
            "tensor {name} has dtype {other:?}; supported: F32, F16, BF16"
        ))),
    }
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let files = checkpoint_files(dir)?;
        let mut maps = Vec::new();
        let mut tensors = HashMap::new();
        for (fi, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
            // SAFETY: read-only map; see GgufFile::open.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
            let (header, meta) = SafeTensors::read_metadata(&map[..])
                .map_err(|e| EngineError::format(format!("{}: {e}", path.display())))?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                tensors.insert(
                    name,
                    StTensor {
                        st_dtype: info.dtype,
                        shape: info.shape.clone(),
                        file: fi,
                        start: base + a,
                        len: b - a,
                    },
                );
            }
            maps.push(Arc::new(map));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            maps,
            tensors,
        })
    }

    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The weight type of a tensor, or an error naming its unsupported dtype.
    pub fn dtype(&self, name: &str, t: &StTensor) -> Result<GgmlType> {
        ggml_type(t.st_dtype, name)
    }

    pub fn bytes(&self, t: &StTensor) -> Result<MappedBytes> {
        MappedBytes::new(self.maps[t.file].clone(), t.start, t.len)
            .ok_or_else(|| EngineError::format("tensor lies past the end of its file"))
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }

    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.len as u64).sum()
    }

    /// The most common dtype among the tensors (what a checkpoint "is").
    pub fn main_dtype(&self) -> Option<GgmlType> {
        let mut counts: HashMap<GgmlType, u64> = HashMap::new();
        for (name, t) in &self.tensors {
            if let Ok(d) = self.dtype(name, t) {
                *counts.entry(d).or_default() += t.len as u64;
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t)
    }
}
