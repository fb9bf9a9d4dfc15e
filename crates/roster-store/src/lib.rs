//! Roster's MVCC keyspace: the single source of truth behind `roster serve`.
//!
//! - [`Store`] is one cheap `Clone` handle. Reads take a shared lock over the
//!   in-memory keyspace. A write applies under the exclusive lock, appends its
//!   record to the pending batch, and is acknowledged only after the
//!   committer thread has written and `fdatasync`ed that batch: concurrent
//!   writers share one fsync (group commit).
//! - Readers see only the durable revision, so nothing is visible that a
//!   crash could take back.
//! - Watches ([`Store::watch_stream`]) fan out per revision; a slow watcher
//!   falls back to catching up from history and never blocks writers.
//! - Leases live in an expiry queue driven by an injected [`Clock`].
//!
//! Modules: `keyspace` (histories), `apply` (etcd's request semantics),
//! `lease` (TTL table), `record` + `log` (durability), `watch` (fan-out).

mod apply;
mod clock;
mod keyspace;
mod lease;
mod log;
mod record;
mod watch;

pub use clock::{Clock, ManualClock, SystemClock};
pub use roster_api::etcdserverpb as pb;
pub use roster_api::mvccpb;
pub use roster_api::EtcdError;
pub use watch::{WatchControl, WatchEvents};

use apply::{State, Write};
use parking_lot::{Condvar, Mutex, RwLock};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("data dir {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data dir {} is in use by another process", path.display())]
    Locked { path: PathBuf },
    #[error("{0}")]
    Corrupt(String),
}

pub struct StoreConfig {
    /// `None` keeps everything in memory (tests, embedding).
    pub data_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// Cut a corrupt log at the first bad record instead of refusing to start.
    pub repair: bool,
    /// Write a snapshot (and start a new log) once the log exceeds both this
    /// and the size of the last snapshot.
    pub snapshot_min_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: None,
            clock: Arc::new(SystemClock::default()),
            repair: false,
            snapshot_min_bytes: 64 << 20,
        }
    }
}

/// Figures for Maintenance.Status and metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStatus {
    /// The durable revision.
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: u64,
    pub leases: u64,
    /// Bytes on disk (log and snapshot); 0 in memory.
    pub db_size: i64,
    /// Durable log records so far: etcd's raft index, roughly.
    pub writes: u64,
    /// fsyncs of the log since the store opened; each acknowledges a batch
    /// of writes (group commit).
    pub log_syncs: u64,
    pub watchers: u64,
    pub watch_streams: u64,
}

/// A handle to the store. Clones share one store; dropping the last one
/// flushes and stops the committer.
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// State shared with the committer thread and watch streams.
///
/// Lock order: `hub` before `state`; `state` before `pending`. The committer
/// takes `pending` alone, then `hub` alone, so no cycle exists. All of these
/// are held briefly and never across an `.await`.
pub(crate) struct Shared {
    state: RwLock<State>,
    pending: Mutex<Pending>,
    wake: Condvar,
    hub: Mutex<watch::Hub>,
    /// Mirror of `hub.visible` for lock-free reads.
    visible: AtomicI64,
    clock: Arc<dyn Clock>,
    /// Set when the log could not be written; every later write fails.
    failed: Mutex<Option<String>>,
    closed: AtomicBool,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    disk_bytes: AtomicU64,
    durable_seq: AtomicU64,
    log_syncs: AtomicU64,
}

/// Writes applied in memory and waiting for the next fsync.
#[derive(Default)]
struct Pending {
    framed: Vec<u8>,
    /// State revision after the newest write in the batch.
    rev: i64,
    events: Vec<(i64, Vec<mvccpb::Event>)>,
    compactions: Vec<i64>,
    seq: u64,
    waiters: Vec<oneshot::Sender<Result<(), EtcdError>>>,
}

impl Pending {
    /// Empties the batch but keeps its buffers, unless they grew large.
    fn clear(&mut self) {
        const KEEP: usize = 1 << 20;
        if self.framed.capacity() > KEEP {
            *self = Pending::default();
            return;
        }
        self.framed.clear();
        self.events.clear();
        self.compactions.clear();
        self.waiters.clear();
        self.rev = 0;
        self.seq = 0;
    }
}

// === impl Store ===

