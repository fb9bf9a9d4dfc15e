//! `serve` in-process on `127.0.0.1:0` with an in-memory store, driven
//! through the generated tonic clients and raw HTTP.

use roster_api::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, response_op, watch_client::WatchClient,
    watch_request::RequestUnion, AlarmRequest, AuthenticateRequest, LeaseGrantRequest, LeaseKeepAliveRequest, MemberListRequest,
    PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};
use roster_api::MAX_REQUEST_BYTES;
use roster_server::{serve, ServerConfig, ServerError};
use roster_store::{ManualClock, Store};
use std::sync::Arc;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

const CLUSTER_ID: u64 = 0xC1;
const MEMBER_ID: u64 = 0x3E;
/// What a fresh single-node etcd 3.4 reports.
const RAFT_TERM: u64 = 2;

/// A running server; stopped by [`TestServer::stop`] or on drop.
struct TestServer {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::start_with(Store::in_memory(), |_| {}).await
    }

    async fn start_with(store: Store, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let grpc_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (grpc_l.local_addr().unwrap(), http_l.local_addr().unwrap());
        let mut config = ServerConfig {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            name: "it".into(),
            client_urls: vec![format!("http://{grpc}")],
            ..Default::default()
        };
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(grpc_l, Some(http_l), store, config, shutdown));
        TestServer { grpc, http, stop: Some(stop), task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap()
    }

    async fn stop(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(4), task).await.expect("serve returned within its grace").unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.to_owned().into(), value: v.to_owned().into(), ..Default::default() }
}

#[tokio::test]
async fn put_then_get_carries_full_header() {
    let srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let p = kv.put(put("a", "1")).await.unwrap().into_inner();
    let h = p.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term, h.revision), (CLUSTER_ID, MEMBER_ID, RAFT_TERM, 2));

    let r = kv.range(RangeRequest { key: "a".into(), ..Default::default() }).await.unwrap().into_inner();
    let h = r.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term, h.revision), (CLUSTER_ID, MEMBER_ID, RAFT_TERM, 2));
    assert_eq!(r.count, 1);
    assert_eq!(&r.kvs[0].value[..], b"1");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn txn_fills_only_the_top_level_header() {
    let srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let op = RequestOp { request: Some(request_op::Request::RequestPut(put("t", "v"))) };
    let t = kv.txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] }).await.unwrap().into_inner();
    let h = t.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term), (CLUSTER_ID, MEMBER_ID, RAFT_TERM));
    let Some(response_op::Response::ResponsePut(p)) = &t.responses[0].response else { panic!("{t:?}") };
    if let Some(nested) = &p.header {
        assert_eq!((nested.cluster_id, nested.member_id), (0, 0), "etcd leaves nested headers as the store made them");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn empty_key_is_invalid_argument() {
    let srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let err = kv.put(put("", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");
    let err = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: key is not provided");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_request_is_too_large() {
    let srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let big = PutRequest { key: "big".into(), value: vec![b'x'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    let err = kv.put(big).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");

    // Validation comes first, as in etcd.
    let big_empty = PutRequest { value: vec![b'x'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    assert_eq!(kv.put(big_empty).await.unwrap_err().message(), "etcdserver: key is not provided");

    // Reads are not size-checked: etcd answers a range with a huge key.
    let huge_key = RangeRequest { key: vec![b'k'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    assert_eq!(kv.range(huge_key).await.unwrap().into_inner().count, 0);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn status_leader_is_the_listed_member() {
    let srv = TestServer::start().await;
    let ch = srv.channel().await;
    let st = MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await.unwrap().into_inner();
    let ml = ClusterClient::new(ch.clone()).member_list(MemberListRequest {}).await.unwrap().into_inner();
    assert_eq!(st.version, "3.4.0");
    assert_eq!(st.leader, MEMBER_ID);
    assert_eq!(st.raft_term, RAFT_TERM);
    assert_eq!(ml.members.len(), 1);
    assert_eq!(ml.members[0].id, st.leader);
    assert_eq!(ml.members[0].name, "it");
    assert_eq!(ml.members[0].client_ur_ls, vec![format!("http://{}", srv.grpc)]);
    let h = ml.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.revision), (CLUSTER_ID, MEMBER_ID, 0), "etcd's MemberList has no revision");

    let alarms = MaintenanceClient::new(ch).alarm(AlarmRequest::default()).await.unwrap().into_inner();
    assert!(alarms.alarms.is_empty());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn authenticate_says_auth_is_off() {
    let srv = TestServer::start().await;
    let mut auth = AuthClient::new(srv.channel().await);
    let err = auth.authenticate(AuthenticateRequest { name: "u".into(), password: "p".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: authentication is not enabled");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn watch_answers_created_then_the_event() {
    let srv = TestServer::start().await;
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
    let srv = TestServer::start().await;
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
async fn grpc_health_reports_serving() {
    use tonic_health::pb::{health_client::HealthClient, health_check_response::ServingStatus, HealthCheckRequest};
    let srv = TestServer::start().await;
    let mut health = HealthClient::new(srv.channel().await);
    for service in ["", "etcdserverpb.KV", "etcdserverpb.Watch"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn http_health_and_metrics() {
    let srv = TestServer::start().await;
    KvClient::new(srv.channel().await).put(put("m", "1")).await.unwrap();

    let (status, body) = http_get(srv.http, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"health":"true"}"#);

    let (status, body) = http_get(srv.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("roster_store_revision 2"), "{body}");
    assert!(body.contains("roster_store_keys 1"), "{body}");
    assert!(body.contains(r#"roster_grpc_requests_total{method="/etcdserverpb.KV/Put",code="OK"} 1"#), "{body}");
    assert!(body.contains("roster_grpc_request_duration_seconds_bucket"), "{body}");

    let (status, _) = http_get(srv.http, "/nope").await;
    assert_eq!(status, 404);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let srv = TestServer::start().await;
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

#[tokio::test]
async fn invalid_config_is_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig { member_id: 0, ..Default::default() };
    let err = serve(l, None, Store::in_memory(), config, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}

#[tokio::test]
async fn progress_notify_reaches_watchers_that_asked() {
    let srv = TestServer::start_with(Store::in_memory(), |c| c.progress_notify_interval = Duration::from_millis(50)).await;
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
    let srv = TestServer::start_with(store, |c| c.lease_tick = Duration::from_millis(10)).await;
    let ch = srv.channel().await;
    let grant = LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 2, id: 0 }).await.unwrap().into_inner();
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
