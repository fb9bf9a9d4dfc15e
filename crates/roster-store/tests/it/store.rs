//! The store's behaviour through its public API, with a manual clock.

use bytes::Bytes;
use roster_store::pb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    *,
};
use roster_store::{EtcdError, ManualClock, Store, StoreConfig, mvccpb::event::EventType};
use std::sync::Arc;
use std::time::Duration;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn store() -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    (Store::in_memory_with_clock(clock.clone()), clock)
}

async fn put(s: &Store, k: &str, v: &str) -> i64 {
    s.put(PutRequest { key: b(k), value: b(v), ..Default::default() }).await.unwrap().header.unwrap().revision
}

async fn put_lease(s: &Store, k: &str, lease: i64) -> Result<PutResponse, EtcdError> {
    s.put(PutRequest { key: b(k), value: b("v"), lease, ..Default::default() }).await
}

async fn get(s: &Store, r: RangeRequest) -> RangeResponse {
    s.range(r).await.unwrap()
}

fn range(k: &str, end: &str) -> RangeRequest {
    RangeRequest { key: b(k), range_end: b(end), ..Default::default() }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp { request: Some(Request::RequestPut(PutRequest { key: b(k), value: b(v), ..Default::default() })) }
}

fn op_range(k: &str) -> RequestOp {
    RequestOp { request: Some(Request::RequestRange(range(k, ""))) }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare { key: b(k), target: target as i32, result: result as i32, target_union: Some(u), range_end: Bytes::new() }
}

// === revisions ===

#[tokio::test]
async fn fresh_store_is_at_revision_1_and_first_write_gets_2() {
    let (s, _) = store();
    assert_eq!(s.revision(), 1);
    assert_eq!(put(&s, "a", "1").await, 2);
    assert_eq!(put(&s, "a", "2").await, 3);
    let r = get(&s, range("a", "")).await;
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(r.header.unwrap().revision, 3);
}

#[tokio::test]
async fn only_real_changes_add_a_revision() {
    let (s, _) = store();
    put(&s, "a", "1").await;
    let d = s.delete_range(DeleteRangeRequest { key: b("zzz"), ..Default::default() }).await.unwrap();
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 2), "deleting nothing adds no revision");
    let g = s.lease_grant(LeaseGrantRequest { ttl: 10, id: 0 }).await.unwrap();
    assert_eq!(s.revision(), 2, "lease grant adds none");
    s.lease_keep_alive(g.id).unwrap();
    assert_eq!(s.revision(), 2, "keepalive adds none");
    let t = s.txn(TxnRequest { compare: vec![], success: vec![op_range("a")], failure: vec![] }).await.unwrap();
    assert_eq!(t.header.unwrap().revision, 2, "read-only txn adds none");
    let t = s
        .txn(TxnRequest { compare: vec![], success: vec![op_put("x", "1"), op_put("y", "1")], failure: vec![] })
        .await
        .unwrap();
    assert_eq!(t.header.unwrap().revision, 3, "a write txn adds exactly one");
    let d = s.delete_range(DeleteRangeRequest { key: b("x"), range_end: b("z"), ..Default::default() }).await.unwrap();
    assert_eq!((d.deleted, d.header.unwrap().revision), (2, 4));
}

// === txn ===

#[tokio::test]
async fn range_inside_txn_sees_earlier_puts() {
    let (s, _) = store();
    let t = s
        .txn(TxnRequest {
            compare: vec![],
            success: vec![op_range("k"), op_put("k", "v"), op_range("k")],
            failure: vec![],
        })
        .await
        .unwrap();
    let ranges: Vec<&RangeResponse> = t
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(Response::ResponseRange(rr)) => Some(rr),
            _ => None,
        })
        .collect();
    assert_eq!(ranges[0].kvs.len(), 0);
    assert_eq!(ranges[0].header.as_ref().unwrap().revision, 1);
    assert_eq!(ranges[1].kvs[0].value, "v");
    assert_eq!(ranges[1].header.as_ref().unwrap().revision, 2);
}

