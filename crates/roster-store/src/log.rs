//! On-disk durability: an append-only log of batches plus a snapshot.
//!
//! Layout of a data dir:
//! - `LOCK`: held for the life of the process, so two servers never share a dir.
//! - `wal`: the file header [`WAL_MAGIC`], then batches. One batch is the
//!   records of one group commit, written with one `write` and made durable
//!   with one `fdatasync`:
//!
//!   ```text
//!   0   magic  "RBAT"
//!   4   kind   u8: 0 records, 1 seal (a clean close); 3 bytes zero
//!   8   seq    u64 LE: the previous batch's seq + 1
//!   16  len    u64 LE: body length (no limit but the file)
//!   24  prev   u32 LE: the previous batch's `crc` (0 for a file's first)
//!   28  crc    u32 LE: crc32 of `prev` then the body (a chain)
//!   32  hcrc   u32 LE: crc32 of bytes 0..32
//!   36  zero   u32 (must be zero)
//!   40  body   records, each a length-delimited protobuf
//!   ```
//! - `snapshot`: `[magic][crc32: u32 LE][len: u64 LE][snapshot]`, replaced
//!   atomically (write, fsync, rename, fsync dir). After a snapshot the log
//!   starts over; records the snapshot already holds are skipped on replay.
//!
//! # Telling a torn tail from damage
//!
//! Every batch is vouched for by the one after it (its `seq` and `prev`),
//! and a clean close appends a seal that vouches for the last. So only the
//! final batch of a log that did not close cleanly can be torn by a crash,
//! and only if it is the last thing in the file: no valid batch, no batch
//! marker and (by the length its header claims) no non-zero byte follows
//! it, since one batch is written at a time and the seal only after the
//! last is durable. That batch may be cut: it was being
//! written when the process died, so it was never acknowledged. Any other
//! damage (a bad header, length, checksum or chain anywhere with a valid
//! batch after it) refuses to start, naming the file and offset. `repair`
//! (`--repair-wal`) cuts the log at the damage instead. Whatever is cut is
//! first copied to `wal.cut-<offset>` beside the log, so nothing is lost
//! without a trace.
//!
//! A log written by an older Roster (frames of `[len][crc][record]`, no file
//! header) is read strictly and rewritten as a snapshot on open.
//!
//! # The disk seam
//!
//! Every write and fsync of the log and snapshot goes through [`LogFile`],
//! which a [`Disk`] hands out, so that tests can inject EIO or ENOSPC at any
//! call (see [`crate::fault`]).

use crate::StoreError;
use crate::record::{Record, Snapshot};
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const WAL_MAGIC: &[u8; 8] = b"ROSTWAL2";
const BATCH_MAGIC: &[u8; 4] = b"RBAT";
const SNAPSHOT_MAGIC: &[u8; 8] = b"ROSTSNP1";
/// Bytes before a batch's body.
pub(crate) const BATCH_HEADER: usize = 40;
const KIND_RECORDS: u8 = 0;
const KIND_SEAL: u8 = 1;

/// What the store writes to: the log or a snapshot being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    Wal,
    Snapshot,
}

/// The calls the store makes on a file it writes. `std::fs::File` is the
/// real one; tests wrap it to fail a chosen call.
pub trait LogFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
    /// `fdatasync`: the data and the file length are on disk.
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

/// Opens the files the store writes, so tests can put faults between the
/// store and the disk.
pub trait Disk: Send + Sync {
    fn wrap(&self, file: File, kind: FileKind) -> Box<dyn LogFile>;
}

/// The real disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn wrap(&self, file: File, _: FileKind) -> Box<dyn LogFile> {
        Box::new(file)
    }
}

impl LogFile for File {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)?;
        self.seek(std::io::SeekFrom::Start(len)).map(|_| ())
    }
}

pub(crate) struct Log {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    wal: Box<dyn LogFile>,
    /// Bytes in the current log file, all of them durable.
    pub wal_bytes: u64,
    /// Size of the last snapshot written or read.
    pub snapshot_bytes: u64,
    /// The last batch's seq and crc, which the next batch chains to.
    seq: u64,
    crc: u32,
    _lock: File,
}

