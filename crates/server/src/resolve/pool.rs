//! The scripts' own threads. Custom logic is CPU work a user wrote: it runs
//! on a fixed number of threads of its own at nice 10, never on the
//! engine's runtime or tokio's unbounded blocking pool. (At the engine's
//! priority, a loaded machine let six hostile scripts take an unrelated
//! collection's p99 from 11 to 76 ms.) A
//! conflict that needs a script waits for a free thread in its own lane;
//! nothing else waits for it (the lane gives its in-flight slot back while
//! it waits, see `dispatch::lane`).
//!
//! A run is bounded twice: the sandbox ends a script at its time limit (the
//! interrupt handler, and an allocator that refuses everything past the
//! deadline), and should that ever fail, the caller stops waiting at twice
//! the limit and answers "time limit" anyway. The abandoned run keeps its
//! thread (a thread cannot be killed) and its slot until it returns, so the
//! pool shrinks instead of growing.

use super::ScriptError;
use crate::clock::SharedClock;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

struct Job {
    /// Runs the script and sends its result (with its own duration) to the
    /// caller, unless the caller stopped waiting before it began.
    work: Box<dyn FnOnce() + Send>,
    /// Held until the run returns, however long the caller waited.
    _slot: OwnedSemaphorePermit,
}

pub(super) struct ScriptPool {
    threads: usize,
    /// One permit per thread that is free or running a waited-for run: a
    /// job is sent only with a permit, so it never waits behind another.
    slots: Arc<Semaphore>,
    /// Started on first use: most resolvers (every test's) never run a script.
    jobs: OnceLock<Result<SyncSender<Job>, String>>,
    /// What a run's own duration is measured by.
    clock: SharedClock,
}

/// Half the cores, at least one: scripts can never take the whole machine.
pub fn threads_default() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .div_ceil(2)
}

impl ScriptPool {
    pub(super) fn new(threads: usize, clock: SharedClock) -> Self {
        let threads = threads.max(1);
        ScriptPool {
            threads,
            slots: Arc::new(Semaphore::new(threads)),
            jobs: OnceLock::new(),
            clock,
        }
    }

    /// Runs `work` on a script thread once one is free. `time_ms_max` is the
    /// script's own limit: past twice that, the run is abandoned and
    /// answered as over its time limit. The duration is the run's own,
    /// without the wait for a thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        time_ms_max: u64,
        work: impl FnOnce() -> Result<T, ScriptError> + Send + 'static,
    ) -> (Result<T, ScriptError>, Duration) {
        let jobs = match self.jobs.get_or_init(|| start(self.threads)) {
            Ok(jobs) => jobs,
            Err(e) => return (Err(ScriptError::Engine(e.clone())), Duration::ZERO),
        };
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return (
                Err(ScriptError::Engine("the script pool is closed".into())),
                Duration::ZERO,
            );
        };
        let (reply, answer) = oneshot::channel();
        let clock = self.clock.clone();
        let job = Job {
            work: Box::new(move || {
                // Its caller stopped waiting before a thread was free to
                // start it (a starved thread): nobody wants the answer.
                if reply.is_closed() {
                    return;
                }
                let started = clock.elapsed();
                let ran = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
                    Err(ScriptError::Engine(
                        "the script engine panicked; the run is lost".into(),
                    ))
                });
                let _ = reply.send((ran, clock.elapsed().saturating_sub(started)));
            }),
            _slot: slot,
        };
        match jobs.try_send(job) {
            Ok(()) => {}
            // A permit is a free thread, so the channel has room for it.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                return (
                    Err(ScriptError::Engine("no script thread is running".into())),
                    Duration::ZERO,
                );
            }
        }
        let abandon_after = Duration::from_millis(time_ms_max.saturating_mul(2));
        match tokio::time::timeout(abandon_after, answer).await {
            Ok(Ok(ran)) => ran,
            Ok(Err(_)) => (
                Err(ScriptError::Engine(
                    "the script thread ended without an answer".into(),
                )),
                Duration::ZERO,
            ),
            Err(_) => {
                tracing::error!(
                    time_ms_max,
                    "a script ran past twice its time limit; it is abandoned and its thread stays busy until it returns"
                );
                (Err(ScriptError::TimeLimit(time_ms_max)), abandon_after)
            }
        }
    }
}

fn start(threads: usize) -> Result<SyncSender<Job>, String> {
    let (jobs, queue) = sync_channel::<Job>(threads);
    let queue = Arc::new(Mutex::new(queue));
    for n in 0..threads {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("sluice-script-{n}"))
            .spawn(move || work_on(&queue))
            .map_err(|e| format!("could not start a script thread: {e}"))?;
    }
    Ok(jobs)
}

/// A script thread: runs jobs until the pool is dropped.
fn work_on(queue: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = {
            // A panic never happens while the lock is held.
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        (job.work)();
    }
}

/// Script threads yield to the engine's: a busy script slows other scripts,
/// not the writes of collections that run none.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        const NICE: libc::c_int = 10;
        // SAFETY: plain system calls on this thread's own id; a failure only
        // leaves the priority as it was.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, NICE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_wait_for_a_thread_and_never_exceed_the_pool() {
        let pool = Arc::new(ScriptPool::new(2, crate::clock::SystemClock::shared()));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = (0..6).map(|_| {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                pool.run(1_000, move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    running.fetch_sub(1, SeqCst);
                    Ok(7)
                })
                .await
            })
        });
        for run in futures_util::future::join_all(runs).await {
            let (ran, took) = run.expect("task");
            assert_eq!(ran, Ok(7));
            assert!(took >= Duration::from_millis(30), "{took:?}");
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_run_that_never_returns_is_abandoned_and_keeps_its_thread() {
        let pool = ScriptPool::new(1, crate::clock::SystemClock::shared());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let (ran, _) = pool
            .run(20, move || {
                let _ = held.recv();
                Ok(())
            })
            .await;
        assert_eq!(ran, Err(ScriptError::TimeLimit(20)));
        assert!(started.elapsed() < Duration::from_millis(1_000));
        // Its slot is still taken: the next run waits until it returns.
        assert_eq!(pool.slots.available_permits(), 0);
        let next = pool.run(1_000, || Ok(()));
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut next)
                .await
                .is_err()
        );
        let _ = release.send(());
        assert_eq!(next.await.0, Ok(()));
    }

    #[tokio::test]
    async fn a_panicking_run_is_an_engine_error_and_the_thread_lives_on() {
        let pool = ScriptPool::new(1, crate::clock::SystemClock::shared());
        // Generous: the panic hook prints a backtrace first, which takes
        // seconds on a busy machine in a debug build.
        let (ran, _) = pool
            .run(60_000, || -> Result<(), _> { panic!("boom") })
            .await;
        assert!(matches!(ran, Err(ScriptError::Engine(_))), "{ran:?}");
        assert_eq!(pool.run(1_000, || Ok(())).await.0, Ok(()));
    }
}
