//! etcdserverpb.Cluster: MemberList, answering with the one member we are.
//! Adding, removing, updating or promoting members is refused with an
//! error that says why and where to go: `roster serve` is one node by
//! design (we never build our own consensus), and a cluster is an etcd
//! cluster, reached by migrating a snapshot.

use crate::Server;
use roster_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";

/// Why membership changes are refused, and the way to a cluster.
pub(crate) const SINGLE_NODE: &str = "roster serve is a single-node registry and has no peers to add, remove, update or promote; \
     to run a cluster, move to etcd: `roster snapshot save backup.db`, then `etcdctl snapshot restore backup.db` \
     on each member (see docs/operations.md)";

fn single_node() -> Status {
    Status::failed_precondition(SINGLE_NODE)
}

// === impl Server as Cluster ===

#[tonic::async_trait]
impl Cluster for Server {
    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        self.unary(MEMBER_LIST, req, |_| async move { Ok(self.member_list()) }).await
    }

    async fn member_add(&self, _req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(single_node())
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(single_node())
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(single_node())
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(single_node())
    }
}

impl Server {
    fn member_list(&self) -> MemberListResponse {
        let c = self.config();
        // `unary` adds ids and term; etcd sends no revision here.
        MemberListResponse {
            header: None,
            members: vec![Member {
                id: c.member_id,
                name: c.name.clone(),
                peer_ur_ls: c.peer_urls.clone(),
                client_ur_ls: c.client_urls.clone(),
                is_learner: false,
            }],
        }
    }
}
