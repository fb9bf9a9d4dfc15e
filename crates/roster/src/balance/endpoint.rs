//! Per-endpoint statistics and passive health (outlier ejection).

use super::Endpoint;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds since the process started; 0 is never a real deadline.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Latency is measured on one request in this many (per thread). Reading
/// the clock was a fifth of a least-request pick; a sample keeps the
/// average honest at a quarter of the cost.
pub const LATENCY_SAMPLE: u32 = 4;

fn sample_latency() -> bool {
    thread_local!(static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    COUNT.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % LATENCY_SAMPLE == 0
    })
}

/// When and for how long failing endpoints are taken out.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection; each further ejection doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the set is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// Live statistics of one endpoint, shared across set updates.
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    /// Exponentially weighted moving average of latency, in nanoseconds.
    ewma_ns: AtomicU64,
    failures: AtomicU32,
    /// 0 when healthy; otherwise when the ejection ends (ms, see `now_ms`).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// A half-open probe is in flight.
    probing: AtomicBool,
}

/// What a balancer's guards share: the health settings and the ejection
/// count that enforces the cap.
#[derive(Debug, Default)]
pub(crate) struct Ejections {
    pub health: HealthConfig,
    pub ejected: AtomicUsize,
    pub size: AtomicUsize,
}

// === impl EndpointStats ===

impl EndpointStats {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }

    pub fn healthy(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Healthy, or ejected with the backoff over and no probe in flight.
    /// The clock is read only for ejected endpoints: the hot path never.
    pub(crate) fn available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || (now_ms() >= until && !self.probing.load(Ordering::Relaxed))
    }

    /// Counts a request; marks it as the probe when half-open.
    pub(crate) fn admit(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now_ms() >= until {
            self.probing.store(true, Ordering::Relaxed);
        }
    }

    /// Lower is better: in-flight requests weighted by typical latency.
    pub(crate) fn score(&self) -> u64 {
        let lat = self.ewma_ns.load(Ordering::Relaxed).max(1_000);
        (self.in_flight.load(Ordering::Relaxed) as u64 + 1).saturating_mul(lat)
    }

    fn record_latency(&self, d: Duration) {
        let sample = d.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.ewma_ns.load(Ordering::Relaxed);
        // alpha = 1/4: recent calls dominate within a handful of samples.
        let new = if old == 0 { sample } else { old - old / 4 + sample / 4 };
        self.ewma_ns.store(new, Ordering::Relaxed);
    }
}

/// One request to an endpoint. Counts as in flight until dropped.
#[derive(Debug)]
pub struct Guard {
    endpoint: Arc<Endpoint>,
    /// Taken only where latency steers picks (least-request), and there on
    /// one request in [`LATENCY_SAMPLE`].
    start: Option<Instant>,
    reported: bool,
}

// === impl Guard ===

impl Guard {
    pub(crate) fn new(endpoint: Arc<Endpoint>, timed: bool) -> Self {
        Guard { endpoint, start: (timed && sample_latency()).then(Instant::now), reported: false }
    }

    fn shared(&self) -> &Ejections {
        &self.endpoint.ejections
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub fn instance(&self) -> &crate::Instance {
        &self.endpoint.instance
    }

    /// The request succeeded; a half-open endpoint is readmitted.
    pub fn success(mut self) {
        self.reported = true;
        let s = &self.endpoint.stats;
        if let Some(start) = self.start {
            s.record_latency(start.elapsed());
        }
        self.readmit();
    }

    /// As [`success`](Self::success), with a measured latency.
    pub fn success_with(&mut self, latency: Duration) {
        self.reported = true;
        self.endpoint.stats.record_latency(latency);
        self.readmit();
    }

    fn readmit(&self) {
        let s = &self.endpoint.stats;
        s.failures.store(0, Ordering::Relaxed);
        if s.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            s.probing.store(false, Ordering::Relaxed);
            let _ = s.ejections.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            let _ = self.shared().ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            tracing::info!(instance = %self.endpoint.instance.id, "readmitted after a successful probe");
        }
    }

    /// The request failed (connect error, UNAVAILABLE, 502/503).
    pub fn failure(mut self) {
        self.reported = true;
        let s = &self.endpoint.stats;
        if let Some(start) = self.start {
            s.record_latency(start.elapsed());
        }
        let now = now_ms();
        if s.ejected_until.load(Ordering::Relaxed) != 0 {
            // A failed probe: out again, for longer.
            self.eject(now);
            return;
        }
        let failures = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.shared().health.consecutive_failures {
            return;
        }
        let size = self.shared().size.load(Ordering::Relaxed);
        let cap = size * self.shared().health.max_ejected_percent as usize / 100;
        let reserved = self.shared().ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1));
        if reserved.is_ok() {
            self.eject(now);
        }
    }

    /// The endpoint could not be reached at all: eject it at once, within
    /// the cap, instead of waiting for more failures.
    pub fn connect_failure(mut self) {
        self.reported = true;
        let now = now_ms();
        let s = &self.endpoint.stats;
        if s.ejected_until.load(Ordering::Relaxed) != 0 {
            self.eject(now);
            return;
        }
        let size = self.shared().size.load(Ordering::Relaxed);
        let cap = size * self.shared().health.max_ejected_percent as usize / 100;
        if self.shared().ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).is_ok() {
            self.eject(now);
        } else {
            s.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn eject(&self, now: u64) {
        let s = &self.endpoint.stats;
        let n = s.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let d = self.shared().health.base_ejection.saturating_mul(1 << n).min(self.shared().health.max_ejection);
        s.ejected_until.store(now + d.as_millis() as u64, Ordering::Relaxed);
        s.probing.store(false, Ordering::Relaxed);
        s.failures.store(0, Ordering::Relaxed);
        tracing::warn!(instance = %self.endpoint.instance.id, for_ = ?d, "ejected after failures");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &self.endpoint.stats;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.reported && s.probing.load(Ordering::Relaxed) {
            // An abandoned probe must not leave the endpoint stuck.
            s.probing.store(false, Ordering::Relaxed);
        }
    }
}
