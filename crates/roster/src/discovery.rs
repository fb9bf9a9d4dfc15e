//! Finding the live instances of a service and following changes.
//!
//! A background task mirrors `<prefix>/<service>/` (see [`crate::mirror`]):
//! every listing is diffed against the local copy and the differences are
//! emitted as changes, so a resync after a compaction or an outage misses
//! nothing. Errors never empty the list: the last known good set is kept
//! and marked stale until the registry answers again.

use crate::client::Client;
use crate::instance::Instance;
use crate::mirror::{self, Mirror};
use crate::task::DropGuard;
use arc_swap::ArcSwap;
use roster_api::mvccpb::{Event, KeyValue, event::EventType};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
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
    _task: Arc<DropGuard>,
}

/// What the task publishes and handles read.
struct Cell {
    service: String,
    snapshot: ArcSwap<Snapshot>,
    changes: broadcast::Sender<Change>,
    ready: watch::Sender<bool>,
}

// === impl Discovery ===

impl Discovery {
    pub(crate) fn spawn(client: Client, prefix: String, service: String) -> Discovery {
        let (changes, _) = broadcast::channel(1024);
        let (ready, _) = watch::channel(false);
        let cell = Arc::new(Cell {
            service: service.clone(),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changes,
            ready,
        });
        let dir = format!("{prefix}/{service}/");
        let range = mirror::Range::prefix(&dir);
        let task = mirror::spawn(client, range, Arc::new(Task { dir, cell: cell.clone() }), None);
        Discovery { cell, _task: Arc::new(task) }
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

    /// Changes from now on, each emitted once [`snapshot`](Self::snapshot)
    /// holds it. A receiver that falls more than 1024 changes behind skips
    /// ahead; read the snapshot to resync.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        BroadcastStream::new(self.cell.changes.subscribe()).filter_map(|c| c.ok())
    }

    /// The instances as tower [`Change`](tower::discover::Change)s, for
    /// tower's own balancers (the stream is a `tower::discover::Discover`):
    /// an `Insert` per instance listed now, then `Insert` for every instance
    /// added or updated (it replaces the old service) and `Remove` for every
    /// one gone. `make` builds an instance's service; one it returns `None`
    /// for is left out.
    pub fn discover<S, F>(
        &self,
        mut make: F,
    ) -> impl Stream<Item = Result<tower::discover::Change<String, S>, std::convert::Infallible>> + Send + 'static
    where
        F: FnMut(&Instance) -> Option<S> + Send + 'static,
        S: Send + 'static,
    {
        use tower::discover::Change as Tower;
        // Subscribed first: a change between the two is seen twice, not lost.
        let changes = self.changes();
        let now: Vec<_> = self
            .cell
            .snapshot
            .load()
            .instances
            .values()
            .filter_map(|i| make(i).map(|s| Ok(Tower::Insert(i.id.clone(), s))))
            .collect();
        tokio_stream::iter(now).chain(changes.filter_map(move |c| match c {
            Change::Added(i) | Change::Updated(i) => make(&i).map(|s| Ok(Tower::Insert(i.id, s))),
            Change::Removed(i) => Some(Ok(Tower::Remove(i.id))),
        }))
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
    /// `<prefix>/<service>/`, with the slash, so `hello` never matches `hello-admin`.
    dir: String,
    cell: Arc<Cell>,
}

impl Mirror for Task {
    fn label(&self) -> &str {
        &self.dir
    }

    /// Replaces the local set, emitting the differences.
    fn reset(&self, kvs: &[KeyValue], revision: i64) {
        let mut fresh = BTreeMap::new();
        for kv in kvs {
            if let Some(inst) = self.parse(kv) {
                fresh.insert(inst.id.clone(), inst);
            }
        }
        let old = self.cell.snapshot.load_full();
        let mut changes = Vec::new();
        for (id, inst) in &fresh {
            match old.instances.get(id) {
                None => changes.push(Change::Added(inst.clone())),
                Some(prev) if prev != inst => changes.push(Change::Updated(inst.clone())),
                Some(_) => {}
            }
        }
        for (id, inst) in &old.instances {
            if !fresh.contains_key(id) {
                changes.push(Change::Removed(inst.clone()));
            }
        }
        self.publish(Snapshot { instances: fresh, revision, stale: false }, changes);
        self.cell.ready.send_replace(true);
    }

    fn apply(&self, events: &[Event], revision: i64) {
        let cur = self.cell.snapshot.load_full();
        let mut next = (*cur).clone();
        let mut changes = Vec::new();
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let Some(id) = self.id_of(&kv.key) else { continue };
            if ev.r#type == EventType::Delete as i32 {
                if let Some(gone) = next.instances.remove(id) {
                    changes.push(Change::Removed(gone));
                }
            } else if let Some(inst) = self.parse(kv) {
                match next.instances.insert(inst.id.clone(), inst.clone()) {
                    None => changes.push(Change::Added(inst)),
                    Some(prev) if prev != inst => changes.push(Change::Updated(inst)),
                    Some(_) => {}
                }
            }
        }
        next.revision = revision.max(next.revision);
        next.stale = false;
        self.publish(next, changes);
    }

    fn unreachable(&self) {
        let cur = self.cell.snapshot.load();
        if !cur.stale {
            self.cell.snapshot.store(Arc::new(Snapshot { stale: true, ..(**cur).clone() }));
        }
    }
}

impl Task {
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

    /// Makes `next` the snapshot, then emits `changes`: a subscriber that
    /// reads the snapshot on a change must find it there.
    fn publish(&self, next: Snapshot, changes: Vec<Change>) {
        self.cell.snapshot.store(Arc::new(next));
        for c in changes {
            let _ = self.cell.changes.send(c);
        }
    }
}
