//! Running parse, planning, evaluation and printing on a thread with a known, large stack.
//!
//! Every walk over a syntax tree recurses once per level, and a parsed tree may be
//! [`MAX_TREE_DEPTH`](crate::parser::MAX_TREE_DEPTH) levels deep (`a + a + ...` with that many
//! terms). Tokio's and rayon's threads have 2 MiB stacks, far too small for that, and their
//! size is the embedding program's choice. So the entry points of this crate run their work on
//! a thread of their own with [`STACK_SIZE`] bytes of stack: it is virtual memory, touched only
//! as deep as a query actually goes.
//!
//! Starting that thread is not free: its stack is mapped, faulted in and unmapped (a TLB
//! shootdown on every core) per query, which was about a third of the server time of a
//! trivial query. A thread that already has [`STACK_SIZE`] bytes of stack left runs the work
//! inline instead: the server gives its request threads such stacks
//! ([`RUNTIME_STACK_SIZE`]), so a query runs on the thread it is on.

use std::cell::Cell;

use crate::Error;

/// The stack of the threads trees are walked on. A release build needs 1.6-3.2 KiB per tree
/// level (a tree of [`MAX_TREE_DEPTH`](crate::parser::MAX_TREE_DEPTH) levels overflows 32 MiB
/// and fits in 64 MiB; `tests/deep_expressions.rs` walks such trees), so this leaves a 4x
/// margin. Unoptimized builds have frames several times larger, hence more there.
pub const STACK_SIZE: usize = if cfg!(debug_assertions) {
    1 << 30
} else {
    256 << 20
};

/// A stack size for threads that should run this crate's entry points inline: [`STACK_SIZE`]
/// and 16 MiB for what the thread has on its stack before it calls in.
pub const RUNTIME_STACK_SIZE: usize = STACK_SIZE + (16 << 20);

thread_local! {
    /// Set on threads started by [`run`], so nested entry points run inline.
    static ON_DEEP_STACK: Cell<bool> = const { Cell::new(false) };
    /// The lowest address of this thread's stack, once looked up (0: unknown).
    static STACK_LOW: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The lowest address of the calling thread's stack, if the platform says.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn stack_low() -> usize {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `pthread_getattr_np` initialises `attr` for the running thread when it returns
    // 0; only then is it read, and it is destroyed exactly once after that.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return 0;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if ok { addr as usize } else { 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn stack_low() -> usize {
    0
}

/// Whether the calling thread has at least [`STACK_SIZE`] bytes of stack below this frame.
fn has_deep_room() -> bool {
    let low = STACK_LOW.with(|c| match c.get() {
        Some(l) => l,
        None => {
            let l = stack_low();
            c.set(Some(l));
            l
        }
    });
    // An address in this frame stands for the stack pointer (stacks grow down).
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    low != 0 && sp > low && sp - low >= STACK_SIZE
}

/// Runs `f` on a thread with a [`STACK_SIZE`] stack and waits for it: inline when the
/// calling thread is one, or has that much stack left; else on a new thread. A panic in `f`
/// is resumed on the caller's thread, as if `f` had run there.
pub fn run<T: Send, E: Send + From<SpawnError>>(
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    if ON_DEEP_STACK.with(Cell::get) {
        return f();
    }
    if has_deep_room() {
        ON_DEEP_STACK.with(|d| d.set(true));
        // Reset on the way out, panics included: the thread's later frames start higher.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                ON_DEEP_STACK.with(|d| d.set(false));
            }
        }
        let _reset = Reset;
        return f();
    }
    // The caller's subscriber (which may be a thread-local default) and span stay in force:
    // spans opened on the new thread nest under the caller's.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("m3query-promql".into())
            .stack_size(STACK_SIZE)
            .spawn_scoped(s, || {
                ON_DEEP_STACK.with(|d| d.set(true));
                tracing::dispatcher::with_default(&dispatch, || span.in_scope(f))
            })
            .map_err(SpawnError)?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// No thread could be started (the process is out of threads or memory).
#[derive(Debug, thiserror::Error)]
#[error("cannot start a query thread: {0}")]
pub struct SpawnError(std::io::Error);

impl From<SpawnError> for Error {
    fn from(e: SpawnError) -> Self {
        Error::exec(e.to_string())
    }
}

impl From<SpawnError> for crate::parser::ParseError {
    fn from(e: SpawnError) -> Self {
        crate::parser::ParseError::new(crate::parser::PosRange::default(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_of_run() -> std::thread::ThreadId {
        run(|| Ok::<_, crate::Error>(std::thread::current().id())).expect("run")
    }

    #[test]
    fn small_stacks_get_a_thread_of_their_own() {
        let t = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| (std::thread::current().id(), thread_of_run()))
            .expect("spawn")
            .join()
            .expect("join");
        assert_ne!(t.0, t.1);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn runtime_sized_stacks_run_inline_and_nested_runs_too() {
        let t = std::thread::Builder::new()
            .stack_size(RUNTIME_STACK_SIZE)
            .spawn(|| {
                let me = std::thread::current().id();
                let nested = run(|| Ok::<_, crate::Error>(thread_of_run())).expect("run");
                // After the inline run the flag is down again; the next run decides afresh.
                (me, thread_of_run(), nested, ON_DEEP_STACK.with(Cell::get))
            })
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(t.0, t.1);
        assert_eq!(t.0, t.2);
        assert!(!t.3);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_panic_inline_resets_the_flag() {
        let flag = std::thread::Builder::new()
            .stack_size(RUNTIME_STACK_SIZE)
            .spawn(|| {
                let r = std::panic::catch_unwind(|| {
                    run(|| -> Result<(), crate::Error> { panic!("boom") })
                });
                assert!(r.is_err());
                ON_DEEP_STACK.with(Cell::get)
            })
            .expect("spawn")
            .join()
            .expect("join");
        assert!(!flag);
    }
}
