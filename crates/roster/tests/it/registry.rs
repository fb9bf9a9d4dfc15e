//! Registration and discovery scenarios against an in-process `roster serve`
//! (and, where the scenario needs etcd itself, a real etcd).

use crate::support;

use roster::{Change, Instance, RegistrationStatus};
use roster_api::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use roster_store::{Store, StoreConfig};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{Server, eventually};
use tokio_stream::StreamExt;

fn ids(d: &roster::Discovery) -> BTreeSet<String> {
    d.instances().into_iter().map(|i| i.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_instance_reaches_100_watchers() {
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let watchers: Vec<_> = (0..100).map(|_| reg.discover("hello")).collect();
    for w in &watchers {
        w.ready().await;
        assert!(w.instances().is_empty());
    }
    let _r = reg.register(Instance::new("hello", "127.0.0.1:5001").with_id("a")).await.unwrap();
    for w in &watchers {
        eventually("instance visible to every watcher", Duration::from_secs(5), || ids(w).contains("a")).await;
    }
    // A service whose name extends ours must not leak in.
    let _other = reg.register(Instance::new("hello-admin", "127.0.0.1:5002").with_id("b")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(&watchers[0]), BTreeSet::from(["a".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_removes_at_once_and_status_is_observable() {
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let d = reg.discover("hello");
    d.ready().await;
    let r = reg.register(Instance::new("hello", "127.0.0.1:5001").with_id("a").with_meta("k", "v")).await.unwrap();
    assert!(matches!(*r.status().borrow(), RegistrationStatus::Registered { .. }));
    eventually("registered", Duration::from_secs(5), || ids(&d).contains("a")).await;
    assert_eq!(d.instances()[0].meta["k"], "v");
    r.pause().await.unwrap();
    eventually("withdrawn on pause", Duration::from_secs(2), || ids(&d).is_empty()).await;
    r.resume().await.unwrap();
    eventually("back on resume", Duration::from_secs(5), || ids(&d).contains("a")).await;
    r.deregister().await.unwrap();
    let took = eventually("gone after deregister", Duration::from_secs(2), || ids(&d).is_empty()).await;
    assert!(took < Duration::from_secs(1), "deregister must not wait for the TTL ({took:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_or_revoke_is_repaired_within_a_second() {
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let r = reg.register(Instance::new("hello", "127.0.0.1:5001").with_id("a")).await.unwrap();
    r.registered(Duration::from_secs(5)).await.unwrap();
    let client = reg.client().clone();
    let exists = || {
        let client = client.clone();
        async move {
            client
                .range(RangeRequest { key: "/services/hello/a".into(), ..Default::default() })
                .await
                .unwrap()
                .kvs
                .len()
                == 1
        }
    };
    client.delete_range(DeleteRangeRequest { key: "/services/hello/a".into(), ..Default::default() }).await.unwrap();
    let start = Instant::now();
    while !exists().await {
        assert!(start.elapsed() < Duration::from_secs(1), "key not put back within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = client.range(RangeRequest { key: "/services/hello/a".into(), ..Default::default() }).await.unwrap().kvs
        [0]
    .lease;
    client.lease_revoke(lease).await.unwrap();
    roster_testkit::eventually("re-registered on a new lease within 1 s", Duration::from_secs(1), async || {
        let kvs =
            client.range(RangeRequest { key: "/services/hello/a".into(), ..Default::default() }).await.unwrap().kvs;
        kvs.first().is_some_and(|kv| kv.lease != lease)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_restart_keeps_registrations_and_lists_never_go_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(Some(dir.path().to_owned())).await;
    let reg = server.registry(5);
    let regs: Vec<_> = futures_join(
        (0..3).map(|i| reg.register(Instance::new("hello", format!("127.0.0.1:500{i}")).with_id(format!("i{i}")))),
    )
    .await;
    let d = reg.discover("hello");
    d.ready().await;
    eventually("three instances", Duration::from_secs(5), || ids(&d).len() == 3).await;
    let mut changes = Box::pin(d.changes());
    let removed = tokio::spawn(async move {
        let mut removed = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(8), changes.next()).await {
            if let Change::Removed(i) = c {
                removed.push(i.id);
            }
        }
        removed
    });
    server.restart().await;
    // Past a full TTL: the leases must have been kept alive across the restart.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(ids(&d).len(), 3);
    assert!(!d.is_stale());
    assert_eq!(removed.await.unwrap(), Vec::<String>::new(), "no watcher may see an instance vanish");
    for r in &regs {
        assert!(matches!(*r.status().borrow(), RegistrationStatus::Registered { .. }));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_resyncs_to_the_exact_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(Some(dir.path().to_owned())).await;
    let reg = server.registry(30);
    let client = reg.client().clone();
    for i in 0..4 {
        client.put(put(&format!("/services/hello/i{i}"), &format!("127.0.0.1:60{i:02}"))).await.unwrap();
    }
    let d = reg.discover("hello");
    d.ready().await;
    eventually("four instances", Duration::from_secs(5), || ids(&d).len() == 4).await;
    // Cut the watcher off, change the set behind its back, compact it away.
    server.stop().await;
    eventually("marked stale", Duration::from_secs(5), || d.is_stale()).await;
    assert_eq!(ids(&d).len(), 4, "an error never empties the list");
    {
        let store = Store::open(StoreConfig { data_dir: Some(dir.path().to_owned()), ..Default::default() }).unwrap();
        for i in 0..2 {
            store
                .delete_range(DeleteRangeRequest { key: format!("/services/hello/i{i}").into(), ..Default::default() })
                .await
                .unwrap();
        }
        store.put(put("/services/hello/new", "127.0.0.1:7000")).await.unwrap();
        store.put(put("/services/hello/i3", "127.0.0.1:7003")).await.unwrap();
        let rev = store.revision();
        store.compact(roster_api::etcdserverpb::CompactionRequest { revision: rev, physical: true }).await.unwrap();
    }
    server.restart().await;
    eventually("resynced", Duration::from_secs(10), || {
        ids(&d) == BTreeSet::from(["i2".into(), "i3".into(), "new".into()])
    })
    .await;
    eventually("fresh again", Duration::from_secs(5), || !d.is_stale()).await;
    let i3 = d.instances().into_iter().find(|i| i.id == "i3").unwrap();
    assert_eq!(i3.addr, "127.0.0.1:7003", "updates made while away are applied");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_skipped_and_plain_addresses_accepted() {
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let client = reg.client().clone();
    let d = reg.discover("hello");
    d.ready().await;
    client.put(put("/services/hello/bad", "not an address")).await.unwrap();
    client.put(put("/services/hello/plain", "127.0.0.1:9000")).await.unwrap();
    eventually("plain address listed", Duration::from_secs(5), || ids(&d).contains("plain")).await;
    assert!(!ids(&d).contains("bad"));
    client.put(put("/services/hello/plain2", "127.0.0.1:9001")).await.unwrap();
    eventually("watch still running after a bad value", Duration::from_secs(5), || ids(&d).contains("plain2")).await;
}

fn put(k: &str, v: &str) -> roster_api::etcdserverpb::PutRequest {
    roster_api::etcdserverpb::PutRequest { key: k.to_owned().into(), value: v.to_owned().into(), ..Default::default() }
}

async fn futures_join<F: std::future::Future<Output = roster::Result<roster::Registration>>>(
    fs: impl Iterator<Item = F>,
) -> Vec<roster::Registration> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_withdraws_the_instance() {
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let d = reg.discover("hello");
    d.ready().await;
    let r = reg.register(Instance::new("hello", "127.0.0.1:5001").with_id("a")).await.unwrap();
    eventually("registered", Duration::from_secs(5), || ids(&d).contains("a")).await;
    drop(r);
    let took = eventually("gone after drop", Duration::from_secs(3), || ids(&d).is_empty()).await;
    assert!(took < Duration::from_secs(2), "dropping revokes in the background, well before the TTL ({took:?})");
}

/// A change is emitted only once the snapshot holds it, so a subscriber
/// that reads the snapshot on a change (a balancer rebuilding its list)
/// finds the instance it was told about. Hundreds of changes, so that a
/// change emitted before the snapshot is stored would be caught reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_in_the_snapshot_when_it_is_emitted() {
    const N: usize = 600;
    let server = Server::start(None).await;
    let reg = server.registry(10);
    let d = reg.discover("order");
    d.ready().await;
    let reader = d.clone();
    // Adds first, then removes: each kind is monotonic, so a late check
    // cannot be fooled by a later change to the same id.
    let checker = support::spin_read(d.changes(), 2 * N, move |n, change| match change {
        Change::Added(i) => assert!(
            reader.snapshot().instances.contains_key(&i.id),
            "added {} was emitted before the snapshot held it",
            i.id
        ),
        Change::Removed(i) => assert!(
            !reader.snapshot().instances.contains_key(&i.id),
            "removal of {} was emitted before the snapshot dropped it",
            i.id
        ),
        other => panic!("change {n}: unexpected {other:?}"),
    });
    let client = reg.client().clone();
    for n in 0..N {
        client.put(put(&format!("/services/order/i{n}"), &format!("127.0.0.1:{}", 20000 + n))).await.unwrap();
    }
    for n in 0..N {
        let key = format!("/services/order/i{n}");
        client.delete_range(DeleteRangeRequest { key: key.into_bytes().into(), ..Default::default() }).await.unwrap();
    }
    tokio::task::spawn_blocking(move || checker.join())
        .await
        .unwrap()
        .expect("the reader saw a change before its snapshot");
}
