//! etcdserverpb.Maintenance: Status, Alarm, Defragment and Snapshot.
//!
//! Snapshot streams an etcd backend database (see
//! `roster_store::etcd_snapshot`) that `etcdctl snapshot status|restore`
//! read: it is spooled to an unlinked file in the data dir first, so a large
//! store never sits in memory twice, then sent in etcd's 32 KiB chunks with
//! `remaining_bytes`, and its sha256 last.
//!
//! Alarms and defragment are the store's (`roster_store::quota`); this
//! layer fills headers and renders alarms into `Status.errors` the way etcd
//! does (`memberID:<id> alarm:NOSPACE `), after any storage failure.

use crate::responses::{self, Responses};
use crate::{RAFT_TERM, Server};
use roster_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse, maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

const STATUS: &str = "/etcdserverpb.Maintenance/Status";
const ALARM: &str = "/etcdserverpb.Maintenance/Alarm";
const DEFRAGMENT: &str = "/etcdserverpb.Maintenance/Defragment";
const HASH: &str = "/etcdserverpb.Maintenance/Hash";
const HASH_KV: &str = "/etcdserverpb.Maintenance/HashKV";
const MOVE_LEADER: &str = "/etcdserverpb.Maintenance/MoveLeader";

/// The etcd version we answer as: the 3.4 API is what we speak, and clients
/// gate features on this string.
pub(crate) const ETCD_VERSION: &str = "3.4.0";

/// etcd's `snapshotSendBufferSize`: the bytes in each message.
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Bytes read from the spooled file per blocking call.
const SNAPSHOT_READ: usize = 1 << 20;

// === impl Server as Maintenance ===

#[tonic::async_trait]
impl Maintenance for Server {
    type SnapshotStream = Responses<SnapshotResponse>;

    /// etcd's HashKV (see `roster_store::etcd_snapshot`): equal to the
    /// hash an etcd restored from our snapshot gives at the same revision.
    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.unary(HASH_KV, req, |r| async move {
            let store = self.store().clone();
            let h = tokio::task::spawn_blocking(move || store.hash_kv(r.revision))
                .await
                .map_err(|e| Status::internal(format!("hash task failed: {e}")))??;
            Ok(HashKvResponse {
                header: Some(ResponseHeader { revision: h.revision, ..Default::default() }),
                hash: h.hash,
                compact_revision: h.compact_revision,
            })
        })
        .await
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.unary(HASH, req, |_| async move {
            let store = self.store().clone();
            let member = self.config().member_id;
            let (hash, revision) = tokio::task::spawn_blocking(move || store.hash(member))
                .await
                .map_err(|e| Status::internal(format!("hash task failed: {e}")))?;
            Ok(HashResponse { header: Some(ResponseHeader { revision, ..Default::default() }), hash })
        })
        .await
    }

    /// The one member is the leader already; any other target does not
    /// exist, which etcd answers as a bad transferee.
    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        self.unary(MOVE_LEADER, req, |r| async move {
            if r.target_id == self.config().member_id {
                return Ok(MoveLeaderResponse { header: None });
            }
            Err(Status::failed_precondition(format!(
                "etcdserver: bad leader transferee ({})",
                crate::cluster::SINGLE_NODE
            )))
        })
        .await
    }

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // A stream, so not through `unary`: the same gate, by hand.
        self.authorize(&req)?;
        let started = std::time::Instant::now();
        let store = self.store().clone();
        let dir = store.data_dir().map(std::path::Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let member = self.config().member_id;
        let mut snap = tokio::task::spawn_blocking(move || store.etcd_snapshot_stream(&dir, member))
            .await
            .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let total = snap.total();
        tracing::info!(total_bytes = total, took = ?started.elapsed(), "sending database snapshot to client");
        let (feed, rx) = responses::queue(4);
        let stop = self.stop().clone();
        tokio::spawn(async move {
            loop {
                // File reads block: off the workers, a block at a time.
                let read = tokio::task::spawn_blocking(move || {
                    let block = snap.next_chunk(SNAPSHOT_READ);
                    (snap, block)
                });
                let (back, block) = match read.await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = feed.send(Err(Status::internal(format!("snapshot read failed: {e}")))).await;
                        return;
                    }
                };
                snap = back;
                let block = match block {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = feed.send(Err(Status::internal(format!("cannot read the snapshot: {e}")))).await;
                        return;
                    }
                };
                let mut at = 0;
                while at < block.len() {
                    let end = (at + SNAPSHOT_CHUNK).min(block.len());
                    let remaining = snap.remaining() + (block.len() - end) as u64;
                    let item = SnapshotResponse {
                        header: None,
                        remaining_bytes: remaining,
                        blob: block[at..end].to_vec().into(),
                    };
                    at = end;
                    tokio::select! {
                        sent = feed.send(Ok(item)) => if sent.is_err() { return },
                        () = stop.wait() => {
                            let _ = feed.try_send(Err(Status::unavailable("etcdserver: server stopped")));
                            return;
                        }
                    }
                }
            }
            tracing::info!(total_bytes = total, took = ?started.elapsed(), "sent database snapshot to client");
        });
        Ok(Response::new(rx))
    }

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
