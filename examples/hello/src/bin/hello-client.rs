//! Discovers `hello` and calls it in a loop through a balanced channel,
//! printing which instance answered and a running tally.

use clap::Parser;
use hello::pb::hello_client::HelloClient;
use roster::balance::Policy;
use roster::grpc::{Channel, ChannelConfig};
use roster::{Client, ClientConfig, Registry};
use std::time::Duration;

/// Call the hello service until stopped.
#[derive(Parser, Debug)]
struct Args {
    /// Registry endpoints, comma-separated.
    #[arg(long, env = "ROSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// round-robin, weighted, random, least-request or consistent-hash.
    #[arg(long, default_value = "round-robin")]
    policy: Policy,
    /// Prefer instances in this zone.
    #[arg(long)]
    zone: Option<String>,
    /// Milliseconds between calls.
    #[arg(long, default_value_t = 200)]
    interval: u64,
    /// Stop after this many calls (0: run until stopped).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    let registry = Registry::new(Client::new(ClientConfig::from_list(&args.endpoints))?);
    let discovery = registry.discover(hello::SERVICE);
    discovery.ready().await;
    let config = ChannelConfig { policy: args.policy, zone: args.zone.clone(), ..Default::default() };
    let mut client = HelloClient::new(Channel::new(discovery.clone(), config)?);
    let mut tally = hello::Tally::default();
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval.max(1)));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let r = hello::say(&mut client, "roster", Duration::from_secs(2)).await;
        tally.record(&r);
        match &r {
            Ok(id) => println!("call {n}: answered by {id:<22} tally: {}", tally.line()),
            Err(s) => println!("call {n}: failed: {}", s.message()),
        }
        if args.count > 0 && n >= args.count {
            break;
        }
    }
    println!("final tally: {}", tally.line());
    Ok(())
}
