//! `roster gateway`: the reverse proxy that routes by service name.

use crate::registry_cmd::ConnectArgs;
use anyhow::{Context, Result};
use roster::config::{ConfigEvent, Format, Options};
use roster_gateway::{Config, Gateway};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Routing, in order: a gRPC call by its service name (`grpc = [\"pkg.Service\"]`
in a route); a route's `host`; `Host: <service>.<domain>`; the longest
`path_prefix` of a route; then `/<service>/<rest>` to any registered service,
sent upstream as `/<rest>`.

Errors: no route 404, no instance 503 (JSON naming the service), upstream
failure after retries 502, timeout 504; gRPC callers get grpc-status instead.
SIGHUP reloads --config; with --config-key, a change to that key does too.

Examples:
  roster gateway --listen 127.0.0.1:8080
  roster gateway --config gateway.toml --endpoints 10.0.0.1:2379,10.0.0.2:2379
  curl http://127.0.0.1:8080/hello/greet      # → an instance of hello, as /greet")]
pub struct GatewayArgs {
    /// Where to accept HTTP/1.1 and h2c (gRPC) requests.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where to serve /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Serve no admin endpoints.
    #[arg(long, conflicts_with = "admin")]
    no_admin: bool,
    /// Routes and policies (TOML). Without it, `/<service>/…` routes to any
    /// registered service with the defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A registry key holding the configuration (TOML); the gateway follows
    /// it and reloads on every change. Takes precedence over --config.
    #[arg(long)]
    config_key: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// TLS on --listen (h2 and http/1.1 by ALPN): these flags, or else
    /// the config's `[tls]` table. The registry connection has its own
    /// flags (--cacert, --cert, --key, --user).
    #[command(flatten)]
    tls: crate::tls_args::TlsArgs,
    #[command(flatten)]
    conn: ConnectArgs,
}

fn read_config(path: &Option<PathBuf>) -> Result<Config> {
    let Some(path) = path else { return Ok(Config::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --config {}", path.display()))?;
    Ok(Config::parse(&text, &path.display().to_string())?)
}

pub async fn run(args: GatewayArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let client = args.conn.client()?;
    let mut config = read_config(&args.config)?;
    let followed = match &args.config_key {
        Some(key) => {
            let opts = Options::<roster_gateway::config::FileConfig>::new()
                .format(Format::Toml)
                .validate(|f| Config::from_file(f.clone()).map(drop).map_err(|e| e.0));
            let watched = opts.watch(&client, key).await.with_context(|| format!("cannot read --config-key {key}"))?;
            config = Config::from_file((*watched.get()).clone())?;
            Some(watched)
        }
        None => None,
    };
    // The flags, if any is given, else the config's [tls]: one checker.
    let tls = if args.tls.files().is_empty() { config.tls.clone() } else { args.tls.server_tls()? };
    let tls = match tls {
        Some(t) => {
            Some(roster_tls::ServerTls { alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()], ..t }.server_config()?)
        }
        None => None,
    };
    if !args.listen.ip().is_loopback() && tls.is_none() {
        tracing::warn!(
            "the gateway listens on {}, beyond this machine, WITHOUT TLS: requests and answers cross the network in \
             plaintext. Turn TLS on with --cert-file and --key-file (or [tls] in --config), or bind 127.0.0.1",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = if args.no_admin {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.admin)
                .await
                .with_context(|| format!("cannot listen on --admin {}", args.admin))?,
        )
    };
    let gateway = Gateway::new(roster::Registry::new(client), config);
    eprintln!(
        "roster gateway on {}://{} (admin {}), registry {}",
        if tls.is_some() { "https" } else { "http" },
        args.listen,
        if args.no_admin { "off".to_owned() } else { format!("http://{}", args.admin) },
        args.conn.endpoints
    );

    let reloads = tokio::spawn(follow_reloads(gateway.clone(), args.config.clone(), followed));
    let drain = Duration::from_secs(args.drain);
    let result = match tls {
        Some(tls) => gateway.serve_tls(listener, admin, tls, drain, shutdown).await,
        None => gateway.serve(listener, admin, drain, shutdown).await,
    };
    reloads.abort();
    result.context("gateway failed")
}

/// Reloads on SIGHUP (from --config) and on changes of --config-key.
async fn follow_reloads(
    gateway: Gateway,
    path: Option<PathBuf>,
    key: Option<roster::config::Config<roster_gateway::config::FileConfig>>,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut changes = key.as_ref().map(|k| Box::pin(k.changes()));
    loop {
        let hup_fired = async {
            #[cfg(unix)]
            if let Some(h) = hup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let changed = async {
            match changes.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = hup_fired => match (&key, read_config(&path)) {
                (Some(k), _) => apply(&gateway, Config::from_file((*k.get()).clone()).map_err(Into::into), "SIGHUP (registry key)"),
                (None, c) => apply(&gateway, c, "SIGHUP"),
            },
            ev = changed => match ev {
                Some(ConfigEvent::Updated { value, revision, .. }) => {
                    apply(&gateway, Config::from_file((*value).clone()).map_err(Into::into), &format!("registry revision {revision}"));
                }
                Some(ConfigEvent::Rejected { error, revision, .. }) => {
                    tracing::error!(revision, error, "gateway config in the registry rejected; keeping the current one");
                }
                Some(ConfigEvent::Deleted { .. }) => tracing::warn!("gateway config key deleted; keeping the current config"),
                None => return,
            },
        }
    }
}

fn apply(gateway: &Gateway, config: Result<Config>, why: &str) {
    match config {
        Ok(c) => {
            let routes = c.routes.len();
            match gateway.reload(c) {
                Ok(()) => tracing::info!(routes, "gateway config reloaded ({why})"),
                Err(e) => tracing::error!(error = %e, "gateway config not reloaded ({why}); keeping the current one"),
            }
        }
        Err(e) => tracing::error!(error = %e, "gateway config not reloaded ({why}); keeping the current one"),
    }
}
