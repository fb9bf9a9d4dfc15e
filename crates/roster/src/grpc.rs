//! A tonic channel that follows discovery and balances on the client.
//!
//! [`Channel`] implements the `tower::Service` that generated tonic clients
//! take (`HelloClient::new(channel)`). It keeps one HTTP/2 connection per
//! discovered instance, opened and dropped as instances come and go, and
//! picks an instance per call with a [`Balancer`]. Calls in flight on a
//! removed instance finish normally: they hold their own connection handle.
//!
//! Unlike tonic's `balance_channel`, load is real (in-flight count and
//! latency feed least-request), weights and zones reach the balancer, and a
//! failed instance is ejected for a while and probed, not evicted for good.

use crate::balance::{Balancer, Guard, HealthConfig, Policy};
use crate::discovery::Discovery;
use crate::instance::Instance;
use crate::task::DropGuard;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::transport::Endpoint;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a [`Channel`] balances.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub policy: Policy,
    pub health: HealthConfig,
    /// Prefer instances in this zone.
    pub zone: Option<String>,
    /// For consistent hashing: the request header (gRPC metadata) whose
    /// value is the key.
    pub hash_header: Option<String>,
    pub connect_timeout: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            policy: Policy::LeastRequest,
            health: HealthConfig::default(),
            zone: None,
            hash_header: None,
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A balanced channel to every instance of one service.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
    /// Stops the task that follows discovery with the last clone.
    _follow: Arc<DropGuard>,
}

struct Inner {
    service: String,
    balancer: Balancer,
    conns: ArcSwap<HashMap<String, tonic::transport::Channel>>,
    hash_header: Option<http::HeaderName>,
    connect_timeout: Duration,
    _discovery: Discovery,
}

// === impl Channel ===

impl Channel {
    /// A channel following `discovery`. Calls made before the first list
    /// arrives fail fast with UNAVAILABLE; await [`Discovery::ready`] first.
    pub fn new(discovery: Discovery, config: ChannelConfig) -> Result<Channel, crate::Error> {
        let hash_header = match &config.hash_header {
            Some(h) => Some(http::HeaderName::from_bytes(h.as_bytes()).map_err(|e| crate::Error::Config(format!("hash header {h:?}: {e}")))?),
            None => None,
        };
        let mut balancer = Balancer::new(config.policy).with_health(config.health.clone());
        if let Some(z) = &config.zone {
            balancer = balancer.with_zone(z.clone());
        }
        let inner = Arc::new(Inner {
            service: discovery.service().to_owned(),
            balancer,
            conns: ArcSwap::from_pointee(HashMap::new()),
            hash_header,
            connect_timeout: config.connect_timeout,
            _discovery: discovery.clone(),
        });
        inner.sync(&discovery.instances());
        let mut changes = Box::pin(discovery.changes());
        let state = inner.clone();
        let follow = crate::task::spawn(async move {
            while changes.next().await.is_some() {
                state.sync(&discovery.instances());
            }
        });
        Ok(Channel { inner, _follow: Arc::new(follow) })
    }

    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }
}

impl Inner {
    /// Matches connections and the balancer to the discovered set.
    fn sync(&self, instances: &[Instance]) {
        let old = self.conns.load();
        let mut conns = HashMap::with_capacity(instances.len());
        for i in instances {
            let conn = match old.get(&i.id) {
                Some(c) => c.clone(),
                None => match Endpoint::from_shared(format!("http://{}", i.addr)) {
                    Ok(e) => e.connect_timeout(self.connect_timeout).tcp_nodelay(true).connect_lazy(),
                    Err(e) => {
                        tracing::warn!(instance = %i.id, addr = %i.addr, error = %e, "skipping instance with a bad address");
                        continue;
                    }
                },
            };
            conns.insert(i.id.clone(), conn);
        }
        let usable: Vec<Instance> = instances.iter().filter(|i| conns.contains_key(&i.id)).cloned().collect();
        // Connections first: a picked instance always has one.
        self.conns.store(Arc::new(conns));
        self.balancer.update(usable);
    }
}

impl Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per instance; it is awaited after the pick.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let key = inner.hash_header.as_ref().and_then(|h| req.headers().get(h)).map(|v| v.as_bytes().to_vec());
            let Some(guard) = inner.balancer.pick(key.as_deref()) else {
                let msg = format!("no available instance of service {:?}", inner.service);
                return Ok(tonic::Status::unavailable(msg).into_http());
            };
            let Some(mut conn) = inner.conns.load().get(&guard.instance().id).cloned() else {
                let msg = format!("instance {} of service {:?} just left", guard.instance().id, inner.service);
                return Ok(tonic::Status::unavailable(msg).into_http());
            };
            if let Err(e) = std::future::poll_fn(|cx| conn.poll_ready(cx)).await {
                guard.connect_failure();
                return Err(e.into());
            }
            match conn.call(req).await {
                Ok(resp) => {
                    report(guard, &resp);
                    Ok(resp)
                }
                Err(e) => {
                    // The connection failed: the instance is likely gone.
                    guard.connect_failure();
                    Err(e.into())
                }
            }
        })
    }
}

/// Judges a call by its response head: UNAVAILABLE (also as HTTP 502/503)
/// counts as a failure. Latency is taken at the head, which for unary calls
/// is the server's processing time.
fn report(guard: Guard, resp: &http::Response<Body>) {
    let status = resp.status();
    let grpc_unavailable = resp.headers().get("grpc-status").is_some_and(|v| v == "14");
    if grpc_unavailable || status == http::StatusCode::BAD_GATEWAY || status == http::StatusCode::SERVICE_UNAVAILABLE {
        guard.failure();
    } else {
        guard.success();
    }
}
