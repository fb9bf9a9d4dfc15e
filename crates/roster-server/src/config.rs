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
    /// etcd's `--quota-backend-bytes`: 0 means etcd's default of 2 GiB, a
    /// negative value turns the quota off. See [`ServerConfig::quota_bytes`].
    pub quota_backend_bytes: i64,
    /// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`;
    /// `None` (retention 0) compacts never.
    pub auto_compaction: Option<AutoCompaction>,
    /// How often revision-mode auto-compaction checks the revision (etcd:
    /// 5 minutes, fixed). Periodic mode derives its timing from its period.
    pub auto_compaction_check: Duration,
    /// Transport limits: HTTP/2 keepalive, streams, calls in flight.
    pub transport: TransportLimits,
    /// Scheduled backups; `None` takes none.
    pub backup: Option<crate::BackupConfig>,
    /// Tokens and password hashing for etcd's auth.
    pub auth: crate::AuthConfig,
    /// TLS on the gRPC listener (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`); `None`: plaintext.
    pub tls: Option<roster_tls::ServerTls>,
    /// TLS on the HTTP (health, metrics) listener; `None`: plaintext.
    pub http_tls: Option<roster_tls::ServerTls>,
    /// More routes for the HTTP listener, from the caller (the CLI mounts
    /// the console at `/ui/` this way; the server knows nothing of it).
    pub http_routes: Option<axum::Router>,
}

/// etcd's quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// Above this etcd warns that the quota exceeds what it supports well.
pub const MAX_QUOTA_BYTES: u64 = 8 << 30;

/// What auto-compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history: every `min(period, 1h)` (the first
    /// time after `period`), compact to the revision of `period` ago.
    Periodic(Duration),
    /// Keep the last N revisions: on every check, compact to `current - N`.
    Revision(i64),
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
            quota_backend_bytes: 0,
            auto_compaction: None,
            auto_compaction_check: Duration::from_secs(5 * 60),
            transport: TransportLimits::default(),
            backup: None,
            auth: crate::AuthConfig::default(),
            tls: None,
            http_tls: None,
            http_routes: None,
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
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return bad("bcrypt-cost must be between 4 and 31");
        }
        if self.auth.token_ttl.is_zero() {
            return bad("auth-token-ttl must be positive");
        }
        if self.lease_tick.is_zero() {
            return bad("lease_tick must be positive");
        }
        if let Some(b) = &self.backup {
            if b.interval.is_zero() {
                return bad("backup interval must be positive");
            }
            if b.retain == 0 {
                return bad("backup retain must be at least 1");
            }
        }
        if self.auto_compaction_check.is_zero() {
            return bad("auto_compaction_check must be positive");
        }
        match self.auto_compaction {
            Some(AutoCompaction::Periodic(p)) if p.is_zero() => {
                return bad("a periodic auto-compaction needs a positive period");
            }
            Some(AutoCompaction::Revision(n)) if n <= 0 => {
                return bad("a revision auto-compaction needs a positive revision count");
            }
            _ => {}
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

    /// The quota in bytes as etcd reads `--quota-backend-bytes`: the default
    /// for 0, none for a negative value.
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        }
    }
}

// === impl AutoCompaction ===

impl AutoCompaction {
    /// Reads etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
    /// Retention "0" turns auto-compaction off. In periodic mode (the
    /// default) it is a duration such as `1h`, `30m` or `1h30m`, and a bare
    /// number means hours; in revision mode it is a number of revisions.
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let retention = retention.trim();
        let retention = if retention.is_empty() { "0" } else { retention };
        let count = retention.parse::<u64>().ok();
        match mode {
            "periodic" => {
                let period = match count {
                    Some(hours) => {
                        Duration::from_secs(hours.checked_mul(3600).ok_or("--auto-compaction-retention is too long")?)
                    }
                    None => parse_go_duration(retention).map_err(|why| {
                        format!(
                            "invalid --auto-compaction-retention {retention:?} for periodic mode: {why}; \
                             give a duration such as 1h, 30m or 1h30m, or a number of hours (0 turns it off)"
                        )
                    })?,
                };
                Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
            }
            "revision" => match count {
                Some(n) => Ok((n > 0).then(|| AutoCompaction::Revision(n.min(i64::MAX as u64) as i64))),
                None => Err(format!(
                    "invalid --auto-compaction-retention {retention:?} for revision mode: give the number of \
                     revisions to keep, such as 1000 (0 turns it off); durations are for --auto-compaction-mode periodic"
                )),
            },
            other => Err(format!("unknown --auto-compaction-mode {other:?}; use periodic or revision")),
        }
    }
}

