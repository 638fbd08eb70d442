//! Two threads sharing one layer: the caller and a helper that spins briefly between jobs.
//!
//! A single short prompt runs ~25 layers of ~50 µs each. Handing half of each to a thread
//! pool costs tens of µs of wake-up per layer (measured with rayon: the split then gained
//! nothing), so the helper here busy-waits for the next half for a little while (~a few
//! hundred µs) before it parks, and a job is handed over through two atomics.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

/// Spin iterations before the helper parks.
const SPINS_BEFORE_PARK: u32 = 20_000;

type Job = *const (dyn Fn() + Sync + 'static);

struct Shared {
    /// Bumped by the caller to post a job.
    posted: AtomicU64,
    /// Set by the helper to the number of the job it finished.
    finished: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    parked: AtomicBool,
    stop: AtomicBool,
    helper: OnceLock<Thread>,
}

// SAFETY: `job` is written by the caller only while the helper is idle (before `posted` is
// bumped) and read by the helper only between seeing `posted` and storing `finished`; the
// atomics order these accesses.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    /// One caller at a time; a concurrent caller runs both halves itself.
    caller: Mutex<()>,
}

impl Team {
    /// Starts the helper thread; `None` if the OS refuses a thread (then callers run alone).
    pub fn new() -> Option<Team> {
        let shared = Arc::new(Shared {
            posted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            helper: OnceLock::new(),
        });
        let for_helper = shared.clone();
        let handle = thread::Builder::new()
            .name("semroute-helper".into())
            .spawn(move || helper_loop(&for_helper))
            .ok()?;
        let _ = shared.helper.set(handle.thread().clone());
        Some(Team {
            shared,
            caller: Mutex::new(()),
        })
    }

    /// Runs `mine` on this thread and `theirs` on the helper, returning when both are done.
    pub fn run(&self, mine: impl FnOnce(), theirs: &(dyn Fn() + Sync)) {
        let Ok(_turn) = self.caller.try_lock() else {
            mine();
            theirs();
            return;
        };
        let shared = &*self.shared;
        // SAFETY: the lifetime is erased only for the hand-over: `WaitForHelper` below does
        // not let this function return (or unwind) before the helper has finished the job.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(theirs) };
        // SAFETY: the helper is idle (the last job finished), so nobody reads `job` now.
        unsafe { *shared.job.get() = Some(job) };
        let number = shared.posted.fetch_add(1, Ordering::SeqCst) + 1;
        if shared.parked.load(Ordering::SeqCst)
            && let Some(helper) = shared.helper.get()
        {
            helper.unpark();
        }
        let _wait = WaitForHelper { shared, number };
        mine();
    }
}

/// Waits (also during unwinding) until the helper has finished job `number`.
struct WaitForHelper<'a> {
    shared: &'a Shared,
    number: u64,
}

impl Drop for WaitForHelper<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.shared.finished.load(Ordering::Acquire) < self.number {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(helper) = self.shared.helper.get() {
            helper.unpark();
        }
    }
}

fn helper_loop(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let number = loop {
            let posted = shared.posted.load(Ordering::SeqCst);
            if posted != seen {
                break posted;
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            spins += 1;
            if spins < SPINS_BEFORE_PARK {
                std::hint::spin_loop();
            } else {
                shared.parked.store(true, Ordering::SeqCst);
                if shared.posted.load(Ordering::SeqCst) == seen
                    && !shared.stop.load(Ordering::SeqCst)
                {
                    thread::park_timeout(Duration::from_millis(50));
                }
                shared.parked.store(false, Ordering::SeqCst);
                spins = 0;
            }
        };
        seen = number;
        // SAFETY: the caller wrote `job` before bumping `posted` (SeqCst) and keeps the
        // closure alive until `finished` reaches `number`.
        if let Some(job) = unsafe { *shared.job.get() } {
            // A panic in the job must not kill the helper (the caller would wait forever).
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)() }));
        }
        shared.finished.store(number, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_halves_run_every_time() {
        let team = Team::new().unwrap_or_else(|| panic!("no helper thread"));
        let mine = AtomicUsize::new(0);
        let theirs = AtomicUsize::new(0);
        for i in 0..5000 {
            if i % 1000 == 999 {
                // Let the helper park, then wake it.
                thread::sleep(Duration::from_millis(5));
            }
            team.run(
                || {
                    mine.fetch_add(1, Ordering::Relaxed);
                },
                &|| {
                    theirs.fetch_add(1, Ordering::Relaxed);
                },
            );
            assert_eq!(
                theirs.load(Ordering::Relaxed),
                i + 1,
                "the helper's half finished before run returned"
            );
        }
        assert_eq!(mine.load(Ordering::Relaxed), 5000);
    }

    #[test]
    fn a_panicking_job_does_not_hang_the_caller() {
        let team = Team::new().unwrap_or_else(|| panic!("no helper thread"));
        team.run(|| {}, &|| panic!("job failed"));
        let ran = AtomicUsize::new(0);
        team.run(|| {}, &|| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 1);
    }
}
