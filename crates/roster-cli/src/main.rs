//! The `roster` command: parse, init tracing, run the subcommand. Errors are
//! printed with their whole chain; a usage error exits 2 (clap), any other
//! failure exits 1.
//!
//! One module per group of subcommands: `serve` (`roster serve`),
//! `registry_cmd` (`register`, `ls`, `watch`; health checks are the SDK's
//! `roster::health`), `config_cmd` (`config`), `gateway_cmd` (`gateway`),
//! `auth_cmd` (`auth`), `snapshot_cmd` (`snapshot`), `demo` (`demo`) and
//! `bench` (`bench`).

mod auth_cmd;
mod bench;
mod config_cmd;
mod console_cmd;
mod demo;
mod gateway_cmd;
mod registry_cmd;
mod serve;
mod snapshot_cmd;
mod tls_args;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy and server paths allocate small buffers per request,
/// and glibc's malloc showed up at ~10% of the gateway's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

/// Service registration and discovery on the etcd v3 API.
#[derive(Debug, Parser)]
#[command(name = "roster", version, propagate_version = true)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing
    /// directives such as `roster_server=debug,info`. Default: info, and
    /// warn for `demo` (so that its narration reads clean).
    #[arg(long, global = true, env = "RUST_LOG", value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run a single-node registry server speaking the etcd v3 gRPC API.
    ///
    /// Every write is on disk (fsync) before it is acknowledged. etcdctl and
    /// etcd's clients work against it unchanged, for example
    /// `etcdctl --endpoints 127.0.0.1:2379 put /services/hello/1 10.0.0.7:50051`.
    /// SIGINT or SIGTERM stops it gracefully.
    Serve(serve::ServeArgs),
    /// Load-test any etcd v3 endpoint (roster serve or etcd).
    Bench(bench::BenchArgs),
    /// Register a service instance and keep it registered until stopped.
    ///
    /// The instance lives under `<prefix>/<service>/<id>` on a lease that is
    /// kept alive every TTL/3; if the registration is lost it is made again.
    /// With `--check`, the instance is withdrawn while its health check
    /// fails. Ctrl-C or SIGTERM revokes the lease, so it leaves every list
    /// at once.
    Register(registry_cmd::RegisterArgs),
    /// List services and their instances, with the lease TTL remaining.
    Ls(registry_cmd::LsArgs),
    /// Print a service's instances, then each change as it happens.
    Watch(registry_cmd::WatchArgs),
    /// Reverse proxy (HTTP/1.1, h2c, gRPC) that routes by service name to
    /// discovered instances, with balancing, retries and passive ejection.
    Gateway(gateway_cmd::GatewayArgs),
    /// etcd's users, roles and auth switch, and `grant-service`: a
    /// credential that may register one service only.
    Auth(auth_cmd::AuthArgs),
    /// Dynamic configuration: set (checked before it is written), get, watch.
    Config(config_cmd::ConfigArgs),
    /// The web console (`/ui/`) against any etcd-API registry: services,
    /// instances, configuration, locks and the registry, live. `roster
    /// serve` serves the same on its --http listener.
    Console(console_cmd::ConsoleArgs),
    /// etcd snapshots: save one from a member, show one's status, restore
    /// one (etcd's or Roster's) into a new Roster data dir.
    Snapshot(snapshot_cmd::SnapshotArgs),
    /// A guided tour in one process: an embedded registry, three hello
    /// servers and a balancing client; one server crashes, traffic moves,
    /// a fourth joins. Takes about ten seconds and exits by itself.
    Demo(demo::DemoArgs),
}

/// The async runtime for a subcommand.
///
/// The registry server and the load generator run without tokio's LIFO slot.
/// With it, a request task that finishes its answer wakes the HTTP/2
/// connection task into that slot, so the connection runs at once and writes
/// that one answer. The answers a group commit releases together then leave
/// in one write each. Without it, the connection task queues behind the other
/// finished requests and writes them in one go: `roster serve` spent 57 µs of
/// CPU per durable put before, 47 µs after (`roster bench put`, 10x100).
fn runtime_for(command: &Commands) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    #[cfg(tokio_unstable)]
    if matches!(command, Commands::Serve(_) | Commands::Bench(_)) {
        b.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = command;
    b.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli
        .log
        .clone()
        .unwrap_or_else(|| if matches!(cli.command, Commands::Demo(_)) { "warn" } else { "info" }.to_owned());
    if let Err(e) = init_tracing(&log) {
        eprintln!("error: invalid --log filter {log:?}: {e}");
        return ExitCode::from(2);
    }
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => return report(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Commands::Serve(args) => serve::run(args).await,
            Commands::Bench(args) => bench::run(args).await,
            Commands::Register(args) => registry_cmd::register(args, serve::shutdown_signal()?).await,
            Commands::Ls(args) => registry_cmd::ls(args).await,
            Commands::Demo(args) => demo::run(args).await,
            Commands::Snapshot(args) => snapshot_cmd::run(args).await,
            Commands::Gateway(args) => gateway_cmd::run(args, serve::shutdown_signal()?).await,
            Commands::Auth(args) => auth_cmd::run(args).await,
            Commands::Console(args) => console_cmd::run(args, serve::shutdown_signal()?).await,
            Commands::Config(args) => config_cmd::run(args, serve::shutdown_signal()?).await,
            Commands::Watch(args) => registry_cmd::watch(args, serve::shutdown_signal()?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn init_tracing(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    // Colour only for a person at a terminal, not for log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    Ok(())
}

/// Prints the error and every cause under it, most general first.
fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--key` (a client key) is global, and `roster config` has a
    /// positional `key`: they must not share an id.
    #[test]
    fn tls_and_user_flags_parse_in_every_command() {
        let tls = ["--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "--user", "svc:pw"];
        for cmd in [
            &["config", "get", "/k"][..],
            &["config", "set", "/k.json", "{}"],
            &["config", "watch", "/k.json"],
            &["ls"],
            &["watch", "hello"],
            &["register", "hello", "127.0.0.1:1"],
            &["gateway", "--cert-file", "s.pem", "--key-file", "s.key"],
        ] {
            let argv: Vec<&str> = ["roster"].iter().chain(cmd).chain(&tls).copied().collect();
            Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        let bench = ["roster", "bench", "put", "--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem"];
        Cli::try_parse_from(bench).unwrap();
        assert!(Cli::try_parse_from(["roster", "ls", "--cert", "c.pem"]).is_err(), "--cert needs --key");
    }
}
