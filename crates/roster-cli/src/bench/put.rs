//! `put`: durable puts in a closed loop, as `benchmark put` in etcd.

use super::driver::{closed_loop, closed_loop_on};
use super::report::{Gauge, Outcome};
use super::target::{ServerPids, Target, cpu_time};
use super::wire::KV_PUT;
use super::{Load, Workload};
use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::{PutRequest, PutResponse};
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Put {
    #[command(flatten)]
    pub load: Load,
    /// Bytes per key.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub key_size: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub val_size: u64,
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,
    /// Write keys 0, 1, 2, ... (wrapping at `--key-space`) instead of
    /// picking each key at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// The client stack: `h2`, the bench's light client that writes each
    /// call straight into an HTTP/2 connection, or `tonic`, generated
    /// clients over tonic `Channel`s as etcd's Rust clients use them.
    #[arg(long, value_enum, default_value_t = ClientStack::H2)]
    pub client: ClientStack,
    #[command(flatten)]
    pub pids: ServerPids,
}

/// How the load generator makes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientStack {
    H2,
    Tonic,
}

impl Put {
    /// Random 8-byte keys out of 100,000, values of 256 bytes.
    pub fn new(load: Load) -> Put {
        Put {
            load,
            key_size: 8,
            val_size: 256,
            key_space: 100_000,
            sequential_keys: false,
            client: ClientStack::H2,
            pids: ServerPids::default(),
        }
    }
}

impl Workload for Put {
    fn name(&self) -> String {
        let seq = if self.sequential_keys { " seq" } else { "" };
        let stack = if self.client == ClientStack::Tonic { " tonic" } else { "" };
        format!("put {}x{}{seq}{stack}", self.load.conns, self.load.clients)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let value = Bytes::from(vec![b'v'; self.val_size as usize]);
        let (key_size, space, sequential) = (self.key_size as usize, self.key_space, self.sequential_keys);
        let request = move |n: u64| {
            let k = if sequential { n % space } else { rand::random_range(0..space) };
            PutRequest { key: key(k, key_size), value: value.clone(), ..Default::default() }
        };
        let pid = self.pids.of(t);
        let cpu_before = pid.map(cpu_time).transpose()?;
        let mut out = match self.client {
            ClientStack::H2 => {
                closed_loop("put", t, &self.load, max, move |conn, n| {
                    let req = request(n);
                    async move { conn.call::<_, PutResponse>(KV_PUT, &req).await.map(drop) }
                })
                .await?
            }
            ClientStack::Tonic => {
                let clients: Vec<KvClient<Channel>> =
                    t.connect(self.load.conns).await?.into_iter().map(KvClient::new).collect();
                closed_loop_on("put", t, clients, &self.load, max, move |mut kv, n| {
                    let req = request(n);
                    async move { kv.put(req).await.map(drop) }
                })
                .await?
            }
        };
        if let (Some(pid), Some(before)) = (pid, cpu_before) {
            let used = cpu_time(pid)?.saturating_sub(before);
            out.gauges = vec![
                Gauge { label: "ops/s", value: out.rate(), unit: "ops/s" },
                Gauge { label: "p99", value: out.ms(0.99).unwrap_or(0.0), unit: "ms" },
                Gauge {
                    label: "server CPU per put",
                    value: used.as_secs_f64() * 1e6 / out.ops.max(1) as f64,
                    unit: "us",
                },
            ];
        }
        Ok(out)
    }
}

/// Key number `n` as `size` decimal digits, zero-padded (the low digits
/// when `n` has more).
pub fn key(n: u64, size: usize) -> Bytes {
    let digits = format!("{n:0size$}");
    Bytes::copy_from_slice(&digits.as_bytes()[digits.len() - size..])
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_have_the_asked_size() {
        assert_eq!(&key(42, 8)[..], b"00000042");
        assert_eq!(&key(123_456, 3)[..], b"456");
        assert_eq!(&key(7, 1)[..], b"7");
    }
}
