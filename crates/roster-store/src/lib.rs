//! Roster's MVCC keyspace: the single source of truth behind `roster serve`.
//!
//! - [`Store`] is one cheap `Clone` handle. Reads take a shared lock over the
//!   in-memory keyspace. A write applies under the exclusive lock, appends its
//!   record to the pending batch, and is acknowledged only after the
//!   committer thread has written and `fdatasync`ed that batch: concurrent
//!   writers share one fsync (group commit).
//! - Readers see only the durable revision, so nothing is visible that a
//!   crash could take back. Ranges, read-only txns and keepalives take the
//!   shared lock only; a large range takes it once per slice of keys, at a
//!   revision it pins against compaction, so no scan holds writers up.
//! - Storage errors fail-stop: after a failed write, fsync or snapshot the
//!   store refuses every queued and later write, never shows the failed
//!   batch, and never retries the fsync ([`Store::failure`] says why). A
//!   restart recovers exactly what was acknowledged.
//! - Watches ([`Store::watch_stream`]) fan out per revision; a slow watcher
//!   falls back to catching up from history and never blocks writers.
//! - Leases live in an expiry queue driven by an injected [`Clock`].
//!
//! Modules: `keyspace` (histories), `apply` (etcd's request semantics), `auth`
//! (users, roles and the auth flag, with etcd's rules),
//! `lease` (TTL table), `clock` (injected time), `quota` (space quota,
//! alarms, defragment), `record` + `log` (durability, the WAL format and
//! the disk seam), `fault` (fault injection through that seam, for tests),
//! `watch` (fan-out), `etcd_snapshot` (etcd-format snapshots both ways).

mod apply;
pub mod auth;
mod clock;
pub mod etcd_snapshot;
pub mod fault;
mod keyspace;
mod lease;
mod log;
mod quota;
mod record;
mod watch;

pub use auth::{AuthChange, AuthTables};
pub use clock::{Clock, ManualClock, SystemClock};
pub use log::{Disk, FileKind, LogFile, OsDisk};
pub use quota::{alarm_name, alarm_text};
pub use roster_api::EtcdError;
pub use roster_api::authpb;
pub use roster_api::etcdserverpb as pb;
pub use roster_api::mvccpb;
pub use watch::{WatchControl, WatchEvents};