/// What `open` found on disk.
pub(crate) struct Recovered {
    pub snapshot: Option<Snapshot>,
    pub records: Vec<Record>,
    /// The log was in the old format: write a snapshot at once, which also
    /// starts a log in the current one.
    pub rewrite: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Adds one record to a batch body being built in `out`. The batch header
/// is reserved in front of the first, and filled in by [`Log::append`].
pub(crate) fn frame(record: &Record, out: &mut Vec<u8>) {
    if out.is_empty() {
        out.resize(BATCH_HEADER, 0);
    }
    record.encode_length_delimited(out).expect("a Vec grows as needed");
}

fn chain_crc(prev: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Fills the header reserved at the front of `batch` (see [`frame`]).
fn seal_header(batch: &mut [u8], kind: u8, seq: u64, prev: u32) -> u32 {
    let body_len = (batch.len() - BATCH_HEADER) as u64;
    let crc = chain_crc(prev, &batch[BATCH_HEADER..]);
    let h = &mut batch[..BATCH_HEADER];
    h[..4].copy_from_slice(BATCH_MAGIC);
    h[4..8].copy_from_slice(&[kind, 0, 0, 0]);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&body_len.to_le_bytes());
    h[24..28].copy_from_slice(&prev.to_le_bytes());
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&hcrc.to_le_bytes());
    h[36..40].copy_from_slice(&[0; 4]);
    crc
}

impl Log {
    pub fn open(dir: &Path, repair: bool, disk: Arc<dyn Disk>) -> Result<(Log, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path: dir.to_owned() }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let snap_path = dir.join("snapshot");
        let (snapshot, snapshot_bytes) = match fs::read(&snap_path) {
            Ok(bytes) => (Some(decode_snapshot(&snap_path, &bytes)?), bytes.len() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(io_err(&snap_path)(e)),
        };

        let wal_path = dir.join("wal");
        if !wal_path.exists() {
            new_wal(dir).map_err(io_err(&wal_path))?;
        }
        let mut wal = OpenOptions::new().read(true).write(true).open(&wal_path).map_err(io_err(&wal_path))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes).map_err(io_err(&wal_path))?;

        let (scan, rewrite) = if bytes.starts_with(WAL_MAGIC) || bytes.is_empty() {
            (scan(&wal_path, &bytes, repair)?, false)
        } else {
            (legacy::scan(&wal_path, &bytes)?, true)
        };
        if scan.good < bytes.len() {
            let cut = &bytes[scan.good..];
            let backup = dir.join(format!("wal.cut-{}", scan.good));
            fs::write(&backup, cut).and_then(|()| File::open(&backup)?.sync_all()).map_err(io_err(&backup))?;
            tracing::warn!(
                wal = %wal_path.display(),
                offset = scan.good,
                cut = cut.len(),
                backup = %backup.display(),
                "cut the log at byte {}: {}", scan.good, scan.why.as_deref().unwrap_or("torn tail")
            );
            wal.set_len(scan.good as u64).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }
        if bytes.is_empty() {
            // A log file that lost even its header: nothing was in it.
            Write::write_all(&mut wal, WAL_MAGIC).and_then(|()| wal.sync_all()).map_err(io_err(&wal_path))?;
        }
        wal.seek(std::io::SeekFrom::End(0)).map_err(io_err(&wal_path))?;
        let wal_bytes = wal.metadata().map_err(io_err(&wal_path))?.len();

