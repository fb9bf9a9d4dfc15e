//! `range`: single-key ranges in a closed loop over keys the workload
//! writes first, serializable or linearizable, as `benchmark range` in etcd.

use super::driver::closed_loop;
use super::report::Outcome;
use super::target::Target;
use super::wire::{KV_PUT, KV_RANGE};
use super::{Load, Workload};
use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use roster_api::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Served from the local store, without a quorum round.
    #[value(name = "s", alias = "serializable")]
    Serializable,
    /// Reads what every earlier write wrote (etcd's default).
    #[value(name = "l", alias = "linearizable")]
    Linearizable,
}

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Range {
    #[command(flatten)]
    pub load: Load,
    /// `s` (serializable) or `l` (linearizable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Keys written before the run; each range reads one at random.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Bytes per value of those keys.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub val_size: u64,
}

const PREFIX: &str = "/bench/range/";

impl Range {
    pub fn new(load: Load, consistency: Consistency) -> Range {
        Range { load, consistency, keys: 1000, val_size: 256 }
    }
}

fn key(n: u64) -> Bytes {
    Bytes::from(format!("{PREFIX}{n:08}"))
}

impl Workload for Range {
    fn name(&self) -> String {
        let c = match self.consistency {
            Consistency::Serializable => "serial",
            Consistency::Linearizable => "linear",
        };
        format!("range {c} {}x{}", self.load.conns, self.load.clients)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let value = Bytes::from(vec![b'r'; self.val_size as usize]);
        let fill = Load { conns: self.load.conns.min(4), clients: self.load.clients.min(32), total: self.keys };
        let filled = closed_loop("range: writing keys", t, &fill, max, move |conn, n| {
            let req = PutRequest { key: key(n), value: value.clone(), ..Default::default() };
            async move { conn.call::<_, PutResponse>(KV_PUT, &req).await.map(drop) }
        })
        .await?;
        if filled.errors > 0 {
            let why = filled.first_error.unwrap_or_default();
            bail!("cannot write the {} keys to range over ({} puts failed): {why}", self.keys, filled.errors);
        }
        let (serializable, keys) = (self.consistency == Consistency::Serializable, self.keys);
        closed_loop("range", t, &self.load, max, move |conn, _| {
            let req = RangeRequest { key: key(rand::random_range(0..keys)), serializable, ..Default::default() };
            async move {
                let kvs = conn.call::<_, RangeResponse>(KV_RANGE, &req).await?.kvs;
                match kvs.len() {
                    1 => Ok(()),
                    n => Err(tonic::Status::data_loss(format!("a range of one written key returned {n} keys"))),
                }
            }
        })
        .await
    }
}
