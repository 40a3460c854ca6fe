//! `Db` behaviour: Prometheus's append errors, back-dated loads into an empty store, group
//! commit, retention, limits and cancellation, WAL repair, and cleanup on open.

use std::sync::Arc;

use m3query_model::{Labels, MatchOp, Matcher};
use m3query_storage::{
    Appendable, Context, Error as SError, LabelHints, Queryable, SelectHints, collect_series,
};
use m3query_tsdb::{Db, Fsync, Options};

const H: i64 = 3_600_000;

fn series(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", "node_cpu_seconds_total"),
        ("instance", &*format!("host-{i:03}")),
        ("job", if i.is_multiple_of(2) { "node" } else { "app" }),
    ])
}

fn select_all(db: &Db, mint: i64, maxt: i64, ms: &[Matcher]) -> Vec<m3query_storage::VecSeries> {
    let q = db.querier(mint, maxt).expect("querier");
    let mut set = q
        .select(&Context::background(), true, &SelectHints::default(), ms)
        .expect("select");
    collect_series(set.as_mut(), mint, maxt).expect("read").0
}

fn name() -> Vec<Matcher> {
    vec![Matcher::equal("__name__", "node_cpu_seconds_total")]
}

#[test]
fn backdated_six_hours_into_empty_store_is_accepted_and_cut_into_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    // Like the bench harness: 1-minute windows over 6h ending now-ish, all series per window.
    let end = 1_764_000_000_000i64;
    let start = end - 6 * H;
    let n = 40;
    let mut t = start;
    while t < end {
        let mut app = db.appender();
        for i in 0..n {
            for k in 0..4 {
                let ts = t + k * 15_000 + i as i64;
                app.append(&series(i), ts, (ts - start) as f64)
                    .expect("back-dated samples are accepted");
            }
        }
        app.commit().expect("commit");
        t += 60_000;
    }
    db.run_maintenance().expect("maintenance");
    let m = db.metrics();
    assert_eq!(m.samples_appended_total, (n * 4 * 360) as u64);
    assert!(m.blocks >= 2, "head cut into blocks: {m:?}");
    assert!(m.head_min_time_ms >= start + 2 * H, "head truncated: {m:?}");
    let got = select_all(&db, start, end, &name());
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|s| s.samples.len() == 4 * 360));
    // Samples behind the persisted range are now out of bounds.
    let mut app = db.appender();
    assert!(matches!(
        app.append(&series(0), start, 1.0),
        Err(SError::OutOfBounds)
    ));
    assert!(matches!(
        app.append(&series(999), start, 1.0),
        Err(SError::OutOfBounds)
    ));
    app.rollback();
    assert_eq!(db.metrics().refused_out_of_bounds_total, 2);
}

#[test]
fn prometheus_append_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let l = series(1);
    let mut app = db.appender();
    app.append(&l, 1000, 1.0).expect("first");
    app.append(&l, 2000, 2.0).expect("second");
    // Within the transaction too.
    assert!(matches!(
        app.append(&l, 1500, 0.0),
        Err(SError::OutOfOrderSample)
    ));
    assert!(matches!(
        app.append(&l, 2000, 3.0),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    app.append(&l, 2000, 2.0)
        .expect("same timestamp and value is accepted silently");
    app.commit().expect("commit");
    let mut app = db.appender();
    assert!(matches!(
        app.append(&l, 1999, 0.0),
        Err(SError::OutOfOrderSample)
    ));
    assert!(matches!(
        app.append(&l, 2000, -2.0),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    app.append(&l, 2000, 2.0)
        .expect("duplicate of committed sample");
    app.commit().expect("commit");
    let got = select_all(&db, 0, 10_000, &name());
    assert_eq!(got[0].samples.len(), 2);
    let m = db.metrics();
    assert_eq!(m.refused_out_of_order_total, 2);
    assert_eq!(m.refused_duplicate_total, 2);
}

#[test]
fn out_of_order_window_stores_and_merges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        out_of_order_window_ms: H,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    let l = series(2);
    let mut app = db.appender();
    for t in [10 * H, 10 * H + 60_000] {
        app.append(&l, t, t as f64).expect("in order");
    }
    app.commit().expect("commit");
    let mut app = db.appender();
    app.append(&l, 10 * H - 30_000, 1.0).expect("in the window");
    app.append(&l, 10 * H + 30_000, 2.0)
        .expect("between samples");
    assert!(matches!(
        app.append(&l, 8 * H, 0.0),
        Err(SError::TooOldSample)
    ));
    app.commit().expect("commit");
    let ts = |db: &Db| -> Vec<i64> {
        select_all(db, 0, 20 * H, &name())[0]
            .samples
            .iter()
            .map(|s| s.t)
            .collect()
    };
    let want = vec![10 * H - 30_000, 10 * H, 10 * H + 30_000, 10 * H + 60_000];
    assert_eq!(ts(&db), want);
    assert_eq!(db.metrics().out_of_order_samples_appended_total, 2);
    db.flush_head().expect("flush");
    assert_eq!(ts(&db), want, "after the head is written to a block");
    db.close().expect("close");
    drop(db);
    let db = Db::open(dir.path(), opts).expect("reopen");
    assert_eq!(ts(&db), want, "after reopening");
}

#[test]
fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), Options::default()).expect("open"));
    let threads = 4;
    let commits_per_thread = 50;
    std::thread::scope(|s| {
        for th in 0..threads {
            let db = db.clone();
            s.spawn(move || {
                for c in 0..commits_per_thread {
                    let mut app = db.appender();
                    for i in 0..20 {
                        app.append(&series(th * 100 + i), c as i64 * 1000, 1.0)
                            .expect("append");
                    }
                    app.commit().expect("commit");
                }
            });
        }
    });
    let m = db.metrics();
    let commits = (threads * commits_per_thread) as u64;
    assert_eq!(m.samples_appended_total, commits * 20);
    assert!(
        m.wal_fsyncs_total >= 1 && m.wal_fsyncs_total <= commits,
        "{m:?}"
    );
    assert_eq!(m.head_series, (threads * 20) as u64);
    let buckets = m.wal_fsync_buckets.last().map(|b| b.1);
    assert_eq!(buckets, Some(m.wal_fsyncs_total));
}

