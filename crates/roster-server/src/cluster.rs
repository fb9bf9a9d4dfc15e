//! etcdserverpb.Cluster: MemberList, answering with the one member we are.

use crate::Server;
use roster_api::etcdserverpb::{cluster_server::Cluster, Member, MemberListRequest, MemberListResponse};
use tonic::{Request, Response, Status};

const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";

// === impl Server as Cluster ===

#[tonic::async_trait]
impl Cluster for Server {
    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        self.unary(MEMBER_LIST, req, |_| async move { Ok(self.member_list()) }).await
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
