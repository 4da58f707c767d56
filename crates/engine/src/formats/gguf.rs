//! GGUF reader: header, metadata and tensor directory, with tensor data left in
//! a memory map so that loading (and reloading after eviction) costs page-ins,
//! not copies.
//!
//! Layout (little-endian): magic `GGUF`, version (2 or 3), tensor count (u64),
//! metadata count (u64), metadata key/values, tensor infos (name, dims with the
//! fastest-moving dimension first, ggml type, offset), padding to
//! `general.alignment` (default 32), then the tensor data.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{EngineError, Result};
use crate::quant::GgmlType;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) if v >= 0 => Some(v as u64),
            MetaValue::I16(v) if v >= 0 => Some(v as u64),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn byte_len(&self) -> Result<usize> {
        let n = self.elements() as usize;
        self.dtype.row_bytes(n).ok_or_else(|| {
            EngineError::format(format!(
                "tensor {}: {} elements is not a whole number of {:?} blocks",
                self.name, n, self.dtype
            ))
        })
    }
}

/// An opened GGUF file. Cheap to clone (the map is shared).
#[derive(Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_offset: usize,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| EngineError::format("GGUF header is truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String> {
        let len = self.u64()? as usize;
        let bytes = self.take(len)?;
        // Some converters wrote invalid UTF-8 in token strings; keep what we can.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(EngineError::format("GGUF metadata arrays nest too deeply"));
                }
                let item_ty = self.u32()?;
                let n = self.u64()? as usize;
                // Every item takes at least one byte: a bound that stops a
                // corrupt count from allocating the world.
                if n > self.buf.len() - self.pos {
                    return Err(EngineError::format("GGUF metadata array is truncated"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(EngineError::format(format!(
                    "GGUF metadata value type {other} is unknown"
                )));
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated under us by another
        // process is outside what any model server can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let mut c = Cursor { buf: &map[..], pos: 0 };
        let magic = c.take(4)?;
        if magic != b"GGUF" {
            return Err(EngineError::format(format!(
                "{} is not a GGUF file (bad magic)",
                path.display()
            )));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(EngineError::format(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(EngineError::format(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let ty = c.u32()?;
            let dtype = GgmlType::from_id(ty)
                .ok_or_else(|| EngineError::format(format!("tensor {name} has unknown ggml type {ty}")))?;
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32)
            .max(1) as usize;
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            map,
        };
        for t in &file.tensors {
            let len = t.byte_len()?;
            let start = data_offset as u64 + t.offset;
            if start + len as u64 > file.map.len() as u64 {
                return Err(EngineError::format(format!(
                    "tensor {} lies past the end of {}",
                    t.name,
                    path.display()
                )));
            }
        }
        Ok(file)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let len = info.byte_len()?;
        let start = self.data_offset + info.offset as usize;
        Ok(&self.map[start..start + len])
    }

    /// A shared handle to the map with the byte range of a tensor, so that a
    /// weight matrix can point into the file without copying.
    pub fn tensor_view(&self, info: &TensorInfo) -> Result<MappedBytes> {
        let len = info.byte_len()?;
        let start = self.data_offset + info.offset as usize;
        Ok(MappedBytes {
            map: self.map.clone(),
            start,
            len,
        })
    }

    /// Total bytes of tensor data (what the weights occupy once paged in).
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter_map(|t| t.byte_len().ok())
            .map(|l| l as u64)
            .sum()
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.elements()).sum()
    }
}

/// Bytes that live inside a shared memory map.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    /// A range of a shared map; None when it lies outside the map.
    pub fn new(map: Arc<Mmap>, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= map.len()).then_some(MappedBytes { map, start, len })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Drop this range's pages from memory (they are re-read from the file
    /// if touched again): after a weight was repacked into its own memory,
    /// the file pages it was read from need not stay resident.
    pub fn release_pages(&self) {
        let page = 4096;
        let start = self.start.div_ceil(page) * page;
        let end = (self.start + self.len) / page * page;
        if end > start {
            // SAFETY: a read-only file mapping; MADV_DONTNEED only makes the
            // kernel re-read the pages from the file on the next access.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn push_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    /// A hand-built GGUF with two metadata keys and one F32 tensor.
    fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        push_str(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        push_str(&mut b, "llama");
        push_str(&mut b, "xs");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        for v in [7u32, 8, 9] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        push_str(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let dir = std::env::temp_dir().join(format!("hfms-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.gguf");
        std::fs::File::create(&p).unwrap().write_all(&tiny_gguf()).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        let xs: Vec<u64> = g
            .get("xs")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(xs, vec![7, 8, 9]);
        let t = g.tensor("w").unwrap();
        let bytes = g.tensor_bytes(t).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(f32::from_le_bytes(bytes[12..16].try_into().unwrap()), 4.0);
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        let dir = std::env::temp_dir().join(format!("hfms-gguf-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for cut in [3, 10, 30, 60, full.len() - 4] {
            let p = dir.join(format!("t{cut}.gguf"));
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(GgufFile::open(&p).is_err(), "cut at {cut}");
        }
    }
}
