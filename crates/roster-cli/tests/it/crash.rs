//! Crash safety of `roster serve` (the binary, on a real data dir):
//! - `kill -9` during concurrent writes loses no acknowledged write, and the
//!   revision never goes backwards across restarts;
//! - a torn or garbage tail on the WAL (`<data-dir>/wal`) is cut off and the
//!   server starts with every acknowledged write; a corrupt record followed
//!   by valid ones makes it refuse to start with a clear message (or, with
//!   `--repair-wal`, cut the log there), as `roster-store`'s `log.rs`
//!   documents. It never panics.

use crate::support::roster_bin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::{PutRequest, RangeRequest};
use roster_api::range::prefix_end;
use roster_testkit::Roster;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const WRITERS: usize = 50;
const CYCLES: usize = 5;

/// One acknowledged put.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

/// Every key under `prefix`, as key -> (value, create_revision, mod_revision).
async fn dump(ch: &Channel, prefix: &str) -> (i64, BTreeMap<String, (String, i64, i64)>) {
    let mut kv = KvClient::new(ch.clone()).max_decoding_message_size(256 << 20);
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix.as_bytes()).into(),
        ..Default::default()
    };
    let resp = tokio::time::timeout(Duration::from_secs(15), kv.range(req))
        .await
        .expect("range answered")
        .expect("range ok")
        .into_inner();
    let rev = resp.header.map_or(0, |h| h.revision);
    let kvs = resp
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.to_vec()).unwrap(),
                (String::from_utf8(kv.value.to_vec()).unwrap(), kv.create_revision, kv.mod_revision),
            )
        })
        .collect();
    (rev, kvs)
}

/// Writes unique keys from `WRITERS` concurrent clients until `stop`, and
/// records each acknowledged put.
fn spawn_writers(
    ch: Channel,
    cycle: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (ch, stop, acks) = (ch.clone(), stop.clone(), acks.clone());
            tokio::spawn(async move {
                let mut kv = KvClient::new(ch);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("crash/{cycle}/{w:02}/{i:06}");
                    let value = format!("v-{cycle}-{w}-{i}");
                    let req = PutRequest { key: key.clone().into(), value: value.clone().into(), ..Default::default() };
                    match tokio::time::timeout(Duration::from_secs(5), kv.put(req)).await {
                        Ok(Ok(resp)) => {
                            let revision = resp.into_inner().header.map_or(0, |h| h.revision);
                            acks.lock().unwrap().push(Ack { key, value, revision });
                        }
                        // The server is gone (or hung): this writer is done.
                        _ => break,
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let seed: u64 = std::env::var("ROSTER_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
    });
    eprintln!("crash test seed {seed} (ROSTER_CRASH_SEED={seed} reproduces the kill delays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("roster-crash").tempdir().unwrap();
    let mut server = Roster::start_in(roster_bin(), dir.path()).await;
    let mut all: Vec<Ack> = Vec::new();
    let mut last_rev = 0i64;

    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let writers = spawn_writers(server.channel(), cycle, stop.clone(), acks.clone());
        let delay = Duration::from_millis(rng.random_range(100..=800));
        tokio::time::sleep(delay).await;
        server.kill_9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(Duration::from_secs(10), w).await.expect("writer stops after the kill").unwrap();
        }
        let acked = std::mem::take(&mut *acks.lock().unwrap());
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: no write was acknowledged in {delay:?}; log:\n{}",
            server.log().tail(20)
        );
        all.extend(acked.iter().cloned());

        server.restart().await;
        let ch = server.channel();
        let (rev, kvs) = dump(&ch, "crash/").await;
        let max_acked = all.iter().map(|a| a.revision).max().unwrap();
        let mut missing = Vec::new();
        for a in &all {
            match kvs.get(&a.key) {
                Some((v, create, modr)) if *v == a.value && *create == a.revision && *modr == a.revision => {}
                other => missing.push(format!("{a:?} -> {other:?}")),
            }
        }
        assert!(
            missing.is_empty(),
            "cycle {cycle} (seed {seed}, kill after {delay:?}): {} of {} acknowledged puts lost or changed, e.g.:\n{}\nlog:\n{}",
            missing.len(),
            all.len(),
            missing.iter().take(10).cloned().collect::<Vec<_>>().join("\n"),
            server.log().tail(30)
        );
        assert!(rev >= max_acked, "cycle {cycle}: store revision {rev} < highest acknowledged revision {max_acked}");
        assert!(rev >= last_rev, "cycle {cycle}: revision went backwards across a restart: {last_rev} -> {rev}");
        last_rev = rev;
        eprintln!(
            "cycle {cycle}: killed after {delay:?}; {} acked this cycle, {} in all, all present; revision {rev}",
            acked.len(),
            all.len()
        );
    }
    // Every acknowledged put got a revision of its own.
    let revs: HashSet<i64> = all.iter().map(|a| a.revision).collect();
    assert_eq!(revs.len(), all.len(), "two acknowledged puts share a revision");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}

