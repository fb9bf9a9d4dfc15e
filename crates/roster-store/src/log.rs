//! On-disk durability: an append-only log of records plus a snapshot.
//!
//! Layout of a data dir:
//! - `LOCK`: held for the life of the process, so two servers never share a dir.
//! - `wal`: frames of `[len: u32 LE][crc32: u32 LE][record]`, appended in
//!   batches, one `fdatasync` per batch (group commit).
//! - `snapshot`: `[magic][crc32: u32 LE][len: u64 LE][snapshot]`, replaced
//!   atomically (write, fsync, rename, fsync dir). After a snapshot the log
//!   starts over; records the snapshot already holds are skipped on replay.
//!
//! A crash can tear the last batch. On open, an incomplete or corrupt final
//! frame is cut off with a warning: it was never acknowledged. A corrupt frame
//! followed by more data is damage, not a torn write; opening then fails with
//! a clear error unless repair was asked for.

use crate::record::{Record, Snapshot};
use crate::StoreError;
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const SNAPSHOT_MAGIC: &[u8; 8] = b"ROSTSNP1";
const FRAME_HEADER: usize = 8;
/// No record comes near this; a larger length is garbage, not a record.
const MAX_FRAME: usize = 64 << 20;

pub(crate) struct Log {
    dir: PathBuf,
    wal: File,
    /// Bytes in the current log file.
    pub wal_bytes: u64,
    /// Size of the last snapshot written or read.
    pub snapshot_bytes: u64,
    _lock: File,
}

/// What `open` found on disk.
pub(crate) struct Recovered {
    pub snapshot: Option<Snapshot>,
    pub records: Vec<Record>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

pub(crate) fn frame(record: &Record, out: &mut Vec<u8>) {
    let len = record.encoded_len();
    out.reserve(FRAME_HEADER + len);
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    record.encode(out).expect("a Vec grows as needed");
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Log {
    pub fn open(dir: &Path, repair: bool) -> Result<(Log, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
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
        let mut wal = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&wal_path).map_err(io_err(&wal_path))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes).map_err(io_err(&wal_path))?;
        let (records, good) = scan(&wal_path, &bytes, repair)?;
        if good < bytes.len() {
            tracing::warn!(
                wal = %wal_path.display(),
                offset = good,
                discarded = bytes.len() - good,
                "cut off a torn tail of the log (an unacknowledged write interrupted by a crash)"
            );
            wal.set_len(good as u64).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }
        let skip = snapshot.as_ref().map_or(0, |s| s.seq);
        let records = records.into_iter().filter(|r| r.seq > skip).collect();
        let log = Log { dir: dir.to_owned(), wal, wal_bytes: good as u64, snapshot_bytes, _lock: lock };
        // Appends go to the end, after any cut.
        let mut log = log;
        use std::io::Seek;
        log.wal.seek(std::io::SeekFrom::End(0)).map_err(io_err(&wal_path))?;
        Ok((log, Recovered { snapshot, records }))
    }

    /// Appends framed records and waits until they are on disk.
    pub fn append(&mut self, framed: &[u8]) -> std::io::Result<()> {
        self.wal.write_all(framed)?;
        self.wal.sync_data()?;
        self.wal_bytes += framed.len() as u64;
        Ok(())
    }

    /// Replaces the snapshot and starts an empty log.
    pub fn write_snapshot(&mut self, snap: &Snapshot) -> std::io::Result<()> {
        let body = snap.encode_to_vec();
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);

        let tmp = self.dir.join("snapshot.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("snapshot"))?;
        sync_dir(&self.dir)?;
        self.snapshot_bytes = out.len() as u64;

        // The snapshot now holds everything the log did.
        let tmp = self.dir.join("wal.tmp");
        File::create(&tmp)?.sync_all()?;
        fs::rename(&tmp, self.dir.join("wal"))?;
        sync_dir(&self.dir)?;
        self.wal = OpenOptions::new().append(true).open(self.dir.join("wal"))?;
        self.wal_bytes = 0;
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.wal_bytes + self.snapshot_bytes
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("snapshot {} is corrupt: {why}; refusing to start", path.display()));
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let body = bytes.get(20..20 + len).ok_or_else(|| corrupt("truncated"))?;
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Snapshot::decode(body).map_err(|e| corrupt(&e.to_string()))
}

