//! A hello instance that registers itself in Roster and deregisters on
//! SIGTERM/Ctrl-C before it stops serving.

use anyhow::Context;
use clap::Parser;
use roster::{Client, ClientConfig, Instance, Registry};
use std::time::Duration;

/// Run one hello instance and keep it registered under `hello`.
#[derive(Parser, Debug)]
struct Args {
    /// Port to serve on (127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Relative share of traffic under weighted balancing.
    #[arg(long, default_value_t = 100)]
    weight: u32,
    #[arg(long, default_value = "")]
    zone: String,
    /// Instance id (default: the address).
    #[arg(long)]
    id: Option<String>,
    /// Registration lease TTL, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: u64,
    /// Registry endpoints, comma-separated.
    #[arg(long, env = "ROSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
    endpoints: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    // Installed before registering: a SIGTERM that lands right after the
    // registration must still deregister, not kill the process outright.
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let addr = listener.local_addr()?.to_string();
    let id = args.id.clone().unwrap_or_else(|| addr.clone());

    let registry =
        Registry::new(Client::new(ClientConfig::from_list(&args.endpoints))?).with_ttl(Duration::from_secs(args.ttl));
    let mut inst = Instance::new(hello::SERVICE, &addr).with_id(&id).with_weight(args.weight).with_zone(&args.zone);
    inst.protocol = "grpc".into();
    let reg = registry.register(inst).await?;
    println!("hello-server {id} serving on {addr} (weight {}, zone {:?})", args.weight, args.zone);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hello::serve(listener, id.clone(), async {
        let _ = stop_rx.await;
    }));
    shutdown.await;
    // Leave the list first, so no new calls arrive, then drain.
    println!("hello-server {id}: deregistering");
    if let Err(e) = reg.deregister().await {
        eprintln!("warning: could not deregister ({e}); the key expires with its lease");
    }
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT; the handlers are in place on return.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
