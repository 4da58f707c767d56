//! The compute thread pool: the caller and `threads - 1` workers share the
//! tasks of one `for_each` at a time.
//!
//! A decode step is ~150 short parallel products of ~20-60 µs each, so the
//! cost of handing out work matters: a job is published with one atomic
//! store, and workers that finished a job spin briefly (bounded) waiting for
//! the next before parking on a condition variable — hot during a forward
//! pass, asleep (no CPU) between requests. Tasks are claimed with a CAS on
//! one word holding the job's tag and the next task index, so a late worker
//! can never take a task of a job that has moved on.
//!
//! Soundness rests on one rule: a worker only calls a job's closure (which
//! lives on the stack of that job's `for_each`) while it holds a task of
//! that job that is claimed and not yet counted done, and `for_each` returns
//! only once all its tasks are counted. A worker makes its first claim of a
//! job while holding the `job` lock, where the job cannot be replaced, and
//! each further claim before counting the previous task done, so every claim
//! it makes is of a job that is still running: a tag that repeats after
//! 2^32 jobs can never be mistaken for another job's.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before parking. Under
/// Miri, which runs one thread at a time, spinning only burns time.
const SPIN: Duration = Duration::from_micros(if cfg!(miri) { 0 } else { 200 });

/// How often the caller spins on the last tasks before yielding.
const CALLER_SPINS: u32 = if cfg!(miri) { 0 } else { 20_000 };

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// `tag << 32 | next task index`; the tag is the job's number modulo
    /// 2^32 (see the module notes for why a repeat is harmless).
    ticket: AtomicU64,
    /// The current job. Read as one unit so a worker never pairs one job's
    /// task count with another job's closure.
    job: Mutex<Option<Job>>,
    /// Tasks of the current job finished (reset before each publish; only
    /// holders of a task claimed from the current job add to it).
    done: AtomicUsize,
    /// A task of the current job panicked on a worker.
    panicked: AtomicBool,
    /// One `for_each` at a time: models running on separate threads (a
    /// generator and an embedding batcher) share the pool and take turns
    /// per product.
    caller: Mutex<()>,
    /// Parking for idle workers.
    sleepers: Mutex<u64>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[derive(Clone, Copy)]
struct Job {
    tag: u32,
    tasks: usize,
    f: *const Task<'static>,
}
// SAFETY: the pointee is `Sync`, so calling it from another thread is fine;
// the pointer is only dereferenced by a thread that holds a task of this job
// claimed and not yet counted done, while the job's `for_each` waits for it
// (module notes), so the closure is alive whenever it is called.
unsafe impl Send for Job {}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

