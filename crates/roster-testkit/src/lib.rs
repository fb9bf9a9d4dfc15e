//! Test support: real `etcd`, `etcdctl` and `roster serve` processes on
//! loopback.
//!
//! - [`Etcd`] and [`Roster`]: a server process on free `127.0.0.1` ports in
//!   its own temporary directory, started and waited for (bounded), and
//!   killed by its own PID on drop. Both hand out a connected tonic
//!   [`Channel`](tonic::transport::Channel).
//! - [`EtcdCluster`]: three etcd members on loopback whose members can be
//!   killed, stopped (`SIGSTOP`, partition-like), resumed and restarted,
//!   for failover tests.
//! - [`Etcdctl`]: runs the real `etcdctl` against an endpoint, with a
//!   timeout, or in the background ([`Background`]) for the commands that
//!   keep running (`watch`, `lease keep-alive`, `lock`, `elect`).
//! - [`TestCa`]: certificate authorities and certificates made with the
//!   real `openssl` command, for the TLS tests.
//! - [`InProcess`]: `roster serve` inside the test process, on loopback
//!   ports, with `/metrics` read by [`InProcess::metric`].
//! - [`eventually`]: the one bounded polling helper; [`http_get`] for the
//!   HTTP sides.
//! - [`require_etcd`] / [`require_etcdctl`]: skip loudly when the tools are
//!   missing, but never under `CI=true`.
//!
//! Every wait here is bounded and every process is stopped by its PID, so a
//! failing test leaves nothing behind.

mod cluster;
mod etcdctl;
mod inproc;
mod poll;
mod server;
mod tls;
mod tools;

pub use cluster::{CLUSTER_SIZE, EtcdCluster};
pub use etcdctl::{Background, CtlOutput, Etcdctl};
pub use inproc::InProcess;
pub use poll::{Outcome, eventually, eventually_or, http_get};
pub use server::{Etcd, Roster, ServerLog, StartFailure};
pub use tls::{Pair, TestCa};
pub use tools::{GOPATH, free_port, go_build, require_etcd, require_etcdctl, require_go, require_openssl, which};

/// How long a server may take to answer after it was spawned.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
