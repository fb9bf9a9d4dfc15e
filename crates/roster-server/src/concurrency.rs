//! The Lock and Election services: etcd's `concurrency` recipes run inside
//! the server, over the store, on the caller's lease. Like etcd, the server
//! does not keep the lease alive; the caller does.
//!
//! Participants queue by the creation revision of `<name>/<lease hex>`; the
//! oldest holds the lock or leads. A waiter watches the key created just
//! before its own, so a release wakes exactly one waiter.

use crate::Server;
use roster_api::etcdserverpb::{LeaseGrantRequest, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest};
use roster_api::mvccpb::{KeyValue, event::EventType};
use roster_api::ops;
use roster_store::{Store, WatchEvents};
use tonic::Status;

/// The TTL etcd's session gives a lease it grants itself (lease 0 asked).
const DEFAULT_SESSION_TTL: i64 = 60;

mod election;
mod lock;

/// A plain error, as etcd's election and lock services return them: code
/// Unknown with the message.
fn unknown(msg: &str) -> Status {
    Status::new(tonic::Code::Unknown, msg)
}

/// etcd runs these services through an in-process client, so every error
/// reaches the caller as Unknown with the original message (a missing
/// lease included). Ours do the same.
async fn plain<T>(call: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    call.await.map_err(|s| unknown(s.message()))
}

/// The lease to hold the key with: the caller's, or (for 0) a new one
/// that nobody keeps alive, as etcd does.
async fn session_lease(store: &Store, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = store.lease_grant(LeaseGrantRequest { ttl: DEFAULT_SESSION_TTL, id: 0 }).await?;
    Ok(grant.id)
}

/// Creates `key` on `lease` unless it exists (then its value is left). Also
/// reads the oldest key under `prefix`. Returns the txn response, our key's
/// creation revision and the holder's.
async fn enqueue(
    store: &Store,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(TxnResponse, i64, i64), Status> {
    let owner = ops::range_op(ops::first_created(prefix));
    let txn = TxnRequest {
        compare: vec![ops::created_at(key, 0)],
        success: vec![ops::put_op(key, value, lease), owner.clone()],
        failure: vec![ops::range_op(ops::get(key)), owner],
    };
    let resp = store.txn(txn).await?;
    let rev = if resp.succeeded {
        resp.header.as_ref().map_or(0, |h| h.revision)
    } else {
        ops::kvs_of(resp.responses.first()).first().map_or(0, |kv| kv.create_revision)
    };
    let holder = ops::kvs_of(resp.responses.get(1)).first().map_or(rev, |kv| kv.create_revision);
    Ok((resp, rev, holder))
}

/// Waits until no key under `prefix` was created at or before
/// `max_create_rev`. Returns the header of the last look.
async fn wait_deletes(server: &Server, prefix: &[u8], max_create_rev: i64) -> Result<ResponseHeader, Status> {
    let store = server.store();
    loop {
        let resp = store.range(ops::last_created_by(prefix, max_create_rev)).await?;
        let header = resp.header.unwrap_or_default();
        let Some(kv) = resp.kvs.first() else { return Ok(header) };
        let create = WatchCreateRequest { key: kv.key.clone(), start_revision: header.revision, ..Default::default() };
        let (control, mut events) = store.watch_stream();
        control.create(create).await;
        tokio::select! {
            () = until_deleted(&mut events) => {}
            () = server.stop().wait() => return Err(Status::unavailable("etcdserver: server stopped")),
        }
    }
}

/// Returns at the first delete event, or when the watch ends or is
/// canceled (compaction); the caller then looks again.
async fn until_deleted(events: &mut WatchEvents) {
    while let Some(resp) = events.next().await {
        if resp.canceled || resp.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return;
        }
    }
}

/// Deletes `key` if it is still the one created at `rev`.
async fn delete_if_created_at(store: &Store, key: &[u8], rev: i64) -> Result<TxnResponse, Status> {
    let txn =
        TxnRequest { compare: vec![ops::created_at(key, rev)], success: vec![ops::delete_op(key)], failure: vec![] };
    Ok(store.txn(txn).await?)
}

/// Withdraws a queued key when its call is abandoned (client cancel or
/// error), so it blocks nobody, as etcd's recipes do.
struct Withdraw {
    store: Store,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, key, rev) = (self.store.clone(), std::mem::take(&mut self.key), self.rev);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = delete_if_created_at(&store, &key, rev).await {
                    tracing::debug!(key = %String::from_utf8_lossy(&key), error = %e, "cannot withdraw an abandoned lock or candidacy");
                }
            });
        }
    }
}

/// The leader's key-value, if any.
async fn leader(store: &Store, prefix: &[u8]) -> Result<(ResponseHeader, Option<KeyValue>), Status> {
    let resp = store.range(ops::first_created(prefix)).await?;
    Ok((resp.header.unwrap_or_default(), resp.kvs.into_iter().next()))
}