/// Puts `n` keys, acknowledged, then crashes the server.
async fn write_then_crash(dir: &Path, n: usize) -> Vec<Ack> {
    let mut server = Roster::start_in(roster_bin(), dir).await;
    let mut kv = KvClient::new(server.channel());
    let mut acks = Vec::new();
    for i in 0..n {
        let (key, value) = (format!("wal/{i:03}"), format!("value-{i}"));
        let resp = kv
            .put(PutRequest { key: key.clone().into(), value: value.clone().into(), ..Default::default() })
            .await
            .unwrap();
        acks.push(Ack { key, value, revision: resp.into_inner().header.unwrap().revision });
    }
    server.kill_9();
    acks
}

async fn assert_all_present(server: &Roster, acks: &[Ack]) {
    let (rev, kvs) = dump(&server.channel(), "wal/").await;
    for a in acks {
        let got = kvs.get(&a.key);
        assert_eq!(
            got.map(|(v, _, m)| (v.as_str(), *m)),
            Some((a.value.as_str(), a.revision)),
            "{a:?}; log:\n{}",
            server.log().tail(20)
        );
    }
    assert!(rev >= acks.last().map_or(0, |a| a.revision));
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn assert_no_panic(server: &Roster) {
    let log = server.log().read();
    assert!(!log.contains("panicked"), "roster panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_cut_off() {
    let dir = tempfile::Builder::new().prefix("roster-wal").tempdir().unwrap();
    let acks = write_then_crash(dir.path(), 20).await;
    let wal = dir.path().join("wal");
    assert!(wal.exists(), "the store keeps its log at <data-dir>/wal");
    // A frame header announcing 100 bytes, and only 10 of them: a write
    // interrupted by the crash.
    let mut torn = 100u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[7; 10]);
    append(&wal, &torn);

    let mut server = Roster::try_start_in(roster_bin(), dir.path())
        .await
        .unwrap_or_else(|e| panic!("a torn tail must not stop the server: {e}"));
    assert_all_present(&server, &acks).await;
    // The log continues after the cut: a new write survives another crash.
    let mut kv = KvClient::new(server.channel());
    let resp = kv
        .put(PutRequest { key: "wal/after".into(), value: "x".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let after = Ack { key: "wal/after".into(), value: "x".into(), revision: resp.header.unwrap().revision };
    assert_eq!(after.revision, acks.last().unwrap().revision + 1, "revisions continue where the log was cut");
    server.kill_9();
    server.restart().await;
    let mut expected = acks.clone();
    expected.push(after);
    assert_all_present(&server, &expected).await;
    assert_no_panic(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_wal_tail_is_cut_off() {
    let dir = tempfile::Builder::new().prefix("roster-wal").tempdir().unwrap();
    let acks = write_then_crash(dir.path(), 20).await;
    let wal = dir.path().join("wal");
    let mut rng = StdRng::seed_from_u64(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    append(&wal, &garbage);
    let server = Roster::try_start_in(roster_bin(), dir.path())
        .await
        .unwrap_or_else(|e| panic!("a garbage tail must not stop the server: {e}"));
    assert_all_present(&server, &acks).await;
    assert_no_panic(&server);
    // And zeros (a preallocated or torn tail) too.
    let mut server = server;
    server.kill_9();
    append(&wal, &[0; 4096]);
    server.restart().await;
    assert_all_present(&server, &acks).await;
    assert_no_panic(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_record_before_valid_ones_refuses_to_start_clearly() {
    let dir = tempfile::Builder::new().prefix("roster-wal").tempdir().unwrap();
    let acks = write_then_crash(dir.path(), 20).await;
    let wal = dir.path().join("wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 100, "wal has {} bytes", bytes.len());
    // Flip a byte inside the first record's body (after its 8-byte header).
    bytes[10] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();

    match Roster::try_start_in(roster_bin(), dir.path()).await {
        Ok(server) => panic!("started on a log with damage before valid records; log:\n{}", server.log().read()),
        Err(e) => {
            assert!(e.status.is_some_and(|s| !s.success()), "must exit with an error status: {e}");
            assert!(!e.log.contains("panicked"), "must refuse cleanly, not panic:\n{}", e.log);
            assert!(
                e.log.contains("corrupt") && e.log.contains("--repair-wal"),
                "must say the log is corrupt and how to repair:\n{}",
                e.log
            );
        }
    }
    // Asked to repair, it cuts the log at the damage and starts: nothing
    // after the bad record survives, and nothing before it existed.
    let server = Roster::try_start_in_with_args(roster_bin(), dir.path(), &["--repair-wal"])
        .await
        .unwrap_or_else(|e| panic!("--repair-wal must start: {e}"));
    let (_, kvs) = dump(&server.channel(), "wal/").await;
    assert!(kvs.len() < acks.len(), "repair cut the log at the damaged record: {} keys", kvs.len());
    assert_no_panic(&server);
}
