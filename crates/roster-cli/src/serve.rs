//! `roster serve`: bind the ports, open the store, hand both to
//! `roster_server::serve`, and stop gracefully on SIGINT or SIGTERM.

use anyhow::{Context, Result, bail};
use roster_server::{AuthConfig, AuthToken, AutoCompaction, BackupConfig, ServerConfig, TransportLimits};
use roster_store::{Store, StoreConfig, StoreError, SystemClock};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Options of `roster serve`; its help text is on `Commands::Serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address for the etcd gRPC API: `host:port`, `http://host:port`, or
    /// `https://host:port` (needs --cert-file and --key-file). A bare
    /// `host:port` is TLS when --cert-file is given.
    #[arg(long, default_value = "127.0.0.1:2379", value_name = "ADDR", value_parser = parse_listen)]
    listen: ListenAddr,

    /// Address for HTTP `/health` and `/metrics`: `host:port`,
    /// `http://host:port` or `https://host:port`. HTTPS uses --http-cert-file
    /// and --http-key-file, or else --cert-file and --key-file.
    #[arg(long, default_value = "127.0.0.1:2381", value_name = "ADDR", value_parser = parse_listen)]
    http: ListenAddr,
    // --- TLS (etcd's flag names), of the gRPC listener ---
    #[command(flatten)]
    tls: crate::tls_args::TlsArgs,

    /// Certificate for the --http listener [default: --cert-file when
    /// --http is https://]. Given, the --http listener is HTTPS.
    #[arg(long, value_name = "FILE", requires = "http_key_file", help_heading = "TLS")]
    http_cert_file: Option<PathBuf>,

    /// Private key of --http-cert-file.
    #[arg(long, value_name = "FILE", requires = "http_cert_file", help_heading = "TLS")]
    http_key_file: Option<PathBuf>,

    /// CA for client certificates on the --http listener (with
    /// --http-client-cert-auth). Kept apart from the gRPC listener's so
    /// that health probes need no client certificate unless asked.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    http_trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate signed by --http-trusted-ca-file on the
    /// --http listener.
    #[arg(long, requires = "http_trusted_ca_file", help_heading = "TLS")]
    http_client_cert_auth: bool,
    // --- end of TLS ---
    /// Do not serve HTTP health and metrics.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,

    /// Do not serve the web console at /ui/ on the --http listener.
    #[arg(long)]
    no_console: bool,

    #[command(flatten)]
    console: crate::console_cmd::ConsoleOpts,

    /// With TLS on --listen: the CA the console at /ui/ trusts for this
    /// server's own certificate, which must then name the address it dials
    /// (--listen's IP, 127.0.0.1 for 0.0.0.0) [default: --trusted-ca-file].
    #[arg(long, value_name = "FILE")]
    console_cacert: Option<PathBuf>,

    /// With --client-cert-auth: the client certificate the console presents
    /// to this server. Its CN is never used as a login: with auth on, the
    /// console still asks every visitor for registry credentials.
    #[arg(long, value_name = "FILE", requires = "console_key")]
    console_cert: Option<PathBuf>,

    /// Private key of --console-cert.
    #[arg(long, value_name = "FILE", requires = "console_cert")]
    console_key: Option<PathBuf>,

    /// Directory for the write-ahead log, snapshots and the member identity.
    /// Created if missing; only one server may use it at a time.
    #[arg(long, default_value = "./roster-data", value_name = "DIR")]
    data_dir: PathBuf,

    /// Keep everything in memory: nothing survives a restart, and member
    /// and cluster ids are new each start. For tests and demos.
    #[arg(long, conflicts_with_all = ["data_dir", "repair_wal"])]
    in_memory: bool,

    /// Member name, as MemberList shows it.
    #[arg(long, default_value = "default")]
    name: String,

    /// Client URLs to advertise in MemberList, comma-separated
    /// [default: http://<the bound --listen address>].
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    advertise_client_urls: Vec<String>,

    /// If the write-ahead log is damaged, cut it at the damage instead of
    /// refusing to start. The writes after that point are lost; the bytes
    /// cut are kept in <DIR>/wal.cut-<offset>.
    #[arg(long)]
    repair_wal: bool,

    /// Raise the NOSPACE alarm and refuse writes that add data once the data
    /// dir (log and snapshot) would reach this many bytes, as etcd does.
    /// 0 means etcd's default of 2 GiB; a negative value turns the quota off.
    #[arg(long, default_value_t = 0, value_name = "BYTES", allow_negative_numbers = true)]
    quota_backend_bytes: i64,

    /// How `--auto-compaction-retention` is read: `periodic` (a duration)
    /// or `revision` (a number of revisions).
    #[arg(long, default_value = "periodic", value_name = "MODE")]
    auto_compaction_mode: String,

    /// History auto-compaction keeps: in periodic mode a duration such as
    /// `1h` or `30m` (a bare number is hours), in revision mode a number of
    /// revisions. 0 turns auto-compaction off.
    #[arg(long, default_value = "0", value_name = "RETENTION")]
    auto_compaction_retention: String,

    // --- Scheduled backups ---
    /// Write an etcd snapshot (what `etcdctl snapshot save` writes) into
    /// this directory at start and every `--backup-interval`, atomically
    /// (fsync, then rename). `etcdctl snapshot restore` and `roster snapshot
    /// restore` take the files. The latest backup's age is on `/metrics`
    /// (`roster_backup_age_seconds`) and in `/health`.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<PathBuf>,

    /// Time between scheduled backups; Go durations: 1h, 15m, 30s.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_go_duration, requires = "backup_dir")]
    backup_interval: Duration,

    /// How many scheduled backups to keep; older ones are deleted.
    #[arg(long, default_value_t = 24, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "backup_dir")]
    backup_retain: u64,
    // --- Transport limits (etcd's flag names, but --max-inflight-requests) ---
    /// Ping a client connection idle for this long (etcd's flag); Go
    /// durations: 2h, 30s, 500ms.
    #[arg(long, default_value = "2h", value_name = "DURATION", value_parser = parse_go_duration)]
    grpc_keepalive_interval: Duration,

    /// Close a connection whose keepalive ping is not answered within this
    /// (etcd's flag).
    #[arg(long, default_value = "20s", value_name = "DURATION", value_parser = parse_go_duration)]
    grpc_keepalive_timeout: Duration,

    /// etcd's minimum client ping interval. Accepted so etcd command lines
    /// work, but not enforced: Roster's HTTP/2 stack answers every ping.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_go_duration)]
    grpc_keepalive_min_time: Duration,

    /// Streams one client connection may have open at once (etcd's flag and
    /// default, 2^32-1).
    #[arg(long, default_value_t = u32::MAX, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,

    /// Unary calls served at once over all connections; more are refused
    /// with "etcdserver: too many requests" (Roster's own; etcd has none).
    #[arg(long, default_value_t = TransportLimits::default().max_inflight_requests as u64, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=(u32::MAX as u64)))]
    max_inflight_requests: u64,
    // --- end of transport limits ---
    /// Auth token kind: `simple` (etcd's default; random tokens kept in
    /// memory, gone on restart) or, with etcd's syntax,
    /// `jwt,sign-method=RS256,pub-key=<file>,priv-key=<file>[,ttl=5m]`:
    /// signed tokens etcd would accept with the same keys. With only
    /// pub-key the server verifies tokens but issues none.
    #[arg(long, default_value = "simple", value_name = "KIND[,OPTS]", value_parser = parse_auth_token)]
    auth_token: AuthToken,

    /// How long a simple token lives unused (etcd's `--auth-token-ttl`, in
    /// seconds).
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    auth_token_ttl: u64,

    /// bcrypt cost for user passwords (etcd's `--bcrypt-cost`, 4..=31).
    #[arg(long, default_value_t = 10, value_name = "COST", value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
}

