//! etcdserverpb.Lease: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases.

use crate::responses::{self, Feed, Responses};
use crate::{Server, check_raft_size};
use roster_api::EtcdError;
use roster_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    lease_server::Lease,
};
use tonic::{Code, Request, Response, Status, Streaming};

const GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
const LEASES: &str = "/etcdserverpb.Lease/LeaseLeases";

/// Responses queued per KeepAlive stream. Clients send one request per
/// TTL/3, so a handful is plenty; when full, we stop reading requests.
const KEEP_ALIVE_BUFFER: usize = 16;

// === impl Server as Lease ===

#[tonic::async_trait]
impl Lease for Server {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        self.unary(GRANT, req, |r| async move {
            self.store().check_quota_lease_grant()?;
            check_raft_size(&r)?;
            Ok(self.store().lease_grant(r).await?)
        })
        .await
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.unary(REVOKE, req, |r| async move {
            check_raft_size(&r)?;
            Ok(self.store().lease_revoke(r).await?)
        })
        .await
    }

    type LeaseKeepAliveStream = Responses<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = responses::queue(KEEP_ALIVE_BUFFER);
        tokio::spawn(keep_alive(self.clone(), inbound, tx));
        Ok(Response::new(rx))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.unary(TIME_TO_LIVE, req, |r| async move { Ok(self.store().lease_time_to_live(r)?) }).await
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.unary(LEASES, req, |_| async move { Ok(self.store().lease_leases()?) }).await
    }
}

/// Answers each keepalive in order until the client closes its side, goes
/// away, or the server stops. An unknown lease answers TTL 0, never an error,
/// as etcd does.
async fn keep_alive(server: Server, mut inbound: Streaming<LeaseKeepAliveRequest>, tx: Feed<LeaseKeepAliveResponse>) {
    let _gauge = server.metrics().keepalive_stream();
    let serve = async {
        loop {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                // The client closed its send side: etcd ends the stream too.
                Ok(None) => return Code::Ok,
                Err(status) => {
                    tracing::debug!(%status, "keepalive stream broke");
                    return Code::Cancelled;
                }
            };
            let mut resp = match server.store().lease_keep_alive(req.id) {
                Ok(resp) => resp,
                Err(e) => {
                    let status = tonic::Status::from(e);
                    let code = status.code();
                    let _ = tx.send(Err(status)).await;
                    return code;
                }
            };
            server.fill_header(&mut resp.header);
            if tx.send(Ok(resp)).await.is_err() {
                return Code::Cancelled;
            }
        }
    };
    let code = tokio::select! {
        code = serve => code,
        () = tx.closed() => Code::Cancelled,
        () = server.stop().wait() => {
            // Tell the client to go elsewhere; if its queue is full it will
            // notice the stream end anyway.
            let _ = tx.try_send(Err(EtcdError::Stopped.into()));
            Code::Unavailable
        }
    };
    server.metrics().observe(KEEP_ALIVE, code, None);
}