#[tokio::test]
async fn compares_on_missing_keys() {
    let (s, _) = store();
    let run = |c: Compare| {
        let s = s.clone();
        async move { s.txn(TxnRequest { compare: vec![c], success: vec![], failure: vec![] }).await.unwrap().succeeded }
    };
    assert!(
        !run(cmp("nope", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(Bytes::new()))).await,
        "VALUE on a missing key is false"
    );
    assert!(
        run(cmp("nope", CompareTarget::Version, CompareResult::Equal, TargetUnion::Version(0))).await,
        "others compare with 0"
    );
    assert!(run(cmp("nope", CompareTarget::Create, CompareResult::Equal, TargetUnion::CreateRevision(0))).await);
    assert!(run(cmp("nope", CompareTarget::Lease, CompareResult::Equal, TargetUnion::Lease(0))).await);
    put(&s, "a1", "x").await;
    put(&s, "a2", "y").await;
    let mut c = cmp("a", CompareTarget::Value, CompareResult::Greater, TargetUnion::Value(b("w")));
    c.range_end = b("b");
    assert!(run(c.clone()).await, "x and y are both > w");
    c.target_union = Some(TargetUnion::Value(b("x")));
    assert!(!run(c).await, "must hold for every key in the range");
}

#[tokio::test]
async fn failed_txn_checks_change_nothing() {
    let (s, _) = store();
    let bad_lease =
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: b("b"), lease: 99, ..Default::default() })) };
    let err = s
        .txn(TxnRequest { compare: vec![], success: vec![op_put("a", "1"), bad_lease], failure: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err, EtcdError::LeaseNotFound);
    assert_eq!(s.revision(), 1);
    assert!(get(&s, range("a", "")).await.kvs.is_empty());
}

