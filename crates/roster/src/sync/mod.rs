//! Distributed locks and leader election, on the key layout and algorithm
//! of etcd's `concurrency` package, so they interoperate with `etcdctl lock`,
//! `etcdctl elect` and every etcd client that uses that package.
//!
//! Each participant holds a [`Session`] (a kept-alive lease) and creates the
//! key `<name>/<lease id in hex>` on it. Participants are ordered by the
//! creation revision of their keys: the oldest holds the lock or leads, and
//! each of the others waits for the deletion of the key created just before
//! its own, so a release wakes exactly one waiter.
//!
//! ```no_run
//! # async fn demo(client: roster::Client) -> roster::Result<()> {
//! use roster::sync::{Mutex, Session};
//! use std::time::Duration;
//!
//! let session = Session::new(&client, Duration::from_secs(10)).await?;
//! let guard = Mutex::new(&session, "/locks/nightly-job").lock().await?;
//! // Writes guarded by the lock fail once it is lost.
//! let put = roster::sync::put_op("/jobs/nightly/last-run", "2026-11-22");
//! guard.fenced_txn(vec![], vec![put]).await?;
//! guard.unlock().await?;
//! # Ok(()) }
//! ```

mod election;
mod mutex;
mod session;

pub use election::{Election, LeaderKey};
pub use mutex::{Mutex, MutexGuard};
pub use session::Session;

use crate::client::Client;
use crate::error::Result;
use roster_api::etcdserverpb::{
    compare, range_request::{SortOrder, SortTarget}, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, WatchCreateRequest,
};
use roster_api::mvccpb::{event::EventType, KeyValue};

/// A put, for the operations of a fenced transaction.
pub fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RequestOp {
    put_with_lease(key, value, 0)
}

pub(crate) fn put_with_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into().into(),
            value: value.into().into(),
            lease,
            ..Default::default()
        })),
    }
}

pub(crate) fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

/// `create_revision(key) == rev`: true while the key created at `rev` lives.
pub(crate) fn created_at(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Default::default(),
    }
}

pub(crate) fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(r)) }
}

pub(crate) fn get(key: &str) -> RangeRequest {
    RangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() }
}

/// The oldest key under `prefix` (etcd's `WithFirstCreate`).
pub(crate) fn first_created(prefix: &str) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: roster_api::range::prefix_end(prefix.as_bytes()).into(),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

/// Waits until no key under `prefix` has a creation revision at or below
/// `max_create_rev`, watching the newest such key each time.
pub(crate) async fn wait_deletes(client: &Client, prefix: &str, max_create_rev: i64) -> Result<ResponseHeader> {
    loop {
        let newest_older = RangeRequest {
            max_create_revision: max_create_rev,
            sort_order: SortOrder::Descend as i32,
            ..first_created(prefix)
        };
        let resp = client.range(newest_older).await?;
        let header = resp.header.unwrap_or_default();
        let Some(kv) = resp.kvs.first() else { return Ok(header) };
        wait_delete(client, &kv.key, header.revision).await?;
    }
}

/// Waits for a delete of `key` at or after revision `from`.
async fn wait_delete(client: &Client, key: &[u8], from: i64) -> Result<()> {
    let create = WatchCreateRequest { key: key.to_vec().into(), start_revision: from, ..Default::default() };
    let mut w = client.watch_stream(create).await?;
    while let Some(resp) = w.responses.message().await? {
        if resp.canceled {
            // Compacted past `from`: the caller looks again.
            return Ok(());
        }
        if resp.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
    Err(crate::Error::Unreachable { endpoints: w.endpoint, reason: "watch stream ended".into() })
}

/// The kvs of a range response inside a txn response.
pub(crate) fn kvs_of(op: Option<&roster_api::etcdserverpb::ResponseOp>) -> &[KeyValue] {
    use roster_api::etcdserverpb::response_op::Response;
    match op.and_then(|o| o.response.as_ref()) {
        Some(Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}
