//! Compaction planning and merging, and retention.
//!
//! Plans follow Prometheus: first any blocks that overlap in time (out-of-order data written
//! after its range was already persisted) are merged; then, level by level (block range
//! × 3ⁿ), the blocks of an aligned window are merged once the head has moved past the window.

use std::sync::Arc;

use crate::Result;
use crate::block::{Block, BlockCompaction, BlockMeta, BlockParent, SeriesChunks, write_block};
use crate::chunks::QChunk;
use crate::index::ChunkMeta;

/// Compaction ranges: `base`, 3×, 9×, … while they stay within `max`.
pub(crate) fn ranges(base: i64, max: i64) -> Vec<i64> {
    let mut out = vec![base];
    let mut r = base;
    while let Some(next) = r.checked_mul(3) {
        if next > max {
            break;
        }
        out.push(next);
        r = next;
    }
    out
}

/// Picks the next group of blocks to merge (indices into `metas`, which is sorted by
/// `min_time`), or `None`. Windows must end at or before `safe_until` (the head's minimum
/// valid time: nothing new lands below it except out-of-order data).
pub(crate) fn plan(metas: &[&BlockMeta], ranges: &[i64], safe_until: i64) -> Option<Vec<usize>> {
    // Overlapping blocks first.
    let mut i = 0;
    while i < metas.len() {
        let mut end = metas[i].max_time;
        let mut j = i + 1;
        while j < metas.len() && metas[j].min_time < end {
            end = end.max(metas[j].max_time);
            j += 1;
        }
        if j - i > 1 {
            return Some((i..j).collect());
        }
        i = j;
    }
    for &r in ranges.iter().skip(1) {
        let mut k = 0;
        while k < metas.len() {
            let w = metas[k].min_time.div_euclid(r);
            let (w_start, w_end) = (w * r, w * r + r);
            let mut group = Vec::new();
            let mut fits_all = true;
            while k < metas.len() && metas[k].min_time < w_end {
                let m = metas[k];
                if m.min_time >= w_start && m.max_time <= w_end && m.max_time - m.min_time < r {
                    group.push(k);
                } else {
                    fits_all = false;
                }
                k += 1;
            }
            if fits_all && group.len() > 1 && w_end <= safe_until {
                return Some(group);
            }
        }
    }
    None
}

/// Every series of `block` with its chunks (shared, not copied).
pub(crate) fn block_series(block: &Block, out: &mut Vec<SeriesChunks>) -> Result<()> {
    let mut metas: Vec<ChunkMeta> = Vec::new();
    for id in 0..block.index.num_series() {
        metas.clear();
        let labels = block.index.series(id, Some(&mut metas))?;
        let chunks = metas
            .iter()
            .map(|m| {
                let (enc, bytes) = block.chunks.chunk(m.r)?;
                Ok(QChunk {
                    seek: None,
                    min_t: m.min_t,
                    max_t: m.max_t,
                    enc,
                    bytes,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(SeriesChunks { labels, chunks });
    }
    Ok(())
}

/// Merges `blocks` (sorted by min time) into one new block in `db_dir`.
pub(crate) fn compact(
    db_dir: &std::path::Path,
    blocks: &[Arc<Block>],
) -> Result<Option<BlockMeta>> {
    let mut all = Vec::new();
    for b in blocks {
        block_series(b, &mut all)?;
    }
    // Stable: for equal labels, chunks keep block order (older blocks first).
    all.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut merged: Vec<SeriesChunks> = Vec::with_capacity(all.len());
    for s in all {
        match merged.last_mut() {
            Some(last) if last.labels == s.labels => last.chunks.extend(s.chunks),
            _ => merged.push(s),
        }
    }
    let mint = blocks.iter().map(|b| b.meta.min_time).min().unwrap_or(0);
    let maxt = blocks.iter().map(|b| b.meta.max_time).max().unwrap_or(0);
    let mut sources: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.meta.compaction.sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    let compaction = BlockCompaction {
        level: blocks
            .iter()
            .map(|b| b.meta.compaction.level)
            .max()
            .unwrap_or(0)
            + 1,
        sources,
        parents: blocks
            .iter()
            .map(|b| BlockParent {
                ulid: b.meta.ulid.clone(),
                min_time: b.meta.min_time,
                max_time: b.meta.max_time,
            })
            .collect(),
    };
    write_block(db_dir, mint, maxt, merged, compaction)
}

/// Blocks retention removes: older than `retention_ms` behind the newest block, then the
/// oldest while the total exceeds `retention_bytes`. `blocks` sorted by min time.
pub(crate) fn retention_victims(
    blocks: &[Arc<Block>],
    retention_ms: i64,
    retention_bytes: Option<u64>,
    other_bytes: u64,
) -> Vec<usize> {
    let mut out = Vec::new();
    if retention_ms > 0
        && let Some(newest) = blocks.iter().map(|b| b.meta.max_time).max()
    {
        let cutoff = newest.saturating_sub(retention_ms);
        out.extend(
            blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.meta.max_time <= cutoff)
                .map(|(i, _)| i),
        );
    }
    if let Some(limit) = retention_bytes {
        let mut total: u64 = other_bytes
            + blocks
                .iter()
                .enumerate()
                .filter(|(i, _)| !out.contains(i))
                .map(|(_, b)| b.size_bytes)
                .sum::<u64>();
        for (i, b) in blocks.iter().enumerate() {
            if total <= limit {
                break;
            }
            if !out.contains(&i) {
                out.push(i);
                total = total.saturating_sub(b.size_bytes);
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockStats;

    fn meta(min: i64, max: i64) -> BlockMeta {
        BlockMeta {
            format: String::new(),
            version: 1,
            ulid: format!("{min}-{max}"),
            min_time: min,
            max_time: max,
            stats: BlockStats::default(),
            compaction: BlockCompaction::default(),
        }
    }

    #[test]
    fn ranges_grow_by_three_within_max() {
        assert_eq!(ranges(2, 20), vec![2, 6, 18]);
        assert_eq!(ranges(2, 1), vec![2]);
    }

    #[test]
    fn plans_overlaps_then_complete_windows() {
        let r = ranges(10, 1000);
        let ms = [meta(0, 10), meta(10, 20), meta(20, 30), meta(30, 40)];
        let refs: Vec<&BlockMeta> = ms.iter().collect();
        // Window [0,30) complete only once the head is past 30.
        assert_eq!(plan(&refs, &r, 25), None);
        assert_eq!(plan(&refs, &r, 30), Some(vec![0, 1, 2]));
        let ov = [meta(0, 10), meta(5, 10), meta(10, 20)];
        let refs: Vec<&BlockMeta> = ov.iter().collect();
        assert_eq!(plan(&refs, &r, 0), Some(vec![0, 1]));
        // Merged 30-range blocks then combine into a 90 window.
        let big = [meta(0, 30), meta(30, 60), meta(60, 90)];
        let refs: Vec<&BlockMeta> = big.iter().collect();
        assert_eq!(plan(&refs, &r, 90), Some(vec![0, 1, 2]));
        assert_eq!(plan(&refs, &r, 89), None);
    }
}
