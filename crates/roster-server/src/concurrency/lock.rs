//! v3lockpb.Lock: Lock and Unlock.

use super::{Withdraw, enqueue, plain, session_lease, unknown, wait_deletes};
use crate::Server;
use roster_api::ops;
use roster_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock};
use tonic::{Request, Response, Status};

const LOCK: &str = "/v3lockpb.Lock/Lock";
const UNLOCK: &str = "/v3lockpb.Lock/Unlock";

#[tonic::async_trait]
impl Lock for Server {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.unary(LOCK, req, |r| {
            plain(async move {
                let store = self.store();
                let lease = session_lease(store, r.lease).await?;
                let prefix = ops::prefix_of(&r.name);
                let key = ops::lease_key(&prefix, lease);
                let (resp, rev, holder) = enqueue(store, &prefix, &key, b"", lease).await?;
                let mut header = resp.header;
                if holder != rev {
                    let mut withdraw = Withdraw { store: store.clone(), key: key.clone(), rev, armed: true };
                    header = Some(wait_deletes(self, &prefix, rev - 1).await?);
                    // The lease may have ended while we waited.
                    let mine = store.range(ops::get(key.clone())).await?;
                    if mine.kvs.first().map(|kv| kv.create_revision) != Some(rev) {
                        return Err(unknown("mutex: session is expired"));
                    }
                    withdraw.armed = false;
                }
                Ok(LockResponse { header, key: key.into() })
            })
        })
        .await
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        self.unary(UNLOCK, req, |r| {
            plain(async move {
                let del = roster_api::etcdserverpb::DeleteRangeRequest { key: r.key, ..Default::default() };
                let resp = self.store().delete_range(del).await?;
                Ok(UnlockResponse { header: resp.header })
            })
        })
        .await
    }
}
