//! etcdserverpb.Auth: only Authenticate, which says auth is off, as etcd
//! does when no user was ever enabled. Clients configured with credentials
//! see that and carry on without a token.

use crate::Server;
use roster_api::etcdserverpb::{auth_server::Auth, AuthenticateRequest, AuthenticateResponse};
use roster_api::EtcdError;
use tonic::{Request, Response, Status};

const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";

// === impl Server as Auth ===

#[tonic::async_trait]
impl Auth for Server {
    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        self.unary(AUTHENTICATE, req, |_| async move { Err(EtcdError::AuthNotEnabled.into()) }).await
    }
}
