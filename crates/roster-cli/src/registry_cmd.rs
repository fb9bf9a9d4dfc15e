//! `roster register`, `roster ls` and `roster watch`: the registry from the
//! command line, through the SDK.

use anyhow::{Context, Result, bail};
use roster::health::{self, Check, HealthCheck};
use roster::{Change, Client, ClientConfig, Instance, RegistrationStatus, Registry};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Where the registry is and which services prefix to use; shared by the
/// service commands.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Key prefix services live under.
    #[arg(long, default_value = roster::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
}

impl std::ops::Deref for RegistryArgs {
    type Target = ConnectArgs;

    fn deref(&self) -> &ConnectArgs {
        &self.conn
    }
}

/// How to reach the registry; shared by every command that talks to one.
/// Flag names are etcdctl's. `Debug` never shows a password.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Registry endpoints, comma-separated (roster serve or etcd members);
    /// `https://` for TLS.
    #[arg(long, env = "ROSTER_ENDPOINTS", default_value = "127.0.0.1:2379", global = true)]
    pub endpoints: String,
    /// Timeout of each registry call, in seconds.
    #[arg(long, default_value_t = 5, global = true)]
    pub timeout: u64,
    /// CA certificate (PEM) to trust for `https://` endpoints; without it
    /// the system's roots are used.
    #[arg(long, env = "ROSTER_CACERT", global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one
    /// (`--client-cert-auth`); needs --key.
    // Own ids: `roster config` has a positional `key`.
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "ROSTER_CERT",
        global = true,
        value_name = "FILE",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "client_key",
        env = "ROSTER_KEY",
        global = true,
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// etcd user, `name` or `name:password`. Without a password it is read
    /// from --password-file, or asked for at a terminal.
    #[arg(long, env = "ROSTER_USER", hide_env_values = true, global = true, value_name = "NAME[:PASSWORD]")]
    pub user: Option<UserArg>,
    /// File whose first line is the password of --user.
    #[arg(long, env = "ROSTER_PASSWORD_FILE", global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `--user name[:password]`; `Debug` shows the name only.
#[derive(Clone)]
pub struct UserArg {
    name: String,
    password: Option<String>,
}

impl std::fmt::Debug for UserArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<redacted>");
        f.debug_struct("UserArg").field("name", &self.name).field("password", &password).finish()
    }
}

impl std::str::FromStr for UserArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, password) = roster::client::Credentials::split(s);
        if name.is_empty() {
            return Err("the user name is empty; use --user name or --user name:password".into());
        }
        Ok(UserArg { name: name.to_owned(), password: password.map(str::to_owned) })
    }
}

impl ConnectArgs {
    pub fn client(&self) -> Result<Client> {
        Client::new(self.client_config()?).with_context(|| format!("bad --endpoints {:?}", self.endpoints))
    }

    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut cfg = ClientConfig::from_list(&self.endpoints);
        cfg.request_timeout = Duration::from_secs(self.timeout.max(1));
        if self.cacert.is_some() || self.cert.is_some() {
            cfg.tls =
                Some(ClientConfig::tls_from_files(self.cacert.as_deref(), self.cert.as_deref(), self.key.as_deref())?);
        }
        if let Some(user) = &self.user {
            let password = match (&user.password, &self.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => read_password_file(path)?,
                (None, None) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    rpassword::prompt_password(format!("Password of {}: ", user.name))
                        .context("cannot read the password")?
                }
                (None, None) => bail!(
                    "--user {} has no password: give --user {}:PASSWORD or --password-file FILE, or run at a terminal to be asked",
                    user.name,
                    user.name
                ),
            };
            cfg.credentials = Some(roster::client::Credentials::new(user.name.clone(), password));
        }
        Ok(cfg)
    }
}

