//! Endpoints under test, their connections, and a server's resident memory.

use anyhow::{Context, Result, bail};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// One etcd v3 endpoint, named for the table.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// `host:port`, without a scheme.
    pub addr: String,
}

// === impl Target ===

impl Target {
    /// Parses `NAME=HOST:PORT` (or a bare `HOST:PORT`, named after itself).
    pub fn parse(s: &str) -> Result<Target, String> {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) => (n.trim(), a.trim().trim_start_matches("http://")),
            None => {
                let a = s.trim().trim_start_matches("http://");
                (a, a)
            }
        };
        if name.is_empty() {
            return Err(format!("{s:?}: the NAME in NAME=HOST:PORT is empty"));
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!(
                "{s:?}: expected NAME=HOST:PORT, for example roster=127.0.0.1:2379"
            ));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{s:?}: expected NAME=HOST:PORT with a port from 1 to 65535"
            ));
        }
        Ok(Target {
            name: name.to_owned(),
            addr: addr.to_owned(),
        })
    }

    /// `n` channels, each its own HTTP/2 connection, each connected now so
    /// that an unreachable endpoint fails here with a clear message.
    pub async fn connect(&self, n: u64) -> Result<Vec<Channel>> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .with_context(|| format!("{:?} is not a valid address", self.addr))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n.max(1) {
            let ch = endpoint.connect().await.with_context(|| {
                format!(
                    "cannot connect to {} at {}; is the server running?",
                    self.name, self.addr
                )
            })?;
            out.push(ch);
        }
        Ok(out)
    }

    /// One channel.
    pub async fn connect_one(&self) -> Result<Channel> {
        Ok(self.connect(1).await?.remove(0))
    }
}

/// Parses `NAME=PID`.
pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID, for example etcd=12345"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {pid:?} is not a process id"))?;
    Ok((name.trim().to_owned(), pid))
}

/// Resident memory of a process (`VmRSS` in `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}: is process {pid} running?"))?;
    let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) else {
        bail!("{path} has no VmRSS line (a kernel thread or a zombie?)");
    };
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable line in {path}: {line:?}"))?;
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_rejects_bad_ones() {
        let t = Target::parse("etcd=127.0.0.1:23790").unwrap();
        assert_eq!(
            (t.name.as_str(), t.addr.as_str()),
            ("etcd", "127.0.0.1:23790")
        );
        let t = Target::parse("http://localhost:2379").unwrap();
        assert_eq!(t.addr, "localhost:2379");
        for bad in [
            "etcd",
            "etcd=localhost",
            "=1.2.3.4:5",
            "x=h:0",
            "x=h:99999",
            "x=:2379",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_pid("etcd=42").unwrap(), ("etcd".to_owned(), 42));
        assert!(parse_pid("etcd").is_err() && parse_pid("etcd=x").is_err());
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
