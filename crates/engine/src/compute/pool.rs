//! The compute thread pool: the caller and `threads - 1` workers share the
//! tasks of one `for_each` at a time.
//!
//! A decode step is ~150 short parallel products of ~20-60 µs each, so the
//! cost of handing out work matters: a job is published with one atomic
//! store, and workers that finished a job spin briefly (bounded) waiting for
//! the next before parking on a condition variable — hot during a forward
//! pass, asleep (no CPU) between requests. Tasks are claimed with a CAS on
//! one word holding the job's epoch and the next task index, so a late worker
//! can never take a task of a job that has moved on.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// `epoch << 32 | next task index`.
    ticket: AtomicU64,
    /// The current job. Read as one unit so a worker never pairs one job's
    /// task count with another job's closure.
    job: Mutex<Option<Job>>,
    /// Tasks of the current job finished (reset before each publish; only
    /// holders of a task claimed from the current epoch add to it).
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
    epoch: u64,
    tasks: usize,
    f: *const Task<'static>,
}
// SAFETY: the pointee is `Sync`; the pointer is only dereferenced by a thread
// holding a task claimed from `epoch`, while that job's `for_each` waits.
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
        // SAFETY: the lifetime is erased only for the duration of this call:
        // we return (or unwind) only after every task of this job is done,
        // and workers call a job's closure only with a task claimed from it.
        let f_static = unsafe { std::mem::transmute::<*const Task<'_>, *const Task<'static>>(f as *const Task<'_>) };
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32) + 1;
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        *lock(&s.job) = Some(Job {
            epoch,
            tasks: n,
            f: f_static,
        });
        // Publish: from here on tasks of this epoch can be claimed.
        s.ticket.store(epoch << 32, Ordering::Release);
        {
            let sleepers = lock(&s.sleepers);
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        IN_POOL.with(|c| c.set(true));
        let mut own_panic = None;
        while let Some(i) = claim(s, epoch, n) {
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
            if spins < 20_000 {
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

/// Take the next task of job `epoch`, if any is left.
fn claim(s: &Shared, epoch: u64, n: usize) -> Option<usize> {
    let mut cur = s.ticket.load(Ordering::Acquire);
    loop {
        if cur >> 32 != epoch {
            return None;
        }
        let idx = (cur & 0xffff_ffff) as usize;
        if idx >= n {
            return None;
        }
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
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin a little, then park.
        let started = Instant::now();
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.ticket.load(Ordering::Acquire) >> 32 != seen {
                break;
            }
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = lock(&s.sleepers);
            // Re-check under the lock: `for_each` notifies under it.
            if s.ticket.load(Ordering::Acquire) >> 32 != seen || s.shutdown.load(Ordering::Acquire) {
                continue;
            }
            *sleepers += 1;
            sleepers = s.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner());
            *sleepers -= 1;
        }
        // The job as one unit; it may already be newer than the epoch seen
        // above, or gone — `claim` checks its epoch against the ticket.
        let Some(job) = *lock(&s.job) else {
            seen = s.ticket.load(Ordering::Acquire) >> 32;
            continue;
        };
        seen = job.epoch;
        while let Some(i) = claim(&s, job.epoch, job.tasks) {
            // SAFETY: a task of `job.epoch` is claimed and not yet marked
            // done, so that job's `for_each` has not returned: `f` is alive.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
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
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
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
                    for round in 0..500 {
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
        for _ in 0..20 {
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