#[tokio::test]
async fn nested_txn_compares_see_the_state_before_the_txn() {
    let (s, _) = store();
    let nested = TxnRequest {
        compare: vec![cmp("k", CompareTarget::Version, CompareResult::Equal, TargetUnion::Version(0))],
        success: vec![op_put("then", "1")],
        failure: vec![op_put("else", "1")],
    };
    let t = s
        .txn(TxnRequest {
            compare: vec![],
            success: vec![op_put("k", "v"), RequestOp { request: Some(Request::RequestTxn(nested)) }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(get(&s, range("then", "")).await.kvs.len(), 1, "k did not exist when the txn began");
    match &t.responses[1].response {
        Some(Response::ResponseTxn(n)) => {
            assert_eq!(n.header, Some(ResponseHeader::default()), "etcd leaves nested headers empty")
        }
        other => panic!("{other:?}"),
    }
}

// === put ===

#[tokio::test]
async fn put_flags_follow_etcd() {
    let (s, _) = store();
    let r = s.put(PutRequest { key: b("a"), ignore_value: true, ..Default::default() }).await;
    assert_eq!(r.unwrap_err(), EtcdError::KeyNotFound);
    assert_eq!(put_lease(&s, "a", 7).await.unwrap_err(), EtcdError::LeaseNotFound);
    let both = PutRequest { key: b("a"), lease: 7, ignore_value: true, ..Default::default() };
    assert_eq!(s.put(both).await.unwrap_err(), EtcdError::LeaseNotFound, "a standalone put checks the lease first");
    let l = s.lease_grant(LeaseGrantRequest { ttl: 10, id: 7 }).await.unwrap();
    put_lease(&s, "a", l.id).await.unwrap();
    let r = s
        .put(PutRequest { key: b("a"), value: b("new"), ignore_lease: true, prev_kv: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(r.prev_kv.unwrap().value, "v");
    let kv = &get(&s, range("a", "")).await.kvs[0];
    assert_eq!((kv.value.clone(), kv.lease), (b("new"), 7), "ignore_lease keeps the lease");
    s.put(PutRequest { key: b("a"), ignore_value: true, ..Default::default() }).await.unwrap();
    let kv = &get(&s, range("a", "")).await.kvs[0];
    assert_eq!((kv.value.clone(), kv.lease), (b("new"), 0), "ignore_value keeps the value, lease cleared");
}

// === range ===

#[tokio::test]
async fn range_options() {
    let (s, _) = store();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "2")] {
        put(&s, k, v).await;
    }
    put(&s, "b", "9").await;
    let all = |f: fn(&mut RangeRequest)| {
        let mut r = range("a", "\0");
        f(&mut r);
        r
    };
    let r = get(&s, all(|r| r.limit = 2)).await;
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".into(), "b".into()], true, 4));
    let r = get(
        &s,
        all(|r| {
            r.sort_target = SortTarget::Value as i32;
            r.sort_order = SortOrder::Descend as i32;
            r.limit = 2;
        }),
    )
    .await;
    assert_eq!(keys(&r), vec!["b", "a"], "sort happens before limit");
    let r = get(&s, all(|r| r.sort_target = SortTarget::Mod as i32)).await;
    assert_eq!(keys(&r), vec!["a", "c", "d", "b"], "a non-key target with no order sorts ascending");
    let r = get(&s, all(|r| r.count_only = true)).await;
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = get(&s, all(|r| r.keys_only = true)).await;
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = get(
        &s,
        all(|r| {
            r.min_mod_revision = 4;
            r.limit = 1;
        }),
    )
    .await;
    assert_eq!((keys(&r), r.count, r.more), (vec!["b".into()], 4, true), "count is taken before filters");
    let r = get(&s, all(|r| r.max_create_revision = 3)).await;
    assert_eq!(keys(&r), vec!["a", "b"]);
    let r = get(&s, all(|r| r.revision = 3)).await;
    assert_eq!((keys(&r), r.header.unwrap().revision), (vec!["a".into(), "b".into()], 6));
    assert_eq!(get(&s, range("c", "a")).await.kvs.len(), 0, "inverted range is empty");
    let prefix = roster_api::range::prefix_end(b"a");
    let r = get(&s, RangeRequest { key: b("a"), range_end: prefix.into(), ..Default::default() }).await;
    assert_eq!(keys(&r), vec!["a"]);
    assert_eq!(s.range(all(|r| r.revision = 7)).await.unwrap_err(), EtcdError::FutureRev);
}

// === compaction ===

#[tokio::test]
async fn compaction_rules() {
    let (s, _) = store();
    for i in 0..5 {
        put(&s, "k", &i.to_string()).await;
    }
    let c = |rev| s.compact(CompactionRequest { revision: rev, physical: false });
    assert_eq!(c(7).await.unwrap_err(), EtcdError::FutureRev);
    c(4).await.unwrap();
    assert_eq!(c(4).await.unwrap_err(), EtcdError::Compacted);
    assert_eq!(c(3).await.unwrap_err(), EtcdError::Compacted);
    let at = |rev| s.range(RangeRequest { key: b("k"), revision: rev, ..Default::default() });
    assert_eq!(at(3).await.unwrap_err(), EtcdError::Compacted);
    assert_eq!(at(4).await.unwrap().kvs[0].value, "2", "the compacted revision itself stays readable");
    assert_eq!(at(6).await.unwrap().kvs[0].value, "4");
}

// === leases ===

#[tokio::test]
async fn lease_expiry_deletes_keys_in_one_revision() {
    let (s, clock) = store();
    let l = s.lease_grant(LeaseGrantRequest { ttl: 1, id: 0 }).await.unwrap();
    assert_eq!(l.ttl, 2, "minimum TTL is 2 s");
    put_lease(&s, "a", l.id).await.unwrap();
    put_lease(&s, "b", l.id).await.unwrap();
    let ttl = s.lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: true }).unwrap();
    assert_eq!((ttl.ttl, ttl.granted_ttl, ttl.keys.len()), (2, 2, 2));
    clock.advance(Duration::from_millis(1500));
    assert_eq!(s.lease_keep_alive(l.id).unwrap().ttl, 2);
    clock.advance(Duration::from_millis(1999));
    assert_eq!(s.expire_leases().await, 0, "the keepalive pushed the deadline out");
    clock.advance(Duration::from_millis(1));
    let before = s.revision();
    assert_eq!(s.expire_leases().await, 1);
    assert_eq!(s.revision(), before + 1, "both keys go in one revision");
    assert_eq!(get(&s, range("a", "c")).await.count, 0);
    assert_eq!(s.lease_keep_alive(l.id).unwrap().ttl, 0, "keepalive on an unknown lease answers TTL 0");
    assert_eq!(s.lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: false }).unwrap().ttl, -1);
    assert_eq!(s.lease_revoke(LeaseRevokeRequest { id: l.id }).await.unwrap_err(), EtcdError::LeaseNotFound);
}

