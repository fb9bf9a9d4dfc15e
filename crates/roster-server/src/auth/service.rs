//! etcdserverpb.Auth over the store's durable auth tables.
//!
//! Changes go through [`Store::auth_change`](roster_store::Store), which
//! applies etcd's rules and answers once the change is on disk; the gate's
//! permission index is then rebuilt. Passwords are hashed here, with bcrypt
//! on the blocking pool: bcrypt is slow on purpose, and Authenticate calls
//! run side by side rather than one at a time as in etcd (etcd#11826).

use super::AuthInfo;
use crate::Server;
use bytes::Bytes;
use roster_api::EtcdError;
use roster_api::etcdserverpb::{auth_server::Auth, *};
use roster_store::AuthChange;
use tonic::{Request, Response, Status};

macro_rules! method {
    ($name:literal) => {
        concat!("/etcdserverpb.Auth/", $name)
    };
}

impl Server {
    /// Applies an auth change, then rebuilds the permission index.
    async fn auth_change(&self, c: AuthChange) -> Result<(), Status> {
        let forget = match &c {
            AuthChange::UserDelete { name } | AuthChange::UserChangePassword { name, .. } => Some(name.clone()),
            _ => None,
        };
        let disable = matches!(c, AuthChange::Disable);
        self.store().auth_change(c).await?;
        let tables = self.store().auth_tables();
        self.gate().refresh(&tables);
        // etcd ends the tokens of a user whose password changed or who left.
        if let Some(user) = forget {
            self.gate().tokens.invalidate_user(&user);
        }
        if disable {
            self.gate().tokens.clear();
        }
        Ok(())
    }

    /// A bcrypt hash of `password` at the configured cost, off the runtime.
    async fn hash(&self, password: String) -> Result<Bytes, Status> {
        let cost = self.gate().config.bcrypt_cost;
        let hashed = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| EtcdError::Internal(e.to_string()))?
            .map_err(|e| EtcdError::Internal(e.to_string()))?;
        Ok(Bytes::from(hashed.into_bytes()))
    }

    /// etcd's CheckPassword then Authenticate: the same error for an unknown
    /// user, a user without a password and a wrong password.
    async fn login(&self, name: String, password: String) -> Result<String, Status> {
        let tables = self.store().auth_tables();
        if !tables.enabled {
            return Err(EtcdError::AuthNotEnabled.into());
        }
        let user = tables.user(&name).ok_or(EtcdError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) || user.password.is_empty() {
            return Err(EtcdError::AuthFailed.into());
        }
        let hash = String::from_utf8_lossy(&user.password).into_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(EtcdError::AuthFailed.into());
        }
        self.gate()
            .tokens
            .issue(AuthInfo { user: name, revision: tables.revision })
            .ok_or_else(|| EtcdError::Plain("auth: token signing attempted with verify-only key".into()).into())
    }
}

// === impl Server as Auth ===

#[tonic::async_trait]
impl Auth for Server {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        self.unary(method!("AuthEnable"), req, |_| async move {
            self.auth_change(AuthChange::Enable).await?;
            Ok(AuthEnableResponse { header: None })
        })
        .await
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        self.unary(method!("AuthDisable"), req, |_| async move {
            self.auth_change(AuthChange::Disable).await?;
            Ok(AuthDisableResponse { header: None })
        })
        .await
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        self.unary(method!("AuthStatus"), req, |_| async move {
            let t = self.store().auth_tables();
            Ok(AuthStatusResponse { header: None, enabled: t.enabled, auth_revision: t.revision })
        })
        .await
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        self.unary(method!("Authenticate"), req, |r| async move {
            let token = self.login(r.name, r.password).await?;
            Ok(AuthenticateResponse { header: None, token })
        })
        .await
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        self.unary(method!("UserAdd"), req, |r| async move {
            let no_password = r.options.is_some_and(|o| o.no_password);
            // Hash only for a name the store may accept, so a typo costs no bcrypt.
            let password = if no_password || r.name.is_empty() {
                Bytes::new()
            } else if !r.hashed_password.is_empty() {
                Bytes::from(r.hashed_password.into_bytes())
            } else {
                self.hash(r.password).await?
            };
            self.auth_change(AuthChange::UserAdd { name: r.name, password, no_password }).await?;
            Ok(AuthUserAddResponse { header: None })
        })
        .await
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        self.unary(method!("UserGet"), req, |r| async move {
            let t = self.store().auth_tables();
            let u = t.user(&r.name).ok_or(EtcdError::UserNotFound)?;
            Ok(AuthUserGetResponse { header: None, roles: u.roles.clone() })
        })
        .await
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        self.unary(method!("UserList"), req, |_| async move {
            let users = self.store().auth_tables().users.keys().cloned().collect();
            Ok(AuthUserListResponse { header: None, users })
        })
        .await
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.unary(method!("UserDelete"), req, |r| async move {
            self.auth_change(AuthChange::UserDelete { name: r.name }).await?;
            Ok(AuthUserDeleteResponse { header: None })
        })
        .await
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.unary(method!("UserChangePassword"), req, |r| async move {
            if self.store().auth_tables().user(&r.name).is_none() {
                return Err(EtcdError::UserNotFound.into());
            }
            let password = if r.hashed_password.is_empty() {
                self.hash(r.password).await?
            } else {
                Bytes::from(r.hashed_password.into_bytes())
            };
            self.auth_change(AuthChange::UserChangePassword { name: r.name, password }).await?;
            Ok(AuthUserChangePasswordResponse { header: None })
        })
        .await
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.unary(method!("UserGrantRole"), req, |r| async move {
            self.auth_change(AuthChange::UserGrantRole { user: r.user, role: r.role }).await?;
            Ok(AuthUserGrantRoleResponse { header: None })
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.unary(method!("UserRevokeRole"), req, |r| async move {
            self.auth_change(AuthChange::UserRevokeRole { name: r.name, role: r.role }).await?;
            Ok(AuthUserRevokeRoleResponse { header: None })
        })
        .await
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.unary(method!("RoleAdd"), req, |r| async move {
            self.auth_change(AuthChange::RoleAdd { name: r.name }).await?;
            Ok(AuthRoleAddResponse { header: None })
        })
        .await
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.unary(method!("RoleGet"), req, |r| async move {
            let t = self.store().auth_tables();
            let role = t.role(&r.role).ok_or(EtcdError::RoleNotFound)?;
            Ok(AuthRoleGetResponse { header: None, perm: role.key_permission.clone() })
        })
        .await
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        self.unary(method!("RoleList"), req, |_| async move {
            let roles = self.store().auth_tables().roles.keys().cloned().collect();
            Ok(AuthRoleListResponse { header: None, roles })
        })
        .await
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.unary(method!("RoleDelete"), req, |r| async move {
            self.auth_change(AuthChange::RoleDelete { name: r.role }).await?;
            Ok(AuthRoleDeleteResponse { header: None })
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.unary(method!("RoleGrantPermission"), req, |r| async move {
            let perm = r.perm.unwrap_or_default();
            self.auth_change(AuthChange::RoleGrantPermission { name: r.name, perm }).await?;
            Ok(AuthRoleGrantPermissionResponse { header: None })
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.unary(method!("RoleRevokePermission"), req, |r| async move {
            let change = AuthChange::RoleRevokePermission { role: r.role, key: r.key, range_end: r.range_end };
            self.auth_change(change).await?;
            Ok(AuthRoleRevokePermissionResponse { header: None })
        })
        .await
    }
}
