//! Opens a database directory (WAL replay included) and reports how long it took: a way to
//! measure restart cost on a copy of real data without the server around it.
//!
//! `cargo run --release -p m3query-tsdb --example open_db -- DIR [seal|digest]`. The
//! directory is written to (torn tails are cut, a new segment is started): run it on a copy.
//! With `seal` it also waits for the background sealing of replayed chunks before exiting;
//! with `digest` it prints a digest of every sample in the head's time range, to check that
//! a change to replay restores the same data.

use std::hash::{Hash, Hasher};
use std::time::Instant;

use m3query_model::{MatchOp, Matcher};
use m3query_storage::{Context, Queryable, SelectHints};

/// Series, samples and a digest of labels, times and value bits in `[mint, maxt]`.
fn digest(db: &m3query_tsdb::Db, mint: i64, maxt: i64) -> Result<(u64, u64, u64), String> {
    let q = db.querier(mint, maxt).map_err(|e| e.to_string())?;
    let all = Matcher::new(MatchOp::RegexMatch, "__name__", ".+").map_err(|e| e.to_string())?;
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[all],
        )
        .map_err(|e| e.to_string())?;
    let (mut series, mut samples) = (0u64, 0u64);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    while let Some(s) = set.next() {
        let s = s.map_err(|e| e.to_string())?;
        series += 1;
        s.labels().to_string().hash(&mut h);
        let mut it = s.iter();
        while let Some(x) = it.next().map_err(|e| e.to_string())? {
            samples += 1;
            (x.t, x.v.to_bits()).hash(&mut h);
        }
    }
    Ok((series, samples, h.finish()))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: open_db DIR [seal|digest]");
        std::process::exit(2);
    };
    let mode = args.next().unwrap_or_default();
    let opts = m3query_tsdb::Options {
        retention_ms: 30 * 24 * 3_600_000,
        out_of_order_window_ms: 30 * 24 * 3_600_000,
        ..m3query_tsdb::Options::default()
    };
    let start = Instant::now();
    let db = match m3query_tsdb::Db::open(&dir, opts) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("open {dir}: {e}");
            std::process::exit(1);
        }
    };
    let m = db.metrics();
    println!(
        "open_ms={} series={} chunks={}",
        start.elapsed().as_millis(),
        m.head_series,
        m.head_chunks
    );
    if mode == "digest" {
        match digest(&db, m.head_min_time_ms, m.head_max_time_ms) {
            Ok((series, samples, d)) => {
                println!("digest series={series} samples={samples} digest={d:016x}")
            }
            Err(e) => {
                eprintln!("digest: {e}");
                std::process::exit(1);
            }
        }
        std::process::exit(0);
    }
    if mode == "seal" {
        drop(db);
        println!("closed_ms={}", start.elapsed().as_millis());
    } else {
        // Skip the close: it would wait for the background sealing.
        std::process::exit(0);
    }
}
