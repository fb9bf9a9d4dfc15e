//! etcd authentication and authorisation, enforced in one place.
//!
//! - `service`: the Auth service (enable/disable/status, Authenticate,
//!   users, roles), over the store's durable auth tables.
//! - `perm`: the permission index, rebuilt from those tables on every
//!   change; a check is O(log n) in the grants.
//! - `token`: simple tokens, and [`Tokens`](token::Tokens) over both kinds.
//! - `jwt`: JWT tokens, etcd's claims and signature methods.
//!
//! Enforcement: every unary call goes through [`Server::unary`](crate::Server),
//! which asks the request type what it needs ([`Guarded::need`]) and has the
//! [`Gate`] check it before the handler runs; a request type without a
//! `Guarded` impl does not compile there. Watch and Observe streams check
//! each watched range through the same [`Gate::permit`]. The caller is the
//! user of the `token` (or `authorization`) metadata, else the client
//! certificate's CN ([`CertUser`], put in the request's extensions by the TLS
//! layer), else nobody, with etcd's errors for each case.

mod jwt;
mod perm;
mod service;
mod token;

pub use jwt::{DEFAULT_JWT_TTL, Jwt, JwtError, JwtOptions};
pub(crate) use token::AuthInfo;

use crate::ServerConfig;
use parking_lot::RwLock;
use perm::{PermIndex, interval};
use roster_api::etcdserverpb::{self as pb, request_op::Request as Op};
use roster_api::{EtcdError, v3electionpb as el, v3lockpb as lk, validate};
use roster_store::{AuthTables, Store};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use token::{SimpleTokens, Tokens};
use tonic::metadata::MetadataMap;

/// The user named by a verified client certificate's CN. The TLS layer puts
/// it in the request's extensions; it counts when no token is sent, as in
/// etcd with `--client-cert-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertUser(pub String);

/// Which tokens the server issues (`--auth-token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthToken {
    /// Random strings kept in the server's memory (etcd's default).
    #[default]
    Simple,
    /// Signed JWTs, with keys already loaded ([`Jwt::load`]).
    Jwt(Arc<Jwt>),
}

/// Auth settings (`--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub token: AuthToken,
    /// How long a simple token lives unused. etcd: 300 s. (A JWT's
    /// lifetime is its own `ttl` option.)
    pub token_ttl: Duration,
    /// bcrypt cost for new passwords, 4..=31. etcd: 10.
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { token: AuthToken::Simple, token_ttl: Duration::from_secs(300), bcrypt_cost: 10 }
    }
}

/// One key range a request reads or writes.
#[derive(Debug)]
pub(crate) struct Span<'a> {
    pub key: Cow<'a, [u8]>,
    pub range_end: Cow<'a, [u8]>,
    pub write: bool,
}