/// `--auth-token`: etcd's syntax, `<kind>[,option=value...]`: `simple`, or
/// `jwt,sign-method=<alg>,pub-key=<file>,priv-key=<file>[,ttl=<duration>]`.
/// JWT keys are read here, so a bad file fails the start with its name.
fn parse_auth_token(s: &str) -> Result<AuthToken, String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut opts = std::collections::BTreeMap::new();
    for pair in parts {
        let Some((k, v)) = pair.split_once('=').filter(|(_, v)| !v.contains('=')) else {
            return Err(format!("invalid --auth-token option {pair:?}; write option=value"));
        };
        if opts.insert(k, v).is_some() {
            return Err(format!("--auth-token option {k:?} is given twice"));
        }
    }
    match kind {
        // etcd ignores options after `simple`; so do we.
        "simple" => Ok(AuthToken::Simple),
        "jwt" => {
            if let Some(k) = opts.keys().find(|k| !["sign-method", "pub-key", "priv-key", "ttl"].contains(k)) {
                return Err(format!(
                    "unknown --auth-token jwt option {k:?}; jwt takes sign-method, pub-key, priv-key and ttl"
                ));
            }
            let sign_method = opts.get("sign-method").filter(|m| !m.is_empty()).ok_or(
                "--auth-token jwt needs sign-method=<RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|HS256|HS384|HS512|EdDSA>",
            )?;
            let path = |k: &str| opts.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
            let ttl = match opts.get("ttl").filter(|v| !v.is_empty()) {
                Some(t) => parse_go_duration(t).map_err(|e| format!("--auth-token jwt ttl: {e}"))?,
                None => roster_server::DEFAULT_JWT_TTL,
            };
            if ttl.is_zero() {
                return Err("--auth-token jwt ttl must be more than 0".into());
            }
            let options = roster_server::JwtOptions {
                sign_method: sign_method.to_string(),
                pub_key: path("pub-key"),
                priv_key: path("priv-key"),
                ttl,
            };
            let jwt = roster_server::Jwt::load(options).map_err(|e| format!("--auth-token: {e}"))?;
            Ok(AuthToken::Jwt(Arc::new(jwt)))
        }
        other => Err(format!("unknown auth token kind {other:?}; expected simple or jwt,sign-method=...")),
    }
}

