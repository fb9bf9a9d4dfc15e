//! Endpoints under test and their connections.

use anyhow::{bail, Context, Result};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) => (n.to_owned(), a.to_owned()),
            None => (s.to_owned(), s.to_owned()),
        };
        if !addr.contains(':') {
            return Err(format!("{s:?}: expected NAME=HOST:PORT"));
        }
        Ok(Target { name, addr: addr.trim_start_matches("http://").to_owned() })
    }

    /// `n` separate HTTP/2 connections, each checked to answer.
    pub async fn connect(&self, n: usize) -> Result<Vec<Channel>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let ch = Endpoint::from_shared(format!("http://{}", self.addr))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {} ({}); is it running?", self.name, self.addr))?;
            out.push(ch);
        }
        Ok(out)
    }
}

pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    Ok((name.to_owned(), pid.parse().map_err(|_| format!("{s:?}: bad PID"))?))
}

/// Resident memory of a process, from /proc, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("no process {pid}"))?;
    let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) else { bail!("no VmRSS for {pid}") };
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("bad VmRSS")?;
    Ok(kb * 1024)
}
