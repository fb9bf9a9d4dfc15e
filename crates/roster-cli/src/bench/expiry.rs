//! `expiry`: `--leases` leases granted together, each with one key, left to
//! expire together while `--writers` clients keep putting.
//!
//! It measures two things:
//! - how long after its lease's deadline each key is gone, as a watch on the
//!   prefix sees the delete (the deadline is the grant's answer plus the TTL,
//!   so the figure errs high by the grant's return trip);
//! - the writers' put p99 while the leases expire, against their p99 in the
//!   quiet seconds before the first deadline.

use super::Workload;
use super::report::{FirstError, Gauge, Outcome, Progress, histogram, record_since};
use super::target::Target;
use super::wire::{Conn, KV_PUT};
use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::watch_client::WatchClient;
use roster_api::etcdserverpb::{
    LeaseGrantRequest, PutRequest, PutResponse, WatchCreateRequest, WatchRequest, watch_request::RequestUnion,
};
use roster_api::mvccpb::event::EventType;
use roster_api::range::prefix_end;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Expiry {
    /// Leases granted together, each with one key.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub leases: u64,
    /// Their TTL in seconds: the quiet time before the first deadline, in
    /// which the writers' idle p99 is taken, is this less the time granting
    /// took.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub ttl: u64,
    /// Clients putting throughout, each waiting for its answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub writers: u64,
}

/// Grants in flight while setting up.
const IN_FLIGHT: usize = 256;

/// Which phase a writer's put falls in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Idle,
    Expiring,
    Done,
}

