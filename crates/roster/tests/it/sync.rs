//! Locks and elections: mutual exclusion across processes with fencing,
//! lost-lock notice, interop with `etcdctl lock` and `etcdctl elect` in
//! both directions, and leader failover after a `kill -9`. Each scenario
//! runs against an in-process `roster serve` and against a real etcd.

use crate::support;

use roster::sync::{Election, Mutex, Session, put_op};
use roster::{Client, Error};
use roster_api::etcdserverpb::RangeRequest;
use roster_testkit::Etcdctl;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{client, on_roster_and_etcd};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_stream::StreamExt;

async fn counter(c: &Client, key: &str) -> u64 {
    let r = c.range(RangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() }).await.unwrap();
    r.kvs.first().map_or(0, |kv| std::str::from_utf8(&kv.value).unwrap().parse().unwrap())
}

// === worker processes ===

/// The body of a worker process (this test binary, started again with
/// `ROSTER_SYNC_WORKER` set). It does nothing when run on its own.
#[test]
#[ignore = "a worker process that the other tests start"]
fn sync_worker() {
    let Ok(role) = std::env::var("ROSTER_SYNC_WORKER") else { return };
    let endpoint = std::env::var("ROSTER_ENDPOINT").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let c = client(&endpoint);
        match role.as_str() {
            "mutex" => {
                let rounds: u64 = std::env::var("ROUNDS").unwrap().parse().unwrap();
                let session = Session::new(&c, Duration::from_secs(5)).await.unwrap();
                let lock = Mutex::new(&session, "/test/locks/counter");
                for _ in 0..rounds {
                    let guard = lock.lock().await.unwrap();
                    // Read, pause, write: without exclusion, increments get lost.
                    let n = counter(&c, "/test/counter").await;
                    tokio::task::yield_now().await;
                    let r = guard.fenced_txn(vec![], vec![put_op("/test/counter", (n + 1).to_string())]).await.unwrap();
                    assert!(r.succeeded);
                    guard.unlock().await.unwrap();
                }
                println!("WORKER done {rounds}");
            }
            "elect" => {
                let name = std::env::var("NAME").unwrap();
                let session = Session::new(&c, Duration::from_secs(2)).await.unwrap();
                let e = Election::new(&c, "/test/elections/failover");
                e.campaign(&session, name.clone()).await.unwrap();
                println!("WORKER leader {name}");
                session.lost().await;
            }
            other => panic!("unknown worker role {other}"),
        }
    });
}

struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    fn start(role: &str, endpoint: &str, env: &[(&str, &str)]) -> Worker {
        let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "sync::sync_worker", "--ignored", "--nocapture", "--test-threads=1"])
            .env("ROSTER_SYNC_WORKER", role)
            .env("ROSTER_ENDPOINT", endpoint)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Worker { child, lines }
    }

    /// The next line the worker itself printed (libtest's lines skipped).
    async fn next(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await.ok()?.ok()??;
            // libtest's "test sync_worker ... " has no newline before the body runs.
            if let Some((_, l)) = line.split_once("WORKER ") {
                return Some(l.to_owned());
            }
        }
    }

    fn kill_9(&mut self) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill -9 {pid}");
    }
}

