//! The entry point: register instances and discover services.

use crate::client::Client;
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::health::HealthCheck;
use crate::instance::Instance;
use crate::registration::Registration;
use std::time::Duration;

/// Default key prefix: instances live at `/services/<service>/<id>`.
pub const DEFAULT_PREFIX: &str = "/services";
/// What follows a registry prefix to make its sibling prefix of drain
/// markers: `/services` keeps its markers under `/services.drain/`, outside
/// what Discovery (or etcd's resolver) reads as instances.
pub const DRAIN_SUFFIX: &str = ".drain";

/// The drain marker of instance `<prefix>/<service>/<id>`: while it exists
/// the instance's [`Registration`] keeps its key withdrawn, as
/// [`Registration::pause`] does. Operators write it on the instance's own
/// lease (so it dies with the instance), holding the instance's value.
pub fn drain_key(prefix: &str, service: &str, id: &str) -> String {
    format!("{}/{service}/{id}", drain_prefix(prefix))
}

/// The prefix every drain marker of `prefix` lives under (no trailing slash).
pub fn drain_prefix(prefix: &str) -> String {
    format!("{}{DRAIN_SUFFIX}", prefix.trim_end_matches('/'))
}

/// Default lease TTL of a registration.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Registers instances and discovers services on one registry.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    ttl: Duration,
}

impl Registry {
    pub fn new(client: Client) -> Self {
        Registry { client, prefix: DEFAULT_PREFIX.into(), ttl: DEFAULT_TTL }
    }

    /// Uses another key prefix (no trailing slash).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets the lease TTL of registrations (etcd's minimum is 2 s).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key an instance is registered under.
    pub fn key_of(&self, service: &str, id: &str) -> String {
        format!("{}/{}/{}", self.prefix, service, id)
    }

    /// The drain marker key of an instance (see [`drain_key`]).
    pub fn drain_key_of(&self, service: &str, id: &str) -> String {
        drain_key(&self.prefix, service, id)
    }

    /// Registers `instance` and keeps it registered until the handle is
    /// dropped or deregistered. Waits for the first registration up to the
    /// client's request timeout; past that it returns the handle anyway and
    /// keeps retrying in the background (see [`Registration::status`]).
    pub async fn register(&self, instance: Instance) -> Result<Registration> {
        self.start(instance, None).await
    }

    /// Registers `instance` while `check` passes: it is withdrawn while the
    /// check fails and restored when it passes again (see
    /// [`crate::health`]). Waits for the first probe and registration as
    /// [`register`](Self::register) does.
    pub async fn register_checked(&self, instance: Instance, check: HealthCheck) -> Result<Registration> {
        check.validate().map_err(Error::Config)?;
        self.start(instance, Some(check)).await
    }

    async fn start(&self, instance: Instance, check: Option<HealthCheck>) -> Result<Registration> {
        instance.validate().map_err(Error::Instance)?;
        if self.ttl < Duration::from_secs(1) {
            return Err(Error::Config(format!("TTL {:?} is below one second", self.ttl)));
        }
        let key = self.key_of(&instance.service, &instance.id);
        let drain = self.drain_key_of(&instance.service, &instance.id);
        let (reg, first) = Registration::spawn(self.client.clone(), key, drain, instance, self.ttl, check);
        // A refusal (no permission for this service, bad credentials) is
        // the caller's to see now; other failures are retried in the
        // background. Dropping `reg` revokes any lease it was granted.
        if let Ok(Ok(Some(refused))) = tokio::time::timeout(self.client.config().request_timeout, first).await {
            return Err(Error::Status(refused));
        }
        Ok(reg)
    }

    /// Starts following `service`. Use [`Discovery::ready`] to wait for the
    /// first list.
    pub fn discover(&self, service: &str) -> Discovery {
        Discovery::spawn(self.client.clone(), self.prefix.clone(), service.to_owned())
    }
}
