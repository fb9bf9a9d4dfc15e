//! Active health checks that withdraw a registration while they fail.
//!
//! A [`HealthCheck`] probes one [`Check`] every `interval`, each probe held
//! to `timeout`. The first probe decides where the instance starts: it is
//! registered only once a probe passes. After that, `fall` failures in a row
//! withdraw it (its lease is revoked, so it leaves every list at once) and
//! `rise` passes in a row restore it, so one slow answer does not flap the
//! instance. The counting is `Thresholds`, pure logic; the probes are real
//! connections.
//!
//! ```no_run
//! # async fn demo(registry: roster::Registry) -> roster::Result<()> {
//! use roster::health::{Check, HealthCheck};
//! use std::time::Duration;
//!
//! let check = HealthCheck::new(Check::parse("http://127.0.0.1:8080/healthz").unwrap())
//!     .with_interval(Duration::from_secs(1))
//!     .with_rise(2)
//!     .with_fall(3);
//! let reg = registry.register_checked(roster::Instance::new("web", "127.0.0.1:8080"), check).await?;
//! # drop(reg); Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What is probed.
#[derive(Clone)]
#[non_exhaustive]
pub enum Check {
    /// A TCP connect to `host:port` succeeds.
    Tcp(String),
    /// `GET path` on `host:port` answers 2xx or 3xx.
    Http { addr: String, path: String },
    /// `grpc.health.v1.Health/Check` for `service` ("" for the server as a
    /// whole) answers SERVING.
    Grpc { addr: String, service: String },
    /// A closure of the user's: `Ok` passes, `Err` says why not.
    Custom(Probe),
}

/// A check with its schedule and thresholds.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub check: Check,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// A probe not done in this time fails.
    pub timeout: Duration,
    /// Passes in a row that restore a withdrawn instance.
    pub rise: u32,
    /// Failures in a row that withdraw a registered instance.
    pub fall: u32,
}

/// Defaults (HAProxy's): probe every 2 s, 1 s each, rise 2, fall 3.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

// === impl Check ===

impl Check {
    /// `tcp://host:port`, `http://host:port/path` or `grpc://host:port`
    /// (`grpc://host:port/service` checks one service).
    pub fn parse(url: &str) -> Result<Check, String> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| format!("check {url:?}: expected scheme://host:port"))?;
        let (addr, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !addr.contains(':') {
            return Err(format!("check {url:?}: the address needs a port"));
        }
        Ok(match scheme {
            "tcp" => Check::Tcp(addr.into()),
            "http" => Check::Http { addr: addr.into(), path: if path.is_empty() { "/".into() } else { path.into() } },
            "grpc" => Check::Grpc { addr: addr.into(), service: path.trim_start_matches('/').into() },
            other => {
                return Err(format!("check {url:?}: unsupported scheme {other:?} (use http, tcp or grpc)"));
            }
        })
    }

    /// A check that runs `probe`.
    pub fn custom<F, Fut>(probe: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Check::Custom(Arc::new(move || Box::pin(probe())))
    }

    /// Probes once, failing past `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let run = async {
            match self {
                Check::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.map(|_| ()).map_err(|e| e.to_string()),
                Check::Http { addr, path } => http_get(addr, path).await,
                Check::Grpc { addr, service } => grpc_health(addr, service).await,
                Check::Custom(probe) => probe().await,
            }
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| format!("timed out after {timeout:?}"))?
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp(addr) => write!(f, "tcp://{addr}"),
            Check::Http { addr, path } => write!(f, "http://{addr}{path}"),
            Check::Grpc { addr, service } => write!(f, "grpc://{addr}/{service}"),
            Check::Custom(_) => f.write_str("custom"),
        }
    }
}

async fn http_get(addr: &str, path: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: roster-check\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    // The status line is all that is read: "HTTP/1.1 200 ".
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 13 {
        match s.read(&mut buf[n..]).await.map_err(|e| e.to_string())? {
            0 => break,
            got => n += got,
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not an HTTP response")?;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code}")) }
}

async fn grpc_health(addr: &str, service: &str) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .map_err(|e| e.message().to_owned())?;
    match ServingStatus::try_from(r.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("health status {}", other.as_str_name())),
        Err(_) => Err("unknown health status".into()),
    }
}

// === impl HealthCheck ===

impl HealthCheck {
    pub fn new(check: Check) -> HealthCheck {
        HealthCheck {
            check,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }

    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    pub fn with_fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("health check interval and timeout must be above zero".into());
        }
        if self.rise == 0 || self.fall == 0 {
            return Err("health check rise and fall must be at least 1".into());
        }
        Ok(())
    }

    /// Probes until the receiver side is gone, publishing the verdict:
    /// `None` before the first probe, then `Ok` or `Err(why)`.
    pub(crate) async fn run(self, verdict: watch::Sender<Option<Result<(), String>>>) {
        let mut counts = Thresholds::new(self.rise, self.fall);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = self.check.probe(self.timeout).await;
            if let Err(e) = &result {
                tracing::debug!(check = ?self.check, error = %e, "health check failed");
            }
            if let Some(up) = counts.record(result.is_ok()) {
                let next = if up { Ok(()) } else { Err(result.err().unwrap_or_default()) };
                match &next {
                    Ok(()) => tracing::info!(check = ?self.check, "health check passes"),
                    Err(e) => {
                        tracing::warn!(check = ?self.check, error = %e, "health check fails; withdrawing")
                    }
                }
                verdict.send_replace(Some(next));
            }
            if verdict.is_closed() {
                return;
            }
        }
    }
}

/// Counts passes and failures in a row against rise and fall.
#[derive(Debug)]
pub(crate) struct Thresholds {
    rise: u32,
    fall: u32,
    /// `None` before the first probe.
    up: Option<bool>,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl Thresholds {
    pub(crate) fn new(rise: u32, fall: u32) -> Thresholds {
        Thresholds { rise: rise.max(1), fall: fall.max(1), up: None, streak: 0 }
    }

    /// Records one probe; `Some(up)` when the verdict changes.
    pub(crate) fn record(&mut self, passed: bool) -> Option<bool> {
        let Some(up) = self.up else {
            self.up = Some(passed);
            return Some(passed);
        };
        if passed == up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = Some(passed);
        self.streak = 0;
        Some(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_probe_decides_then_rise_and_fall_count_in_a_row() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass breaks the run of failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false), "third failure in a row");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true), "second pass in a row");
        let mut down_first = Thresholds::new(2, 3);
        assert_eq!(down_first.record(false), Some(false));
    }

    #[test]
    fn check_urls_parse() {
        assert!(matches!(Check::parse("tcp://127.0.0.1:1").unwrap(), Check::Tcp(a) if a == "127.0.0.1:1"));
        assert!(matches!(Check::parse("http://h:80").unwrap(), Check::Http { path, .. } if path == "/"));
        assert!(matches!(Check::parse("http://h:80/health").unwrap(), Check::Http { path, .. } if path == "/health"));
        assert!(matches!(Check::parse("grpc://h:1").unwrap(), Check::Grpc { service, .. } if service.is_empty()));
        assert!(
            matches!(Check::parse("grpc://h:1/hello.Greeter").unwrap(), Check::Grpc { service, .. } if service == "hello.Greeter")
        );
        assert!(Check::parse("ftp://x:1").unwrap_err().contains("unsupported scheme"));
        assert!(Check::parse("tcp://noport").unwrap_err().contains("needs a port"));
        assert!(Check::parse("nourl").is_err());
    }
}
