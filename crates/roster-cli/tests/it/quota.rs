//! The space quota, alarms, defragment and auto-compaction, scripted against
//! real etcd and `roster serve` with the same flags. Both servers must write
//! the same transcript: the same errors (code and exact text), the same
//! `etcdctl alarm list` lines (member id aside), and the same recovery.
//!
//! etcd and roster measure size differently (bbolt pages against log and
//! snapshot bytes), so the number of puts that fit differs and is not in the
//! transcript; everything a client can rely on is.

use crate::support::{outcome, roster_bin};
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_api::etcdserverpb::request_op::Request;
use roster_api::etcdserverpb::*;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Small enough to fill in about a hundred puts, on both servers.
const QUOTA: &str = "--quota-backend-bytes=1048576";
const VALUE_BYTES: usize = 10_000;
/// Bound on the fill loop: 1 MiB takes about 100 puts of 10 kB.
const MAX_PUTS: usize = 1000;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest { key: key.as_bytes().to_vec().into(), value: value.into(), ..Default::default() }
}

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// One line per step: what a client saw.
struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    fn note(&mut self, step: &str, what: impl std::fmt::Debug) {
        self.lines.push(format!("{step}: {what:?}"));
    }
}

/// The scenario: fill to NOSPACE, check what is refused and what is not,
/// then recover by delete + compact + defragment + disarm.
async fn nospace_transcript(channel: Channel, endpoint: &str) -> (Vec<String>, bool) {
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut mt = MaintenanceClient::new(channel);
    let ctl = Etcdctl::new(endpoint);
    let mut t = Transcript { lines: vec![] };
    let status = mt.status(StatusRequest {}).await.unwrap().into_inner();
    let member = status.header.unwrap().member_id;
    let alarm_line = format!("memberID:{member} alarm:NOSPACE ");
    // etcdctl prints the member id; the transcript names it generically.
    let generic = |s: &str| s.replace(&member.to_string(), "<member>");

    let get =
        AlarmRequest { action: alarm_request::AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
    t.note("alarm GET before", outcome(mt.alarm(get).await).map(|r| r.alarms));

    let mut filled = 0;
    let refused = loop {
        assert!(filled < MAX_PUTS, "no NOSPACE after {MAX_PUTS} puts of {VALUE_BYTES} bytes");
        match outcome(kv.put(put(&format!("k{filled:04}"), vec![b'x'; VALUE_BYTES])).await) {
            Ok(_) => filled += 1,
            Err(e) => break e,
        }
    };
    assert!(filled >= 10, "only {filled} puts fit under a 1 MiB quota");
    t.note("put over the quota", refused);
    let list = ctl.run(&["alarm", "list"]).await.ok();
    assert_eq!(list.lines(), vec![alarm_line.as_str()], "etcdctl alarm list names this member");
    t.note("etcdctl alarm list", generic(&list.stdout));
    let status = mt.status(StatusRequest {}).await.unwrap().into_inner();
    t.note("status errors", status.errors.iter().map(|e| generic(e)).collect::<Vec<_>>());
    let full = status.db_size;

    t.note("small put", outcome(kv.put(put("a", b"b".to_vec())).await).map(|_| ()));
    let txn_put = TxnRequest { success: vec![op(Request::RequestPut(put("t", b"1".to_vec())))], ..Default::default() };
    t.note("txn with a put", outcome(kv.txn(txn_put).await).map(|_| ()));
    t.note("lease grant", outcome(lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await).map(|_| ()));
    let first = RangeRequest { key: b"k0000".to_vec().into(), ..Default::default() };
    t.note("range", outcome(kv.range(first.clone()).await).map(|r| r.kvs.len()));
    let txn_read = TxnRequest { success: vec![op(Request::RequestRange(first))], ..Default::default() };
    t.note("read-only txn", outcome(kv.txn(txn_read).await).map(|r| r.succeeded));
    let del_none = DeleteRangeRequest { key: b"missing".to_vec().into(), ..Default::default() };
    let txn_del = TxnRequest { success: vec![op(Request::RequestDeleteRange(del_none))], ..Default::default() };
    t.note("delete-only txn", outcome(kv.txn(txn_del).await).map(|r| r.succeeded));

    // etcd may apply the put it refuses (its apply-time quota check answers
    // NOSPACE after writing, its up-front check before): count what is there.
    let count = RangeRequest {
        key: b"k".to_vec().into(),
        range_end: b"l".to_vec().into(),
        count_only: true,
        ..Default::default()
    };
    let present = kv.range(count).await.unwrap().into_inner().count;
    assert!(present == filled as i64 || present == filled as i64 + 1, "{present} keys after {filled} puts");
    let all = DeleteRangeRequest { key: b"k".to_vec().into(), range_end: b"l".to_vec().into(), ..Default::default() };
    let deleted = outcome(kv.delete_range(all).await).map(|r| r.deleted);
    t.note("delete every key", deleted.clone().map(|n| n == present));
    let current =
        kv.range(RangeRequest { key: b"a".to_vec().into(), ..Default::default() }).await.unwrap().into_inner();
    let rev = current.header.unwrap().revision;
    t.note("compact", outcome(kv.compact(CompactionRequest { revision: rev, physical: true }).await).map(|_| ()));
    t.note("put after compaction", outcome(kv.put(put("a", b"b".to_vec())).await).map(|_| ()));

    let defrag = ctl.run(&["defrag"]).await.ok();
    t.note("etcdctl defrag", defrag.stdout.replace(endpoint, "<endpoint>"));
    let status = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.db_size < full / 4, "defragment frees the space: {full} -> {}", status.db_size);
    assert!(status.db_size_in_use <= status.db_size, "in use {} of {}", status.db_size_in_use, status.db_size);
    t.note("status errors after defrag", status.errors.iter().map(|e| generic(e)).collect::<Vec<_>>());
    t.note("put before disarm", outcome(kv.put(put("a", b"b".to_vec())).await).map(|_| ()));

    let disarm = ctl.run(&["alarm", "disarm"]).await.ok();
    t.note("etcdctl alarm disarm", generic(&disarm.stdout));
    t.note("etcdctl alarm list after disarm", ctl.run(&["alarm", "list"]).await.ok().stdout);
    t.note("put after disarm", outcome(kv.put(put("a", b"b".to_vec())).await).map(|_| ()));
    t.note(
        "lease grant after disarm",
        outcome(lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await).map(|_| ()),
    );
    let status = mt.status(StatusRequest {}).await.unwrap().into_inner();
    t.note("status errors after disarm", status.errors);
    (t.lines, present > filled as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_transcript_matches_etcd() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let etcd = Etcd::start_with_args(&[QUOTA]).await;
    let (want, _) = nospace_transcript(etcd.channel(), &etcd.endpoint()).await;
    drop(etcd);
    let dir = tempfile::tempdir().unwrap();
    let roster = Roster::try_start_in_with_args(roster_bin(), dir.path(), &[QUOTA])
        .await
        .unwrap_or_else(|e| panic!("roster serve did not start: {e}"));
    let (got, applied_refused_put) = nospace_transcript(roster.channel(), &roster.endpoint()).await;
    assert!(!applied_refused_put, "roster wrote the put it refused with NOSPACE");
    // Spot checks, so that a transcript both servers got wrong still fails.
    let nospace = format!("put over the quota: (ResourceExhausted, {NOSPACE:?})");
    assert!(want.contains(&nospace), "etcd: {want:#?}");
    assert!(want.contains(&"etcdctl alarm list after disarm: \"\"".to_owned()), "etcd: {want:#?}");
    assert!(want.contains(&"put after disarm: Ok(())".to_owned()), "etcd: {want:#?}");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            g,
            w,
            "step {i} differs\netcd:   {want:#?}\nroster: {got:#?}\nroster log:\n{}",
            roster.log().tail(30)
        );
    }
    assert_eq!(got.len(), want.len());
}

