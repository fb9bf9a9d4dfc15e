//! `discovery`: registration to discovery through the Roster SDK. Instances
//! are registered one after another; for each one, the time from
//! `register` returning until every one of `--watchers` discoveries lists
//! it.

use super::Workload;
use super::report::{Outcome, Progress, histogram, record_since};
use super::target::Target;
use anyhow::{Context, Result};
use clap::Args;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Discovery {
    /// SDK discoveries watching the service.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watchers: u64,
    /// Instances registered one after another.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub instances: u64,
}

impl Discovery {
    pub fn new(watchers: u64, instances: u64) -> Discovery {
        Discovery {
            watchers,
            instances,
        }
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
        let client = roster::Client::connect([t.addr.clone()])?;
        let service = format!("bench-appear-{}", std::process::id());
        let registry = roster::Registry::new(client);
        let discoveries: Vec<roster::Discovery> = (0..self.watchers)
            .map(|_| registry.discover(&service))
            .collect();
        for d in &discoveries {
            tokio::time::timeout(Duration::from_secs(10), d.ready())
                .await
                .context("a discovery did not list the service in time")?;
        }
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
            let inst = roster::Instance::new(&service, format!("127.0.0.1:{}", 20000 + n % 40000))
                .with_id(&id);
            let reg = tokio::time::timeout(APPEAR_WITHIN, registry.register(inst))
                .await
                .context("registering took over 5 s")??;
            let registered = Instant::now();
            // Poll every watcher together; each one's first sighting counts.
            let mut pending: Vec<&roster::Discovery> = discoveries.iter().collect();
            while !pending.is_empty() && registered.elapsed() < APPEAR_WITHIN {
                pending.retain(|d| {
                    let seen = d.snapshot().instances.contains_key(&id);
                    if seen {
                        record_since(&mut hist, registered);
                    }
                    !seen
                });
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            errors += pending.len() as u64;
            tokio::time::timeout(APPEAR_WITHIN, reg.deregister())
                .await
                .context("deregistering took over 5 s")??;
            progress.add(1);
        }
        let mut o = Outcome::new(hist, start.elapsed(), errors);
        if errors > 0 {
            o.note = format!("{errors} sightings missing after 5 s; ");
        }
        o.note += "sightings/s; latency register-to-listed, over every watcher";
        Ok(o)
    }
}