impl Store {
    /// Opens (or creates) a store, replaying its snapshot and log.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let now = config.clock.now();
        let (state, log) = match &config.data_dir {
            None => (State::new(), None),
            Some(dir) => {
                let (log, rec) = log::Log::open(dir, config.repair)?;
                let mut state = rec.snapshot.map(|s| State::restore(s, now)).unwrap_or_else(State::new);
                for r in &rec.records {
                    state.replay(r, now);
                }
                tracing::info!(
                    dir = %dir.display(),
                    revision = state.rev,
                    keys = state.kv.live_keys(),
                    leases = state.leases.len(),
                    replayed = rec.records.len(),
                    "recovered store"
                );
                (state, Some(log))
            }
        };
        let rev = state.rev;
        let seq = state.seq;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            hub: Mutex::new(watch::Hub::new(rev)),
            visible: AtomicI64::new(rev),
            clock: config.clock,
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            committer: Mutex::new(None),
            disk_bytes: AtomicU64::new(log.as_ref().map_or(0, |l| l.disk_bytes())),
            durable_seq: AtomicU64::new(seq),
            log_syncs: AtomicU64::new(0),
        });
        let committer = Committer {
            shared: shared.clone(),
            log,
            snapshot_min: config.snapshot_min_bytes,
            spare: Pending::default(),
            last_batch: 0,
            last_sync: Duration::ZERO,
        };
        let thread = std::thread::Builder::new()
            .name("roster-commit".into())
            .spawn(move || committer.run())
            .map_err(|source| StoreError::Io { path: PathBuf::from("<thread>"), source })?;
        *shared.committer.lock() = Some(thread);
        Ok(Store { handle: Arc::new(Handle { shared }) })
    }

    /// A store that keeps nothing on disk, with the system clock.
    pub fn in_memory() -> Store {
        Store::open(StoreConfig::default()).expect("an in-memory store has nothing to fail on")
    }

    /// A store in memory driven by the given clock; for tests.
    pub fn in_memory_with_clock(clock: Arc<dyn Clock>) -> Store {
        Store::open(StoreConfig { clock, ..Default::default() }).expect("in memory")
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The durable revision readers see.
    pub fn revision(&self) -> i64 {
        self.shared().visible.load(Ordering::Acquire)
    }

    pub fn status(&self) -> StoreStatus {
        let s = self.shared();
        let (compact_revision, keys, leases) = {
            let st = s.state.read();
            (st.compact_rev.max(0), st.kv.live_keys(), st.leases.len() as u64)
        };
        let (watchers, watch_streams) = {
            let hub = s.hub.lock();
            (hub.watchers() as u64, hub.streams() as u64)
        };
        StoreStatus {
            revision: self.revision(),
            compact_revision,
            keys,
            leases,
            db_size: s.disk_bytes.load(Ordering::Relaxed) as i64,
            writes: s.durable_seq.load(Ordering::Relaxed),
            log_syncs: s.log_syncs.load(Ordering::Relaxed),
            watchers,
            watch_streams,
        }
    }

    /// Response headers carry only `revision`; the server fills the rest.
    pub async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let st = self.shared().state.read();
        st.range(&r, self.revision())
    }

    pub async fn put(&self, r: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        self.write(|st, w, _| st.put(w, &r)).await
    }

    pub async fn delete_range(&self, r: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, EtcdError> {
        self.write(|st, w, _| Ok(st.delete_range(w, &r))).await
    }

    pub async fn txn(&self, r: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.write(|st, w, _| st.txn(w, &r)).await
    }

    /// Compacts history below `revision`; answers once the history is gone.
    pub async fn compact(&self, r: pb::CompactionRequest) -> Result<pb::CompactionResponse, EtcdError> {
        self.write(|st, w, _| {
            st.compact(w, r.revision)?;
            Ok(pb::CompactionResponse { header: Some(pb::ResponseHeader { revision: st.rev, ..Default::default() }) })
        })
        .await
    }

    pub async fn lease_grant(&self, r: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse, EtcdError> {
        self.write(|st, w, now| {
            let mut id = r.id;
            while id == 0 || st.leases.contains(id) && r.id == 0 {
                id = (rand::random::<u64>() >> 1) as i64;
            }
            let ttl = st.lease_grant(w, id, r.ttl, now)?;
            Ok(pb::LeaseGrantResponse {
                header: Some(pb::ResponseHeader { revision: st.rev, ..Default::default() }),
                id,
                ttl,
                error: String::new(),
            })
        })
        .await
    }

    /// Revokes a lease; its keys are deleted in one revision.
    pub async fn lease_revoke(&self, r: pb::LeaseRevokeRequest) -> Result<pb::LeaseRevokeResponse, EtcdError> {
        self.write(|st, w, _| {
            st.lease_revoke(w, r.id)?;
            Ok(pb::LeaseRevokeResponse { header: Some(pb::ResponseHeader { revision: w.read_rev(), ..Default::default() }) })
        })
        .await
    }

    /// Renews a lease: its granted TTL, or 0 when unknown or expired.
    pub fn lease_keep_alive(&self, id: i64) -> pb::LeaseKeepAliveResponse {
        let s = self.shared();
        let ttl = s.state.write().leases.renew(id, s.clock.now());
        pb::LeaseKeepAliveResponse { header: None, id, ttl }
    }

    /// Remaining TTL in whole seconds (truncated, as etcd does); -1 when unknown.
    pub fn lease_time_to_live(&self, r: pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse {
        let s = self.shared();
        let now = s.clock.now();
        let st = s.state.read();
        let Some(l) = st.leases.get(r.id) else {
            return pb::LeaseTimeToLiveResponse { header: None, id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] };
        };
        let mut keys: Vec<bytes::Bytes> = if r.keys { l.keys.iter().cloned().collect() } else { vec![] };
        keys.sort();
        let ttl = l.deadline.saturating_sub(now).as_secs() as i64;
        pb::LeaseTimeToLiveResponse { header: None, id: r.id, ttl, granted_ttl: l.ttl, keys }
    }

    pub fn lease_leases(&self) -> pb::LeaseLeasesResponse {
        let st = self.shared().state.read();
        let mut ids: Vec<i64> = st.leases.ids().map(|(id, _)| id).collect();
        ids.sort();
        pb::LeaseLeasesResponse { header: None, leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect() }
    }

    /// Revokes every lease whose deadline has passed, each in its own
    /// revision as etcd does; returns how many.
    pub async fn expire_leases(&self) -> usize {
        let s = self.shared();
        let now = s.clock.now();
        let expired = s.state.read().leases.expired(now);
        let mut n = 0;
        for id in expired {
            let res = self
                .write(|st, w, now| match st.leases.get(id) {
                    Some(l) if l.deadline <= now => st.lease_revoke(w, id).map(|_| true),
                    _ => Ok(false),
                })
                .await;
            match res {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not revoke expired lease"),
            }
        }
        n
    }

    /// Time until the next lease deadline, if any lease exists.
    pub fn next_lease_deadline(&self) -> Option<Duration> {
        let s = self.shared();
        let now = s.clock.now();
        s.state.read().leases.next_deadline().map(|d| d.saturating_sub(now))
    }

    /// Opens one watch stream (one per gRPC Watch call).
    pub fn watch_stream(&self) -> (WatchControl, WatchEvents) {
        watch::open(self.shared())
    }

    /// Sends progress notifications to watchers that asked for them.
    pub fn progress_notify(&self) {
        self.shared().hub.lock().progress_notify();
    }

    /// Flushes the log and stops the committer. Later writes fail with
    /// "etcdserver: server stopped".
    pub fn close(&self) {
        self.shared().close();
    }

    /// Applies one write under the exclusive lock, queues it for the next
    /// fsync, and waits for that fsync. `f` must check everything before it
    /// changes anything: an error leaves the state untouched.
    async fn write<T>(&self, f: impl FnOnce(&mut State, &mut Write, Duration) -> Result<T, EtcdError>) -> Result<T, EtcdError> {
        let s = self.shared();
        let (out, rx) = {
            let mut st = s.state.write();
            if s.closed.load(Ordering::Acquire) {
                return Err(EtcdError::Stopped);
            }
            if let Some(why) = s.failed.lock().clone() {
                return Err(EtcdError::Internal(why));
            }
            let mut w = Write::new(&st);
            let out = f(&mut st, &mut w, s.clock.now())?;
            let (record, events) = w.finish(&mut st);
            if record.is_none() && st.rev == s.visible.load(Ordering::Acquire) {
                // Read-only, and everything it read is durable already.
                return Ok(out);
            }
            let (tx, rx) = oneshot::channel();
            let mut p = s.pending.lock();
            if let Some(r) = &record {
                log::frame(r, &mut p.framed);
                p.seq = r.seq;
                p.compactions.extend(r.compact);
            }
            if !events.is_empty() {
                p.events.push((st.rev, events));
            }
            p.rev = st.rev;
            p.waiters.push(tx);
            s.wake.notify_one();
            (out, rx)
        };
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EtcdError::Stopped),
        }
    }
}

