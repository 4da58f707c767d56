//! Step buffers a busy thread reuses instead of allocating afresh.
//!
//! A decoder step needs a dozen activation buffers of up to
//! `max_batch_tokens × width` values, and the logits. `hfms serve` fixes
//! glibc's mmap threshold at 256 KiB so that memory goes back to the system
//! when the server idles; the price was that every such buffer was a new
//! mapping, and every page of it a fault the kernel zeroes: ~4,700 faults a
//! decode step of 8 sequences on Qwen2.5-0.5B, half of them on the logits.
//!
//! So a thread that runs steps holds a [`Keep`] while it has work: buffers
//! dropped meanwhile go to its free lists, and the next [`Scratch`] of any
//! size takes the best fitting one. Dropping the `Keep` (the thread goes
//! idle) frees them all. What a busy thread holds is about the largest set
//! of buffers one step has live at once (a step's buffers are allocated
//! together anyway); best fit can hand a big buffer to a small request and
//! make a later big one allocate, so a few more may be kept, at most
//! `MOST_KEPT`. An idle thread holds nothing, and a thread with no `Keep`
//! allocates and frees each buffer, as before.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};

use crate::quant::BlockQ8;

/// More free buffers than a step has live at once is a leak in the making.
const MOST_KEPT: usize = 32;

/// An element type with free lists of its own on each thread.
pub trait Reusable: Copy + Default + 'static {
    #[doc(hidden)]
    fn free_lists() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<Self>>>>;
}

thread_local! {
    static KEEPING: Cell<bool> = const { Cell::new(false) };
    static FREE_F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static FREE_Q8: RefCell<Vec<Vec<BlockQ8>>> = const { RefCell::new(Vec::new()) };
}

impl Reusable for f32 {
    fn free_lists() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<f32>>>> {
        &FREE_F32
    }
}

impl Reusable for BlockQ8 {
    fn free_lists() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<BlockQ8>>>> {
        &FREE_Q8
    }
}

/// While alive, this thread keeps the buffers of dropped [`Scratch`]es.
/// One at a time per thread; not `Send` (the lists are this thread's).
pub struct Keep {
    _this_thread: std::marker::PhantomData<*const ()>,
}

/// Start keeping this thread's step buffers (see the module notes).
pub fn keep() -> Keep {
    let before = KEEPING.with(|k| k.replace(true));
    // A nested Keep would clear the lists under the outer one when dropped.
    debug_assert!(!before, "one scratch::Keep at a time per thread");
    Keep {
        _this_thread: std::marker::PhantomData,
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        let _ = KEEPING.try_with(|k| k.set(false));
        let _ = FREE_F32.try_with(|f| f.borrow_mut().clear());
        let _ = FREE_Q8.try_with(|f| f.borrow_mut().clear());
    }
}

/// A `Vec<T>` of `n` default values, taken from this thread's free list
/// when it keeps buffers, and given back to it when dropped.
pub struct Scratch<T: Reusable> {
    buf: Vec<T>,
}

impl<T: Reusable> Scratch<T> {
    /// `n` values, each `T::default()` (zero).
    pub fn zeroed(n: usize) -> Self {
        let mut buf = take::<T>(n);
        buf.clear();
        // Exactly `n`: a kept buffer grown by `resize` alone would reserve
        // up to twice that.
        buf.reserve_exact(n);
        buf.resize(n, T::default());
        Scratch { buf }
    }

    /// A copy of `src`.
    pub fn copied(src: &[T]) -> Self {
        let mut buf = take::<T>(src.len());
        buf.clear();
        buf.reserve_exact(src.len());
        buf.extend_from_slice(src);
        Scratch { buf }
    }

    /// The buffer as a plain `Vec` (to return it); [`give_back`] takes it
    /// back once its receiver is done.
    pub fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.buf)
    }
}

impl<T: Reusable> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf
    }
}

impl<T: Reusable> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}

impl<T: Reusable> Drop for Scratch<T> {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// Keep `buf` for a later [`Scratch`] when this thread keeps buffers; else
/// free it.
pub fn give_back<T: Reusable>(buf: Vec<T>) {
    if buf.capacity() == 0 || !KEEPING.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    let _ = T::free_lists().try_with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < MOST_KEPT {
            free.push(buf);
        }
    });
}

/// The smallest kept buffer that holds `n` values; else the largest one
/// (it grows, and one buffer fewer stays behind); else a new one.
fn take<T: Reusable>(n: usize) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    T::free_lists()
        .try_with(|f| {
            let mut free = f.borrow_mut();
            let fits = (0..free.len())
                .filter(|&i| free[i].capacity() >= n)
                .min_by_key(|&i| free[i].capacity());
            let pick = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].capacity()));
            pick.map(|i| free.swap_remove(i))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        FREE_F32.with(|f| f.borrow().len())
    }

    #[test]
    fn buffers_are_reused_only_while_kept() {
        // No Keep: a dropped buffer is freed.
        drop(Scratch::<f32>::zeroed(1000));
        assert_eq!(kept(), 0);

        let keep = keep();
        let mut a = Scratch::<f32>::zeroed(1000);
        a.fill(7.0);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(kept(), 1);
        // A smaller request takes the same buffer, zeroed again.
        let b = Scratch::<f32>::zeroed(10);
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&v| v == 0.0));
        assert_eq!(b.len(), 10);
        drop(b);
        // A larger one grows it.
        let c = Scratch::<f32>::copied(&vec![1.5; 5000]);
        assert_eq!(c.len(), 5000);
        assert!(c.iter().all(|&v| v == 1.5));
        // Handed out and given back.
        let v = c.into_vec();
        assert_eq!(kept(), 0);
        give_back(v);
        assert_eq!(kept(), 1);
        drop(keep);
        assert_eq!(kept(), 0);
        give_back(vec![1.0f32; 10]);
        assert_eq!(kept(), 0);
    }

    #[test]
    fn the_best_fit_is_taken_and_the_lists_are_bounded() {
        let _keep = keep();
        let small = Scratch::<f32>::zeroed(10);
        let big = Scratch::<f32>::zeroed(10_000);
        let big_ptr = big.as_ptr();
        drop(small);
        drop(big);
        assert_eq!(Scratch::<f32>::zeroed(5000).as_ptr(), big_ptr);
        let many: Vec<_> = (0..MOST_KEPT + 5).map(|_| Scratch::<f32>::zeroed(4)).collect();
        drop(many);
        assert_eq!(kept(), MOST_KEPT);
        // Block buffers have lists of their own.
        drop(Scratch::<BlockQ8>::zeroed(3));
        assert_eq!(FREE_Q8.with(|f| f.borrow().len()), 1);
    }
}