        let skip = snapshot.as_ref().map_or(0, |s| s.seq);
        let records = scan.records.into_iter().filter(|r| r.seq > skip).collect();
        let log = Log {
            dir: dir.to_owned(),
            wal: disk.wrap(wal, FileKind::Wal),
            disk,
            wal_bytes,
            snapshot_bytes,
            seq: scan.seq,
            crc: scan.crc,
            _lock: lock,
        };
        Ok((log, Recovered { snapshot, records, rewrite }))
    }

    /// Writes a batch built with [`frame`] and waits until it is on disk.
    /// On an error the log is cut back to its last durable byte, as far as
    /// the disk allows, so that a failed batch does not come back on
    /// restart; the store stops writing either way.
    pub fn append(&mut self, batch: &mut [u8]) -> std::io::Result<()> {
        self.append_kind(batch, KIND_RECORDS)
    }

    /// Marks a clean close: the seal vouches for the last batch.
    pub fn seal(&mut self) -> std::io::Result<()> {
        self.append_kind(&mut [0; BATCH_HEADER], KIND_SEAL)
    }

    fn append_kind(&mut self, batch: &mut [u8], kind: u8) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let crc = seal_header(batch, kind, seq, self.crc);
        let result = self.wal.write_all(batch).and_then(|()| self.wal.sync_data());
        if let Err(e) = result {
            // Never retry the fsync: after a failure the kernel may have
            // dropped the dirty pages and a second fsync would lie.
            if let Err(t) = self.wal.set_len(self.wal_bytes).and_then(|()| self.wal.sync_data()) {
                tracing::error!(error = %t, "could not cut the failed batch off the log; it may reappear on restart");
            }
            return Err(e);
        }
        self.seq = seq;
        self.crc = crc;
        self.wal_bytes += batch.len() as u64;
        Ok(())
    }

    /// Replaces the snapshot and starts an empty log. The snapshot must hold
    /// everything the log does.
    pub fn write_snapshot(&mut self, snap: &Snapshot) -> std::io::Result<()> {
        let body = snap.encode_to_vec();
        // The header, then the body as encoded: a large snapshot is never
        // copied a second time in memory.
        let mut head = Vec::with_capacity(20);
        head.extend_from_slice(SNAPSHOT_MAGIC);
        head.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());

        let tmp = self.dir.join("snapshot.tmp");
        let mut f = self.disk.wrap(File::create(&tmp)?, FileKind::Snapshot);
        f.write_all(&head)?;
        f.write_all(&body)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, self.dir.join("snapshot"))?;
        sync_dir(&self.dir)?;
        self.snapshot_bytes = (head.len() + body.len()) as u64;

        // The snapshot now holds everything the log did.
        let wal = new_wal(&self.dir)?;
        self.wal = self.disk.wrap(wal, FileKind::Wal);
        self.wal_bytes = WAL_MAGIC.len() as u64;
        self.crc = 0;
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.wal_bytes + self.snapshot_bytes
    }
}

