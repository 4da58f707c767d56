//! One view over the tensors of a GGUF file or a safetensors checkpoint, so a
//! skill's loader asks for tensors by name and shape and never by format.

use super::gguf::GgufFile;
use super::safetensors::Checkpoint;
use crate::compute::Matrix;
use crate::error::{EngineError, Result};
use crate::quant::dequantize_row;

pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    /// A 2-D tensor as `[rows = out, cols = in]`.
    fn matrix(&self, name: &str) -> Result<Matrix>;
    /// A 1-D tensor (norm weights, biases) as f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>>;

    /// `matrix`, which must be `rows x cols`: a file whose shapes disagree
    /// with its config fails to load, instead of failing (or reading out of
    /// bounds) in the first request.
    fn matrix_shaped(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let m = self.matrix(name)?;
        if m.rows() != rows || m.cols() != cols {
            return Err(EngineError::format(format!(
                "tensor {name} has shape {}x{}; the config says {rows}x{cols}",
                m.rows(),
                m.cols()
            )));
        }
        Ok(m)
    }

    /// `vector`, which must hold `len` values.
    fn vector_len(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.vector(name)?;
        if v.len() != len {
            return Err(EngineError::format(format!(
                "tensor {name} has {} values; the config says {len}",
                v.len()
            )));
        }
        Ok(v)
    }
}

fn missing(name: &str) -> EngineError {
    EngineError::format(format!("tensor {name} is missing"))
}

/// A weight matrix has rows and columns: a zero dimension (with any size
/// for the other, since the data is then empty) is a malformed file, and
/// would have the matrix code loop over rows that hold nothing.
fn check_matrix(file: &std::path::Path, name: &str, rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(EngineError::format(format!(
            "{}: tensor {name} has shape {rows}x{cols}: an empty weight matrix",
            file.display()
        )));
    }
    Ok(())
}

impl WeightSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.tensor(name).is_some()
    }

    fn matrix(&self, name: &str) -> Result<Matrix> {
        let t = self.tensor(name).ok_or_else(|| missing(name))?;
        let (cols, rows) = match t.dims.as_slice() {
            [c, r] => (*c as usize, *r as usize),
            [c, r, 1] | [c, r, 1, 1] => (*c as usize, *r as usize),
            other => {
                return Err(EngineError::format(format!(
                    "{}: tensor {name} has shape {other:?}, want 2-D",
                    self.path.display()
                )));
            }
        };
        check_matrix(&self.path, name, rows, cols)?;
        Matrix::from_mapped(rows, cols, t.dtype, self.tensor_view(t)?)
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| missing(name))?;
        // The bytes first: their range is checked against the file, which
        // bounds the element count before anything is allocated for it.
        let bytes = self.tensor_bytes(t)?;
        let n = t.elements() as usize;
        let mut out = vec![0f32; n];
        dequantize_row(t.dtype, bytes, &mut out);
        Ok(out)
    }
}

impl WeightSource for Checkpoint {
    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn matrix(&self, name: &str) -> Result<Matrix> {
        let t = self.get(name).ok_or_else(|| missing(name))?;
        let (rows, cols) = match t.shape.as_slice() {
            [r, c] => (*r, *c),
            other => {
                return Err(EngineError::format(format!(
                    "{}: tensor {name} has shape {other:?}, want 2-D",
                    self.dir.display()
                )));
            }
        };
        check_matrix(&self.dir, name, rows, cols)?;
        Matrix::from_mapped(rows, cols, self.dtype(name, t)?, self.bytes(t)?)
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.get(name).ok_or_else(|| missing(name))?;
        let n: usize = t.shape.iter().product();
        let ty = self.dtype(name, t)?;
        let bytes = self.bytes(t)?;
        if ty.row_bytes(n) != Some(bytes.bytes().len()) {
            return Err(EngineError::format(format!(
                "tensor {name}: size does not match its shape"
            )));
        }
        let mut out = vec![0f32; n];
        dequantize_row(ty, bytes.bytes(), &mut out);
        Ok(out)
    }
}