#[test]
fn retention_deletes_old_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        retention_ms: 4 * H,
        max_block_range_ms: Some(2 * H),
        fsync: Fsync::Never,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    for h in 0..12 {
        let mut app = db.appender();
        for i in 0..3 {
            app.append(&series(i), h * H + 1, h as f64).expect("append");
        }
        app.commit().expect("commit");
    }
    db.flush_head().expect("flush");
    db.run_maintenance().expect("maintenance");
    let blocks = db.blocks();
    let newest = blocks.iter().map(|b| b.max_time).max().expect("blocks");
    assert!(
        blocks.iter().all(|b| b.max_time > newest - 4 * H),
        "{blocks:?}"
    );
    assert!(db.metrics().retention_deleted_blocks_total > 0);
    let got = select_all(&db, 0, 20 * H, &name());
    assert!(got[0].samples.iter().all(|s| s.t > newest - 4 * H - 2 * H));
}

#[test]
fn select_limit_cancellation_and_label_lookups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let mut app = db.appender();
    for i in 0..3000 {
        app.append(&series(i), 1000, 1.0).expect("append");
    }
    app.commit().expect("commit");
    let q = db.querier(0, 2000).expect("querier");
    let hints = SelectHints {
        limit: 7,
        ..Default::default()
    };
    let mut set = q
        .select(&Context::background(), true, &hints, &name())
        .expect("select");
    assert_eq!(
        collect_series(set.as_mut(), 0, 2000).expect("read").0.len(),
        7
    );
    let ctx = Context::background();
    ctx.cancel();
    assert!(matches!(
        q.select(&ctx, true, &SelectHints::default(), &name()),
        Err(SError::Canceled)
    ));
    let empty = [Matcher::equal("job", "")];
    assert!(
        q.select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &empty
        )
        .is_err()
    );
    let ctx = Context::background();
    let jobs = q
        .label_values(&ctx, "job", &LabelHints::default(), &[])
        .expect("values");
    assert_eq!(jobs.values, vec!["app", "node"]);
    let m = [Matcher::new(MatchOp::RegexMatch, "instance", "host-00.").expect("m")];
    let jobs = q
        .label_values(&ctx, "job", &LabelHints::default(), &m)
        .expect("values");
    assert_eq!(jobs.values, vec!["app", "node"]);
    let m = [Matcher::equal("instance", "host-002")];
    let jobs = q
        .label_values(&ctx, "job", &LabelHints::default(), &m)
        .expect("values");
    assert_eq!(jobs.values, vec!["node"]);
    let names = q
        .label_names(&ctx, &LabelHints { limit: 2 }, &m)
        .expect("names");
    assert_eq!(names.values, vec!["__name__", "instance"]);
}

#[test]
fn torn_wal_tail_and_leftovers_are_repaired_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let mut app = db.appender();
        for t in 0..100 {
            app.append(&series(0), t * 1000, t as f64).expect("append");
        }
        app.commit().expect("commit");
        db.close().expect("close");
    }
    // A torn record at the end of the newest non-empty segment, and leftovers of a crash.
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 8).unwrap_or(false))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment with data");
    let mut data = std::fs::read(last).expect("read");
    data.extend_from_slice(&[2, 0, 0, 1, 0, 0xde, 0xad]);
    std::fs::write(last, &data).expect("write");
    let tmp = dir
        .path()
        .join("01JD3V6Q0A1B2C3D4E5F6G7H8J.tmp-for-creation");
    std::fs::create_dir_all(tmp.join("chunks")).expect("mkdir");
    let db = Db::open(dir.path(), Options::default()).expect("a torn tail never blocks opening");
    assert!(!tmp.exists());
    assert_eq!(select_all(&db, 0, 1_000_000, &name())[0].samples.len(), 100);
}

#[test]
fn second_open_of_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _db = Db::open(dir.path(), Options::default()).expect("open");
    assert!(matches!(
        Db::open(dir.path(), Options::default()),
        Err(m3query_tsdb::Error::Locked(_))
    ));
}