// === mutual exclusion ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_take_the_lock_200_times_and_the_fenced_count_is_exact() {
    on_roster_and_etcd(|target, endpoint| async move {
        let mut workers: Vec<_> = (0..5).map(|_| Worker::start("mutex", &endpoint, &[("ROUNDS", "40")])).collect();
        for (i, w) in workers.iter_mut().enumerate() {
            let line = w.next(Duration::from_secs(90)).await;
            assert_eq!(line.as_deref(), Some("done 40"), "{target}: worker {i} did not finish");
            let status = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await.unwrap().unwrap();
            assert!(status.success(), "{target}: worker {i} exited with {status}");
        }
        assert_eq!(counter(&client(&endpoint), "/test/counter").await, 200, "{target}: lost or doubled increments");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_is_noticed_and_its_fenced_writes_fail() {
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        let holder = Session::new(&c, Duration::from_secs(10)).await.unwrap();
        let guard = Mutex::new(&holder, "/test/locks/fenced").lock().await.unwrap();
        assert!(guard.key().starts_with("/test/locks/fenced/"), "{}", guard.key());
        assert_eq!(guard.key(), format!("/test/locks/fenced/{:x}", holder.lease()));
        guard.fenced_txn(vec![], vec![put_op("/test/fenced", "1")]).await.unwrap();

        // The holder's lease is forced to end (as when it pauses past its TTL).
        c.lease_revoke(holder.lease()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), guard.lost())
            .await
            .unwrap_or_else(|_| panic!("{target}: loss not noticed"));
        assert!(!guard.held().await.unwrap());

        // A second process takes the lock with a larger token...
        let next = Session::new(&c, Duration::from_secs(10)).await.unwrap();
        let next_guard = Mutex::new(&next, "/test/locks/fenced").lock().await.unwrap();
        assert!(next_guard.token() > guard.token());
        // ...and every write the old holder still attempts is refused.
        for attempt in 0..5 {
            match guard.fenced_txn(vec![], vec![put_op("/test/fenced", format!("stale-{attempt}"))]).await {
                Err(Error::LockLost { key }) => assert_eq!(key, guard.key()),
                other => panic!("{target}: a write after the loss got {other:?}"),
            }
        }
        next_guard.fenced_txn(vec![], vec![put_op("/test/fenced", "2")]).await.unwrap();
        let r = c.range(RangeRequest { key: b"/test/fenced".to_vec().into(), ..Default::default() }).await.unwrap();
        assert_eq!(&r.kvs[0].value[..], b"2", "{target}");
        next_guard.unlock().await.unwrap();
        // The old holder's session noticed too, at its next renewal.
        tokio::time::timeout(Duration::from_secs(5), holder.lost()).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_the_lock_in_order_and_an_abandoned_wait_leaves_no_key() {
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        let sessions = [
            Session::new(&c, Duration::from_secs(10)).await.unwrap(),
            Session::new(&c, Duration::from_secs(10)).await.unwrap(),
            Session::new(&c, Duration::from_secs(10)).await.unwrap(),
        ];
        let first = Mutex::new(&sessions[0], "/test/locks/order").lock().await.unwrap();
        assert!(
            Mutex::new(&sessions[2], "/test/locks/order").try_lock().await.unwrap().is_none(),
            "{target}: try_lock got a held lock"
        );

        // An abandoned wait withdraws its key.
        let abandoned =
            tokio::time::timeout(Duration::from_millis(300), Mutex::new(&sessions[2], "/test/locks/order").lock())
                .await;
        assert!(abandoned.is_err(), "{target}: lock taken twice");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let m1 = Mutex::new(&sessions[1], "/test/locks/order");
        let waiter = tokio::spawn(async move {
            let g = m1.lock().await.unwrap();
            tx.send(g.token()).unwrap();
            g
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx.try_recv().is_err(), "{target}: second waiter got a held lock");
        let keys = c
            .range(RangeRequest {
                key: b"/test/locks/order/".to_vec().into(),
                range_end: roster_api::range::prefix_end(b"/test/locks/order/").into(),
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys.kvs.len(), 2, "{target}: the abandoned waiter's key is still there");
        first.unlock().await.unwrap();
        let token = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(token > 0);
        waiter.await.unwrap().unlock().await.unwrap();
    })
    .await;
}

// === interop with etcdctl ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_etcdctl_lock_both_ways() {
    if roster_testkit::require_etcdctl().is_none() {
        return;
    }
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        let ctl = Etcdctl::new(endpoint.clone());

        // etcdctl holds; we wait until it lets go.
        let mut held = ctl.spawn(&["lock", "/test/interop-lock"]);
        let key = held.expect_line(Duration::from_secs(10)).await;
        assert!(key.starts_with("/test/interop-lock/"), "{target}: etcdctl printed {key:?}");
        let session = Session::new(&c, Duration::from_secs(10)).await.unwrap();
        let m = Mutex::new(&session, "/test/interop-lock");
        let mut ours = tokio::spawn(async move { m.lock().await });
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut ours).await.is_err(),
            "{target}: took a lock etcdctl holds"
        );
        held.terminate();
        let guard = tokio::time::timeout(Duration::from_secs(5), ours).await.unwrap().unwrap().unwrap();

        // We hold; etcdctl waits until we let go.
        let mut waiting = ctl.spawn(&["lock", "/test/interop-lock"]);
        waiting.expect_silence(Duration::from_millis(700)).await;
        guard.unlock().await.unwrap();
        let key = waiting.expect_line(Duration::from_secs(5)).await;
        assert!(key.starts_with("/test/interop-lock/"), "{target}: {key:?}");
        waiting.terminate();
        session.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_interoperate_with_etcdctl_elect_both_ways() {
    if roster_testkit::require_etcdctl().is_none() {
        return;
    }
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        let ctl = Etcdctl::new(endpoint.clone());
        let e = Election::new(&c, "/test/interop-elect");
        assert!(matches!(e.leader().await, Err(Error::NoLeader)), "{target}");

        // etcdctl leads; we see it, wait behind it, and take over when it resigns.
        let mut theirs = ctl.spawn(&["elect", "/test/interop-elect", "from-etcdctl"]);
        let lines = theirs.expect_lines(2, Duration::from_secs(10)).await;
        assert!(lines[0].starts_with("/test/interop-elect/"), "{target}: {lines:?}");
        assert_eq!(lines[1], "from-etcdctl");
        assert_eq!(&e.leader().await.unwrap().value[..], b"from-etcdctl");
        let mut observed = Box::pin(e.observe());
        let first = tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap();
        assert_eq!(&first.value[..], b"from-etcdctl");

        let session = Session::new(&c, Duration::from_secs(10)).await.unwrap();
        let (e2, s2) = (e.clone(), session.clone());
        let mut campaign = tokio::spawn(async move { e2.campaign(&s2, "from-rust").await });
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut campaign).await.is_err(),
            "{target}: two leaders"
        );
        theirs.terminate();
        let leader = tokio::time::timeout(Duration::from_secs(5), campaign).await.unwrap().unwrap().unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap();
        assert_eq!((&next.key[..], &next.value[..]), (leader.key.as_bytes(), &b"from-rust"[..]));

        // We lead; `etcdctl elect -l` observes our value and its changes.
        let mut listener = ctl.spawn(&["elect", "-l", "/test/interop-elect"]);
        assert_eq!(
            listener.expect_lines(2, Duration::from_secs(10)).await,
            vec![leader.key.clone(), "from-rust".to_owned()]
        );
        e.proclaim(&leader, "proclaimed").await.unwrap();
        assert_eq!(
            listener.expect_lines(2, Duration::from_secs(5)).await,
            vec![leader.key.clone(), "proclaimed".to_owned()]
        );
        let seen = tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap();
        assert_eq!(&seen.value[..], b"proclaimed");

        // An etcdctl candidate waits behind us and wins when we resign.
        let mut candidate = ctl.spawn(&["elect", "/test/interop-elect", "etcdctl-again"]);
        candidate.expect_silence(Duration::from_millis(700)).await;
        e.resign(&leader).await.unwrap();
        let lines = candidate.expect_lines(2, Duration::from_secs(5)).await;
        assert_eq!(lines[1], "etcdctl-again", "{target}");
        let lines = listener.expect_lines(2, Duration::from_secs(5)).await;
        assert_eq!(lines[1], "etcdctl-again", "{target}");
        // Proclaiming after resigning is refused with etcd's error.
        assert!(matches!(e.proclaim(&leader, "late").await, Err(Error::NotLeader)), "{target}");
        candidate.terminate();
        listener.terminate();
        session.close().await.unwrap();
    })
    .await;
}

