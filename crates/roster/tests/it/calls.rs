//! How calls are sent: writes applied at most once by the registry client
//! (against a 3-member etcd cluster with a stopped member), and the
//! balanced gRPC channel's readiness as tower layers see it.

use crate::support::{Server, eventually};
use roster::grpc::{Channel, ChannelConfig};
use roster::sync::{Mutex, Session, put_op};
use roster::{Client, ClientConfig, Error, Instance};
use roster_api::etcdserverpb::RangeRequest;
use roster_testkit::{CLUSTER_SIZE, EtcdCluster};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Service, ServiceExt};

// === at most once ===

/// The key's version: how many times it was written since it was created.
async fn version(client: &Client, key: &str) -> i64 {
    let r = client.range(RangeRequest { key: key.to_owned().into_bytes().into(), ..Default::default() }).await.unwrap();
    r.kvs.first().map_or(0, |kv| kv.version)
}

/// A fenced write sent to a member that stopped answering (SIGSTOP, its
/// connection open) times out. The fence still holds, so a copy sent to
/// another member would be applied too: the client must not send one, and
/// must say the outcome is unknown. After the member resumes, the counter
/// (the key's version, one per write) went up at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_txn_that_timed_out_on_a_stopped_member_is_never_applied_twice() {
    if roster_testkit::require_etcd().is_none() {
        return;
    }
    let mut cluster = EtcdCluster::start().await;
    // A follower: stopping it elects no one, so only the client can notice.
    let stopped = (cluster.leader().await + 1) % CLUSTER_SIZE;
    let all = cluster.endpoints();
    let endpoints: Vec<String> = (0..CLUSTER_SIZE).map(|k| all[(stopped + k) % CLUSTER_SIZE].clone()).collect();
    let mut cfg = ClientConfig::new(endpoints);
    cfg.attempt_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(4);
    let client = Client::new(cfg).unwrap();
    let reader = Client::new(ClientConfig::new([all[(stopped + 1) % CLUSTER_SIZE].clone()])).unwrap();

    let session = Session::new(&client, Duration::from_secs(30)).await.unwrap();
    let guard = Mutex::new(&session, "/at-most-once/lock").lock().await.unwrap();
    let key = "/at-most-once/counter";
    guard.fenced_txn(vec![], vec![put_op(key, "n")]).await.unwrap();
    let before = version(&reader, key).await;
    assert_eq!(before, 1);

    cluster.stop(stopped);
    let sent = Instant::now();
    let r = guard.fenced_txn(vec![], vec![put_op(key, "n")]).await;
    let took = sent.elapsed();
    let Err(Error::OutcomeUnknown { op, reason, .. }) = &r else {
        panic!("a timed-out fenced txn must report an unknown outcome, got {r:?}")
    };
    assert_eq!(*op, "txn");
    assert!(took < Duration::from_secs(3), "it gave up after the attempt timeout, not later ({took:?}): {reason}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("outcome unknown") && msg.contains("may or may not have been applied"), "{msg}");

    // Whatever the stopped member does with its copy once it runs again.
    cluster.resume(stopped);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = version(&reader, key).await;
    assert!(after - before <= 1, "applied {} times", after - before);

    // The client moved on: the next write goes to a live member, once.
    guard.fenced_txn(vec![], vec![put_op(key, "n")]).await.unwrap();
    assert_eq!(version(&reader, key).await, after + 1);
}

/// A refused connection proves a write never left: that one, and only
/// that one, moves on to the next endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_txn_moves_on_when_its_connection_is_refused() {
    let server = Server::start(None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let client = Client::new(ClientConfig::new([dead, server.endpoint()])).unwrap();
    let session = Session::new(&client, Duration::from_secs(10)).await.unwrap();
    let guard = Mutex::new(&session, "/refused/lock").lock().await.unwrap();
    guard.fenced_txn(vec![], vec![put_op("/refused/k", "v")]).await.unwrap();
    assert_eq!(version(&server.client(), "/refused/k").await, 1);
}

