//! A real 3-member etcd cluster on loopback, for failover tests: members
//! can be killed (`SIGKILL`), stopped and resumed (`SIGSTOP`/`SIGCONT`,
//! which looks like a partition: connections stay open and nothing
//! answers), and restarted on their data dirs.

use crate::START_TIMEOUT;
use crate::server::{PORT_RETRIES, Proc, ServerLog, StartFailure, channel_to, etcd_bin, wait_ready};
use crate::tools::free_port;
use roster_api::etcdserverpb::StatusRequest;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How many members a cluster has.
pub const CLUSTER_SIZE: usize = 3;

/// Raft timing (etcd's defaults, stated because the failover tests' time
/// limits depend on them): a silent leader is replaced after 1-2 s.
const HEARTBEAT_MS: u32 = 100;
const ELECTION_MS: u32 = 1000;

/// A limit on one Status probe; a stopped member never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    /// Every start of this member, appended.
    log: ServerLog,
    /// Raft member id, as `Status` reports it (`header.member_id`).
    id: u64,
    proc: Option<Proc>,
    stopped: bool,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn running(&self) -> bool {
        self.proc.is_some() && !self.stopped
    }
}

/// Three etcd members on free loopback ports, each in its own temporary
/// data dir, with short raft timeouts so that failover takes about a
/// second. Every member is killed by its PID on drop.
pub struct EtcdCluster {
    bin: PathBuf,
    token: String,
    members: Vec<Member>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts the cluster and waits until every member answers a
    /// linearizable read. Panics (with every member's log) when it does not
    /// come up; call [`crate::require_etcd`] first to skip when etcd is not
    /// installed.
    pub async fn start() -> EtcdCluster {
        Self::try_start().await.unwrap_or_else(|e| panic!("etcd cluster did not start: {e}"))
    }

    pub async fn try_start() -> Result<EtcdCluster, StartFailure> {
        let bin = etcd_bin()?;
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let mut cluster = Self::unstarted(&bin);
            match cluster.boot().await {
                Ok(()) => return Ok(cluster),
                // Dropping the cluster kills the members that did start.
                Err(e) if e.port_taken() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn unstarted(bin: &Path) -> EtcdCluster {
        let dir = tempfile::Builder::new().prefix("roster-testkit-etcd-cluster").tempdir().expect("tempdir");
        // Distinct ports: `free_port` alone may hand out one twice.
        let mut ports = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < 2 * CLUSTER_SIZE {
            let p = free_port();
            if ports.insert(p) {
                order.push(p);
            }
        }
        let members = (0..CLUSTER_SIZE)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: order[2 * i],
                peer_port: order[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.data")),
                log: ServerLog { path: dir.path().join(format!("m{i}.log")) },
                id: 0,
                proc: None,
                stopped: false,
            })
            .collect();
        EtcdCluster {
            bin: bin.to_owned(),
            token: format!("roster-testkit-{}-{}", std::process::id(), order[0]),
            members,
            _dir: dir,
        }
    }

    /// Spawns every member, then waits for each; a cluster answers only
    /// once a majority is up, so the members are spawned before any wait.
    async fn boot(&mut self) -> Result<(), StartFailure> {
        for i in 0..CLUSTER_SIZE {
            self.spawn(i, "new")?;
        }
        for i in 0..CLUSTER_SIZE {
            self.wait_member(i).await?;
        }
        for i in 0..CLUSTER_SIZE {
            let status = self.status(i).await.map_err(|reason| StartFailure {
                status: None,
                log: self.logs(40),
                reason: format!("member {i} did not answer Status after start: {reason}"),
            })?;
            self.members[i].id = status.header.map_or(0, |h| h.member_id);
        }
        Ok(())
    }

    fn command(&self, i: usize, state: &str) -> Command {
        let m = &self.members[i];
        let client = format!("http://{}", m.endpoint());
        let initial = self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self._dir.path())
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            .arg("--logger=zap")
            // Leader changes are logged at info: the story of a failure.
            .arg("--log-level=info")
            // Never touch anything but loopback, never phone home.
            .env_remove("ETCD_DISCOVERY")
            .env_remove("ETCD_LISTEN_METRICS_URLS");
        cmd
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), StartFailure> {
        let cmd = self.command(i, state);
        let proc = Proc::spawn(cmd, &self.members[i].log.path).map_err(|reason| StartFailure {
            status: None,
            log: String::new(),
            reason,
        })?;
        let m = &mut self.members[i];
        m.proc = Some(proc);
        m.stopped = false;
        Ok(())
    }