/// The first line of `path`, without its line ending.
fn read_password_file(path: &std::path::Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --password-file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

impl RegistryArgs {
    fn registry(&self) -> Result<Registry> {
        Ok(Registry::new(self.client()?).with_prefix(self.prefix.clone()))
    }
}

/// Keep an instance registered until stopped (Ctrl-C or SIGTERM withdraws it at once).
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Service name, e.g. `hello`.
    pub service: String,
    /// Address callers connect to, `host:port`.
    pub addr: String,
    /// Lease TTL in seconds: how long a dead instance stays listed.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Instance id (default: the address).
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub weight: u32,
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Version of the service build, e.g. `1.4.2`.
    #[arg(long, default_value = "")]
    pub service_version: String,
    /// Protocol spoken at the address, e.g. `grpc` or `http`.
    #[arg(long, default_value = "")]
    pub protocol: String,
    /// A tag; repeat for more.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Free metadata `k=v`; repeat for more.
    #[arg(long = "meta", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Active health check: `http://host:port/path`, `tcp://host:port` or
    /// `grpc://host:port[/service]`. The instance is registered once it
    /// passes and withdrawn while it fails.
    #[arg(long)]
    pub check: Option<String>,
    /// Seconds between health checks.
    #[arg(long, default_value_t = health::DEFAULT_INTERVAL.as_secs())]
    pub check_interval: u64,
    /// Seconds one health check may take before it counts as failed.
    #[arg(long, default_value_t = health::DEFAULT_TIMEOUT.as_secs())]
    pub check_timeout: u64,
    /// Passes in a row that restore a withdrawn instance.
    #[arg(long, default_value_t = health::DEFAULT_RISE)]
    pub check_rise: u32,
    /// Failures in a row that withdraw the instance.
    #[arg(long, default_value_t = health::DEFAULT_FALL)]
    pub check_fall: u32,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// List services and their instances, with the lease TTL remaining.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this service.
    pub service: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Print a service's instances, then every change as it happens.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    pub service: String,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected k=v, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

// === register ===

pub async fn register(args: RegisterArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut inst = Instance::new(&args.service, &args.addr).with_weight(args.weight).with_zone(&args.zone);
    inst.id = args.id.clone().unwrap_or_else(|| args.addr.clone());
    inst.version = args.service_version.clone();
    inst.protocol = args.protocol.clone();
    inst.tags = args.tags.clone();
    inst.meta = args.meta.iter().cloned().collect();
    inst.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let check = match args.check.as_deref() {
        Some(url) => {
            let check = HealthCheck::new(Check::parse(url).map_err(|e| anyhow::anyhow!("--{e}"))?)
                .with_interval(Duration::from_secs(args.check_interval.max(1)))
                .with_timeout(Duration::from_secs(args.check_timeout.max(1)))
                .with_rise(args.check_rise)
                .with_fall(args.check_fall);
            check.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(check)
        }
        None => None,
    };
    if args.ttl < 2 {
        bail!("--ttl must be at least 2 seconds (etcd's minimum lease TTL)");
    }
    let registry = args.registry.registry()?.with_ttl(Duration::from_secs(args.ttl));

    let reg = match check {
        Some(check) => registry.register_checked(inst, check).await?,
        None => registry.register(inst).await?,
    };
    eprintln!("registering {} at {} (ttl {}s) on {}", reg.key(), args.addr, args.ttl, args.registry.endpoints);
    let mut status = reg.status();
    tokio::pin!(shutdown);
    print_status(&status.borrow_and_update());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = status.changed() => {
                if changed.is_err() { break }
                print_status(&status.borrow_and_update());
            }
        }
    }
    eprintln!("stopping: revoking the lease");
    reg.deregister().await.context("could not deregister; the key expires with its lease")?;
    Ok(())
}

fn print_status(s: &RegistrationStatus) {
    match s {
        RegistrationStatus::Registering => eprintln!("status: registering"),
        RegistrationStatus::Registered { lease } => eprintln!("status: registered (lease {lease:x})"),
        RegistrationStatus::Lost { reason } => eprintln!("status: lost ({reason}); registering again"),
        RegistrationStatus::Paused => eprintln!("status: withdrawn (paused or drained; the lease is kept)"),
        RegistrationStatus::Unhealthy { reason } => eprintln!("status: withdrawn, health check fails ({reason})"),
        RegistrationStatus::Deregistered => eprintln!("status: deregistered"),
        other => eprintln!("status: {other:?}"),
    }
}

// === ls ===

