//! etcd snapshots both ways, checked with etcd's own tools: a history built
//! on `roster serve` goes through `etcdctl snapshot save|status|restore`
//! into a real etcd, and one built on etcd goes through `roster snapshot
//! restore` into `roster serve`. Everything etcd keeps must arrive: every
//! key's value, create/mod revision, version and lease, the store revision,
//! the compaction point and the leases with their keys.

use crate::support::roster_bin;
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_api::etcdserverpb::request_op::Request;
use roster_api::etcdserverpb::*;
use roster_api::mvccpb::KeyValue;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl};
use std::path::Path;
use tonic::transport::Channel;

const LEASE_A: i64 = 0x1234;
const LEASE_B: i64 = 0x7fff_0000_0000_0001;

fn put(k: &[u8], v: &[u8], lease: i64) -> PutRequest {
    PutRequest { key: k.to_vec().into(), value: v.to_vec().into(), lease, ..Default::default() }
}

/// Puts, overwrites, deletes, a txn of two puts, binary keys and values,
/// two leases (one with keys), and a compaction with writes after it.
/// Returns the compaction revision.
async fn build_history(ch: &Channel) -> i64 {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    kv.put(put(b"a", b"1", 0)).await.unwrap();
    kv.put(put(b"a", b"2", 0)).await.unwrap();
    kv.put(put(b"b", b"x", 0)).await.unwrap();
    kv.delete_range(DeleteRangeRequest { key: b"b".to_vec().into(), ..Default::default() }).await.unwrap();
    kv.put(put(&[0xff, 0, 1], &[0, 0xfe, 0], 0)).await.unwrap();
    lease.lease_grant(LeaseGrantRequest { ttl: 600, id: LEASE_A }).await.unwrap();
    lease.lease_grant(LeaseGrantRequest { ttl: 300, id: LEASE_B }).await.unwrap();
    kv.put(put(b"svc/1", b"10.0.0.1:80", LEASE_A)).await.unwrap();
    kv.put(put(b"svc/2", b"10.0.0.2:80", LEASE_A)).await.unwrap();
    let ops = [b"d", b"e"].map(|k| RequestOp { request: Some(Request::RequestPut(put(k, b"txn", 0))) });
    kv.txn(TxnRequest { success: ops.to_vec(), ..Default::default() }).await.unwrap();
    let compact = kv.put(put(b"a", b"3", 0)).await.unwrap().into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: compact, physical: true }).await.unwrap();
    kv.put(put(b"a", b"4", 0)).await.unwrap();
    kv.delete_range(DeleteRangeRequest { key: b"d".to_vec().into(), ..Default::default() }).await.unwrap();
    kv.put(put(b"big", &vec![7u8; 20_000], 0)).await.unwrap();
    compact
}

