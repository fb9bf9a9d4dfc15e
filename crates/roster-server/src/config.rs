//! What the server needs to know about itself. Defaults are stated once, in
//! [`ServerConfig::default`].

use crate::ServerError;
use std::time::Duration;

/// Identity and timing of one `roster serve` member.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `header.cluster_id` in every response. Non-zero.
    pub cluster_id: u64,
    /// `header.member_id`, the one member's `ID` and `Status.leader`. Non-zero.
    pub member_id: u64,
    /// Member name shown by MemberList.
    pub name: String,
    /// URLs clients reach this member at, as MemberList advertises them.
    pub client_urls: Vec<String>,
    /// Peer URLs shown by MemberList. A single node has no peers; etcd
    /// clients only display these.
    pub peer_urls: Vec<String>,
    /// How often watchers that asked for `progress_notify` get an empty
    /// response carrying the current revision (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// How often expired leases are revoked.
    pub lease_tick: Duration,
    /// After shutdown is requested, how long open connections may take to
    /// finish before the server stops waiting for them.
    pub shutdown_grace: Duration,
    /// Transport limits: HTTP/2 keepalive, streams, calls in flight.
    pub transport: TransportLimits,
}

/// Limits on what one client can make the server hold. The names follow
/// etcd's flags where etcd has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// `--grpc-keepalive-interval`: how long a connection may be idle before
    /// the server pings it. etcd: 2 h.
    pub keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: how long the server waits for the ping's
    /// answer before it closes the connection. etcd: 20 s.
    pub keepalive_timeout: Duration,
    /// `--grpc-keepalive-min-time`: in etcd, the shortest interval a client
    /// may ping at before it is sent away. Kept for etcd's command lines but
    /// not enforced: the HTTP/2 stack (h2) answers every ping itself and
    /// offers no hook to count them. etcd: 5 s.
    pub keepalive_min_time: Duration,
    /// `--max-concurrent-streams`: streams one HTTP/2 connection may have
    /// open at once, announced in SETTINGS. etcd: 2^32 - 1, since its
    /// clients multiplex every watch and call over one connection.
    pub max_concurrent_streams: u32,
    /// `--max-inflight-requests` (Roster's own; etcd has none): unary calls
    /// being served at once, over all connections. Calls over it are refused
    /// with "etcdserver: too many requests".
    pub max_inflight_requests: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            keepalive_interval: Duration::from_secs(2 * 60 * 60),
            keepalive_timeout: Duration::from_secs(20),
            keepalive_min_time: Duration::from_secs(5),
            max_concurrent_streams: u32::MAX,
            // Twice `roster bench hold`'s 10,000 registrations at once.
            max_inflight_requests: 20_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            cluster_id: 1,
            member_id: 1,
            name: "default".to_owned(),
            client_urls: vec!["http://127.0.0.1:2379".to_owned()],
            peer_urls: vec!["http://localhost:2380".to_owned()],
            progress_notify_interval: Duration::from_secs(600),
            lease_tick: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            transport: TransportLimits::default(),
        }
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    /// Rejects a config the server cannot honour.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |why: &str| Err(ServerError::Config(why.to_owned()));
        if self.cluster_id == 0 || self.member_id == 0 {
            // etcd never uses 0; clients treat it as "no member".
            return bad("cluster_id and member_id must be non-zero");
        }
        if self.name.is_empty() {
            return bad("name must not be empty");
        }
        if self.progress_notify_interval.is_zero() {
            return bad("progress_notify_interval must be positive");
        }
        if self.lease_tick.is_zero() {
            return bad("lease_tick must be positive");
        }
        let t = &self.transport;
        if t.keepalive_interval.is_zero() || t.keepalive_timeout.is_zero() {
            return bad("grpc keepalive interval and timeout must be positive");
        }
        if t.max_concurrent_streams == 0 {
            // A connection that may open no stream serves nothing.
            return bad("max concurrent streams must be at least 1");
        }
        if t.max_inflight_requests == 0 {
            return bad("max in-flight requests must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn transport_defaults_are_etcds() {
        let t = TransportLimits::default();
        assert_eq!(t.keepalive_interval, Duration::from_secs(7200));
        assert_eq!(t.keepalive_timeout, Duration::from_secs(20));
        assert_eq!(t.keepalive_min_time, Duration::from_secs(5));
        assert_eq!(t.max_concurrent_streams, u32::MAX);
    }

    #[test]
    fn zero_ids_and_intervals_are_rejected() {
        let cases: [fn(&mut ServerConfig); 8] = [
            |c| c.member_id = 0,
            |c| c.cluster_id = 0,
            |c| c.lease_tick = Duration::ZERO,
            |c| c.name.clear(),
            |c| c.transport.keepalive_interval = Duration::ZERO,
            |c| c.transport.keepalive_timeout = Duration::ZERO,
            |c| c.transport.max_concurrent_streams = 0,
            |c| c.transport.max_inflight_requests = 0,
        ];
        for f in cases {
            let mut c = ServerConfig::default();
            f(&mut c);
            assert!(matches!(c.validate(), Err(ServerError::Config(_))));
        }
    }
}