// === impl Shared ===

impl Shared {
    fn close(&self) {
        {
            let _p = self.pending.lock();
            self.closed.store(true, Ordering::Release);
            self.wake.notify_all();
        }
        if let Some(t) = self.committer.lock().take()
            && t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
    }

    /// Makes a durable batch visible: readers, then watchers, then writers.
    fn publish(&self, batch: &mut Pending) {
        let mut hub = self.hub.lock();
        for (rev, events) in &batch.events {
            hub.publish(*rev, events);
        }
        if batch.rev > hub.visible {
            hub.visible = batch.rev;
            self.visible.store(batch.rev, Ordering::Release);
        }
        drop(hub);
        if let Some(&c) = batch.compactions.iter().max() {
            self.state.write().kv.compact(c);
        }
        if batch.seq > 0 {
            self.durable_seq.store(batch.seq, Ordering::Relaxed);
        }
        for w in batch.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    fn fail(&self, batch: &mut Pending, why: String) {
        tracing::error!(error = %why, "cannot write the log; refusing all writes from now on");
        *self.failed.lock() = Some(why.clone());
        for w in batch.waiters.drain(..) {
            let _ = w.send(Err(EtcdError::Internal(why.clone())));
        }
    }
}

/// A batch this large means writers are queueing: the next one waits as
/// long as the last fsync took (at most [`GATHER_MAX`]) before it is
/// written, so that more writes share its fsync. Fewer, larger batches also
/// let each connection send more answers per write. At 10 connections x 100
/// clients this took `roster serve` from about 46 to 41 µs of CPU per put,
/// with a lower p99. Fewer writers than this (one client, ten clients) are
/// never delayed, and a fast disk delays them little.
const GATHER_FROM: usize = 16;
const GATHER_MAX: Duration = Duration::from_micros(250);

/// Owns the log; the only thread that writes it.
struct Committer {
    shared: Arc<Shared>,
    log: Option<log::Log>,
    snapshot_min: u64,
    /// The last batch's buffers, emptied, for the next one to fill.
    spare: Pending,
    /// Writers acknowledged by the last fsync.
    last_batch: usize,
    /// How long the last write and fsync of the log took.
    last_sync: Duration,
}

impl Committer {
    fn run(mut self) {
        let s = self.shared.clone();
        loop {
            let mut p = s.pending.lock();
            while p.waiters.is_empty() && p.framed.is_empty() {
                if s.closed.load(Ordering::Acquire) {
                    return;
                }
                s.wake.wait(&mut p);
            }
            if self.log.is_some() && self.last_batch >= GATHER_FROM {
                // Busy: let the writers on their way join this fsync.
                drop(p);
                std::thread::sleep(self.last_sync.min(GATHER_MAX));
                p = s.pending.lock();
            }
            let mut batch = std::mem::replace(&mut *p, std::mem::take(&mut self.spare));
            drop(p);
            self.last_batch = batch.waiters.len();
            if let (Some(log), false) = (&mut self.log, batch.framed.is_empty()) {
                let started = std::time::Instant::now();
                if let Err(e) = log.append(&batch.framed) {
                    s.fail(&mut batch, format!("log write failed: {e}"));
                    continue;
                }
                self.last_sync = started.elapsed();
                s.log_syncs.fetch_add(1, Ordering::Relaxed);
            }
            s.publish(&mut batch);
            batch.clear();
            self.spare = batch;
            self.maybe_snapshot();
        }
    }

    /// Bounds the log: once it outgrows the last snapshot, fold everything
    /// into a new snapshot and start the log over.
    fn maybe_snapshot(&mut self) {
        let s = &self.shared;
        let Some(log) = &mut self.log else { return };
        s.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
        if log.wal_bytes < self.snapshot_min.max(log.snapshot_bytes) {
            return;
        }
        // Writers are paused while the state is copied; whatever they had
        // queued is in the snapshot, so it is acknowledged by it.
        let (snap, mut batch) = {
            let st = s.state.read();
            let mut p = s.pending.lock();
            (st.snapshot(), std::mem::take(&mut *p))
        };
        let started = std::time::Instant::now();
        match log.write_snapshot(&snap) {
            Ok(()) => {
                tracing::info!(revision = snap.rev, bytes = log.snapshot_bytes, took = ?started.elapsed(), "wrote snapshot; log restarted");
                s.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
                s.publish(&mut batch);
            }
            Err(e) => s.fail(&mut batch, format!("snapshot failed: {e}")),
        }
    }
}
