//! Assembles what queries read from: the local store and the `remoteRead` stores, merged.

use std::sync::Arc;

use m3query_remote::client::{Auth, RemoteConfig, RemoteReadClient, TraceHeaders};
use m3query_storage::Queryable;
use m3query_storage::dedup::DedupQueryable;
use m3query_storage::merge::{Member, MergeQueryable};

use crate::config::{Config, StorageConfig, WalSync};

/// The embedded store's options from `storage:`.
pub fn tsdb_options(s: &StorageConfig) -> m3query_tsdb::Options {
    m3query_tsdb::Options {
        retention_ms: s.retention.as_millis_i64(),
        retention_bytes: (s.retention_size.0 > 0).then_some(s.retention_size.0),
        out_of_order_window_ms: s.out_of_order_window.as_millis_i64(),
        future_grace_period_ms: s.future_grace_period.as_millis_i64(),
        fsync: match s.wal_sync {
            WalSync::GroupCommit => m3query_tsdb::Fsync::GroupCommit,
            WalSync::Always => m3query_tsdb::Fsync::Always,
            WalSync::Interval => m3query_tsdb::Fsync::Interval(
                u64::try_from(s.wal_sync_interval.as_millis_i64()).unwrap_or(1000),
            ),
            WalSync::Never => m3query_tsdb::Fsync::Never,
        },
        ..m3query_tsdb::Options::default()
    }
}

/// The queryable behind the query API: `local` alone, or `local` plus every remote store
/// merged (remote failures are warnings when `query.partialResponse` is on), with HA replica
/// labels dropped and replicas deduplicated when any store lists `dedupLabels`. Reads carry
/// `trace_headers()` to the stores.
pub fn queryable(
    cfg: &Config,
    local: Option<Arc<dyn Queryable>>,
    runtime: tokio::runtime::Handle,
    trace_headers: TraceHeaders,
) -> Result<Arc<dyn Queryable>, String> {
    if cfg.remote_read.is_empty() {
        return local.ok_or_else(|| "no local storage and no remoteRead stores".to_string());
    }
    let mut members = Vec::new();
    if let Some(l) = &local {
        members.push(Member::required("local", l.clone()));
    }
    let mut dedup_labels: Vec<String> = Vec::new();
    for (i, r) in cfg.remote_read.iter().enumerate() {
        let name = cfg.remote_read_name(i);
        let auth = match (&r.basic_auth, &r.bearer_token) {
            (Some(b), _) => Some(Auth::Basic {
                username: b.username.clone(),
                password: b.password.clone(),
            }),
            (None, Some(t)) => Some(Auth::Bearer(t.clone())),
            (None, None) => None,
        };
        let client = RemoteReadClient::new(
            RemoteConfig {
                name: name.clone(),
                url: r.url.0.clone(),
                timeout: r.timeout.0,
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                auth,
                required_matchers: r
                    .required_matchers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                prefer_streamed: r.prefer_streamed,
                max_response_bytes: usize::try_from(r.max_response_bytes.0).unwrap_or(usize::MAX),
                // The query's sample limit also bounds what one store may send.
                max_samples: usize::try_from(cfg.query.prometheus.max_samples_per_query)
                    .unwrap_or(usize::MAX),
            },
            runtime.clone(),
        )
        .map_err(|e| format!("remoteRead[{i}] ({name}): {e}"))?
        .with_trace_headers(trace_headers.clone());
        members.push(Member {
            name,
            queryable: Arc::new(client),
            partial_ok: cfg.query.partial_response,
            read_recent: r.read_recent,
        });
        for l in &r.dedup_labels {
            if !dedup_labels.contains(l) {
                dedup_labels.push(l.clone());
            }
        }
    }
    let mut merged = MergeQueryable::new(members);
    if let Some(l) = local {
        merged = merged.with_local(l);
    }
    if dedup_labels.is_empty() {
        Ok(Arc::new(merged))
    } else {
        Ok(Arc::new(DedupQueryable::new(merged, dedup_labels)))
    }
}
