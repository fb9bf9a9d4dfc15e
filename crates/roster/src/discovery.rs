//! Finding the live instances of a service and following changes.
//!
//! The task lists `<prefix>/<service>/`, then watches it from the listed
//! revision + 1 with `prev_kv`, so there is neither a gap nor a duplicate.
//! When the watch is compacted away, canceled, or its connection breaks, it
//! resyncs: lists again, diffs against the local copy, emits the differences
//! as changes, and watches again. Errors never empty the list: the last
//! known good set is kept and marked stale until the registry answers again.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::instance::Instance;
use arc_swap::ArcSwap;
use roster_api::etcdserverpb::{RangeRequest, WatchCreateRequest};
use roster_api::mvccpb::{event::EventType, KeyValue};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// A change to the set of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Instance),
    Updated(Instance),
    Removed(Instance),
}

/// The set of instances at one moment, immutable once published.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Instances by id, so iteration order is stable.
    pub instances: BTreeMap<String, Instance>,
    /// The registry revision this set reflects.
    pub revision: i64,
    /// True while the registry is unreachable: the set is the last one known.
    pub stale: bool,
}

/// A live view of one service. Cheap to clone; the background task stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Discovery {
    cell: Arc<Cell>,
    _stop: Arc<StopOnDrop>,
}

/// What the task publishes and handles read.
struct Cell {
    service: String,
    snapshot: ArcSwap<Snapshot>,
    changes: broadcast::Sender<Change>,
    ready: watch::Sender<bool>,
}

struct StopOnDrop(Option<oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

// === impl Discovery ===

impl Discovery {
    pub(crate) fn spawn(client: Client, prefix: String, service: String) -> Discovery {
        let (changes, _) = broadcast::channel(1024);
        let (ready, _) = watch::channel(false);
        let cell = Arc::new(Cell { service: service.clone(), snapshot: ArcSwap::from_pointee(Snapshot::default()), changes, ready });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task { client, dir: format!("{prefix}/{service}/"), cell: cell.clone() };
        tokio::spawn(async move {
            tokio::select! {
                _ = task.run() => {}
                _ = stop_rx => {}
            }
        });
        Discovery { cell, _stop: Arc::new(StopOnDrop(Some(stop_tx))) }
    }

    pub fn service(&self) -> &str {
        &self.cell.service
    }

    /// The current set; a lock-free read of an immutable snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cell.snapshot.load_full()
    }

    /// The current instances, ordered by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.cell.snapshot.load().instances.values().cloned().collect()
    }

    /// Changes from now on. A receiver that falls more than 1024 changes
    /// behind skips ahead; read [`snapshot`](Self::snapshot) to resync.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        BroadcastStream::new(self.cell.changes.subscribe()).filter_map(|c| c.ok())
    }

    /// Waits until the first list has arrived.
    pub async fn ready(&self) {
        let mut rx = self.cell.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether the set may be out of date because the registry is unreachable.
    pub fn is_stale(&self) -> bool {
        self.cell.snapshot.load().stale
    }
}

struct Task {
    client: Client,
    /// `<prefix>/<service>/`, with the slash, so `hello` never matches `hello-admin`.
    dir: String,
    cell: Arc<Cell>,
}

impl Task {
    async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.list().await {
                Ok(rev) => {
                    backoff.reset();
                    match self.follow(rev).await {
                        Ok(()) => continue, // canceled or compacted: resync now
                        Err(e) => tracing::warn!(service = %self.cell.service, error = %e, "discovery watch broke; resyncing"),
                    }
                }
                Err(e) => tracing::warn!(service = %self.cell.service, error = %e, "cannot list instances; keeping the last known set"),
            }
            self.mark_stale();
            self.client.rotate();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn mark_stale(&self) {
        let cur = self.cell.snapshot.load();
        if !cur.stale {
            self.cell.snapshot.store(Arc::new(Snapshot { stale: true, ..(**cur).clone() }));
        }
    }

    /// Lists the service and replaces the local set, emitting the
    /// differences. Returns the revision listed at.
    async fn list(&self) -> crate::Result<i64> {
        let end = roster_api::range::prefix_end(self.dir.as_bytes());
        let resp = self.client.range(RangeRequest { key: self.dir.clone().into(), range_end: end.into(), ..Default::default() }).await?;
        let rev = resp.header.map_or(0, |h| h.revision);
        let mut fresh = BTreeMap::new();
        for kv in &resp.kvs {
            if let Some(inst) = self.parse(kv) {
                fresh.insert(inst.id.clone(), inst);
            }
        }
        let old = self.cell.snapshot.load_full();
        for (id, inst) in &fresh {
            match old.instances.get(id) {
                None => self.emit(Change::Added(inst.clone())),
                Some(prev) if prev != inst => self.emit(Change::Updated(inst.clone())),
                Some(_) => {}
            }
        }
        for (id, inst) in &old.instances {
            if !fresh.contains_key(id) {
                self.emit(Change::Removed(inst.clone()));
            }
        }
        self.cell.snapshot.store(Arc::new(Snapshot { instances: fresh, revision: rev, stale: false }));
        self.cell.ready.send_replace(true);
        Ok(rev)
    }

    /// Applies watch events from `rev + 1` until the watch ends.
    async fn follow(&self, rev: i64) -> crate::Result<()> {
        let end = roster_api::range::prefix_end(self.dir.as_bytes());
        let create = WatchCreateRequest {
            key: self.dir.clone().into(),
            range_end: end.into(),
            start_revision: rev + 1,
            prev_kv: true,
            ..Default::default()
        };
        let mut w = self.client.watch_stream(create).await?;
        while let Some(resp) = w.responses.message().await? {
            if resp.canceled {
                tracing::info!(service = %self.cell.service, compact_revision = resp.compact_revision, reason = %resp.cancel_reason, "watch canceled; resyncing");
                return Ok(());
            }
            if resp.events.is_empty() {
                continue;
            }
            let cur = self.cell.snapshot.load_full();
            let mut next = (*cur).clone();
            for ev in &resp.events {
                let Some(kv) = &ev.kv else { continue };
                let Some(id) = self.id_of(&kv.key) else { continue };
                if ev.r#type == EventType::Delete as i32 {
                    if let Some(gone) = next.instances.remove(id) {
                        self.emit(Change::Removed(gone));
                    }
                } else if let Some(inst) = self.parse(kv) {
                    match next.instances.insert(inst.id.clone(), inst.clone()) {
                        None => self.emit(Change::Added(inst)),
                        Some(prev) if prev != inst => self.emit(Change::Updated(inst)),
                        Some(_) => {}
                    }
                }
            }
            next.revision = resp.header.map_or(next.revision, |h| h.revision);
            next.stale = false;
            self.cell.snapshot.store(Arc::new(next));
        }
        Err(crate::Error::Unreachable { endpoints: w.endpoint, reason: "watch stream ended".into() })
    }

    fn id_of<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let id = std::str::from_utf8(key.strip_prefix(self.dir.as_bytes())?).ok()?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// A bad value is logged and skipped; it never stops the watcher.
    fn parse(&self, kv: &KeyValue) -> Option<Instance> {
        let id = self.id_of(&kv.key)?;
        match Instance::from_value(&self.cell.service, id, &kv.value) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "skipping unreadable instance value");
                None
            }
        }
    }

    fn emit(&self, c: Change) {
        let _ = self.cell.changes.send(c);
    }
}