/// Replaces `<dir>/wal` with an empty log (just the file header), durably;
/// returns it open for appending.
fn new_wal(dir: &Path) -> std::io::Result<File> {
    let tmp = dir.join("wal.tmp");
    let mut f = File::create(&tmp)?;
    Write::write_all(&mut f, WAL_MAGIC)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join("wal"))?;
    sync_dir(dir)?;
    OpenOptions::new().append(true).open(dir.join("wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, StoreError> {
    let corrupt = |why: &str| {
        StoreError::Corrupt(format!(
            "snapshot {} is corrupt: {why}; refusing to start. Restore the data dir from a backup \
             (a snapshot is replaced atomically, so this is damage on disk, not a crash)",
            path.display()
        ))
    };
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if len != (bytes.len() - 20) as u64 {
        return Err(corrupt(&format!("length field says {len} bytes, the file holds {}", bytes.len() - 20)));
    }
    let body = &bytes[20..];
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Snapshot::decode(body).map_err(|e| corrupt(&e.to_string()))
}

/// What [`scan`] found.
struct Scan {
    records: Vec<Record>,
    /// Length of the good prefix; the rest is cut.
    good: usize,
    /// Why the rest is cut.
    why: Option<String>,
    /// The last good batch's seq and crc.
    seq: u64,
    crc: u32,
}

/// A batch header that checks out on its own.
struct Header {
    kind: u8,
    seq: u64,
    len: u64,
    prev: u32,
    crc: u32,
}

fn parse_header(h: &[u8]) -> Option<Header> {
    let h = h.get(..BATCH_HEADER)?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if &h[..4] != BATCH_MAGIC || crc32fast::hash(&h[..32]) != u32_at(32) || u32_at(36) != 0 {
        return None;
    }
    Some(Header { kind: h[4], seq: u64_at(8), len: u64_at(16), prev: u32_at(24), crc: u32_at(28) })
}

/// Whether a valid batch header starts anywhere in `bytes`: proof that the
/// log went on past a bad spot, so that spot is damage, not a torn end.
fn valid_header_in(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], BATCH_MAGIC) {
        let at = from + i;
        if parse_header(&bytes[at..]).is_some() {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes the batches of a current-format log.
fn scan(path: &Path, bytes: &[u8], repair: bool) -> Result<Scan, StoreError> {
    let mut out = Scan { records: Vec::new(), good: bytes.len().min(WAL_MAGIC.len()), why: None, seq: 0, crc: 0 };
    if bytes.len() < WAL_MAGIC.len() {
        return Ok(out);
    }
    let mut at = WAL_MAGIC.len();
    let mut first = true;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let problem = match parse_header(rest) {
            None if rest.len() < BATCH_HEADER => Some("a batch header cut short".to_owned()),
            None => Some("a corrupt batch header".to_owned()),
            Some(h) if !first && h.seq != out.seq + 1 => {
                Some(format!("batch {} where batch {} belongs", h.seq, out.seq + 1))
            }
            Some(h) if h.prev != out.crc && !(first && h.prev == 0) => {
                Some("a batch that does not chain to the one before it".to_owned())
            }
            Some(h) if h.len > (rest.len() - BATCH_HEADER) as u64 => {
                Some(format!("a batch of {} bytes with {} left in the file", h.len, rest.len() - BATCH_HEADER))
            }
            Some(h) => {
                let body = &rest[BATCH_HEADER..BATCH_HEADER + h.len as usize];
                // One batch is in flight at a time (and the seal only after
                // the last is durable), so a torn batch is the last thing
                // in the file: anything but zeros after a whole batch that
                // fails its checksum means damage, not a torn write.
                let after = &rest[BATCH_HEADER + h.len as usize..];
                if chain_crc(h.prev, body) != h.crc && after.iter().any(|b| *b != 0) {
                    let why = "a batch checksum mismatch with more log after it";
                    if repair {
                        out.why = Some(format!("repair: {why}"));
                        return Ok(out);
                    }
                    return Err(damage(path, at, why));
                } else if chain_crc(h.prev, body) != h.crc {
                    Some("a batch checksum mismatch".to_owned())
                } else if h.kind == KIND_SEAL && !body.is_empty() || h.kind > KIND_SEAL {
                    Some(format!("a batch of unknown kind {}", h.kind))
                } else {
                    match decode_records(body) {
                        Ok(recs) => {
                            out.records.extend(recs);
                            out.seq = h.seq;
                            out.crc = h.crc;
                            first = false;
                            at += BATCH_HEADER + h.len as usize;
                            out.good = at;
                            None
                        }
                        // The checksum held: this is not a torn write.
                        Err(e) => return Err(damage(path, at, &format!("a record that does not decode ({e})"))),
                    }
                }
            }
        };
        let Some(why) = problem else { continue };
        // A valid header later on proves the log went on: damage.
        if let Some(next) = valid_header_in(&rest[1..]) {
            if repair {
                out.why = Some(format!("repair: {why}"));
                return Ok(out);
            }
            return Err(damage(path, at, &format!("{why}; a valid batch follows at byte {}", at + 1 + next)));
        }
        // The length this header claims, even if the header is damaged:
        // a batch that ends before the file does, with more than zeros
        // after it, was not the last write, so it is not torn.
        if rest.len() >= BATCH_HEADER {
            let claimed = u64::from_le_bytes(rest[16..24].try_into().expect("8 bytes"));
            let end = usize::try_from(claimed).ok().and_then(|l| l.checked_add(BATCH_HEADER));
            if let Some(end) = end.filter(|e| *e < rest.len())
                && rest[end..].iter().any(|b| *b != 0)
            {
                if repair {
                    out.why = Some(format!("repair: {why}"));
                    return Ok(out);
                }
                return Err(damage(path, at, &format!("{why}; the log goes on after this batch")));
            }
        }
        // A batch marker later on, even in a damaged header (a seal, or a
        // batch written after this one), means the log went on past this
        // spot. A body holding those four bytes by chance is refused too:
        // refusing (with --repair-wal) is safe, dropping a write is not.
        if let Some(next) = find(&rest[1..], BATCH_MAGIC) {
            if repair {
                out.why = Some(format!("repair: {why}"));
                return Ok(out);
            }
            return Err(damage(path, at, &format!("{why}; a damaged batch follows at byte {}", at + 1 + next)));
        }
        out.why = Some(format!("{why} at the end of the log (a write torn by a crash; it was never acknowledged)"));
        return Ok(out);
    }
    Ok(out)
}

fn decode_records(mut body: &[u8]) -> Result<Vec<Record>, prost::DecodeError> {
    let mut recs = Vec::new();
    while !body.is_empty() {
        recs.push(Record::decode_length_delimited(&mut body)?);
    }
    Ok(recs)
}

fn damage(path: &Path, at: usize, why: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "log {} is corrupt at byte {at}: {why}. Refusing to start, so that no acknowledged write is \
         silently dropped. Back up the data dir, then start with --repair-wal to cut the log at byte {at} \
         (the cut bytes are kept in wal.cut-{at}; the writes in them are lost).",
        path.display()
    ))
}