pub async fn ls(args: LsArgs) -> Result<()> {
    let client = args.registry.client()?;
    let prefix = format!("{}/", args.registry.prefix.trim_end_matches('/'));
    let dir = match &args.service {
        Some(s) => format!("{prefix}{s}/"),
        None => prefix.clone(),
    };
    let end = roster_api::range::prefix_end(dir.as_bytes());
    let resp = client
        .range(roster_api::etcdserverpb::RangeRequest {
            key: dir.clone().into(),
            range_end: end.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot list {dir} on {}", args.registry.endpoints))?;
    let mut ttls: BTreeMap<i64, i64> = BTreeMap::new();
    let mut rows = Vec::new();
    for kv in &resp.kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let Some((service, id)) = key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else { continue };
        match Instance::from_value(service, id, &kv.value) {
            Ok(inst) => {
                if kv.lease != 0 && !ttls.contains_key(&kv.lease) {
                    let ttl = client.lease_time_to_live(kv.lease, false).await.map(|r| r.ttl).unwrap_or(-1);
                    ttls.insert(kv.lease, ttl);
                }
                rows.push((inst, kv.lease));
            }
            Err(e) => eprintln!("warning: skipping {key}: {e}"),
        }
    }
    let ttl_of = |lease: i64| if lease == 0 { None } else { ttls.get(&lease).copied() };
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(i, lease)| {
                let mut v = serde_json::to_value(i).expect("serializable");
                v["lease"] = serde_json::json!(format!("{lease:x}"));
                v["ttl_remaining"] = serde_json::json!(ttl_of(*lease));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("no instances under {dir}");
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<22} {:>6} {:<8} {:<8} {:>5}",
        "SERVICE", "ID", "ADDR", "WEIGHT", "ZONE", "VERSION", "TTL"
    );
    for (i, lease) in &rows {
        let ttl = ttl_of(*lease).map_or("-".to_owned(), |t| format!("{t}s"));
        println!(
            "{:<20} {:<24} {:<22} {:>6} {:<8} {:<8} {:>5}",
            i.service, i.id, i.addr, i.weight, i.zone, i.version, ttl
        );
    }
    Ok(())
}

// === watch ===

pub async fn watch(args: WatchArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let registry = args.registry.registry()?;
    let d = registry.discover(&args.service);
    let mut changes = Box::pin(d.changes());
    tokio::pin!(shutdown);
    tokio::select! {
        _ = d.ready() => {}
        _ = &mut shutdown => return Ok(()),
        _ = tokio::time::sleep(Duration::from_secs(args.registry.timeout.max(1))) => {
            eprintln!("warning: no answer from {} yet; still trying", args.registry.endpoints);
            d.ready().await;
        }
    }
    // Changes before `ready` describe the first list; print it as a whole.
    let snap = d.snapshot();
    if !args.json {
        eprintln!("{} instance(s) of {} at revision {}", snap.instances.len(), args.service, snap.revision);
    }
    for i in snap.instances.values() {
        print_change(&Change::Added(i.clone()), args.json);
    }
    let mut seen_first = snap.instances.clone();
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            c = changes.next() => {
                let Some(c) = c else { return Ok(()) };
                // Skip replays of the first list already printed.
                if let Change::Added(i) = &c && seen_first.remove(&i.id).as_ref() == Some(i) {
                    continue;
                }
                seen_first.clear();
                print_change(&c, args.json);
            }
        }
    }
}

fn print_change(c: &Change, json: bool) {
    let (sign, kind, i) = match c {
        Change::Added(i) => ('+', "added", i),
        Change::Updated(i) => ('~', "updated", i),
        Change::Removed(i) => ('-', "removed", i),
    };
    if json {
        println!("{}", serde_json::json!({"change": kind, "instance": i}));
    } else {
        println!("{sign} {}/{} {} weight={} zone={}", i.service, i.id, i.addr, i.weight, i.zone);
    }
}

#[cfg(test)]
mod connect_tests {
    use super::*;

    #[test]
    fn user_arg_debug_hides_the_password() {
        let u: UserArg = "svc:s3cret".parse().unwrap();
        let text = format!("{u:?}");
        assert!(!text.contains("s3cret") && text.contains("svc"), "{text}");
        assert!("".parse::<UserArg>().is_err());
        assert!(":pw".parse::<UserArg>().is_err());
    }

    #[test]
    fn password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "pw with spaces\r\nsecond\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap(), "pw with spaces");
    }
}
