//! Corruption sweep: one flipped bit anywhere in the log or the snapshot of
//! a real data dir is never silent. Each case either refuses to start with
//! an error naming the file and the offset, or, only when the damage is in
//! the final batch of a log that did not close cleanly (a batch that was
//! being written when the process died, so never acknowledged), starts with
//! every acknowledged write.
//!
//! Every bit-position class of every batch is tried (file header, batch
//! magic, kind, sequence, length, chain, checksum, header checksum, padding,
//! body start/middle/end), then random offsets all through the file.
//! Batches are found here with a reader written from the format's doc in
//! `log.rs`, independent of the store's own.

use proptest::prelude::*;
use roster_store::pb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
};
use roster_store::{Store, StoreConfig, StoreError};
use std::path::Path;

const FILE_HEADER: usize = 8;
const BATCH_HEADER: usize = 40;

/// Everything a client can read: the revision and every key's fields.
type Dump = (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>);

fn open(dir: &Path, snapshot_min_bytes: u64) -> Result<Store, StoreError> {
    Store::open(StoreConfig { data_dir: Some(dir.to_owned()), snapshot_min_bytes, ..Default::default() })
}

async fn dump(s: &Store) -> Dump {
    let r =
        s.range(RangeRequest { key: vec![0].into(), range_end: vec![0].into(), ..Default::default() }).await.unwrap();
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec(), kv.create_revision, kv.mod_revision, kv.version, kv.lease))
        .collect();
    (s.revision(), kvs)
}

/// A mix of every kind of record, one batch each (each write waits for its
/// fsync before the next starts).
async fn history(s: &Store, n: usize) {
    let lease = s.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().id;
    for i in 0..n {
        let key = format!("k{:02}", i % 17);
        match i % 6 {
            0 | 1 => {
                s.put(PutRequest { key: key.into(), value: vec![b'v'; 1 + i * 7 % 300].into(), ..Default::default() })
                    .await
                    .unwrap();
            }
            2 => {
                s.put(PutRequest { key: key.into(), value: format!("leased-{i}").into(), lease, ..Default::default() })
                    .await
                    .unwrap();
            }
            3 => {
                let put = |k: String| RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: k.into(),
                        value: "t".into(),
                        ..Default::default()
                    })),
                };
                let cmp = Compare {
                    key: "k00".into(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                };
                s.txn(TxnRequest {
                    compare: vec![cmp],
                    success: vec![put(format!("t{i}a")), put(format!("t{i}b"))],
                    failure: vec![],
                })
                .await
                .unwrap();
            }
            4 => {
                s.delete_range(DeleteRangeRequest { key: key.into(), ..Default::default() }).await.unwrap();
            }
            _ => {
                s.compact(CompactionRequest { revision: s.revision() - 3, physical: true }).await.unwrap();
            }
        }
    }
}

/// Two images of one history, as files: `sealed` after a clean stop (every
/// batch acknowledged); `crashed` taken while a last batch had just been
/// written and no seal followed, so that batch counts as unacknowledged.
struct Images {
    sealed: Vec<u8>,
    crashed: Vec<u8>,
    /// What a client saw before and after the last batch.
    before_last: Dump,
    after_last: Dump,
}

async fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), u64::MAX).unwrap();
    history(&s, 40).await;
    let before_last = dump(&s).await;
    drop(s);
    let s = open(dir.path(), u64::MAX).unwrap();
    s.put(PutRequest { key: "last".into(), value: "the final batch".into(), ..Default::default() }).await.unwrap();
    let after_last = dump(&s).await;
    let crashed = std::fs::read(dir.path().join("wal")).unwrap();
    drop(s);
    let sealed = std::fs::read(dir.path().join("wal")).unwrap();
    assert!(sealed.len() > crashed.len(), "a clean close seals the log");
    Images { sealed, crashed, before_last, after_last }
}

