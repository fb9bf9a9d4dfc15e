//! Scenario 7, failover: a 3-member etcd cluster on loopback loses the
//! member that every client is connected to, either by `kill -9` of the
//! leader or by `SIGSTOP` (partition-like: the connections stay open and
//! nothing answers). No registration may be lost, every watcher keeps
//! receiving changes, and no watcher's list may ever shrink. The member
//! that comes back rejoins, and nothing is doubled.
//!
//! One thing the SDK cannot prevent: etcd before 3.4.31 / 3.5.13 lets a
//! leader that was stopped revoke, when it resumes, every lease it thinks
//! expired (etcd-io/etcd#15247). The test then checks that watchers report
//! only those real deletions, and that every instance registers again.
//!
//! Real processes only. Every wait has a deadline; the measured times are
//! printed (run with `--nocapture` to see them).

use roster::{Change, Client, ClientConfig, Discovery, Instance, Registration, RegistrationStatus, Registry};
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_api::etcdserverpb::{LeaseLeasesRequest, LeaseTimeToLiveRequest, RangeRequest, StatusRequest};
use roster_api::mvccpb::KeyValue;
use roster_testkit::{CLUSTER_SIZE, EtcdCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const SERVICE: &str = "failover";
const PREFIX: &str = "/services/failover/";
const INSTANCES: usize = 20;
const WATCHERS: usize = 5;
const TTL: Duration = Duration::from_secs(3);
/// From the fault until every watcher has seen a change made after it
/// (measured: 2-5 s; see the printed figures).
const CHANGE_LIMIT: Duration = Duration::from_secs(10);

/// One cluster at a time: three etcd members per test on two cores would
/// make raft timing, and so the measured failover, depend on the neighbours.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of the leader, which every client is connected to.
    KillLeader,
    /// `SIGSTOP` of the leader, which every client is connected to.
    StopLeader,
    /// `SIGSTOP` of a follower, which every client is connected to: no
    /// election, so only the clients can notice.
    StopFollower,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_loses_no_registration_and_watchers_keep_up() {
    failover(Fault::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_loses_no_registration_and_watchers_keep_up() {
    failover(Fault::StopLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_stopped_loses_no_registration_and_watchers_keep_up() {
    failover(Fault::StopFollower).await;
}

/// Locks and elections hang on a session lease; its keepalive must move
/// off a stopped member as a registration's does, long before the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_stopped_member() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = cluster().await else { return };
    let leader = cluster.leader().await;
    let target = (leader + 1) % CLUSTER_SIZE;
    let c = client(&first(&cluster, target));
    let session = roster::sync::Session::new(&c, TTL).await.unwrap();
    cluster.stop(target);
    let stopped_at = Instant::now();
    while stopped_at.elapsed() < 2 * TTL {
        assert!(!session.is_lost(), "session lost {:?} after its member was stopped", stopped_at.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lc = LeaseClient::new(cluster.channel(leader));
    let ttl = lc
        .lease_time_to_live(LeaseTimeToLiveRequest { id: session.lease(), keys: false })
        .await
        .unwrap()
        .into_inner()
        .ttl;
    assert!(ttl > 0, "the session's lease is gone (TTL {ttl})");
    session.close().await.unwrap();
    cluster.resume(target);
}

/// A lock waiter whose member is stopped while it waits still takes the
/// lock when the holder releases it: its watch for the holder's delete is
/// probed, moves to another member, and looks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_on_a_stopped_member_takes_the_lock_when_it_is_released() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = cluster().await else { return };
    let leader = cluster.leader().await;
    let target = (leader + 1) % CLUSTER_SIZE;
    let holder_client = client(&first(&cluster, leader));
    let holder_session = roster::sync::Session::new(&holder_client, TTL).await.unwrap();
    let held = roster::sync::Mutex::new(&holder_session, "/locks/failover").lock().await.unwrap();

    let waiter_client = client(&first(&cluster, target));
    let waiter = tokio::spawn(async move {
        let session = roster::sync::Session::new(&waiter_client, TTL).await.unwrap();
        let guard = roster::sync::Mutex::new(&session, "/locks/failover").lock().await;
        (guard.map(|g| g.token()), session)
    });
    // The waiter's own key is in place: it is waiting now.
    let mut kv = KvClient::new(cluster.channel(leader));
    let queued = Instant::now();
    loop {
        let req = RangeRequest {
            key: "/locks/failover/".into(),
            range_end: roster_api::range::prefix_end(b"/locks/failover/").into(),
            count_only: true,
            ..Default::default()
        };
        if kv.range(req).await.unwrap().into_inner().count == 2 {
            break;
        }
        assert!(queued.elapsed() < Duration::from_secs(10), "the waiter never queued for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop(target);
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holder_token = held.token();
    held.unlock().await.unwrap();
    let (token, session) = tokio::time::timeout(CHANGE_LIMIT, waiter)
        .await
        .unwrap_or_else(|_| {
            panic!("the waiter did not take the lock within {CHANGE_LIMIT:?} of the release; member stopped")
        })
        .unwrap();
    let token = token.expect("lock() failed instead of moving to another member");
    assert!(token > holder_token, "the waiter's token {token} is not newer than the holder's {holder_token}");
    println!("lock taken {:?} after the waiter's member was stopped", stopped_at.elapsed());
    assert!(!session.is_lost(), "the waiter's session was lost");
    cluster.resume(target);
}

async fn cluster() -> Option<EtcdCluster> {
    roster_testkit::require_etcd()?;
    Some(EtcdCluster::start().await)
}

/// Every member's endpoint, member `i`'s first, so that a client starts
/// (and stays) on it.
fn first(cluster: &EtcdCluster, i: usize) -> Vec<String> {
    let all = cluster.endpoints();
    (0..CLUSTER_SIZE).map(|k| all[(i + k) % CLUSTER_SIZE].clone()).collect()
}

/// A client on `endpoints` with the SDK's default timeouts.
fn client(endpoints: &[String]) -> Client {
    Client::new(ClientConfig::new(endpoints.iter().cloned())).unwrap()
}

fn ids(d: &Discovery) -> BTreeSet<String> {
    d.instances().into_iter().map(|i| i.id).collect()
}

fn id(k: usize) -> String {
    format!("i{k:02}")
}

/// The registry keys under the service, read directly from member `i` on a
/// fresh connection (linearizable), by instance id.
async fn read(cluster: &EtcdCluster, i: usize) -> Result<BTreeMap<String, KeyValue>, String> {
    let req = RangeRequest {
        key: PREFIX.into(),
        range_end: roster_api::range::prefix_end(PREFIX.as_bytes()).into(),
        ..Default::default()
    };
    let mut kv = KvClient::new(cluster.channel(i));
    match tokio::time::timeout(Duration::from_secs(2), kv.range(req)).await {
        Ok(Ok(r)) => Ok(r
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key[PREFIX.len()..]).into_owned(), kv))
            .collect()),
        Ok(Err(s)) => Err(format!("member {i}: {s:?}")),
        Err(_) => Err(format!("member {i}: no answer within 2 s")),
    }
}

/// [`roster_testkit::eventually`], with the cluster's logs on a timeout.
async fn eventually(
    cluster: &EtcdCluster,
    what: &str,
    limit: Duration,
    f: impl AsyncFnMut() -> Result<(), String>,
) -> Duration {
    roster_testkit::eventually_or(what, limit, f, || cluster.logs(30)).await
}

/// What the watchers went through while the fault lasted.
struct Monitor {
    /// The smallest list any watcher held.
    smallest: Arc<Mutex<usize>>,
    /// Every change each watcher emitted.
    changes: Vec<Arc<Mutex<Vec<Change>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    fn start(watchers: &[Discovery]) -> Monitor {
        let smallest = Arc::new(Mutex::new(usize::MAX));
        let mut tasks = Vec::new();
        let mut changes = Vec::new();
        for w in watchers {
            let log = Arc::new(Mutex::new(Vec::new()));
            let (mut stream, log2) = (w.changes(), log.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(c) = stream.next().await {
                    log2.lock().unwrap().push(c);
                }
            }));
            changes.push(log);
        }
        let (ws, min) = (watchers.to_vec(), smallest.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                for w in &ws {
                    let n = w.snapshot().instances.len();
                    let mut m = min.lock().unwrap();
                    *m = (*m).min(n);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        Monitor { smallest, changes, tasks }
    }

    fn stop(self) -> (usize, Vec<Vec<Change>>) {
        for t in &self.tasks {
            t.abort();
        }
        let smallest = *self.smallest.lock().unwrap();
        (smallest, self.changes.iter().map(|c| c.lock().unwrap().clone()).collect())
    }
}

async fn failover(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = cluster().await else { return };
    let leader = cluster.leader().await;
    let target = match fault {
        Fault::KillLeader | Fault::StopLeader => leader,
        Fault::StopFollower => (leader + 1) % CLUSTER_SIZE,
    };
    let endpoints = first(&cluster, target);
    let survivors: Vec<usize> = (0..CLUSTER_SIZE).filter(|&i| i != target).collect();

    let registry = Registry::new(client(&endpoints)).with_ttl(TTL);
    let mut regs: Vec<Registration> = Vec::new();
    for k in 0..INSTANCES {
        let inst = Instance::new(SERVICE, format!("127.0.0.1:{}", 6000 + k)).with_id(id(k));
        regs.push(registry.register(inst).await.unwrap());
    }
    for r in &regs {
        r.registered(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{} not registered: {e}", r.key()));
    }
    // Each watcher has its own client, as separate processes would.
    let watchers: Vec<Discovery> = (0..WATCHERS).map(|_| Registry::new(client(&endpoints)).discover(SERVICE)).collect();
    let original: BTreeSet<String> = (0..INSTANCES).map(id).collect();
    eventually(&cluster, "every watcher lists every instance", Duration::from_secs(10), async || {
        match watchers.iter().find(|w| ids(w) != original) {
            Some(w) => Err(format!("{:?}", ids(w))),
            None => Ok(()),
        }
    })
    .await;
    assert_eq!(registry.client().current_endpoint(), endpoints[0], "the registry is on the target member");
    let before = read(&cluster, survivors[0]).await.unwrap();
    assert_eq!(before.len(), INSTANCES);

    let monitor = Monitor::start(&watchers);
    let fault_at = Instant::now();
    match fault {
        Fault::KillLeader => cluster.kill(target),
        Fault::StopLeader | Fault::StopFollower => cluster.stop(target),
    }

    // A change right after the fault: a new instance arrives and an old one
    // leaves. The SDK has to find a working member by itself.
    let ((new_leader, elected), (fresh, registered)) = tokio::join!(
        async {
            let l = cluster.leader().await;
            (l, fault_at.elapsed())
        },
        async {
            let fresh = registry.register(Instance::new(SERVICE, "127.0.0.1:7000").with_id("new")).await.unwrap();
            fresh
                .registered(CHANGE_LIMIT)
                .await
                .unwrap_or_else(|e| panic!("new instance not registered after the fault: {e}"));
            (fresh, fault_at.elapsed())
        }
    );
    match fault {
        Fault::KillLeader | Fault::StopLeader => assert_ne!(new_leader, target, "a new leader was elected"),
        Fault::StopFollower => assert_eq!(new_leader, leader, "losing a follower changes no leader"),
    }
    let leaving = regs.remove(0);
    leaving.deregister().await.unwrap_or_else(|e| panic!("deregister after the fault failed: {e}"));
    let expected: BTreeSet<String> = (1..INSTANCES).map(id).chain(["new".to_owned()]).collect();
    let remaining = CHANGE_LIMIT.saturating_sub(fault_at.elapsed());
    eventually(&cluster, "every watcher sees the new instance and the removal", remaining, async || {
        match watchers.iter().find(|w| ids(w) != expected) {
            Some(w) => Err(format!("{:?}", ids(w))),
            None => Ok(()),
        }
    })
    .await;
    let seen = fault_at.elapsed();
    eprintln!(
        "{fault:?}: leader {leader} -> {new_leader} after {elected:?}; new instance registered after {registered:?}; \
         change seen by all {WATCHERS} watchers after {seen:?}"
    );

    // For two TTLs every instance stays listed: on each surviving member
    // (fresh connections) and in every watcher.
    let hold = Instant::now() + 2 * TTL;
    while Instant::now() < hold {
        for &i in &survivors {
            let listed: BTreeSet<String> =
                read(&cluster, i).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(30))).into_keys().collect();
            assert_eq!(listed, expected, "member {i} lost registrations {:?} after the fault", fault_at.elapsed());
        }
        for (k, w) in watchers.iter().enumerate() {
            assert_eq!(ids(w), expected, "watcher {k} {:?} after the fault", fault_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Never lost, not even for a moment: the same keys on the same leases.
    let after = read(&cluster, survivors[0]).await.unwrap();
    for k in 1..INSTANCES {
        let (b, a) = (&before[&id(k)], &after[&id(k)]);
        assert_eq!(a.create_revision, b.create_revision, "{} was deleted and put again", id(k));
        assert_eq!(a.lease, b.lease, "{} had to register again on a new lease", id(k));
    }
    for r in &regs {
        assert!(matches!(*r.status().borrow(), RegistrationStatus::Registered { .. }), "{}", r.key());
    }
    // What the watchers went through: never a shorter list, no instance
    // removed but the one that left, and each change exactly once.
    let (smallest, changes) = monitor.stop();
    let stories: Vec<String> = changes.iter().map(|log| story(log)).collect();
    assert!(smallest >= INSTANCES, "a watcher's list shrank to {smallest} instances during the failover: {stories:?}");
    for (k, log) in changes.iter().enumerate() {
        assert_eq!(story(&added(log)), "[+new]", "watcher {k}: {}", story(log));
        assert_eq!(story(&removed(log)), "[-i00]", "watcher {k}: {}", story(log));
    }

    // The member comes back, rejoins and catches up.
    let monitor = Monitor::start(&watchers);
    let back_at = Instant::now();
    match fault {
        Fault::KillLeader => cluster.restart(target).await,
        Fault::StopLeader | Fault::StopFollower => cluster.resume(target),
    }
    let caught_up =
        eventually(&cluster, "the member that came back lists the same set", Duration::from_secs(15), async || {
            let listed: BTreeSet<String> = read(&cluster, target).await?.into_keys().collect();
            if listed == expected { Ok(()) } else { Err(format!("{listed:?}")) }
        })
        .await;
    eprintln!("{fault:?}: member {target} back and caught up after {caught_up:?}");
    // A watcher on it alone sees the same set.
    let late = Registry::new(client(&[cluster.endpoint(target)])).discover(SERVICE);
    eventually(&cluster, "a watcher on the returned member lists the same set", Duration::from_secs(10), async || {
        if ids(&late) == expected { Ok(()) } else { Err(format!("{:?}", ids(&late))) }
    })
    .await;
    // A resumed stale leader acts within its lessor's next rounds (every
    // 500 ms); give it the time, so that what follows sees the outcome.
    tokio::time::sleep_until((back_at + TTL).into()).await;
    // Nothing doubled: one live lease per registration, on every member,
    // once any lease granted by an abandoned attempt has expired; and every
    // watcher and registration settled.
    let keys = expected.len();
    eventually(
        &cluster,
        "one lease per registration everywhere, every watcher settled",
        2 * TTL + Duration::from_secs(5),
        async || {
            for i in 0..CLUSTER_SIZE {
                let mut lc = LeaseClient::new(cluster.channel(i));
                let n = lc
                    .lease_leases(LeaseLeasesRequest {})
                    .await
                    .map_err(|s| format!("{s:?}"))?
                    .into_inner()
                    .leases
                    .len();
                if n != keys {
                    return Err(format!("member {i}: {n} leases for {keys} registrations"));
                }
                let listed = read(&cluster, i).await?;
                let leases: BTreeSet<i64> = listed.values().map(|kv| kv.lease).collect();
                if listed.keys().cloned().collect::<BTreeSet<_>>() != expected || leases.len() != keys {
                    return Err(format!("member {i}: {listed:?}"));
                }
            }
            match watchers.iter().chain([&late]).find(|w| ids(w) != expected) {
                Some(w) => Err(format!("watcher {:?}", ids(w))),
                None if !regs
                    .iter()
                    .chain([&fresh])
                    .all(|r| matches!(*r.status().borrow(), RegistrationStatus::Registered { .. })) =>
                {
                    Err("a registration is not registered".into())
                }
                None => Ok(()),
            }
        },
    )
    .await;

    // Anything a watcher saw removed meanwhile was really deleted: its key
    // is on a new creation revision. Only a resumed stale leader deletes
    // anything (etcd before 3.4.31 / 3.5.13 revokes every lease it thinks
    // expired: etcd-io/etcd#15247), and then every instance registered again.
    let end = read(&cluster, target).await.unwrap();
    let recreated: BTreeSet<String> =
        (1..INSTANCES).map(id).filter(|k| end[k].create_revision != before[k].create_revision).collect();
    let (_, changes) = monitor.stop();
    for (k, log) in changes.iter().enumerate() {
        let gone: BTreeSet<String> = removed(log).iter().map(|c| id_of(c).to_owned()).collect();
        assert!(
            gone.is_subset(&recreated),
            "watcher {k} saw instances removed that were never deleted: {}",
            story(log)
        );
    }
    if !recreated.is_empty() {
        let version = etcd_version(&cluster, target).await;
        assert!(
            fault == Fault::StopLeader && stale_leader_revokes(&version),
            "{} instances were deleted after member {target} came back ({fault:?}, etcd {version})",
            recreated.len()
        );
        eprintln!(
            "\n!!! {fault:?}: etcd {version} revoked {} leases when the stale leader resumed \
             (etcd-io/etcd#15247, fixed in 3.4.31 and 3.5.13); every instance registered again within the checks above !!!\n",
            recreated.len()
        );
    }
    eprintln!("{fault:?}: settled {:?} after the member came back", back_at.elapsed());
}

fn id_of(c: &Change) -> &str {
    match c {
        Change::Added(i) | Change::Updated(i) | Change::Removed(i) => &i.id,
    }
}

fn added(log: &[Change]) -> Vec<Change> {
    log.iter().filter(|c| matches!(c, Change::Added(_))).cloned().collect()
}

fn removed(log: &[Change]) -> Vec<Change> {
    log.iter().filter(|c| matches!(c, Change::Removed(_))).cloned().collect()
}

/// A watcher's change log, short: `[+new, -i00]`.
fn story(log: &[Change]) -> String {
    let cs: Vec<String> = log
        .iter()
        .map(|c| match c {
            Change::Added(i) => format!("+{}", i.id),
            Change::Updated(i) => format!("~{}", i.id),
            Change::Removed(i) => format!("-{}", i.id),
        })
        .collect();
    format!("[{}]", cs.join(", "))
}

async fn etcd_version(cluster: &EtcdCluster, i: usize) -> String {
    let mut m = MaintenanceClient::new(cluster.channel(i));
    m.status(StatusRequest {}).await.map(|r| r.into_inner().version).unwrap_or_default()
}

/// Whether this etcd has the stale-leader lease revocation bug
/// (etcd-io/etcd#15247): a leader that was paused revokes, on resuming,
/// every lease it thinks expired, and its proposals are forwarded to the
/// new leader and committed.
fn stale_leader_revokes(version: &str) -> bool {
    let v: Vec<u32> = version.split('.').map_while(|p| p.parse().ok()).collect();
    match v[..] {
        [3, 4, patch, ..] => patch < 31,
        [3, 5, patch, ..] => patch < 13,
        [3, minor, ..] => minor < 4,
        _ => false,
    }
}
