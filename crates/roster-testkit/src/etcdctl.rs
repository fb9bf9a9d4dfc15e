//! Running the real `etcdctl` (v3 API) against one endpoint.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// What one `etcdctl` run printed, and how it exited.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub args: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The output, or a panic that shows the command and everything it said.
    #[track_caller]
    pub fn ok(self) -> CtlOutput {
        assert!(
            self.success(),
            "etcdctl {:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The run is expected to fail; returns it for checks on stderr.
    #[track_caller]
    pub fn err(self) -> CtlOutput {
        assert!(!self.success(), "etcdctl {:?} succeeded but should have failed:\nstdout:\n{}", self.args, self.stdout);
        self
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// stdout parsed as a JSON document, for `-w json`.
    #[track_caller]
    pub fn json<T: std::str::FromStr>(&self) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("etcdctl {:?}: not JSON ({e:?}):\n{}", self.args, self.stdout))
    }
}

/// Runs `etcdctl --endpoints=<endpoint> ...` with `ETCDCTL_API=3`.
#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoint: String,
    timeout: Duration,
}

impl Etcdctl {
    /// `endpoint` is `127.0.0.1:PORT`.
    pub fn new(endpoint: impl Into<String>) -> Etcdctl {
        Etcdctl { endpoint: endpoint.into(), timeout: Duration::from_secs(20) }
    }

    /// Longest a foreground run may take before it is killed (default 20 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Etcdctl {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        // Only our settings: a developer's ETCDCTL_* must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=10s")
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion (bounded by the timeout; a hung run is killed and
    /// panics).
    pub async fn run(&self, args: &[&str]) -> CtlOutput {
        self.run_with_stdin(args, None).await
    }

    /// Runs with `stdin` fed in and closed (for `txn`).
    pub async fn run_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        self.run_with_stdin(args, Some(stdin)).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn etcdctl: {e}"));
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("piped stdin");
            w.write_all(input.as_bytes()).await.expect("write etcdctl stdin");
            drop(w);
        }
        let pid = child.id();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out.expect("wait for etcdctl");
                CtlOutput {
                    args: args.iter().map(|s| s.to_string()).collect(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    status: out.status,
                }
            }
            // The future owned the child (kill_on_drop): it is killed now.
            Err(_) => panic!("etcdctl {args:?} (pid {pid:?}) did not finish within {:?}", self.timeout),
        }
    }

    /// Starts a long-running command (`watch`, `lease keep-alive`, `lock`,
    /// `elect`). Its stdout is read line by line; it is killed by its PID
    /// when the [`Background`] is dropped.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn etcdctl: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        tokio::spawn(read_lines(child.stdout.take().expect("piped stdout"), Some(tx), None));
        tokio::spawn(read_lines(child.stderr.take().expect("piped stderr"), None, Some(stderr.clone())));
        Background { args: args.iter().map(|s| s.to_string()).collect(), child, lines, stderr, seen: Vec::new() }
    }
}

async fn read_lines(
    from: impl AsyncRead + Unpin,
    to: Option<mpsc::UnboundedSender<String>>,
    keep: Option<Arc<Mutex<String>>>,
) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(k) = &keep {
            let mut k = k.lock().unwrap();
            k.push_str(&line);
            k.push('\n');
        }
        if let Some(tx) = &to
            && tx.send(line).is_err()
        {
            return;
        }
    }
}

/// A running `etcdctl`, read line by line. Killed by its PID on drop.
pub struct Background {
    args: Vec<String>,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every stdout line handed out so far, for failure messages.
    seen: Vec<String>,
}

impl Background {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next stdout line, or `None` on timeout or end of output.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(l)) => {
                self.seen.push(l.clone());
                Some(l)
            }
            _ => None,
        }
    }

    /// The next stdout line; panics (with what was seen) on timeout.
    #[track_caller]
    pub fn expect_line(&mut self, timeout: Duration) -> impl std::future::Future<Output = String> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match self.next_line(timeout).await {
                Some(l) => l,
                None => panic!(
                    "{caller}: etcdctl {:?}: no line within {timeout:?}; stdout so far: {:?}; stderr: {}",
                    self.args,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// The next `n` stdout lines; panics on timeout (`timeout` is for all).
    pub async fn expect_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Some(l) => out.push(l),
                None => panic!(
                    "etcdctl {:?}: wanted {n} lines within {timeout:?}, got {out:?}; stderr: {}",
                    self.args,
                    self.stderr()
                ),
            }
        }
        out
    }

    /// Asserts that nothing is printed for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(l) = self.next_line(quiet).await {
            panic!("etcdctl {:?}: expected no output, got {l:?}", self.args);
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL by PID (a crash: nothing is cleaned up).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGTERM by PID (etcdctl cleans up: `elect` resigns, `lock` unlocks).
    pub fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }
}

// === impl Drop for Background ===

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}