/// What a request needs before it may run.
#[derive(Debug)]
pub(crate) enum Need<'a> {
    /// Nothing; the token is not even looked at (etcd: Status, MemberList,
    /// keepalives, Authenticate).
    Open,
    /// A token, if sent, must be valid; nothing else.
    Token,
    /// As `Token`, but a bad token is the auth package's own error (code
    /// Unknown, "auth: ..."): etcd's Alarm returns raft's error unconverted.
    PlainToken,
    /// The root role.
    Admin,
    /// The root role, or being this user (etcd's UserGet).
    AdminOrSelf(&'a str),
    /// The root role, or holding this role (etcd's RoleGet).
    AdminOrHolder(&'a str),
    /// The root role, for a Maintenance call: etcd's maintenance layer
    /// returns the auth package's own errors, which reach clients as code
    /// Unknown with an "auth: " text.
    Maintenance,
    /// These ranges, and write on every key attached to these leases.
    Keys { spans: Vec<Span<'a>>, leases: Vec<i64> },
}

/// A request type that knows what it needs. Requests that fail validation
/// answer `Open`, so the handler reports the validation error first, as
/// etcd's gRPC layer validates before its auth layer looks.
pub(crate) trait Guarded {
    fn need(&self) -> Need<'_>;
    /// Whether a refusal reaches the caller as code Unknown with the
    /// message: etcd's Lock and Election servers call the KV through an
    /// in-process client, which turns every error into a plain one.
    const PLAIN: bool = false;
}

/// The tokens and the permission index.
pub(crate) struct Gate {
    tokens: Tokens,
    /// Swapped whole after each auth change; readers clone the `Arc`.
    index: RwLock<Arc<PermIndex>>,
    config: AuthConfig,
}

// === impl Gate ===

impl Gate {
    pub(crate) fn new(config: &ServerConfig, tables: &AuthTables) -> Gate {
        let config = config.auth.clone();
        Gate {
            tokens: match &config.token {
                AuthToken::Simple => Tokens::Simple(SimpleTokens::new(config.token_ttl)),
                AuthToken::Jwt(j) => Tokens::Jwt(j.clone()),
            },
            index: RwLock::new(Arc::new(PermIndex::build(tables))),
            config,
        }
    }

    fn index(&self) -> Arc<PermIndex> {
        self.index.read().clone()
    }

    /// Rebuilds the index from the store's tables, unless a newer one is in.
    pub(crate) fn refresh(&self, tables: &AuthTables) {
        let new = Arc::new(PermIndex::build(tables));
        let mut cur = self.index.write();
        if new.revision >= cur.revision {
            *cur = new;
        }
    }

    /// Who is calling: the token's user, else the certificate's, else nobody.
    pub(crate) fn identify(&self, meta: &MetadataMap, ext: &http::Extensions) -> Result<Option<AuthInfo>, EtcdError> {
        if let Some(v) = meta.get("token").or_else(|| meta.get("authorization")) {
            let raw = v.to_str().map_err(|_| EtcdError::InvalidAuthToken)?;
            let raw = raw.strip_prefix("Bearer ").unwrap_or(raw);
            return self.tokens.info(raw).map(Some).ok_or(EtcdError::InvalidAuthToken);
        }
        if let Some(CertUser(name)) = ext.get::<CertUser>() {
            return Ok(Some(AuthInfo { user: name.clone(), revision: self.index().revision }));
        }
        Ok(None)
    }

    /// The one check: may `who` do what `need` says? etcd's order: a bad
    /// token first, then auth off lets everything by, then the user.
    pub(crate) fn permit(
        &self,
        who: &Result<Option<AuthInfo>, EtcdError>,
        need: &Need<'_>,
        store: &Store,
    ) -> Result<(), EtcdError> {
        if let Need::Open = need {
            return Ok(());
        }
        let who = match (who, need) {
            // etcd's maintenance layer returns the auth package's own error.
            (Err(EtcdError::InvalidAuthToken), Need::Maintenance | Need::PlainToken) => {
                return Err(EtcdError::Plain("auth: invalid auth token".into()));
            }
            (who, _) => who.as_ref().map_err(Clone::clone)?,
        };
        let idx = self.index();
        if !idx.enabled {
            return Ok(());
        }
        match need {
            Need::Open | Need::Token | Need::PlainToken => Ok(()),
            Need::Maintenance => {
                let plain = |msg: &str| EtcdError::Plain(format!("auth: {msg}"));
                let Some(who) = who.as_ref().filter(|w| !w.user.is_empty()) else {
                    return Err(plain("user name is empty"));
                };
                match idx.users.get(&who.user) {
                    None => Err(plain("user not found")),
                    Some(u) if u.root => Ok(()),
                    Some(_) => Err(plain("permission denied")),
                }
            }
            Need::Admin | Need::AdminOrSelf(_) | Need::AdminOrHolder(_) => {
                let admin = match who.as_ref().filter(|w| !w.user.is_empty()) {
                    None => Err(EtcdError::UserEmpty),
                    Some(w) => match idx.users.get(&w.user) {
                        None => Err(EtcdError::UserNotFound),
                        Some(u) if u.root => Ok(()),
                        Some(_) => Err(EtcdError::PermissionDenied),
                    },
                };
                let user = who.as_ref().map_or("", |w| w.user.as_str());
                let excused = match need {
                    Need::AdminOrSelf(name) => *name == user,
                    Need::AdminOrHolder(role) => idx.holds(user, role),
                    _ => false,
                };
                if excused { Ok(()) } else { admin }
            }
            Need::Keys { spans, leases } => {
                // etcd checks a lease's keys one by one: revoking a lease
                // that holds none asks nothing, not even a user.
                let lease_keys: Vec<_> = leases
                    .iter()
                    .flat_map(|&id| {
                        store
                            .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
                            .map(|r| r.keys)
                            .unwrap_or_default()
                    })
                    .collect();
                if spans.is_empty() && lease_keys.is_empty() {
                    return Ok(());
                }
                let who = who.clone().unwrap_or_default();
                if who.revision == 0 {
                    return Err(EtcdError::UserEmpty);
                }
                if who.revision < idx.revision {
                    return Err(EtcdError::AuthOldRevision);
                }
                let Some(u) = idx.users.get(&who.user) else {
                    return Err(EtcdError::PermissionDenied);
                };
                if u.root {
                    return Ok(());
                }
                for s in spans {
                    let (a, b) = interval(&s.key, &s.range_end);
                    let set = if s.write { &u.write } else { &u.read };
                    if !set.covers(&a, &b) {
                        return Err(EtcdError::PermissionDenied);
                    }
                }
                for k in lease_keys {
                    let (a, b) = interval(&k, b"");
                    if !u.write.covers(&a, &b) {
                        return Err(EtcdError::PermissionDenied);
                    }
                }
                Ok(())
            }
        }
    }
}

// === what each request needs ===

fn read<'a>(key: &'a [u8], range_end: &'a [u8]) -> Span<'a> {
    Span { key: Cow::Borrowed(key), range_end: Cow::Borrowed(range_end), write: false }
}

fn write<'a>(key: &'a [u8], range_end: &'a [u8]) -> Span<'a> {
    Span { key: Cow::Borrowed(key), range_end: Cow::Borrowed(range_end), write: true }
}

fn keys(spans: Vec<Span<'_>>) -> Need<'_> {
    Need::Keys { spans, leases: vec![] }
}

/// etcd's `checkTxnAuth`: every compare reads, and both branches' ops need
/// what they would need alone (a put in a txn needs write only).
fn txn_spans<'a>(t: &'a pb::TxnRequest, out: &mut Vec<Span<'a>>) {
    for c in &t.compare {
        out.push(read(&c.key, &c.range_end));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => out.push(read(&r.key, &r.range_end)),
            Some(Op::RequestPut(p)) => out.push(write(&p.key, b"")),
            Some(Op::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    out.push(read(&d.key, &d.range_end));
                }
                out.push(write(&d.key, &d.range_end));
            }
            Some(Op::RequestTxn(t)) => txn_spans(t, out),
            None => {}
        }
    }
}

