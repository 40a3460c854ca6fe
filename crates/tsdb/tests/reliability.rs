//! Failure handling: disk full, damaged block files, samples far outside the time window.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use m3query_model::{Labels, Matcher};
use m3query_storage::{Appendable, Context, Queryable, SelectHints, Warnings, collect_series};
use m3query_tsdb::{Db, Fsync, Options};

/// Opens `dir`, waiting out a lock held only by a forked child. The tmpfs test runs `mount`
/// and `umount` at the same time as the others: a child forked while a database here was open
/// holds a copy of its lock file's descriptor until it execs, so a reopen right after a close
/// can briefly find the directory locked.
fn reopen(dir: &Path, opts: Options) -> m3query_tsdb::Db {
    let mut tries = 0;
    loop {
        match Db::open(dir, opts.clone()) {
            Err(m3query_tsdb::Error::Locked(_)) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.expect("open"),
        }
    }
}

const H: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn series(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m"), ("i", &*format!("{i:03}"))])
}

type Got = BTreeMap<String, Vec<(i64, u64)>>;

/// Every series named `m` in `[mint, maxt]`, or the query's error.
fn select(db: &Db, mint: i64, maxt: i64) -> Result<(Got, Warnings), String> {
    let q = db.querier(mint, maxt).map_err(|e| e.to_string())?;
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[Matcher::equal("__name__", "m")],
        )
        .map_err(|e| e.to_string())?;
    let (series, w) = collect_series(set.as_mut(), mint, maxt).map_err(|e| e.to_string())?;
    let got = series
        .into_iter()
        .map(|s| {
            (
                s.labels.get("i").unwrap_or("").to_string(),
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect();
    Ok((got, w))
}

fn block_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.len() == 26))
        .collect();
    v.sort();
    v
}

/// A store with one block of 3 series × 200 samples, closed. Returns what it holds.
fn one_block(dir: &Path) -> Got {
    let db = Db::open(
        dir,
        Options {
            fsync: Fsync::Never,
            ..Options::default()
        },
    )
    .expect("open");
    let mut app = db.appender();
    for i in 0..3 {
        for k in 0..200i64 {
            // Irregular values so chunks use every encoding path.
            let v = ((k * 7919 + i as i64 * 31) % 1000) as f64 / 8.0;
            app.append(&series(i), k * 15_000 + 1, v).expect("append");
        }
    }
    app.commit().expect("commit");
    db.flush_head().expect("flush");
    let (want, w) = select(&db, 0, 2 * H).expect("select");
    assert!(w.is_empty());
    assert_eq!(db.blocks().len(), 1);
    want
}

/// Flipping any byte of a block's chunk or index file never yields a silently wrong answer:
/// the query fails, or warns (naming the block), or is still exactly right.
#[test]
fn damaged_block_bytes_are_never_served_as_correct_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = one_block(dir.path());
    let block = block_dirs(dir.path()).pop().expect("a block");
    let ulid = block
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    for file in [block.join("chunks").join("000001"), block.join("index")] {
        let good = fs::read(&file).expect("read");
        let mut silent = Vec::new();
        for pos in (8..good.len()).step_by(3) {
            let mut bad = good.clone();
            bad[pos] ^= 0x5a;
            fs::write(&file, &bad).expect("write");
            let db = reopen(dir.path(), Options::default());
            match select(&db, 0, 2 * H) {
                Err(e) => assert!(e.contains(&ulid), "error names the block: {e}"),
                Ok((got, w)) if !w.is_empty() => {
                    assert!(w.iter().any(|x| x.contains(&ulid)), "{w}");
                    // What is served is still correct: damaged data is left out, not altered.
                    for (k, s) in &got {
                        let all = &want[k];
                        assert!(s.iter().all(|x| all.contains(x)), "altered samples served");
                    }
                }
                Ok((got, _)) if got == want => {}
                Ok(_) => silent.push(pos),
            }
        }
        fs::write(&file, &good).expect("restore");
        assert!(
            silent.is_empty(),
            "{}: flipped bytes at {silent:?} changed the answer without an error or warning",
            file.display()
        );
    }
}

