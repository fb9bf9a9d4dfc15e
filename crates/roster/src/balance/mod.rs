//! Client-side load balancing over a discovered set of instances.
//!
//! A [`Balancer`] holds an immutable [`Set`] of endpoints behind an
//! `ArcSwap`: picking is a lock-free load plus a few atomic operations, and
//! a new set is swapped in when discovery reports a change. Per-endpoint
//! statistics (in-flight count, latency EWMA, failures) survive a swap, so
//! an instance keeps its history while others come and go.
//!
//! - [`Policy`]: round robin, smooth weighted round robin, random,
//!   least-request (power of two choices on in-flight count times a
//!   decaying latency average, where an endpoint more than
//!   [`SLOW_FACTOR`] times slower than the other candidate loses whatever
//!   the counts) and consistent hash (ring with virtual nodes).
//! - Passive health ([`HealthConfig`]): consecutive failures eject an
//!   endpoint for a backoff that grows; at most `max_ejected_percent` of the
//!   set is ejected; when the backoff ends one probe request is let through
//!   (half-open) and its outcome readmits or re-ejects the endpoint.
//! - Zone preference: with a local zone set, endpoints in that zone are
//!   used while at least half of them are healthy; otherwise all are.
//!
//! - Capacity: with [`Balancer::with_max_in_flight`] an endpoint that has
//!   that many requests in flight is passed over, and [`Balancer::capacity`]
//!   says whether any endpoint can take a request now (what
//!   `grpc::Channel::poll_ready` reports).
//! - Retries: [`Balancer::pick_avoiding`] skips endpoints a request already
//!   tried, and a [`RetryBudget`] caps the extra load retries may add.
//!
//! Randomness comes from a seedable generator, so tests are deterministic.

mod budget;
mod endpoint;
mod policy;

pub use budget::RetryBudget;
use endpoint::Ejections;
pub use endpoint::{EndpointStats, Guard, HealthConfig, SLOW_FACTOR, SLOW_MIN_GAP_NS};
pub use policy::Policy;

use crate::instance::Instance;
use arc_swap::ArcSwap;
use endpoint::now_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One instance with its live statistics.
#[derive(Debug)]
pub struct Endpoint {
    pub instance: Instance,
    pub stats: Arc<EndpointStats>,
    ejections: Arc<Ejections>,
}

/// The immutable set a pick reads.
#[derive(Debug, Default)]
pub struct Set {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Indices of endpoints in the caller's zone.
    local: Vec<usize>,
    /// Smooth weighted round-robin order, precomputed per set.
    wrr: Vec<usize>,
    /// Consistent-hash ring: (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// Picks endpoints for requests.
pub struct Balancer {
    policy: Policy,
    zone: Option<String>,
    set: ArcSwap<Set>,
    /// Round-robin position.
    cursor: AtomicUsize,
    ejections: Arc<Ejections>,
    /// Generator state, used only when seeded (tests want reproducible
    /// picks); otherwise each thread draws from its own state, which spares
    /// every pick a contended atomic.
    rng: AtomicU64,
    seeded: bool,
    /// Requests in flight at which an endpoint is full (0: no limit).
    max_in_flight: usize,
}

/// Virtual nodes per unit of weight (weight 100 gives 100 points).
const RING_POINTS_PER_WEIGHT: u32 = 1;
const MAX_WRR_LEN: usize = 4096;

// === impl Balancer ===

impl Balancer {
    pub fn new(policy: Policy) -> Self {
        Balancer {
            policy,
            zone: None,
            set: ArcSwap::from_pointee(Set::default()),
            cursor: AtomicUsize::new(0),
            ejections: Arc::default(),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ now_ms()),
            seeded: false,
            max_in_flight: 0,
        }
    }