/// Everything a client can read of the state: the revision, every live
/// key, every key as of each retained revision, what is compacted, and the
/// leases with their granted TTLs and keys.
async fn dump(ch: &Channel, compact: i64) -> Vec<String> {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let all =
        |revision| RangeRequest { key: vec![0].into(), range_end: vec![0].into(), revision, ..Default::default() };
    let now = kv.range(all(0)).await.unwrap().into_inner();
    let rev = now.header.unwrap().revision;
    let show = |kvs: &[KeyValue]| {
        kvs.iter()
            .map(|k| {
                format!(
                    "{:?}={:?} c{} m{} v{} l{:x}",
                    k.key,
                    k.value.len(),
                    k.create_revision,
                    k.mod_revision,
                    k.version,
                    k.lease
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = vec![format!("revision {rev}"), format!("now: {}", show(&now.kvs))];
    for r in compact..=rev {
        let at = kv.range(all(r)).await.unwrap().into_inner();
        out.push(format!("at {r}: {}", show(&at.kvs)));
    }
    let below = kv.range(all(compact - 1)).await.unwrap_err();
    out.push(format!("at {}: {:?} {}", compact - 1, below.code(), below.message()));
    let mut ids: Vec<i64> =
        lease.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.iter().map(|l| l.id).collect();
    ids.sort();
    for id in ids {
        let t = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }).await.unwrap().into_inner();
        let mut keys = t.keys.clone();
        keys.sort();
        out.push(format!("lease {id:x} granted {} keys {keys:?}", t.granted_ttl));
    }
    out
}

/// The dump sees what the history made, so equal dumps mean something.
fn assert_meaningful(dump: &[String]) {
    let text = dump.join("\n");
    assert!(text.contains("lease 1234 granted 600 keys") && text.contains("svc/1"), "{text}");
    assert!(text.contains("lease 7fff000000000001 granted 300 keys []"), "{text}");
    assert!(text.contains("OutOfRange etcdserver: mvcc: required revision has been compacted"), "{text}");
    assert!(text.contains(r#"b"\xff\0\x01"=3"#), "{text}");
}

/// HashKV at every revision from the compaction point on, and at 0, and
/// the error below it: what the `etcdctl endpoint hashkv --rev` user sees.
async fn hashes(ch: &Channel, compact: i64, rev: i64) -> Vec<String> {
    let mut m = MaintenanceClient::new(ch.clone());
    let mut out = Vec::new();
    for r in [0, compact - 1].into_iter().chain(compact..=rev + 1) {
        match m.hash_kv(HashKvRequest { revision: r }).await {
            Ok(h) => {
                let h = h.into_inner();
                out.push(format!(
                    "hashkv {r}: {:08x} compacted at {} header rev {}",
                    h.hash,
                    h.compact_revision,
                    h.header.unwrap().revision
                ));
            }
            Err(s) => out.push(format!("hashkv {r}: {:?} {}", s.code(), s.message())),
        }
    }
    out
}

fn assert_same(what: &str, expected: &[String], got: &[String]) {
    assert_meaningful(expected);
    if expected != got {
        let diff: Vec<String> = expected
            .iter()
            .zip(got)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  expected {a}\n  got      {b}"))
            .collect();
        panic!("{what}: the states differ ({} vs {} lines):\n{}", expected.len(), got.len(), diff.join("\n"));
    }
}

/// Restores a snapshot file into a fresh etcd data dir with etcdctl, then
/// starts etcd on it.
async fn etcd_from_snapshot(file: &Path, dir: &Path) -> Etcd {
    let data = dir.join("etcd-restored");
    let peer = format!("http://127.0.0.1:{}", roster_testkit::free_port());
    let out = Etcdctl::new("127.0.0.1:1")
        .run(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            &format!("--data-dir={}", data.display()),
            "--name=testkit",
            &format!("--initial-cluster=testkit={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
        ])
        .await;
    assert!(out.success(), "etcdctl snapshot restore: {}", out.stderr);
    Etcd::start_with_args(&[&format!("--data-dir={}", data.display())]).await
}

async fn roster(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(roster_bin()).args(args).output().await.unwrap()
}

#[tokio::test]
async fn roster_snapshot_restores_into_etcd_with_everything_etcd_keeps() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Roster::start(roster_bin()).await;
    let compact = build_history(&server.channel()).await;
    let expected = dump(&server.channel(), compact).await;

    let file = dir.path().join("roster.snap");
    let ctl = Etcdctl::new(server.endpoint());
    let saved = ctl.run(&["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(saved.success(), "etcdctl snapshot save: {}", saved.stderr);

    // etcd's reader and ours agree on the file.
    let theirs = ctl.run(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]).await;
    assert!(theirs.success(), "etcdctl snapshot status: {}", theirs.stderr);
    let ours = roster(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]).await;
    assert!(ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
    assert_eq!(String::from_utf8_lossy(&ours.stdout).trim(), theirs.stdout.trim());
    let status: serde_json::Value = serde_json::from_str(theirs.stdout.trim()).unwrap();
    assert_eq!(format!("revision {}", status["revision"]), expected[0], "snapshot status names the store revision");

    let etcd = etcd_from_snapshot(&file, dir.path()).await;
    assert_same("etcd restored from roster's snapshot", &expected, &dump(&etcd.channel(), compact).await);
    let rev: i64 = status["revision"].as_i64().unwrap();
    let ours = hashes(&server.channel(), compact, rev).await;
    assert_eq!(
        ours,
        hashes(&etcd.channel(), compact, rev).await,
        "HashKV on roster and on the etcd restored from its snapshot"
    );
    assert!(ours.iter().any(|l| l.contains("required revision has been compacted")), "{ours:?}");
    assert!(ours.iter().any(|l| l.contains("future revision")), "{ours:?}");
    let distinct: std::collections::HashSet<&str> =
        ours.iter().filter(|l| l.contains("compacted at")).map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert!(distinct.len() >= 3, "each revision after the compaction hashes differently: {ours:?}");
}

#[tokio::test]
async fn etcd_snapshot_restores_into_roster_with_everything_etcd_keeps() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start().await;
    let compact = build_history(&etcd.channel()).await;
    let expected = dump(&etcd.channel(), compact).await;

    let file = dir.path().join("etcd.snap");
    let saved = Etcdctl::new(etcd.endpoint()).run(&["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(saved.success(), "etcdctl snapshot save: {}", saved.stderr);
    let data = dir.path().join("roster-data");
    let out = roster(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]).await;
    assert!(out.status.success(), "roster snapshot restore: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("restored") && stdout.contains("roster serve --data-dir"), "{stdout}");

    let server = Roster::start_in(roster_bin(), &data).await;
    assert_same("roster restored from etcd's snapshot", &expected, &dump(&server.channel(), compact).await);
    let rev: i64 = expected[0].trim_start_matches("revision ").parse().unwrap();
    assert_eq!(
        hashes(&etcd.channel(), compact, rev).await,
        hashes(&server.channel(), compact, rev).await,
        "HashKV on etcd and on the roster restored from its snapshot"
    );

    // And back again: roster's own snapshot of the restored data, saved
    // with roster's CLI, restores into roster once more.
    let again = dir.path().join("again.snap");
    let out = roster(&["snapshot", "save", again.to_str().unwrap(), "--endpoints", &server.endpoint()]).await;
    assert!(out.status.success(), "roster snapshot save: {}", String::from_utf8_lossy(&out.stderr));
    let data2 = dir.path().join("roster-data-2");
    let out = roster(&["snapshot", "restore", again.to_str().unwrap(), "--data-dir", data2.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server2 = Roster::start_in(roster_bin(), &data2).await;
    assert_same("roster restored from roster's snapshot", &expected, &dump(&server2.channel(), compact).await);
}

/// A damaged snapshot gets a clear error from `roster snapshot restore`,
/// and nothing is written.
#[tokio::test]
async fn damaged_snapshots_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Roster::start(roster_bin()).await;
    build_history(&server.channel()).await;
    let good = dir.path().join("good.snap");
    let out = roster(&["snapshot", "save", good.to_str().unwrap(), "--endpoints", &server.endpoint()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("good.snap.part").exists(), "no partial file is left");
    let bytes = std::fs::read(&good).unwrap();

    let mut wrong_sha = bytes.clone();
    let n = wrong_sha.len();
    wrong_sha[n - 1] ^= 1;
    let mut flipped_body = bytes.clone();
    flipped_body[4096 * 3 + 100] ^= 0x10;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "snapshot missing hash"),
        ("wrong-sha", wrong_sha, "sha256 mismatch"),
        ("flipped-body", flipped_body, "sha256 mismatch"),
        ("not-bolt", vec![b'x'; 4096 + 32], "not a bbolt database"),
    ];
    for (name, content, expect) in cases {
        let file = dir.path().join(format!("{name}.snap"));
        std::fs::write(&file, content).unwrap();
        let data = dir.path().join(format!("data-{name}"));
        let skip = name == "not-bolt";
        let mut args = vec!["snapshot", "restore", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
        if skip {
            args.push("--skip-hash-check");
        }
        let out = roster(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: restore succeeded");
        assert!(stderr.contains(expect), "{name}: expected {expect:?} in:\n{stderr}");
        assert!(!data.exists(), "{name}: restore left a data dir");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
    }

    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let out = roster(&["snapshot", "restore", good.to_str().unwrap(), "--data-dir", existing.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--backup-dir`: etcd snapshot files appear at start and every interval,
/// atomically, only the newest `--backup-retain` are kept, each one is what
/// `etcdctl snapshot status` reads at the revision its name gives, and the
/// latest one's age shows on `/health` and `/metrics`.
#[tokio::test]
async fn scheduled_backups_are_etcd_snapshots_kept_to_the_retain_count() {
    if require_etcdctl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let data = dir.path().join("data");
    let server = Roster::try_start_in_with_args(
        roster_bin(),
        &data,
        &["--backup-dir", backups.to_str().unwrap(), "--backup-interval", "300ms", "--backup-retain", "2"],
    )
    .await
    .unwrap();
    let mut kv = KvClient::new(server.channel());
    let list = || {
        let mut names: Vec<String> = std::fs::read_dir(&backups)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    // Writes between backups, so later backups hold later revisions.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        kv.put(put(format!("k{i}").as_bytes(), b"v", 0)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let names = list();
        assert!(names.len() <= 3, "retain 2 (a third may be mid-rotation): {names:?}");
        seen.extend(names);
        if seen.len() >= 5 || std::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(seen.len() >= 5, "a backup every 300 ms: {seen:?}");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let names = list();
    assert!(names.len() <= 2 && !names.is_empty(), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("snapshot-") && n.ends_with(".db")), "no partial files: {names:?}");
    let newest = backups.join(names.last().unwrap());
    let st = Etcdctl::new("127.0.0.1:1").run(&["snapshot", "status", newest.to_str().unwrap(), "-w", "json"]).await;
    assert!(st.success(), "etcdctl snapshot status {}: {}", newest.display(), st.stderr);
    let st: serde_json::Value = serde_json::from_str(st.stdout.trim()).unwrap();
    let named: i64 = names.last().unwrap().trim_end_matches(".db").rsplit_once("-rev").unwrap().1.parse().unwrap();
    assert_eq!(st["revision"].as_i64().unwrap(), named, "the name gives the revision inside");

    let (code, body) = crate::support::http_get(&server.http_url(), "/health").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["health"], "true");
    assert!(health["backup"]["age_seconds"].as_u64().unwrap() < 5, "{body}");
    assert!(health["backup"]["path"].as_str().unwrap().contains("snapshot-"), "{body}");
    let (_, metrics) = crate::support::http_get(&server.http_url(), "/metrics").await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roster_backup_age_seconds "))
        .unwrap_or_else(|| panic!("no backup age in\n{metrics}"))
        .parse()
        .unwrap();
    assert!((0.0..5.0).contains(&age), "{age}");
}

/// What users see of auth through etcdctl: logins that work and fail,
/// permissions, users and roles.
async fn auth_transcript(endpoint: &str) -> Vec<String> {
    let ctl = Etcdctl::new(endpoint);
    let mut out = Vec::new();
    for args in [
        &["--user", "alice:apw", "get", "/app/x"][..],
        &["--user", "alice:apw", "put", "/app/y", "1"],
        &["--user", "alice:wrong", "get", "/app/x"],
        &["--user", "root:rootpw", "user", "list"],
        &["--user", "root:rootpw", "user", "get", "alice"],
        &["--user", "root:rootpw", "role", "get", "reader"],
        &["get", "/app/x"],
    ] {
        let r = ctl.run(args).await;
        // etcdctl's retry warnings carry times and client ids; the error
        // line is what a user reads.
        let error: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
        out.push(format!("{args:?} -> {} {} {error:?}", r.status.success(), r.stdout.trim()));
    }
    out
}

/// Users (with their bcrypt password hashes), roles, grants and the auth
/// flag travel in the snapshot, both ways: passwords set on etcd log in to
/// the roster restored from its snapshot, and back.
#[tokio::test]
async fn users_roles_and_passwords_move_with_the_snapshot_both_ways() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start().await;
    let ctl = Etcdctl::new(etcd.endpoint());
    for args in [
        &["put", "/app/x", "hello"][..],
        &["user", "add", "root", "--new-user-password=rootpw"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--new-user-password=apw"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/app/", "--prefix=true"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        let r = ctl.run(args).await;
        assert!(r.success(), "{args:?}: {}", r.stderr);
    }
    let expected = auth_transcript(&etcd.endpoint()).await;
    assert!(expected[0].contains("hello") && expected[1].contains("permission denied"), "{expected:#?}");
    assert!(expected[2].contains("authentication failed"), "{expected:#?}");

    let file = dir.path().join("etcd-auth.snap");
    let r = ctl.run(&["--user", "root:rootpw", "snapshot", "save", file.to_str().unwrap()]).await;
    assert!(r.success(), "{}", r.stderr);
    let data = dir.path().join("roster-data");
    let out = roster(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Roster::start_in(roster_bin(), &data).await;
    assert_eq!(auth_transcript(&server.endpoint()).await, expected, "roster restored from etcd's snapshot");

    // Snapshot needs root on both.
    let back = dir.path().join("roster-auth.snap");
    let denied =
        Etcdctl::new(server.endpoint()).run(&["--user", "alice:apw", "snapshot", "save", back.to_str().unwrap()]).await;
    assert!(!denied.success() && !back.exists(), "alice may not take a snapshot: {}", denied.stderr);
    let r = Etcdctl::new(server.endpoint())
        .run(&["--user", "root:rootpw", "snapshot", "save", back.to_str().unwrap()])
        .await;
    assert!(r.success(), "{}", r.stderr);
    let etcd2 = etcd_from_snapshot(&back, dir.path()).await;
    assert_eq!(auth_transcript(&etcd2.endpoint()).await, expected, "etcd restored from roster's snapshot");
}

/// The maintenance commands an operator types, through etcdctl, on a fresh
/// etcd and a fresh roster given the same writes. Ids, ports, the version
/// string and sizes are what legitimately differ; they are replaced by
/// placeholders, and everything else must be identical.
async fn maintenance_transcript(endpoint: &str, pid_member: &str) -> Vec<String> {
    let ctl = Etcdctl::new(endpoint);
    let mut out = Vec::new();
    let lease = ctl.run(&["lease", "grant", "100"]).await;
    let lease_id = lease.stdout.split_whitespace().nth(1).unwrap_or("none").to_owned();
    let scrub = |s: &str| {
        let mut s = s.replace(endpoint, "<endpoint>").replace(&lease_id, "<lease>").replace(pid_member, "<member>");
        for key in [
            "\"cluster_id\":",
            "\"member_id\":",
            "\"leader\":",
            "\"dbSize\":",
            "\"dbSizeInUse\":",
            "\"raftIndex\":",
            "\"raftAppliedIndex\":",
        ] {
            while let Some(at) = s.find(key) {
                let start = at + key.len();
                let end = s[start..].find([',', '}']).map_or(s.len(), |e| start + e);
                s.replace_range(at..end, &format!("{}<n>", key.trim_end_matches(':').replace('"', "'")));
            }
        }
        s.replace("\"version\":\"3.4.23\"", "\"version\":<v>").replace("\"version\":\"3.4.0\"", "\"version\":<v>")
    };
    out.push(scrub(&format!("lease grant: {}", lease.stdout.trim())));
    for args in [
        &["put", "a", "1"][..],
        &["put", "a", "2"],
        &["put", "b", "3"],
        &["endpoint", "hashkv", "--rev", "3", "-w", "json"],
        &["endpoint", "hashkv", "-w", "json"],
        &["compaction", "3", "--physical"],
        &["endpoint", "hashkv", "--rev", "2"],
        &["endpoint", "hashkv", "--rev", "3", "-w", "json"],
        &["defrag"],
        &["lease", "list"],
        &["lease", "keep-alive", "--once", &lease_id],
        &["alarm", "list"],
        &["alarm", "disarm"],
        &["endpoint", "status", "-w", "json"],
    ] {
        let r = ctl.run(args).await;
        let error: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
        out.push(scrub(&format!("{args:?} -> {} {} {error:?}", r.status.success(), r.stdout.trim())));
    }
    out
}

#[tokio::test]
async fn etcdctl_maintenance_transcript_matches_etcd() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let etcd = Etcd::start().await;
    let server = Roster::start(roster_bin()).await;
    let member_of = |ch: Channel| async move {
        let s = MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner();
        format!("{:x}", s.header.unwrap().member_id)
    };
    let expected = maintenance_transcript(&etcd.endpoint(), &member_of(etcd.channel()).await).await;
    let text = expected.join("\n");
    assert!(text.contains("compacted revision 3") && text.contains("required revision has been compacted"), "{text}");
    assert!(text.contains("keepalived with TTL(100)") && text.contains("Finished defragmenting"), "{text}");
    let got = maintenance_transcript(&server.endpoint(), &member_of(server.channel()).await).await;
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e, "roster's etcdctl output differs from etcd's");
    }
    assert_eq!(got.len(), expected.len());
}

/// A snapshot stream cut off mid-way (the server stopped with SIGSTOP,
/// then killed with SIGKILL) leaves neither the file nor its `.part`.
#[tokio::test]
async fn an_interrupted_snapshot_save_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Roster::start(roster_bin()).await;
    let mut kv = KvClient::new(server.channel());
    // 48 MiB of values: long enough a stream to stop in the middle.
    for i in 0..480 {
        kv.put(put(format!("big/{i:04}").as_bytes(), &vec![i as u8; 100 * 1024], 0)).await.unwrap();
    }
    let file = dir.path().join("cut.snap");
    let part = dir.path().join("cut.snap.part");
    let pid = server.pid().unwrap();
    let mut save = tokio::process::Command::new(roster_bin())
        .args(["snapshot", "save", file.to_str().unwrap(), "--endpoints", &server.endpoint(), "--timeout", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the save never started writing");
        assert!(save.try_wait().unwrap().is_none(), "the save ended before it wrote anything");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
    assert!(stopped.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.kill_9();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), save.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the save of a stream cut mid-way must fail: {stderr}");
    assert!(stderr.contains("snapshot from") && stderr.contains("bytes"), "the error says how far it got: {stderr}");
    assert!(!file.exists(), "no snapshot file from a cut stream");
    assert!(!part.exists(), "no partial file left behind");
}

/// Membership changes are refused with an error that says why and where
/// to go; MoveLeader to the one member is a no-op, to any other id etcd's
/// bad-transferee error.
#[tokio::test]
async fn membership_changes_are_refused_with_the_way_to_an_etcd_cluster() {
    if require_etcdctl().is_none() {
        return;
    }
    let server = Roster::start(roster_bin()).await;
    let ctl = Etcdctl::new(server.endpoint());
    for args in [
        &["member", "add", "m2", "--peer-urls=http://127.0.0.1:2390"][..],
        &["member", "remove", "1234"],
        &["member", "update", "1234", "--peer-urls=http://127.0.0.1:2391"],
    ] {
        let r = ctl.run(args).await;
        assert!(!r.success(), "{args:?} succeeded");
        assert!(
            r.stderr.contains("single-node registry") && r.stderr.contains("etcdctl snapshot restore"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let mut m = MaintenanceClient::new(server.channel());
    let me = m.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
    m.move_leader(MoveLeaderRequest { target_id: me }).await.unwrap();
    let err = m.move_leader(MoveLeaderRequest { target_id: me ^ 1 }).await.unwrap_err();
    assert!(err.message().starts_with("etcdserver: bad leader transferee"), "{}", err.message());
}
