//! Start timestamps through the fan-out: a series held by several stores keeps the start
//! timestamps of every part (kept apart from `merge.rs`'s own tests, which another change
//! edits).

use std::sync::Arc;

use m3query_model::{Labels, Matcher};
use m3query_storage::memory::MemStorage;
use m3query_storage::merge::MergeQueryable;
use m3query_storage::{Appendable, Context, Queryable, SelectHints, StartTimestamp};

#[test]
fn chained_series_keep_every_parts_start_timestamps() {
    let a = Arc::new(MemStorage::new());
    let b = Arc::new(MemStorage::new());
    let l = Labels::from_pairs([("__name__", "c")]);
    for (s, samples) in [(&a, [(10, 1), (20, 11)]), (&b, [(20, 12), (30, 21)])] {
        let mut app = s.appender();
        for (t, st) in samples {
            app.append(&l, t, t as f64).expect("append");
            app.append_start_timestamp(&l, t, st)
                .expect("after its sample");
        }
        app.commit().expect("commit");
    }
    let m = MergeQueryable::from_stores(vec![a.clone(), b.clone()]);
    let q = m.querier(0, 100).expect("querier");
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[Matcher::equal("__name__", "c")],
        )
        .expect("select");
    let series = set.next().expect("one series").expect("ok");
    let mut sts = Vec::new();
    series
        .iter()
        .append_start_timestamps(i64::MIN, i64::MAX, &mut sts)
        .expect("mem");
    // At 20 both stores have a sample; the first store's wins, as for the samples.
    let st = |t, st| StartTimestamp { t, st };
    assert_eq!(sts, vec![st(10, 1), st(20, 11), st(30, 21)]);
}
