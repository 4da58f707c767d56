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
        // Shards sit beside the index: a name that is a path would read
        // whatever file it points at.
        if let Some(bad) = files.iter().find(|f| !is_plain_file_name(f)) {
            return Err(EngineError::format(format!(
                "{}: weight_map names {bad:?}, not a file name in the folder",
                index.display()
            )));
        }
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

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
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
            // SAFETY: read-only map, held by the views taken from it; the file
            // must not change while mapped (see GgufFile::open).
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
        let map = self
            .maps
            .get(t.file)
            .ok_or_else(|| EngineError::internal("a tensor of another checkpoint"))?;
        MappedBytes::new(map.clone(), t.start, t.len).ok_or_else(|| {
            EngineError::format(format!(
                "{}: a tensor lies past the end of its file",
                self.dir.display()
            ))
        })
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .fold(0u64, u64::saturating_add)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::WeightSource;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hfms-st-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_safetensors(path: &Path, header: &str, data: &[u8]) {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn index_names_outside_the_folder_are_errors() {
        let dir = folder("index");
        for bad in ["../x.safetensors", "/etc/passwd", "a/b.safetensors", ".."] {
            let index = serde_json::json!({"weight_map": {"w": bad}});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            let e = checkpoint_files(&dir).unwrap_err().to_string();
            assert!(e.contains("not a file name"), "{bad}: {e}");
        }
        let index = serde_json::json!({"weight_map": {"w": "model-00001-of-00002.safetensors"}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        assert_eq!(checkpoint_files(&dir).unwrap().len(), 1);
    }

    #[test]
    fn empty_weight_matrices_are_errors() {
        // No data, a valid file: the matrix code was asked for 2^40 rows.
        let dir = folder("empty");
        write_safetensors(
            &dir.join("model.safetensors"),
            r#"{"w":{"dtype":"F32","shape":[1099511627776,0],"data_offsets":[0,0]}}"#,
            &[],
        );
        let ck = Checkpoint::open(&dir).unwrap();
        let e = ck.matrix("w").unwrap_err().to_string();
        assert!(e.contains("empty weight matrix"), "{e}");
        assert!(ck.vector("w").unwrap().is_empty());
    }

    #[test]
    fn bad_headers_are_errors_naming_the_file() {
        let dir = folder("bad");
        let p = dir.join("model.safetensors");
        for header in [
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}}"#,
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}}"#,
            r#"{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#,
        ] {
            write_safetensors(&p, header, &[0; 16]);
            let e = Checkpoint::open(&dir).unwrap_err();
            assert!(matches!(e, EngineError::Format(_)));
            assert!(e.to_string().contains("model.safetensors"), "{e}");
        }
        // A header length past the file.
        std::fs::write(&p, u64::MAX.to_le_bytes()).unwrap();
        assert!(Checkpoint::open(&dir).is_err());
    }
}
