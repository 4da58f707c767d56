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

impl GgufFile {
    /// A stack of `count` matrices of `rows x cols` stored as one 3-D tensor
    /// (llama.cpp's `ffn_*_exps`: dims `[cols, rows, count]`), one matrix
    /// each, pointing into the file.
    pub fn matrix_stack(&self, name: &str, count: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>> {
        let t = self.tensor(name).ok_or_else(|| missing(name))?;
        let want = [cols as u64, rows as u64, count as u64];
        if t.dims.as_slice() != want {
            return Err(EngineError::format(format!(
                "{}: tensor {name} has shape {:?}; the metadata says {want:?}",
                self.path.display(),
                t.dims
            )));
        }
        check_matrix(&self.path, name, rows, cols)?;
        let view = self.tensor_view(t)?;
        let each = view.bytes().len() / count.max(1);
        (0..count)
            .map(|e| {
                let part = view
                    .slice(e * each, each)
                    .ok_or_else(|| EngineError::format(format!("tensor {name}: expert {e} is outside the file")))?;
                Matrix::from_mapped(rows, cols, t.dtype, part)
            })
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::testing::{build, write};

    #[test]
    fn a_stack_of_expert_matrices_splits_by_its_last_dimension() {
        // Three 2x4 f32 matrices, values 0..24 in order.
        let data: Vec<u8> = (0..24).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let f = GgufFile::open(&write(
            "experts.gguf",
            &build(&[], &[("exps", &[4, 2, 3], 0, 0)], &data),
        ))
        .unwrap();
        let stack = f.matrix_stack("exps", 3, 2, 4).unwrap();
        assert_eq!(stack.len(), 3);
        assert_eq!(stack[2].to_f32(), (16..24).map(|v| v as f32).collect::<Vec<_>>());
        // Shapes that disagree with the metadata, and a missing tensor.
        for (count, rows, cols) in [(2, 2, 4), (3, 4, 2), (3, 2, 8), (0, 2, 4)] {
            let e = f.matrix_stack("exps", count, rows, cols).unwrap_err().to_string();
            assert!(e.contains("shape"), "{e}");
        }
        assert!(f.matrix_stack("nope", 3, 2, 4).is_err());
    }
}