impl Workload for Expiry {
    fn name(&self) -> String {
        format!("expiry {} leases", self.leases)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let deadline = Instant::now() + max;
        let prefix = format!("bench-expiry-{}/", std::process::id());
        let channels = t.connect(10).await?;
        let n = self.leases as usize;
        let ttl = Duration::from_secs(self.ttl);

        // The watch first, so no delete can be missed.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: format!("{prefix}k/").into(),
                range_end: prefix_end(format!("{prefix}k/").as_bytes()).into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut events = WatchClient::new(channels[0].clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("watch")?
            .into_inner();
        match events.message().await? {
            Some(r) if r.created => {}
            other => bail!("the watch was not created: {other:?}"),
        }

        // The writers, whose puts are sorted by phase.
        let phase = Arc::new(std::sync::Mutex::new(Phase::Setup));
        let stop = Arc::new(AtomicBool::new(false));
        let first = FirstError::default();
        let conns = t.connect_unary(self.writers.min(10)).await?;
        let writers: Vec<_> = (0..self.writers as usize)
            .map(|w| {
                let (conn, phase, stop, first, prefix) =
                    (conns[w % conns.len()].clone(), phase.clone(), stop.clone(), first.clone(), prefix.clone());
                tokio::spawn(async move { write_loop(conn, w, &prefix, &phase, &stop, &first, deadline).await })
            })
            .collect();

        // Grant and attach, IN_FLIGHT at a time; each lease's deadline is
        // taken when its grant is answered.
        let progress = Progress::start(format!("granting on {}", t.name), self.leases);
        let gate = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = gate.clone().acquire_owned().await?;
            let (mut lease, conn, done) = (
                LeaseClient::new(channels[i % channels.len()].clone()),
                conns[i % conns.len()].clone(),
                progress.counter(),
            );
            let key = format!("{prefix}k/{i:07}");
            tasks.spawn(async move {
                let _permit = permit;
                let grant =
                    lease.lease_grant(LeaseGrantRequest { ttl: ttl.as_secs() as i64, id: 0 }).await?.into_inner();
                let due = Instant::now() + ttl;
                let put = PutRequest { key: key.into(), value: "v".into(), lease: grant.id, ..Default::default() };
                conn.call::<_, PutResponse>(KV_PUT, &put).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, tonic::Status>((i, due))
            });
        }
        let mut due = vec![None; n];
        while let Some(r) = tasks.join_next().await {
            let (i, d) = r?.context("granting")?;
            due[i] = Some(d);
        }
        drop(progress);
        let due: Vec<Instant> = due.into_iter().map(|d| d.expect("every grant answered")).collect();
        let first_due = *due.iter().min().expect("at least one lease");
        let last_due = *due.iter().max().expect("at least one lease");
        if first_due <= Instant::now() + Duration::from_secs(1) {
            bail!("granting took longer than the TTL less a second; give a longer --ttl");
        }

        *phase.lock().expect("not poisoned") = Phase::Idle;
        tokio::time::sleep_until(first_due.into()).await;
        *phase.lock().expect("not poisoned") = Phase::Expiring;

        // Every delete, until all keys are gone or time is up.
        let mut lag = histogram();
        let mut gone = 0usize;
        let give_up = (last_due + Duration::from_secs(60)).min(deadline);
        while gone < n {
            let msg = tokio::select! {
                m = events.message() => m?,
                () = tokio::time::sleep_until(give_up.into()) => break,
            };
            let Some(resp) = msg else { break };
            let now = Instant::now();
            for ev in resp.events {
                let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                if ev.r#type != EventType::Delete as i32 {
                    continue;
                }
                let idx: usize =
                    std::str::from_utf8(&key[key.len() - 7..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                lag.saturating_record(now.saturating_duration_since(due[idx]).as_micros().max(1) as u64);
                gone += 1;
            }
        }
        *phase.lock().expect("not poisoned") = Phase::Done;
        stop.store(true, Ordering::Relaxed);
        let mut idle = histogram();
        let mut during = histogram();
        let mut errors = 0;
        for w in writers {
            let (i, d, e) = w.await?;
            idle.add(i).ok();
            during.add(d).ok();
            errors += e;
        }
        let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
        let mut out = Outcome::new(during.clone(), last_due.saturating_duration_since(first_due), errors);
        out.first_error = first.get();
        out.gauges = vec![
            Gauge { label: "last key gone after its deadline", value: lag.max() as f64 / 1000.0, unit: "ms" },
            Gauge { label: "p99 gone after deadline", value: lag.value_at_quantile(0.99) as f64 / 1000.0, unit: "ms" },
            Gauge { label: "put p99 idle", value: p99(&idle), unit: "ms" },
            Gauge { label: "put p99 expiring", value: p99(&during), unit: "ms" },
            Gauge { label: "expiring/idle", value: p99(&during) / p99(&idle).max(1e-3), unit: "x" },
        ];
        if gone < n {
            out.note = format!("only {gone} of {n} keys were deleted in time");
        }
        Ok(out)
    }
}

/// One writer: puts its own keys until stopped; returns the latencies of
/// the idle and the expiring phase, and its errors.
async fn write_loop(
    conn: Conn,
    w: usize,
    prefix: &str,
    phase: &std::sync::Mutex<Phase>,
    stop: &AtomicBool,
    first: &FirstError,
    deadline: Instant,
) -> (Histogram<u64>, Histogram<u64>, u64) {
    let (mut idle, mut during, mut errors) = (histogram(), histogram(), 0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let put = PutRequest {
            key: format!("{prefix}w/{w}/{}", n % 1000).into(),
            value: vec![b'v'; 256].into(),
            ..Default::default()
        };
        n += 1;
        let before = *phase.lock().expect("not poisoned");
        let t0 = Instant::now();
        let r = conn.call::<_, PutResponse>(KV_PUT, &put).await;
        let after = *phase.lock().expect("not poisoned");
        match r {
            Err(s) => {
                errors += 1;
                first.status(&s);
            }
            // A put that straddles a phase change counts in neither.
            Ok(_) if before != after => {}
            Ok(_) if before == Phase::Idle => record_since(&mut idle, t0),
            Ok(_) if before == Phase::Expiring => record_since(&mut during, t0),
            Ok(_) => {}
        }
    }
    (idle, during, errors)
}
