//! etcdserverpb.Maintenance: Status, Alarm and Defragment.
//!
//! Alarms and defragment are the store's (`roster_store::quota`); this
//! layer fills headers and renders alarms into `Status.errors` the way etcd
//! does (`memberID:<id> alarm:NOSPACE `), after any storage failure.

use crate::{Server, RAFT_TERM};
use roster_api::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

const STATUS: &str = "/etcdserverpb.Maintenance/Status";
const ALARM: &str = "/etcdserverpb.Maintenance/Alarm";
const DEFRAGMENT: &str = "/etcdserverpb.Maintenance/Defragment";

/// The etcd version we answer as: the 3.4 API is what we speak, and clients
/// gate features on this string.
pub(crate) const ETCD_VERSION: &str = "3.4.0";

// === impl Server as Maintenance ===

#[tonic::async_trait]
impl Maintenance for Server {
    /// GET, ACTIVATE and DEACTIVATE with etcd's answers; NOSPACE is also
    /// raised by the store itself when the quota is reached.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.unary(ALARM, req, |r| async move { self.store().alarm(&r).map_err(Status::from) }).await
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.unary(STATUS, req, |_| async move {
            // After a compaction this walks the keyspace: not on a worker.
            let store = self.store().clone();
            let in_use = tokio::task::spawn_blocking(move || store.db_size_in_use()).await.unwrap_or_default();
            Ok(self.status(in_use))
        })
        .await
    }

    /// Writes a snapshot now and starts the log over, which is what frees
    /// the space that compaction and deletes left in the log.
    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.unary(DEFRAGMENT, req, |_| async move {
            let started = std::time::Instant::now();
            let before = self.store().status().db_size;
            self.store().defragment().await.map_err(Status::from)?;
            let after = self.store().status().db_size;
            tracing::info!(before, after, took = ?started.elapsed(), "defragmented");
            Ok(DefragmentResponse { header: None })
        })
        .await
    }
}

impl Server {
    fn status(&self, db_size_in_use: i64) -> StatusResponse {
        let store = self.store();
        let s = store.status();
        // Why the store refuses writes, then the alarms, as etcd lists them.
        let errors = s.failure.into_iter().chain(store.alarms().iter().map(roster_store::alarm_text)).collect();
        StatusResponse {
            header: None,
            version: ETCD_VERSION.to_owned(),
            db_size: s.db_size,
            leader: self.config().member_id,
            // Each durable log record stands in for one raft entry.
            raft_index: s.writes,
            raft_term: RAFT_TERM,
            raft_applied_index: s.writes,
            errors,
            db_size_in_use,
            is_learner: false,
        }
    }
}