/// Parses a duration as Go's `time.ParseDuration` does, which is how etcd
/// reads its duration flags: one or more `<number><unit>` terms, with units
/// ns, us (or µs), ms, s, m, h, and fractions allowed ("1.5h", "1m30s").
/// A bare "0" is zero. Negative durations are refused: no limit here can be
/// negative.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    const UNITS: [(&str, f64); 7] =
        [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let hint = || format!("{s:?} is not a duration; use a number and a unit, e.g. 5s, 100ms, 2h or 1m30s");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.starts_with('-') {
        return Err(format!("{s:?}: a negative duration is not allowed here"));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    if rest.is_empty() {
        return Err(hint());
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(hint());
        }
        let value: f64 = num.parse().map_err(|_| hint())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!("{s:?} has no unit; add one of ns, us, ms, s, m, h (e.g. {num}s)")
            } else {
                format!("{s:?}: unknown unit {unit:?}; use ns, us, ms, s, m or h")
            });
        };
        secs += value * scale;
        rest = next;
    }
    // Go's Duration is int64 nanoseconds, about 292 years.
    if !secs.is_finite() || secs > i64::MAX as f64 / 1e9 {
        return Err(format!("{s:?} is too long a duration"));
    }
    Ok(Duration::from_nanos((secs * 1e9).round() as u64))
}

/// A listen address as given, scheme stripped; resolved when binding so that
/// host names such as `localhost` work.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenAddr(String, Scheme);

/// The scheme a listen address was given with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `host:port`: TLS exactly when certificate files are given.
    Bare,
    Http,
    Https,
}

/// Accepts `host:port`, `http://host:port[/]` and `https://host:port[/]`;
/// refuses other schemes and paths with a hint, so a URL copied from an
/// etcd flag works.
fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    let s = s.trim();
    let (scheme, rest) = match s.split_once("://") {
        None => (Scheme::Bare, s),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        Some((scheme, _)) => {
            return Err(format!("unsupported scheme {scheme:?}; use host:port, http://host:port or https://host:port"));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err("a listen address has no path; use host:port".into());
    }
    // The port is after the last colon, outside any [IPv6] brackets.
    let port = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => port,
        _ => return Err(format!("{rest:?} has no port; use host:port, e.g. 127.0.0.1:2379")),
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port number"));
    }
    Ok(ListenAddr(rest.to_owned(), scheme))
}