/// 2,500 leases expiring at once: one revision per lease, as etcd makes,
/// but a handful of fsyncs in all, not one per lease.
#[tokio::test]
async fn leases_expiring_together_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let s = on_disk(dir.path(), clock.clone(), u64::MAX);
    let n = 2500;
    for i in 0..n {
        let l = s.lease_grant(LeaseGrantRequest { ttl: 10, id: i + 1 }).await.unwrap();
        put_lease(&s, &format!("e/{i:05}"), l.id).await.unwrap();
    }
    let (before, syncs) = (s.revision(), s.status().log_syncs);
    clock.advance(Duration::from_secs(10));
    assert_eq!(s.expire_leases().await, n as usize);
    assert_eq!(s.revision(), before + n, "one revision per lease");
    let used = s.status().log_syncs - syncs;
    assert!(used <= 10, "{used} fsyncs to revoke {n} leases");
    assert_eq!(get(&s, range("e/", "e0")).await.count, 0);
    assert!(s.lease_leases().unwrap().leases.is_empty());
    drop(s);
    let s = on_disk(dir.path(), clock, u64::MAX);
    assert_eq!(get(&s, range("e/", "e0")).await.count, 0, "the revocations are durable");
    assert_eq!(s.revision(), before + n);
}

/// A keepalive only stores a deadline: renewals while a writer holds the
/// lock neither wait for it nor change what expiry does.
#[tokio::test]
async fn renewed_leases_outlive_their_first_deadline() {
    let (s, clock) = store();
    let a = s.lease_grant(LeaseGrantRequest { ttl: 5, id: 1 }).await.unwrap().id;
    let b = s.lease_grant(LeaseGrantRequest { ttl: 5, id: 2 }).await.unwrap().id;
    put_lease(&s, "a", a).await.unwrap();
    put_lease(&s, "b", b).await.unwrap();
    // At 3, 6, 9 and 12 s: only b's deadline (5 s) passes.
    for expected in [0, 1, 0, 0] {
        clock.advance(Duration::from_secs(3));
        assert_eq!(s.lease_keep_alive(a).unwrap().ttl, 5);
        assert_eq!(s.expire_leases().await, expected);
    }
    assert_eq!(keys(&get(&s, range("a", "c")).await), vec!["a"], "b expired at 5 s; a, renewed every 3 s, lives");
    clock.advance(Duration::from_secs(5));
    assert_eq!(s.expire_leases().await, 1);
    assert_eq!(get(&s, range("a", "c")).await.count, 0);
}

#[tokio::test]
async fn lease_grant_errors() {
    let (s, _) = store();
    s.lease_grant(LeaseGrantRequest { ttl: 5, id: 3 }).await.unwrap();
    assert_eq!(s.lease_grant(LeaseGrantRequest { ttl: 5, id: 3 }).await.unwrap_err(), EtcdError::LeaseExists);
    assert_eq!(
        s.lease_grant(LeaseGrantRequest { ttl: 9_000_000_001, id: 4 }).await.unwrap_err(),
        EtcdError::LeaseTtlTooLarge
    );
    assert_eq!(s.lease_leases().unwrap().leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![3]);
}

#[tokio::test]
async fn moving_a_key_to_another_lease_detaches_it() {
    let (s, _) = store();
    s.lease_grant(LeaseGrantRequest { ttl: 5, id: 1 }).await.unwrap();
    s.lease_grant(LeaseGrantRequest { ttl: 5, id: 2 }).await.unwrap();
    put_lease(&s, "k", 1).await.unwrap();
    put_lease(&s, "k", 2).await.unwrap();
    s.lease_revoke(LeaseRevokeRequest { id: 1 }).await.unwrap();
    assert_eq!(get(&s, range("k", "")).await.kvs.len(), 1, "k now belongs to lease 2");
}

// === watch ===

async fn next(ev: &mut roster_store::WatchEvents) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(5), ev.next()).await.expect("watch response in time").expect("stream open")
}