impl Guarded for pb::RangeRequest {
    fn need(&self) -> Need<'_> {
        if validate::check_range(self).is_err() {
            return Need::Open;
        }
        keys(vec![read(&self.key, &self.range_end)])
    }
}

impl Guarded for pb::PutRequest {
    fn need(&self) -> Need<'_> {
        if validate::check_put(self).is_err() {
            return Need::Open;
        }
        let mut spans = vec![write(&self.key, b"")];
        if self.prev_kv {
            spans.push(read(&self.key, b""));
        }
        // A lease whose keys the user may not write cannot take new keys
        // either: the user could not revoke it.
        let leases = if self.lease != 0 { vec![self.lease] } else { vec![] };
        Need::Keys { spans, leases }
    }
}

impl Guarded for pb::DeleteRangeRequest {
    fn need(&self) -> Need<'_> {
        if validate::check_delete(self).is_err() {
            return Need::Open;
        }
        let mut spans = vec![write(&self.key, &self.range_end)];
        if self.prev_kv {
            spans.push(read(&self.key, &self.range_end));
        }
        keys(spans)
    }
}

impl Guarded for pb::TxnRequest {
    fn need(&self) -> Need<'_> {
        if validate::check_txn(self).is_err() {
            return Need::Open;
        }
        let mut spans = vec![];
        txn_spans(self, &mut spans);
        keys(spans)
    }
}

