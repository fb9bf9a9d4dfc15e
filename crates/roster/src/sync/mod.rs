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
use roster_api::etcdserverpb::{RequestOp, ResponseHeader, WatchCreateRequest};
use roster_api::mvccpb::event::EventType;
use roster_api::ops;

/// A put, for the operations of a fenced transaction.
pub fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RequestOp {
    ops::put_op(key, value, 0)
}

/// Waits until no key under `prefix` has a creation revision at or below
/// `max_create_rev`, watching the newest such key each time.
pub(crate) async fn wait_deletes(client: &Client, prefix: &str, max_create_rev: i64) -> Result<ResponseHeader> {
    loop {
        let resp = client.range(ops::last_created_by(prefix.as_bytes(), max_create_rev)).await?;
        let header = resp.header.unwrap_or_default();
        let Some(kv) = resp.kvs.first() else { return Ok(header) };
        wait_delete(client, &kv.key, header.revision).await?;
    }
}

/// Waits for a delete of `key` at or after revision `from`.
async fn wait_delete(client: &Client, key: &[u8], from: i64) -> Result<()> {
    let create = WatchCreateRequest { key: key.to_vec().into(), start_revision: from, ..Default::default() };
    let mut w = client.watch_stream(create).await?;
    loop {
        let resp = match w.next().await {
            Ok(Some(resp)) => resp,
            // Ended, broken or stalled (a stopped member): the caller looks
            // again, on another member where there is one.
            Ok(None) | Err(_) => {
                client.fail_over_from(&w.endpoint);
                return Ok(());
            }
        };
        if resp.canceled {
            // Compacted past `from`: the caller looks again.
            return Ok(());
        }
        if resp.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
}
