//! Read-only views of the registry itself, for operators' tools (the
//! console): member list, status, alarms. Each is one unary call with the
//! client's failover and timeouts.

use crate::client::{Client, Repeat};
use crate::error::Result;
use roster_api::etcdserverpb::alarm_request::AlarmAction;
use roster_api::etcdserverpb::cluster_client::ClusterClient;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse,
};

// === impl Client (maintenance) ===

impl Client {
    /// `Maintenance.Status` of the endpoint in use.
    pub async fn status(&self) -> Result<StatusResponse> {
        self.call(Repeat::Safe, |ch| async move { MaintenanceClient::new(ch).status(StatusRequest {}).await }).await
    }

    /// `Cluster.MemberList`.
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.call(
            Repeat::Safe,
            |ch| async move { ClusterClient::new(ch).member_list(MemberListRequest::default()).await },
        )
        .await
    }

    /// The raised alarms (`Maintenance.Alarm` with action GET).
    pub async fn alarms(&self) -> Result<AlarmResponse> {
        let req = AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() };
        self.call(Repeat::Safe, |ch| async move { MaintenanceClient::new(ch).alarm(req).await }).await
    }
}
