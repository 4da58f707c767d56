//! CPU compute: the thread pool, weight matrices and their products, and the
//! element-wise operations of transformer layers. Plain `f32` slices in
//! row-major `[tokens, features]` layout; no tensor library in between.

pub mod attention;
pub mod gemm;
pub mod matrix;
pub mod ops;
mod pool;

use std::sync::Arc;

pub use matrix::{Matrix, Projections};

/// The threads that run model maths. One pool per process, sized explicitly
/// (never "all cores"): a model server shares the machine with its own HTTP
/// threads and often with other processes. Idle workers park; see `pool`.
#[derive(Clone)]
pub struct ComputePool {
    team: Arc<pool::Team>,
}

impl std::fmt::Debug for ComputePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputePool").field("threads", &self.threads()).finish()
    }
}

impl ComputePool {
    /// `threads == 0` picks the number of cores this process may use.
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = if threads == 0 { default_threads() } else { threads };
        let team = pool::Team::new(threads).map_err(|e| crate::EngineError::internal(format!("thread pool: {e}")))?;
        Ok(ComputePool { team: Arc::new(team) })
    }

    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// Run `f(i)` for `i in 0..n` across the pool; returns when all are done.
    pub fn for_each(&self, n: usize, f: impl Fn(usize) + Sync + Send) {
        self.team.for_each(n, &f);
    }
}

/// Cores available to this process: the affinity mask, which containers and
/// `taskset` narrow. Hyper-threads share a core's SIMD units, so matmul
/// threads beyond the physical count only add contention.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1)
}

/// A raw pointer that may cross into pool threads. Users guarantee that
/// concurrent writers touch disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// # Safety
    /// `i` is in bounds of the allocation and no other thread writes it.
    #[inline]
    pub unsafe fn write(self, i: usize, v: T) {
        unsafe { self.0.add(i).write(v) }
    }

    /// # Safety
    /// The range is in bounds and no other thread touches it meanwhile.
    #[inline]
    pub unsafe fn slice_mut<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
