//! The etcd v3 gRPC API over a Roster [`Store`], plus health and metrics over
//! HTTP: the serving half of `roster serve`.
//!
//! The caller binds the ports and owns shutdown; [`serve`] runs until the
//! shutdown future resolves, drains, and closes the store.
//!
//! Modules:
//! - `kv`, `watch`, `lease`, `cluster`, `maintenance`, `auth`: one per etcd
//!   service. Each handler validates with etcd's exact errors, checks the
//!   size of requests that etcd would put through raft, calls the store, and
//!   fills the response header.
//! - `concurrency`: the Lock and Election services, etcd's lock and election
//!   recipes run over the store on the caller's lease.
//! - `http`: `GET /health` and `GET /metrics`.
//! - `metrics`: the Prometheus registry.
//! - `compactor`: etcd's periodic and revision auto-compaction.
//! - `backup`: scheduled etcd-format snapshot files, the newest kept.
//! - `config`: [`ServerConfig`] and its [`TransportLimits`].
//! - `tls`: TLS connections for tonic and axum, and the client
//!   certificate's CN as a request extension (`CertUser`).
//! - `limit`: the cap on unary calls in flight ("etcdserver: too many
//!   requests"). HTTP/2 keepalive and the stream limit are tonic's, set in
//!   `serve_grpc`.
//! - `oversize`: an oversized request gets grpc-go's answer, as etcd's.
//! - `responses`: server-streaming responses fed through a bounded queue.
//!
//! Every gRPC service is implemented on one cheap `Clone` handle, `Server`,
//! over an `Arc` of what all handlers share.

mod auth;
mod backup;
mod cluster;
mod compactor;
mod concurrency;
mod config;
mod http;
mod kv;
mod lease;
mod limit;
mod maintenance;
mod metrics;
mod oversize;
mod responses;
mod tls;
mod watch;

pub use auth::{AuthConfig, AuthToken, DEFAULT_JWT_TTL, Jwt, JwtError, JwtOptions};
pub use backup::BackupConfig;
pub use config::{AutoCompaction, DEFAULT_QUOTA_BYTES, MAX_QUOTA_BYTES, ServerConfig, TransportLimits};

use metrics::Metrics;
use roster_api::etcdserverpb::{
    ResponseHeader, auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use roster_api::v3electionpb::election_server::ElectionServer;
use roster_api::v3lockpb::lock_server::LockServer;
use roster_api::{GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
use roster_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

/// The raft term a fresh single-node etcd 3.4 reports: bootstrap is term 1,
/// its one self-election makes it 2. One node never elects again, and
/// clients compare terms only for change, so a constant is honest enough.
const RAFT_TERM: u64 = 2;
/// Largest response we will encode. Big ranges must still go out; etcd
/// sets no send limit either.
const MAX_ENCODING_BYTES: usize = usize::MAX;

/// Services reported by `grpc.health.v1`, besides the overall "" status.
const HEALTH_SERVICES: [&str; 6] = [
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid server config: {0}")]
    Config(String),
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] roster_tls::TlsError),
}