/// Go's `time.ParseDuration`, which etcd uses for the retention: a sequence
/// of decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`), such as `1h30m` or `1.5h`. Negative durations are refused.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') {
        return Err("a retention cannot be negative".into());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(format!("{s:?} is not a duration"));
        }
        let value: f64 = num.parse().map_err(|_| format!("{num:?} is not a number"))?;
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in {s:?}")),
            u => return Err(format!("unknown unit {u:?} in {s:?}")),
        };
        total += value * nanos;
        rest = next;
    }
    if total > u64::MAX as f64 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_nanos(total as u64))
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
        let cases: [fn(&mut ServerConfig); 11] = [
            |c| c.member_id = 0,
            |c| c.cluster_id = 0,
            |c| c.lease_tick = Duration::ZERO,
            |c| c.name.clear(),
            |c| c.auto_compaction_check = Duration::ZERO,
            |c| c.auto_compaction = Some(AutoCompaction::Periodic(Duration::ZERO)),
            |c| c.auto_compaction = Some(AutoCompaction::Revision(0)),
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

#[cfg(test)]
mod flag_tests {
    use super::*;

    fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        AutoCompaction::parse(mode, retention)
    }

    #[test]
    fn quota_reads_as_etcd_does() {
        let q = |n| ServerConfig { quota_backend_bytes: n, ..Default::default() }.quota_bytes();
        assert_eq!(q(0), Some(2 << 30), "0 is etcd's default of 2 GiB");
        assert_eq!(q(-1), None, "negative turns the quota off");
        assert_eq!(q(1 << 20), Some(1 << 20));
    }

    #[test]
    fn periodic_retention_is_a_duration_or_hours() {
        let p = |s| parse("periodic", s).unwrap();
        assert_eq!(p("0"), None, "0 turns auto-compaction off");
        assert_eq!(p(""), None);
        assert_eq!(p("1"), Some(AutoCompaction::Periodic(Duration::from_secs(3600))), "a bare number is hours");
        assert_eq!(p("30m"), Some(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(p("1h30m"), Some(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(p("1.5h"), Some(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(p("2s"), Some(AutoCompaction::Periodic(Duration::from_secs(2))));
        assert_eq!(p("250ms"), Some(AutoCompaction::Periodic(Duration::from_millis(250))));
        assert_eq!(p("0s"), None);
    }

    #[test]
    fn revision_retention_is_a_count() {
        assert_eq!(parse("revision", "1000").unwrap(), Some(AutoCompaction::Revision(1000)));
        assert_eq!(parse("revision", "0").unwrap(), None);
    }

    #[test]
    fn bad_compaction_flags_say_what_to_give() {
        let err = |m, r| parse(m, r).unwrap_err();
        assert!(err("bogus", "1").contains("unknown --auto-compaction-mode \"bogus\"; use periodic or revision"));
        let e = err("periodic", "abc");
        assert!(e.contains("invalid --auto-compaction-retention \"abc\"") && e.contains("1h, 30m"), "{e}");
        assert!(err("periodic", "-1h").contains("negative"));
        assert!(err("periodic", "10x").contains("unknown unit"));
        assert!(err("periodic", "1h5").contains("missing unit"));
        let e = err("revision", "1h");
        assert!(e.contains("number of revisions") && e.contains("periodic"), "{e}");
    }
}
