//! CPU compute: the thread pool, weight matrices and their products, and the
//! element-wise operations of transformer layers. Plain `f32` slices in
//! row-major `[tokens, features]` layout; no tensor library in between.

pub mod attention;
pub mod gemm;
pub mod matrix;
pub mod ops;
mod pool;
pub mod scratch;

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

    /// Run `f(i, part)` for every part of `out` cut at `ends` (part `i` is
    /// `out[ends[i - 1]..ends[i]]`, part 0 starts at 0; `ends` ascending).
    /// Each task gets its own `&mut` range, split safely up front: for
    /// outputs whose tasks write consecutive ranges.
    pub fn for_each_part<T: Send>(&self, out: &mut [T], ends: &[usize], f: impl Fn(usize, &mut [T]) + Sync + Send) {
        let mut parts = Vec::with_capacity(ends.len());
        let mut rest = out;
        let mut at = 0;
        for &end in ends {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(end - at);
            parts.push(std::sync::Mutex::new(part));
            (rest, at) = (tail, end);
        }
        // Each index runs once, so every lock is taken once, uncontended.
        self.for_each(parts.len(), |i| {
            let mut part = parts[i].lock().unwrap_or_else(|p| p.into_inner());
            f(i, &mut part)
        });
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

/// A mutable slice that the tasks of one [`ComputePool::for_each`] write
/// together, each task only elements that no other task reads or writes
/// (the output columns of one panel, one row's head). It borrows the slice
/// for `'a`, so the slice's owner cannot touch it while tasks can, and the
/// pointer stays valid for as long as a task can reach it: `for_each`
/// returns only after its last task.
///
/// Writers hand out single elements or row segments, never one `&mut` over
/// a range that another task writes into (overlapping `&mut` slices are
/// undefined behaviour even where the writes themselves do not collide).
pub(crate) struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a `SharedMut` is a `&mut [T]` whose elements different threads
// access, each element by one thread (the contract of `write` and
// `slice_mut`): moving `T` values between threads is all that happens, so
// `T: Send` suffices, as for `&mut [T]: Send`.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
// SAFETY: shared references only reach the elements through the `unsafe`
// accessors, whose callers guarantee that no element is accessed by two
// threads; again only `T: Send` values cross threads.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T: Copy> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// # Safety
    /// `i < self.len()` (the caller checked the bounds once, up front), and
    /// no other thread reads or writes element `i` during the `for_each`.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: T) {
        debug_assert!(i < self.len, "SharedMut::write({i}) past {}", self.len);
        // SAFETY: in bounds of the borrowed slice and written by this thread
        // alone (the caller's contract); `T: Copy`, so nothing is dropped.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Elements `start..start + len` as a slice of their own.
    ///
    /// # Safety
    /// `start + len <= self.len()`, and no other thread reads or writes
    /// those elements while the returned slice lives.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [T] {
        debug_assert!(
            start <= self.len && len <= self.len - start,
            "SharedMut::slice_mut({start}, {len}) past {}",
            self.len
        );
        // SAFETY: the range lies inside the borrowed slice and is accessed
        // through this slice only (the caller's contract); the borrow keeps
        // the memory alive and untouched by the owner for `'a`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    /// The start of the slice, for views that reach elements a row at a
    /// time (`gemm::PanelOut`); same contract as `slice_mut` for whatever
    /// is accessed through it.
    pub fn as_ptr(&self) -> *mut T {
        self.ptr
    }
}