/// Whether a listener serves TLS, from its scheme and whether certificate
/// files were given; plaintext asked for explicitly beside certificate
/// files is refused rather than silently ignoring them.
fn tls_for(
    flag: &str,
    addr: &ListenAddr,
    tls: Option<roster_tls::ServerTls>,
    cert_flag: &str,
) -> Result<Option<roster_tls::ServerTls>> {
    match (addr.1, tls) {
        (Scheme::Https, None) => bail!("{flag} https://{} needs {cert_flag} and its key file", addr.0),
        (Scheme::Http, Some(_)) => {
            bail!(
                "{flag} http://{} is plaintext but {cert_flag} is given; use https://{} (or host:port)",
                addr.0,
                addr.0
            )
        }
        (Scheme::Http, None) | (Scheme::Bare, None) => Ok(None),
        (Scheme::Https | Scheme::Bare, Some(t)) => Ok(Some(t)),
    }
}

/// The loud warnings for a listener reachable beyond this machine without
/// TLS, or without a way to tell clients apart (client certificates, or
/// auth enabled in the store); empty on loopback.
fn exposure_warnings(
    what: &str,
    addr: SocketAddr,
    tls: Option<&roster_tls::ServerTls>,
    auth_enabled: bool,
) -> Vec<String> {
    if addr.ip().is_loopback() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if tls.is_none() {
        out.push(format!(
            "{what} listens on {addr}, beyond this machine, WITHOUT TLS: anyone who can reach it reads what \
             crosses the network in plaintext. Turn TLS on with --cert-file and --key-file (https://), and require \
             client certificates with --trusted-ca-file and --client-cert-auth, or bind 127.0.0.1"
        ));
    }
    if !auth_enabled && !tls.is_some_and(|t| t.client_cert_auth) {
        out.push(format!(
            "{what} listens on {addr}, beyond this machine, WITHOUT auth: any client that can reach it reads and \
             changes every key. Enable auth (`roster auth enable`, or `etcdctl user add root`, `etcdctl user \
             grant-role root root`, `etcdctl auth enable`), or require client certificates with --trusted-ca-file \
             and --client-cert-auth"
        ));
    }
    out
}

/// Ids that make this data dir one etcd member of one cluster, kept across
/// restarts so clients see the same member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct MemberIdentity {
    cluster_id: u64,
    member_id: u64,
}

const MEMBER_FILE: &str = "member.json";

// === impl MemberIdentity ===

impl MemberIdentity {
    fn random() -> Self {
        MemberIdentity { cluster_id: nonzero_random(), member_id: nonzero_random() }
    }

    /// Reads `<dir>/member.json`, or creates it on first start.
    fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(MEMBER_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let id: MemberIdentity = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a valid member identity file", path.display()))?;
                if id.cluster_id == 0 || id.member_id == 0 {
                    bail!("{} has a zero cluster_id or member_id", path.display());
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = MemberIdentity::random();
                id.write(&path).with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(path = %path.display(), member_id = %format_args!("{:x}", id.member_id), "created member identity");
                Ok(id)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Write-then-rename with fsyncs, so a crash never leaves a torn file
    /// that would change the ids on the next start.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self).map_err(std::io::Error::other)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn nonzero_random() -> u64 {
    loop {
        let v = rand::random::<u64>();
        if v != 0 {
            return v;
        }
    }
}

/// Binds `addr`, trying each address a host name resolves to.
async fn bind(addr: &ListenAddr) -> Result<TcpListener> {
    let hint = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot listen on {}: address already in use; is another roster or etcd running?", addr.0)
        } else {
            anyhow::Error::new(e).context(format!("cannot listen on {}", addr.0))
        }
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&addr.0)
        .await
        .with_context(|| format!("cannot resolve listen address {}", addr.0))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => hint(e),
        None => anyhow::anyhow!("listen address {} resolves to nothing", addr.0),
    })
}

