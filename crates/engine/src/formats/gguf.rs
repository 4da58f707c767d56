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
    /// The number of elements (saturating: a directory that [`GgufFile`]
    /// accepted never gets near the limit).
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Bytes of the tensor's data, or an error when its dims do not make a
    /// whole number of blocks or a size that fits in memory.
    pub fn byte_len(&self) -> Result<usize> {
        let n = self
            .dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| EngineError::format(format!("tensor {}: dims {:?} overflow", self.name, self.dims)))?;
        let (per_block, block_bytes) = self.dtype.block();
        if !n.is_multiple_of(per_block) {
            return Err(EngineError::format(format!(
                "tensor {}: {} elements is not a whole number of {:?} blocks",
                self.name, n, self.dtype
            )));
        }
        (n / per_block).checked_mul(block_bytes).ok_or_else(|| {
            EngineError::format(format!(
                "tensor {}: dims {:?} of {:?} overflow",
                self.name, self.dims, self.dtype
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

/// Metadata array items a file may hold in all (a vocabulary of a million
/// tokens with its scores, types and merges is 4M). Each item is a
/// `MetaValue` of 32 bytes whatever its size in the file, so without a bound
/// a file could ask for 32 times its own size in memory.
const MAX_ARRAY_ITEMS: usize = 1 << 23;

/// Why a header is malformed (the caller adds the file's name).
type ParseError = String;

/// What [`GgufFile::parse_header`] reads.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_offset: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array items still allowed (see [`MAX_ARRAY_ITEMS`]).
    items_left: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "{what} of {n} bytes at offset {} runs past the end of the file ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ParseError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count or length that must be at most `left / min_size` (every item
    /// takes at least `min_size` bytes of what is left).
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, ParseError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(min_size).is_some_and(|b| b <= self.left()));
        fits.ok_or_else(|| {
            format!(
                "{what} {n} at offset {at} is larger than the {} bytes left in the file could hold",
                self.left()
            )
        })
    }
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let len = self.count(&format!("{what} length"), 1)?;
        let bytes = self.take(len, what)?;
        // Some converters wrote invalid UTF-8 in token strings; keep what we can.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Bytes a value of type `ty` takes at least.
    fn min_size(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            // a string's length; an array's item type and count
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, ParseError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("a u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("an i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("a u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("an i16")?)),
            4 => MetaValue::U32(self.u32("a u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("an i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("an f32")?)),
            7 => MetaValue::Bool(self.array::<1>("a bool")?[0] != 0),
            8 => MetaValue::String(self.string("a string")?),
            9 => {
                if depth > 4 {
                    return Err("metadata arrays nest too deeply".to_string());
                }
                let item_ty = self.u32("an array item type")?;
                if item_ty > 12 {
                    return Err(format!(
                        "metadata array item type {item_ty} at offset {} is unknown",
                        self.pos - 4
                    ));
                }
                let n = self.count("array length", Self::min_size(item_ty))?;
                self.items_left = self
                    .items_left
                    .checked_sub(n)
                    .ok_or_else(|| format!("metadata arrays hold more than {MAX_ARRAY_ITEMS} items in all"))?;
                // Grown as items are read, not reserved from the count alone.
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("a u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("an i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("an f64")?)),
            other => {
                return Err(format!(
                    "metadata value type {other} at offset {} is unknown",
                    self.pos - 4
                ));
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as the bytes taken
        // from it (each view holds an Arc of it). What Rust cannot check is
        // that nobody changes or truncates the file while it is mapped: hfms
        // never writes model files, and a model store that rewrites files in
        // place under a running server (instead of writing a new file and
        // renaming it, as the Hugging Face cache does) is outside what any
        // mmap-based server (llama.cpp, candle, vLLM) can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let h = Self::parse_header(&map).map_err(|msg| EngineError::format(format!("{}: {msg}", path.display())))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            data_offset: h.data_offset,
            map,
        })
    }

    /// Header, metadata and tensor directory, every size checked against
    /// the file before anything is allocated for it.
    fn parse_header(buf: &[u8]) -> Result<Header, ParseError> {
        let mut c = Cursor {
            buf,
            pos: 0,
            items_left: MAX_ARRAY_ITEMS,
        };
        let magic = c
            .take(4, "the magic")
            .map_err(|_| "not a GGUF file (too short)".to_string())?;
        if magic != b"GGUF" {
            return Err("not a GGUF file (bad magic)".to_string());
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
        }
        // A tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8
        // (offset) bytes; a key/value 8 (key) + 4 (type) + 1.
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.count("metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32("a metadata value type")?;
            let v = c
                .value(ty, 0)
                .map_err(|e| format!("metadata {key:?} (key {i} of {n_kv}): {e}"))?;
            metadata.insert(key, v);
        }
        let left = c.left() as u64;
        if n_tensors > left / 24 {
            return Err(format!(
                "tensor count {n_tensors} is larger than the {left} bytes left in the file could hold"
            ));
        }
        let n_tensors = n_tensors as usize;
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let t = Self::tensor_info(&mut c, name).map_err(|e| format!("tensor {i} of {n_tensors}: {e}"))?;
            tensors.push(t);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 30)
                .ok_or_else(|| format!("general.alignment {v:?} is not a power of two"))?,
        } as usize;
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            let len = t.byte_len().map_err(|e| e.to_string())?;
            if t.offset % alignment as u64 != 0 {
                return Err(format!(
                    "tensor {}: offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                ));
            }
            let end = (data_offset as u64)
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(len as u64));
            if end.is_none_or(|e| e > buf.len() as u64) {
                return Err(format!(
                    "tensor {} ({} bytes at data offset {}) lies past the end of the file ({} bytes)",
                    t.name,
                    len,
                    t.offset,
                    buf.len()
                ));
            }
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    fn tensor_info(c: &mut Cursor<'_>, name: String) -> Result<TensorInfo, ParseError> {
        let n_dims = c.u32("a dims count")? as usize;
        if n_dims > 4 {
            return Err(format!("{name} has {n_dims} dimensions (at most 4)"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64("a dim")?);
        }
        let ty = c.u32("a ggml type")?;
        let dtype =
            GgmlType::from_id(ty).ok_or_else(|| format!("{name} has an unknown or unsupported ggml type {ty}"))?;
        let offset = c.u64("a tensor offset")?;
        Ok(TensorInfo {
            name,
            dims,
            dtype,
            offset,
        })
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

    /// Where a tensor's bytes are in the map, checked (a `TensorInfo` may
    /// come from elsewhere than this file's directory).
    fn tensor_range(&self, info: &TensorInfo) -> Result<(usize, usize)> {
        let len = info.byte_len()?;
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| self.data_offset.checked_add(o))
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= self.map.len()))
            .ok_or_else(|| {
                EngineError::format(format!(
                    "{}: tensor {} lies past the end of the file",
                    self.path.display(),
                    info.name
                ))
            })?;
        Ok((start, len))
    }

    /// The raw bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (start, len) = self.tensor_range(info)?;
        Ok(&self.map[start..start + len])
    }

    /// A shared handle to the map with the byte range of a tensor, so that a
    /// weight matrix can point into the file without copying.
    pub fn tensor_view(&self, info: &TensorInfo) -> Result<MappedBytes> {
        let (start, len) = self.tensor_range(info)?;
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
            .fold(0u64, |n, l| n.saturating_add(l as u64))
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().fold(0u64, |n, t| n.saturating_add(t.elements()))
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

    /// `len` bytes from `offset` within this range; None past its end.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Self> {
        (offset.checked_add(len)? <= self.len).then(|| MappedBytes {
            map: self.map.clone(),
            start: self.start + offset,
            len,
        })
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

/// A GGUF writer for tests: metadata as (key, type, payload bytes), tensors
/// as (name, dims, ggml type, offset), then the data.
#[cfg(test)]
pub(crate) mod testing {
    pub fn push_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    /// The payload of a string value.
    pub fn string(s: &str) -> (u32, Vec<u8>) {
        let mut b = Vec::new();
        push_str(&mut b, s);
        (8, b)
    }

    /// The payload of an array of strings.
    pub fn strings(items: &[&str]) -> (u32, Vec<u8>) {
        let mut b = Vec::new();
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            push_str(&mut b, s);
        }
        (9, b)
    }

    pub fn u32v(v: u32) -> (u32, Vec<u8>) {
        (4, v.to_le_bytes().to_vec())
    }

    pub fn u64v(v: u64) -> (u32, Vec<u8>) {
        (10, v.to_le_bytes().to_vec())
    }

    pub type Tensor<'a> = (&'a str, &'a [u64], u32, u64);

    pub fn build(kvs: &[(&str, (u32, Vec<u8>))], tensors: &[Tensor<'_>], data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, (ty, payload)) in kvs {
            push_str(&mut b, k);
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(payload);
        }
        for (name, dims, ty, offset) in tensors {
            push_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend_from_slice(data);
        b
    }

    /// Write `bytes` to a fresh file under the temp dir.
    pub fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hfms-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{build, string, u32v};
    use super::*;
    use crate::formats::WeightSource;
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

    /// The header of a hand-built file, or the reader's complaint.
    fn header(bytes: &[u8]) -> std::result::Result<Header, String> {
        GgufFile::parse_header(bytes)
    }

    fn err(bytes: &[u8]) -> String {
        match header(bytes) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    // Offsets in `tiny_gguf()`.
    const N_TENSORS: usize = 8;
    const N_KV: usize = 16;
    const KEY_LEN: usize = 24;
    const STR_LEN: usize = 56;
    const ARRAY_LEN: usize = 87;
    const DIM0: usize = 120;
    const DIM1: usize = 128;
    const OFFSET: usize = 140;

    #[test]
    fn huge_counts_and_lengths_are_errors_not_allocations() {
        assert!(header(&tiny_gguf()).is_ok());
        for v in [u64::MAX, 1 << 63, 1 << 40, 1 << 32, 1000] {
            let mut b = tiny_gguf();
            set_u64(&mut b, N_KV, v);
            assert!(err(&b).contains("metadata count"), "{v}: {}", err(&b));
            let mut b = tiny_gguf();
            set_u64(&mut b, N_TENSORS, v);
            assert!(err(&b).contains("tensor count"), "{v}: {}", err(&b));
            let mut b = tiny_gguf();
            set_u64(&mut b, KEY_LEN, v);
            assert!(err(&b).contains("length"), "{v}: {}", err(&b));
            let mut b = tiny_gguf();
            set_u64(&mut b, STR_LEN, v);
            assert!(err(&b).contains("a string length"), "{v}: {}", err(&b));
            let mut b = tiny_gguf();
            set_u64(&mut b, ARRAY_LEN, v);
            let e = err(&b);
            assert!(e.contains("array length") && e.contains("\"xs\""), "{v}: {e}");
        }
    }

    #[test]
    fn array_items_are_bounded_in_all() {
        // Three u8 items, with room for two.
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&3u64.to_le_bytes());
        buf.extend_from_slice(&[1, 2, 3]);
        let mut c = Cursor {
            buf: &buf,
            pos: 0,
            items_left: 2,
        };
        assert!(c.value(9, 0).unwrap_err().contains("items in all"));
        // An unknown item type is refused before its count is used.
        buf[0] = 13;
        let mut c = Cursor {
            buf: &buf,
            pos: 0,
            items_left: 100,
        };
        assert!(c.value(9, 0).unwrap_err().contains("item type 13"));
    }

    #[test]
    fn tensor_dims_that_overflow_are_errors() {
        // u64::MAX elements of F32: the byte count wrapped, passed the
        // bounds check and panicked on slicing.
        let mut b = tiny_gguf();
        set_u64(&mut b, DIM0, u64::MAX);
        assert!(err(&b).contains("overflow"), "{}", err(&b));
        // 2^32 x 2^32 wraps to 0 elements.
        let mut b = tiny_gguf();
        set_u64(&mut b, DIM0, 1 << 32);
        set_u64(&mut b, DIM1, 1 << 32);
        assert!(err(&b).contains("overflow"), "{}", err(&b));
        // Big but representable: past the end of the file.
        let mut b = tiny_gguf();
        set_u64(&mut b, DIM0, 1 << 40);
        assert!(err(&b).contains("past the end"), "{}", err(&b));
    }

    #[test]
    fn tensor_offsets_past_the_end_are_errors_not_wraps() {
        for off in [!31u64, !31u64 - 128, 1 << 40, 32] {
            let mut b = tiny_gguf();
            set_u64(&mut b, OFFSET, off);
            assert!(err(&b).contains("past the end"), "{off}: {}", err(&b));
        }
        let mut b = tiny_gguf();
        set_u64(&mut b, OFFSET, 4);
        assert!(err(&b).contains("alignment"), "{}", err(&b));
        // A TensorInfo from elsewhere cannot read outside the map either.
        let p = testing::write("offsets.gguf", &tiny_gguf());
        let g = GgufFile::open(&p).unwrap();
        let mut t = g.tensor("w").unwrap().clone();
        t.offset = u64::MAX - 3;
        assert!(g.tensor_bytes(&t).is_err());
        assert!(g.tensor_view(&t).is_err());
    }

    #[test]
    fn unknown_types_and_bad_alignment_are_errors() {
        let data = [0u8; 16];
        let w: testing::Tensor<'_> = ("w", &[4], 0, 0);
        assert!(header(&build(&[], &[w], &data)).is_ok());
        let e = err(&build(&[], &[("w", &[4], 99, 0)], &data));
        assert!(e.contains("unknown or unsupported ggml type 99"), "{e}");
        let e = err(&build(&[("k", (77, vec![0; 8]))], &[], &[]));
        assert!(e.contains("value type 77"), "{e}");
        for bad in [0, 3, 48, u32::MAX] {
            let e = err(&build(&[("general.alignment", u32v(bad))], &[w], &data));
            assert!(e.contains("general.alignment"), "{bad}: {e}");
        }
        let e = err(&build(&[("general.alignment", string("32"))], &[w], &data));
        assert!(e.contains("general.alignment"), "{e}");
        assert!(header(&build(&[("general.alignment", u32v(32))], &[w], &data)).is_ok());
    }

    #[test]
    fn empty_weight_matrices_are_errors() {
        // No data, so every size check passes: the matrix code was asked for
        // 2^40 empty rows.
        let p = testing::write("empty.gguf", &build(&[], &[("w", &[0, 1 << 40], 0, 0)], &[]));
        let g = GgufFile::open(&p).unwrap();
        let e = g.matrix("w").unwrap_err().to_string();
        assert!(e.contains("empty weight matrix"), "{e}");
        assert_eq!(g.vector("w").unwrap().len(), 0);
    }

    #[test]
    fn errors_name_the_file() {
        let mut b = tiny_gguf();
        set_u64(&mut b, STR_LEN, u64::MAX);
        let p = testing::write("named.gguf", &b);
        let e = GgufFile::open(&p).unwrap_err();
        assert!(matches!(e, EngineError::Format(_)));
        let e = e.to_string();
        assert!(e.contains("named.gguf") && e.contains("general.architecture"), "{e}");
    }
}
