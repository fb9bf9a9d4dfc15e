//! `roster demo`: the hello walk-through in one process, for a first taste.

use anyhow::Result;
use hello::pb::hello_client::HelloClient;
use roster::balance::Policy;
use roster::grpc::{Channel, ChannelConfig};
use roster::{Change, Client, Instance, Registration, Registry};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Milliseconds between client calls.
    #[arg(long, default_value_t = 50)]
    interval: u64,
}

/// A hello server running as a task, with its registration.
struct Server {
    name: String,
    task: JoinHandle<()>,
    reg: Registration,
}

async fn start_server(registry: &Registry, name: &str) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let id = name.to_owned();
    let task = tokio::spawn(async move {
        let _ = hello::serve(listener, id, std::future::pending()).await;
    });
    let reg = registry.register(Instance::new(hello::SERVICE, &addr).with_id(name)).await?;
    Ok(Server { name: name.to_owned(), task, reg })
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let say = |what: String| println!("[{:>4.1}s] {what}", t0.elapsed().as_secs_f64());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let registry_task = tokio::spawn(roster_server::serve(
        listener,
        None,
        roster_store::Store::in_memory(),
        Default::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    say(format!("registry (roster serve, in memory) on {addr}; etcdctl --endpoints {addr} works too"));

    // Short leases, so that a crashed server visibly expires.
    let registry = Registry::new(Client::connect([addr])?).with_ttl(Duration::from_secs(3));
    let mut servers = Vec::new();
    for name in ["hello-1", "hello-2", "hello-3"] {
        servers.push(start_server(&registry, name).await?);
        say(format!("{name} registered (lease TTL 3s)"));
    }

    let discovery = registry.discover(hello::SERVICE);
    discovery.ready().await;
    let mut changes = Box::pin(discovery.changes());
    let t = t0;
    let watcher = tokio::spawn(async move {
        while let Some(c) = changes.next().await {
            let line = match c {
                Change::Added(i) => format!("discovery: + {} at {}", i.id, i.addr),
                Change::Updated(i) => format!("discovery: ~ {}", i.id),
                Change::Removed(i) => format!("discovery: - {}", i.id),
            };
            println!("[{:>4.1}s] {line}", t.elapsed().as_secs_f64());
        }
    });
    let channel = Channel::new(discovery.clone(), ChannelConfig { policy: Policy::RoundRobin, ..Default::default() })?;
    let mut client = HelloClient::new(channel);
    say("client: calling hello round-robin through roster::grpc".into());

    let mut tally = hello::Tally::default();
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval.max(5)));
    let mut last_report = Instant::now();
    let mut crashed = false;
    let mut joined = false;
    while t0.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        let r = hello::say(&mut client, "demo", Duration::from_secs(1)).await;
        if let Err(e) = &r {
            say(format!("client: a call failed ({})", e.message()));
        }
        tally.record(&r);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            say(format!("tally: {}", tally.line()));
        }
        if !crashed && t0.elapsed() >= Duration::from_secs(3) {
            crashed = true;
            let s = servers.remove(1);
            s.task.abort();
            s.reg.abandon().await;
            say(format!("{} crashes: stops serving, and no one revokes its lease", s.name));
            say(
                "client: calls it would take are refused before they reach it, so they go to the others; no call fails"
                    .into(),
            );
        }
        if !joined && t0.elapsed() >= Duration::from_secs(6) {
            joined = true;
            servers.push(start_server(&registry, "hello-4").await?);
            say("hello-4 starts and registers".into());
        }
    }
    say(format!("final tally: {}", tally.line()));
    watcher.abort();
    drop(client);
    drop(discovery);
    for s in servers {
        s.reg.deregister().await?;
        s.task.abort();
    }
    let _ = stop_tx.send(());
    let _ = registry_task.await;
    println!("done. Next: `roster serve`, then `hello-server` and `hello-client` in separate terminals (see README).");
    Ok(())
}