use apply::{State, Write};
use parking_lot::{Condvar, Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
    /// Where the log and snapshots are written; tests inject faults here.
    pub disk: Arc<dyn Disk>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: None,
            clock: Arc::new(SystemClock::default()),
            repair: false,
            snapshot_min_bytes: 64 << 20,
            disk: Arc::new(OsDisk),
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
    /// Why the store stopped accepting writes (a failed write, fsync or
    /// snapshot); `None` while healthy.
    pub failure: Option<String>,
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
/// Lock order: `hub` before `state`; `state` before `pending` and `pins`. The committer
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
    /// Mirror of `failed.is_some()`, so the hot paths check it lock-free.
    has_failed: AtomicBool,
    closed: AtomicBool,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    disk_bytes: AtomicU64,
    durable_seq: AtomicU64,
    log_syncs: AtomicU64,
    /// Space quota, alarms and defragment requests (see `quota`).
    quota: quota::Quota,
    /// Where etcd snapshots are spooled before streaming; `None` in memory.
    data_dir: Option<PathBuf>,
    /// Revisions ranges read in slices; they hold compaction back.
    pins: Mutex<Pins>,
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
                let (mut log, rec) = log::Log::open(dir, config.repair, config.disk.clone())?;
                let mut state = rec.snapshot.map(|s| State::restore(s, now)).unwrap_or_else(State::new);
                for r in &rec.records {
                    state.replay(r, now);
                }
                if rec.rewrite {
                    log.write_snapshot(&state.snapshot())
                        .map_err(|source| StoreError::Io { path: dir.clone(), source })?;
                    tracing::info!(dir = %dir.display(), "rewrote an old-format log as a snapshot");
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
        // After the log, which holds the dir lock.
        let quota = quota::Quota::open(config.data_dir.as_deref())?;
        let rev = state.rev;
        let seq = state.seq;
        let compact_done = state.compact_rev.max(0);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            hub: Mutex::new(watch::Hub::new(rev)),
            visible: AtomicI64::new(rev),
            clock: config.clock,
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            committer: Mutex::new(None),
            disk_bytes: AtomicU64::new(log.as_ref().map_or(0, |l| l.disk_bytes())),
            durable_seq: AtomicU64::new(seq),
            log_syncs: AtomicU64::new(0),
            quota,
            data_dir: config.data_dir.clone(),
            pins: Mutex::new(Pins { done: compact_done, wanted: compact_done, ..Default::default() }),
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

    /// The data dir, or `None` for a store in memory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.shared().data_dir.as_deref()
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
            failure: self.failure(),
        }
    }

    /// Why the store refuses writes, once a write, fsync or snapshot of its
    /// log failed. It stays so until restarted: a failed fsync cannot be
    /// retried safely, and a restart recovers exactly what was acknowledged.
    pub fn failure(&self) -> Option<String> {
        self.shared().failed.lock().clone()
    }

    /// Response headers carry only `revision`; the server fills the rest.
    ///
    /// A large range is read in slices of [`RANGE_CHUNK`] keys, each under
    /// its own hold of the shared lock, all at one revision, so a writer
    /// waits for one slice at most, never for a whole scan; the revision is
    /// pinned meanwhile so that compaction cannot take what it reads. The
    /// answer is sorted and built with no lock held.
    pub async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let s = self.shared();
        let (mut scan, _pin) = {
            let st = s.state.read();
            let mut scan = st.range_start(&r, self.revision())?;
            if st.range_step(&mut scan, &r, RANGE_CHUNK) {
                drop(st);
                return Ok(scan.finish(&r));
            }
            // Under the lock, so no compaction can slip in before the pin.
            let pin = s.pin(scan.rev);
            (scan, pin)
        };
        loop {
            // Writers (and other tasks on this worker) get their turn.
            tokio::task::yield_now().await;
            let done = {
                let st = s.state.read();
                st.range_step(&mut scan, &r, RANGE_CHUNK)
            };
            if done {
                break;
            }
        }
        Ok(scan.finish(&r))
    }

    pub async fn put(&self, r: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        self.admit(quota::put_cost(&r))?;
        self.write(|st, w, _| st.put(w, &r)).await
    }

    pub async fn delete_range(&self, r: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, EtcdError> {
        self.write(|st, w, _| Ok(st.delete_range(w, &r))).await
    }

    /// A txn that cannot write runs under the shared lock at the visible
    /// revision, as a range does, so readers never queue behind writers.
    pub async fn txn(&self, r: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        if apply::is_read_only(&r) {
            let st = self.shared().state.read();
            return st.txn_read(&r, self.revision());
        }
        self.admit(quota::txn_cost(&r))?;
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
        self.admit(quota::lease_grant_cost())?;
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
            Ok(pb::LeaseRevokeResponse {
                header: Some(pb::ResponseHeader { revision: w.read_rev(), ..Default::default() }),
            })
        })
        .await
    }

    /// Renews a lease: its granted TTL, or 0 when unknown or expired.
    /// Takes only the shared lock, so a keepalive flood never holds up
    /// writers. Refused once storage has failed: the lease table may then
    /// hold grants that never became durable.
    pub fn lease_keep_alive(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, EtcdError> {
        let s = self.shared();
        let st = s.state.read();
        self.check_healthy()?;
        let ttl = st.leases.renew(id, s.clock.now());
        Ok(pb::LeaseKeepAliveResponse { header: None, id, ttl })
    }

    /// Remaining TTL in whole seconds (truncated, as etcd does); -1 when unknown.
    pub fn lease_time_to_live(&self, r: pb::LeaseTimeToLiveRequest) -> Result<pb::LeaseTimeToLiveResponse, EtcdError> {
        let s = self.shared();
        let now = s.clock.now();
        let st = s.state.read();
        self.check_healthy()?;
        let Some(l) = st.leases.get(r.id) else {
            return Ok(pb::LeaseTimeToLiveResponse { header: None, id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] });
        };
        let mut keys: Vec<bytes::Bytes> = if r.keys { l.keys.iter().cloned().collect() } else { vec![] };
        keys.sort();
        let ttl = l.deadline().saturating_sub(now).as_secs() as i64;
        Ok(pb::LeaseTimeToLiveResponse { header: None, id: r.id, ttl, granted_ttl: l.ttl, keys })
    }

    pub fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse, EtcdError> {
        let st = self.shared().state.read();
        self.check_healthy()?;
        let mut ids: Vec<i64> = st.leases.ids().map(|(id, _)| id).collect();
        ids.sort();
        Ok(pb::LeaseLeasesResponse { header: None, leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect() })
    }

    /// Revokes every lease whose deadline has passed, each in its own
    /// revision as etcd does, but all of them queued together so that they
    /// share fsyncs; returns how many. The exclusive lock is let go every
    /// [`EXPIRE_CHUNK`] leases so writers get a turn.
    pub async fn expire_leases(&self) -> usize {
        let s = self.shared();
        let mut waiting = Vec::new();
        while self.expire_chunk(&mut waiting) && !s.has_failed() {
            tokio::task::yield_now().await;
        }
        let mut n = 0;
        for (id, rx) in waiting {
            match Self::durable(rx).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(lease = id, error = %e, "could not revoke expired lease"),
            }
        }
        n
    }

    /// Queues the revocation of up to [`EXPIRE_CHUNK`] expired leases under
    /// one hold of the lock; returns whether more are due.
    fn expire_chunk(&self, waiting: &mut Vec<(i64, Durable)>) -> bool {
        let s = self.shared();
        let mut st = s.state.write();
        let due = st.leases.expired(s.clock.now());
        let more = due.len() > EXPIRE_CHUNK;
        // One hold of the batch for the whole chunk, so it goes out in one
        // fsync rather than in whatever slices the committer grabs.
        let mut p = s.pending.lock();
        let mut ok = true;
        for id in due.into_iter().take(EXPIRE_CHUNK) {
            match self.prepare(&mut st, |st, w, _| st.lease_revoke(w, id)) {
                Ok(((), sealed)) => waiting.push((id, sealed.map(|w| w.queue(&mut p)))),
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "could not revoke expired lease");
                    ok = false;
                    break;
                }
            }
        }
        drop(p);
        s.wake.notify_one();
        more && ok
    }

    /// Time until the next lease deadline, if any lease exists.
    pub fn next_lease_deadline(&self) -> Option<Duration> {
        let s = self.shared();
        let now = s.clock.now();
        s.state.read().leases.next_deadline().map(|d| d.saturating_sub(now))
    }

    /// Applies one change to users, roles or the auth flag with etcd's rules,
    /// and answers once it is durable. Passwords arrive hashed.
    pub async fn auth_change(&self, c: AuthChange) -> Result<(), EtcdError> {
        self.write(|st, w, _| st.auth_change(w, c)).await
    }

    /// The auth tables as of now: a cheap shared copy, consistent in itself.
    pub fn auth_tables(&self) -> Arc<AuthTables> {
        self.shared().state.read().auth.clone()
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

    /// Refuses reads of state that may hold what a failed batch applied.
    fn check_healthy(&self) -> Result<(), EtcdError> {
        if !self.shared().has_failed() {
            return Ok(());
        }
        match &*self.shared().failed.lock() {
            Some(why) => Err(EtcdError::Internal(why.clone())),
            None => Ok(()),
        }
    }

    /// Applies one write under the exclusive lock, queues it for the next
    /// fsync, and waits for that fsync. `f` must check everything before it
    /// changes anything: an error leaves the state untouched.
    async fn write<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Write, Duration) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        let (out, rx) = {
            let mut st = self.shared().state.write();
            self.apply(&mut st, f)?
        };
        Self::durable(rx).await?;
        Ok(out)
    }

    /// The part of [`Store::write`] done under the lock: apply, then queue
    /// for the committer. The receiver answers once the write is durable.
    fn apply<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut State, &mut Write, Duration) -> Result<T, EtcdError>,
    ) -> Result<(T, Durable), EtcdError> {
        let (out, sealed) = self.prepare(st, f)?;
        let Some(sealed) = sealed else { return Ok((out, None)) };
        let s = self.shared();
        let rx = sealed.queue(&mut s.pending.lock());
        s.wake.notify_one();
        Ok((out, Some(rx)))
    }

    /// Applies `f` to the state; returns what must be made durable, or
    /// `None` when the write changed nothing and read only durable state.
    fn prepare<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut State, &mut Write, Duration) -> Result<T, EtcdError>,
    ) -> Result<(T, Option<Sealed>), EtcdError> {
        let s = self.shared();
        if s.closed.load(Ordering::Acquire) {
            return Err(EtcdError::Stopped);
        }
        self.check_healthy()?;
        let mut w = Write::new(st);
        let out = f(st, &mut w, s.clock.now())?;
        let (record, events) = w.finish(st);
        if record.is_none() && st.rev == s.visible.load(Ordering::Acquire) {
            // Read-only, and everything it read is durable already.
            return Ok((out, None));
        }
        Ok((out, Some(Sealed { record, events, rev: st.rev })))
    }

    async fn durable(rx: Durable) -> Result<(), EtcdError> {
        match rx {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(EtcdError::Stopped)),
        }
    }
}

