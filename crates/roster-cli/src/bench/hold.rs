//! `hold`: `--instances` SDK registrations kept alive for `--hold` seconds,
//! and what that costs the server: its CPU time over the hold and its RSS
//! at the end, read from `/proc` of `--pid NAME=PID`.
//!
//! Each registration is what `Registry::register` makes for a real
//! service: its own lease, renewed on its own keepalive stream every TTL/3,
//! and a watch on its own key. They are spread over `--conns` SDK clients,
//! as if that many processes each registered a share.

use super::Workload;
use super::memory::MIB;
use super::report::{Gauge, Outcome, Progress, histogram};
use super::target::{ServerPids, Target, cpu_time, rss_bytes};
use anyhow::{Context, Result, bail};
use clap::Args;
use roster::{Registration, RegistrationStatus};
use roster_api::etcdserverpb::RangeRequest;
use roster_api::etcdserverpb::kv_client::KvClient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Hold {
    /// Registrations held, each with its own lease and keepalive stream.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    pub instances: u64,
    /// SDK clients (each its own connection) the registrations are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub conns: u64,
    /// Lease TTL in seconds; each lease is renewed every TTL/3.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub ttl: u64,
    /// Seconds over which the server's CPU time is measured, once every
    /// registration is in place.
    #[arg(long = "hold", value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hold_secs: u64,
    #[command(flatten)]
    pub pids: ServerPids,
}

/// Registrations started at once while setting up.
const IN_FLIGHT: usize = 256;

impl Workload for Hold {
    fn name(&self) -> String {
        format!("hold {} registrations", self.instances)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let probe = t.connect_one().await?;
        let pid = self.pids.of(t);
        let deadline = Instant::now() + max;
        let service = format!("bench-hold-{}", std::process::id());
        let ttl = Duration::from_secs(self.ttl);
        let registries: Vec<roster::Registry> = (0..self.conns.min(self.instances))
            .map(|_| {
                let client = roster::Client::connect([t.addr.clone()])?;
                Ok(roster::Registry::new(client).with_ttl(ttl))
            })
            .collect::<Result<_>>()?;

        // Register them all, IN_FLIGHT at a time; latency is register() up
        // to the lease and key being in place.
        let progress = Progress::start(format!("registering on {}", t.name), self.instances);
        let gate = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        for n in 0..self.instances {
            let registry = registries[n as usize % registries.len()].clone();
            let permit = gate.clone().acquire_owned().await?;
            let done = progress.counter();
            let inst =
                roster::Instance::new(&service, format!("127.0.0.1:{}", 20000 + n % 40000)).with_id(format!("i{n}"));
            tasks.spawn(async move {
                let t0 = Instant::now();
                let reg = registry.register(inst).await?;
                let lease = reg.registered(Duration::from_secs(30)).await;
                drop(permit);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lease.map(|_| (reg, t0.elapsed()))
            });
            if Instant::now() >= deadline {
                bail!("registering {} instances took over --max-duration", self.instances);
            }
        }
        let mut regs: Vec<Registration> = Vec::with_capacity(self.instances as usize);
        let mut hist = histogram();
        while let Some(r) = tasks.join_next().await {
            let (reg, took) = r?.context("a registration did not complete")?;
            hist.saturating_record(took.as_micros().max(1) as u64);
            regs.push(reg);
        }
        let setup = start.elapsed();
        drop(progress);

        let first = listed(&probe, &service).await?;
        if first != self.instances as i64 {
            bail!("{first} of {} instances are listed after registering", self.instances);
        }

        // Hold: only keepalives (and the idle watches) from here on.
        eprintln!("   holding {} registrations for {} s", self.instances, self.hold_secs);
        let cpu_before = pid.map(cpu_time).transpose()?;
        let held = Instant::now();
        tokio::time::sleep(Duration::from_secs(self.hold_secs)).await;
        let cpu_used = match (pid, cpu_before) {
            (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
            _ => None,
        };
        let hold = held.elapsed();
        let rss = pid.map(rss_bytes).transpose()?;
        // A registration that had to start over during the hold lost its lease.
        let lost =
            regs.iter().filter(|r| !matches!(*r.status().borrow(), RegistrationStatus::Registered { .. })).count()
                as u64;
        let still = listed(&probe, &service).await?;

        withdraw(regs, deadline).await;

        let mut o = Outcome::new(hist, setup, lost);
        if still != self.instances as i64 {
            o.errors += (self.instances as i64 - still).unsigned_abs();
            o.note = format!("{still} of {} listed after the hold; ", self.instances);
        }
        match (cpu_used, rss) {
            (Some(cpu), Some(rss)) => {
                o.gauges = vec![
                    Gauge { label: "CPU", value: 100.0 * cpu.as_secs_f64() / hold.as_secs_f64(), unit: "%" },
                    Gauge { label: "RSS", value: rss as f64 / MIB, unit: "MiB" },
                ];
                o.note += &format!(
                    "CPU % of one core over {:.0} s of keepalives (TTL {} s); latency of register",
                    hold.as_secs_f64(),
                    self.ttl
                );
            }
            _ => o.note += &format!("registrations/s; pass --pid {}=PID for the server's CPU and RSS", t.name),
        }
        Ok(o)
    }
}

/// How many instances of `service` the registry lists.
async fn listed(ch: &tonic::transport::Channel, service: &str) -> Result<i64> {
    let dir = format!("{}/{service}/", roster::DEFAULT_PREFIX);
    let end = roster_api::range::prefix_end(dir.as_bytes());
    let r = KvClient::new(ch.clone())
        .range(RangeRequest {
            key: dir.into_bytes().into(),
            range_end: end.into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .context("counting the registered instances")?;
    Ok(r.into_inner().count)
}

/// Deregisters everything, IN_FLIGHT at a time, so the next target starts
/// from a clean server; what is left after the deadline expires by TTL.
async fn withdraw(regs: Vec<Registration>, deadline: Instant) {
    let progress = Progress::start("deregistering", regs.len() as u64);
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for reg in regs {
        let Ok(permit) = gate.clone().acquire_owned().await else { break };
        let done = progress.counter();
        tasks.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), reg.deregister()).await;
            drop(permit);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(10));
    let _ = tokio::time::timeout(left, async { while tasks.join_next().await.is_some() {} }).await;
}
