//! Malformed and limit-breaking requests. Each case goes to `roster serve`
//! and to real etcd, in the same order on fresh servers, and both must give
//! the expected answer: the exact gRPC code and message for errors, and the
//! same (normalized) response for the edge cases that succeed. All cases run
//! before the test fails, so one run lists every difference. Afterwards the
//! server must still answer.

use crate::support::{outcome, roster_bin, zero_ids};
use roster_api::etcdserverpb::auth_client::AuthClient;
use roster_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::request_op::Request;
use roster_api::etcdserverpb::watch_client::WatchClient;
use roster_api::etcdserverpb::watch_request::RequestUnion;
use roster_api::etcdserverpb::*;
use roster_testkit::{Etcd, Roster, require_etcd};
use std::time::Duration;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// A value (or key) over etcd's 1.5 MiB request limit, under gRPC's 2 MiB.
const TOO_LARGE: usize = 1_600_000;

#[derive(Debug, Clone)]
enum Call {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    Grant(LeaseGrantRequest),
    Revoke(i64),
    Authenticate,
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Err(Code, &'static str),
    /// Succeeds; both servers' responses must be identical.
    Ok,
}

struct Case {
    name: &'static str,
    call: Call,
    expect: Expect,
}

fn case(name: &'static str, call: Call, expect: Expect) -> Case {
    Case { name, call, expect }
}

fn err(code: Code, msg: &'static str) -> Expect {
    Expect::Err(code, msg)
}

fn put(k: &[u8], v: &[u8]) -> PutRequest {
    PutRequest { key: k.to_vec().into(), value: v.to_vec().into(), ..Default::default() }
}

fn op_put(k: &[u8]) -> RequestOp {
    RequestOp { request: Some(Request::RequestPut(put(k, b"v"))) }
}

fn op_del(k: &[u8], end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.to_vec().into(),
            range_end: end.to_vec().into(),
            ..Default::default()
        })),
    }
}

fn op_range(k: &[u8], rev: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: k.to_vec().into(),
            revision: rev,
            ..Default::default()
        })),
    }
}

fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp { request: Some(Request::RequestTxn(TxnRequest { compare: vec![], success, failure })) }
}

fn txn(success: Vec<RequestOp>) -> Call {
    Call::Txn(TxnRequest { compare: vec![], success, failure: vec![] })
}