/// Opens the store in `dir` (`None`: in memory) with the system clock.
fn open_store(dir: Option<&Path>, repair: bool) -> Result<Store> {
    let Some(dir) = dir else { return Ok(Store::in_memory()) };
    let config = StoreConfig {
        data_dir: Some(dir.to_owned()),
        clock: Arc::new(SystemClock::default()),
        repair,
        ..Default::default()
    };
    Store::open(config).map_err(|e| {
        let hint = match &e {
            StoreError::Locked { .. } => {
                "cannot open the store: is another roster serve using this data dir?".to_owned()
            }
            StoreError::Corrupt(_) => format!("refusing to start on damaged data in {}", dir.display()),
            _ => format!("cannot open the store in {}", dir.display()),
        };
        anyhow::Error::new(e).context(hint)
    })
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let auto_compaction = AutoCompaction::parse(&args.auto_compaction_mode, &args.auto_compaction_retention)
        .map_err(anyhow::Error::msg)?;
    let grpc_tls = tls_for("--listen", &args.listen, args.tls.server_tls()?, "--cert-file")?;
    let http_tls = if args.no_http {
        None
    } else {
        // HTTPS on --http: its own files, or the gRPC ones for https://.
        let files = match (&args.http_cert_file, &args.http_key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            _ if args.http.1 == Scheme::Https => args.tls.cert_file.as_ref().zip(args.tls.key_file.as_ref()),
            _ => None,
        };
        let cert_flag =
            if args.tls.cert_file.is_some() { "--http-cert-file (or --cert-file)" } else { "--http-cert-file" };
        let tls = files.map(|(c, k)| roster_tls::ServerTls {
            trusted_ca_file: args.http_trusted_ca_file.clone(),
            client_cert_auth: args.http_client_cert_auth,
            ..roster_tls::ServerTls::new(c, k)
        });
        // A bare --http beside gRPC certificates stays plaintext: only
        // --http-cert-file or https:// turn it to TLS.
        match (args.http.1, &args.http_cert_file) {
            (Scheme::Bare, None) => None,
            _ => tls_for("--http", &args.http, tls, cert_flag)?,
        }
    };
    // Load the files now, so that a bad one fails the start with its name.
    for t in grpc_tls.iter().chain(&http_tls) {
        t.server_config()?;
    }
    let grpc = bind(&args.listen).await?;
    let http = if args.no_http { None } else { Some(bind(&args.http).await?) };
    let grpc_addr = grpc.local_addr().context("bound gRPC socket has no address")?;
    let http_addr =
        http.as_ref().map(TcpListener::local_addr).transpose().context("bound HTTP socket has no address")?;

    // Replaying the log can take a while; keep it off the async workers.
    let dir = (!args.in_memory).then(|| args.data_dir.clone());
    let store = tokio::task::spawn_blocking({
        let (dir, repair) = (dir.clone(), args.repair_wal);
        move || open_store(dir.as_deref(), repair)
    })
    .await
    .context("store open task failed")??;
    // Only once the store holds the dir lock, so two servers never race here.
    let identity = match &dir {
        Some(d) => MemberIdentity::load_or_create(d)?,
        None => MemberIdentity::random(),
    };

    // Auth as the store has it now: a data dir with auth enabled needs no
    // warning about it.
    let auth_enabled = store.auth_tables().enabled;
    for warning in exposure_warnings("the etcd gRPC API", grpc_addr, grpc_tls.as_ref(), auth_enabled).into_iter().chain(
        http_addr.into_iter().flat_map(|h| exposure_warnings("HTTP health and metrics", h, http_tls.as_ref(), true)),
    ) {
        tracing::warn!("{warning}");
    }
    let grpc_scheme = if grpc_tls.is_some() { "https" } else { "http" };
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    let client_urls = if args.advertise_client_urls.is_empty() {
        vec![format!("{grpc_scheme}://{grpc_addr}")]
    } else {
        args.advertise_client_urls.clone()
    };
    let mut config = ServerConfig {
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
        name: args.name.clone(),
        client_urls,
        quota_backend_bytes: args.quota_backend_bytes,
        auto_compaction,
        backup: args.backup_dir.as_ref().map(|dir| BackupConfig {
            dir: dir.clone(),
            interval: args.backup_interval,
            retain: args.backup_retain as usize,
        }),
        transport: TransportLimits {
            keepalive_interval: args.grpc_keepalive_interval,
            keepalive_timeout: args.grpc_keepalive_timeout,
            keepalive_min_time: args.grpc_keepalive_min_time,
            max_concurrent_streams: args.max_concurrent_streams,
            max_inflight_requests: args.max_inflight_requests as usize,
        },
        auth: AuthConfig {
            token: args.auth_token.clone(),
            token_ttl: Duration::from_secs(args.auth_token_ttl),
            bcrypt_cost: args.bcrypt_cost,
        },
        tls: grpc_tls.clone(),
        http_tls: http_tls.clone(),
        ..Default::default()
    };
    config.http_routes = match http_addr {
        Some(h) if !args.no_console => console_routes(&args, grpc_addr, grpc_tls.is_some(), h, http_tls.is_some())?,
        _ => None,
    };
    let shutdown = shutdown_signal()?;

    let http_note = match http_addr {
        Some(h) if config.http_routes.is_some() => {
            format!("health, metrics and the console on {http_scheme}://{h} (/ui/)")
        }
        Some(h) => format!("health and metrics on {http_scheme}://{h}"),
        None => "HTTP health and metrics off".to_owned(),
    };
    tracing::info!(
        name = %args.name,
        member_id = %format_args!("{:x}", identity.member_id),
        cluster_id = %format_args!("{:x}", identity.cluster_id),
        data_dir = %dir.as_ref().map_or("(in memory)".to_owned(), |d| d.display().to_string()),
        revision = store.revision(),
        quota_bytes = ?config.quota_bytes(),
        auto_compaction = ?config.auto_compaction,
        client_cert_auth = grpc_tls.as_ref().is_some_and(|t| t.client_cert_auth),
        "roster serving etcd v3 API on {grpc_scheme}://{grpc_addr}; {http_note}"
    );
    roster_server::serve(grpc, http, store, config, shutdown).await.context("server failed")?;
    tracing::info!("roster stopped");
    Ok(())
}