pub(super) struct Team {
    shared: Arc<Shared>,
    threads: usize,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = lock(&self.shared.sleepers);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Team {
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            ticket: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller: Mutex::new(()),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("hfms-compute-{i}"))
                    .spawn(move || worker(s))?,
            );
        }
        Ok(Team {
            shared,
            threads: threads.max(1),
            handles,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f(i)` for `i in 0..n` on the caller and the workers. A panic in
    /// any task is re-raised here after every claimed task has finished.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        // One task, one thread, or a call from inside a task: run here.
        if n <= 1 || self.threads == 1 || IN_POOL.with(|c| c.get()) {
            for i in 0..n {
                f(i);
            }
            return;
        }
        assert!(n < u32::MAX as usize, "too many tasks for one job");
        let s = &*self.shared;
        let _turn = lock(&s.caller);
        // SAFETY: only the lifetime is erased, and only for the duration of
        // this call: we return (or unwind) only after every task of this job
        // is counted done, and workers call a job's closure only while they
        // hold one of its tasks (module notes).
        let f_static = unsafe { std::mem::transmute::<*const Task<'_>, *const Task<'static>>(f as *const Task<'_>) };
        let tag = ((s.ticket.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        *lock(&s.job) = Some(Job {
            tag,
            tasks: n,
            f: f_static,
        });
        // Publish: from here on tasks of this job can be claimed.
        s.ticket.store((tag as u64) << 32, Ordering::Release);
        {
            let sleepers = lock(&s.sleepers);
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        IN_POOL.with(|c| c.set(true));
        let mut own_panic = None;
        while let Some(i) = claim(s, tag, n) {
            if own_panic.is_none()
                && let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i)))
            {
                own_panic = Some(p);
            }
            s.done.fetch_add(1, Ordering::AcqRel);
        }
        IN_POOL.with(|c| c.set(false));
        // Wait for tasks other threads took: `f` must outlive them.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < CALLER_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *lock(&s.job) = None;
        if let Some(p) = own_panic {
            resume_unwind(p);
        }
        if s.panicked.load(Ordering::Acquire) {
            panic!("a compute task panicked on a pool thread");
        }
    }
}

/// Take the next task of the job tagged `tag`, if any is left.
fn claim(s: &Shared, tag: u32, n: usize) -> Option<usize> {
    let mut cur = s.ticket.load(Ordering::Acquire);
    loop {
        if (cur >> 32) as u32 != tag {
            return None;
        }
        let idx = (cur & 0xffff_ffff) as usize;
        if idx >= n {
            return None;
        }
        // `idx < n < u32::MAX`: the increment stays within the index bits.
        match s
            .ticket
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(idx),
            Err(now) => cur = now,
        }
    }
}

fn worker(s: Arc<Shared>) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u32;
    loop {
        // Wait for a new tag: spin a little, then park.
        let started = Instant::now();
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if (s.ticket.load(Ordering::Acquire) >> 32) as u32 != seen {
                break;
            }
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = lock(&s.sleepers);
            // Re-check under the lock: `for_each` notifies under it.
            if (s.ticket.load(Ordering::Acquire) >> 32) as u32 != seen || s.shutdown.load(Ordering::Acquire) {
                continue;
            }
            *sleepers += 1;
            sleepers = s.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner());
            *sleepers -= 1;
        }
        // The job as one unit, and its first task claimed under the lock:
        // while we hold it the job cannot be replaced, so the ticket carries
        // this job's tag or, before the job is published, the previous one's
        // (then the claim fails and we come back).
        let (job, first) = {
            let current = lock(&s.job);
            let Some(job) = *current else {
                seen = (s.ticket.load(Ordering::Acquire) >> 32) as u32;
                continue;
            };
            (job, claim(&s, job.tag, job.tasks))
        };
        seen = job.tag;
        let mut next = first;
        while let Some(i) = next {
            // SAFETY: task `i` of `job` is claimed and not yet counted done,
            // so that job's `for_each` is still waiting: `f` is alive.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
            // Claim the next task before counting this one done: the job is
            // still running while we claim, so the tag is its own.
            next = claim(&s, job.tag, job.tasks);
            s.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let team = Team::new(3).unwrap();
        for n in [0usize, 1, 2, 7, 64, 1000] {
            for _ in 0..if cfg!(miri) { 3 } else { 50 } {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn tags_wrap_around() {
        let team = Team::new(3).unwrap();
        team.shared.ticket.store((u32::MAX as u64 - 1) << 32, Ordering::Release);
        for n in [5usize, 9, 2, 30, 7] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            team.for_each(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        assert_eq!(team.shared.ticket.load(Ordering::Acquire) >> 32, 3);
    }

    #[test]
    fn workers_park_when_idle_and_wake_for_work() {
        let team = Team::new(2).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // past the spin: parked
        let sum = AtomicUsize::new(0);
        team.for_each(100, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn nested_calls_run_inline() {
        let team = Arc::new(Team::new(2).unwrap());
        let count = AtomicUsize::new(0);
        let t2 = team.clone();
        team.for_each(4, &|_| {
            t2.for_each(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }
    #[test]
    fn concurrent_callers_share_the_pool() {
        // A generator and an embedding batcher call the same pool from
        // their own threads.
        let team = Arc::new(Team::new(3).unwrap());
        let callers: Vec<_> = (0..4)
            .map(|c| {
                let team = team.clone();
                std::thread::spawn(move || {
                    for round in 0..if cfg!(miri) { 20 } else { 500 } {
                        let n = 1 + (round * 7 + c * 13) % 97;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        team.for_each(n, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(
                            hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                            "caller {c} round {round}"
                        );
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_lives_on() {
        let team = Team::new(2).unwrap();
        for _ in 0..if cfg!(miri) { 3 } else { 20 } {
            let r = catch_unwind(AssertUnwindSafe(|| {
                team.for_each(64, &|i| {
                    if i == 37 {
                        panic!("task {i}");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let sum = AtomicUsize::new(0);
        team.for_each(100, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }
}