#[tokio::test]
async fn watch_sends_created_then_one_response_per_revision() {
    let (s, _) = store();
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), range_end: b("l"), prev_kv: true, ..Default::default() }).await;
    let created = next(&mut ev).await;
    assert!(created.created && !created.canceled);
    assert_eq!((created.watch_id, created.header.unwrap().revision), (0, 1), "ids start at 0");
    s.txn(TxnRequest { compare: vec![], success: vec![op_put("k1", "a"), op_put("k2", "b")], failure: vec![] })
        .await
        .unwrap();
    put(&s, "k1", "c").await;
    s.delete_range(DeleteRangeRequest { key: b("k1"), ..Default::default() }).await.unwrap();
    let r = next(&mut ev).await;
    assert_eq!(r.events.len(), 2, "one revision, one response");
    assert!(r.events.iter().all(|e| e.prev_kv.is_none()), "no prev_kv for creations");
    let r = next(&mut ev).await;
    assert_eq!(r.events[0].prev_kv.as_ref().unwrap().value, "a");
    let r = next(&mut ev).await;
    let e = &r.events[0];
    assert_eq!(e.r#type, EventType::Delete as i32);
    let kv = e.kv.as_ref().unwrap();
    assert_eq!((kv.key.clone(), kv.mod_revision, kv.version), (b("k1"), 4, 0));
    ctl.create(WatchCreateRequest { key: b("x"), ..Default::default() }).await;
    assert_eq!(next(&mut ev).await.watch_id, 1);
}

#[tokio::test]
async fn watch_from_the_past_replays_then_goes_live() {
    let (s, _) = store();
    for i in 0..10 {
        put(&s, &format!("k{i}"), "v").await;
    }
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), range_end: b("l"), start_revision: 3, ..Default::default() }).await;
    assert!(next(&mut ev).await.created);
    let r = next(&mut ev).await;
    let revs: Vec<i64> = r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
    assert_eq!(revs, (3..=11).collect::<Vec<_>>(), "catch-up batches many revisions");
    put(&s, "k0", "live").await;
    let r = next(&mut ev).await;
    assert_eq!(r.events[0].kv.as_ref().unwrap().mod_revision, 12);
}

#[tokio::test]
async fn watch_on_compacted_revision_is_canceled_with_compact_revision() {
    let (s, _) = store();
    for i in 0..5 {
        put(&s, "k", &i.to_string()).await;
    }
    s.compact(CompactionRequest { revision: 4, physical: true }).await.unwrap();
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), start_revision: 2, ..Default::default() }).await;
    assert!(next(&mut ev).await.created);
    let r = next(&mut ev).await;
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 4);
}

