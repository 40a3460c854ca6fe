//! Per-series work spread over threads, with the query's own thread taking part.
//!
//! Rayon's `par_iter`, called from a thread outside its pool (a query runs on one of the
//! server's runtime threads), hands the whole job to the pool and sleeps until it is done.
//! That puts two thread wake-ups on the query's path (the pool's threads, then the query's
//! own), and the query's thread does nothing meanwhile. On an idle machine the pool takes
//! tens to hundreds of microseconds to wake: for a selector over a few thousand series the
//! serial loop was faster.
//!
//! Here the calling thread works through the input in batches itself, and the pool's threads
//! join in as they wake, each taking the next batch not yet taken. A pool slow to wake costs
//! the query nothing beyond what the serial loop would; a pool awake shares the work.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// The fewest items a batch holds: taking a batch is an atomic add, and each batch's results
/// are a vector to merge.
const MIN_BATCH: usize = 32;

/// `f` over every item, in the items' order, spread over the calling thread and rayon's
/// pool. Each thread starts with its own `init()` state (a scratch buffer, say). The first
/// error stops the others before their next batch and is returned.
pub(crate) fn try_map<I, T, S, E>(
    items: &[I],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &I) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E>
where
    I: Sync,
    T: Send,
    E: Send,
{
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || items.len() < 2 * MIN_BATCH {
        let mut state = init();
        return items.iter().map(|i| f(&mut state, i)).collect();
    }
    // About eight batches per thread, so a thread that starts late or runs slow leaves
    // little for the others to wait on.
    let batch = (items.len() / ((helpers + 1) * 8)).max(MIN_BATCH);
    let batches = items.len().div_ceil(batch);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Mutex<Vec<(usize, Vec<T>)>> = Mutex::new(Vec::with_capacity(batches));
    let first_err: Mutex<Option<E>> = Mutex::new(None);
    let work = || {
        let mut state = init();
        let mut mine = Vec::new();
        'batches: while !failed.load(Ordering::Relaxed) {
            let b = next.fetch_add(1, Ordering::Relaxed);
            let start = b.saturating_mul(batch);
            if start >= items.len() {
                break;
            }
            let chunk = &items[start..items.len().min(start + batch)];
            let mut out = Vec::with_capacity(chunk.len());
            for item in chunk {
                match f(&mut state, item) {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_err
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                        break 'batches;
                    }
                }
            }
            mine.push((b, out));
        }
        done.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(&mut mine);
    };
    let work = &work;
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(move |_| work());
        }
        work();
    });
    if let Some(e) = first_err
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut parts = done.into_inner().unwrap_or_else(PoisonError::into_inner);
    parts.sort_unstable_by_key(|(b, _)| *b);
    let mut out = Vec::with_capacity(items.len());
    for (_, part) in parts {
        out.extend(part);
    }
    Ok(out)
}

/// [`try_map`] for work that cannot fail.
pub(crate) fn map<I, T>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T>
where
    I: Sync,
    T: Send,
{
    match try_map(items, || (), |_, i| Ok::<T, Infallible>(f(i))) {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_items_order_at_every_size() {
        for n in [0, 1, 31, 63, 64, 65, 1000, 4099] {
            let items: Vec<usize> = (0..n).collect();
            let got = map(&items, |i| i * 3);
            let want: Vec<usize> = items.iter().map(|i| i * 3).collect();
            assert_eq!(got, want, "n={n}");
        }
    }

    #[test]
    fn each_thread_gets_its_own_state() {
        let items: Vec<u32> = (0..5000).collect();
        // The state counts the items its thread has seen; no thread can see more than all.
        let got = try_map(
            &items,
            || 0usize,
            |seen, i| {
                *seen += 1;
                Ok::<_, Infallible>((*i, *seen))
            },
        );
        let got = got.unwrap_or_else(|never| match never {});
        assert_eq!(got.len(), items.len());
        assert!(got.iter().all(|(_, seen)| (1..=items.len()).contains(seen)));
        assert!(got.iter().map(|(i, _)| *i).eq(items.iter().copied()));
    }

    #[test]
    fn an_error_is_returned_and_stops_the_work() {
        let items: Vec<u32> = (0..10_000).collect();
        let calls = AtomicUsize::new(0);
        let got = try_map(
            &items,
            || (),
            |_, i| {
                calls.fetch_add(1, Ordering::Relaxed);
                if *i == 100 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(*i)
                }
            },
        );
        assert_eq!(got, Err("bad 100".to_string()));
        // Not vacuous: without the stop every item would be mapped.
        assert!(calls.load(Ordering::Relaxed) < items.len());
    }
}
