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
    fn zero_ids_and_intervals_are_rejected() {
        let cases: [fn(&mut ServerConfig); 4] = [
            |c| c.member_id = 0,
            |c| c.cluster_id = 0,
            |c| c.lease_tick = Duration::ZERO,
            |c| c.name.clear(),
        ];
        for f in cases {
            let mut c = ServerConfig::default();
            f(&mut c);
            assert!(matches!(c.validate(), Err(ServerError::Config(_))));
        }
    }
}
