//! Per-endpoint statistics and passive health (outlier ejection).

use super::Endpoint;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started; 0 is never a real deadline.
pub(crate) fn now_ms() -> u64 {
    ms_at(Instant::now())
}

fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// A recent [`now_ms`], advanced by latency samples, so that a pick can
/// age latency averages without reading the clock.
static RECENT_MS: AtomicU64 = AtomicU64::new(0);

fn advance_recent(now: u64) {
    // Written at most once a millisecond: picks on every core read it.
    if RECENT_MS.load(Ordering::Relaxed) < now {
        RECENT_MS.fetch_max(now, Ordering::Relaxed);
    }
}

/// `ewma_ns` aged by `idle_ms` without a sample: halved per half-life
/// (0: no aging).
fn aged(ewma_ns: u64, idle_ms: u64, half_life_ms: u64) -> u64 {
    match half_life_ms {
        0 => ewma_ns,
        h => ewma_ns >> (idle_ms / h).min(63),
    }
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

/// An endpoint whose latency average is more than this many times the
/// other candidate's loses a least-request comparison whatever the two
/// in-flight counts. In-flight times latency models an endpoint that serves
/// one request after another; a server that serves many at once keeps its
/// latency while its in-flight count grows, so that score alone hands a
/// much slower endpoint a steady share (the calls that make a p99).
pub const SLOW_FACTOR: u64 = 3;

/// ... and at least this much slower (ns): below it, jitter would decide.
pub const SLOW_MIN_GAP_NS: u64 = 1_000_000;

/// Whether latency average `slow` is an outlier beside `fast` (both
/// measured; an unmeasured endpoint is compared by score alone).
fn outlier(slow: u64, fast: u64) -> bool {
    fast > 0 && slow / SLOW_FACTOR > fast && slow - fast >= SLOW_MIN_GAP_NS
}

/// Least-request's choice between two candidates at `now`: whether `b`
/// is the better one. A latency outlier loses (see [`SLOW_FACTOR`]);
/// otherwise the lower in-flight-times-latency score wins, `a` on a tie.
/// The outlier is demoted only while its average stays high: without new
/// samples it halves per half-life, so it is tried again within seconds,
/// and it is also chosen whenever the faster candidate cannot take the
/// request (ejected, or at its in-flight cap). When the fast endpoints slow
/// down under the load, the ratio falls under the factor and the share
/// returns.
pub(crate) fn prefer_second(a: &EndpointStats, b: &EndpointStats, now: u64, half_life_ms: u64) -> bool {
    let (la, lb) = (a.ewma_at(now, half_life_ms), b.ewma_at(now, half_life_ms));
    if outlier(la, lb) {
        return true;
    }
    if outlier(lb, la) {
        return false;
    }
    b.cost(lb) < a.cost(la)
}

/// The clock least-request picks age latency averages by.
pub(crate) fn recent_ms() -> u64 {
    RECENT_MS.load(Ordering::Relaxed)
}

/// When and for how long failing endpoints are taken out.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// A latency average halves for every this long without a new sample
    /// (zero: never). Without it, an endpoint whose average was inflated
    /// once (a slow connect, a pause) and that is idle since would lose
    /// every least-request comparison for good and never be measured again.
    /// A truly slow endpoint is tried again only about once per half-life,
    /// on a few requests, which leaves the others' tail alone.
    pub latency_half_life: Duration,
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
            latency_half_life: Duration::from_secs(2),
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
    /// Exponentially weighted moving average of latency, in nanoseconds,
    /// as of `sampled_ms`; it ages from there (see
    /// [`HealthConfig::latency_half_life`]).
    ewma_ns: AtomicU64,
    sampled_ms: AtomicU64,
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

    /// The latency average as of its last sample.
    pub fn latency_ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }

    fn ewma_at(&self, now: u64, half_life_ms: u64) -> u64 {
        let idle = now.saturating_sub(self.sampled_ms.load(Ordering::Relaxed));
        aged(self.ewma_ns.load(Ordering::Relaxed), idle, half_life_ms)
    }

    pub fn healthy(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// When the ejection ends (see [`now_ms`]), if ejected.
    pub(crate) fn ejection_end(&self) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0).then_some(until)
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
    #[cfg(test)]
    pub(crate) fn score_at(&self, now: u64, half_life_ms: u64) -> u64 {
        self.cost(self.ewma_at(now, half_life_ms))
    }

    fn cost(&self, ewma_ns: u64) -> u64 {
        (self.in_flight.load(Ordering::Relaxed) as u64 + 1).saturating_mul(ewma_ns.max(1_000))
    }

    /// Folds in a latency measured at `now` (see [`now_ms`]).
    pub(crate) fn record_latency_at(&self, d: Duration, now: u64, half_life_ms: u64) {
        let sample = d.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.ewma_at(now, half_life_ms);
        // alpha = 1/4: recent calls dominate within a handful of samples.
        let new = if old == 0 { sample } else { old - old / 4 + sample / 4 };
        self.ewma_ns.store(new, Ordering::Relaxed);
        self.sampled_ms.store(now, Ordering::Relaxed);
    }

    /// Folds in a latency measured just now, and moves the picks' clock.
    fn record(&self, d: Duration, now: u64, half_life_ms: u64) {
        self.record_latency_at(d, now, half_life_ms);
        advance_recent(now);
    }

    /// A sample timed from `start`: the end is `start + elapsed`, so the
    /// clock is read once.
    fn record_since(&self, start: Instant, half_life_ms: u64) {
        let took = start.elapsed();
        self.record(took, ms_at(start + took), half_life_ms);
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

    fn half_life_ms(&self) -> u64 {
        self.shared().health.latency_half_life.as_millis() as u64
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
            s.record_since(start, self.half_life_ms());
        }
        self.readmit();
    }

    /// As [`success`](Self::success), with a measured latency.
    pub fn success_with(&mut self, latency: Duration) {
        self.reported = true;
        self.endpoint.stats.record(latency, now_ms(), self.half_life_ms());
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
            s.record_since(start, self.half_life_ms());
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
        let reserved =
            self.shared().ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1));
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
        if self
            .shared()
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1))
            .is_ok()
        {
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
