//! The registration and discovery scenarios that must also hold against a
//! real etcd: admin delete/revoke repair, and resync after a compaction that
//! happened while the watcher was cut off.

use crate::support::eventually;
use roster::{Client, ClientConfig, Instance, Registry};
use roster_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, kv_client::KvClient};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

async fn etcd() -> Option<roster_testkit::Etcd> {
    roster_testkit::require_etcd()?;
    Some(roster_testkit::Etcd::start().await)
}

fn registry(endpoint: String, ttl: u64) -> Registry {
    let mut cfg = ClientConfig::new([endpoint]);
    cfg.request_timeout = Duration::from_secs(2);
    Registry::new(Client::new(cfg).unwrap()).with_ttl(Duration::from_secs(ttl))
}

/// A loopback TCP proxy that can be cut (dropping every connection and
/// refusing new ones) and restored, to take a client off the network.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn ids(d: &roster::Discovery) -> BTreeSet<String> {
    d.instances().into_iter().map(|i| i.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_or_revoke_is_repaired_within_a_second_etcd() {
    let Some(etcd) = etcd().await else { return };
    let reg = registry(etcd.endpoint(), 10);
    let r = reg.register(Instance::new("hello", "127.0.0.1:5001").with_id("a")).await.unwrap();
    r.registered(Duration::from_secs(5)).await.unwrap();
    let mut kv = KvClient::new(etcd.channel());
    let key = || RangeRequest { key: "/services/hello/a".into(), ..Default::default() };
    kv.delete_range(DeleteRangeRequest { key: "/services/hello/a".into(), ..Default::default() }).await.unwrap();
    let start = Instant::now();
    while kv.range(key()).await.unwrap().into_inner().kvs.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(1), "key not put back within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = kv.range(key()).await.unwrap().into_inner().kvs[0].lease;
    reg.client().lease_revoke(lease).await.unwrap();
    let start = Instant::now();
    loop {
        let kvs = kv.range(key()).await.unwrap().into_inner().kvs;
        if kvs.first().is_some_and(|kv| kv.lease != lease) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1), "not re-registered on a new lease within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_resyncs_to_the_exact_set_etcd() {
    let Some(etcd) = etcd().await else { return };
    let mut kv = KvClient::new(etcd.channel());
    let put =
        |k: &str, v: &str| PutRequest { key: k.to_owned().into(), value: v.to_owned().into(), ..Default::default() };
    for i in 0..4 {
        kv.put(put(&format!("/services/hello/i{i}"), &format!("127.0.0.1:60{i:02}"))).await.unwrap();
    }
    let proxy = Proxy::start(etcd.endpoint()).await;
    let d = registry(proxy.addr.clone(), 30).discover("hello");
    d.ready().await;
    eventually("four instances", Duration::from_secs(5), || ids(&d).len() == 4).await;
    proxy.cut();
    eventually("marked stale", Duration::from_secs(5), || d.is_stale()).await;
    assert_eq!(ids(&d).len(), 4, "an error never empties the list");
    for i in 0..2 {
        kv.delete_range(DeleteRangeRequest { key: format!("/services/hello/i{i}").into(), ..Default::default() })
            .await
            .unwrap();
    }
    kv.put(put("/services/hello/new", "127.0.0.1:7000")).await.unwrap();
    let rev = kv.put(put("/services/hello/i3", "127.0.0.1:7003")).await.unwrap().into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    proxy.restore();
    eventually("resynced", Duration::from_secs(10), || {
        ids(&d) == BTreeSet::from(["i2".into(), "i3".into(), "new".into()])
    })
    .await;
    eventually("fresh again", Duration::from_secs(5), || !d.is_stale()).await;
    assert_eq!(d.instances().into_iter().find(|i| i.id == "i3").unwrap().addr, "127.0.0.1:7003");
}