#[tokio::test]
async fn watch_filters_and_bad_requests() {
    let (s, _) = store();
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("b"), range_end: b("a"), ..Default::default() }).await;
    let r = next(&mut ev).await;
    assert!(r.created && r.canceled);
    assert_eq!((r.watch_id, r.cancel_reason.as_str()), (-1, "mvcc: watcher range is empty"));
    ctl.create(WatchCreateRequest { key: b("k"), watch_id: 7, filters: vec![0], ..Default::default() }).await;
    assert_eq!(next(&mut ev).await.watch_id, 7);
    ctl.create(WatchCreateRequest { key: b("k"), watch_id: 7, ..Default::default() }).await;
    let r = next(&mut ev).await;
    assert_eq!(r.cancel_reason, "mvcc: duplicate watch ID provided on the WatchStream");
    ctl.cancel(12345).await; // unknown: ignored, no response
    put(&s, "k", "1").await; // filtered out (NOPUT)
    s.delete_range(DeleteRangeRequest { key: b("k"), ..Default::default() }).await.unwrap();
    let r = next(&mut ev).await;
    assert_eq!((r.watch_id, r.events.len(), r.events[0].r#type), (7, 1, EventType::Delete as i32));
    ctl.cancel(7).await;
    let r = next(&mut ev).await;
    assert!(r.canceled && r.watch_id == 7);
}

#[tokio::test]
async fn slow_watcher_catches_up_without_loss_or_duplicates() {
    let (s, _) = store();
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), ..Default::default() }).await;
    next(&mut ev).await;
    // Far more revisions than the stream buffers, with nobody reading.
    let n = 2000;
    for i in 0..n {
        put(&s, "k", &i.to_string()).await;
    }
    let mut seen = Vec::new();
    while seen.len() < n {
        let r = next(&mut ev).await;
        seen.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    assert_eq!(seen, (2..2 + n as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_writes_and_watch_creation_lose_nothing() {
    let (s, _) = store();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                put(&s, &format!("k{}", i % 7), "v").await;
            }
        })
    };
    let mut streams = Vec::new();
    for _ in 0..20 {
        let (ctl, mut ev) = s.watch_stream();
        ctl.create(WatchCreateRequest { key: b("k"), range_end: b("l"), start_revision: 2, ..Default::default() })
            .await;
        assert!(next(&mut ev).await.created);
        streams.push((ctl, ev));
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    for (_ctl, mut ev) in streams {
        let mut seen = Vec::new();
        while seen.len() < 500 {
            seen.extend(next(&mut ev).await.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        assert_eq!(seen, (2..502).collect::<Vec<_>>());
    }
}

// === durability ===

fn on_disk(dir: &std::path::Path, clock: Arc<ManualClock>, snapshot_min_bytes: u64) -> Store {
    Store::open(StoreConfig { data_dir: Some(dir.to_owned()), clock, snapshot_min_bytes, ..Default::default() })
        .unwrap()
}

#[tokio::test]
async fn restart_recovers_writes_revisions_and_leases_with_full_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    for snapshot_min in [u64::MAX, 256] {
        let sub = dir.path().join(snapshot_min.to_string());
        let s = on_disk(&sub, clock.clone(), snapshot_min);
        let l = s.lease_grant(LeaseGrantRequest { ttl: 10, id: 5 }).await.unwrap();
        for i in 0..50 {
            put(&s, &format!("k{i:02}"), &i.to_string()).await;
        }
        put_lease(&s, "leased", l.id).await.unwrap();
        s.delete_range(DeleteRangeRequest { key: b("k00"), ..Default::default() }).await.unwrap();
        s.compact(CompactionRequest { revision: 10, physical: true }).await.unwrap();
        clock.advance(Duration::from_secs(8));
        let rev = s.revision();
        drop(s);

        let s = on_disk(&sub, clock.clone(), snapshot_min);
        assert_eq!(s.revision(), rev, "snapshot_min={snapshot_min}");
        let r = get(&s, range("k", "l")).await;
        assert_eq!(r.count, 49);
        assert_eq!(
            s.range(RangeRequest { key: b("k"), revision: 9, ..Default::default() }).await.unwrap_err(),
            EtcdError::Compacted
        );
        assert_eq!(get(&s, RangeRequest { key: b("k05"), revision: 20, ..Default::default() }).await.kvs[0].value, "5");
        let t = s.lease_time_to_live(LeaseTimeToLiveRequest { id: 5, keys: true }).unwrap();
        assert_eq!((t.ttl, t.keys), (10, vec![b("leased")]), "the lease has its full TTL again, keys attached");
        assert_eq!(put(&s, "next", "x").await, rev + 1, "revisions continue");
    }
}

/// Concurrent writers share fsyncs, and every one of them is durable: a
/// serial writer needs one fsync per put, 100 concurrent ones far fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let s = on_disk(dir.path(), clock.clone(), u64::MAX);
    for i in 0..20 {
        put(&s, &format!("serial{i}"), "v").await;
    }
    assert_eq!(s.status().log_syncs, 20, "a lone writer waits for its own fsync");

    let (writers, each) = (100u64, 20u64);
    let total = (writers * each) as i64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    put(&s, &format!("w{w:03}/{i:02}"), "v").await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let syncs = s.status().log_syncs - 20;
    assert!(syncs * 4 <= writers * each, "{syncs} fsyncs for {total} concurrent puts");
    let rev = s.revision();
    assert_eq!(rev, 1 + 20 + total);
    drop(s);
    let s = on_disk(dir.path(), clock, u64::MAX);
    assert_eq!(get(&s, range("w", "x")).await.count, total, "every acknowledged put is on disk");
    assert_eq!(s.revision(), rev);
}

#[tokio::test]
async fn snapshots_bound_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let s = on_disk(dir.path(), clock, 64 << 10);
    let value = "x".repeat(1000);
    for i in 0..2000 {
        put(&s, &format!("k{}", i % 10), &value).await;
        if i % 500 == 499 {
            s.compact(CompactionRequest { revision: s.revision(), physical: true }).await.unwrap();
        }
    }
    let wal = std::fs::metadata(dir.path().join("wal")).unwrap().len();
    let snap = std::fs::metadata(dir.path().join("snapshot")).unwrap().len();
    assert!(wal + snap < 1 << 20, "2 MB written, disk holds {wal} + {snap}");
}

