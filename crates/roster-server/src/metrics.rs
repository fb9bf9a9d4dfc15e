//! Prometheus metrics, rendered as text at `GET /metrics`.
//!
//! Request counters and latencies are recorded by the handlers themselves
//! (one `Instant` per call and two lock-free-on-hit family lookups), which
//! keeps the hot path cheaper than a tower layer that would have to peek at
//! trailers for the gRPC status. Store figures are read once per scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use roster_store::StoreStatus;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// 100 µs to ~3.3 s: an fsync'd write sits in the low milliseconds, a
/// range over a large prefix can take far longer.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric the server exports. Metric handles are `Arc`s inside, so
/// this is shared by reference from the server handle.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<MethodCode, Counter>,
    latency: Family<MethodLabel, Histogram, fn() -> Histogram>,
    revision: Gauge,
    compact_revision: Gauge,
    keys: Gauge,
    leases: Gauge,
    db_size: Gauge,
    log_syncs: Gauge,
    store_failed: Gauge,
    watchers: Gauge,
    watch_streams: Gauge,
    keepalive_streams: Gauge,
    backup_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    backup_revision: Gauge,
    backup_failures: Gauge,
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("roster"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            keys: Gauge::default(),
            leases: Gauge::default(),
            db_size: Gauge::default(),
            log_syncs: Gauge::default(),
            store_failed: Gauge::default(),
            watchers: Gauge::default(),
            watch_streams: Gauge::default(),
            keepalive_streams: Gauge::default(),
            backup_age: Gauge::default(),
            backup_revision: Gauge::default(),
            backup_failures: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "grpc_requests",
            "gRPC calls handled, by full method name and status code (streams count once, when they end)",
            m.requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "Latency of unary gRPC calls, by full method name",
            m.latency.clone(),
        );
        r.register("store_revision", "Current (durable) store revision", m.revision.clone());
        r.register("store_compact_revision", "Revision the history is compacted to", m.compact_revision.clone());
        r.register("store_keys", "Live keys", m.keys.clone());
        r.register("store_leases", "Live leases", m.leases.clone());
        r.register("store_db_size_bytes", "Bytes on disk (log and snapshot); 0 in memory", m.db_size.clone());
        r.register(
            "store_log_syncs",
            "fsyncs of the log since start; each acknowledges a batch of writes",
            m.log_syncs.clone(),
        );
        r.register(
            "store_failed",
            "1 once a write, fsync or snapshot of the log failed: the store refuses writes until restarted",
            m.store_failed.clone(),
        );
        r.register("watchers", "Registered watchers over all watch streams", m.watchers.clone());
        r.register("watch_streams", "Open Watch streams", m.watch_streams.clone());
        r.register("keepalive_streams", "Open LeaseKeepAlive streams", m.keepalive_streams.clone());
        r.register(
            "backup_age_seconds",
            "Seconds since the latest scheduled backup was written; -1 when there is none (or --backup-dir is unset)",
            m.backup_age.clone(),
        );
        r.register("backup_revision", "Store revision of the latest scheduled backup", m.backup_revision.clone());
        r.register("backup_failures", "Scheduled backups that failed since start", m.backup_failures.clone());
        m
    }

    /// Records one finished call. `method` is the full gRPC path.
    pub(crate) fn observe(&self, method: &'static str, code: tonic::Code, took: Option<Duration>) {
        self.requests.get_or_create(&MethodCode { method, code: code_name(code) }).inc();
        if let Some(took) = took {
            self.latency.get_or_create(&MethodLabel { method }).observe(took.as_secs_f64());
        }
    }

    /// A gauge that goes up now and down when the guard drops.
    pub(crate) fn watch_stream(&self) -> GaugeGuard {
        GaugeGuard::new(self.watch_streams.clone())
    }

    pub(crate) fn keepalive_stream(&self) -> GaugeGuard {
        GaugeGuard::new(self.keepalive_streams.clone())
    }

    /// Renders the text exposition, refreshing the store gauges first.
    pub(crate) fn render(&self, status: &StoreStatus, backups: &crate::backup::BackupState) -> String {
        match backups.latest() {
            Some(l) => {
                self.backup_age.set(l.at.elapsed().unwrap_or_default().as_secs_f64());
                self.backup_revision.set(l.revision);
            }
            None => {
                self.backup_age.set(-1.0);
            }
        }
        self.backup_failures.set(saturating_i64(backups.failures()));
        self.revision.set(status.revision);
        self.compact_revision.set(status.compact_revision);
        self.keys.set(saturating_i64(status.keys));
        self.leases.set(saturating_i64(status.leases));
        self.db_size.set(status.db_size);
        self.log_syncs.set(saturating_i64(status.log_syncs));
        self.store_failed.set(i64::from(status.failure.is_some()));
        self.watchers.set(saturating_i64(status.watchers));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The canonical gRPC code names, as grpc-go's Prometheus middleware prints them.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Holds a gauge up for as long as it lives.
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_store_gauges_and_request_families() {
        let m = Metrics::new();
        m.observe("/etcdserverpb.KV/Put", tonic::Code::Ok, Some(Duration::from_millis(2)));
        m.observe("/etcdserverpb.KV/Put", tonic::Code::InvalidArgument, Some(Duration::from_millis(1)));
        let _w = m.watch_stream();
        let text = m.render(
            &StoreStatus { revision: 7, keys: 3, ..Default::default() },
            &crate::backup::BackupState::default(),
        );
        assert!(text.contains("roster_store_revision 7"), "{text}");
        assert!(text.contains("roster_store_keys 3"), "{text}");
        assert!(text.contains("roster_store_failed 0"), "{text}");
        let text = m.render(
            &StoreStatus { failure: Some("disk gone".into()), ..Default::default() },
            &crate::backup::BackupState::default(),
        );
        assert!(text.contains("roster_store_failed 1"), "{text}");
        assert!(text.contains("roster_watch_streams 1"), "{text}");
        assert!(
            text.contains(r#"roster_grpc_requests_total{method="/etcdserverpb.KV/Put",code="InvalidArgument"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("roster_grpc_request_duration_seconds_count{method=\"/etcdserverpb.KV/Put\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn gauge_guard_goes_back_down() {
        let m = Metrics::new();
        {
            let _a = m.keepalive_stream();
            let _b = m.keepalive_stream();
            assert_eq!(m.keepalive_streams.get(), 2);
        }
        assert_eq!(m.keepalive_streams.get(), 0);
    }
}
