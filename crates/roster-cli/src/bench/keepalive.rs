//! `keepalive`: `--leases` leases renewed over keepalive streams, one
//! round trip at a time per stream, as `benchmark lease-keepalive` in etcd.

use super::driver::GRACE;
use super::report::{FirstError, Outcome, Progress, histogram, record_since};
use super::target::Target;
use super::{Load, Workload};
use anyhow::{Context, Result, bail};
use clap::Args;
use roster_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, lease_client::LeaseClient,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Keepalive {
    /// `--clients` is the number of keepalive streams (at most one per
    /// lease) and `--total` the number of renewals in all.
    #[command(flatten)]
    pub load: Load,
    /// Leases granted first, then kept alive in turn.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub leases: u64,
    /// TTL of each lease, in seconds (longer than the run, so none expires).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(2..))]
    pub ttl: i64,
}

impl Keepalive {
    pub fn new(load: Load, leases: u64) -> Keepalive {
        Keepalive { load, leases, ttl: 300 }
    }
}

/// Parallel lease calls while granting and revoking.
const ADMIN_CLIENTS: usize = 64;

impl Workload for Keepalive {
    fn name(&self) -> String {
        format!("keepalive {}", self.leases)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let conns = t.connect(self.load.conns).await?;
        let ids = grant(&conns, self.leases, self.ttl, max).await?;

        let streams = (self.load.clients as usize).min(ids.len());
        let total = self.load.total;
        let next = Arc::new(AtomicU64::new(0));
        let progress = Progress::start(format!("keepalive on {}", t.name), total);
        let first = FirstError::default();
        let start = Instant::now();
        let deadline = start + max;
        let mut tasks = JoinSet::new();
        for s in 0..streams {
            let mine: Vec<i64> = ids.iter().skip(s).step_by(streams).copied().collect();
            let ch = conns[s % conns.len()].clone();
            let (next, done, first) = (next.clone(), progress.counter(), first.clone());
            tasks.spawn(async move {
                let mut hist = histogram();
                let mut errors = 0u64;
                let claim = || {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    (n < total && Instant::now() < deadline).then_some(n)
                };
                let Some(mut n) = claim() else {
                    return (hist, errors);
                };
                let request = |n: u64| LeaseKeepAliveRequest { id: mine[n as usize % mine.len()] };
                // Queue the first renewal before opening the stream: etcd
                // sends its response headers only with its first message.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.send(request(n)).await;
                let mut t0 = Instant::now();
                let hard = (deadline + GRACE).into();
                let mut stream =
                    match tokio::time::timeout_at(hard, LeaseClient::new(ch).lease_keep_alive(ReceiverStream::new(rx)))
                        .await
                    {
                        Ok(Ok(s)) => s.into_inner(),
                        Ok(Err(status)) => {
                            first.status(&status);
                            return (hist, errors + 1);
                        }
                        Err(_) => {
                            first.set("keepalive stream not opened within --max-duration");
                            return (hist, errors + 1);
                        }
                    };
                loop {
                    match tokio::time::timeout_at(hard, stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl > 0 => record_since(&mut hist, t0),
                        Ok(Ok(Some(r))) => {
                            errors += 1;
                            first.set(format!("lease {:x} renewed with TTL {} (lost)", r.id, r.ttl));
                        }
                        Ok(Ok(None)) => {
                            first.set("the server closed a keepalive stream");
                            return (hist, errors + 1);
                        }
                        Ok(Err(status)) => {
                            first.status(&status);
                            return (hist, errors + 1);
                        }
                        Err(_) => {
                            first.set("no keepalive answer within --max-duration");
                            return (hist, errors + 1);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    match claim() {
                        Some(m) => n = m,
                        None => return (hist, errors),
                    }
                    t0 = Instant::now();
                    if tx.send(request(n)).await.is_err() {
                        return (hist, errors + 1);
                    }
                }
            });
        }
        let mut hist = histogram();
        let mut errors = 0;
        while let Some(joined) = tasks.join_next().await {
            let (h, e) = joined.context("a keepalive stream task failed")?;
            hist.add(h)?;
            errors += e;
        }
        let mut o = Outcome::new(hist, start.elapsed(), errors);
        o.first_error = first.get();
        drop(progress);
        revoke(&conns, ids).await;
        Ok(o)
    }
}

/// Grants `n` leases of `ttl` seconds with a few parallel callers.
pub(super) async fn grant(conns: &[Channel], n: u64, ttl: i64, max: Duration) -> Result<Vec<i64>> {
    let progress = Progress::start("keepalive: granting leases", n);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + max;
    let mut tasks = JoinSet::new();
    for c in 0..ADMIN_CLIENTS.min(n as usize) {
        let (mut lease, next, done) =
            (LeaseClient::new(conns[c % conns.len()].clone()), next.clone(), progress.counter());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = tokio::time::timeout_at(deadline, lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
                    .await
                    .context("granting the leases took longer than --max-duration")?
                    .context("cannot grant a lease")?;
                ids.push(r.into_inner().id);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(n as usize);
    while let Some(joined) = tasks.join_next().await {
        ids.extend(joined.context("a lease grant task failed")??);
    }
    if ids.is_empty() {
        bail!("no lease granted");
    }
    Ok(ids)
}

/// Revokes the leases so they do not expire during later workloads. Best
/// effort, and bounded: leases left over expire by their TTL.
pub(super) async fn revoke(conns: &[Channel], ids: Vec<i64>) {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for c in 0..ADMIN_CLIENTS.min(ids.len()) {
        let (mut lease, ids, next) = (LeaseClient::new(conns[c % conns.len()].clone()), ids.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else { break };
                let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
}
