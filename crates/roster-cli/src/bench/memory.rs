//! `memory`: `--keys` keys, each on its own long lease, then the server's
//! resident memory, read from `/proc/<pid>/status` of `--pid NAME=PID`.

use super::driver::closed_loop;
use super::report::{Gauge, Outcome};
use super::target::{ServerPids, Target, rss_bytes};
use super::wire::{KV_PUT, LEASE_GRANT};
use super::{Load, Workload};
use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use roster_api::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, PutRequest, PutResponse};
use std::time::Duration;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Memory {
    /// Keys written, each on its own lease.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub val_size: u64,
    /// TTL of each lease, in seconds (longer than the run, so none expires).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(2..))]
    pub ttl: i64,
    #[command(flatten)]
    pub pids: ServerPids,
}

pub const MIB: f64 = (1 << 20) as f64;

impl Workload for Memory {
    fn name(&self) -> String {
        format!("memory {} keys", self.keys)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let pid = self.pids.of(t);
        let before = pid.map(rss_bytes).transpose()?;
        let value = Bytes::from(vec![b'm'; self.val_size as usize]);
        let ttl = self.ttl;
        let load = Load { conns: 4, clients: 64, total: self.keys };
        let mut o = closed_loop("lease+put", t, &load, max, move |conn, n| {
            let value = value.clone();
            async move {
                let lease =
                    conn.call::<_, LeaseGrantResponse>(LEASE_GRANT, &LeaseGrantRequest { ttl, id: 0 }).await?.id;
                let key = Bytes::from(format!("/bench/mem/{n:09}"));
                let put = PutRequest { key, value, lease, ..Default::default() };
                conn.call::<_, PutResponse>(KV_PUT, &put).await.map(drop)
            }
        })
        .await?;
        match (pid, before) {
            (Some(pid), Some(before)) => {
                // Let the server settle (background flushes) before reading.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let after = rss_bytes(pid)?;
                o.gauges = vec![Gauge { label: "RSS", value: after as f64 / MIB, unit: "MiB" }];
                o.note = format!(
                    "MiB RSS of pid {pid} ({:.1} before); each key on its own lease; latency grant+put",
                    before as f64 / MIB
                );
            }
            _ => o.note = format!("pass --pid {}=PID to read the server's RSS", t.name),
        }
        Ok(o)
    }
}
