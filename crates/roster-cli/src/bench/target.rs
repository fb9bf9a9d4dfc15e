//! Endpoints under test, their connections, and a server's resident memory
//! and CPU time.

use anyhow::{Context, Result, bail};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// One etcd v3 endpoint, named for the table.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// `host:port`, without a scheme.
    pub addr: String,
    /// TLS for the bench's own HTTP/2 client (`--cacert`, `--cert`, `--key`).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `--user NAME:PASSWORD`: authenticate once, send the token with
    /// every call of the h2 client.
    pub user: Option<(String, String)>,
}

/// `--cacert`, `--cert`, `--key`: TLS to every target, etcdctl's names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BenchTls {
    /// CA (PEM) of the targets' server certificates; given, the bench
    /// connects with TLS.
    #[arg(long = "cacert", id = "bench_cacert", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for targets with --client-cert-auth.
    #[arg(long = "cert", id = "bench_cert", value_name = "FILE", requires_all = ["bench_key", "bench_cacert"])]
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", id = "bench_key", value_name = "FILE", requires = "bench_cert")]
    pub key: Option<std::path::PathBuf>,
}

impl BenchTls {
    /// The rustls client configuration (ALPN h2), `None` without --cacert.
    pub fn client_config(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        use rustls::pki_types::pem::PemObject;
        let Some(ca) = &self.cacert else { return Ok(None) };
        let mut roots = rustls::RootCertStore::empty();
        for cert in roster_tls::load_certs(ca, "--cacert")? {
            roots.add(cert).with_context(|| format!("--cacert {}", ca.display()))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let chain = roster_tls::load_certs(c, "--cert")?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(k)
                    .map_err(|_| anyhow::anyhow!("--key {} is not a readable PEM private key", k.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(std::sync::Arc::new(config)))
    }
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
            return Err(format!("{s:?}: expected NAME=HOST:PORT, for example roster=127.0.0.1:2379"));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{s:?}: expected NAME=HOST:PORT with a port from 1 to 65535"));
        }
        Ok(Target { name: name.to_owned(), addr: addr.to_owned(), tls: None, user: None })
    }

    /// `n` channels, each its own HTTP/2 connection, each connected now so
    /// that an unreachable endpoint fails here with a clear message.
    pub async fn connect(&self, n: u64) -> Result<Vec<Channel>> {
        if self.tls.is_some() {
            bail!(
                "this workload (or --client tonic) does not speak TLS yet; `put` and `range` with the default h2 client do"
            );
        }
        if self.user.is_some() {
            bail!(
                "this workload (or --client tonic) does not send --user's token yet; `put` and `range` with the default h2 client do"
            );
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .with_context(|| format!("{:?} is not a valid address", self.addr))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n.max(1) {
            let ch = endpoint.connect().await.with_context(|| self.unreachable())?;
            out.push(ch);
        }
        Ok(out)
    }

    /// `n` bare HTTP/2 connections for unary calls (see [`super::wire`]),
    /// sending the `--user`'s token when one is given.
    pub async fn connect_unary(&self, n: u64) -> Result<Vec<super::wire::Conn>> {
        let mut out = self.connect_unary_anonymous(n).await?;
        if let Some((name, password)) = &self.user {
            let req = roster_api::etcdserverpb::AuthenticateRequest { name: name.clone(), password: password.clone() };
            let resp: roster_api::etcdserverpb::AuthenticateResponse = out[0]
                .call(super::wire::AUTHENTICATE, &req)
                .await
                .map_err(|s| anyhow::anyhow!("--user {name}: {}", s.message()))?;
            out = out.into_iter().map(|c| c.with_token(&resp.token)).collect::<Result<_, _>>()?;
        }
        Ok(out)
    }

    /// As [`Target::connect_unary`], without authenticating.
    pub async fn connect_unary_anonymous(&self, n: u64) -> Result<Vec<super::wire::Conn>> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n.max(1) {
            let c = super::wire::Conn::connect_with(&self.addr, self.tls.as_ref())
                .await
                .with_context(|| self.unreachable())?;
            out.push(c);
        }
        Ok(out)
    }

    fn unreachable(&self) -> String {
        format!("cannot connect to {} at {}; is the server running?", self.name, self.addr)
    }

    /// One channel.
    pub async fn connect_one(&self) -> Result<Channel> {
        Ok(self.connect(1).await?.remove(0))
    }
}

/// Parses `NAME=PID`.
pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PID, for example etcd=12345"))?;
    let pid = pid.trim().parse().map_err(|_| format!("{s:?}: {pid:?} is not a process id"))?;
    Ok((name.trim().to_owned(), pid))
}

/// `--pid NAME=PID`: the server process behind a target, whose memory and
/// CPU time a workload reads from `/proc`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerPids {
    /// `NAME=PID` of a target's server process, to read its RSS (and CPU
    /// time); once per target.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid)]
    pub pids: Vec<(String, u32)>,
}

impl ServerPids {
    /// Every `--pid` must name a `--target`.
    pub fn validate(&self, common: &super::Common) -> Result<()> {
        for (name, _) in &self.pids {
            if !common.targets.iter().any(|t| &t.name == name) {
                bail!(
                    "--pid {name}=... names no --target (targets: {})",
                    common.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }

    /// The PID given for `t`, if any.
    pub fn of(&self, t: &Target) -> Option<u32> {
        self.pids.iter().find(|(name, _)| *name == t.name).map(|&(_, pid)| pid)
    }
}

/// User plus system CPU time a process has used so far (`utime` + `stime`
/// in `/proc/<pid>/stat`, all its threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    // Linux reports these in USER_HZ, which its ABI fixes at 100 per second.
    const USER_HZ: u64 = 100;
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}: is process {pid} running?"))?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("unreadable {path}: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable field {i} in {path}: {stat:?}"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Resident memory of a process (`VmRSS` in `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}: is process {pid} running?"))?;
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
        assert_eq!((t.name.as_str(), t.addr.as_str()), ("etcd", "127.0.0.1:23790"));
        let t = Target::parse("http://localhost:2379").unwrap();
        assert_eq!(t.addr, "localhost:2379");
        for bad in ["etcd", "etcd=localhost", "=1.2.3.4:5", "x=h:0", "x=h:99999", "x=:2379"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_pid("etcd=42").unwrap(), ("etcd".to_owned(), 42));
        assert!(parse_pid("etcd").is_err() && parse_pid("etcd=x").is_err());
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn reads_own_cpu_time_and_it_grows() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_time(me).unwrap();
        assert!(after >= before + Duration::from_millis(100), "{before:?} -> {after:?}");
        assert!(cpu_time(u32::MAX).is_err());
    }
}