/// Batch extents `(start, end)`, read with the documented header layout.
fn batches(wal: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&wal[..FILE_HEADER], b"ROSTWAL2");
    let mut out = Vec::new();
    let mut at = FILE_HEADER;
    while at < wal.len() {
        assert_eq!(&wal[at..at + 4], b"RBAT", "batch at {at}");
        let len = u64::from_le_bytes(wal[at + 16..at + 24].try_into().unwrap()) as usize;
        out.push((at, at + BATCH_HEADER + len));
        at += BATCH_HEADER + len;
    }
    out
}

/// The bit-position classes of one batch, as offsets into the file.
fn classes(start: usize, end: usize) -> Vec<(&'static str, usize)> {
    let mut c = vec![
        ("magic", start),
        ("kind", start + 4),
        ("kind padding", start + 6),
        ("seq", start + 8),
        ("length low byte", start + 16),
        ("length high byte", start + 23),
        ("chain", start + 25),
        ("crc", start + 30),
        ("header crc", start + 33),
        ("padding", start + 38),
    ];
    if end > start + BATCH_HEADER {
        c.push(("body start", start + BATCH_HEADER));
        c.push(("body middle", (start + BATCH_HEADER + end) / 2));
        c.push(("body end", end - 1));
    }
    c
}

enum Outcome {
    Refused,
    Started(Dump),
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("roster-sweep").tempdir().unwrap()
}

async fn try_open(dir: &Path, file: &str, bytes: &[u8]) -> Outcome {
    std::fs::write(dir.join(file), bytes).unwrap();
    match open(dir, u64::MAX) {
        Err(StoreError::Corrupt(msg)) => {
            let path = dir.join(file);
            assert!(msg.contains(&path.display().to_string()), "the error names the file: {msg}");
            assert!(
                file != "wal" || (msg.contains("byte") && msg.contains("--repair-wal")),
                "the error names the offset and the way out: {msg}"
            );
            Outcome::Refused
        }
        Err(e) => panic!("damage must be reported as corruption, got {e}"),
        Ok(s) => {
            let d = dump(&s).await;
            Outcome::Started(d)
        }
    }
}

/// The sweep's rule for one flipped bit at `offset` of an image.
async fn check_flip(img: &Images, crashed: bool, offset: usize, bit: u8, what: &str) {
    let mut bytes = if crashed { img.crashed.clone() } else { img.sealed.clone() };
    bytes[offset] ^= 1 << bit;
    let dir = scratch();
    let outcome = try_open(dir.path(), "wal", &bytes).await;
    let last = *batches(if crashed { &img.crashed } else { &img.sealed }).last().unwrap();
    let in_unacknowledged = crashed && offset >= last.0;
    match outcome {
        Outcome::Refused => {}
        Outcome::Started(d) if d == img.after_last => {}
        Outcome::Started(d) if in_unacknowledged && d == img.before_last => {}
        Outcome::Started(d) => panic!(
            "flip of bit {bit} at byte {offset} ({what}, {} image) started with other data: revision {} and {} keys, \
             expected revision {} and {} keys",
            if crashed { "crashed" } else { "sealed" },
            d.0,
            d.1.len(),
            img.after_last.0,
            img.after_last.1.len()
        ),
    }
}

#[tokio::test]
async fn every_bit_class_of_every_batch_is_refused_or_harmless() {
    let img = images().await;
    for crashed in [false, true] {
        let wal = if crashed { &img.crashed } else { &img.sealed };
        let all = batches(wal);
        assert!(all.len() > 30, "{} batches", all.len());
        for (what, offset) in [("file header", 0), ("file header", 7)] {
            check_flip(&img, crashed, offset, 3, what).await;
        }
        for (i, (start, end)) in all.iter().enumerate() {
            for (what, offset) in classes(*start, *end) {
                check_flip(&img, crashed, offset, ((i + offset) % 8) as u8, what).await;
            }
        }
    }
}