const DUP: Expect = Expect::Err(Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
const NO_KEY: Expect = Expect::Err(Code::InvalidArgument, "etcdserver: key is not provided");
const LEASE_NOT_FOUND: Expect = Expect::Err(Code::NotFound, "etcdserver: requested lease not found");
const FUTURE: Expect = Expect::Err(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
const COMPACTED: Expect = Expect::Err(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");

/// The cases, in order. Revisions are those of a fresh server: the setup
/// writes make revisions 2..=6 and compacts at 4.
fn cases() -> Vec<Case> {
    let big = vec![b'x'; TOO_LARGE];
    vec![
        // Setup (also compared).
        case("setup put a", Call::Put(put(b"a", b"1")), Expect::Ok),
        case("setup put b", Call::Put(put(b"b", b"1")), Expect::Ok),
        case("setup put c", Call::Put(put(b"c", b"1")), Expect::Ok),
        case("setup put a again", Call::Put(put(b"a", b"2")), Expect::Ok),
        case("setup put b again", Call::Put(put(b"b", b"2")), Expect::Ok),
        case("setup compact 4", Call::Compact(4), Expect::Ok),
        case("setup grant lease 0x77", Call::Grant(LeaseGrantRequest { ttl: 600, id: 0x77 }), Expect::Ok),
        // Size limits.
        case(
            "1.6 MB value",
            Call::Put(put(b"big", &big)),
            err(Code::InvalidArgument, "etcdserver: request is too large"),
        ),
        case("1.6 MB key", Call::Put(put(&big, b"v")), err(Code::InvalidArgument, "etcdserver: request is too large")),
        // Reads do not go through etcd's raft request limit: answered, empty.
        case(
            "1.6 MB key in range",
            Call::Range(RangeRequest { key: big.clone().into(), ..Default::default() }),
            Expect::Ok,
        ),
        case(
            "1.6 MB put in txn",
            txn(vec![RequestOp { request: Some(Request::RequestPut(put(b"big", &big))) }]),
            err(Code::InvalidArgument, "etcdserver: request is too large"),
        ),
        // Empty keys.
        case("range with empty key", Call::Range(RangeRequest::default()), NO_KEY),
        case("put with empty key", Call::Put(put(b"", b"v")), NO_KEY),
        case("delete with empty key", Call::Delete(DeleteRangeRequest::default()), NO_KEY),
        case(
            "txn compare with empty key",
            Call::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: Default::default(),
                    target_union: Some(TargetUnion::Version(0)),
                    range_end: Default::default(),
                }],
                success: vec![],
                failure: vec![],
            }),
            NO_KEY,
        ),
        case("txn put with empty key", txn(vec![op_put(b"")]), NO_KEY),
        case("nested txn delete with empty key", txn(vec![op_txn(vec![op_del(b"", b"")], vec![])]), NO_KEY),
        // Inverted and odd ranges.
        case(
            "inverted range",
            Call::Range(RangeRequest {
                key: b"c".to_vec().into(),
                range_end: b"a".to_vec().into(),
                ..Default::default()
            }),
            Expect::Ok,
        ),
        case(
            "inverted delete",
            Call::Delete(DeleteRangeRequest {
                key: b"c".to_vec().into(),
                range_end: b"a".to_vec().into(),
                prev_kv: true,
            }),
            Expect::Ok,
        ),
        case(
            "range from \\0 to \\0",
            Call::Range(RangeRequest { key: vec![0].into(), range_end: vec![0].into(), ..Default::default() }),
            Expect::Ok,
        ),
        case(
            "delete of a missing key",
            Call::Delete(DeleteRangeRequest { key: b"nope".to_vec().into(), ..Default::default() }),
            Expect::Ok,
        ),
        // Leases.
        case("put with unknown lease", Call::Put(PutRequest { lease: 0x4242, ..put(b"k", b"v") }), LEASE_NOT_FOUND),
        case(
            "txn put with unknown lease",
            txn(vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest { lease: 0x4242, ..put(b"k", b"v") })),
            }]),
            LEASE_NOT_FOUND,
        ),
        case("revoke unknown lease", Call::Revoke(0x4242), LEASE_NOT_FOUND),
        case(
            "grant existing lease id",
            Call::Grant(LeaseGrantRequest { ttl: 600, id: 0x77 }),
            err(Code::FailedPrecondition, "etcdserver: lease already exists"),
        ),
        case(
            "grant too large TTL",
            Call::Grant(LeaseGrantRequest { ttl: 9_000_000_001, id: 0x78 }),
            err(Code::OutOfRange, "etcdserver: too large lease TTL"),
        ),
        case("grant TTL 1 is raised to the minimum", Call::Grant(LeaseGrantRequest { ttl: 1, id: 0x79 }), Expect::Ok),
        case("revoke it", Call::Revoke(0x79), Expect::Ok),
        // Txn limits.
        case(
            "129-op txn",
            txn((0..129).map(|i| op_put(format!("k{i}").as_bytes())).collect()),
            err(Code::InvalidArgument, "etcdserver: too many operations in txn request"),
        ),
        case("128-op txn", txn((0..128).map(|i| op_range(format!("k{i}").as_bytes(), 0)).collect()), Expect::Ok),
        // Duplicate keys in a txn.
        case("two puts to one key", txn(vec![op_put(b"d"), op_put(b"d")]), DUP),
        case("put inside a deleted range", txn(vec![op_del(b"a", b"z"), op_put(b"d")]), DUP),
        case("put then delete of the key", txn(vec![op_put(b"d"), op_del(b"d", b"")]), DUP),
        case("overlapping deletes are fine", txn(vec![op_del(b"x1", b"x3"), op_del(b"x2", b"x4")]), Expect::Ok),
        case(
            "put in both branches of a nested txn is fine",
            txn(vec![op_txn(vec![op_put(b"d")], vec![op_put(b"d")])]),
            Expect::Ok,
        ),
        case("put beside a nested put", txn(vec![op_put(b"d"), op_txn(vec![op_put(b"d")], vec![])]), DUP),
        // ignore_value / ignore_lease.
        case(
            "ignore_value with a value",
            Call::Put(PutRequest { ignore_value: true, ..put(b"a", b"v") }),
            err(Code::InvalidArgument, "etcdserver: value is provided"),
        ),
        case(
            "ignore_lease with a lease",
            Call::Put(PutRequest { ignore_lease: true, lease: 0x77, ..put(b"a", b"") }),
            err(Code::InvalidArgument, "etcdserver: lease is provided"),
        ),
        case(
            "ignore_value on a missing key",
            Call::Put(PutRequest { ignore_value: true, ..put(b"missing", b"") }),
            err(Code::InvalidArgument, "etcdserver: key not found"),
        ),
        case(
            "ignore_lease on a missing key",
            Call::Put(PutRequest { ignore_lease: true, ..put(b"missing", b"") }),
            err(Code::InvalidArgument, "etcdserver: key not found"),
        ),
        case(
            "ignore_value with an unknown lease on a missing key: the lease is checked first",
            Call::Put(PutRequest { ignore_value: true, lease: 0x4242, ..put(b"missing", b"") }),
            LEASE_NOT_FOUND,
        ),
        case(
            "ignore_value on an existing key",
            Call::Put(PutRequest { ignore_value: true, prev_kv: true, ..put(b"a", b"") }),
            Expect::Ok,
        ),
        // Revisions.
        case(
            "range at a future revision",
            Call::Range(RangeRequest { key: b"a".to_vec().into(), revision: 1000, ..Default::default() }),
            FUTURE,
        ),
        case(
            "range at a compacted revision",
            Call::Range(RangeRequest { key: b"a".to_vec().into(), revision: 3, ..Default::default() }),
            COMPACTED,
        ),
        case(
            "range at the compaction revision",
            Call::Range(RangeRequest { key: b"a".to_vec().into(), revision: 4, ..Default::default() }),
            Expect::Ok,
        ),
        case("txn range at a future revision", txn(vec![op_range(b"a", 1000)]), FUTURE),
        case("txn range at a compacted revision", txn(vec![op_range(b"a", 2)]), COMPACTED),
        case("compact at a future revision", Call::Compact(1000), FUTURE),
        case("compact at the compacted revision", Call::Compact(4), COMPACTED),
        case("compact below the compacted revision", Call::Compact(2), COMPACTED),
        // Auth is not enabled.
        case(
            "authenticate",
            Call::Authenticate,
            err(Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
        ),
    ]
}

