//! Server processes: real etcd and `roster serve`, each on free loopback
//! ports, each killed by its own PID when dropped.

use crate::START_TIMEOUT;
use crate::tools::{free_port, which};
use roster_api::etcdserverpb::StatusRequest;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

/// How many times a start is retried when a freshly picked port was taken
/// by someone else in the meantime.
pub(crate) const PORT_RETRIES: usize = 3;

/// A spawned server. Dropping it kills the process by its PID and reaps it.
pub(crate) struct Proc {
    child: Child,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open log {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        Ok(Proc { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL (by PID) and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === impl Drop for Proc ===

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The output a server wrote, for failure messages.
#[derive(Debug, Clone)]
pub struct ServerLog {
    pub(crate) path: PathBuf,
}

impl ServerLog {
    /// The whole log.
    pub fn read(&self) -> String {
        std::fs::read(&self.path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let all = self.read();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a server did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, when the process exited (rather than hung).
    pub status: Option<std::process::ExitStatus>,
    /// Everything the process wrote to stdout and stderr.
    pub log: String,
    pub reason: String,
}

impl StartFailure {
    pub(crate) fn port_taken(&self) -> bool {
        self.log.contains("address already in use") || self.log.contains("Address already in use")
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (status {:?}); log:\n{}", self.reason, self.status, self.log)
    }
}

/// A lazily connecting channel to `127.0.0.1:port`.
pub(crate) fn channel_to(endpoint: &str) -> Channel {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Waits (bounded) until the log, past byte `from`, holds `line`; fails
/// early when the process exits.
pub(crate) async fn wait_logged(proc: &mut Proc, line: &str, from: usize, log: &ServerLog) -> Result<(), StartFailure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err(StartFailure { status: Some(status), log: log.read(), reason: "exited during start".into() });
        }
        if log.read().get(from..).is_some_and(|l| l.contains(line)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StartFailure {
                status: None,
                log: log.read(),
                reason: format!("no {line:?} in the log within {START_TIMEOUT:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the server answers a linearizable Range, and fails
/// early when the process exits.
pub(crate) async fn wait_ready(proc: &mut Proc, endpoint: &str, log: &ServerLog) -> Result<Channel, StartFailure> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_err = String::new();
    loop {
        if let Some(status) = proc.exited() {
            return Err(StartFailure { status: Some(status), log: log.read(), reason: "exited during start".into() });
        }
        if Instant::now() > deadline {
            return Err(StartFailure {
                status: None,
                log: log.read(),
                reason: format!("no answer on {endpoint} within {START_TIMEOUT:?}; last error: {last_err}"),
            });
        }
        let channel = channel_to(endpoint);
        // Status needs no credentials, so a server with auth on is ready
        // as soon as it answers.
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let probe = maintenance.status(StatusRequest {});
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(_)) => return Ok(channel),
            // With auth on, an anonymous probe is refused, by a server that
            // is up.
            Ok(Err(status)) if status.message() == "etcdserver: user name is empty" => return Ok(channel),
            Ok(Err(status)) => last_err = format!("{status:?}"),
            Err(_) => last_err = "probe timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The etcd binary on PATH.
pub(crate) fn etcd_bin() -> Result<PathBuf, StartFailure> {
    which("etcd").ok_or_else(|| StartFailure { status: None, log: String::new(), reason: "etcd not on PATH".into() })
}

/// A real single-member etcd on free loopback ports, in a temporary data
/// directory. Killed by its PID when dropped.
pub struct Etcd {
    client_port: u16,
    /// The HTTPS client port, for [`Etcd::try_start_tls`].
    tls_port: Option<u16>,
    channel: Channel,
    log: ServerLog,
    proc: Proc,
    /// The flags it was started with, for [`Etcd::restart`].
    argv: Vec<std::ffi::OsString>,
    _dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers. Panics (with etcd's log) when
    /// it does not come up; call [`crate::require_etcd`] first to skip when
    /// etcd is not installed.
    pub async fn start() -> Etcd {
        Self::try_start().await.unwrap_or_else(|e| panic!("etcd did not start: {e}"))
    }

    pub async fn try_start() -> Result<Etcd, StartFailure> {
        Self::try_start_with_args(&[]).await
    }

    /// As [`Etcd::start`], with extra etcd flags such as
    /// `--quota-backend-bytes=1048576`.
    pub async fn start_with_args(args: &[&str]) -> Etcd {
        Self::try_start_with_args(args).await.unwrap_or_else(|e| panic!("etcd did not start: {e}"))
    }

    pub async fn try_start_with_args(args: &[&str]) -> Result<Etcd, StartFailure> {
        Self::try_start_inner(args, false).await
    }

    /// As [`Etcd::try_start_with_args`] with TLS `args` (`--cert-file`,
    /// `--key-file`, ...): etcd serves HTTPS on [`Etcd::tls_endpoint`]
    /// besides its plaintext port.
    pub async fn try_start_tls(args: &[&str]) -> Result<Etcd, StartFailure> {
        Self::try_start_inner(args, true).await
    }

    /// `https://127.0.0.1:PORT`, for etcd started with TLS.
    pub fn tls_endpoint(&self) -> Option<String> {
        self.tls_port.map(|p| format!("https://127.0.0.1:{p}"))
    }

    async fn try_start_inner(args: &[&str], tls: bool) -> Result<Etcd, StartFailure> {
        let bin = etcd_bin()?;
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let dir = tempfile::Builder::new().prefix("roster-testkit-etcd").tempdir().expect("tempdir");
            let (client_port, peer_port) = (free_port(), free_port());
            let tls_port = tls.then(free_port);
            let client = format!("http://127.0.0.1:{client_port}");
            let listen = match tls_port {
                Some(p) => format!("{client},https://127.0.0.1:{p}"),
                None => client.clone(),
            };
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new(&bin);
            cmd.current_dir(dir.path())
                .arg("--name=testkit")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={listen}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=testkit={peer}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .args(args)
                // Never touch anything but loopback, never phone home.
                .env_remove("ETCD_DISCOVERY")
                .env_remove("ETCD_LISTEN_METRICS_URLS");
            let log = ServerLog { path: dir.path().join("etcd.log") };
            let argv: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
            let mut proc = Proc::spawn(cmd, &log.path).map_err(|reason| StartFailure {
                status: None,
                log: String::new(),
                reason,
            })?;
            let endpoint = format!("127.0.0.1:{client_port}");
            match wait_ready(&mut proc, &endpoint, &log).await {
                Ok(channel) => {
                    return Ok(Etcd { client_port, tls_port, channel, log, proc, argv, _dir: dir });
                }
                Err(e) if e.port_taken() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Kills etcd by its PID and starts it again on the same data dir and
    /// ports (as after a crash: leases and data survive, simple auth tokens
    /// do not). Panics when it does not come back.
    pub async fn restart(&mut self) {
        self.proc.kill();
        let bin = etcd_bin().expect("etcd on PATH");
        let mut cmd = Command::new(&bin);
        cmd.current_dir(self._dir.path()).args(&self.argv);
        self.proc = Proc::spawn(cmd, &self.log.path).unwrap_or_else(|e| panic!("etcd restart: {e}"));
        let endpoint = self.endpoint();
        self.channel = wait_ready(&mut self.proc, &endpoint, &self.log)
            .await
            .unwrap_or_else(|e| panic!("etcd did not restart: {e}"));
    }

    /// `127.0.0.1:PORT`, as etcdctl's `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// A connected channel (cheap to clone).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> &ServerLog {
        &self.log
    }
}

enum DataDir {
    Temp(TempDir),
    Given(PathBuf),
    InMemory,
}

/// A `roster serve` process on free loopback ports. Its data lives in a
/// temporary directory, a directory the test gives (for restarts), or in
/// memory. Killed by its PID when dropped.
pub struct Roster {
    bin: PathBuf,
    data: DataDir,
    client_port: u16,
    http_port: u16,
    /// Logs of every start, appended; outlives restarts.
    log: ServerLog,
    proc: Option<Proc>,
    channel: Option<Channel>,
    /// Appended to `roster serve ...` on every start.
    extra_args: Vec<String>,
    /// Started with TLS flags: readiness is read from the log, and there is
    /// no plaintext channel.
    tls: bool,
    _log_dir: TempDir,
}

impl Roster {
    /// `roster serve` with a fresh temporary data dir.
    pub async fn start(bin: impl AsRef<Path>) -> Roster {
        let dir = tempfile::Builder::new().prefix("roster-testkit-data").tempdir().expect("tempdir");
        Self::start_with(bin.as_ref(), DataDir::Temp(dir)).await
    }

    /// `roster serve --in-memory`.
    pub async fn start_in_memory(bin: impl AsRef<Path>) -> Roster {
        Self::start_with(bin.as_ref(), DataDir::InMemory).await
    }

    /// `roster serve` on a data dir the caller owns (kept after drop).
    pub async fn start_in(bin: impl AsRef<Path>, data_dir: impl Into<PathBuf>) -> Roster {
        Self::start_with(bin.as_ref(), DataDir::Given(data_dir.into())).await
    }

    /// As [`Roster::start_in`], but a server that refuses to start is an
    /// `Err` carrying its exit status and output rather than a panic.
    pub async fn try_start_in(bin: impl AsRef<Path>, data_dir: impl Into<PathBuf>) -> Result<Roster, StartFailure> {
        let mut r = Self::unstarted(bin.as_ref(), DataDir::Given(data_dir.into()));
        r.spawn_and_wait().await?;
        Ok(r)
    }

    /// As [`Roster::try_start_in`], with extra `roster serve` arguments
    /// (kept for restarts), such as `--repair-wal`.
    pub async fn try_start_in_with_args(
        bin: impl AsRef<Path>,
        data_dir: impl Into<PathBuf>,
        args: &[&str],
    ) -> Result<Roster, StartFailure> {
        let mut r = Self::unstarted(bin.as_ref(), DataDir::Given(data_dir.into()));
        r.extra_args = args.iter().map(|a| a.to_string()).collect();
        r.spawn_and_wait().await?;
        Ok(r)
    }

    /// `roster serve --in-memory` with TLS `args` (`--cert-file` ...,
    /// passed after `--listen`). Ready once it logs that it serves; it has
    /// no [`Roster::channel`].
    pub async fn try_start_tls(bin: impl AsRef<Path>, args: &[&str]) -> Result<Roster, StartFailure> {
        let mut r = Self::unstarted(bin.as_ref(), DataDir::InMemory);
        r.extra_args = args.iter().map(|a| a.to_string()).collect();
        r.tls = true;
        r.spawn_and_wait().await?;
        Ok(r)
    }

    async fn start_with(bin: &Path, data: DataDir) -> Roster {
        let mut r = Self::unstarted(bin, data);
        if let Err(e) = r.spawn_and_wait().await {
            panic!("roster serve did not start: {e}");
        }
        r
    }

    fn unstarted(bin: &Path, data: DataDir) -> Roster {
        let log_dir = tempfile::Builder::new().prefix("roster-testkit-log").tempdir().expect("tempdir");
        Roster {
            bin: bin.to_owned(),
            data,
            client_port: free_port(),
            http_port: free_port(),
            log: ServerLog { path: log_dir.path().join("roster.log") },
            proc: None,
            channel: None,
            extra_args: Vec::new(),
            tls: false,
            _log_dir: log_dir,
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        let mut last = None;
        for attempt in 0..PORT_RETRIES {
            if attempt > 0 {
                // The ports were taken: pick new ones.
                self.client_port = free_port();
                self.http_port = free_port();
            }
            let mut cmd = Command::new(&self.bin);
            cmd.arg("serve")
                .arg("--listen")
                .arg(self.endpoint())
                .arg("--http")
                .arg(format!("127.0.0.1:{}", self.http_port));
            match &self.data {
                DataDir::Temp(d) => {
                    cmd.arg("--data-dir").arg(d.path());
                }
                DataDir::Given(p) => {
                    cmd.arg("--data-dir").arg(p);
                }
                DataDir::InMemory => {
                    cmd.arg("--in-memory");
                }
            }
            cmd.args(&self.extra_args);
            let before = self.log.read().len();
            let mut proc = Proc::spawn(cmd, &self.log.path).map_err(|reason| StartFailure {
                status: None,
                log: String::new(),
                reason,
            })?;
            let ready = if self.tls {
                wait_logged(&mut proc, "roster serving", before, &self.log).await.map(|()| None)
            } else {
                wait_ready(&mut proc, &self.endpoint(), &self.log).await.map(Some)
            };
            match ready {
                Ok(channel) => {
                    self.proc = Some(proc);
                    self.channel = channel;
                    return Ok(());
                }
                Err(mut e) => {
                    // Only this start's output counts for the port check.
                    e.log = e.log.get(before.min(e.log.len())..).unwrap_or_default().to_owned();
                    if e.port_taken() {
                        last = Some(e);
                        continue;
                    }
                    e.log = self.log.read();
                    return Err(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// SIGKILL the server by its PID (a crash), and reap it. The data dir
    /// stays for [`Roster::restart`].
    pub fn kill_9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.channel = None;
    }

    /// Starts the server again on the same data dir (and, if still free, the
    /// same ports); kills the running one first. Panics when it does not
    /// come up.
    pub async fn restart(&mut self) {
        if let Err(e) = self.try_restart().await {
            panic!("roster serve did not restart: {e}");
        }
    }

    pub async fn try_restart(&mut self) -> Result<(), StartFailure> {
        self.kill_9();
        self.spawn_and_wait().await
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// `127.0.0.1:PORT` of the etcd API.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` of the etcd API.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// `http://127.0.0.1:PORT` of the health/metrics side.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A connected channel (cheap to clone). Panics when the server is not
    /// running.
    pub fn channel(&self) -> Channel {
        self.channel.clone().expect("roster is not running")
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The data dir; `None` for `--in-memory`.
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.data {
            DataDir::Temp(d) => Some(d.path()),
            DataDir::Given(p) => Some(p),
            DataDir::InMemory => None,
        }
    }

    pub fn log(&self) -> &ServerLog {
        &self.log
    }
}