/// A block without meta.json is not skipped silently: queries warn about it.
#[test]
fn block_without_meta_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    one_block(dir.path());
    let block = block_dirs(dir.path()).pop().expect("a block");
    fs::remove_file(block.join("meta.json")).expect("remove meta.json");
    let db = reopen(dir.path(), Options::default());
    let (_, w) = select(&db, 0, 2 * H).expect("select");
    let name = block.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(w.iter().any(|x| x.contains(name)), "warnings: {w}");
}

/// A sample hours in the future is refused (naming the limit) instead of moving the head
/// past the present, so writes at the current time go on, also after a restart.
#[test]
fn sample_far_in_future_is_refused_and_current_writes_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        fsync: Fsync::Never,
        ..Options::default()
    };
    let now = now_ms();
    let db = reopen(dir.path(), opts.clone());
    let mut app = db.appender();
    app.append(&series(0), now - 60_000, 1.0).expect("append");
    let e = app
        .append(&series(1), now + 3 * H, 2.0)
        .expect_err("3 h in the future is refused");
    assert!(e.is_sample_error(), "{e}");
    assert!(e.to_string().contains("futureGracePeriod"), "{e}");
    app.append(&series(0), now + 5 * 60_000, 3.0)
        .expect("within the grace period");
    app.commit().expect("the rest of the batch is written");
    db.run_maintenance().expect("maintenance");
    let mut app = db.appender();
    app.append(&series(2), now, 4.0).expect("a write at now");
    app.commit().expect("commit");
    // Ancient samples are refused by the retention, not cut into blocks.
    let mut app = db.appender();
    let e = app
        .append(&series(3), now - 30 * 24 * H, 5.0)
        .expect_err("older than the retention");
    assert!(e.is_sample_error(), "{e}");
    assert!(e.to_string().contains("retention"), "{e}");
    app.commit().expect("commit");
    drop(db);
    let db = reopen(dir.path(), opts);
    let mut app = db.appender();
    app.append(&series(4), now + 1000, 6.0)
        .expect("a write at now after a restart");
    app.commit().expect("commit");
    let (got, _) = select(&db, now - 24 * H, now + 24 * H).expect("select");
    // Series 1 and 3 had only refused samples: they were not kept.
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["000", "002", "004"]);
    assert_eq!(got["000"].len(), 2);
    assert!(db.blocks().iter().all(|b| b.min_time > now - 24 * H));
}

/// Unmounts the test's tmpfs however the test ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real ENOSPC on a 16 MiB tmpfs: commits fail while the disk is full, succeed again once
/// space is freed, and after a restart every acknowledged sample is there and no other.
/// Skipped (with a message) where mounting is not permitted.
#[test]
fn disk_full_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!(
            "SKIPPED disk_full_keeps_every_acknowledged_write: cannot mount a tmpfs ({mounted:?}); needs root"
        );
        return;
    }
    let _unmount = Mounted(mnt.clone());
    let ballast = mnt.join("ballast");
    fs::write(&ballast, vec![1u8; 2 << 20]).expect("ballast");
    let opts = Options {
        wal_segment_bytes: 1 << 20,
        ..Options::default()
    };
    let db_dir = mnt.join("db");
    let db = reopen(&db_dir, opts.clone());
    let mut acked: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    let (mut failed, mut after_failure) = (0, 0);
    for k in 0..400i64 {
        let mut app = db.appender();
        for i in 0..100 {
            for j in 0..50 {
                let t = k * 50 + j;
                app.append(&series(i), t, t as f64).expect("append");
            }
        }
        if app.commit().is_ok() {
            for i in 0..100 {
                let v = acked.entry(format!("{i:03}")).or_default();
                v.extend((k * 50..k * 50 + 50).map(|t| (t, (t as f64).to_bits())));
            }
            if failed > 0 {
                after_failure += 1;
                if after_failure == 5 {
                    break;
                }
            }
        } else {
            failed += 1;
            if failed == 3 {
                // Make room: later commits must land behind the last good record.
                fs::remove_file(&ballast).expect("remove ballast");
            }
        }
    }
    assert!(failed >= 3, "the disk filled up");
    assert_eq!(after_failure, 5, "writes succeed again once there is room");
    drop(db);
    let db = reopen(&db_dir, opts);
    let (got, _) = select(&db, i64::MIN, i64::MAX).expect("select");
    let n = |m: &Got| m.values().map(Vec::len).sum::<usize>();
    assert_eq!(n(&got), n(&acked), "samples after restart vs acknowledged");
    assert!(got == acked, "exactly the acknowledged samples survive");
}
