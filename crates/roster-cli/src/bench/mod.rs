//! `roster bench`: a load generator for any etcd v3 endpoint.
//!
//! Workloads follow etcd's own `benchmark` tool: `--conns` gRPC connections
//! shared by `--clients` concurrent clients in total. Given two `--target`s,
//! each workload runs on one, then the other (never both at once: the
//! machine is shared), and a ratio line compares them. Every workload is
//! bounded by its request count and by `--max-duration`, and stops by
//! itself.
//!
//! Module layout:
//!
//! - `mod.rs`: the command line and the dispatch.
//! - `target.rs`: endpoints, connections, and a server's RSS.
//! - `driver.rs`: the closed loop of `--clients` over `--conns`.
//! - `report.rs`: histograms, progress on stderr, and the results table.
//! - one file per workload: `put.rs`, `range.rs`, `keepalive.rs`,
//!   `watch.rs`, `memory.rs`, `discovery.rs`, `hold.rs`, `expiry.rs`, `hostile.rs`,
//!   `authenticate.rs`, and `console.rs` (the web console: first render,
//!   change-to-page latency, its watch count; its own targets and table).

mod authenticate;
mod console;
mod discovery;
mod driver;
mod expiry;
mod hold;
mod hostile;
mod keepalive;
mod memory;
mod put;
mod range;
mod report;
mod target;
mod watch;
mod wire;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use report::{Outcome, Table};
use std::time::Duration;
use target::Target;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  roster bench put --conns 10 --clients 100 --total 50000 \\
      --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench range --consistency s --target roster=127.0.0.1:2379
  roster bench watch --watchers 100 --total 2000
  roster bench memory --keys 100000 --target roster=127.0.0.1:2379 --pid roster=$(pgrep -f 'roster serve')
  roster bench discovery --watchers 1000 --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench hold --instances 10000 --target roster=127.0.0.1:2379 --pid roster=$(pgrep -f 'roster serve')
  roster bench expiry --leases 10000 --ttl 10 --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench hostile --phase 5 --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench authenticate --user bench:pw --conns 2 --clients 16 --total 400 \\
      --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench all --target roster=127.0.0.1:2379 --target etcd=127.0.0.1:23790
  roster bench console --target roster=127.0.0.1:2379@http://127.0.0.1:2381 --target etcd=127.0.0.1:23790@http://127.0.0.1:23791

Results go to stdout as a table, progress to stderr.")]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Command,
}

/// Where to send load, shared by every workload.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// `NAME=HOST:PORT` of an etcd v3 endpoint. Give it twice to compare two
    /// servers: they run one after the other, and the ratio is first/second.
    #[arg(long = "target", value_name = "NAME=HOST:PORT", value_parser = Target::parse, default_value = "roster=127.0.0.1:2379")]
    targets: Vec<Target>,
    /// Stop a workload after this many seconds (per target) even if
    /// `--total` is not reached.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_duration: u64,
    #[command(flatten)]
    tls: target::BenchTls,
    /// `NAME:PASSWORD` to authenticate as on every target (auth on): `put`
    /// and `range` then send its token with every call, and
    /// `authenticate` logs in as it.
    #[arg(long = "user", id = "bench_user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    user: Option<(String, String)>,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, p)) if !n.is_empty() => Ok((n.to_owned(), p.to_owned())),
        _ => Err(format!("{s:?}: expected NAME:PASSWORD")),
    }
}

impl Common {
    fn validate(&self) -> Result<()> {
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.name == t.name) {
                bail!("two targets are named {:?}; give each --target a distinct NAME=", t.name);
            }
        }
        Ok(())
    }

    /// The targets, each with the TLS settings (the same for all).
    fn targets(&self) -> Result<Vec<Target>> {
        let tls = self.tls.client_config()?;
        Ok(self.targets.iter().map(|t| Target { tls: tls.clone(), user: self.user.clone(), ..t.clone() }).collect())
    }

    fn max(&self) -> Duration {
        Duration::from_secs(self.max_duration)
    }
}

/// The closed-loop load shape of etcd's `benchmark` tool.
#[derive(Debug, Clone, Args)]
pub struct Load {
    /// gRPC connections (each its own TCP connection).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    conns: u64,
    /// Concurrent clients in total, spread over the connections; each one
    /// waits for its answer before it sends the next request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Requests in total.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    total: u64,
}

impl Load {
    fn new(conns: u64, clients: u64, total: u64) -> Load {
        Load { conns, clients, total }
    }
}

