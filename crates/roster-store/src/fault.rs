//! Fault injection through the disk seam ([`Disk`]), for tests of the
//! store's fail-stop path: fail the Nth write or the Nth fsync of the log
//! or of a snapshot with a chosen error, as a dying disk or a full one would.
//!
//! The faults are real `io::Error`s returned where the OS would return them;
//! everything else goes to the real file. A failed write first writes part
//! of its buffer, as a short write on a full disk does.

use crate::log::{Disk, FileKind, LogFile};
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which call fails, counted from 1 over every file of the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing fails.
    None,
    /// The Nth `write` fails after writing half its buffer.
    Write(u64),
    /// The Nth `fdatasync` fails; the data it covered was written.
    Sync(u64),
}

/// A [`Disk`] that fails one chosen call on one kind of file; after the
/// failure every later write and fsync on that kind fails too, as on a disk
/// that has gone bad.
#[derive(Debug)]
pub struct FaultyDisk {
    kind: FileKind,
    fault: Fault,
    errno: i32,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    writes: AtomicU64,
    syncs: AtomicU64,
    failed: AtomicU64,
}

/// EIO, as a failing disk answers.
pub const EIO: i32 = 5;
/// ENOSPC, as a full disk answers.
pub const ENOSPC: i32 = 28;

impl FaultyDisk {
    pub fn new(kind: FileKind, fault: Fault, errno: i32) -> Arc<FaultyDisk> {
        Arc::new(FaultyDisk { kind, fault, errno, counts: Arc::default() })
    }

    /// Whether the fault has fired.
    pub fn fired(&self) -> bool {
        self.counts.failed.load(Ordering::SeqCst) > 0
    }

    /// Writes and fsyncs seen so far on files of the chosen kind.
    pub fn calls(&self) -> (u64, u64) {
        (self.counts.writes.load(Ordering::SeqCst), self.counts.syncs.load(Ordering::SeqCst))
    }
}

impl Disk for FaultyDisk {
    fn wrap(&self, file: File, kind: FileKind) -> Box<dyn LogFile> {
        if kind != self.kind {
            return Box::new(file);
        }
        Box::new(FaultyFile { file, fault: self.fault, errno: self.errno, counts: self.counts.clone() })
    }
}

struct FaultyFile {
    file: File,
    fault: Fault,
    errno: i32,
    counts: Arc<Counts>,
}

impl FaultyFile {
    fn fail(&self) -> io::Error {
        self.counts.failed.fetch_add(1, Ordering::SeqCst);
        io::Error::from_raw_os_error(self.errno)
    }

    fn broken(&self) -> bool {
        self.counts.failed.load(Ordering::SeqCst) > 0
    }
}

impl LogFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.counts.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.broken() || self.fault == Fault::Write(n) {
            LogFile::write_all(&mut self.file, &buf[..buf.len() / 2])?;
            return Err(self.fail());
        }
        LogFile::write_all(&mut self.file, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let n = self.counts.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.broken() || self.fault == Fault::Sync(n) {
            return Err(self.fail());
        }
        self.file.sync_data()
    }

    /// Cutting a failed batch off still works: the store's truncate after a
    /// failure is what keeps failed writes from coming back on restart.
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        LogFile::set_len(&mut self.file, len)
    }
}