/// The log format before batches: frames of `[len: u32][crc32: u32][record]`
/// with no file header. Read strictly: anything but a torn last frame is
/// refused, since this reader cannot tell damage from a torn tail well.
mod legacy {
    use super::*;

    pub(super) fn scan(path: &Path, bytes: &[u8]) -> Result<Scan, StoreError> {
        let mut out = Scan { records: Vec::new(), good: 0, why: None, seq: 0, crc: 0 };
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let body = (rest.len() >= 8)
                .then(|| {
                    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
                    rest.get(8..8 + len).filter(|b| crc32fast::hash(b) == crc)
                })
                .flatten();
            match body.map(Record::decode) {
                Some(Ok(r)) => {
                    at += 8 + r.encoded_len();
                    out.records.push(r);
                    out.good = at;
                }
                _ if rest.iter().all(|b| *b == 0) || rest.len() < 8 => {
                    out.why = Some("a torn final frame of an old-format log".to_owned());
                    return Ok(out);
                }
                _ => return Err(damage(path, at, "a bad frame in an old-format log")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Change;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            rev: seq as i64 + 1,
            changes: vec![Change { key: format!("k{seq}").into(), value: "v".into(), lease: 0, delete: false }],
            ..Default::default()
        }
    }

    fn open(dir: &Path, repair: bool) -> Result<(Log, Recovered), StoreError> {
        Log::open(dir, repair, Arc::new(OsDisk))
    }

    /// Appends one batch per record; returns the offset where each batch starts.
    fn write_batches(log: &mut Log, seqs: impl IntoIterator<Item = u64>) -> Vec<u64> {
        seqs.into_iter()
            .map(|s| {
                let at = log.wal_bytes;
                let mut buf = Vec::new();
                frame(&rec(s), &mut buf);
                log.append(&mut buf).unwrap();
                at
            })
            .collect()
    }

    fn seqs(r: &Recovered) -> Vec<u64> {
        r.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn torn_tail_is_cut_with_a_backup_and_earlier_batches_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        write_batches(&mut log, [1, 2]);
        let mut last = Vec::new();
        frame(&rec(3), &mut last);
        seal_header(&mut last, KIND_RECORDS, 3, log.crc);
        drop(log);
        let wal = dir.path().join("wal");
        let good = fs::metadata(&wal).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
        Write::write_all(&mut f, &last[..last.len() - 3]).unwrap();
        drop(f);
        let (log, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![1, 2]);
        assert_eq!(fs::metadata(&wal).unwrap().len(), good, "the torn bytes are cut off the file");
        assert_eq!(log.wal_bytes, good);
        let backup = fs::read(dir.path().join(format!("wal.cut-{good}"))).unwrap();
        assert_eq!(backup, &last[..last.len() - 3], "what was cut is kept");
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        write_batches(&mut log, [1]);
        drop(log);
        let mut f = OpenOptions::new().append(true).open(dir.path().join("wal")).unwrap();
        Write::write_all(&mut f, &[0; 4096]).unwrap();
        drop(f);
        let (_, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![1]);
    }

    /// The bug that made this format: a length pointing past the end of the
    /// file was taken for a torn tail, and the whole log was cut.
    #[test]
    fn corrupt_length_in_the_middle_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        let starts = write_batches(&mut log, 1..=3);
        drop(log);
        let wal = dir.path().join("wal");
        let mut bytes = fs::read(&wal).unwrap();
        bytes[starts[1] as usize + 16 + 3] ^= 0x40;
        fs::write(&wal, &bytes).unwrap();
        let msg = open(dir.path(), false).err().expect("must refuse").to_string();
        assert!(
            msg.contains("corrupt") && msg.contains(&format!("byte {}", starts[1])) && msg.contains("--repair-wal"),
            "{msg}"
        );
        assert_eq!(fs::read(&wal).unwrap(), bytes, "a refused log is left as it is");
    }

