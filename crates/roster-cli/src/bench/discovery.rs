//! `discovery`: registration to discovery through the Roster SDK. Instances
//! are registered one after another; for each one, the time from
//! `register` returning until every one of `--watchers` discoveries has
//! emitted it as added. Each discovery reports its sighting from its own
//! task, woken by its change stream, so the bench itself does not poll.

use super::Workload;
use super::report::{Outcome, Progress, histogram};
use super::target::Target;
use anyhow::{Context, Result};
use clap::Args;
use roster::Change;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Discovery {
    /// SDK discoveries watching the service.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watchers: u64,
    /// SDK clients (each its own connection) the discoveries are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub conns: u64,
    /// Instances registered one after another.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub instances: u64,
}

impl Discovery {
    pub fn new(watchers: u64, conns: u64, instances: u64) -> Discovery {
        Discovery { watchers, conns, instances }
    }
}

/// How long one instance may take to appear everywhere.
const APPEAR_WITHIN: Duration = Duration::from_secs(5);

impl Workload for Discovery {
    fn name(&self) -> String {
        format!("appear ->{} watchers", self.watchers)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        // Fail with a clear message before the SDK starts retrying.
        drop(t.connect_one().await?);
        let service = format!("bench-appear-{}", std::process::id());
        let registries: Vec<roster::Registry> = (0..self.conns.min(self.watchers))
            .map(|_| Ok(roster::Registry::new(roster::Client::connect([t.addr.clone()])?)))
            .collect::<Result<_>>()?;
        let registry = &registries[0];
        let discoveries: Vec<roster::Discovery> =
            (0..self.watchers as usize).map(|i| registries[i % registries.len()].discover(&service)).collect();
        for d in &discoveries {
            tokio::time::timeout(Duration::from_secs(30), d.ready())
                .await
                .context("a discovery did not list the service within 30 s")?;
        }
        // Every discovery sends (instance id, when it saw it added).
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
        let mut sighters = tokio::task::JoinSet::new();
        for d in &discoveries {
            let mut changes = Box::pin(d.changes());
            let tx = seen_tx.clone();
            sighters.spawn(async move {
                while let Some(c) = changes.next().await {
                    if let Change::Added(i) = c
                        && tx.send((i.id, Instant::now())).is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(seen_tx);

        let deadline = Instant::now() + max;
        let progress = Progress::start(format!("registrations on {}", t.name), self.instances);
        let mut hist = histogram();
        let mut errors = 0;
        let start = Instant::now();
        for n in 0..self.instances {
            if Instant::now() >= deadline {
                break;
            }
            let id = format!("i{n}");
            let inst = roster::Instance::new(&service, format!("127.0.0.1:{}", 20000 + n % 40000)).with_id(&id);
            let reg = tokio::time::timeout(APPEAR_WITHIN, registry.register(inst))
                .await
                .context("registering took over 5 s")??;
            let registered = Instant::now();
            let mut pending = self.watchers;
            let give_up = tokio::time::Instant::from_std(registered + APPEAR_WITHIN);
            while pending > 0 {
                match tokio::time::timeout_at(give_up, seen.recv()).await {
                    // A sighting before `register` returned counts as zero.
                    Ok(Some((seen_id, at))) if seen_id == id => {
                        let us = at.saturating_duration_since(registered).as_micros();
                        hist.saturating_record((us as u64).max(1));
                        pending -= 1;
                    }
                    // A late sighting of an earlier instance: already counted missing.
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            errors += pending;
            tokio::time::timeout(APPEAR_WITHIN, reg.deregister()).await.context("deregistering took over 5 s")??;
            progress.add(1);
        }
        sighters.abort_all();
        let mut o = Outcome::new(hist, start.elapsed(), errors);
        if errors > 0 {
            o.note = format!("{errors} sightings missing after 5 s; ");
        }
        o.note += "sightings/s; latency register-to-listed, over every watcher";
        Ok(o)
    }
}