/// A flip that lands in an acknowledged batch must refuse to start: this is
/// the bug where a corrupt length in the middle was taken for a torn tail.
#[tokio::test]
async fn a_flipped_length_in_any_acknowledged_batch_refuses_to_start() {
    let img = images().await;
    let all = batches(&img.sealed);
    // Every batch but the final seal, which holds no data.
    for (start, _) in &all[..all.len() - 1] {
        let mut bytes = img.sealed.clone();
        bytes[start + 17] ^= 0x10;
        let dir = scratch();
        assert!(matches!(try_open(dir.path(), "wal", &bytes).await, Outcome::Refused), "length flip at batch {start}");
    }
}

/// Truncating the crashed image anywhere inside its final batch is a torn
/// write: it starts, with every earlier write.
#[tokio::test]
async fn a_log_torn_anywhere_in_its_final_batch_starts_with_every_earlier_write() {
    let img = images().await;
    let (start, end) = *batches(&img.crashed).last().unwrap();
    for cut in start..end {
        let dir = scratch();
        match try_open(dir.path(), "wal", &img.crashed[..cut]).await {
            Outcome::Started(d) => assert_eq!(d, img.before_last, "cut at {cut}"),
            Outcome::Refused => panic!("a torn final batch (cut at {cut}) must not stop the server"),
        }
    }
}

/// A snapshot is replaced atomically, so it is never torn: every flip in it
/// refuses to start.
#[tokio::test]
async fn every_flip_class_in_a_snapshot_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 2 << 10).unwrap();
    history(&s, 60).await;
    drop(s);
    let snap = std::fs::read(dir.path().join("snapshot")).unwrap();
    let wal = std::fs::read(dir.path().join("wal")).unwrap();
    assert!(snap.len() > 100, "a snapshot was written");
    let body_mid = 20 + (snap.len() - 20) / 2;
    for (what, offset) in [
        ("magic", 0),
        ("crc", 9),
        ("length", 12),
        ("length high", 19),
        ("body start", 20),
        ("body middle", body_mid),
        ("body end", snap.len() - 1),
    ] {
        for bit in [0, 5, 7] {
            let mut bytes = snap.clone();
            bytes[offset] ^= 1 << bit;
            let dir = scratch();
            std::fs::write(dir.path().join("wal"), &wal).unwrap();
            assert!(
                matches!(try_open(dir.path(), "snapshot", &bytes).await, Outcome::Refused),
                "snapshot {what} bit {bit}"
            );
        }
    }
    let dir2 = scratch();
    std::fs::write(dir2.path().join("wal"), &wal).unwrap();
    assert!(
        matches!(try_open(dir2.path(), "snapshot", &snap[..snap.len() - 1]).await, Outcome::Refused),
        "truncated snapshot"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn image_cache() -> &'static Images {
    static IMAGES: std::sync::OnceLock<Images> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| runtime().block_on(images()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any byte, any bit, either image.
    #[test]
    fn a_random_flip_is_refused_or_harmless(pos in 0.0f64..1.0, bit in 0u8..8, crashed: bool) {
        let img = image_cache();
        let len = if crashed { img.crashed.len() } else { img.sealed.len() };
        let offset = ((len as f64 * pos) as usize).min(len - 1);
        runtime().block_on(check_flip(img, crashed, offset, bit, "random"));
    }

    /// Several flips at once, in acknowledged batches of the sealed image:
    /// never a start with less data.
    #[test]
    fn several_flips_are_refused_or_harmless(flips in proptest::collection::vec((0.0f64..1.0, 0u8..8), 2..6)) {
        let img = image_cache();
        let mut bytes = img.sealed.clone();
        for (pos, bit) in &flips {
            let offset = ((bytes.len() as f64 * pos) as usize).min(bytes.len() - 1);
            bytes[offset] ^= 1 << bit;
        }
        let dir = scratch();
        match runtime().block_on(try_open(dir.path(), "wal", &bytes)) {
            Outcome::Refused => {}
            Outcome::Started(d) => prop_assert_eq!(&d, &img.after_last),
        }
    }
}