impl Guarded for pb::CompactionRequest {
    fn need(&self) -> Need<'_> {
        Need::Token
    }
}

impl Guarded for pb::LeaseGrantRequest {
    fn need(&self) -> Need<'_> {
        Need::Token
    }
}

impl Guarded for pb::LeaseRevokeRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys { spans: vec![], leases: vec![self.id] }
    }
}

macro_rules! need {
    ($need:ident: $($t:path),* $(,)?) => {
        $(impl Guarded for $t {
            fn need(&self) -> Need<'_> {
                Need::$need
            }
        })*
    };
}

need!(Open: pb::LeaseTimeToLiveRequest, pb::LeaseLeasesRequest, pb::MemberListRequest, pb::StatusRequest, pb::AuthenticateRequest);
need!(Token: pb::AuthStatusRequest);
need!(PlainToken: pb::AlarmRequest);
need!(Maintenance: pb::DefragmentRequest, pb::HashRequest, pb::HashKvRequest, pb::MoveLeaderRequest, pb::SnapshotRequest);
impl Guarded for pb::AuthUserGetRequest {
    fn need(&self) -> Need<'_> {
        Need::AdminOrSelf(&self.name)
    }
}

impl Guarded for pb::AuthRoleGetRequest {
    fn need(&self) -> Need<'_> {
        Need::AdminOrHolder(&self.role)
    }
}

need!(Admin:
    pb::AuthEnableRequest,
    pb::AuthDisableRequest,
    pb::AuthUserAddRequest,
    pb::AuthUserListRequest,
    pb::AuthUserDeleteRequest,
    pb::AuthUserChangePasswordRequest,
    pb::AuthUserGrantRoleRequest,
    pb::AuthUserRevokeRoleRequest,
    pb::AuthRoleAddRequest,
    pb::AuthRoleListRequest,
    pb::AuthRoleDeleteRequest,
    pb::AuthRoleGrantPermissionRequest,
    pb::AuthRoleRevokePermissionRequest,
);

/// Lock and Election run etcd's client recipes with the caller's rights:
/// every participant reads `name/` and below; joining also writes there.
fn recipe(name: &[u8], joins: bool) -> Need<'static> {
    let prefix = roster_api::ops::prefix_of(name);
    let end = roster_api::range::prefix_end(&prefix);
    let span = |write| Span { key: Cow::Owned(prefix.clone()), range_end: Cow::Owned(end.clone()), write };
    let mut spans = vec![span(false)];
    if joins {
        spans.push(span(true));
    }
    keys(spans)
}

impl Guarded for lk::LockRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        recipe(&self.name, true)
    }
}

impl Guarded for el::CampaignRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        recipe(&self.name, true)
    }
}

impl Guarded for el::LeaderRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        recipe(&self.name, false)
    }
}

impl Guarded for lk::UnlockRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        keys(vec![write(&self.key, b"")])
    }
}

impl Guarded for el::ProclaimRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        match &self.leader {
            Some(l) => keys(vec![write(&l.key, b"")]),
            None => Need::Open,
        }
    }
}

impl Guarded for el::ResignRequest {
    const PLAIN: bool = true;
    fn need(&self) -> Need<'_> {
        match &self.leader {
            Some(l) => keys(vec![write(&l.key, b"")]),
            None => Need::Open,
        }
    }
}