/// The alarm table is durable, as etcd's alarm bucket is: a NOSPACE raised
/// before a crash still caps writes after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut roster = Roster::start_in(roster_bin(), dir.path()).await;
    let mut mt = MaintenanceClient::new(roster.channel());
    let member = mt.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
    let activate = AlarmRequest {
        action: alarm_request::AlarmAction::Activate as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    let raised = mt.alarm(activate).await.unwrap().into_inner().alarms;
    assert_eq!(raised, vec![AlarmMember { member_id: member, alarm: AlarmType::Nospace as i32 }]);
    roster.kill_9();
    roster.restart().await;

    let list = Etcdctl::new(roster.endpoint());
    if require_etcdctl().is_some() {
        let out = list.run(&["alarm", "list"]).await.ok();
        assert_eq!(out.lines(), vec![format!("memberID:{member} alarm:NOSPACE ")]);
    }
    let mut kv = KvClient::new(roster.channel());
    let refused = outcome(kv.put(put("a", b"b".to_vec())).await).map(|_| ());
    assert_eq!(refused, Err((tonic::Code::ResourceExhausted, NOSPACE.to_owned())));
    let mut mt = MaintenanceClient::new(roster.channel());
    let disarm = AlarmRequest {
        action: alarm_request::AlarmAction::Deactivate as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    mt.alarm(disarm).await.unwrap();
    kv.put(put("a", b"b".to_vec())).await.expect("writes again once disarmed");
}

/// Range at revision 1 fails once auto-compaction has run.
async fn wait_compacted(channel: Channel, within: Duration) -> bool {
    let mut kv = KvClient::new(channel);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let old = RangeRequest { key: b"k".to_vec().into(), revision: 2, ..Default::default() };
        if let Err(s) = kv.range(old).await
            && s.message() == "etcdserver: mvcc: required revision has been compacted"
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn write_some(channel: Channel) {
    let mut kv = KvClient::new(channel);
    for i in 0..5 {
        kv.put(put("k", format!("v{i}").into_bytes())).await.unwrap();
    }
}

const PERIODIC: [&str; 2] = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=1s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_runs_on_etcd() {
    if require_etcd().is_none() {
        return;
    }
    let etcd = Etcd::start_with_args(&PERIODIC).await;
    write_some(etcd.channel()).await;
    assert!(wait_compacted(etcd.channel(), Duration::from_secs(10)).await, "etcd never compacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_runs_on_roster() {
    let dir = tempfile::tempdir().unwrap();
    let roster = Roster::try_start_in_with_args(roster_bin(), dir.path(), &PERIODIC)
        .await
        .unwrap_or_else(|e| panic!("roster serve did not start: {e}"));
    write_some(roster.channel()).await;
    assert!(
        wait_compacted(roster.channel(), Duration::from_secs(10)).await,
        "roster never compacted; log:\n{}",
        roster.log().tail(20)
    );
    let mut kv = KvClient::new(roster.channel());
    let now = kv.range(RangeRequest { key: b"k".to_vec().into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(now.kvs[0].value, b"v4".to_vec(), "compaction keeps the live data");
}

#[test]
fn bad_auto_compaction_flags_are_refused_with_a_hint() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(roster_bin())
            .args(["serve", "--in-memory", "--listen", "127.0.0.1:0", "--no-http"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--auto-compaction-mode=bogus", "--auto-compaction-retention=1"]);
    assert!(e.contains("unknown --auto-compaction-mode \"bogus\"; use periodic or revision"), "{e}");
    let e = run(&["--auto-compaction-retention=abc"]);
    assert!(e.contains("invalid --auto-compaction-retention \"abc\""), "{e}");
    let e = run(&["--auto-compaction-mode=revision", "--auto-compaction-retention=1h"]);
    assert!(e.contains("number of revisions"), "{e}");
}