/// Run last: a server that wrongly accepts one of these writes, and so
/// drifts from etcd's revisions, does not make every later case differ too.
fn late_cases() -> Vec<Case> {
    vec![
        case(
            "delete in a nested txn after a sibling nested txn put the key",
            txn(vec![op_txn(vec![op_put(b"d")], vec![]), op_txn(vec![op_del(b"d", b"")], vec![])]),
            Expect::Ok,
        ),
        case(
            "put in a nested txn after a sibling nested txn deleted the key",
            txn(vec![op_txn(vec![op_del(b"d", b"")], vec![]), op_txn(vec![op_put(b"d")], vec![])]),
            DUP,
        ),
    ]
}

async fn call(ch: &Channel, c: &Call) -> Result<String, (Code, String)> {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let fut = async {
        macro_rules! norm {
            ($r:expr) => {
                outcome($r).map(|mut v| {
                    zero_ids(&mut v.header);
                    format!("{v:?}")
                })
            };
        }
        match c.clone() {
            Call::Put(r) => norm!(kv.put(r).await),
            Call::Range(r) => norm!(kv.range(r).await),
            Call::Delete(r) => norm!(kv.delete_range(r).await),
            Call::Txn(r) => norm!(kv.txn(r).await),
            Call::Compact(rev) => norm!(kv.compact(CompactionRequest { revision: rev, physical: true }).await),
            Call::Grant(r) => norm!(lease.lease_grant(r).await),
            Call::Revoke(id) => norm!(lease.lease_revoke(LeaseRevokeRequest { id }).await),
            Call::Authenticate => norm!(
                AuthClient::new(ch.clone())
                    .authenticate(AuthenticateRequest { name: "root".into(), password: "x".into() })
                    .await
            ),
        }
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| Err((Code::DeadlineExceeded, "no answer within 15 s".into())))
}

