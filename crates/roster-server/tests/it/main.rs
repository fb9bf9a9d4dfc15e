//! roster-server's integration tests, one binary: `serve` in-process on
//! `127.0.0.1:0` (roster-testkit's [`InProcess`]) with an in-memory store,
//! driven through the generated tonic clients and raw HTTP.
//!
//! - `kv`: headers, validation and size limits of KV calls.
//! - `cluster`: MemberList, Status and Authenticate on one member.
//! - `streams`: Watch and LeaseKeepAlive streams, progress notify, lease
//!   expiry, shutdown ending open streams.
//! - `serving`: gRPC and HTTP health, metrics, refused configs.

mod cluster;
mod kv;
mod serving;
mod streams;

use roster_api::MAX_REQUEST_BYTES;
use roster_api::etcdserverpb::{
    AlarmRequest, AuthenticateRequest, LeaseGrantRequest, LeaseKeepAliveRequest, MemberListRequest, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient,
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, response_op, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use roster_server::{ServerConfig, ServerError, serve};
use roster_store::{ManualClock, Store};
use roster_testkit::InProcess;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const CLUSTER_ID: u64 = 0xC1;
const MEMBER_ID: u64 = 0x3E;
/// What a fresh single-node etcd 3.4 reports.
const RAFT_TERM: u64 = 2;

/// How the tests start a server: the testkit's, with the ids above.
struct TestServer;

impl TestServer {
    async fn start() -> InProcess {
        Self::start_with(Store::in_memory(), |_| {}).await
    }

    async fn start_with(store: Store, tweak: impl FnOnce(&mut ServerConfig)) -> InProcess {
        let mut config =
            ServerConfig { cluster_id: CLUSTER_ID, member_id: MEMBER_ID, name: "it".into(), ..Default::default() };
        tweak(&mut config);
        InProcess::start_with(None, config, store).await
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    roster_testkit::http_get(addr, path).await.unwrap()
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.to_owned().into(), value: v.to_owned().into(), ..Default::default() }
}