    #[test]
    fn repair_cuts_at_the_damage_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        let starts = write_batches(&mut log, 1..=3);
        drop(log);
        let wal = dir.path().join("wal");
        let mut bytes = fs::read(&wal).unwrap();
        bytes[starts[1] as usize + BATCH_HEADER + 2] ^= 0xff;
        fs::write(&wal, &bytes).unwrap();
        assert!(open(dir.path(), false).is_err());
        let (_, got) = open(dir.path(), true).unwrap();
        assert_eq!(seqs(&got), vec![1], "repair keeps the good prefix");
        let backup = fs::read(dir.path().join(format!("wal.cut-{}", starts[1]))).unwrap();
        assert_eq!(backup, &bytes[starts[1] as usize..]);
    }

    #[test]
    fn damage_in_the_last_batch_before_a_seal_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        let starts = write_batches(&mut log, 1..=3);
        log.seal().unwrap();
        drop(log);
        let wal = dir.path().join("wal");
        let mut bytes = fs::read(&wal).unwrap();
        bytes[starts[2] as usize + BATCH_HEADER + 1] ^= 1;
        fs::write(&wal, &bytes).unwrap();
        assert!(open(dir.path(), false).is_err(), "the seal vouches for the last batch");
    }

    #[test]
    fn appends_continue_the_chain_across_reopen_and_seal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        write_batches(&mut log, [1, 2]);
        log.seal().unwrap();
        drop(log);
        let (mut log, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![1, 2]);
        write_batches(&mut log, [3]);
        drop(log);
        let (_, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![1, 2, 3]);
    }

    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), false).unwrap();
        assert!(matches!(open(dir.path(), false), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn snapshot_replaces_log_and_skips_included_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        write_batches(&mut log, [1]);
        log.write_snapshot(&Snapshot { seq: 1, rev: 2, ..Default::default() }).unwrap();
        write_batches(&mut log, [2]);
        drop(log);
        let (_, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![2]);
        assert_eq!(got.snapshot.unwrap().seq, 1);
    }

    #[test]
    fn corrupt_snapshot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("snapshot"), b"ROSTSNP1garbage-garbage").unwrap();
        let msg = open(dir.path(), false).err().unwrap().to_string();
        assert!(msg.contains("snapshot") && msg.contains("corrupt"), "{msg}");
    }

    /// No size limit: a record far over the old 64 MiB frame cap comes back.
    #[test]
    fn a_record_over_64_mib_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), false).unwrap();
        let big = Record {
            seq: 1,
            rev: 2,
            changes: vec![Change { key: "big".into(), value: vec![7u8; 65 << 20].into(), lease: 0, delete: false }],
            ..Default::default()
        };
        let mut buf = Vec::new();
        frame(&big, &mut buf);
        log.append(&mut buf).unwrap();
        drop(log);
        let (_, got) = open(dir.path(), false).unwrap();
        assert_eq!(got.records, vec![big]);
    }

    #[test]
    fn an_old_format_log_is_read_and_marked_for_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for s in 1..=2 {
            let r = rec(s);
            let body = r.encode_to_vec();
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        fs::write(dir.path().join("wal"), &buf).unwrap();
        let (_, got) = open(dir.path(), false).unwrap();
        assert_eq!(seqs(&got), vec![1, 2]);
        assert!(got.rewrite);
    }
}
