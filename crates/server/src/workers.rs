//! The threads that run requests' blocking work (queries, series and label lookups), the
//! most recently idle one first.
//!
//! Tokio's blocking pool wakes whichever idle thread has waited longest, so a run of
//! queries one after another visits every thread it has. Each thread's allocator keeps the
//! memory its last query freed until that thread allocates again. Once a query's own thread
//! decoded part of its samples (the engine's `par`), the 1x benchmark's peak RSS went from
//! 410 to 650 MB that way. Here the thread that finished last takes the next job, so
//! sequential queries reuse one thread, its allocator's free pages and its warm caches (peak
//! 420 MB, queries 2-3% faster), and only concurrent ones start more. A thread idle for
//! [`KEEP_ALIVE`] exits, and its memory goes back with it.
//!
//! The threads have [`RUNTIME_STACK_SIZE`] bytes of stack, so the engine walks deep
//! expressions on them directly instead of starting a thread of its own per query.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use m3query_promql::deep::RUNTIME_STACK_SIZE;

/// How long a thread waits for work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The most threads at once (tokio's blocking pool has the same bound); more jobs wait in
/// order. Queries are bounded well below it by `query.maxConcurrent`.
const MAX_THREADS: usize = 512;

type Job = Box<dyn FnOnce() + Send>;

/// Where a job is handed to one idle thread, and that thread waits for it.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    ready: Condvar,
}

/// The process's pool.
struct Pool {
    state: Mutex<State>,
    /// At most this many threads ([`MAX_THREADS`]; tests use fewer).
    max_threads: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            state: Mutex::default(),
            max_threads: MAX_THREADS,
        }
    }
}

#[derive(Default)]
struct State {
    /// Idle threads' slots, the last to go idle on top.
    idle: Vec<Arc<Slot>>,
    /// Jobs waiting for a thread, when [`MAX_THREADS`] are busy.
    queue: VecDeque<Job>,
    /// Threads alive, busy or idle.
    threads: usize,
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    /// The job panicked.
    #[error("request worker panicked: {0}")]
    Panicked(String),
    /// No thread was idle and a new one could not be started.
    #[error("cannot start a request worker thread: {0}")]
    Spawn(std::io::Error),
    /// The thread went away without an answer (it cannot, short of a bug here).
    #[error("request worker ended without an answer")]
    Lost,
}

/// Runs `f` on a pool thread and waits for it without holding up the async threads. A panic
/// in `f` is an error here, not a crash.
pub(crate) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WorkerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(
        pool(),
        Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| crate::routes::panic_detail(&*p).to_string());
            // The caller may have stopped waiting (a deadline, a client gone): nothing to do.
            let _ = tx.send(r);
        }),
    )?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(WorkerError::Panicked(msg)),
        Err(_) => Err(WorkerError::Lost),
    }
}

/// Hands `job` to the most recently idle thread, or starts a thread for it, or queues it
/// when [`MAX_THREADS`] are busy.
fn submit(pool: &'static Pool, job: Job) -> Result<(), WorkerError> {
    let mut st = pool.state();
    if let Some(slot) = st.idle.pop() {
        drop(st);
        *slot.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
        slot.ready.notify_one();
        return Ok(());
    }
    if st.threads >= pool.max_threads {
        st.queue.push_back(job);
        return Ok(());
    }
    st.threads += 1;
    drop(st);
    let started = std::thread::Builder::new()
        .name("m3query-worker".into())
        .stack_size(RUNTIME_STACK_SIZE)
        .spawn(move || work(pool, job, KEEP_ALIVE));
    if let Err(e) = started {
        pool.state().threads -= 1;
        return Err(WorkerError::Spawn(e));
    }
    Ok(())
}

