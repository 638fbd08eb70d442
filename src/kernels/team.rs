//! A team of threads sharing one piece of work: the caller and `threads - 1` helpers that
//! spin briefly between jobs. A job is `parts` calls of one closure; every thread, the
//! caller included, claims the next unclaimed part until none are left, so a helper the OS
//! has not scheduled simply takes no part (the others do its share).
//!
//! A single short prompt runs ~25 layers of ~50 µs each. Handing parts of each to a thread
//! pool costs tens of µs of wake-up per layer (measured with rayon: the split then gained
//! nothing), so helpers busy-wait for the next job for a little while (a few hundred µs)
//! before they park, and a part is claimed with one compare-and-swap.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

/// Spin iterations before a helper parks.
const SPINS_BEFORE_PARK: u32 = 20_000;

type Part = dyn Fn(usize) + Sync;

/// The job being shared: its number, the closure (lifetime erased) and how many parts.
#[derive(Clone, Copy)]
struct Posted {
    number: u32,
    job: *const Part,
    parts: usize,
}

// SAFETY: the pointer is only dereferenced by a thread that claimed one of the job's parts,
// and `Team::run` does not return before every claimed part has finished.
unsafe impl Send for Posted {}

struct Shared {
    /// The number of the last job posted (0: none yet).
    posted: AtomicU64,
    /// `job number << 32 | next unclaimed part`.
    claim: AtomicU64,
    /// Parts of the current job finished.
    done: AtomicUsize,
    /// Whether a part of the current job panicked.
    failed: AtomicBool,
    job: Mutex<Option<Posted>>,
    parked: Vec<AtomicBool>,
    stop: AtomicBool,
    helpers: OnceLock<Vec<Thread>>,
}

pub struct Team {
    shared: Arc<Shared>,
    threads: usize,
    /// One caller at a time; a concurrent caller runs every part itself.
    caller: Mutex<()>,
}

impl Team {
    /// A team of `threads` (the caller and `threads - 1` helpers); `None` for one thread or
    /// if the OS refuses a thread (then callers run alone).
    pub fn new(threads: usize) -> Option<Team> {
        if threads < 2 {
            return None;
        }
        let shared = Arc::new(Shared {
            posted: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            job: Mutex::new(None),
            parked: (1..threads).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            helpers: OnceLock::new(),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for index in 0..threads - 1 {
            let for_helper = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("semroute-helper-{index}"))
                .spawn(move || helper_loop(&for_helper, index));
            match spawned {
                Ok(handle) => handles.push(handle.thread().clone()),
                Err(_) => {
                    shared.stop.store(true, Ordering::SeqCst);
                    handles.iter().for_each(Thread::unpark);
                    return None;
                }
            }
        }
        let _ = shared.helpers.set(handles);
        Some(Team {
            shared,
            threads,
            caller: Mutex::new(()),
        })
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` once for every `i` in `0..parts`, spread over the team; returns when
    /// all have run. A panic in a part is raised again here, after the others finished.
    pub fn run<'a>(&self, parts: usize, job: &'a (dyn Fn(usize) + Sync + 'a)) {
        let turn = self.caller.try_lock();
        if parts < 2 || turn.is_err() {
            (0..parts).for_each(job);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: the lifetime is erased only for the hand-over: this function does not
        // return (its own parts run under catch_unwind) before every claimed part finished.
        let erased: *const Part =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), *const Part>(job) };
        let number = (shared.posted.load(Ordering::SeqCst) as u32)
            .wrapping_add(1)
            .max(1);
        {
            let mut slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(Posted {
                number,
                job: erased,
                parts,
            });
            shared.done.store(0, Ordering::SeqCst);
            shared.failed.store(false, Ordering::SeqCst);
            shared.claim.store((number as u64) << 32, Ordering::SeqCst);
            shared.posted.store(number as u64, Ordering::SeqCst);
        }
        if let Some(helpers) = shared.helpers.get() {
            for (helper, parked) in helpers.iter().zip(&shared.parked) {
                if parked.load(Ordering::SeqCst) {
                    helper.unpark();
                }
            }
        }
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            work_on(
                shared,
                Posted {
                    number,
                    job: erased,
                    parts,
                },
            )
        }));
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) < parts {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(panic) = panicked {
            resume_unwind(panic);
        }
        if shared.failed.load(Ordering::SeqCst) {
            resume_unwind(Box::new("a part run by a helper thread panicked"));
        }
    }
}

/// Claims and runs parts of `posted` until none are left (or a newer job replaced it).
fn work_on(shared: &Shared, posted: Posted) {
    let mut first_panic = None;
    loop {
        let claim = shared.claim.load(Ordering::SeqCst);
        let (number, next) = ((claim >> 32) as u32, (claim & 0xffff_ffff) as usize);
        if number != posted.number || next >= posted.parts {
            break;
        }
        if shared
            .claim
            .compare_exchange(claim, claim + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        // SAFETY: part `next` of this job is claimed, so the caller waits for it.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*posted.job)(next) }));
        if result.is_err() {
            shared.failed.store(true, Ordering::SeqCst);
        }
        shared.done.fetch_add(1, Ordering::Release);
        if let Err(panic) = result {
            first_panic.get_or_insert(panic);
        }
    }
    if let Some(panic) = first_panic {
        resume_unwind(panic);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(helpers) = self.shared.helpers.get() {
            helpers.iter().for_each(Thread::unpark);
        }
    }
}

fn helper_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let posted = shared.posted.load(Ordering::SeqCst);
            if posted != seen {
                seen = posted;
                break;
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            spins += 1;
            if spins < SPINS_BEFORE_PARK {
                std::hint::spin_loop();
            } else {
                shared.parked[index].store(true, Ordering::SeqCst);
                if shared.posted.load(Ordering::SeqCst) == seen
                    && !shared.stop.load(Ordering::SeqCst)
                {
                    thread::park_timeout(Duration::from_millis(50));
                }
                shared.parked[index].store(false, Ordering::SeqCst);
                spins = 0;
            }
        }
        let posted = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(posted) = posted {
            // A panic in a part must not kill the helper: it is caught, counted as done,
            // and raised in the caller.
            let _ = catch_unwind(AssertUnwindSafe(|| work_on(shared, posted)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_part_runs_once_every_time() {
        for threads in [2, 3, 5] {
            let team = Team::new(threads).unwrap_or_else(|| panic!("no helper threads"));
            assert_eq!(team.threads(), threads);
            let counts: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
            for round in 0..3000 {
                if round % 1000 == 999 {
                    // Let the helpers park, then wake them.
                    thread::sleep(Duration::from_millis(5));
                }
                let parts = 1 + round % 7;
                team.run(parts, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            let total: usize = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let expected: usize = (0..3000).map(|round| 1 + round % 7).sum();
            assert_eq!(total, expected, "{threads} threads");
        }
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller_and_the_team_goes_on() {
        let team = Team::new(3).unwrap_or_else(|| panic!("no helper threads"));
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(6, &|i| {
                if i == 4 {
                    panic!("part failed");
                }
                ran.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 5);
        team.run(4, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn one_thread_is_no_team() {
        assert!(Team::new(1).is_none());
        assert!(Team::new(0).is_none());
    }
}