/// Serves the etcd v3 API on `grpc` (and health/metrics on `http`) until
/// `shutdown` resolves. Then it stops accepting, lets in-flight calls finish
/// (open Watch and KeepAlive streams are ended with "etcdserver: server
/// stopped" so clients reconnect), stops background tasks and closes the
/// store.
pub async fn serve(
    grpc: TcpListener,
    http: Option<TcpListener>,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    // Files are checked before anything is served.
    // gRPC clients (tonic's among them) insist on ALPN h2; the HTTP side is
    // HTTP/1.1 only.
    let with_alpn = |t: &roster_tls::ServerTls, proto: &[u8]| {
        roster_tls::ServerTls { alpn: vec![proto.to_vec()], ..t.clone() }.server_config()
    };
    let grpc_tls = config.tls.as_ref().map(|t| with_alpn(t, b"h2")).transpose()?;
    let http_tls = config.http_tls.as_ref().map(|t| with_alpn(t, b"http/1.1")).transpose()?;
    let (stop_tx, stop_rx) = signal::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let server = Server::new(store.clone(), config, Stop(stop_rx));

    let (health, health_svc) = tonic_health::server::health_reporter();
    for name in HEALTH_SERVICES {
        health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }

    // Turns the caller's shutdown into our stop signal. Aborted below if the
    // server ends first, so it never outlives `serve`.
    let trigger = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            tracing::debug!("shutdown requested; draining");
            // Load balancers polling health see us leave before we stop.
            for name in HEALTH_SERVICES.into_iter().chain([""]) {
                health.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
            }
            stop_tx.send_replace(true);
        }
    });

    let quota = server.config().quota_bytes();
    if quota.is_some_and(|q| q > MAX_QUOTA_BYTES) {
        tracing::warn!(quota, max = MAX_QUOTA_BYTES, "quota-backend-bytes exceeds the maximum etcd recommends");
    }
    store.set_quota(quota, server.config().member_id);
    let mut background =
        vec![tokio::spawn(lease_expiry(server.clone())), tokio::spawn(progress_notify(server.clone()))];
    if let Some(b) = server.config().backup.clone() {
        background.push(tokio::spawn(backup::run(server.clone(), b)));
    }
    if let Some(mode) = server.config().auto_compaction {
        let check = server.config().auto_compaction_check;
        background.push(tokio::spawn(compactor::run(store.clone(), mode, check, server.stop().clone())));
    }
    let http_task = http.map(|l| tokio::spawn(http::serve(l, http_tls, server.clone())));

    let grpc_result = serve_grpc(grpc, grpc_tls, server.clone(), health_svc).await;

    // The gRPC server may have failed on its own: stop everything else too.
    stop_tx.send_replace(true);
    trigger.abort();
    for task in background {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "background task failed");
        }
    }
    let http_result = match http_task {
        Some(t) => t.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "HTTP server task failed");
            Ok(())
        }),
        None => Ok(()),
    };
    store.close();
    grpc_result.and(http_result)
}

async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    server: Server,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<(), ServerError> {
    // etcd accepts a gRPC message somewhat larger than its request limit, so
    // that an oversized request gets etcd's own error rather than the
    // transport's.
    const MAX_DECODING: usize = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    macro_rules! svc {
        ($s:ident) => {
            $s::new(server.clone())
                .max_decoding_message_size(MAX_DECODING)
                .max_encoding_message_size(MAX_ENCODING_BYTES)
        };
    }
    let stop = server.stop().clone();
    let limits = &server.config().transport;
    let router = tonic::transport::Server::builder()
        // Pings only a connection idle for the interval (hyper restarts the
        // timer on every frame read), as grpc-go's server keepalive does.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .layer(oversize::OversizeLayer)
        .layer(tls::CertUserLayer)
        .add_service(health)
        .add_service(svc!(KvServer))
        .add_service(svc!(WatchServer))
        .add_service(svc!(LeaseServer))
        .add_service(svc!(ClusterServer))
        .add_service(svc!(MaintenanceServer))
        .add_service(svc!(AuthServer))
        .add_service(svc!(LockServer))
        .add_service(svc!(ElectionServer));
    let grace = server.config().shutdown_grace;
    let stopped = async move { stop.wait().await };
    let result = match tls {
        Some(config) => {
            // Plaintext clients fail the handshake and never reach tonic.
            let incoming = roster_tls::TlsIncoming::new(listener, config).map_err(ServerError::Http)?;
            let run = router.serve_with_incoming_shutdown(tls::grpc_incoming(incoming), stopped);
            with_grace(run, server.stop().clone(), grace, "gRPC").await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let run = router.serve_with_incoming_shutdown(incoming, stopped);
            with_grace(run, server.stop().clone(), grace, "gRPC").await
        }
    };
    result.map_err(ServerError::Grpc)
}

/// Runs `fut`; once `stop` fires, waits at most `grace` more for it.
/// Connections that outlive the grace period (a client that ignores GOAWAY,
/// a health watch) are left to die with the process.
async fn with_grace<E>(
    fut: impl Future<Output = Result<(), E>>,
    stop: Stop,
    grace: std::time::Duration,
    what: &str,
) -> Result<(), E> {
    tokio::select! {
        r = fut => r,
        () = async { stop.wait().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "{what} connections still open after the shutdown grace period; leaving them");
            Ok(())
        }
    }
}