/// The console for `--http`, talking to this server's gRPC listener
/// through the SDK like any other client (over TLS when it has TLS).
fn console_routes(
    args: &ServeArgs,
    grpc: SocketAddr,
    grpc_tls: bool,
    http: SocketAddr,
    http_tls: bool,
) -> Result<Option<axum::Router>> {
    let local = |a: SocketAddr| if a.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], a.port())) } else { a };
    let mut client = roster::ClientConfig::new([local(grpc).to_string()]);
    if grpc_tls {
        let Some(ca) = args.console_cacert.as_ref().or(args.tls.trusted_ca_file.as_ref()) else {
            tracing::warn!(
                "the console is not served at /ui/: the gRPC listener has TLS and the console has no CA to check \
                 it with (give --console-cacert, the CA that signed --cert-file)"
            );
            return Ok(None);
        };
        if args.tls.client_cert_auth && args.console_cert.is_none() {
            tracing::warn!(
                "the console is not served at /ui/: --client-cert-auth needs a client certificate for it \
                 (give --console-cert and --console-key, signed by --trusted-ca-file)"
            );
            return Ok(None);
        }
        client = roster::ClientConfig::new([format!("https://{}", local(grpc))]);
        client.tls = Some(roster::ClientConfig::tls_from_files(
            Some(ca),
            args.console_cert.as_deref(),
            args.console_key.as_deref(),
        )?);
    }
    // Its own /health and /metrics, read over plain HTTP only.
    let http_base = (!http_tls).then(|| format!("http://{}", local(http)));
    Ok(Some(args.console.console(client, http, http_tls, http_base)?.router()))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed now, so a