/// Catch-up reads the change index, which a restart rebuilds from the
/// snapshot and the log: a watch from the past after a restart replays
/// every retained revision, deletes included, in order.
#[tokio::test]
async fn watch_from_the_past_after_a_restart_replays_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let s = on_disk(dir.path(), clock.clone(), 1 << 10);
    for i in 0..60 {
        put(&s, &format!("k{:02}", i % 7), &"v".repeat(40)).await;
        if i % 9 == 8 {
            s.delete_range(DeleteRangeRequest { key: b(&format!("k{:02}", i % 7)), ..Default::default() })
                .await
                .unwrap();
        }
    }
    s.compact(CompactionRequest { revision: 10, physical: true }).await.unwrap();
    let last = s.revision();
    drop(s);
    assert!(dir.path().join("snapshot").exists(), "part of the history is in a snapshot");
    let s = on_disk(dir.path(), clock, 1 << 10);
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), range_end: b("l"), start_revision: 10, ..Default::default() }).await;
    assert!(next(&mut ev).await.created);
    let mut revs = Vec::new();
    while revs.last() != Some(&last) {
        revs.extend(next(&mut ev).await.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    assert_eq!(revs, (10..=last).collect::<Vec<_>>(), "every revision from the compaction point, once");
}

/// Users, roles, grants and the flag come back after a restart, from the
/// log and from a snapshot, and auth changes never move the key revision.
#[tokio::test]
async fn auth_tables_survive_restart_from_log_and_snapshot() {
    use roster_store::AuthChange as C;
    use roster_store::auth::ROOT;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let s = on_disk(dir.path(), clock.clone(), u64::MAX);
    let rev = s.revision();
    let perm =
        roster_store::authpb::Permission { perm_type: 2, key: b("/services/hello/"), range_end: b("/services/hello0") };
    for c in [
        C::UserAdd { name: ROOT.into(), password: b("$2b$hash"), no_password: false },
        C::RoleAdd { name: ROOT.into() },
        C::UserGrantRole { user: ROOT.into(), role: ROOT.into() },
        C::RoleAdd { name: "hello".into() },
        C::RoleGrantPermission { name: "hello".into(), perm },
        C::UserAdd { name: "svc".into(), password: Bytes::new(), no_password: true },
        C::UserGrantRole { user: "svc".into(), role: "hello".into() },
        C::Enable,
    ] {
        s.auth_change(c).await.unwrap();
    }
    assert_eq!(s.revision(), rev, "auth changes make no key revision");
    let before = s.auth_tables();
    assert!(before.enabled);
    // etcd 3.4 bumps the auth revision on every change but `auth enable`.
    assert_eq!(before.revision, 8, "a fresh store is at auth revision 1; seven changes bump it, enable does not");
    drop(s);
    let s = on_disk(dir.path(), clock.clone(), u64::MAX);
    assert_eq!(*s.auth_tables(), *before, "replayed from the log");
    s.defragment().await.unwrap();
    s.auth_change(C::UserDelete { name: "svc".into() }).await.unwrap();
    let after = s.auth_tables();
    drop(s);
    let s = on_disk(dir.path(), clock, u64::MAX);
    assert_eq!(*s.auth_tables(), *after, "from the snapshot plus the log");
    assert!(s.auth_tables().user("svc").is_none());
    assert_eq!(s.auth_tables().role("hello").unwrap().key_permission.len(), 1);
}

/// A watcher told of revision R reads at least R: a batch is visible to
/// readers before its events go to watchers, as in etcd. (The console's
/// pages re-read on an event and once saw the revision before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_revision_is_readable_when_its_event_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(StoreConfig { data_dir: Some(dir.path().to_owned()), ..Default::default() }).unwrap();
    let (ctl, mut ev) = s.watch_stream();
    ctl.create(WatchCreateRequest { key: b("k"), range_end: b("l"), ..Default::default() }).await;
    assert!(next(&mut ev).await.created);
    const WRITERS: usize = 16;
    const EACH: usize = 100;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                put(&s, &format!("k{w}-{i}"), "v").await;
            }
        }));
    }
    let mut seen = 0;
    while seen < WRITERS * EACH {
        let r = next(&mut ev).await;
        for e in &r.events {
            let rev = e.kv.as_ref().unwrap().mod_revision;
            let read = get(&s, RangeRequest { count_only: true, ..range("k", "l") }).await.header.unwrap().revision;
            assert!(read >= rev, "an event at revision {rev} arrived while reads were at {read}");
            seen += 1;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
}