    /// Passes over an endpoint while it has `max` requests in flight
    /// (0: no limit).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    pub fn with_health(mut self, health: HealthConfig) -> Self {
        self.ejections = Arc::new(Ejections { health, ..Default::default() });
        self
    }

    /// Prefers endpoints in `zone` while enough of them are healthy.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        let z = zone.into();
        self.zone = (!z.is_empty()).then_some(z);
        self
    }

    /// Seeds the random choices (random, least-request) for reproducibility.
    pub fn with_seed(self, seed: u64) -> Self {
        self.rng.store(seed.max(1), Ordering::Relaxed);
        Balancer { seeded: true, ..self }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn health(&self) -> &HealthConfig {
        &self.ejections.health
    }

    /// Replaces the set. Instances already known keep their statistics.
    pub fn update(&self, instances: impl IntoIterator<Item = Instance>) {
        let old = self.set.load();
        let known: HashMap<&str, &Arc<Endpoint>> = old.endpoints.iter().map(|e| (e.instance.id.as_str(), e)).collect();
        let mut endpoints: Vec<Arc<Endpoint>> = instances
            .into_iter()
            .map(|i| {
                let stats = known.get(i.id.as_str()).map_or_else(Default::default, |e| e.stats.clone());
                Arc::new(Endpoint { instance: i, stats, ejections: self.ejections.clone() })
            })
            .collect();
        endpoints.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        let local = match &self.zone {
            Some(z) => endpoints.iter().enumerate().filter(|(_, e)| &e.instance.zone == z).map(|(i, _)| i).collect(),
            None => Vec::new(),
        };
        let wrr = if self.policy == Policy::WeightedRoundRobin { smooth_wrr(&endpoints) } else { Vec::new() };
        let ring = if self.policy == Policy::ConsistentHash { build_ring(&endpoints) } else { Vec::new() };
        drop(known);
        self.ejections.size.store(endpoints.len(), Ordering::Relaxed);
        self.ejections.ejected.store(endpoints.iter().filter(|e| e.stats.is_ejected()).count(), Ordering::Relaxed);
        self.set.store(Arc::new(Set { endpoints, local, wrr, ring }));
    }

    /// The current set.
    pub fn set(&self) -> Arc<Set> {
        self.set.load_full()
    }

    /// Picks an endpoint. `key` is used by consistent hashing only. The
    /// returned guard counts the request as in flight until it is dropped;
    /// report its outcome with [`Guard::success`] or [`Guard::failure`].
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Guard> {
        self.pick_avoiding(key, &[])
    }

    /// As [`pick`](Self::pick), passing over the endpoints whose statistics
    /// are in `avoid` (those a request already tried; statistics, unlike
    /// endpoints, survive set updates).
    pub fn pick_avoiding(&self, key: Option<&[u8]>, avoid: &[Arc<EndpointStats>]) -> Option<Guard> {
        let set = self.set.load();
        if set.endpoints.is_empty() {
            return None;
        }
        let local = self.use_local(&set);
        let max = self.max_in_flight;
        let usable = |i: usize| {
            let e = &set.endpoints[i];
            e.stats.available()
                && (max == 0 || e.stats.in_flight() < max)
                && !avoid.iter().any(|a| Arc::ptr_eq(a, &e.stats))
        };
        let ok = |i: usize| {
            (!local || set.endpoints[i].instance.zone.as_str() == self.zone.as_deref().unwrap_or("")) && usable(i)
        };
        let idx = match self.policy {
            Policy::RoundRobin => self.round_robin(&set, local, ok),
            Policy::WeightedRoundRobin => self.weighted(&set, ok, usable),
            Policy::Random => self.random(&set, local, ok),
            Policy::LeastRequest => self.least_request(&set, local, ok),
            Policy::ConsistentHash => self.hashed(&set, key.unwrap_or_default(), ok),
        }?;
        let e = set.endpoints[idx].clone();
        e.stats.admit();
        Some(Guard::new(e, self.policy == Policy::LeastRequest))
    }

    /// Whether some endpoint can take a request now. An empty set can: its
    /// requests fail fast rather than wait. Otherwise every endpoint is
    /// ejected or full, and the error says when the first ejection ends
    /// (`None`: only a finished request frees one).
    pub fn capacity(&self) -> Result<(), Option<std::time::Duration>> {
        let max = self.max_in_flight;
        // The common case (no cap, nothing ejected) answers before loading
        // the set: `poll_ready` asks on every call.
        if max == 0 && self.ejections.ejected.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let set = self.set.load();
        if set.endpoints.is_empty() {
            return Ok(());
        }
        let mut soonest: Option<u64> = None;
        for e in &set.endpoints {
            let room = max == 0 || e.stats.in_flight() < max;
            if room && e.stats.available() {
                return Ok(());
            }
            if room && let Some(until) = e.stats.ejection_end() {
                soonest = Some(soonest.map_or(until, |s| s.min(until)));
            }
        }
        Err(soonest.map(|until| std::time::Duration::from_millis(until.saturating_sub(now_ms()).max(1))))
    }

    /// Local endpoints are preferred while at least half are healthy.
    fn use_local(&self, set: &Set) -> bool {
        if set.local.is_empty() {
            return false;
        }
        let healthy = set.local.iter().filter(|&&i| set.endpoints[i].stats.healthy()).count();
        healthy * 2 >= set.local.len()
    }

    fn candidates<'a>(&self, set: &'a Set, local: bool) -> &'a [usize] {
        if local { &set.local } else { &[] }
    }

    /// Skipped (ejected) endpoints advance the shared cursor too, so their
    /// turns spread over all the others instead of falling to the next one.
    fn round_robin(&self, set: &Set, local: bool, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let sub = self.candidates(set, local);
        let n = if local { sub.len() } else { set.endpoints.len() };
        let at = |k: usize| if local { sub[k % n] } else { k % n };
        (0..n).map(|_| at(self.cursor.fetch_add(1, Ordering::Relaxed))).find(|&i| ok(i))
    }

    fn weighted(&self, set: &Set, ok: impl Fn(usize) -> bool, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = set.wrr.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| set.wrr[(start + k) % n]).find(|&i| ok(i)).or_else(|| {
            // Zone preference may exclude every weighted slot; fall back.
            (0..set.endpoints.len()).find(|&i| usable(i))
        })
    }

    /// 64 random bits: a splitmix64 step over an atomic Weyl sequence, one
    /// uncontended atomic add per draw and reproducible from the seed.
    fn draw(&self) -> u64 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        thread_local! {
            static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new().build_hasher().finish()
            });
        }
        let mut z = if self.seeded {
            self.rng.fetch_add(GOLDEN, Ordering::Relaxed)
        } else {
            STATE.with(|s| {
                let z = s.get().wrapping_add(GOLDEN);
                s.set(z);
                z
            })
        };
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_index(&self, n: usize) -> usize {
        below(self.draw() as u32, n)
    }

    fn random(&self, set: &Set, local: bool, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let sub = self.candidates(set, local);
        let n = if local { sub.len() } else { set.endpoints.len() };
        let at = |k: usize| if local { sub[k % n] } else { k % n };
        let start = self.random_index(n);
        (0..n).map(|k| at(start + k)).find(|&i| ok(i))
    }

    /// Power of two choices: the better of two distinct random endpoints
    /// (see [`endpoint::prefer_second`]): a latency outlier loses, else the
    /// lower in-flight count times latency average wins.
    fn least_request(&self, set: &Set, local: bool, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let sub = self.candidates(set, local);
        let n = if local { sub.len() } else { set.endpoints.len() };
        // Every k here is below 2n: wrap by subtraction, not by a division
        // (which was a tenth of the pick).
        let wrap = |k: usize| if k >= n { k - n } else { k };
        let at = |k: usize| if local { sub[wrap(k)] } else { wrap(k) };
        let r = self.draw();
        let first = below(r as u32, n);
        let a = at(first);
        let b = if n > 1 { at(first + 1 + below((r >> 32) as u32, n - 1)) } else { a };
        let (a, b) = match (ok(a), ok(b)) {
            (true, true) => (a, b),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            // Both unavailable: take the next available one in order.
            (false, false) => return (0..n).map(|k| at(first + k)).find(|&i| ok(i)),
        };
        // Scores are read from the stats `ok` just touched, still in cache.
        let (sa, sb) = (&set.endpoints[a].stats, &set.endpoints[b].stats);
        let half_life = self.ejections.health.latency_half_life.as_millis() as u64;
        Some(if endpoint::prefer_second(sa, sb, endpoint::recent_ms(), half_life) { b } else { a })
    }

    fn hashed(&self, set: &Set, key: &[u8], ok: impl Fn(usize) -> bool) -> Option<usize> {
        if set.ring.is_empty() {
            return None;
        }
        let h = hash64(key);
        let start = set.ring.partition_point(|(p, _)| *p < h);
        let n = set.ring.len();
        (0..n).map(|k| set.ring[(start + k) % n].1).find(|&i| ok(i))
    }
}

/// A uniform index below `n` without division (Lemire's multiply-shift).
fn below(r: u32, n: usize) -> usize {
    ((r as u64 * n as u64) >> 32) as usize
}

/// nginx's smooth weighted round robin, run once per set: each step adds
/// every weight to its current value, picks the largest, and subtracts the
/// total from it. Weights are scaled down so that a cycle stays short.
fn smooth_wrr(endpoints: &[Arc<Endpoint>]) -> Vec<usize> {
    let mut weights: Vec<u64> = endpoints.iter().map(|e| e.instance.weight.max(1) as u64).collect();
    let g = weights.iter().copied().fold(0, gcd);
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
    let total: u64 = weights.iter().sum();
    if total as usize > MAX_WRR_LEN {
        let scale = total as f64 / MAX_WRR_LEN as f64;
        weights.iter_mut().for_each(|w| *w = ((*w as f64 / scale).round() as u64).max(1));
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += *w as i64;
            }
            let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).expect("non-empty");
            current[best] -= total;
            best
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let points = (e.instance.weight.max(1) * RING_POINTS_PER_WEIGHT).min(1000);
        for v in 0..points {
            ring.push((hash64(format!("{}#{v}", e.instance.id).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a with a splitmix64 finish: stable across runs and platforms.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
