//! The instances behind each service: one discovery and one balancer per
//! (service, policy), created on the first request that needs them.

use parking_lot::{Mutex, RwLock};
use roster::balance::{Balancer, HealthConfig, Policy};
use roster::{Discovery, Instance, Registry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;

pub struct Upstream {
    pub balancer: Arc<Balancer>,
    pub budget: RetryBudget,
    /// Keeps the instance list followed.
    _discovery: Discovery,
    follow: tokio::task::AbortHandle,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// One service's upstreams, one per policy some route uses.
type ByPolicy = Vec<(Policy, Arc<Upstream>)>;

/// Every upstream the gateway follows.
pub struct Upstreams {
    registry: Registry,
    health: HealthConfig,
    max: usize,
    map: RwLock<HashMap<String, ByPolicy>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the gateway already follows {0} services (max_services)")]
pub struct TooMany(pub usize);

impl Upstreams {
    pub fn new(registry: Registry, health: HealthConfig, max: usize) -> Upstreams {
        Upstreams { registry, health, max, map: RwLock::new(HashMap::new()) }
    }

    /// The upstream for `service`, waiting up to `wait` for its first list
    /// if it is new.
    pub async fn get(&self, service: &str, policy: Policy, wait: Duration) -> Result<Arc<Upstream>, TooMany> {
        // The hot path: a shared lock and no allocation.
        let known = self.map.read().get(service).and_then(|by_policy| by_policy.iter().find(|(p, _)| *p == policy).map(|(_, u)| u.clone()));
        let (up, fresh) = match known {
            Some(u) => (u, false),
            None => {
                let mut map = self.map.write();
                let count: usize = map.values().map(Vec::len).sum();
                let by_policy = map.entry(service.to_owned()).or_default();
                match by_policy.iter().find(|(p, _)| *p == policy) {
                    Some((_, u)) => (u.clone(), false),
                    None if count >= self.max => return Err(TooMany(self.max)),
                    None => {
                        let up = self.start(service, policy);
                        by_policy.push((policy, up.clone()));
                        (up, true)
                    }
                }
            }
        };
        if fresh || up.balancer.set().endpoints.is_empty() {
            let _ = tokio::time::timeout(wait, up._discovery.ready()).await;
            // The follower task may not have run yet.
            if up.balancer.set().endpoints.is_empty() {
                up.balancer.update(usable(up._discovery.instances()));
            }
        }
        Ok(up)
    }

    fn start(&self, service: &str, policy: Policy) -> Arc<Upstream> {
        let discovery = self.registry.discover(service);
        let balancer = Arc::new(Balancer::new(policy).with_health(self.health.clone()));
        let (d, b) = (discovery.clone(), balancer.clone());
        let follow = tokio::spawn(async move {
            let mut changes = Box::pin(d.changes());
            d.ready().await;
            b.update(usable(d.instances()));
            while changes.next().await.is_some() {
                b.update(usable(d.instances()));
            }
        })
        .abort_handle();
        Arc::new(Upstream { balancer, budget: RetryBudget::new(), _discovery: discovery, follow })
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

/// Retries may add at most a share of the requests: each request deposits
/// `percent/100` of a token, each retry takes one. A small reserve lets a
/// quiet service retry at all.
pub struct RetryBudget {
    tokens: Mutex<f64>,
}

impl RetryBudget {
    const RESERVE: f64 = 10.0;

    pub fn new() -> RetryBudget {
        RetryBudget { tokens: Mutex::new(Self::RESERVE) }
    }

    pub fn deposit(&self, percent: u32) {
        let mut t = self.tokens.lock();
        *t = (*t + f64::from(percent) / 100.0).min(Self::RESERVE.max(100.0));
    }

    pub fn withdraw(&self) -> bool {
        let mut t = self.tokens.lock();
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_retries_at_the_share_plus_the_reserve() {
        for per_request in [1, 3] {
            let b = RetryBudget::new();
            let mut granted = 0;
            for _ in 0..1000 {
                b.deposit(20);
                for _ in 0..per_request {
                    granted += usize::from(b.withdraw());
                }
            }
            assert!((205..=210).contains(&granted), "20% of 1000 plus the reserve of 10, got {granted}");
        }
    }
}
