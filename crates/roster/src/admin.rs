//! Read-only views of the registry itself, for operators' tools (the
//! console): member list, status, alarms, whether auth is on. Each is one
//! unary call with the client's failover and timeouts.

use crate::client::{Client, Repeat};
use crate::error::Error;
use crate::error::Result;
use roster_api::etcdserverpb::alarm_request::AlarmAction;
use roster_api::etcdserverpb::auth_client::AuthClient;
use roster_api::etcdserverpb::cluster_client::ClusterClient;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AuthenticateRequest, MemberListRequest, MemberListResponse, StatusRequest,
    StatusResponse,
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

    /// Whether the registry has auth on. Asked with an Authenticate that no
    /// user passes (an empty name, refused before any password hashing),
    /// not with a read: a read made with a client certificate passes as the
    /// certificate's user (its CN) and would make auth look off. etcd 3.4
    /// has no `AuthStatus`; this works on it and on roster alike.
    pub async fn auth_enabled(&self) -> Result<bool> {
        let probe = |ch| async move { AuthClient::new(ch).authenticate(AuthenticateRequest::default()).await };
        match self.call(Repeat::Safe, probe).await {
            // No server hands out a token for an empty name; if one did,
            // auth is on all the same.
            Ok(_) => Ok(true),
            Err(Error::Status(s)) if crate::client::is_auth_not_enabled(&s) => Ok(false),
            // "authentication failed, invalid user ID or password".
            Err(Error::Status(s)) if s.code() == tonic::Code::InvalidArgument => Ok(true),
            Err(e) => Err(e),
        }
    }
}