/// Decodes frames; returns the records and the length of the good prefix.
fn scan(path: &Path, bytes: &[u8], repair: bool) -> Result<(Vec<Record>, usize), StoreError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let bad = |why: &str| -> Result<(Vec<Record>, usize), StoreError> {
            Err(StoreError::Corrupt(format!(
                "log {} is corrupt at byte {at} ({why}) and valid data may follow; refusing to start \
                 so nothing is silently dropped. Back up the data dir, then run with --repair-wal to \
                 cut the log at that point.",
                path.display()
            )))
        };
        if rest.len() < FRAME_HEADER {
            break; // torn frame header
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_FRAME {
            // Zero-filled or garbage tail: torn unless real frames follow.
            if rest.iter().all(|b| *b == 0) || repair || !has_frame_after(rest) {
                break;
            }
            return bad("impossible frame length");
        }
        let Some(body) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
            break; // torn frame body
        };
        let end = at + FRAME_HEADER + len;
        let decoded = (crc32fast::hash(body) == crc).then(|| Record::decode(body).ok()).flatten();
        match decoded {
            Some(r) => records.push(r),
            None if end == bytes.len() || repair || !has_frame_after(&bytes[end..]) => break,
            None => return bad("checksum mismatch"),
        }
        at = end;
    }
    Ok((records, at))
}

/// Whether a valid frame starts anywhere in `bytes`: evidence that damage is
/// in the middle of the log rather than at a torn end.
fn has_frame_after(bytes: &[u8]) -> bool {
    (0..bytes.len().saturating_sub(FRAME_HEADER)).any(|i| {
        let rest = &bytes[i..];
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        len > 0
            && len <= MAX_FRAME
            && rest.get(FRAME_HEADER..FRAME_HEADER + len).is_some_and(|b| crc32fast::hash(b) == crc && Record::decode(b).is_ok())
    })
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

    fn write_wal(dir: &Path, recs: &[Record], extra: &[u8]) {
        let mut buf = Vec::new();
        for r in recs {
            frame(r, &mut buf);
        }
        buf.extend_from_slice(extra);
        fs::write(dir.join("wal"), buf).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = Vec::new();
        frame(&rec(3), &mut last);
        write_wal(dir.path(), &[rec(1), rec(2)], &last[..last.len() - 3]);
        let (log, got) = Log::open(dir.path(), false).unwrap();
        assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        let len = fs::metadata(dir.path().join("wal")).unwrap().len();
        assert_eq!(len, log.wal_bytes, "the torn bytes are cut off the file");
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_wal(dir.path(), &[rec(1)], &[0; 4096]);
        let (_, got) = Log::open(dir.path(), false).unwrap();
        assert_eq!(got.records.len(), 1);
    }

    #[test]
    fn corruption_in_the_middle_refuses_to_start_unless_repairing() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for s in 1..=3 {
            frame(&rec(s), &mut buf);
        }
        let second = buf.len() / 3 + 12;
        buf[second] ^= 0xff;
        fs::write(dir.path().join("wal"), &buf).unwrap();
        let err = Log::open(dir.path(), false).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("corrupt") && msg.contains("--repair-wal"), "{msg}");
        let (_, got) = Log::open(dir.path(), true).unwrap();
        assert_eq!(got.records.len(), 1, "repair keeps the good prefix");
    }

    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Log::open(dir.path(), false).unwrap();
        assert!(matches!(Log::open(dir.path(), false), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn snapshot_replaces_log_and_skips_included_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), false).unwrap();
        let mut buf = Vec::new();
        frame(&rec(1), &mut buf);
        log.append(&buf).unwrap();
        log.write_snapshot(&Snapshot { seq: 1, rev: 2, ..Default::default() }).unwrap();
        let mut buf = Vec::new();
        frame(&rec(2), &mut buf);
        log.append(&buf).unwrap();
        drop(log);
        let (_, got) = Log::open(dir.path(), false).unwrap();
        assert_eq!(got.snapshot.unwrap().seq, 1);
        assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn corrupt_snapshot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("snapshot"), b"ROSTSNP1garbage-garbage").unwrap();
        let msg = Log::open(dir.path(), false).err().unwrap().to_string();
        assert!(msg.contains("snapshot") && msg.contains("corrupt"), "{msg}");
    }
}
