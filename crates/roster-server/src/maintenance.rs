//! etcdserverpb.Maintenance: Status and Alarm.

use crate::{Server, RAFT_TERM};
use roster_api::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

const STATUS: &str = "/etcdserverpb.Maintenance/Status";
const ALARM: &str = "/etcdserverpb.Maintenance/Alarm";

/// The etcd version we answer as: the 3.4 API is what we speak, and clients
/// gate features on this string.
pub(crate) const ETCD_VERSION: &str = "3.4.0";

// === impl Server as Maintenance ===

#[tonic::async_trait]
impl Maintenance for Server {
    /// Roster raises no alarms (no quota, no corruption checks), so every
    /// action answers an empty list; activating one is accepted and dropped.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.unary(ALARM, req, |_| async move { Ok(AlarmResponse { header: None, alarms: vec![] }) }).await
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.unary(STATUS, req, |_| async move { Ok(self.status()) }).await
    }
}

impl Server {
    fn status(&self) -> StatusResponse {
        let s = self.store().status();
        StatusResponse {
            header: None,
            version: ETCD_VERSION.to_owned(),
            db_size: s.db_size,
            leader: self.config().member_id,
            // Each durable log record stands in for one raft entry.
            raft_index: s.writes,
            raft_term: RAFT_TERM,
            raft_applied_index: s.writes,
            // Why the store refuses writes, as etcd lists its alarms here.
            errors: s.failure.into_iter().collect(),
            db_size_in_use: s.db_size,
            is_learner: false,
        }
    }
}
