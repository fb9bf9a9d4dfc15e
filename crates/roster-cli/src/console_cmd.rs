//! `roster console`: the web console against any etcd-API registry, and
//! the console options `roster serve` shares (it mounts the same console
//! at `/ui/` on its `--http` listener).

use crate::registry_cmd::ConnectArgs;
use anyhow::{Context, Result};
use roster::ClientConfig;
use roster_console::{Console, ConsoleConfig};
use std::net::SocketAddr;

/// Options of the console, in `roster console` and `roster serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleOpts {
    /// The console shows everything and changes nothing: no action
    /// buttons, and every write it is sent answers 403.
    #[arg(long)]
    pub console_read_only: bool,
    /// Serve the console on a non-loopback address without TLS even while
    /// the registry has auth off. Without this it refuses every request
    /// there until auth is on.
    #[arg(long)]
    pub console_insecure: bool,
    /// Configuration keys the console shows and edits.
    #[arg(long, default_value = "/config/", value_name = "PREFIX")]
    pub console_config_prefix: String,
    /// Where locks live (etcd's `<name>/<lease>` layout).
    #[arg(long, default_value = "/locks/", value_name = "PREFIX")]
    pub console_lock_prefix: String,
    /// Where elections live.
    #[arg(long, default_value = "/elections/", value_name = "PREFIX")]
    pub console_election_prefix: String,
    /// Registry prefix instances are registered under.
    #[arg(long, default_value = roster::DEFAULT_PREFIX, value_name = "PREFIX")]
    pub console_prefix: String,
}

impl ConsoleOpts {
    /// The console for a listener at `addr` (`tls`: whether it has TLS).
    pub fn console(
        &self,
        client: ClientConfig,
        addr: SocketAddr,
        tls: bool,
        http_base: Option<String>,
    ) -> Result<Console> {
        let config = ConsoleConfig {
            prefix: self.console_prefix.clone(),
            config_prefix: self.console_config_prefix.clone(),
            lock_prefix: self.console_lock_prefix.clone(),
            election_prefix: self.console_election_prefix.clone(),
            read_only: self.console_read_only,
            http_base,
            exposed: !addr.ip().is_loopback() && !tls && !self.console_insecure,
            secure_cookie: tls,
            ..ConsoleConfig::new(client)
        };
        if config.exposed {
            tracing::warn!(
                "the console on {addr} is reachable beyond this machine without TLS: it refuses every request \
                 while the registry has auth off (--console-insecure serves it anyway)"
            );
        }
        Console::new(config).context("cannot start the console")
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  roster console --endpoints 127.0.0.1:2379
  roster console --endpoints https://etcd-1:2379,https://etcd-2:2379 --cacert ca.pem --listen 127.0.0.1:7070
  roster console --endpoints 127.0.0.1:2379 --metrics-url http://127.0.0.1:2381")]
pub struct ConsoleArgs {
    /// Address to serve the console on (`/ui/`).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Base URL of the registry's plain-HTTP health and metrics (etcd's
    /// --listen-metrics-urls, or roster serve's --http), for the backup and
    /// live figures on the Registry page.
    #[arg(long, value_name = "URL")]
    metrics_url: Option<String>,
    #[command(flatten)]
    opts: ConsoleOpts,
    #[command(flatten)]
    conn: ConnectArgs,
}

pub async fn run(args: ConsoleArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("bound socket has no address")?;
    let console = args.opts.console(args.conn.client_config()?, addr, false, args.metrics_url.clone())?;
    tracing::info!(endpoints = %args.conn.endpoints, "roster console on http://{addr}/ui/");
    axum::serve(listener, console.router()).with_graceful_shutdown(shutdown).await.context("console server failed")?;
    Ok(())
}
