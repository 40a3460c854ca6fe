//! The embedded store's own metrics on `/metrics`, read from `Db::metrics()` at scrape time.

use std::sync::Arc;

use m3query_tsdb::Db;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Exports `m3query_tsdb_*` for a [`Db`].
#[derive(Debug)]
pub struct TsdbCollector(pub Arc<Db>);

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for TsdbCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        gauge(
            &mut e,
            "m3query_tsdb_head_series",
            "Series in the head block",
            m.head_series as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_head_chunks",
            "Chunks in the head block",
            m.head_chunks as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_head_chunk_bytes",
            "Bytes of head chunks in memory",
            m.head_chunk_bytes as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_head_histogram_chunk_bytes",
            "Bytes of native histogram head chunks in memory (part of head_chunk_bytes)",
            m.head_histogram_chunk_bytes as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_head_min_time_seconds",
            "Oldest timestamp in the head",
            m.head_min_time_ms as f64 / 1000.0,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_head_max_time_seconds",
            "Newest timestamp in the head",
            m.head_max_time_ms as f64 / 1000.0,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_symbols",
            "Interned label strings",
            m.symbols as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_samples_appended",
            "Samples appended to the head",
            m.samples_appended_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_histogram_samples_appended",
            "Native histogram samples appended to the head (part of samples_appended)",
            m.histogram_samples_appended_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_out_of_order_samples_appended",
            "Out-of-order samples accepted within the window",
            m.out_of_order_samples_appended_total as f64,
        )?;
        let mut enc = e.encode_descriptor(
            "m3query_tsdb_samples_refused",
            "Samples refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("out_of_order", m.refused_out_of_order_total),
            ("out_of_bounds", m.refused_out_of_bounds_total),
            ("too_old", m.refused_too_old_total),
            ("duplicate", m.refused_duplicate_total),
            ("too_far_in_future", m.refused_too_far_in_future_total),
            ("older_than_retention", m.refused_older_than_retention_total),
            ("dropped_at_commit", m.dropped_at_commit_total),
        ] {
            let labels = [("reason", reason)];
            ConstCounter::new(v).encode(enc.encode_family(&labels)?)?;
        }
        counter(
            &mut e,
            "m3query_tsdb_wal_fsyncs",
            "WAL fsyncs",
            m.wal_fsyncs_total as f64,
        )?;
        // Buckets arrive cumulative; the encoder wants per-bucket counts.
        let mut prev = 0;
        let buckets: Vec<(f64, u64)> = m
            .wal_fsync_buckets
            .iter()
            .map(|&(le, c)| {
                let n = c.saturating_sub(prev);
                prev = c;
                (le, n)
            })
            .collect();
        let mut enc = e.encode_descriptor(
            "m3query_tsdb_wal_fsync_duration_seconds",
            "WAL fsync latency",
            None,
            MetricType::Histogram,
        )?;
        enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            m.wal_fsync_seconds_sum,
            m.wal_fsyncs_total,
            &buckets,
            None,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_wal_written_bytes",
            "Bytes written to the WAL",
            m.wal_bytes_written_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_wal_records",
            "Records written to the WAL",
            m.wal_records_total as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_wal_disk_bytes",
            "Bytes of WAL and checkpoint on disk",
            m.wal_disk_bytes as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_wal_replay_seconds",
            "How long the last WAL replay took",
            m.wal_replay_seconds,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_wal_corruptions",
            "Damaged WAL stretches skipped by the last replay (each lost at least one record; the segments are kept in wal/corrupt-<ms>/)",
            m.wal_corruptions_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_wal_corrupt_bytes_skipped",
            "Bytes of damaged WAL skipped by the last replay",
            m.wal_corrupt_bytes_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_wal_torn_bytes_truncated",
            "Bytes of a torn WAL tail (a crash mid-write) cut by the last replay",
            m.wal_truncated_bytes_total as f64,
        )?;
        let mut enc = e.encode_descriptor(
            "m3query_tsdb_corrupt_blocks",
            "Damaged blocks by reason: meta, index, chunks (unreadable at open, not queried), chunk_checksum (a chunk failed its CRC when read and is left out)",
            None,
            MetricType::Gauge,
        )?;
        for (reason, v) in &m.corrupt_blocks {
            let labels = [("reason", reason.as_str())];
            ConstGauge::new(*v as f64).encode(enc.encode_family(&labels)?)?;
        }
        counter(
            &mut e,
            "m3query_tsdb_checkpoints",
            "WAL checkpoints written",
            m.checkpoints_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_head_cuts",
            "Head cuts into blocks",
            m.head_cuts_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_compactions",
            "Block compactions",
            m.compactions_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_compactions_failed",
            "Block compactions that failed",
            m.compactions_failed_total as f64,
        )?;
        counter(
            &mut e,
            "m3query_tsdb_retention_deleted_blocks",
            "Blocks deleted by retention",
            m.retention_deleted_blocks_total as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_blocks",
            "Blocks on disk",
            m.blocks as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_blocks_bytes",
            "Bytes of blocks on disk",
            m.blocks_bytes as f64,
        )?;
        gauge(
            &mut e,
            "m3query_tsdb_storage_bytes",
            "Bytes on disk: blocks and WAL",
            m.disk_bytes as f64,
        )?;
        Ok(())
    }
}
