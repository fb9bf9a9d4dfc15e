//! `roster bench`: a load generator for any etcd v3 endpoint.
//!
//! Workloads follow etcd's own `benchmark` tool: `--conns` gRPC connections
//! shared by `--clients` concurrent clients in total. Given two `--target`s,
//! each workload runs on one, then the other (never both at once: the
//! machine is shared), and a ratio line compares them.
//!
//! Files: `target.rs` (endpoints and connections), `report.rs` (histograms
//! and the table), `workloads.rs` (put, range, keepalive, watch, memory).

mod report;
mod target;
mod workloads;

use anyhow::Result;
use clap::{Args, Subcommand};
use target::Target;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Workload,
}

/// Where to send load, shared by every workload.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// `NAME=HOST:PORT`; give two to compare them (the ratio is first/second).
    #[arg(long = "target", value_parser = Target::parse, default_value = "roster=127.0.0.1:2379")]
    targets: Vec<Target>,
    /// Stop a workload after this many seconds even if `--total` is not reached.
    #[arg(long, default_value_t = 60)]
    max_duration: u64,
}

#[derive(Debug, Clone, Args)]
pub struct Load {
    /// gRPC connections.
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Concurrent clients in total, spread over the connections.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 50_000)]
    total: u64,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Durable puts of random keys.
    Put {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// Distinct keys written.
        #[arg(long, default_value_t = 100_000)]
        key_space: u64,
    },
    /// Ranges over one key: serializable (`s`) or linearizable (`l`).
    Range {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value = "l", value_parser = ["s", "l"])]
        consistency: String,
    },
    /// Lease keepalive round trips over `--clients` streams.
    Keepalive {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Leases kept alive.
        #[arg(long, default_value_t = 1000)]
        leases: usize,
    },
    /// One writer, many watchers: notification latency and delivery.
    Watch {
        #[command(flatten)]
        common: Common,
        /// Watch streams on the key.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Puts by the writer.
        #[arg(long, default_value_t = 2000)]
        total: u64,
    },
    /// Registration to discovery: how long until every one of `--watchers`
    /// SDK discoveries sees a newly registered instance.
    Discovery {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Instances registered one after another.
        #[arg(long, default_value_t = 50)]
        instances: u64,
    },
    /// Keys of `--val-size` bytes, each on its own lease, then server RSS.
    Memory {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// `NAME=PID` of each target's server process, to read its RSS.
        #[arg(long = "pid", value_parser = target::parse_pid)]
        pids: Vec<(String, u32)>,
    },
    /// The suite: put 10x100 and 1x1, range s/l 10x100, keepalive,
    /// watch fan-out, and registration-to-discovery latency.
    All {
        #[command(flatten)]
        common: Common,
        /// Requests per throughput workload.
        #[arg(long, default_value_t = 50_000)]
        total: u64,
    },
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let mut table = report::Table::default();
    match args.workload {
        Workload::Put { common, load, key_size, val_size, key_space } => {
            let w = workloads::Put { load, key_size, val_size, key_space };
            table.compare(&common, &format!("put {}x{}", w.load.conns, w.load.clients), |t| w.run(t, &common)).await?;
        }
        Workload::Range { common, load, consistency } => {
            let w = workloads::Range { load, serializable: consistency == "s" };
            table.compare(&common, &w.name(), |t| w.run(t, &common)).await?;
        }
        Workload::Keepalive { common, load, leases } => {
            let w = workloads::Keepalive { load, leases };
            table.compare(&common, &format!("keepalive {}", w.leases), |t| w.run(t, &common)).await?;
        }
        Workload::Watch { common, watchers, total } => {
            let w = workloads::Watch { watchers, total };
            table.compare(&common, &format!("watch 1->{}", w.watchers), |t| w.run(t, &common)).await?;
        }
        Workload::Discovery { common, watchers, instances } => {
            let w = workloads::Appearance { watchers, instances };
            table.compare(&common, &format!("appear ->{watchers} watchers"), |t| w.run(t, &common)).await?;
        }
        Workload::Memory { common, keys, val_size, pids } => {
            let w = workloads::Memory { keys, val_size, pids };
            table.compare(&common, &format!("memory {}k keys+leases", keys / 1000), |t| w.run(t, &common)).await?;
        }
        Workload::All { common, total } => {
            let load = |conns, clients, total| Load { conns, clients, total };
            let put = workloads::Put { load: load(10, 100, total), key_size: 8, val_size: 256, key_space: 100_000 };
            table.compare(&common, "put 10x100", |t| put.run(t, &common)).await?;
            let single = workloads::Put { load: load(1, 1, (total / 20).max(500)), ..put.clone() };
            table.compare(&common, "put 1x1", |t| single.run(t, &common)).await?;
            for serializable in [true, false] {
                let r = workloads::Range { load: load(10, 100, total * 2), serializable };
                table.compare(&common, &r.name(), |t| r.run(t, &common)).await?;
            }
            let ka = workloads::Keepalive { load: load(10, 100, total), leases: 1000 };
            table.compare(&common, "keepalive 1000", |t| ka.run(t, &common)).await?;
            let w = workloads::Watch { watchers: 100, total: 2000 };
            table.compare(&common, "watch 1->100", |t| w.run(t, &common)).await?;
            let a = workloads::Appearance { watchers: 100, instances: 50 };
            table.compare(&common, "appear ->100 watchers", |t| a.run(t, &common)).await?;
        }
    }
    table.print_summary();
    Ok(())
}
