//! The instances behind each service: one discovery and one balancer per
//! (service, policy), created on the first request that needs them, for
//! names a route configures or the service directory lists.

use crate::directory::{Directory, DirectoryTask};
use crate::limits::RouteLimiter;
use parking_lot::RwLock;
use roster::balance::{Balancer, HealthConfig, Policy, RetryBudget};
use roster::{Discovery, Instance, Registry};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub struct Upstream {
    pub balancer: Arc<Balancer>,
    pub budget: RetryBudget,
    /// The service's concurrency and rate limits, for both engines.
    pub limiter: RouteLimiter,
    /// Keeps the instance list followed.
    _discovery: Discovery,
    /// Stops the task that feeds the balancer with this upstream.
    _follow: roster::task::DropGuard,
    /// Seconds since the gateway started, at the last request.
    used: AtomicU64,
    /// A route named the service when this was started.
    configured: bool,
}

/// One service's upstreams, one per policy some route uses.
type ByPolicy = Vec<(Policy, Arc<Upstream>)>;

/// An upstream no route names and no request used for this long is dropped.
const IDLE: Duration = Duration::from_secs(600);

/// Every upstream the gateway follows.
///
/// Only names a route configures, or that have instances in the
/// [`Directory`], get an upstream, and unconfigured ones are dropped once
/// their instances are gone or they sit idle: made-up names cost nothing
/// and can never fill `max_services`.
pub struct Upstreams {
    registry: Registry,
    health: HealthConfig,
    /// `max_services`; a reload may change it.
    max: AtomicUsize,
    map: RwLock<HashMap<String, ByPolicy>>,
    directory: Directory,
    _directory_task: DirectoryTask,
    started: Instant,
    /// Seconds since `started` at the last sweep.
    swept: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the gateway already follows {0} services (max_services)")]
    TooMany(usize),
    #[error("no instance is registered")]
    Unknown,
}

impl Upstreams {
    pub fn new(registry: Registry, health: HealthConfig, max: usize) -> Upstreams {
        let (directory, task) = Directory::spawn(registry.client().clone(), registry.prefix());
        Upstreams {
            registry,
            health,
            max: AtomicUsize::new(max),
            map: RwLock::new(HashMap::new()),
            directory,
            _directory_task: task,
            started: Instant::now(),
            swept: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.secs_at(Instant::now())
    }

    /// Whole seconds from the start to `at`: the clock `used` is kept in.
    fn secs_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs()
    }

    /// Sets `max_services`. Lowered below what is held, nothing is dropped:
    /// new services are refused until unused ones are swept.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The upstream for `service`, waiting up to `wait` for its first list
    /// if it is new. `configured` says a route names the service; `now` is
    /// when the request started (marks the upstream used without another
    /// clock read per request).
    pub async fn get(
        &self,
        service: &str,
        policy: Policy,
        wait: Duration,
        configured: bool,
        now: Instant,
    ) -> Result<Arc<Upstream>, Unavailable> {
        // The hot path: a shared lock and no allocation.
        let known = self
            .map
            .read()
            .get(service)
            .and_then(|by_policy| by_policy.iter().find(|(p, _)| *p == policy).map(|(_, u)| u.clone()));
        let (up, fresh) = match known {
            Some(u) => (u, false),
            None => {
                if !configured && !self.directory.has(service, wait).await {
                    return Err(Unavailable::Unknown);
                }
                let mut map = self.map.write();
                let mut count: usize = map.values().map(Vec::len).sum();
                let max = self.max.load(Ordering::Relaxed);
                if count >= max {
                    self.sweep_locked(&mut map, None);
                    count = map.values().map(Vec::len).sum();
                }
                let by_policy = map.entry(service.to_owned()).or_default();
                match by_policy.iter().find(|(p, _)| *p == policy) {
                    Some((_, u)) => (u.clone(), false),
                    None if count >= max => {
                        if by_policy.is_empty() {
                            map.remove(service);
                        }
                        return Err(Unavailable::TooMany(max));
                    }
                    None => {
                        let up = self.start(service, policy, configured);
                        by_policy.push((policy, up.clone()));
                        (up, true)
                    }
                }
            }
        };
        let now = self.secs_at(now);
        if up.used.load(Ordering::Relaxed) != now {
            up.used.store(now, Ordering::Relaxed);
        }
        if fresh || up.balancer.set().endpoints.is_empty() {
            let _ = tokio::time::timeout(wait, up._discovery.ready()).await;
            // The follower task may not have run yet.
            if up.balancer.set().endpoints.is_empty() {
                up.balancer.update(usable(up._discovery.instances()));
            }
        }
        Ok(up)
    }

    /// Drops upstreams that no route names once their service has no
    /// instance or they went unused for [`IDLE`]. At most every few seconds.
    pub fn sweep(&self, configured: impl Fn(&str) -> bool) {
        let now = self.now();
        let last = self.swept.load(Ordering::Relaxed);
        if now < last + 5 || self.swept.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let mut map = self.map.write();
        self.sweep_locked(&mut map, Some(&configured));
    }

    /// With `configured` unknown, keeps what was started as configured.
    fn sweep_locked(&self, map: &mut HashMap<String, ByPolicy>, configured: Option<&dyn Fn(&str) -> bool>) {
        let now = self.now();
        map.retain(|name, by_policy| {
            by_policy.retain(|(_, u)| {
                let routed = configured.map_or(u.configured, |c| c(name));
                routed
                    || (self.directory.contains(name)
                        && now.saturating_sub(u.used.load(Ordering::Relaxed)) < IDLE.as_secs())
            });
            !by_policy.is_empty()
        });
    }

    /// How many upstreams are followed, and how many names the directory lists.
    pub fn held(&self) -> (usize, usize) {
        (self.map.read().values().map(Vec::len).sum(), self.directory.len())
    }

    fn start(&self, service: &str, policy: Policy, configured: bool) -> Arc<Upstream> {
        let discovery = self.registry.discover(service);
        let balancer = Arc::new(Balancer::new(policy).with_health(self.health.clone()));
        let (d, b) = (discovery.clone(), balancer.clone());
        let follow = roster::task::spawn(async move {
            let mut changes = Box::pin(d.changes());
            d.ready().await;
            b.update(usable(d.instances()));
            while changes.next().await.is_some() {
                b.update(usable(d.instances()));
            }
        });
        Arc::new(Upstream {
            balancer,
            budget: RetryBudget::new(),
            limiter: RouteLimiter::default(),
            _discovery: discovery,
            _follow: follow,
            used: AtomicU64::new(self.now()),
            configured,
        })
    }
}

/// Instances whose address can be sent as a `Host` header and dialled.
/// An address comes from whoever wrote the registry: one with CR, LF or
/// anything else outside `host:port` would forge headers upstream.
fn usable(instances: Vec<Instance>) -> Vec<Instance> {
    let ok = |a: &str| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]%".contains(&b));
    if instances.iter().all(|i| ok(&i.addr)) {
        return instances;
    }
    instances
        .into_iter()
        .filter(|i| {
            let keep = ok(&i.addr);
            if !keep {
                tracing::warn!(service = %i.service, id = %i.id, addr = ?i.addr, "instance address is not host:port; not routed");
            }
            keep
        })
        .collect()
}
