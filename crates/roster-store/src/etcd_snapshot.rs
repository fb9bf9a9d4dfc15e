//! etcd snapshots: Roster's state as an etcd backend database (a bbolt
//! file in etcd 3.4's bucket layout), and an etcd or Roster snapshot back
//! into a Roster data dir. This is the migration path both ways, so it
//! keeps what etcd keeps: every retained revision of every key (values,
//! create/mod revisions, versions, leases, tombstones), the store revision,
//! the compaction point and the leases with their TTLs.
//!
//! etcd's layout, by bucket:
//! - `key`: one entry per retained revision. The key is the revision,
//!   `main u64 BE, '_', sub u64 BE`, plus `'t'` for a tombstone; the value
//!   is the encoded `mvccpb.KeyValue` (only `key` set for a tombstone).
//! - `meta`: `consistent_index` (u64 BE), and the compaction point as
//!   `scheduledCompactRev` and `finishedCompactRev` (revision bytes).
//! - `lease`: lease id (i64 BE) to an encoded `leasepb.Lease`.
//! - `members`, `members_removed`, `cluster`, `alarm`, `auth`, `authUsers`,
//!   `authRoles`: cluster bookkeeping. `etcdctl snapshot restore` replaces
//!   the members with the new cluster's.
//!
//! A snapshot file is the database followed by its sha256, as etcd's
//! `Maintenance.Snapshot` streams it and `etcdctl snapshot save` stores it.

