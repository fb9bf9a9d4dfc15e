//! Keeping a local copy of a key range current.
//!
//! List the range, then watch it from the listed revision + 1 with
//! `prev_kv`, so there is neither a gap nor a duplicate. When the watch is
//! compacted away, canceled, or its connection breaks or stalls (a stopped
//! member keeps the connection open and goes silent; see
//! [`WatchStream::next`](crate::client::WatchStream::next)), list again,
//! on another endpoint if this one failed: the listing replaces the copy,
//! and the owner diffs it against what it had.
//! Errors never empty the copy; the owner is told the registry is
//! unreachable and keeps its last state.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::task::DropGuard;
use roster_api::etcdserverpb::{RangeRequest, WatchCreateRequest};
use roster_api::mvccpb::{Event, KeyValue};
use std::sync::Arc;
use std::time::Duration;

/// What a mirrored range is fed into.
pub trait Mirror: Send + Sync {
    /// Names the range in logs.
    fn label(&self) -> &str;
    /// A full listing at `revision`; it replaces whatever was known.
    fn reset(&self, kvs: &[KeyValue], revision: i64);
    /// One watch response's events, in revision order.
    fn apply(&self, events: &[Event], revision: i64);
    /// The registry cannot be reached; the last state stays.
    fn unreachable(&self);
}

/// A key, or a range `[key, range_end)` in etcd's sense.
#[derive(Debug, Clone)]
pub struct Range {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Range {
    pub fn key(key: &str) -> Range {
        Range { key: key.as_bytes().to_vec(), range_end: Vec::new() }
    }

    pub fn prefix(prefix: &str) -> Range {
        Range { key: prefix.as_bytes().to_vec(), range_end: roster_api::range::prefix_end(prefix.as_bytes()) }
    }
}

/// Mirrors `range` into `m` in a background task. `listed` is the revision
/// `m` was already listed at, if it was: the watch starts right after it, so
/// no update made since is folded into a second listing. The task, and
/// its watch, stop when the guard drops.
pub fn spawn<M: Mirror + 'static>(client: Client, range: Range, m: Arc<M>, listed: Option<i64>) -> DropGuard {
    crate::task::spawn(async move { run(&client, &range, &*m, listed).await })
}

/// Mirrors `range` into `m` until the future is dropped.
async fn run(client: &Client, range: &Range, m: &impl Mirror, mut listed: Option<i64>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        let listing = match listed.take() {
            Some(rev) => Ok(rev),
            None => list(client, range, m).await,
        };
        match listing {
            Ok(rev) => {
                backoff.reset();
                match follow(client, range, rev, m).await {
                    Ok(()) => continue, // canceled or compacted: list again now
                    Err(e) => tracing::warn!(range = m.label(), error = %e, "watch broke; listing again"),
                }
            }
            // The call failed over by itself where that could help.
            Err(e) => tracing::warn!(range = m.label(), error = %e, "cannot list; keeping the last known state"),
        }
        m.unreachable();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Lists the range into `m`; returns the revision listed at.
pub(crate) async fn list(client: &Client, range: &Range, m: &impl Mirror) -> crate::Result<i64> {
    let req =
        RangeRequest { key: range.key.clone().into(), range_end: range.range_end.clone().into(), ..Default::default() };
    let resp = client.range(req).await?;
    let rev = resp.header.map_or(0, |h| h.revision);
    m.reset(&resp.kvs, rev);
    Ok(rev)
}

/// Feeds watch events from `rev + 1` into `m` until the watch ends.
/// `Ok(())` means the server canceled it (compaction): list again. A
/// stream that breaks, ends or stalls moves the client off its endpoint.
async fn follow(client: &Client, range: &Range, rev: i64, m: &impl Mirror) -> crate::Result<()> {
    let create = WatchCreateRequest {
        key: range.key.clone().into(),
        range_end: range.range_end.clone().into(),
        start_revision: rev + 1,
        prev_kv: true,
        ..Default::default()
    };
    let mut w = client.watch_stream(create).await?;
    loop {
        let resp = match w.next().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                client.fail_over_from(&w.endpoint);
                return Err(crate::Error::Unreachable { endpoints: w.endpoint, reason: "watch stream ended".into() });
            }
            Err(e) => {
                client.fail_over_from(&w.endpoint);
                return Err(e);
            }
        };
        if resp.canceled {
            tracing::info!(range = m.label(), compact_revision = resp.compact_revision, reason = %resp.cancel_reason, "watch canceled; listing again");
            return Ok(());
        }
        if !resp.events.is_empty() {
            m.apply(&resp.events, resp.header.map_or(0, |h| h.revision));
        }
    }
}
