//! Watch and LeaseKeepAlive streams, progress notifications, lease expiry, and streams ended by shutdown.

use super::*;

#[tokio::test]
async fn watch_answers_created_then_the_event() {
    let mut srv = TestServer::start().await;
    let ch = srv.channel().await;
    let (tx, rx) = mpsc::channel(4);
    let mut stream = WatchClient::new(ch.clone()).watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let create = WatchCreateRequest { key: "w".into(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();

    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    assert_eq!(created.watch_id, 0);
    let h = created.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term), (CLUSTER_ID, MEMBER_ID, RAFT_TERM));

    KvClient::new(ch).put(put("w", "v")).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.events.len(), 1);
    assert_eq!(&ev.events[0].kv.as_ref().unwrap().key[..], b"w");
    assert_eq!(ev.header.unwrap().revision, 2);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn keepalive_on_unknown_lease_answers_ttl_zero() {
    let mut srv = TestServer::start().await;
    let (tx, rx) = mpsc::channel(4);
    let mut lease = LeaseClient::new(srv.channel().await);
    let mut stream = lease.lease_keep_alive(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(LeaseKeepAliveRequest { id: 12345 }).await.unwrap();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!((resp.id, resp.ttl), (12345, 0));
    assert_eq!(resp.header.unwrap().member_id, MEMBER_ID);
    // Closing our side ends the stream cleanly, as with etcd.
    drop(tx);
    assert!(stream.message().await.unwrap().is_none());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn progress_notify_reaches_watchers_that_asked() {
    let mut srv =
        TestServer::start_with(Store::in_memory(), |c| c.progress_notify_interval = Duration::from_millis(50)).await;
    let (tx, rx) = mpsc::channel(4);
    let mut stream = WatchClient::new(srv.channel().await).watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let create = WatchCreateRequest { key: "p".into(), progress_notify: true, ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    assert!(stream.message().await.unwrap().unwrap().created);

    let progress = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled, "{progress:?}");
    assert_eq!(progress.watch_id, 0);
    let h = progress.header.unwrap();
    assert_eq!((h.member_id, h.revision), (MEMBER_ID, 1));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn expired_leases_are_revoked_by_the_server() {
    // The store's clock is moved by hand; only the server's tick is real.
    let clock = Arc::new(ManualClock::default());
    let store = Store::in_memory_with_clock(clock.clone());
    let mut srv = TestServer::start_with(store, |c| c.lease_tick = Duration::from_millis(10)).await;
    let ch = srv.channel().await;
    let grant =
        LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 2, id: 0 }).await.unwrap().into_inner();
    let mut kv = KvClient::new(ch);
    kv.put(PutRequest { lease: grant.id, ..put("leased", "v") }).await.unwrap();

    clock.advance(Duration::from_secs(3));
    let gone = async {
        loop {
            let r = kv.range(RangeRequest { key: "leased".into(), ..Default::default() }).await.unwrap().into_inner();
            if r.count == 0 {
                return r.header.unwrap().revision;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let rev = tokio::time::timeout(Duration::from_secs(5), gone).await.expect("the lease expired and took its key");
    assert_eq!(rev, 3, "put at 2, expiry deletes in one revision");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let mut srv = TestServer::start().await;
    let ch = srv.channel().await;
    let (tx, rx) = mpsc::channel(4);
    let mut watch = WatchClient::new(ch.clone()).watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let create = WatchCreateRequest { key: "s".into(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created);
    let (_ka_tx, ka_rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
    let mut ka = LeaseClient::new(ch).lease_keep_alive(ReceiverStream::new(ka_rx)).await.unwrap().into_inner();

    // Both streams are open and idle; shutdown must still finish promptly
    // (well inside the 5 s grace, which `stop` does not wait out).
    let started = std::time::Instant::now();
    srv.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    let err = watch.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "etcdserver: server stopped");
    assert_eq!(ka.message().await.unwrap_err().code(), Code::Unavailable);
}
