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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// `epoch << 32 | next task index`.
    ticket: AtomicU64,
    /// Tasks in the current job.
    tasks: AtomicUsize,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// The current job's closure (valid while `done < tasks` for its epoch).
    job: Mutex<Option<JobPtr>>,
    /// Parking for idle workers.
    sleepers: Mutex<u64>,
    wake: Condvar,
    shutdown: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Task<'static>);
// SAFETY: the pointee is `Sync`; the pointer is only dereferenced while the
// job it belongs to is running (see `claim`).
unsafe impl Send for JobPtr {}

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
            let _g = self.shared.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Team {
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            ticket: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
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

    /// Run `f(i)` for `i in 0..n` on the caller and the workers.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        // One task, one thread, or a call from inside a task: run here.
        if n <= 1 || self.threads == 1 || IN_POOL.with(|c| c.get()) {
            for i in 0..n {
                f(i);
            }
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call:
        // we return after every task of this job is done, and workers never
        // call a job's closure without a task claimed from that job.
        let ptr = JobPtr(unsafe { std::mem::transmute::<*const Task<'_>, *const Task<'static>>(f as *const Task<'_>) });
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(ptr);
        s.tasks.store(n, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32) + 1;
        // Publish: from here on tasks of this epoch can be claimed.
        s.ticket.store(epoch << 32, Ordering::Release);
        {
            let sleepers = s.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        IN_POOL.with(|c| c.set(true));
        while let Some(i) = claim(s, epoch, n) {
            f(i);
            s.done.fetch_add(1, Ordering::AcqRel);
        }
        IN_POOL.with(|c| c.set(false));
        // Wait for tasks other threads took.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 20_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
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
        let epoch = loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = s.ticket.load(Ordering::Acquire) >> 32;
            if e != seen {
                break e;
            }
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = s.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            // Re-check under the lock: `for_each` notifies under it.
            if s.ticket.load(Ordering::Acquire) >> 32 != seen || s.shutdown.load(Ordering::Acquire) {
                continue;
            }
            *sleepers += 1;
            sleepers = s.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner());
            *sleepers -= 1;
        };
        seen = epoch;
        let n = s.tasks.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(|p| p.into_inner());
        let Some(JobPtr(f)) = job else { continue };
        while let Some(i) = claim(&s, epoch, n) {
            // SAFETY: a task of `epoch` is claimed and not yet marked done,
            // so `for_each` for that job has not returned: `f` is alive.
            unsafe { (*f)(i) };
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
}