#[test]
fn every_fsync_policy_persists_committed_samples() {
    for policy in [
        Fsync::Always,
        Fsync::GroupCommit,
        Fsync::Interval(5),
        Fsync::Never,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: policy,
            maintenance_interval_ms: 10,
            ..Options::default()
        };
        {
            let db = Db::open(dir.path(), opts.clone()).expect("open");
            for t in 0..20 {
                let mut app = db.appender();
                app.append(&series(0), t * 1000, t as f64).expect("append");
                app.commit().expect("commit");
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
            let m = db.metrics();
            match policy {
                Fsync::Always => assert!(m.wal_fsyncs_total >= 20, "{policy:?}: {m:?}"),
                Fsync::GroupCommit => assert!(m.wal_fsyncs_total >= 1, "{policy:?}: {m:?}"),
                Fsync::Interval(_) => assert!(m.wal_fsyncs_total >= 1, "background fsync ran"),
                Fsync::Never => assert_eq!(m.wal_fsyncs_total, 0),
            }
        }
        let db = Db::open(dir.path(), opts).expect("reopen");
        assert_eq!(
            select_all(&db, 0, 100_000, &name())[0].samples.len(),
            20,
            "{policy:?}"
        );
    }
}

#[test]
fn corruption_count_counts_damaged_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let mut app = db.appender();
        for t in 0..100 {
            app.append(&series(0), t * 60_000, t as f64)
                .expect("append");
        }
        app.commit().expect("commit");
        db.flush_head().expect("flush");
        assert!(!db.blocks().is_empty(), "a block was cut");
        assert_eq!(db.corruption_count(), 0);
        db.close().expect("close");
    }
    let block = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .find(|e| e.path().join("meta.json").is_file())
        .expect("a block directory")
        .path();
    std::fs::write(block.join("meta.json"), b"{not json").expect("damage meta.json");
    let db =
        Db::open(dir.path(), Options::default()).expect("a damaged block never blocks opening");
    assert_eq!(db.corruption_count(), 1);
    let m = db.metrics();
    let in_metrics: u64 =
        m.wal_corruptions_total + m.corrupt_blocks.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(in_metrics, 1, "the same figure as the metrics");
}

/// A querier reads the blocks of its creation: a head cut that starts while it is open must
/// not drop from the head what the querier cannot find in its blocks. The cut waits for it.
#[test]
fn head_cut_waits_for_an_open_querier_that_would_miss_its_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = std::sync::Arc::new(Db::open(dir.path(), Options::default()).expect("open"));
    let mut app = db.appender();
    for t in 0..300 {
        app.append(&series(0), t * 60_000, t as f64)
            .expect("append");
    }
    app.commit().expect("commit");
    let q = db.querier(0, 300 * 60_000).expect("querier");
    assert!(db.blocks().is_empty(), "no block yet");

    let cutter = {
        let db = db.clone();
        std::thread::spawn(move || db.flush_head().expect("flush"))
    };
    // The cut writes its blocks, then waits for `q` before truncating the head.
    let waited = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        !db.blocks().is_empty() && !cutter.is_finished()
    });
    assert!(
        waited,
        "the head cut wrote its block and waits for the open querier"
    );
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &name(),
        )
        .expect("select");
    let got = collect_series(set.as_mut(), 0, 300 * 60_000)
        .expect("read")
        .0;
    assert_eq!(got[0].samples.len(), 300, "every sample, from the head");
    drop(set);
    drop(q);
    cutter.join().expect("cutter");

    let after = select_all(&db, 0, 300 * 60_000, &name());
    assert_eq!(
        after[0].samples.len(),
        300,
        "every sample, now from blocks and head"
    );
}

/// Queries of the head's open chunk start at its last seek point before their range: every
/// range still gets exactly its samples, wherever it starts.
#[test]
fn open_chunk_reads_from_any_start_get_exactly_their_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let mut app = db.appender();
    // 110 samples: one open chunk with seek points after samples 30, 60 and 90.
    let times: Vec<i64> = (0..110)
        .map(|i| 1_000 + i * 15_000 + (i % 7) * 13)
        .collect();
    for (i, &t) in times.iter().enumerate() {
        app.append(&series(0), t, (i * i) as f64 / 8.0)
            .expect("append");
    }
    app.commit().expect("commit");
    let end = *times.last().expect("samples");
    for (k, &from) in times.iter().enumerate() {
        for mint in [from - 1, from, from + 1] {
            let got = select_all(&db, mint, end, &name());
            let want: Vec<i64> = times.iter().copied().filter(|&t| t >= mint).collect();
            let got_t: Vec<i64> = got
                .first()
                .map(|s| s.samples.iter().map(|s| s.t).collect())
                .unwrap_or_default();
            assert_eq!(got_t, want, "range from {mint} (sample {k})");
            if let Some(s) = got.first() {
                let first = times.len() - want.len();
                assert_eq!(s.samples[0].v, (first * first) as f64 / 8.0);
            }
        }
    }
}