fn short(r: &Result<String, (Code, String)>) -> String {
    let s = format!("{r:?}");
    if s.len() > 600 { format!("{}… ({} chars)", &s[..600], s.len()) } else { s }
}

/// `raft_term` is compared by the differential test; here only semantics.
fn without_raft_term(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("raft_term: ") {
        out.push_str(&rest[..i]);
        rest = &rest[i + "raft_term: ".len()..];
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        out.push_str("raft_term: _");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_codes_and_messages() {
    let etcd = match require_etcd() {
        Some(_) => Some(Etcd::start().await),
        None => None,
    };
    let roster = Roster::start(roster_bin()).await;
    let mut problems = Vec::new();
    check_cases(cases(), etcd.as_ref(), &roster, &mut problems).await;
    // The watch cases run on streams of their own.
    for (name, e, r) in watch_cases(etcd.as_ref().map(Etcd::channel), roster.channel()).await {
        if let Some(e) = e
            && e != r
        {
            problems.push(format!("{name}:\n    etcd   {e}\n    roster {r}"));
        }
    }
    check_cases(late_cases(), etcd.as_ref(), &roster, &mut problems).await;
    // Over gRPC's receive limit: grpc-go's code and words, as etcd answers.
    let huge = PutRequest { key: b"huge".to_vec().into(), value: vec![b'x'; 3_000_000].into(), ..Default::default() };
    let limit = roster_api::MAX_REQUEST_BYTES + roster_api::GRPC_OVERHEAD_BYTES;
    let want = Err((
        Code::ResourceExhausted,
        format!("grpc: received message larger than max ({} vs. {limit})", prost::Message::encoded_len(&huge)),
    ));
    let mut targets = vec![("roster", roster.channel())];
    targets.extend(etcd.as_ref().map(|e| ("etcd", e.channel())));
    for (name, ch) in targets {
        let got = outcome(KvClient::new(ch).put(huge.clone()).await).map(drop);
        if got != want {
            problems.push(format!("{name}: put over the gRPC limit:\n    want {want:?}\n    got  {got:?}"));
        }
    }
    check_cancel_of_unknown_watch_is_ignored(roster.channel()).await;
    // After all of it, the server still answers.
    let mut kv = KvClient::new(roster.channel());
    let still = tokio::time::timeout(
        Duration::from_secs(5),
        kv.range(RangeRequest { key: b"a".to_vec().into(), ..Default::default() }),
    )
    .await;
    assert!(matches!(still, Ok(Ok(_))), "roster stopped answering: {still:?}\nlog:\n{}", roster.log().tail(30));
    assert!(
        problems.is_empty(),
        "{} differences from etcd:\n{}\nroster log (tail):\n{}",
        problems.len(),
        problems.join("\n"),
        roster.log().tail(20)
    );
}

async fn check_cases(cases: Vec<Case>, etcd: Option<&Etcd>, roster: &Roster, problems: &mut Vec<String>) {
    for c in cases {
        let r = call(&roster.channel(), &c.call).await;
        let e = match &etcd {
            Some(etcd) => Some(call(&etcd.channel(), &c.call).await),
            None => None,
        };
        if let (Some(e), Expect::Err(code, msg)) = (&e, &c.expect) {
            // The expectation itself is checked against etcd.
            assert_eq!(e, &Err((*code, msg.to_string())), "expectation for {:?} is wrong for etcd", c.name);
        }
        match &c.expect {
            Expect::Err(code, msg) => {
                if r != Err((*code, msg.to_string())) {
                    problems.push(format!(
                        "{}:\n    request {}\n    want {code:?} {msg:?}\n    roster {}",
                        c.name,
                        short(&Ok(format!("{:?}", c.call))),
                        short(&r)
                    ));
                }
            }
            Expect::Ok => {
                if let Some(e) = &e {
                    assert!(e.is_ok(), "{:?} fails on etcd: {e:?}", c.name);
                    let same = match (e, &r) {
                        (Ok(a), Ok(b)) => without_raft_term(a) == without_raft_term(b),
                        _ => false,
                    };
                    if !same {
                        problems.push(format!("{}:\n    etcd   {}\n    roster {}", c.name, short(e), short(&r)));
                    }
                } else if r.is_err() {
                    problems.push(format!("{}: roster {}", c.name, short(&r)));
                }
            }
        }
    }
}

/// Watch edge cases, as a transcript per server: cancel of an unknown watch
/// id is ignored and the stream stays usable; a compacted start revision is
/// created then cancelled with `compact_revision`.
async fn watch_cases(etcd: Option<Channel>, roster: Channel) -> Vec<(&'static str, Option<String>, String)> {
    let mut out = Vec::new();
    let e = match &etcd {
        Some(ch) => Some(watch_transcript(ch.clone()).await),
        None => None,
    };
    let r = watch_transcript(roster).await;
    out.push(("watch: cancel of an unknown id, then create on the same stream; compacted start", e, r));
    out
}

async fn watch_transcript(ch: Channel) -> String {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (resp_tx, mut resp_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut client = WatchClient::new(ch);
        match client.watch(UnboundedReceiverStream::new(rx)).await {
            Ok(s) => {
                let mut s = s.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(m)) => {
                            let _ = resp_tx.send(Ok(m));
                        }
                        Ok(None) => break,
                        Err(st) => {
                            let _ = resp_tx.send(Err((st.code(), st.message().to_owned())));
                            break;
                        }
                    }
                }
            }
            Err(st) => {
                let _ = resp_tx.send(Err((st.code(), st.message().to_owned())));
            }
        }
    });
    let mut transcript = Vec::new();
    let mut next = async |quiet: Duration| -> String {
        match tokio::time::timeout(quiet, resp_rx.recv()).await {
            Ok(Some(Ok(mut m))) => {
                zero_ids(&mut m.header);
                if let Some(h) = &mut m.header {
                    h.raft_term = 0;
                }
                format!("{m:?}")
            }
            Ok(Some(Err(e))) => format!("stream error {e:?}"),
            Ok(None) => "stream closed".into(),
            Err(_) => "(nothing)".into(),
        }
    };
    let send = |r: RequestUnion| {
        let _ = tx.send(WatchRequest { request_union: Some(r) });
    };
    send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 999 }));
    transcript.push(format!("cancel 999 -> {}", next(Duration::from_millis(500)).await));
    send(RequestUnion::CreateRequest(WatchCreateRequest { key: b"a".to_vec().into(), ..Default::default() }));
    transcript.push(format!("create a -> {}", next(Duration::from_secs(5)).await));
    send(RequestUnion::CreateRequest(WatchCreateRequest {
        key: b"a".to_vec().into(),
        start_revision: 2,
        ..Default::default()
    }));
    transcript.push(format!("create a from compacted rev 2 -> {}", next(Duration::from_secs(5)).await));
    transcript.push(format!("  then -> {}", next(Duration::from_secs(5)).await));
    send(RequestUnion::CreateRequest(WatchCreateRequest {
        key: b"a".to_vec().into(),
        start_revision: 4,
        ..Default::default()
    }));
    transcript.push(format!("create a from rev 4 (the compaction revision) -> {}", next(Duration::from_secs(5)).await));
    transcript.push(format!("  then -> {}", next(Duration::from_secs(5)).await));
    transcript.push(format!("  then -> {}", next(Duration::from_millis(500)).await));
    task.abort();
    transcript.join("\n        ")
}

/// Without etcd to compare with, still: a cancel of an unknown watch id gets
/// no answer and the stream stays usable.
async fn check_cancel_of_unknown_watch_is_ignored(ch: Channel) {
    let transcript = watch_transcript(ch).await;
    let lines: Vec<&str> = transcript.lines().map(str::trim).collect();
    assert_eq!(lines[0], "cancel 999 -> (nothing)", "{transcript}");
    assert!(lines[1].starts_with("create a -> WatchResponse {") && lines[1].contains("created: true"), "{transcript}");
}
