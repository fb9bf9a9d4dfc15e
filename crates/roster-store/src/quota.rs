//! etcd's space quota, its alarm table, and defragmentation.
//!
//! # Quota
//!
//! etcd 3.4 checks the quota in two places, and so do we:
//! - before a Put, a Txn that puts, or a LeaseGrant: if the bytes on disk
//!   plus the request's cost reach `--quota-backend-bytes`, the NOSPACE
//!   alarm is raised and the request fails with `etcdserver: mvcc: database
//!   space exceeded` (gRPC ResourceExhausted);
//! - while NOSPACE is raised, the same requests fail the same way, even once
//!   space was reclaimed, until the alarm is disarmed.
//!
//! A request's cost is etcd's: 256 bytes plus key and value per put (a txn
//! costs its costlier branch; only its top-level puts count, as in etcd),
//! 64 per lease grant, and 0 for everything else. Requests that cost
//! nothing always pass: reads, deletes, read-only and delete-only txns,
//! compaction, lease revoke and keepalive, alarms and defragment.
//!
//! "Bytes on disk" is the log plus the snapshot (`StoreStatus::db_size`),
//! as bbolt's file is for etcd. Deletes and compaction grow the log too;
//! only a defragment, which writes a snapshot of the state now and starts
//! the log over, makes it smaller.
//!
//! # Alarms
//!
//! The table holds (alarm, member) pairs with etcd's semantics for GET,
//! ACTIVATE and DEACTIVATE. It is durable, as etcd's alarm bucket is: each
//! change rewrites the small `alarms` file in the data dir (write, fsync,
//! rename, fsync the dir) before it is answered. Only NOSPACE changes what
//! the store does; other alarm types are kept and listed.
//!
//! # Defragment
//!
//! [`Store::defragment`] hands a request to the committer thread, which
//! answers it after writing a snapshot (the one thing that shrinks the data
//! dir). [`Store::db_size_in_use`] estimates what that snapshot would take.
//! Only compaction frees space, so the keyspace is walked once after each
//! compaction (in chunks, letting go of the shared lock between them; about
//! 0.3 µs a key) and the log's growth since is added on.

use crate::apply::State;
use crate::{EtcdError, Shared, Store, StoreError, pb};
use parking_lot::Mutex;
use prost::Message;
use prost::encoding::encoded_len_varint;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::oneshot;

/// etcd's cost of a put beyond its key and value (`kvOverhead`).
const PUT_OVERHEAD: u64 = 256;
/// etcd's cost of a lease grant (`leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;
const ALARM_FILE: &str = "alarms";
const ALARM_MAGIC: &[u8; 8] = b"ROSTALM1";
/// Bytes of a snapshot file and an empty log that are not the state.
const FILE_OVERHEAD: u64 = 20 + 8;

type Answer = oneshot::Sender<Result<(), EtcdError>>;

/// Quota, alarms and pending defragment requests; one per store.
pub(crate) struct Quota {
    /// Refuse once the data dir would reach this many bytes; 0: no quota.
    limit: AtomicU64,
    /// The member NOSPACE is raised for (the server's member id).
    member: AtomicU64,
    /// Mirror of "NOSPACE is in the table", read on every costed write.
    nospace: AtomicBool,
    /// (alarm type, member id); ordered so listings are stable.
    alarms: Mutex<BTreeSet<(i32, u64)>>,
    /// `None` in memory: alarms are not kept across restarts.
    file: Option<PathBuf>,
    defrag: Mutex<Vec<Answer>>,
    defrag_wanted: AtomicBool,
    /// The last walk of the keyspace, for [`Store::db_size_in_use`].
    in_use: Mutex<Option<InUse>>,
}

/// What a snapshot took when the keyspace was last walked.
#[derive(Clone, Copy)]
struct InUse {
    /// The compaction it was measured after: only compaction frees space.
    compact_rev: i64,
    /// `db_size` then, so later growth can be added on.
    db_size: u64,
    bytes: u64,
}

/// What a request may add to the store, as etcd's quota prices it.
pub(crate) fn put_cost(r: &pb::PutRequest) -> u64 {
    PUT_OVERHEAD + r.key.len() as u64 + r.value.len() as u64
}