// === readiness ===

/// A gRPC request to `path` with a deadline; the body is an empty message.
fn grpc_request(path: &str) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(FullBody(Some(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])))));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://instance{path}").parse().unwrap();
    req.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    req.headers_mut().insert("te", http::HeaderValue::from_static("trailers"));
    req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("5S"));
    req
}

struct FullBody(Option<bytes::Bytes>);

impl http_body::Body for FullBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// With a cap of one call per instance and its only instance busy (it
/// accepts connections and never answers), the channel is not ready:
/// `LoadShed` sheds at once, also through `ConcurrencyLimit`, and a caller
/// waiting in `poll_ready` is woken when the busy call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_and_concurrency_limit_see_a_full_channel() {
    let server = Server::start(None).await;
    let registry = server.registry(10);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _reg = registry
        .register(Instance::new("silent", silent.local_addr().unwrap().to_string()).with_id("s0"))
        .await
        .unwrap();
    let d = registry.discover("silent");
    d.ready().await;
    let channel =
        Channel::new(d.clone(), ChannelConfig { max_in_flight_per_instance: 1, ..Default::default() }).unwrap();

    let mut first = channel.clone();
    first.ready().await.unwrap();
    let busy = tokio::spawn(first.call(grpc_request("/x.Y/Z")));
    eventually("the first call in flight", Duration::from_secs(5), || {
        channel.balancer().set().endpoints.first().is_some_and(|e| e.stats.in_flight() == 1)
    })
    .await;

    let mut second = channel.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.ready()).await.is_err(),
        "not ready while the only instance is full"
    );
    let mut shed = tower::load_shed::LoadShed::new(tower::limit::ConcurrencyLimit::new(channel.clone(), 10));
    let err = shed.ready().await.unwrap().call(grpc_request("/x.Y/Z")).await.unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "shed, not sent: {err}");

    let waiter = tokio::spawn(async move { second.ready().await.map(|_| ()).map_err(|e| e.to_string()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    busy.abort();
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken when the busy call ended")
        .unwrap()
        .unwrap();
}

/// Fail-fast stays: with no instance at all the channel is ready, and the
/// call is answered UNAVAILABLE at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_instances_is_ready_and_fails_fast() {
    let server = Server::start(None).await;
    let d = server.registry(10).discover("nobody");
    d.ready().await;
    let mut channel = Channel::new(d, ChannelConfig::default()).unwrap();
    let t = Instant::now();
    let resp = channel.ready().await.unwrap().call(grpc_request("/x.Y/Z")).await.unwrap();
    assert_eq!(resp.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"14"[..]));
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
}

/// `Discovery::discover` is a tower `Discover`: the instances listed, then
/// each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_offers_tower_changes() {
    use tower::discover::{Change, Discover};
    fn is_discover<D: Discover<Key = String, Service = String>>(d: D) -> D {
        d
    }
    let server = Server::start(None).await;
    let registry = server.registry(10);
    let a = registry.register(Instance::new("tw", "127.0.0.1:1").with_id("a")).await.unwrap();
    let _b = registry.register(Instance::new("tw", "127.0.0.1:2").with_id("b")).await.unwrap();
    let d = registry.discover("tw");
    d.ready().await;
    let mut changes = is_discover(Box::pin(d.discover(|i| Some(i.addr.clone()))));
    let mut inserted = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap().unwrap() {
            Change::Insert(id, addr) => inserted.push((id, addr)),
            Change::Remove(id) => panic!("removed {id} first"),
        }
    }
    inserted.sort();
    assert_eq!(inserted, [("a".to_owned(), "127.0.0.1:1".to_owned()), ("b".to_owned(), "127.0.0.1:2".to_owned())]);
    a.deregister().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap().unwrap() {
        Change::Remove(id) => assert_eq!(id, "a"),
        Change::Insert(id, _) => panic!("inserted {id} again"),
    }
}
