//! Fail-stop under storage errors, injected through the disk seam
//! (`roster_store::fault`): EIO or ENOSPC on the Nth write or the Nth fsync
//! of the log, or on a snapshot, while many writers put at once. For every
//! case:
//! - no put that failed is ever readable, before or after a restart;
//! - the store reports the failure and refuses later writes;
//! - a restart on the real disk recovers every acknowledged put, exactly.

use bytes::Bytes;
use roster_store::fault::{EIO, ENOSPC, Fault, FaultyDisk};
use roster_store::pb::{PutRequest, RangeRequest};
use roster_store::{Disk, EtcdError, FileKind, OsDisk, Store, StoreConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const WRITERS: usize = 16;
const EACH: usize = 25;

fn open(dir: &Path, disk: Arc<dyn Disk>, snapshot_min_bytes: u64) -> Store {
    Store::open(StoreConfig { data_dir: Some(dir.to_owned()), disk, snapshot_min_bytes, ..Default::default() }).unwrap()
}

/// Outcome of every put: key -> `Some(revision)` when acknowledged.
type Outcomes = BTreeMap<String, Option<i64>>;

async fn put_concurrently(s: &Store) -> Outcomes {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    let key = format!("w{w:02}/{i:03}");
                    let r = s
                        .put(PutRequest { key: key.clone().into(), value: key.clone().into(), ..Default::default() })
                        .await;
                    let rev = match r {
                        Ok(resp) => Some(resp.header.unwrap().revision),
                        Err(EtcdError::Internal(why)) => {
                            assert!(why.contains("storage failed"), "{why}");
                            None
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                    };
                    out.push((key, rev));
                }
                out
            })
        })
        .collect();
    let mut all = Outcomes::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn read(s: &Store, key: &str) -> Option<(Bytes, i64)> {
    let r = s.range(RangeRequest { key: key.to_owned().into(), ..Default::default() }).await.unwrap();
    r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision))
}

/// The three properties, on the live store and after a restart.
async fn check(s: &Store, outcomes: &Outcomes, when: &str) {
    for (key, rev) in outcomes {
        let got = read(s, key).await;
        match rev {
            Some(rev) => {
                assert_eq!(got, Some((Bytes::from(key.clone()), *rev)), "{when}: acknowledged {key} must be readable")
            }
            None => assert_eq!(got, None, "{when}: failed put {key} must never be readable"),
        }
    }
}

async fn case(kind: FileKind, fault: Fault, errno: i32, snapshot_min: u64) {
    let label = format!("{kind:?} {fault:?} errno {errno}");
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new(kind, fault, errno);
    let s = open(dir.path(), disk.clone(), snapshot_min);
    let outcomes = put_concurrently(&s).await;
    assert!(disk.fired(), "{label}: the fault fired ({:?} calls)", disk.calls());
    let failed = outcomes.values().filter(|r| r.is_none()).count();
    assert!(failed > 0, "{label}: some puts failed");
    let why = s.failure().unwrap_or_else(|| panic!("{label}: the store reports its failure"));
    assert!(why.contains(&std::io::Error::from_raw_os_error(errno).to_string()), "{label}: {why}");
    assert_eq!(s.status().failure.as_deref(), Some(why.as_str()));
    let later = s.put(PutRequest { key: "later".into(), value: "v".into(), ..Default::default() }).await;
    assert!(matches!(later, Err(EtcdError::Internal(_))), "{label}: writes after a failure are refused: {later:?}");
    let acked_max = outcomes.values().flatten().max().copied().unwrap_or(1);
    assert_eq!(s.revision(), acked_max, "{label}: the visible revision never passes the failed batch");
    check(&s, &outcomes, &format!("{label}, live")).await;
    drop(s);

    let s = open(dir.path(), Arc::new(OsDisk), u64::MAX);
    assert_eq!(s.failure(), None);
    assert_eq!(s.revision(), acked_max, "{label}: restart recovers up to the last acknowledged write");
    check(&s, &outcomes, &format!("{label}, after restart")).await;
    assert_eq!(read(&s, "later").await, None);
    // And the store works again.
    s.put(PutRequest { key: "after".into(), value: "v".into(), ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_the_nth_log_write_fails_stop_and_loses_nothing_acknowledged() {
    for n in [1, 2, 3, 5, 8, 13, 21] {
        case(FileKind::Wal, Fault::Write(n), EIO, u64::MAX).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_the_nth_log_write_fails_stop_and_loses_nothing_acknowledged() {
    for n in [1, 4, 9, 16] {
        case(FileKind::Wal, Fault::Write(n), ENOSPC, u64::MAX).await;
    }
}

/// The fsyncgate case: a failed fsync is never retried, and the batch it
/// covered, though written, never becomes visible or comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_the_nth_log_fsync_fails_stop_and_the_batch_never_appears() {
    for n in [1, 2, 3, 5, 8, 13, 21] {
        case(FileKind::Wal, Fault::Sync(n), EIO, u64::MAX).await;
    }
}

/// A snapshot that cannot be written stops the store too; the writes the
/// snapshot would have folded in were logged first, so they stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_fails_stop_and_loses_nothing_acknowledged() {
    for fault in [Fault::Write(1), Fault::Sync(1), Fault::Sync(2)] {
        case(FileKind::Snapshot, fault, EIO, 4 << 10).await;
    }
}