/// An applied write, ready to join the pending batch.
struct Sealed {
    record: Option<record::Record>,
    events: Vec<mvccpb::Event>,
    /// The state's revision after it.
    rev: i64,
}

impl Sealed {
    fn queue(self, p: &mut Pending) -> oneshot::Receiver<Result<(), EtcdError>> {
        let (tx, rx) = oneshot::channel();
        if let Some(r) = &self.record {
            log::frame(r, &mut p.framed);
            p.seq = r.seq;
            p.compactions.extend(r.compact);
        }
        if !self.events.is_empty() {
            p.events.push((self.rev, self.events));
        }
        p.rev = self.rev;
        p.waiters.push(tx);
        rx
    }
}

/// Answers once a queued write is durable (or failed); `None` when the
/// write needed no fsync.
type Durable = Option<oneshot::Receiver<Result<(), EtcdError>>>;

/// Expired leases revoked per hold of the exclusive lock.
const EXPIRE_CHUNK: usize = 1000;

/// Keys a range visits per hold of the shared lock: tens of microseconds.
const RANGE_CHUNK: usize = 1024;

/// Revisions that ranges read in slices are reading at, and the compaction
/// that waits for them. Compaction drops history below its revision, so it
/// is held back to the oldest pinned revision and finished when the pin
/// that held it goes.
#[derive(Default)]
struct Pins {
    /// Pinned revision -> ranges reading at it.
    at: std::collections::BTreeMap<i64, usize>,
    /// The newest durable compaction revision.
    wanted: i64,
    /// The revision history has been dropped below.
    done: i64,
}