    async fn wait_member(&mut self, i: usize) -> Result<(), StartFailure> {
        let m = &mut self.members[i];
        let endpoint = m.endpoint();
        let log = m.log.clone();
        let proc = m.proc.as_mut().expect("spawned");
        wait_ready(proc, &endpoint, &log).await.map(|_| ()).map_err(|mut e| {
            e.reason = format!("member {i} ({endpoint}): {}", e.reason);
            e
        })
    }

    async fn status(&self, i: usize) -> Result<roster_api::etcdserverpb::StatusResponse, String> {
        let mut client = MaintenanceClient::new(self.channel(i));
        match tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{s:?}")),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// The member every running member (neither killed nor stopped) names
    /// as leader, once they agree and that leader is itself running. Waits
    /// (bounded by [`START_TIMEOUT`]) for such a leader, so after a kill or
    /// a stop it returns the new leader. Panics with the logs when there is
    /// none.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for i in (0..CLUSTER_SIZE).filter(|&i| self.members[i].running()) {
                seen.push((i, self.status(i).await.map(|s| s.leader)));
            }
            let agreed = seen
                .first()
                .and_then(|(_, l)| l.clone().ok())
                .filter(|l| *l != 0 && seen.iter().all(|(_, other)| other.as_ref().ok() == Some(l)));
            let leader = agreed
                .and_then(|id| (0..CLUSTER_SIZE).find(|&j| self.members[j].id == id && self.members[j].running()));
            if let Some(j) = leader {
                return j;
            }
            if Instant::now() > deadline {
                panic!("no agreed, running etcd leader within {START_TIMEOUT:?}: {seen:?}\n{}", self.logs(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SIGKILL` member `i` by its PID (a crash) and reap it. Its data dir
    /// stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
        self.members[i].stopped = false;
    }

    /// `SIGSTOP` member `i` by its PID: it keeps its sockets open and
    /// answers nothing, like a member behind a network partition.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.members[i].stopped = true;
    }

    /// `SIGCONT` a member [`stop`](Self::stop)ped before.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.members[i].stopped = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.pid(i).unwrap_or_else(|| panic!("member {i} is not running"));
        let ok = Command::new("kill").arg(signal).arg(pid.to_string()).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid} (member {i}) failed");
    }

    /// Starts member `i` again on its data dir and ports, as a member of
    /// the existing cluster (killing it first if it runs), and waits until
    /// it answers a linearizable read. Panics with its log when it does not.
    pub async fn restart(&mut self, i: usize) {
        if self.members[i].stopped {
            self.resume(i);
        }
        self.kill(i);
        let started = async {
            self.spawn(i, "existing")?;
            self.wait_member(i).await
        };
        if let Err(e) = started.await {
            panic!("etcd member {i} did not restart: {e}");
        }
    }

    /// `127.0.0.1:PORT` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `127.0.0.1:PORT` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// A lazily connecting channel to member `i`.
    pub fn channel(&self, i: usize) -> Channel {
        channel_to(&self.members[i].endpoint())
    }

    /// The raft member id of member `i`.
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// The PID of member `i`, unless it was killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.as_ref().map(Proc::pid)
    }

    /// Member `i` is neither killed nor stopped.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].running()
    }

    pub fn log(&self, i: usize) -> &ServerLog {
        &self.members[i].log
    }

    /// The last `n` lines of every member's log, for failure messages.
    pub fn logs(&self, n: usize) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("--- member {i} ({}) ---\n{}", m.endpoint(), m.log.tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// === impl Drop for EtcdCluster ===

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..CLUSTER_SIZE {
            // A stopped process dies of SIGKILL too, but let it run first
            // so it goes the ordinary way.
            if let (true, Some(pid)) = (self.members[i].stopped, self.pid(i)) {
                let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
            }
            self.kill(i);
        }
    }
}