pub(crate) fn txn_cost(r: &pb::TxnRequest) -> u64 {
    use pb::request_op::Request;
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

pub(crate) fn lease_grant_cost() -> u64 {
    LEASE_OVERHEAD
}

// === impl Quota ===

impl Quota {
    /// Loads the alarm table of `dir` (none in memory).
    pub(crate) fn open(dir: Option<&Path>) -> Result<Quota, StoreError> {
        let file = dir.map(|d| d.join(ALARM_FILE));
        let alarms = match &file {
            Some(f) => read_alarms(f)?,
            None => BTreeSet::new(),
        };
        let nospace = alarms.iter().any(|(t, _)| *t == pb::AlarmType::Nospace as i32);
        if nospace {
            tracing::warn!(
                "the NOSPACE alarm is raised (kept from before the restart); writes that add data are refused until `etcdctl alarm disarm`"
            );
        }
        Ok(Quota {
            limit: AtomicU64::new(0),
            member: AtomicU64::new(0),
            nospace: AtomicBool::new(nospace),
            alarms: Mutex::new(alarms),
            file,
            defrag: Mutex::new(Vec::new()),
            defrag_wanted: AtomicBool::new(false),
            in_use: Mutex::new(None),
        })
    }

    /// etcd's quota check and capped applier in one: refuses a request
    /// costing `cost` when the store is at `disk_bytes`.
    pub(crate) fn admit(&self, cost: u64, disk_bytes: u64) -> Result<(), EtcdError> {
        self.check_space(cost, disk_bytes)?;
        if cost > 0 && self.nospace.load(Ordering::Acquire) {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    /// etcd's gRPC-layer check alone: refuses, and raises NOSPACE, when
    /// `disk_bytes + cost` reaches the quota.
    fn check_space(&self, cost: u64, disk_bytes: u64) -> Result<(), EtcdError> {
        if cost == 0 {
            return Ok(());
        }
        let limit = self.limit.load(Ordering::Relaxed);
        if limit > 0 && disk_bytes.saturating_add(cost) >= limit {
            // Raised already: skip the table lock, which a raise holds
            // through an fsync.
            let member = self.member.load(Ordering::Relaxed);
            if !self.nospace.load(Ordering::Acquire) && self.activate(member, pb::AlarmType::Nospace as i32) == Ok(true)
            {
                tracing::warn!(disk_bytes, quota = limit, "database space exceeded; raised the NOSPACE alarm");
            }
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    /// Adds an alarm; returns whether it was new. In memory even when it
    /// cannot be written down: refusing writes is the safe side.
    fn activate(&self, member: u64, alarm: i32) -> Result<bool, EtcdError> {
        let mut alarms = self.alarms.lock();
        if !alarms.insert((alarm, member)) {
            return Ok(false);
        }
        self.sync_nospace(&alarms);
        self.persist(&alarms).map(|()| true)
    }

    /// Removes an alarm; returns whether it was there.
    fn deactivate(&self, member: u64, alarm: i32) -> Result<bool, EtcdError> {
        let mut alarms = self.alarms.lock();
        if !alarms.contains(&(alarm, member)) {
            return Ok(false);
        }
        let mut after = alarms.clone();
        after.remove(&(alarm, member));
        // Written first: a disarm that is not durable must not take effect.
        self.persist(&after)?;
        *alarms = after;
        self.sync_nospace(&alarms);
        Ok(true)
    }

    fn sync_nospace(&self, alarms: &BTreeSet<(i32, u64)>) {
        let on = alarms.iter().any(|(t, _)| *t == pb::AlarmType::Nospace as i32);
        self.nospace.store(on, Ordering::Release);
    }

    /// Alarms of type `alarm`, or all of them for NONE (etcd's `Get`).
    fn get(&self, alarm: i32) -> Vec<pb::AlarmMember> {
        self.alarms
            .lock()
            .iter()
            .filter(|(t, _)| alarm == pb::AlarmType::None as i32 || *t == alarm)
            .map(|&(alarm, member_id)| pb::AlarmMember { member_id, alarm })
            .collect()
    }

    /// Rewrites the alarm file. The lock on the table is held, which is
    /// fine: alarms change rarely, and the hot path reads `nospace` only.
    fn persist(&self, alarms: &BTreeSet<(i32, u64)>) -> Result<(), EtcdError> {
        let Some(path) = &self.file else { return Ok(()) };
        write_alarms(path, alarms).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot write the alarm table");
            EtcdError::Internal(format!("cannot write {}: {e}", path.display()))
        })
    }

    /// Whether a defragment waits for the committer.
    pub(crate) fn defrag_wanted(&self) -> bool {
        self.defrag_wanted.load(Ordering::Acquire)
    }

    /// The defragment requests to answer after the next snapshot.
    pub(crate) fn take_defrag(&self) -> Vec<Answer> {
        let mut d = self.defrag.lock();
        self.defrag_wanted.store(false, Ordering::Release);
        std::mem::take(&mut *d)
    }
}

/// Answers defragment requests once the committer has written (or failed
/// to write) its snapshot.
pub(crate) fn defragmented(answers: Vec<Answer>, shared: &Shared) {
    let result = match shared.failed.lock().clone() {
        Some(why) => Err(EtcdError::Internal(why)),
        None => Ok(()),
    };
    for a in answers {
        let _ = a.send(result.clone());
    }
}

// === impl Store (quota, alarms, defragment) ===

impl Store {
    /// Sets `--quota-backend-bytes` (`None`: no quota) and the member id the
    /// NOSPACE alarm is raised for. The server calls this once at start.
    pub fn set_quota(&self, limit_bytes: Option<u64>, member_id: u64) {
        let q = &self.shared().quota;
        q.limit.store(limit_bytes.unwrap_or(0), Ordering::Relaxed);
        q.member.store(member_id, Ordering::Relaxed);
    }

    /// The quota check for a request of the given cost (see the module doc).
    pub(crate) fn admit(&self, cost: u64) -> Result<(), EtcdError> {
        let s = self.shared();
        s.quota.admit(cost, s.disk_bytes.load(Ordering::Relaxed))
    }

    /// etcd checks the size against the quota before it validates a Put,
    /// Txn or LeaseGrant (its quota interceptor wraps the KV and Lease
    /// servers), so an invalid put over the quota gets NOSPACE. The server
    /// may call these first to match that; the store checks again, with the
    /// alarm, when it applies the request.
    pub fn check_quota_put(&self, r: &pb::PutRequest) -> Result<(), EtcdError> {
        self.check_space(put_cost(r))
    }

    /// See [`Store::check_quota_put`].
    pub fn check_quota_txn(&self, r: &pb::TxnRequest) -> Result<(), EtcdError> {
        self.check_space(txn_cost(r))
    }

    /// See [`Store::check_quota_put`].
    pub fn check_quota_lease_grant(&self) -> Result<(), EtcdError> {
        self.check_space(lease_grant_cost())
    }

    fn check_space(&self, cost: u64) -> Result<(), EtcdError> {
        let s = self.shared();
        s.quota.check_space(cost, s.disk_bytes.load(Ordering::Relaxed))
    }

    /// Every raised alarm, ordered by type, then member.
    pub fn alarms(&self) -> Vec<pb::AlarmMember> {
        self.shared().quota.get(pb::AlarmType::None as i32)
    }

    /// Raises an alarm; returns whether it was not raised before.
    pub fn alarm_activate(&self, member_id: u64, alarm: pb::AlarmType) -> Result<bool, EtcdError> {
        self.shared().quota.activate(member_id, alarm as i32)
    }

    /// Disarms an alarm; returns whether it was raised.
    pub fn alarm_deactivate(&self, member_id: u64, alarm: pb::AlarmType) -> Result<bool, EtcdError> {
        self.shared().quota.deactivate(member_id, alarm as i32)
    }

    /// Maintenance.Alarm as etcd 3.4 applies it: GET lists the alarms of
    /// the given type (all for NONE); ACTIVATE answers the alarm, also when
    /// it was raised already; DEACTIVATE answers it only when it was raised.
    /// The header is left for the server.
    pub fn alarm(&self, r: &pb::AlarmRequest) -> Result<pb::AlarmResponse, EtcdError> {
        use pb::alarm_request::AlarmAction;
        let q = &self.shared().quota;
        let member = pb::AlarmMember { member_id: r.member_id, alarm: r.alarm };
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => q.get(r.alarm),
            Ok(AlarmAction::Activate) => {
                if q.activate(r.member_id, r.alarm)? {
                    tracing::warn!(member = %format_args!("{:x}", r.member_id), alarm = alarm_name(r.alarm), "alarm raised");
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => {
                if q.deactivate(r.member_id, r.alarm)? {
                    tracing::info!(member = %format_args!("{:x}", r.member_id), alarm = alarm_name(r.alarm), "alarm disarmed");
                    vec![member]
                } else {
                    vec![]
                }
            }
            // etcd answers an unknown action with nothing.
            Err(_) => vec![],
        };
        Ok(pb::AlarmResponse { header: None, alarms })
    }

    /// Reclaims disk space: writes a snapshot of the state now and starts
    /// the log over, so that compacted history and deleted keys leave the
    /// data dir. Answers once the snapshot is durable. Nothing to do in
    /// memory.
    pub async fn defragment(&self) -> Result<(), EtcdError> {
        let s = self.shared();
        if s.quota.file.is_none() {
            return Ok(());
        }
        let rx = {
            // Under `pending`, as the committer checks for work and `close`
            // stops it, so the request is neither missed nor stranded.
            let _p = s.pending.lock();
            if s.closed.load(Ordering::Acquire) {
                return Err(EtcdError::Stopped);
            }
            self.check_healthy()?;
            let (tx, rx) = oneshot::channel();
            s.quota.defrag.lock().push(tx);
            s.quota.defrag_wanted.store(true, Ordering::Release);
            s.wake.notify_one();
            rx
        };
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }

    /// What a snapshot of the state would take on disk now, at most
    /// `db_size`: etcd's `dbSizeInUse`. After compaction it drops below
    /// `db_size`; after a defragment the two agree. 0 in memory.
    ///
    /// The first call after a compaction walks the keyspace (55 ms for
    /// 200,000 keys in a release build), so async callers should run it on
    /// a blocking thread.
    pub fn db_size_in_use(&self) -> i64 {
        let s = self.shared();
        if s.quota.file.is_none() {
            return 0;
        }
        let db_size = s.disk_bytes.load(Ordering::Relaxed);
        let compact_rev = s.state.read().compact_rev;
        let cached = *s.quota.in_use.lock();
        let now = match cached {
            Some(c) if c.compact_rev == compact_rev && db_size >= c.db_size => c.bytes + (db_size - c.db_size),
            // A snapshot shrank the dir: what it wrote is what is in use.
            Some(c) if c.compact_rev == compact_rev => c.bytes.min(db_size),
            _ => snapshot_len(s) + FILE_OVERHEAD,
        };
        let now = now.min(db_size);
        *s.quota.in_use.lock() = Some(InUse { compact_rev, db_size, bytes: now });
        now as i64
    }
}

/// `AlarmType`'s name as etcd prints it (`NOSPACE`), or its number.
pub fn alarm_name(alarm: i32) -> String {
    match pb::AlarmType::try_from(alarm) {
        Ok(t) => t.as_str_name().to_owned(),
        Err(_) => alarm.to_string(),
    }
}

/// An alarm as etcd's `AlarmMember.String()` renders it in `etcdctl alarm
/// list` and `Status.errors`: `memberID:<decimal> alarm:NOSPACE ` (with the
/// trailing space).
pub fn alarm_text(a: &pb::AlarmMember) -> String {
    let mut s = String::new();
    if a.member_id != 0 {
        s.push_str(&format!("memberID:{} ", a.member_id));
    }
    if a.alarm != 0 {
        s.push_str(&format!("alarm:{} ", alarm_name(a.alarm)));
    }
    s
}

/// Keys measured per hold of the shared lock (few in tests, so that walks
/// cross chunks).
const WALK_CHUNK: usize = if cfg!(test) { 7 } else { 10_000 };

/// The encoded length of `state.snapshot()`, computed without building it,
/// a chunk of keys per hold of the shared lock so writers get turns.
fn snapshot_len(s: &Shared) -> u64 {
    let mut total = 0;
    let mut after: Option<bytes::Bytes> = None;
    loop {
        let st = s.state.read();
        let from = after.as_deref().unwrap_or(b"");
        let keys = st.kv.range(from, b"\0").filter(|(k, _)| after.as_ref() != Some(*k));
        let mut last = None;
        for (n, (key, hist)) in keys.enumerate() {
            total += key_len(key, hist);
            if n + 1 == WALK_CHUNK {
                last = Some(key.clone());
                break;
            }
        }
        match last {
            Some(k) => after = Some(k),
            None => return total + state_len(&st),
        }
    }
}

fn int(v: i64) -> usize {
    if v == 0 { 0 } else { 1 + encoded_len_varint(v as u64) }
}

fn bytes_field(len: usize) -> usize {
    if len == 0 { 0 } else { 1 + encoded_len_varint(len as u64) + len }
}

fn message(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// One `KeyRec` of a snapshot.
fn key_len(key: &[u8], hist: &crate::keyspace::History) -> u64 {
    let mut rec = bytes_field(key.len());
    for e in &hist.entries {
        rec += message(
            int(e.mod_rev)
                + int(e.create_rev)
                + int(e.version)
                + int(e.lease)
                + bytes_field(e.value.len())
                + int(e.sub as i64),
        );
    }
    message(rec) as u64
}

/// A snapshot's fields other than its keys.
fn state_len(st: &State) -> u64 {
    let mut total = int(st.seq as i64) + int(st.rev) + int(st.compact_rev);
    for (id, ttl) in st.leases.ids() {
        total += message(int(id) + int(ttl));
    }
    // The auth tables, encoded as the snapshot holds them (small: users and
    // roles, not keys).
    total += message(prost::Message::encoded_len(&st.auth.to_rec()));
    total as u64
}

fn read_alarms(path: &Path) -> Result<BTreeSet<(i32, u64)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(StoreError::Io { path: path.to_owned(), source }),
    };
    let corrupt = |why: &str| {
        StoreError::Corrupt(format!(
            "alarm table {} is corrupt ({why}); refusing to start. It only lists raised alarms: \
             delete it to start with none, then check `etcdctl endpoint status`.",
            path.display()
        ))
    };
    if bytes.len() < 12 || &bytes[..8] != ALARM_MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let list = pb::AlarmResponse::decode(&bytes[12..]).map_err(|e| corrupt(&e.to_string()))?;
    Ok(list.alarms.into_iter().map(|a| (a.alarm, a.member_id)).collect())
}

fn write_alarms(path: &Path, alarms: &BTreeSet<(i32, u64)>) -> std::io::Result<()> {
    use std::io::Write;
    let list = pb::AlarmResponse {
        header: None,
        alarms: alarms.iter().map(|&(alarm, member_id)| pb::AlarmMember { member_id, alarm }).collect(),
    };
    let body = list.encode_to_vec();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(ALARM_MAGIC)?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use pb::alarm_request::AlarmAction;
    use pb::request_op::Request;

    fn put(key: &str, value: &str) -> pb::PutRequest {
        pb::PutRequest { key: key.to_owned().into(), value: value.to_owned().into(), ..Default::default() }
    }

    fn open(dir: &Path) -> Store {
        Store::open(StoreConfig { data_dir: Some(dir.to_owned()), ..Default::default() }).unwrap()
    }

    fn nospace(member_id: u64) -> pb::AlarmMember {
        pb::AlarmMember { member_id, alarm: pb::AlarmType::Nospace as i32 }
    }

    fn req(action: AlarmAction, member_id: u64, alarm: pb::AlarmType) -> pb::AlarmRequest {
        pb::AlarmRequest { action: action as i32, member_id, alarm: alarm as i32 }
    }

    #[test]
    fn costs_are_etcds() {
        assert_eq!(put_cost(&put("ab", "cde")), 256 + 5);
        let op = |r: Request| pb::RequestOp { request: Some(r) };
        let txn = pb::TxnRequest {
            compare: vec![],
            success: vec![op(Request::RequestPut(put("a", "1"))), op(Request::RequestPut(put("b", "2")))],
            failure: vec![
                op(Request::RequestPut(put("c", &"9".repeat(400)))),
                op(Request::RequestDeleteRange(pb::DeleteRangeRequest { key: "x".into(), ..Default::default() })),
            ],
        };
        assert_eq!(txn_cost(&txn), 256 + 1 + 400, "the costlier branch counts");
        let swapped =
            pb::TxnRequest { success: txn.failure.clone(), failure: txn.success.clone(), ..Default::default() };
        assert_eq!(txn_cost(&swapped), 657);
        let two = pb::TxnRequest { success: txn.success.clone(), ..Default::default() };
        assert_eq!(txn_cost(&two), 2 * (256 + 2), "a branch costs the sum of its puts");
        let deletes_only = pb::TxnRequest { success: txn.failure[1..].to_vec(), ..Default::default() };
        assert_eq!(txn_cost(&deletes_only), 0);
        assert_eq!(lease_grant_cost(), 64);
    }

    #[test]
    fn quota_raises_nospace_and_the_alarm_outlives_the_space() {
        let q = Quota::open(None).unwrap();
        q.limit.store(1000, Ordering::Relaxed);
        q.member.store(7, Ordering::Relaxed);
        assert_eq!(q.admit(100, 800), Ok(()));
        assert_eq!(q.admit(0, 5000), Ok(()), "what costs nothing always passes");
        assert!(q.get(0).is_empty());
        assert_eq!(q.admit(200, 800), Err(EtcdError::NoSpace), "size + cost reaching the quota is refused");
        assert_eq!(q.get(0), vec![nospace(7)]);
        assert_eq!(q.admit(1, 10), Err(EtcdError::NoSpace), "refused while the alarm is raised, whatever the size");
        assert_eq!(q.check_space(1, 10), Ok(()), "the size check alone passes: validation comes next in etcd");
        assert_eq!(q.admit(0, 10), Ok(()));
        assert_eq!(q.deactivate(7, pb::AlarmType::Nospace as i32), Ok(true));
        assert_eq!(q.admit(1, 10), Ok(()));
    }

    #[test]
    fn no_quota_means_no_limit() {
        let q = Quota::open(None).unwrap();
        assert_eq!(q.admit(u64::MAX, u64::MAX), Ok(()));
    }

    #[tokio::test]
    async fn alarm_actions_answer_as_etcd_does() {
        let s = Store::in_memory();
        let get = req(AlarmAction::Get, 0, pb::AlarmType::None);
        assert!(s.alarm(&get).unwrap().alarms.is_empty(), "GET with no alarms answers an empty list");
        let act = req(AlarmAction::Activate, 9, pb::AlarmType::Nospace);
        assert_eq!(s.alarm(&act).unwrap().alarms, vec![nospace(9)]);
        assert_eq!(s.alarm(&act).unwrap().alarms, vec![nospace(9)], "activating again answers the alarm");
        let corrupt = req(AlarmAction::Activate, 9, pb::AlarmType::Corrupt);
        s.alarm(&corrupt).unwrap();
        assert_eq!(s.alarm(&get).unwrap().alarms.len(), 2, "NONE lists every type");
        let only = req(AlarmAction::Get, 0, pb::AlarmType::Nospace);
        assert_eq!(s.alarm(&only).unwrap().alarms, vec![nospace(9)]);
        assert_eq!(s.put(put("k", "v")).await, Err(EtcdError::NoSpace), "an activated NOSPACE caps writes");

        let other = req(AlarmAction::Deactivate, 8, pb::AlarmType::Nospace);
        assert!(s.alarm(&other).unwrap().alarms.is_empty(), "disarming what is not raised answers nothing");
        let disarm = req(AlarmAction::Deactivate, 9, pb::AlarmType::Nospace);
        assert_eq!(s.alarm(&disarm).unwrap().alarms, vec![nospace(9)]);
        assert!(s.alarm(&disarm).unwrap().alarms.is_empty());
        s.put(put("k", "v")).await.unwrap();
        assert_eq!(alarm_text(&nospace(3319814642761637952)), "memberID:3319814642761637952 alarm:NOSPACE ");

        // python-etcd3's alarm test: create, list and disarm for member 0.
        let act0 = req(AlarmAction::Activate, 0, pb::AlarmType::Nospace);
        assert_eq!(s.alarm(&act0).unwrap().alarms, vec![nospace(0)]);
        assert_eq!(s.alarm(&only).unwrap().alarms, vec![nospace(0)]);
        assert_eq!(alarm_text(&nospace(0)), "alarm:NOSPACE ", "etcd's text leaves out a zero member id");
        s.alarm(&req(AlarmAction::Deactivate, 0, pb::AlarmType::Nospace)).unwrap();
        assert!(s.alarm(&only).unwrap().alarms.is_empty());
    }

    #[tokio::test]
    async fn nospace_refuses_puts_txn_puts_and_grants_but_not_reads_deletes_or_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let start = s.status().db_size as u64;
        s.set_quota(Some(start + 4096), 5);
        let value = "x".repeat(500);
        let mut written = 0;
        let err = loop {
            match s.put(put(&format!("k{written}"), &value)).await {
                Ok(_) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "the quota never tripped");
        };
        assert_eq!(err, EtcdError::NoSpace);
        assert!(written > 0);
        assert_eq!(s.alarms(), vec![nospace(5)]);
        let op = |r: Request| pb::RequestOp { request: Some(r) };
        let txn_put = pb::TxnRequest { success: vec![op(Request::RequestPut(put("t", "1")))], ..Default::default() };
        assert_eq!(s.txn(txn_put).await, Err(EtcdError::NoSpace));
        let grant = pb::LeaseGrantRequest { ttl: 10, id: 0 };
        assert_eq!(s.lease_grant(grant).await.map(|_| ()), Err(EtcdError::NoSpace));

        let get = pb::RangeRequest { key: "k0".into(), ..Default::default() };
        assert_eq!(s.range(get).await.unwrap().kvs.len(), 1);
        let txn_read = pb::TxnRequest {
            success: vec![op(Request::RequestRange(pb::RangeRequest { key: "k0".into(), ..Default::default() }))],
            ..Default::default()
        };
        assert!(s.txn(txn_read).await.is_ok());
        let txn_del = pb::TxnRequest {
            success: vec![op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: "k0".into(),
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert!(s.txn(txn_del).await.is_ok());
        let all = pb::DeleteRangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
        assert_eq!(s.delete_range(all).await.unwrap().deleted, written - 1);
        s.compact(pb::CompactionRequest { revision: s.revision(), physical: false }).await.unwrap();
    }

    #[tokio::test]
    async fn defragment_shrinks_the_dir_after_compaction_and_in_use_tells_beforehand() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let value = "v".repeat(1000);
        for i in 0..200 {
            s.put(put(&format!("k{}", i % 10), &value)).await.unwrap();
        }
        let before = s.status().db_size;
        let in_use = s.db_size_in_use();
        assert!(before > 200_000 && in_use > 150_000, "all history is in use: size {before}, in use {in_use}");
        s.compact(pb::CompactionRequest { revision: s.revision(), physical: false }).await.unwrap();
        let in_use = s.db_size_in_use();
        assert!(in_use < 20_000, "compaction frees history: in use {in_use}");
        assert!(s.status().db_size >= before, "only a defragment shrinks the dir");

        s.defragment().await.unwrap();
        let after = s.status().db_size;
        assert!(after < 20_000, "defragment reclaims the space: {before} -> {after}");
        assert!(
            (after - s.db_size_in_use()).abs() <= 64,
            "in use {} matches size {after} after defragment",
            s.db_size_in_use()
        );
        drop(s);
        let s = open(dir.path());
        let all = pb::RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
        assert_eq!(s.range(all).await.unwrap().kvs.len(), 10, "a defragmented store reopens whole");
    }

    #[tokio::test]
    async fn alarms_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.alarm_activate(42, pb::AlarmType::Nospace).unwrap();
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.alarms(), vec![nospace(42)]);
        assert_eq!(s.put(put("k", "v")).await, Err(EtcdError::NoSpace), "still capped after the restart");
        assert_eq!(s.alarm_deactivate(42, pb::AlarmType::Nospace), Ok(true));
        drop(s);
        let s = open(dir.path());
        assert!(s.alarms().is_empty(), "a disarm is durable too");
        s.put(put("k", "v")).await.unwrap();
    }

    #[test]
    fn a_damaged_alarm_file_refuses_to_start_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ALARM_FILE), b"ROSTALM1\0\0\0\0garbage").unwrap();
        let err =
            Store::open(StoreConfig { data_dir: Some(dir.path().to_owned()), ..Default::default() }).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("alarm table") && msg.contains("delete it"), "{msg}");
    }

    #[tokio::test]
    async fn in_use_walk_measures_exactly_what_a_snapshot_encodes() {
        let s = Store::in_memory();
        let grant = s.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap();
        for i in 0..50 {
            s.put(put(&format!("k{:02}", i % 23), &"v".repeat(i))).await.unwrap();
        }
        let leased = pb::PutRequest { key: "leased".into(), value: "v".into(), lease: grant.id, ..Default::default() };
        s.put(leased).await.unwrap();
        s.delete_range(pb::DeleteRangeRequest { key: "k05".into(), ..Default::default() }).await.unwrap();
        s.compact(pb::CompactionRequest { revision: 20, physical: false }).await.unwrap();
        let shared = s.shared();
        let want = shared.state.read().snapshot().encoded_len() as u64;
        assert_eq!(snapshot_len(shared), want, "walked in chunks of {WALK_CHUNK} keys");
    }

    #[tokio::test]
    async fn defragment_in_memory_is_a_no_op() {
        let s = Store::in_memory();
        s.put(put("k", "v")).await.unwrap();
        s.defragment().await.unwrap();
        assert_eq!(s.db_size_in_use(), 0);
    }
}