// === failover ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_within_the_ttl_plus_one_second_after_kill_9() {
    on_roster_and_etcd(|target, endpoint| async move {
        let mut first = Worker::start("elect", &endpoint, &[("NAME", "first")]);
        assert_eq!(first.next(Duration::from_secs(30)).await.as_deref(), Some("leader first"), "{target}");
        let mut second = Worker::start("elect", &endpoint, &[("NAME", "second")]);
        // The second waits behind the first.
        assert_eq!(second.next(Duration::from_millis(800)).await, None, "{target}: two leaders");
        let e = Election::new(&client(&endpoint), "/test/elections/failover");
        assert_eq!(&e.leader().await.unwrap().value[..], b"first");

        first.kill_9();
        let killed = Instant::now();
        assert_eq!(second.next(Duration::from_secs(10)).await.as_deref(), Some("leader second"), "{target}");
        let took = killed.elapsed();
        // TTL 2 s; etcd may round a lease up to its minimum TTL, so the
        // bound is the TTL the lease really had, plus one second.
        assert!(took <= Duration::from_secs(3), "{target}: new leader after {took:?}");
        assert_eq!(&e.leader().await.unwrap().value[..], b"second");
        eprintln!("{target}: new leader {took:?} after kill -9");
    })
    .await;
}