/// One workload, runnable against any target.
pub trait Workload {
    /// The row label, for example `put 10x100`.
    fn name(&self) -> String;
    /// Runs once against `t`, for at most about `max`.
    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome>;
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Durable puts: random (or sequential) keys of `--key-size` bytes out
    /// of `--key-space`, values of `--val-size` bytes.
    Put {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        put: put::Put,
    },
    /// Single-key ranges over keys the workload writes first:
    /// serializable (`--consistency s`) or linearizable (`l`).
    Range {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        range: range::Range,
    },
    /// `--leases` leases renewed over `--clients` keepalive streams:
    /// keepalive round trips per second and their latency.
    Keepalive {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keepalive: keepalive::Keepalive,
    },
    /// One writer, `--watchers` watch streams on one key (or a prefix):
    /// put-to-notify latency, delivered events per second, and any event
    /// a watcher missed or got twice.
    Watch {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        watch: watch::Watch,
    },
    /// Registration to discovery: how long until every one of `--watchers`
    /// SDK discoveries lists a newly registered instance.
    Discovery {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        discovery: discovery::Discovery,
    },
    /// `--instances` SDK registrations (lease, keepalive stream, watch on
    /// its key) held for `--hold` seconds: the server's CPU over the hold
    /// and its RSS (of `--pid NAME=PID`), and any registration lost.
    Hold {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        hold: hold::Hold,
    },
    /// `--leases` leases granted together, each with a key, left to expire
    /// together while `--writers` keep putting: how long after its deadline
    /// each key is gone, and the writers' put p99 during the expiry against
    /// before it.
    Expiry {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        expiry: expiry::Expiry,
    },
    /// `--keys` keys of `--val-size` bytes, each on its own lease, then the
    /// server's RSS (VmRSS of `--pid NAME=PID`).
    Memory {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        memory: memory::Memory,
    },
    /// A writer's put p99 while each hostile client runs (full-keyspace
    /// ranges, a keepalive flood, a watch stream never read, many watches
    /// on one stream, a watch replaying history), as a ratio to its idle
    /// p99, one row per scenario and target.
    Hostile {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        hostile: hostile::Hostile,
    },
    /// The web console over `--services` x `--instances`: first render of
    /// the services page, change-to-event latency with `--pages` open, and
    /// the registry's watcher count with and without the console.
    Console(console::ConsoleBench),
    /// Authenticate calls in a closed loop as `--user` (auth on): logins per
    /// second, which bcrypt bounds; etcd runs them one at a time.
    Authenticate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        authenticate: authenticate::Authenticate,
    },
    /// The whole suite: put 10x100 and 1x1, range serializable and
    /// linearizable 10x100, keepalive of 1000 leases, watch fan-out to 100,
    /// and registration-to-discovery latency over 1000 SDK watchers.
    All {
        #[command(flatten)]
        common: Common,
        /// Requests per throughput workload (put 1x1 does a twentieth, at
        /// least 500; ranges do twice as many).
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
        total: u64,
        /// Leave out registration-to-discovery latency.
        #[arg(long)]
        no_discovery: bool,
    },
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let mut table = Table::default();
    match args.workload {
        Command::Put { common, put } => {
            put.pids.validate(&common)?;
            table.compare(&common, &put).await?
        }
        Command::Console(c) => return console::run(c).await,
        Command::Range { common, range } => table.compare(&common, &range).await?,
        Command::Keepalive { common, keepalive } => table.compare(&common, &keepalive).await?,
        Command::Watch { common, watch } => table.compare(&common, &watch).await?,
        Command::Discovery { common, discovery } => table.compare(&common, &discovery).await?,
        Command::Hold { common, hold } => {
            hold.pids.validate(&common)?;
            table.compare(&common, &hold).await?
        }
        Command::Expiry { common, expiry } => table.compare(&common, &expiry).await?,
        Command::Authenticate { common, authenticate } => {
            if common.user.is_none() {
                bail!("bench authenticate needs --user NAME:PASSWORD of a user on every target");
            }
            table.compare(&common, &authenticate).await?
        }
        Command::Hostile { common, hostile } => {
            for w in hostile.workloads() {
                table.compare(&common, &w).await?;
            }
        }
        Command::Memory { common, memory } => {
            memory.pids.validate(&common)?;
            table.compare(&common, &memory).await?
        }
        Command::All { common, total, no_discovery } => {
            let put = put::Put::new(Load::new(10, 100, total));
            table.compare(&common, &put).await?;
            let single = put::Put::new(Load::new(1, 1, (total / 20).max(500)));
            table.compare(&common, &single).await?;
            for consistency in [range::Consistency::Serializable, range::Consistency::Linearizable] {
                table.compare(&common, &range::Range::new(Load::new(10, 100, total * 2), consistency)).await?;
            }
            table.compare(&common, &keepalive::Keepalive::new(Load::new(10, 100, total), 1000)).await?;
            table.compare(&common, &watch::Watch::new(100, 2000)).await?;
            if !no_discovery {
                table.compare(&common, &discovery::Discovery::new(1000, 10, 50)).await?;
            }
        }
    }
    table.print_summary();
    Ok(())
}