impl Pins {
    /// How far history may be dropped now, if further than it has been.
    fn next(&self) -> Option<i64> {
        let floor = self.at.keys().next().map_or(self.wanted, |&p| p.min(self.wanted));
        (floor > self.done).then_some(floor)
    }
}

/// Unpins its revision when dropped.
struct Pin<'a> {
    shared: &'a Shared,
    rev: i64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let next = {
            let mut p = self.shared.pins.lock();
            if let Some(n) = p.at.get_mut(&self.rev) {
                *n -= 1;
                if *n == 0 {
                    p.at.remove(&self.rev);
                }
            }
            p.next()
        };
        if next.is_some() {
            self.shared.compact_history();
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
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }

    /// Makes a durable batch visible: readers, then watchers, then writers.
    fn publish(&self, batch: &mut Pending) {
        let mut hub = self.hub.lock();
        // Readers first: a watcher woken by an event may read at once, and
        // must see at least that revision (etcd's order too). New watchers
        // go by `hub.visible`, under the lock held until it is set.
        if batch.rev > hub.visible {
            self.visible.store(batch.rev, Ordering::Release);
        }
        for (rev, events) in &batch.events {
            hub.publish(*rev, events);
        }
        if batch.rev > hub.visible {
            hub.visible = batch.rev;
        }
        drop(hub);
        if let Some(&c) = batch.compactions.iter().max() {
            let mut p = self.pins.lock();
            p.wanted = p.wanted.max(c);
            drop(p);
            self.compact_history();
        }
        if batch.seq > 0 {
            self.durable_seq.store(batch.seq, Ordering::Relaxed);
        }
        for w in batch.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    /// Stops all writes for good: the batch that failed and everything
    /// queued or written after it is refused, never acknowledged and never
    /// made visible. Its effects stay in memory above the visible revision,
    /// where no reader looks; a restart recovers exactly what was durable.
    fn fail(&self, batch: &mut Pending, why: String) {
        let why = {
            let mut failed = self.failed.lock();
            if failed.is_none() {
                tracing::error!(error = %why, "storage failed; refusing all writes until restarted");
                *failed = Some(format!("storage failed, refusing writes until restarted: {why}"));
                self.has_failed.store(true, Ordering::Release);
            }
            failed.clone().expect("just set")
        };
        for w in batch.waiters.drain(..) {
            let _ = w.send(Err(EtcdError::Internal(why.clone())));
        }
    }

    fn has_failed(&self) -> bool {
        self.has_failed.load(Ordering::Acquire)
    }

    /// Pins `rev` for a range read in slices; call with the state locked.
    fn pin(&self, rev: i64) -> Pin<'_> {
        *self.pins.lock().at.entry(rev).or_default() += 1;
        Pin { shared: self, rev }
    }

    /// Drops the history durable compactions allow and no pinned range
    /// still reads. The state lock comes first, so that no range can pin
    /// between the decision and the drop.
    fn compact_history(&self) {
        let mut st = self.state.write();
        let mut p = self.pins.lock();
        if let Some(to) = p.next() {
            p.done = to;
            drop(p);
            st.kv.compact(to);
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
            while p.waiters.is_empty() && p.framed.is_empty() && !s.quota.defrag_wanted() {
                if s.closed.load(Ordering::Acquire) {
                    drop(p);
                    self.seal();
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
            if s.has_failed() {
                // Fail-stop: nothing after a failure is written or shown.
                s.fail(&mut batch, String::new());
            } else if self.write(&mut batch) {
                s.publish(&mut batch);
            }
            batch.clear();
            self.spare = batch;
            self.maybe_snapshot();
        }
    }

    /// Writes and fsyncs a batch; on failure fails it and the store.
    fn write(&mut self, batch: &mut Pending) -> bool {
        let s = &self.shared;
        let (Some(log), false) = (&mut self.log, batch.framed.is_empty()) else { return true };
        let started = std::time::Instant::now();
        if let Err(e) = log.append(&mut batch.framed) {
            s.fail(batch, format!("cannot write the log: {e}"));
            return false;
        }
        self.last_sync = started.elapsed();
        s.log_syncs.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// On a clean close, vouches for the last batch (see `log`).
    fn seal(&mut self) {
        let Some(log) = &mut self.log else { return };
        if self.shared.has_failed() {
            return;
        }
        if let Err(e) = log.seal() {
            tracing::warn!(error = %e, "could not seal the log on close; the next start treats its last batch as unconfirmed");
        }
    }

    /// Bounds the log: once it outgrows the last snapshot, fold everything
    /// into a new snapshot and start the log over.
    fn maybe_snapshot(&mut self) {
        let s = self.shared.clone();
        let Some(log) = &self.log else { return };
        s.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
        let defrag = s.quota.take_defrag();
        if (defrag.is_empty() && log.wal_bytes < self.snapshot_min.max(log.snapshot_bytes)) || s.has_failed() {
            quota::defragmented(defrag, &s);
            return;
        }
        self.snapshot();
        quota::defragmented(defrag, &s);
    }

    /// Writes a snapshot of the state now. Writers are paused while the
    /// state is copied. What they had queued is written to the log first,
    /// so the snapshot holds only durable writes: if it fails, nothing in
    /// it was refused to a client, and if it succeeds, nothing is lost.
    fn snapshot(&mut self) {
        let s = self.shared.clone();
        let (snap, mut batch) = {
            let st = s.state.read();
            let mut batch = std::mem::take(&mut *s.pending.lock());
            if !self.write(&mut batch) {
                return;
            }
            (st.snapshot(), batch)
        };
        s.publish(&mut batch);
        let Some(log) = &mut self.log else { return };
        let started = std::time::Instant::now();
        match log.write_snapshot(&snap) {
            Ok(()) => {
                tracing::info!(revision = snap.rev, bytes = log.snapshot_bytes, took = ?started.elapsed(), "wrote snapshot; log restarted");
                s.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
            }
            Err(e) => s.fail(&mut Pending::default(), format!("cannot write a snapshot: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn put(k: String, v: &str) -> pb::PutRequest {
        pb::PutRequest { key: k.into(), value: v.to_string().into(), ..Default::default() }
    }

    /// Keys over several range slices, some deleted, some rewritten.
    async fn sliced_keyspace() -> Store {
        let s = Store::in_memory();
        let n = RANGE_CHUNK * 3 + 17;
        for i in 0..n {
            s.put(put(format!("k{i:05}"), &format!("{}", i % 7))).await.unwrap();
        }
        for i in (0..n).step_by(5) {
            s.put(put(format!("k{i:05}"), "again")).await.unwrap();
        }
        let del = |k: String| pb::DeleteRangeRequest { key: k.into(), ..Default::default() };
        for i in (0..n).step_by(11) {
            s.delete_range(del(format!("k{i:05}"))).await.unwrap();
        }
        s
    }

    #[tokio::test]
    async fn a_range_read_in_slices_answers_as_one_read_would() {
        let s = sliced_keyspace().await;
        let rev = s.revision();
        let all = |f: fn(&mut pb::RangeRequest)| {
            let mut r = pb::RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
            f(&mut r);
            r
        };
        let requests = [
            all(|_| {}),
            all(|r| r.range_end = "\0".into()),
            all(|r| r.key = "k01000".into()),
            all(|r| r.limit = 10),
            all(|r| r.limit = 2500),
            all(|r| (r.limit, r.sort_order, r.sort_target) = (5, 2, 4)),
            all(|r| (r.sort_target, r.keys_only) = (3, true)),
            all(|r| r.count_only = true),
            all(|r| (r.min_mod_revision, r.limit) = (3000, 7)),
            all(|r| r.max_create_revision = 1500),
            all(|r| r.revision = 2000),
            all(|r| (r.revision, r.limit, r.sort_order) = (3500, 100, 2)),
        ];
        for r in requests {
            let sliced = s.range(r.clone()).await.unwrap();
            let whole = s.shared().state.read().range(&r, rev).unwrap();
            assert_eq!(sliced, whole, "{r:?}");
            assert!(sliced.count > RANGE_CHUNK as i64, "the range spans several slices: {r:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn compaction_waits_for_a_range_reading_in_slices_below_it() {
        let s = sliced_keyspace().await;
        let rev = s.revision();
        let r = pb::RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
        let expected = s.range(r.clone()).await.unwrap();
        let mut range = std::pin::pin!(s.range(r.clone()));
        let first = std::future::poll_fn(|cx| Poll::Ready(range.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the range stops after its first slice");
        // Between slices: everything deleted, and history compacted past
        // the revision the range reads at.
        let del = pb::DeleteRangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
        s.delete_range(del).await.unwrap();
        s.compact(pb::CompactionRequest { revision: rev + 1, physical: false }).await.unwrap();
        assert!(s.shared().state.read().kv.get(b"k00001").is_some(), "the pinned history stays");
        let got = range.await.unwrap();
        assert_eq!(got, expected, "the range reads its revision whole");
        assert!(s.shared().pins.lock().at.is_empty());
        assert!(s.shared().state.read().kv.get(b"k00001").is_none(), "the compaction finished once the range let go");
        let again = s.range(pb::RangeRequest { revision: rev, ..r }).await;
        assert!(matches!(again, Err(EtcdError::Compacted)), "{again:?}");
    }
}
