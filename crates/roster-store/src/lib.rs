//! Roster's MVCC keyspace: the single source of truth behind `roster serve`.
//!
//! - `Store`: one cheap `Clone` handle. Reads take a shared lock over the
//!   in-memory keyspace; writes apply under the exclusive lock, append to the
//!   log, and are acknowledged only after a group-commit fsync.
//! - Readers see only the durable revision, so nothing is ever visible that
//!   a crash could take back.
//! - Watches (`watch_stream`) fan out per revision; a slow watcher falls back
//!   to catching up from history and never blocks writers.
//! - Leases live in an expiry queue driven by an injected `Clock`.

pub use roster_api::EtcdError;
pub use roster_api::etcdserverpb as pb;
pub use roster_api::mvccpb;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Time as seen by the store: a monotonic duration since some fixed start.
/// Injected so that tests drive lease expiry without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("data dir {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data dir {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("{0}")]
    Corrupt(String),
}

pub struct StoreConfig {
    /// `None` keeps everything in memory (tests, embedding).
    pub data_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// Truncate a corrupt WAL at the first bad record instead of refusing to start.
    pub repair: bool,
}

#[derive(Clone)]
pub struct Store {}

/// Figures for Maintenance.Status and metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStatus {
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: u64,
    pub leases: u64,
    pub db_size: i64,
    pub writes: u64,
}

impl Store {
    pub fn open(_config: StoreConfig) -> Result<Store, StoreError> { todo!() }
    pub fn in_memory() -> Store { todo!() }
    /// The durable revision readers see.
    pub fn revision(&self) -> i64 { todo!() }
    pub fn status(&self) -> StoreStatus { todo!() }
    /// Response headers carry only `revision`; the server fills the rest.
    pub async fn range(&self, _r: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> { todo!() }
    pub async fn put(&self, _r: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> { todo!() }
    pub async fn delete_range(&self, _r: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, EtcdError> { todo!() }
    pub async fn txn(&self, _r: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> { todo!() }
    pub async fn compact(&self, _r: pb::CompactionRequest) -> Result<pb::CompactionResponse, EtcdError> { todo!() }
    pub async fn lease_grant(&self, _r: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse, EtcdError> { todo!() }
    pub async fn lease_revoke(&self, _r: pb::LeaseRevokeRequest) -> Result<pb::LeaseRevokeResponse, EtcdError> { todo!() }
    /// The lease's granted TTL, or 0 when it is unknown or expired.
    pub fn lease_keep_alive(&self, _id: i64) -> pb::LeaseKeepAliveResponse { todo!() }
    pub fn lease_time_to_live(&self, _r: pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse { todo!() }
    pub fn lease_leases(&self) -> pb::LeaseLeasesResponse { todo!() }
    /// Revokes every lease whose deadline has passed; returns how many.
    pub async fn expire_leases(&self) -> usize { todo!() }
    /// Opens one watch stream (one per gRPC Watch call).
    pub fn watch_stream(&self) -> (WatchControl, WatchEvents) { todo!() }
    /// Flushes the log and stops the committer.
    pub fn close(&self) { todo!() }
}

/// Creates and cancels watchers on one stream. Responses (created, canceled,
/// progress, events) all come out of the paired [`WatchEvents`], in order.
#[derive(Clone)]
pub struct WatchControl {}

impl WatchControl {
    pub async fn create(&self, _r: pb::WatchCreateRequest) { todo!() }
    /// Unknown ids are ignored, as etcd does.
    pub async fn cancel(&self, _watch_id: i64) { todo!() }
    pub async fn progress(&self) { todo!() }
}

pub struct WatchEvents {}

impl WatchEvents {
    /// `None` once every [`WatchControl`] is dropped and nothing is pending.
    pub async fn next(&mut self) -> Option<pb::WatchResponse> { todo!() }
}