/// A pool thread: runs its job, then queued jobs, then goes idle and runs what it is
/// handed, until it has waited `keep_alive` for nothing.
fn work(pool: &'static Pool, first: Job, keep_alive: Duration) {
    let slot = Arc::new(Slot::default());
    let mut job = first;
    loop {
        job();
        let mut st = pool.state();
        if let Some(next) = st.queue.pop_front() {
            job = next;
            continue;
        }
        st.idle.push(slot.clone());
        drop(st);
        let mut held = slot.job.lock().unwrap_or_else(PoisonError::into_inner);
        job = loop {
            if let Some(j) = held.take() {
                break j;
            }
            let (h, waited) = slot
                .ready
                .wait_timeout(held, keep_alive)
                .unwrap_or_else(PoisonError::into_inner);
            held = h;
            if waited.timed_out() && held.is_none() {
                // Retire, unless a submitter has taken this slot off the idle stack: then
                // its job is on the way, and this thread must stay for it.
                drop(held);
                let mut st = pool.state();
                if let Some(i) = st.idle.iter().position(|s| Arc::ptr_eq(s, &slot)) {
                    st.idle.remove(i);
                    st.threads -= 1;
                    return;
                }
                drop(st);
                held = slot.job.lock().unwrap_or_else(PoisonError::into_inner);
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    /// A pool of its own, so other tests' jobs do not count.
    fn private_pool() -> &'static Pool {
        Box::leak(Box::default())
    }

    fn idle_count(pool: &Pool) -> usize {
        pool.state().idle.len()
    }

    fn wait_idle(pool: &Pool, n: usize) {
        let t = std::time::Instant::now();
        while idle_count(pool) < n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "threads never went idle"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_last_thread_to_go_idle_takes_the_next_job() {
        let pool = private_pool();
        // Three threads, started by three jobs that wait for each other.
        let barrier = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..3 {
            let b = barrier.clone();
            submit(
                pool,
                Box::new(move || {
                    let _ = b.wait();
                }),
            )
            .expect("submit");
        }
        wait_idle(pool, 3);
        // Jobs one after another all land on one of them; handed out oldest-idle first
        // (as tokio's blocking pool does) they would go round all three.
        let mut ids = std::collections::HashSet::new();
        for _ in 0..12 {
            let (tx, rx) = std::sync::mpsc::channel();
            submit(
                pool,
                Box::new(move || tx.send(std::thread::current().id()).expect("send")),
            )
            .expect("submit");
            ids.insert(rx.recv_timeout(Duration::from_secs(10)).expect("ran"));
            wait_idle(pool, 3);
        }
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn concurrent_jobs_get_threads_of_their_own() {
        let rt = rt();
        // Four jobs that each wait for all four to have started: one thread per job, or
        // this never ends.
        let started = Arc::new(std::sync::Barrier::new(4));
        let all = rt.block_on(async {
            // Spawned, so every job is handed out before any is awaited.
            let jobs: Vec<_> = (0..4)
                .map(|_| {
                    let b = started.clone();
                    tokio::spawn(run(move || {
                        b.wait();
                        std::thread::current().id()
                    }))
                })
                .collect();
            let mut out = Vec::new();
            for j in jobs {
                out.push(j.await.expect("task"));
            }
            out
        });
        let distinct: std::collections::HashSet<_> =
            all.into_iter().map(|r| r.expect("ran")).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn a_panic_is_an_error_and_the_pool_goes_on() {
        let rt = rt();
        let r = rt.block_on(run(|| -> u32 { panic!("boom in a job") }));
        match r {
            Err(WorkerError::Panicked(m)) => assert!(m.contains("boom in a job"), "{m}"),
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert_eq!(rt.block_on(run(|| 7)).expect("ran"), 7);
    }

    #[test]
    fn the_threads_have_the_engines_stack() {
        let rt = rt();
        let fits = rt
            .block_on(run(|| {
                // A frame this size would overflow a 2 MiB stack.
                let big = [1u8; 8 << 20];
                std::hint::black_box(&big)
                    .iter()
                    .map(|&b| b as u64)
                    .sum::<u64>()
            }))
            .expect("ran");
        assert_eq!(fits, 8 << 20);
    }

    #[test]
    fn an_idle_thread_retires_unless_handed_a_job() {
        let pool = private_pool();
        pool.state().threads = 1;
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || work(pool, Box::new(|| {}), Duration::from_millis(50)));
        // Idle, then handed a job before its keep-alive ends: it runs it.
        std::thread::sleep(Duration::from_millis(10));
        submit(pool, Box::new(move || tx.send(()).expect("send"))).expect("submit");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the idle thread ran it");
        // Then nothing: it leaves the idle stack and ends.
        t.join().expect("retired");
        let st = pool.state();
        assert!(st.idle.is_empty());
        assert_eq!(st.threads, 0);
    }

    #[test]
    fn past_the_thread_limit_jobs_wait_their_turn() {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::default(),
            max_threads: 1,
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        // The one thread is held until told to go; the next jobs queue behind it.
        submit(
            pool,
            Box::new(move || {
                let _ = go_rx.recv();
            }),
        )
        .expect("submit");
        for i in 0..3 {
            let tx = tx.clone();
            submit(
                pool,
                Box::new(move || tx.send((i, std::thread::current().id())).expect("send")),
            )
            .expect("submit");
        }
        assert_eq!(pool.state().queue.len(), 3);
        assert_eq!(pool.state().threads, 1);
        go_tx.send(()).expect("go");
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("ran"))
            .collect();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(got.iter().all(|(_, t)| *t == got[0].1));
    }
}
