//! `roster gateway`: an HTTP/1.1 and HTTP/2 (h2c, so gRPC too) reverse
//! proxy that routes by service name to the instances discovery reports.
//!
//! - [`config`]: `gateway.toml`, validated with errors that name the place.
//! - [`route`]: which service a request goes to (gRPC service, host, path).
//! - `directory`: which service names have instances, from one prefix
//!   watch, so made-up names never start a discovery.
//! - `upstream`: a discovery and a `roster::balance::Balancer` per service,
//!   with passive ejection and a retry budget; unused ones are dropped.
//! - `h1`: the HTTP/1.1 fast path: plain requests parsed with `httparse`
//!   and relayed as bytes over per-thread upstream pools; the rest go to
//!   hyper and `proxy`, read through `h1::strict`, which holds every
//!   HTTP/1.1 head hyper serves to the fast path's rules.
//! - `limits`: connection caps at accept, and each route's concurrency
//!   (503) and rate (429) limits, one check for both engines.
//! - `pipeline`: the one request pipeline both engines plug into: route →
//!   balance → attempts → classify → respond, and the header rewrite.
//! - `proxy`: the hyper engine (HTTP/2, gRPC, and what the fast path hands
//!   over), the attempts, and the failures: JSON errors for HTTP callers,
//!   `grpc-status` for gRPC callers.
//! - `metrics`: requests, latency and retries per service and instance.
//! - `server`: the listener (HTTP/1.1 + h2c, or HTTPS with ALPN h2 and
//!   http/1.1, bounded heads, graceful
//!   drain, bounded accept queues) and the admin listener (`/metrics`, `/health`).

pub mod config;
mod directory;
mod h1;
mod limits;
mod metrics;
mod pipeline;
mod proxy;
pub mod route;
mod server;
mod upstream;

pub use config::{Config, ConfigError};
pub use server::DEFAULT_DRAIN;

use roster::Registry;
use roster::balance::HealthConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A gateway over one registry. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    proxy: Arc<proxy::Proxy>,
}

impl Gateway {
    /// `registry` is where instances are discovered; its prefix is
    /// replaced by the config's.
    pub fn new(registry: Registry, config: Config) -> Gateway {
        let registry = registry.with_prefix(config.prefix.clone());
        let health = HealthConfig { consecutive_failures: 1, ..HealthConfig::default() };
        let upstreams = upstream::Upstreams::new(registry, health, config.max_services);
        Gateway { proxy: Arc::new(proxy::Proxy::new(config, upstreams)) }
    }

    /// Swaps in a new configuration; requests already routed keep the old.
    /// `max_services`, routes, policies, limits and trust settings take
    /// effect at once; the head size and timeout apply to fast-path
    /// connections accepted after it and to hyper's from the next start. A
    /// new `prefix` is refused: the
    /// registry client and the directory watch are bound to the old one,
    /// so the gateway must be restarted to move it.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let current = self.proxy.config.load();
        if config.prefix != current.prefix {
            return Err(ConfigError(format!(
                "prefix cannot change on reload (running with {:?}, the new config says {:?}); restart the gateway to use the new prefix",
                current.prefix, config.prefix
            )));
        }
        self.proxy.upstreams.set_max(config.max_services);
        self.proxy.config.store(Arc::new(config));
        Ok(())
    }

    pub fn config(&self) -> Arc<Config> {
        self.proxy.config.load_full()
    }

    /// Serves until `shutdown` resolves, then drains for up to `drain`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        drain: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(listener, admin, self.proxy.clone(), None, drain, shutdown).await
    }

    /// As [`Gateway::serve`], terminating TLS on `listener` with `tls`
    /// (build it with `roster_tls::ServerTls::server_config`, ALPN `h2`
    /// and `http/1.1`: the certificate is then reloaded when its files
    /// change). The admin listener stays plaintext.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        tls: Arc<rustls::ServerConfig>,
        drain: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(listener, admin, self.proxy.clone(), Some(tls), drain, shutdown).await
    }
}