/// signal that arrives during startup is not lost.
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        Ok(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!("{which} received; shutting down gracefully");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received; shutting down gracefully");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_host_port_and_http_urls() {
        let ok = |s: &str| parse_listen(s).unwrap().0;
        assert_eq!(ok("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(ok("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(ok("HTTP://localhost:2379/"), "localhost:2379");
        assert_eq!(ok("[::1]:2379"), "[::1]:2379");
        assert_eq!(ok("0.0.0.0:0"), "0.0.0.0:0");
        assert_eq!(ok("https://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(parse_listen("https://h:1").unwrap().1, Scheme::Https);
        assert_eq!(parse_listen("h:1").unwrap().1, Scheme::Bare);
    }

    #[test]
    fn tls_follows_scheme_and_refuses_contradictions() {
        let t = || Some(roster_tls::ServerTls::new("c.pem", "k.pem"));
        let addr = |s: &str| parse_listen(s).unwrap();
        assert!(tls_for("--listen", &addr("https://h:1"), t(), "--cert-file").unwrap().is_some());
        assert!(tls_for("--listen", &addr("h:1"), t(), "--cert-file").unwrap().is_some());
        assert!(tls_for("--listen", &addr("h:1"), None, "--cert-file").unwrap().is_none());
        let e = tls_for("--listen", &addr("https://h:1"), None, "--cert-file").unwrap_err().to_string();
        assert!(e.contains("needs --cert-file"), "{e}");
        let e = tls_for("--listen", &addr("http://h:1"), t(), "--cert-file").unwrap_err().to_string();
        assert!(e.contains("plaintext but --cert-file is given"), "{e}");
    }

    #[test]
    fn leaving_loopback_without_tls_or_client_certs_warns_how_to_fix() {
        let lo: SocketAddr = "127.0.0.1:2379".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:2379".parse().unwrap();
        let mut tls = roster_tls::ServerTls::new("c", "k");
        assert!(exposure_warnings("gRPC", lo, None, false).is_empty());
        let w = exposure_warnings("gRPC", any, None, false);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("WITHOUT TLS") && w[0].contains("--cert-file and --key-file"), "{w:?}");
        assert!(w[1].contains("WITHOUT auth") && w[1].contains("auth enable"), "{w:?}");
        let w = exposure_warnings("gRPC", any, None, true);
        assert_eq!(w.len(), 1, "auth on in the store: TLS only: {w:?}");
        assert!(w[0].contains("WITHOUT TLS"), "{w:?}");
        let w = exposure_warnings("gRPC", any, Some(&tls), false);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("WITHOUT auth") && w[0].contains("--client-cert-auth"), "{w:?}");
        assert!(exposure_warnings("gRPC", any, Some(&tls), true).is_empty(), "TLS and auth on");
        tls.client_cert_auth = true;
        assert!(exposure_warnings("gRPC", any, Some(&tls), false).is_empty());
        assert!(exposure_warnings("gRPC", "[::1]:1".parse().unwrap(), None, false).is_empty());
    }

    #[test]
    fn listen_refuses_what_it_cannot_serve() {
        let err = |s: &str| parse_listen(s).unwrap_err();
        assert!(err("unix:///tmp/x").contains("unsupported scheme"));
        assert!(err("127.0.0.1").contains("no port"));
        assert!(err("[::1]").contains("no port"));
        assert!(err("http://h:2379/v3").contains("no path"));
        assert!(err("h:http").contains("not a port"));
    }

    #[test]
    fn go_durations_parse_as_etcd_reads_them() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok(".5s"), Duration::from_millis(500));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        let err = |s: &str| parse_go_duration(s).unwrap_err();
        assert!(err("5").contains("has no unit; add one of ns, us, ms, s, m, h (e.g. 5s)"), "{}", err("5"));
        assert!(err("5sec").contains("unknown unit \"sec\""), "{}", err("5sec"));
        assert!(err("-5s").contains("negative"));
        for bad in ["", "s", "1..5s", ".s", "+", "5s3", "1e3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(err("99999999999h").contains("too long"));
    }

    #[test]
    fn transport_flags_default_to_etcds_and_reach_the_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let a = Cli::parse_from(["serve"]).serve;
        let d = TransportLimits::default();
        assert_eq!(
            (a.grpc_keepalive_interval, a.grpc_keepalive_timeout, a.grpc_keepalive_min_time),
            (d.keepalive_interval, d.keepalive_timeout, d.keepalive_min_time)
        );
        assert_eq!(
            (a.max_concurrent_streams, a.max_inflight_requests as usize),
            (d.max_concurrent_streams, d.max_inflight_requests)
        );
        let a = Cli::parse_from([
            "serve",
            "--grpc-keepalive-interval",
            "1m",
            "--grpc-keepalive-timeout",
            "500ms",
            "--max-concurrent-streams",
            "100",
            "--max-inflight-requests",
            "7",
        ])
        .serve;
        assert_eq!(
            (a.grpc_keepalive_interval, a.grpc_keepalive_timeout),
            (Duration::from_secs(60), Duration::from_millis(500))
        );
        assert_eq!((a.max_concurrent_streams, a.max_inflight_requests), (100, 7));
        assert!(Cli::try_parse_from(["serve", "--max-concurrent-streams", "0"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--max-inflight-requests", "0"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--grpc-keepalive-timeout", "20"]).is_err());
    }

    #[test]
    fn auth_token_specs_parse_as_etcd_reads_them_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"k").unwrap();
        assert_eq!(parse_auth_token("simple").unwrap(), AuthToken::Simple);
        assert_eq!(parse_auth_token("simple,foo=bar").unwrap(), AuthToken::Simple);
        let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m30s", secret.display());
        let AuthToken::Jwt(j) = parse_auth_token(&spec).unwrap() else { panic!("not jwt") };
        assert_eq!(j.options().ttl, Duration::from_secs(90));
        assert_eq!(j.options().sign_method, "HS256");
        let spec = format!("jwt,priv-key={},sign-method=HS256", secret.display());
        let AuthToken::Jwt(j) = parse_auth_token(&spec).unwrap() else { panic!("not jwt") };
        assert_eq!(j.options().ttl, Duration::from_secs(300), "etcd's default");
        let err = |s: &str| parse_auth_token(s).unwrap_err();
        assert!(err("jwt").contains("needs sign-method="), "{}", err("jwt"));
        assert!(err("jwt,sign-method").contains("write option=value"));
        assert!(err("jwt,ttl=1s,ttl=2s").contains("given twice"));
        assert!(err("jwt,sign-method=RS256,pubkey=x").contains("unknown --auth-token jwt option \"pubkey\""));
        assert!(err("jwt,sign-method=RS256").contains("needs a key"), "{}", err("jwt,sign-method=RS256"));
        assert!(err("jwt,sign-method=XX256,pub-key=/k").contains("unknown JWT sign-method"));
        assert!(err("jwt,sign-method=RS256,pub-key=/none/k.pem").contains("cannot read JWT key /none/k.pem"));
        assert!(err(&format!("jwt,sign-method=HS256,priv-key={},ttl=5", secret.display())).contains("ttl"));
        assert!(err("kerberos").contains("unknown auth token kind"));
    }

    #[test]
    fn member_identity_is_stable_per_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = MemberIdentity::load_or_create(dir.path()).unwrap();
        assert_ne!(first.member_id, 0);
        assert_ne!(first.cluster_id, 0);
        let again = MemberIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(first, again);
        let other = MemberIdentity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(first.member_id, other.member_id);
    }

    #[test]
    fn corrupt_member_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMBER_FILE), b"{not json").unwrap();
        let err = MemberIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("member.json"), "{err:#}");
    }

    #[tokio::test]
    async fn port_in_use_has_a_helpful_message() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ListenAddr(taken.local_addr().unwrap().to_string(), Scheme::Bare);
        let err = bind(&addr).await.unwrap_err().to_string();
        assert!(err.contains("address already in use; is another roster or etcd running?"), "{err}");
    }
}
