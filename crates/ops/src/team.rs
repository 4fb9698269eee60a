//! A team of threads for the many short parallel loops of a decode step (about five per layer,
//! each tens of microseconds). rayon puts idle workers to sleep within microseconds, so nearly
//! every loop paid a futex wake-up and a context switch on each worker, as much as the work at
//! one token (measured: 1.75× from 2 threads where 2× was the bound). A team's workers spin
//! between loops, as llama.cpp's do, and park after [`SPIN`] without work, so an idle engine
//! costs nothing.
//!
//! Threading: a model runner owns a team and enters it for a forward pass ([`Team::enter`]);
//! kernels call [`for_each`], which uses the entered team, or rayon's pool where none is entered
//! or the team is already running a loop (a nested or concurrent caller). The caller runs tasks
//! too and returns once every task is done and no worker still holds the loop. Workers park with
//! a timeout, so dropping the team always ends them.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::{IntoParallelIterator, ParallelIterator};

/// How long an idle worker spins before it parks: longer than the gaps inside a step (norms,
/// rotary embedding: microseconds) and than most gaps between steps (sampling, scheduling),
/// shorter than an idle engine's pause. f32 decode, 2-core Xeon, single noisy runs: 43 tok/s
/// parking at once, 46–49 after 200 µs, 48–51 after 2 ms, 44.5 (median of 3) after 1 ms.
const SPIN: Duration = Duration::from_micros(200);

/// How long a parked worker waits before checking whether the team is being dropped.
const PARK: Duration = Duration::from_millis(100);

/// One parallel loop, on its caller's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Shared {
    /// Bumped for every loop, so spinning workers notice one.
    epoch: AtomicU64,
    /// The running loop (erased lifetime), or null. A worker reads it only after counting
    /// itself in `active`, and the caller nulls it and waits for `active` to reach 0 before its
    /// `Job` goes out of scope, so no worker ever reads a finished loop.
    job: AtomicPtr<Job<'static>>,
    active: AtomicUsize,
    /// Held by the caller of a running loop.
    busy: AtomicBool,
    parked: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
}

pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Team {
    /// A team of `threads` in all: the caller of a loop and `threads − 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("team-{i}")).spawn(move || worker(&shared))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Team { shared, workers })
    }

    /// Runs `f` with this team as the one [`for_each`] uses on this thread.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|c| c.replace(self as *const Team));
        struct Restore(*const Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(previous);
        f()
    }

    /// f(0..n) on the team; false (nothing run) if the team is running another loop.
    fn try_run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        let s = &*self.shared;
        if s.busy.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
            return false;
        }
        let job = Job { f, n, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
        // SAFETY: only the lifetime is erased; see `Shared::job` for why no worker outlives it.
        let erased: *mut Job<'static> = unsafe { std::mem::transmute(&job as *const Job<'_> as *mut Job<'_>) };
        s.job.store(erased, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        job.work();
        while job.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        while s.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        s.busy.store(false, SeqCst);
        if job.panicked.load(SeqCst) {
            panic!("a task of a parallel loop panicked");
        }
        true
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0;
    loop {
        // Wait for a new loop: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst) {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                    parked = s.wake.wait_timeout(parked, PARK).unwrap_or_else(|e| e.into_inner()).0;
                }
                *parked -= 1;
            }
        }
        if s.stop.load(SeqCst) {
            return;
        }
        seen = s.epoch.load(SeqCst);
        s.active.fetch_add(1, SeqCst);
        let job = s.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: counted in `active`, so the caller keeps the job alive (see `Shared::job`).
            unsafe { (*job).work() };
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// f(i) for every i in 0..n, in parallel: on the team this thread entered, else on rayon's.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let team = CURRENT.with(Cell::get);
    // SAFETY: a team outlives every `enter` on it, during which alone CURRENT points to it.
    if n > 1 && !team.is_null() && unsafe { &*team }.try_run(n, &f) {
        return;
    }
    (0..n).into_par_iter().for_each(&f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_on_the_team_and_nested_loops_fall_back() {
        let team = Team::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        team.enter(|| {
            for _ in 0..50 {
                for_each(hits.len(), |i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            // A loop inside a loop's task runs on rayon (the team is busy), not deadlocked.
            for_each(4, |_| {
                for_each(10, |i| {
                    hits[i].fetch_add(1, SeqCst);
                })
            });
        });
        for (i, h) in hits.iter().enumerate() {
            assert_eq!(h.load(SeqCst), 50 + if i < 10 { 4 } else { 0 }, "index {i}");
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        let caught = team.enter(|| catch_unwind(|| for_each(8, |i| assert!(i != 5, "task 5"))));
        assert!(caught.is_err());
        let sum = AtomicUsize::new(0);
        team.enter(|| {
            for_each(100, |i| {
                sum.fetch_add(i, SeqCst);
            })
        });
        assert_eq!(sum.load(SeqCst), 4950);
    }
}
