//! The testkit leaves no process behind.

use roster_testkit::{Etcd, EtcdCluster, Etcdctl, require_etcd, require_etcdctl};
use std::time::{Duration, Instant};

/// Running (not exited, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_etcd_kills_it() {
    if require_etcd().is_none() {
        return;
    }
    let etcd = Etcd::start().await;
    let pid = etcd.pid();
    assert!(alive(pid));
    assert!(etcd.endpoint().starts_with("127.0.0.1:"));
    drop(etcd);
    // Drop kills and reaps synchronously.
    assert!(!alive(pid), "etcd {pid} survived its handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_runs_and_background_runs_die_with_their_handle() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let etcd = Etcd::start().await;
    let ctl = Etcdctl::new(etcd.endpoint());
    assert_eq!(ctl.run(&["put", "k", "v"]).await.ok().lines(), ["OK"]);
    // From revision 2 (the put above), however late the watch starts.
    let mut watch = ctl.spawn(&["watch", "k", "--rev", "2"]);
    let pid = watch.pid().expect("running");
    assert_eq!(watch.expect_lines(3, Duration::from_secs(10)).await, ["PUT", "k", "v"]);
    drop(watch);
    assert!(gone_within(pid, Duration::from_secs(5)).await, "etcdctl {pid} survived its handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_fails_over_and_dropping_it_kills_every_member_even_a_stopped_one() {
    if require_etcd().is_none() {
        return;
    }
    let mut cluster = EtcdCluster::start().await;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints.iter().collect::<std::collections::BTreeSet<_>>().len(), 3);
    let leader = cluster.leader().await;
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).expect("running")).collect();

    // A killed leader is replaced, and comes back as a member.
    cluster.kill(leader);
    assert!(!alive(pids[leader]), "killed by its PID and reaped");
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    cluster.restart(leader).await;
    assert!(cluster.is_running(leader));

    // A stopped member is passed over, and dropped cleanly.
    cluster.stop(next);
    assert!(!cluster.is_running(next));
    assert_ne!(cluster.leader().await, next);
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).expect("running")).collect();
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "etcd member {pid} survived its cluster handle");
    }
}
