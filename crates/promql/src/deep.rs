//! Running parse, planning, evaluation and printing on a thread with a known, large stack.
//!
//! Every walk over a syntax tree recurses once per level, and a parsed tree may be
//! [`MAX_TREE_DEPTH`](crate::parser::MAX_TREE_DEPTH) levels deep (`a + a + ...` with that many
//! terms). Tokio's and rayon's threads have 2 MiB stacks, far too small for that, and their
//! size is the embedding program's choice. So the entry points of this crate run their work on
//! a thread of their own with [`STACK_SIZE`] bytes of stack: it is virtual memory, touched only
//! as deep as a query actually goes, and a thread costs tens of microseconds next to a query.

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

thread_local! {
    /// Set on threads started by [`run`], so nested entry points run inline.
    static ON_DEEP_STACK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on a thread with a [`STACK_SIZE`] stack (inline if this already is one) and waits
/// for it. A panic in `f` is resumed on the caller's thread, as if `f` had run there.
pub fn run<T: Send, E: Send + From<SpawnError>>(
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    if ON_DEEP_STACK.with(Cell::get) {
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
