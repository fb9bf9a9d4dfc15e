//! What the log and snapshots hold. Records carry effects (the keys a write
//! changed), not requests, so replay needs no validation and cannot diverge.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Record {
    /// Position in the log; snapshots name the last one they include.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The revision these changes made, or 0 when they made none.
    #[prost(int64, tag = "2")]
    pub rev: i64,
    #[prost(message, repeated, tag = "3")]
    pub changes: Vec<Change>,
    #[prost(message, repeated, tag = "4")]
    pub grants: Vec<LeaseRec>,
    #[prost(int64, repeated, tag = "5")]
    pub revokes: Vec<i64>,
    #[prost(int64, optional, tag = "6")]
    pub compact: Option<i64>,
    /// A change to users, roles or the auth flag (see `auth`).
    #[prost(message, optional, tag = "7")]
    pub auth: Option<AuthRec>,
}

/// The effect of one auth change: users and roles as they are after it,
/// what it removed, the flag if it moved, and the new auth revision. A
/// snapshot holds every user and role this way.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AuthRec {
    #[prost(bool, optional, tag = "1")]
    pub enabled: Option<bool>,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(message, repeated, tag = "3")]
    pub put_users: Vec<roster_api::authpb::User>,
    #[prost(string, repeated, tag = "4")]
    pub del_users: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub put_roles: Vec<roster_api::authpb::Role>,
    #[prost(string, repeated, tag = "6")]
    pub del_roles: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Change {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub delete: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRec {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Snapshot {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub rev: i64,
    #[prost(int64, tag = "3")]
    pub compact_rev: i64,
    #[prost(message, repeated, tag = "4")]
    pub keys: Vec<KeyRec>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<LeaseRec>,
    /// Absent in snapshots written before auth existed.
    #[prost(message, optional, tag = "6")]
    pub auth: Option<AuthRec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyRec {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryRec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EntryRec {
    #[prost(int64, tag = "1")]
    pub mod_rev: i64,
    #[prost(int64, tag = "2")]
    pub create_rev: i64,
    #[prost(int64, tag = "3")]
    pub version: i64,
    #[prost(int64, tag = "4")]
    pub lease: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
    #[prost(uint32, tag = "6")]
    pub sub: u32,
}