/// Revokes expired leases every tick until stopped.
async fn lease_expiry(server: Server) {
    let mut tick = tokio::time::interval(server.config().lease_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = server.store().expire_leases().await;
                if n > 0 {
                    tracing::debug!(leases = n, "revoked expired leases");
                }
            }
            () = server.stop().wait() => return,
        }
    }
}

/// Sends progress notifications to watchers that asked for them.
async fn progress_notify(server: Server) {
    let every = server.config().progress_notify_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => server.store().progress_notify(),
            () = server.stop().wait() => return,
        }
    }
}

/// Resolves once the server is shutting down. Cheap to clone; every stream
/// task holds one.
#[derive(Clone)]
pub(crate) struct Stop(signal::Receiver<bool>);

// === impl Stop ===

impl Stop {
    pub(crate) async fn wait(&self) {
        let mut rx = self.0.clone();
        // A dropped sender also means "stop".
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// The handle every gRPC service is implemented on.
#[derive(Clone)]
pub(crate) struct Server {
    shared: Arc<Shared>,
}

/// Read-only after start, so no lock: the store and metrics synchronise
/// internally.
struct Shared {
    store: Store,
    config: ServerConfig,
    metrics: Metrics,
    stop: Stop,
    inflight: limit::InFlight,
    backups: backup::BackupState,
    gate: auth::Gate,
}

/// A response with an etcd `ResponseHeader`.
pub(crate) trait Headed {
    /// Whether a missing revision is filled with the current one. etcd's
    /// ClusterServer sends ids and term only.
    const FILL_REVISION: bool = true;
    /// Whether the response carries a header at all: etcd's Alarm answers
    /// with none.
    const HEADER: bool = true;
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! headed {
    ($($t:ident),* $(,)?) => {
        $(impl Headed for roster_api::etcdserverpb::$t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

headed!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    LeaseKeepAliveResponse,
    LeaseTimeToLiveResponse,
    LeaseLeasesResponse,
    StatusResponse,
    DefragmentResponse,
    HashResponse,
    HashKvResponse,
    MoveLeaderResponse,
    AuthenticateResponse,
    AuthEnableResponse,
    AuthDisableResponse,
    AuthStatusResponse,
    AuthUserAddResponse,
    AuthUserGetResponse,
    AuthUserListResponse,
    AuthUserDeleteResponse,
    AuthUserChangePasswordResponse,
    AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse,
    AuthRoleAddResponse,
    AuthRoleGetResponse,
    AuthRoleListResponse,
    AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionResponse,
);

macro_rules! headed_in {
    ($m:ident: $($t:ident),* $(,)?) => {
        $(impl Headed for roster_api::$m::$t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

headed_in!(v3lockpb: LockResponse, UnlockResponse);
headed_in!(v3electionpb: CampaignResponse, ProclaimResponse, LeaderResponse, ResignResponse);

impl Headed for roster_api::etcdserverpb::AlarmResponse {
    const HEADER: bool = false;
    fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        &mut self.header
    }
}

impl Headed for roster_api::etcdserverpb::MemberListResponse {
    const FILL_REVISION: bool = false;
    fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        &mut self.header
    }
}

/// etcd's request size limit, which it applies where a request enters raft
/// (writes, leases, compaction), after validation. Reads never see it, so a
/// Range with a 1.6 MB key is answered.
pub(crate) fn check_raft_size(req: &impl prost::Message) -> Result<(), Status> {
    roster_api::validate::check_size(req.encoded_len()).map_err(Status::from)
}

// === impl Server ===

impl Server {
    fn new(store: Store, config: ServerConfig, stop: Stop) -> Self {
        let inflight = limit::InFlight::new(config.transport.max_inflight_requests);
        let gate = auth::Gate::new(&config, &store.auth_tables());
        Server {
            shared: Arc::new(Shared {
                store,
                config,
                metrics: Metrics::new(),
                stop,
                inflight,
                gate,
                backups: backup::BackupState::default(),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.shared.store
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub(crate) fn backups(&self) -> &backup::BackupState {
        &self.shared.backups
    }

    pub(crate) fn stop(&self) -> &Stop {
        &self.shared.stop
    }

    pub(crate) fn gate(&self) -> &auth::Gate {
        &self.shared.gate
    }

    /// The one auth check of a unary call (see `auth`).
    pub(crate) fn authorize<Req: auth::Guarded>(&self, req: &Request<Req>) -> Result<(), Status> {
        let need = req.get_ref().need();
        if let auth::Need::Open = need {
            return Ok(());
        }
        let who = self.gate().identify(req.metadata(), req.extensions());
        self.gate().permit(&who, &need, self.store()).map_err(|e| {
            let status = Status::from(e);
            if Req::PLAIN { Status::new(tonic::Code::Unknown, status.message()) } else { status }
        })
    }

    /// Fills the top-level header the store left partial: ids, term, and the
    /// current revision when the store gave none. Nested txn responses are
    /// left alone, as etcd leaves them.
    pub(crate) fn fill_header(&self, h: &mut Option<ResponseHeader>) {
        let h = h.get_or_insert_with(ResponseHeader::default);
        self.fill_ids(h);
        if h.revision == 0 {
            h.revision = self.store().revision();
        }
    }

    /// Ids and term only. Watch responses keep the store's revision even when
    /// it is 0 (etcd sends 0 with a compacted-watch cancel), and MemberList
    /// carries no revision in etcd.
    pub(crate) fn fill_ids(&self, h: &mut ResponseHeader) {
        h.cluster_id = self.config().cluster_id;
        h.member_id = self.config().member_id;
        h.raft_term = RAFT_TERM;
    }

    /// One unary call: a place under the in-flight cap, `f` (validation,
    /// size check, the store call), then the header, then metrics.
    pub(crate) async fn unary<Req, Resp, Fut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        f: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Req: auth::Guarded,
        Resp: Headed,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let started = Instant::now();
        let result = match self.shared.inflight.acquire(method) {
            Ok(_permit) => match self.authorize(&req) {
                Ok(()) => f(req.into_inner()).await,
                Err(denied) => Err(denied),
            },
            Err(refused) => Err(refused),
        };
        let result = result.map(|mut resp| {
            if !Resp::HEADER {
                *resp.header_mut() = None;
            } else if Resp::FILL_REVISION {
                self.fill_header(resp.header_mut());
            } else {
                self.fill_ids(resp.header_mut().get_or_insert_with(ResponseHeader::default));
            }
            resp
        });
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        if let Err(status) = &result {
            tracing::debug!(method, code = ?status.code(), message = status.message(), "request failed");
        }
        self.metrics().observe(method, code, Some(started.elapsed()));
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        let (_tx, rx) = signal::channel(false);
        let config = ServerConfig { cluster_id: 11, member_id: 22, ..Default::default() };
        Server::new(Store::in_memory(), config, Stop(rx))
    }

    #[tokio::test]
    async fn fill_header_sets_ids_and_keeps_store_revision() {
        let s = server();
        let mut h = Some(ResponseHeader { revision: 5, ..Default::default() });
        s.fill_header(&mut h);
        assert_eq!(h, Some(ResponseHeader { cluster_id: 11, member_id: 22, revision: 5, raft_term: 2 }));
    }

    #[tokio::test]
    async fn fill_header_supplies_missing_revision() {
        let s = server();
        let mut h = None;
        s.fill_header(&mut h);
        let h = h.unwrap();
        assert_eq!(h.revision, s.store().revision());
        assert_eq!(h.revision, 1, "a fresh store is at revision 1");
        assert_eq!((h.cluster_id, h.member_id, h.raft_term), (11, 22, 2));
    }

    #[tokio::test]
    async fn stop_resolves_when_sender_drops() {
        let (tx, rx) = signal::channel(false);
        drop(tx);
        Stop(rx).wait().await;
    }
}