use crate::apply::State;
use crate::record::{AuthRec, EntryRec, KeyRec, LeaseRec, Snapshot};
use crate::{Store, StoreError};
use bytes::Bytes;
use prost::Message;
use roster_api::mvccpb;
use roster_bolt::{Reader, Writer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// Buckets etcd 3.4 creates that Roster has nothing to put in but a
/// restored etcd member expects to find.
const BOOKKEEPING: [&[u8]; 3] = [b"alarm", b"members_removed", b"cluster"];
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const SHA_LEN: usize = 32;

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Bolt { path: PathBuf, source: roster_bolt::Error },
    #[error("{path}: snapshot missing hash but --skip-hash-check=false")]
    NoHash { path: PathBuf },
    #[error("{path}: sha256 mismatch: the file says {expected}, its contents hash to {actual} (truncated or damaged?)")]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    #[error("{path}: not an etcd snapshot: {why}")]
    Layout { path: PathBuf, why: String },
    #[error("data-dir {0:?} exists")]
    DirExists(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `etcdctl snapshot status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// crc32c over every bucket's name, keys and values, as etcd computes it.
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

/// What a restore rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: u64,
    pub revisions: u64,
    pub leases: u64,
}

fn rev_bytes(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(18);
    b.extend_from_slice(&(main as u64).to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        b.push(b't');
    }
    b
}

/// One entry of the `key` bucket: the revision (with `'t'` for a
/// tombstone, `live` being `None`), and the encoded KeyValue (only the key
/// for a tombstone).
fn bucket_entry(key: Bytes, mod_rev: i64, sub: u32, live: Option<mvccpb::KeyValue>) -> (Vec<u8>, Vec<u8>) {
    let tombstone = live.is_none();
    let kv = live.unwrap_or(mvccpb::KeyValue { key, ..Default::default() });
    (rev_bytes(mod_rev, i64::from(sub), tombstone), kv.encode_to_vec())
}

// === writing ===

/// Keys visited, or changes read, per hold of the shared lock while a
/// snapshot is written: writers wait for one slice at most.
const SLICE: usize = 1024;

impl Store {
    /// Writes the state at the visible revision as an etcd backend database
    /// to `out`; returns its size. The `key` bucket is read in slices, each
    /// under its own hold of the shared lock, with compaction held at the
    /// compaction point meanwhile: no copy of the keyspace is made, and
    /// writes go on while a large snapshot is written.
    pub fn write_etcd_db<W: Write + Seek>(&self, out: W, member_id: u64) -> Result<(W, u64), StoreError> {
        let s = self.shared();
        let (meta, _pin) = {
            let st = s.state.read();
            let meta = Snapshot {
                seq: 0,
                rev: self.revision(),
                compact_rev: st.compact_rev,
                keys: vec![],
                leases: st.leases.ids().map(|(id, ttl)| LeaseRec { id, ttl }).collect(),
                auth: Some(st.auth.to_rec()),
            };
            // Under the lock, so no compaction slips in before the pin.
            let pin = s.pin(st.compact_rev);
            (meta, pin)
        };
        let keys = self.key_bucket_sliced(meta.rev, meta.compact_rev);
        write_db(&meta, keys, out, member_id)
            .map_err(|e| StoreError::Corrupt(format!("cannot write an etcd snapshot: {e}")))
    }

    /// etcd's `key` bucket at `rev`: first what compaction at `compact`
    /// kept (each key's last entry at or below it, in revision order), then
    /// every change after it up to `rev`, which the keyspace keeps in
    /// revision order already.
    fn key_bucket_sliced(&self, rev: i64, compact: i64) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        let s = self.shared();
        let mut kept: Vec<(i64, u32, Bytes)> = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let (mut part, last) = s.state.read().kv.kept_at(compact, after.as_ref(), SLICE);
            kept.append(&mut part);
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        kept.sort_unstable_by_key(|k| (k.0, k.1));
        let mut kept = kept.into_iter().peekable();
        let mut cursor = (compact, u32::MAX);
        let mut buf: std::collections::VecDeque<(Bytes, crate::keyspace::Entry)> = Default::default();
        std::iter::from_fn(move || {
            while buf.is_empty() {
                let st = s.state.read();
                if kept.peek().is_some() {
                    for (r, sub, key) in kept.by_ref().take(SLICE) {
                        if let Some(e) = st.kv.entry_at(&key, r, sub) {
                            buf.push_back((key, e.clone()));
                        }
                    }
                } else {
                    let (found, last) = st.kv.changes_after(cursor, rev, SLICE);
                    cursor = last?;
                    buf.extend(found);
                }
            }
            let (key, e) = buf.pop_front()?;
            let live = (!e.is_tombstone()).then(|| e.to_kv(&key));
            Some(bucket_entry(key, e.mod_rev, e.sub, live))
        })
    }
}

/// The state as of `rev`, as etcd's backend would hold it: writes applied
/// but not yet durable are left out, and below the compaction point only
/// each key's last entry, if it is not a tombstone (history a compaction
/// still has to drop, because a range held it back, is dropped here).
fn visible_snapshot(st: &State, rev: i64) -> Snapshot {
    let mut s = st.snapshot();
    s.rev = rev;
    let compact = s.compact_rev;
    for k in &mut s.keys {
        k.entries.retain(|e| e.mod_rev <= rev);
        let below = k.entries.partition_point(|e| e.mod_rev <= compact);
        if below > 0 {
            let keep_from = if k.entries[below - 1].version == 0 { below } else { below - 1 };
            k.entries.drain(..keep_from);
        }
    }
    s.keys.retain(|k| !k.entries.is_empty());
    s
}

/// The `key` bucket's entries in order: every retained revision as
/// (revision bytes, encoded KeyValue), with `'t'` marking tombstones.
fn key_bucket(snap: &Snapshot) -> impl Iterator<Item = (i64, bool, Vec<u8>, Vec<u8>)> + '_ {
    let mut revs: Vec<(i64, u32, usize, usize)> = Vec::new();
    for (ki, k) in snap.keys.iter().enumerate() {
        for (ei, e) in k.entries.iter().enumerate() {
            revs.push((e.mod_rev, e.sub, ki, ei));
        }
    }
    revs.sort_unstable();
    revs.into_iter().map(move |(main, sub, ki, ei)| {
        let k = &snap.keys[ki];
        let e = &k.entries[ei];
        let tombstone = e.version == 0;
        let live = (!tombstone).then(|| mvccpb::KeyValue {
            key: k.key.clone(),
            create_revision: e.create_rev,
            mod_revision: e.mod_rev,
            version: e.version,
            value: e.value.clone(),
            lease: e.lease,
        });
        let (rev, value) = bucket_entry(k.key.clone(), main, sub, live);
        (main, tombstone, rev, value)
    })
}

/// Writes the `key` bucket from `keys` and the others from `snap`.
fn write_db<W: Write + Seek>(
    snap: &Snapshot,
    keys: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
    out: W,
    member_id: u64,
) -> roster_bolt::Result<(W, u64)> {
    let mut w = Writer::new(out)?;
    w.bucket(KEY, keys)?;
    for (name, entries) in small_buckets(snap, member_id) {
        if name != KEY {
            w.bucket(name, entries)?;
        }
    }
    w.finish()
}

/// A bucket's name and its entries, in key order.
type NamedBucket = (&'static [u8], Vec<(Vec<u8>, Vec<u8>)>);

/// Every bucket but the contents of `key` (listed empty, in its place),
/// in bbolt's order: by name.
fn small_buckets(snap: &Snapshot, member_id: u64) -> Vec<NamedBucket> {
    let mut leases: Vec<&LeaseRec> = snap.leases.iter().collect();
    // Keys are big-endian i64s, ordered as bytes.
    leases.sort_by_key(|l| l.id.to_be_bytes());
    let leases = leases
        .iter()
        .map(|l| (l.id.to_be_bytes().to_vec(), LeasePb { id: l.id, ttl: l.ttl, remaining_ttl: 0 }.encode_to_vec()))
        .collect();
    let mut meta = vec![(CONSISTENT_INDEX.to_vec(), (snap.rev.max(0) as u64).to_be_bytes().to_vec())];
    if snap.compact_rev > 0 {
        meta.push((FINISHED_COMPACT.to_vec(), rev_bytes(snap.compact_rev, 0, false)));
        meta.push((SCHEDULED_COMPACT.to_vec(), rev_bytes(snap.compact_rev, 0, false)));
    }
    meta.sort();
    let member = format!(
        r#"{{"id":{member_id},"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}}"#
    );
    let mut buckets: Vec<NamedBucket> = vec![
        (KEY, vec![]),
        (LEASE, leases),
        (META, meta),
        (b"members", vec![(format!("{member_id:x}").into_bytes(), member.into_bytes())]),
    ];
    let auth = snap.auth.clone().unwrap_or_default();
    let mut flag = vec![];
    if let Some(on) = auth.enabled {
        flag.push((AUTH_ENABLED.to_vec(), vec![u8::from(on)]));
    }
    if auth.revision > 0 {
        flag.push((AUTH_REVISION.to_vec(), auth.revision.to_be_bytes().to_vec()));
    }
    let mut users: Vec<_> = auth.put_users.iter().map(|u| (u.name.to_vec(), u.encode_to_vec())).collect();
    users.sort();
    let mut roles: Vec<_> = auth.put_roles.iter().map(|r| (r.name.to_vec(), r.encode_to_vec())).collect();
    roles.sort();
    buckets.extend([(AUTH, flag), (AUTH_USERS, users), (AUTH_ROLES, roles)]);
    for b in BOOKKEEPING {
        let entries = if b == b"cluster" { vec![(b"clusterVersion".to_vec(), b"3.4.0".to_vec())] } else { vec![] };
        buckets.push((b, entries));
    }
    buckets.sort_by(|x, y| x.0.cmp(y.0));
    buckets
}

/// Streams a snapshot file: the database, then its sha256.
pub struct SnapshotStream {
    file: File,
    db_len: u64,
    sent: u64,
    sha: Option<Sha256>,
}

impl SnapshotStream {
    /// The bytes that will be sent, hash included.
    pub fn total(&self) -> u64 {
        self.db_len + SHA_LEN as u64
    }

    /// Bytes still to send after the last chunk returned.
    pub fn remaining(&self) -> u64 {
        self.total() - self.sent
    }

    /// The next chunk of at most `max` bytes; the last one is the sha256.
    /// `None` once everything was sent.
    pub fn next_chunk(&mut self, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        if self.sent < self.db_len {
            let n = (max as u64).min(self.db_len - self.sent) as usize;
            let mut buf = vec![0u8; n];
            self.file.read_exact(&mut buf)?;
            if let Some(h) = self.sha.as_mut() {
                h.update(&buf);
            }
            self.sent += n as u64;
            return Ok(Some(buf));
        }
        match self.sha.take() {
            Some(h) => {
                self.sent += SHA_LEN as u64;
                Ok(Some(h.finalize().to_vec()))
            }
            None => Ok(None),
        }
    }
}

impl Store {
    /// Writes an etcd snapshot of the visible state to an unlinked file in
    /// `tmp_dir`, ready to stream: no second copy is held in memory, and no
    /// partial file is left behind whatever happens to the stream.
    pub fn etcd_snapshot_stream(&self, tmp_dir: &Path, member_id: u64) -> Result<SnapshotStream, StoreError> {
        let io = |source| StoreError::Io { path: tmp_dir.to_path_buf(), source };
        let file = tempfile::tempfile_in(tmp_dir).map_err(io)?;
        let (out, db_len) = self.write_etcd_db(BufWriter::new(file), member_id)?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.rewind().map_err(io)?;
        Ok(SnapshotStream { file, db_len, sent: 0, sha: Some(Sha256::new()) })
    }
}

impl Store {
    /// Writes an etcd snapshot file (the database, then its sha256) at
    /// `path` atomically: to `<path>.part`, fsynced, renamed over, and the
    /// directory fsynced. Returns the file's size.
    pub fn save_etcd_snapshot(&self, path: &Path, member_id: u64) -> Result<u64, SnapshotError> {
        let part = PathBuf::from(format!("{}.part", path.display()));
        let io = |source| SnapshotError::Io { path: part.clone(), source };
        let written = (|| {
            let file =
                fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&part).map_err(io)?;
            let (out, db_len) = self.write_etcd_db(BufWriter::new(file), member_id)?;
            let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
            // The writer seeks back for the meta pages, so hash afterwards.
            file.rewind().map_err(io)?;
            let mut h = Sha256::new();
            std::io::copy(&mut (&mut file).take(db_len), &mut h).map_err(io)?;
            file.write_all(&h.finalize()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok::<_, SnapshotError>(db_len + SHA_LEN as u64)
        })();
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        fs::rename(&part, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(size)
    }
}

// === hashing ===

/// What `Maintenance.HashKV` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    /// The store revision when hashed (the response header's).
    pub revision: i64,
    pub compact_revision: i64,
}

impl Store {
    /// etcd's HashKV: crc32c (Castagnoli) of `key`, then of every entry
    /// etcd's `key` bucket holds up to `rev` (0: the current revision),
    /// leaving out those at or below the compaction point that a
    /// compaction at `rev` would drop. So a Roster server and an etcd
    /// restored from its snapshot give the same hash at each revision.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv, roster_api::EtcdError> {
        let (snap, current) = {
            let st = self.shared().state.read();
            let current = self.revision();
            if rev > 0 && rev <= st.compact_rev {
                return Err(roster_api::EtcdError::Compacted);
            }
            if rev > current {
                return Err(roster_api::EtcdError::FutureRev);
            }
            (visible_snapshot(&st, current), current)
        };
        Ok(hash_kv(&snap, if rev == 0 { current } else { rev }))
    }

    /// etcd's Hash: crc32c over every bucket of the backend as a snapshot
    /// of this store would hold it, except the consistent index.
    pub fn hash(&self, member_id: u64) -> (u32, i64) {
        let rev = self.revision();
        let snap = {
            let st = self.shared().state.read();
            visible_snapshot(&st, rev)
        };
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let mut h = crc.digest();
        for (name, entries) in small_buckets(&snap, member_id) {
            if name == KEY {
                h.update(KEY);
                for (_, _, k, v) in key_bucket(&snap) {
                    h.update(&k);
                    h.update(&v);
                }
                continue;
            }
            h.update(name);
            for (k, v) in entries.iter().filter(|(k, _)| !(name == META && k == CONSISTENT_INDEX)) {
                h.update(k);
                h.update(v);
            }
        }
        (h.finalize(), rev)
    }
}

fn hash_kv(snap: &Snapshot, rev: i64) -> HashKv {
    // Per key, the newest revision at or below `rev`, if not a tombstone:
    // what etcd's index would keep when compacting at `rev`.
    let keep: std::collections::HashSet<(i64, u32)> = snap
        .keys
        .iter()
        .filter_map(|k| k.entries.iter().rev().find(|e| e.mod_rev <= rev))
        .filter(|e| e.version != 0)
        .map(|e| (e.mod_rev, e.sub))
        .collect();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut h = crc.digest();
    h.update(KEY);
    for (main, _, k, v) in key_bucket(snap) {
        if main > rev {
            break;
        }
        let sub = u64::from_be_bytes(k[9..17].try_into().unwrap()) as u32;
        if main <= snap.compact_rev && !keep.is_empty() && !keep.contains(&(main, sub)) {
            continue;
        }
        h.update(&k);
        h.update(&v);
    }
    HashKv { hash: h.finalize(), revision: snap.rev, compact_revision: snap.compact_rev }
}

// === reading ===

/// Checks a snapshot file's trailing sha256 (when it has one, which etcd
/// tells by the size: a database is a whole number of 512-byte sectors).
/// Returns the length of the database part.
pub fn verify_hash(path: &Path, skip_hash_check: bool) -> Result<u64, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let has_hash = len % 512 == SHA_LEN as u64;
    if !has_hash {
        if skip_hash_check {
            return Ok(len);
        }
        return Err(SnapshotError::NoHash { path: path.to_path_buf() });
    }
    let db_len = len - SHA_LEN as u64;
    if skip_hash_check {
        return Ok(db_len);
    }
    let mut h = Sha256::new();
    let mut left = db_len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n]).map_err(io)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    let mut expected = [0u8; SHA_LEN];
    f.read_exact(&mut expected).map_err(io)?;
    let actual = h.finalize();
    if actual.as_slice() != expected {
        return Err(SnapshotError::HashMismatch {
            path: path.to_path_buf(),
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    Ok(db_len)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `etcdctl snapshot status`: hash, revision, keys and size of a snapshot
/// or backend database file.
pub fn status(path: &Path) -> Result<SnapshotStatus, SnapshotError> {
    let bolt = |source| SnapshotError::Bolt { path: path.to_path_buf(), source };
    let r = Reader::open(path).map_err(bolt)?;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut h = crc.digest();
    let mut st = SnapshotStatus { hash: 0, revision: 0, total_keys: 0, total_size: r.size() };
    for name in r.buckets().map_err(bolt)? {
        h.update(&name);
        let is_key = name == KEY;
        r.for_each(&name, |k, v| {
            h.update(k);
            h.update(v);
            if is_key && k.len() >= 17 {
                st.revision = u64::from_be_bytes(k[..8].try_into().unwrap()) as i64;
            }
            st.total_keys += 1;
            Ok(())
        })
        .map_err(bolt)?;
    }
    st.hash = h.finalize();
    Ok(st)
}

/// Reads an etcd backend database (an etcd or Roster snapshot with its
/// hash already checked) into Roster's snapshot form.
fn read_db(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bolt = |source| SnapshotError::Bolt { path: path.to_path_buf(), source };
    let layout = |why: String| SnapshotError::Layout { path: path.to_path_buf(), why };
    let r = Reader::open(path).map_err(bolt)?;
    let mut histories: HashMap<Bytes, Vec<EntryRec>> = HashMap::new();
    let mut last_rev = 0i64;
    let mut bad: Option<String> = None;
    let found = r
        .for_each(KEY, |k, v| {
            let tombstone = match k.len() {
                17 => false,
                18 if k[17] == b't' => true,
                _ => {
                    bad.get_or_insert_with(|| format!("a key-bucket entry has a {}-byte revision", k.len()));
                    return Ok(());
                }
            };
            let main = u64::from_be_bytes(k[..8].try_into().unwrap()) as i64;
            let sub = u64::from_be_bytes(k[9..17].try_into().unwrap());
            let Ok(kv) = mvccpb::KeyValue::decode(v) else {
                bad.get_or_insert_with(|| format!("revision {main} holds a value that is not a KeyValue"));
                return Ok(());
            };
            last_rev = main;
            let entry = if tombstone {
                EntryRec { mod_rev: main, create_rev: 0, version: 0, lease: 0, value: Bytes::new(), sub: sub as u32 }
            } else {
                EntryRec {
                    mod_rev: main,
                    create_rev: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                    value: kv.value,
                    sub: sub as u32,
                }
            };
            histories.entry(kv.key).or_default().push(entry);
            Ok(())
        })
        .map_err(bolt)?;
    if !found {
        return Err(layout("it has no `key` bucket".into()));
    }
    if let Some(why) = bad {
        return Err(layout(why));
    }
    let mut compact_rev = 0;
    r.for_each(META, |k, v| {
        if k == FINISHED_COMPACT && v.len() >= 8 {
            compact_rev = u64::from_be_bytes(v[..8].try_into().unwrap()) as i64;
        }
        Ok(())
    })
    .map_err(bolt)?;
    let mut leases = Vec::new();
    r.for_each(LEASE, |_, v| {
        if let Ok(l) = LeasePb::decode(v) {
            leases.push(LeaseRec { id: l.id, ttl: l.ttl });
        }
        Ok(())
    })
    .map_err(bolt)?;
    let auth = read_auth(&r).map_err(bolt)?.map_err(layout)?;
    let keys: BTreeMap<Bytes, Vec<EntryRec>> = histories.into_iter().collect();
    let keys = keys.into_iter().map(|(key, entries)| KeyRec { key, entries }).collect();
    Ok(Snapshot { seq: 0, rev: last_rev.max(compact_rev).max(1), compact_rev, keys, leases, auth })
}

/// etcd's auth buckets: the flag and revision, users and roles (their
/// `authpb` messages as etcd stores them, password hashes included).
fn read_auth(r: &Reader) -> roster_bolt::Result<Result<Option<AuthRec>, String>> {
    let mut auth = AuthRec::default();
    let mut any = false;
    let mut bad: Option<String> = None;
    r.for_each(AUTH, |k, v| {
        if k == AUTH_ENABLED {
            auth.enabled = Some(v.first() == Some(&1));
        } else if k == AUTH_REVISION && v.len() == 8 {
            auth.revision = u64::from_be_bytes(v.try_into().unwrap());
        }
        any = true;
        Ok(())
    })?;
    r.for_each(AUTH_USERS, |k, v| {
        match roster_api::authpb::User::decode(v) {
            Ok(u) => auth.put_users.push(u),
            Err(_) => {
                bad.get_or_insert_with(|| format!("user {:?} is not an authpb.User", String::from_utf8_lossy(k)));
            }
        }
        any = true;
        Ok(())
    })?;
    r.for_each(AUTH_ROLES, |k, v| {
        match roster_api::authpb::Role::decode(v) {
            Ok(role) => auth.put_roles.push(role),
            Err(_) => {
                bad.get_or_insert_with(|| format!("role {:?} is not an authpb.Role", String::from_utf8_lossy(k)));
            }
        }
        any = true;
        Ok(())
    })?;
    Ok(match bad {
        Some(why) => Err(why),
        None => Ok(any.then_some(auth)),
    })
}

/// `roster snapshot restore`: builds a new Roster data dir at `dir` from an
/// etcd or Roster snapshot. The snapshot is checked in full before
/// anything is written, and the dir appears only once complete.
pub fn restore(snapshot: &Path, dir: &Path, skip_hash_check: bool) -> Result<Restored, SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::DirExists(dir.to_path_buf()));
    }
    verify_hash(snapshot, skip_hash_check)?;
    let snap = read_db(snapshot)?;
    let restored = Restored {
        revision: snap.rev,
        compact_revision: snap.compact_rev,
        keys: snap.keys.iter().filter(|k| k.entries.last().is_some_and(|e| e.version != 0)).count() as u64,
        revisions: snap.keys.iter().map(|k| k.entries.len() as u64).sum(),
        leases: snap.leases.len() as u64,
    };
    let tmp = dir.with_file_name(format!(
        ".{}.restoring",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        let (mut log, _) = crate::log::Log::open(&tmp, false, std::sync::Arc::new(crate::OsDisk))?;
        log.write_snapshot(&snap).map_err(|source| StoreError::Io { path: tmp.clone(), source })?;
        Ok::<_, StoreError>(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    fs::rename(&tmp, dir).map_err(io(dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))?;
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn put(k: String, v: &str) -> pb::PutRequest {
        pb::PutRequest { key: k.into_bytes().into(), value: v.as_bytes().to_vec().into(), ..Default::default() }
    }

    /// The sliced read of the `key` bucket (what snapshots are written
    /// from) gives exactly the entries of a full copy of the state, across
    /// many slices, with overwrites, deletes and a compaction in between.
    #[tokio::test]
    async fn sliced_key_bucket_equals_the_one_from_a_full_copy() {
        let store = Store::in_memory();
        for i in 0..3000 {
            store.put(put(format!("k{:05}", i % 2500), "a")).await.unwrap();
        }
        for i in (0..2500).step_by(7) {
            let r = pb::DeleteRangeRequest { key: format!("k{i:05}").into_bytes().into(), ..Default::default() };
            store.delete_range(r).await.unwrap();
        }
        let compact = store.revision() - 500;
        store.compact(pb::CompactionRequest { revision: compact, physical: true }).await.unwrap();
        for i in 0..2100 {
            store.put(put(format!("k{:05}", i * 3 % 2600), "b")).await.unwrap();
        }
        let rev = store.revision();
        let full: Vec<(Vec<u8>, Vec<u8>)> = {
            let st = store.shared().state.read();
            let snap = visible_snapshot(&st, rev);
            key_bucket(&snap).map(|(_, _, k, v)| (k, v)).collect()
        };
        let sliced: Vec<(Vec<u8>, Vec<u8>)> = store.key_bucket_sliced(rev, compact).collect();
        assert!(full.len() > 3 * SLICE, "several slices: {}", full.len());
        assert_eq!(sliced.len(), full.len());
        assert!(sliced == full, "the sliced read differs from the full copy");
    }
}
