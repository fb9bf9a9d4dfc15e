//! Differential tests: one seeded random operation sequence goes to real etcd
//! (side A) and to a second server (side B), op by op, and every response
//! must be identical field by field. Errors are compared by gRPC code and
//! exact message.
//!
//! `etcd_vs_etcd_is_identical` runs the harness with etcd on both sides: it
//! must pass trivially, and it proves the harness compares only what is
//! deterministic. `roster_matches_etcd` puts `roster serve` on side B.
//!
//! Knobs: `ROSTER_DIFF_SEED=1,2,3` replaces the seeds (every run prints its
//! seeds), `ROSTER_DIFF_OPS=N` the sequence length, `ROSTER_DIFF_VERBOSE=1`
//! prints every op.
//!
//! What is normalized, and nothing else:
//! - `header.cluster_id` and `header.member_id` are zeroed (they are random
//!   per cluster).
//! - For a sorted range whose sort target is not the key, the order of kvs
//!   that tie on the sort target: etcd sorts with Go's `sort.Sort`, which is
//!   not stable, so the order within a tie is unspecified. Both sides have
//!   each tie group sorted by key before comparing; when `limit` cut the
//!   result (`more`), which members of the last tie group made it in is
//!   just as unspecified, so that group is compared by size and sort value
//!   only.
//! - `TimeToLive.TTL` (remaining seconds) may differ by 2 s, as the two sides
//!   run on their own clocks; the key list is compared as a set.
//! - `LeaseLeases` is compared as a set.
//! - `header.raft_term` differences do not stop a sequence (so that deeper
//!   differences still show), but fail the test at its end.
//!
//! Watches: streams are opened at the start and at random points (past,
//! current and future start revisions, prefixes, filters, prev_kv) and
//! cancelled at random points. Each watch's responses (how events are
//! grouped into responses included) are compared after the sequence, when
//! every watch has been drained up to the final revision. To keep etcd
//! itself deterministic, the harness waits before it writes on until a new
//! watch has caught up and before cancels and compactions until in-flight
//! events are delivered; a watch on every key (the "oracle", on etcd) tells
//! it how many events each watch is owed.

use crate::support::{outcome, roster_bin, zero_ids};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use roster_api::etcdserverpb::compare::{CompareTarget, TargetUnion};
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::lease_client::LeaseClient;
use roster_api::etcdserverpb::range_request::SortTarget;
use roster_api::etcdserverpb::request_op::Request;
use roster_api::etcdserverpb::response_op::Response;
use roster_api::etcdserverpb::watch_client::WatchClient;
use roster_api::etcdserverpb::watch_create_request::FilterType;
use roster_api::etcdserverpb::watch_request::RequestUnion;
use roster_api::etcdserverpb::*;
use roster_api::mvccpb::KeyValue;
use roster_api::mvccpb::event::EventType;
use roster_api::range::{KeyRange, prefix_end};
use roster_testkit::{Etcd, Roster, require_etcd};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

/// Keys collide on purpose: prefixes of each other, 0xff bytes, a NUL.
const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"b\xff", b"c", b"c\0", b"d", b"foo/x", b"foo/y", b"\xff"];
/// Few values, so VALUE compares and VALUE sorts hit ties often.
const VALUES: &[&[u8]] = &[b"", b"v", b"w", b"x1", b"\x00\xff", b"zz"];
/// Explicit lease IDs, so both sides hand out the same IDs.
const LEASE_IDS: &[i64] = &[0x1001, 0x1002, 0x1003, 0x1004, 0x1005, 0x7fff_0000_0000_0001];
/// Watch streams per side; watch ids are per stream.
const STREAMS: usize = 3;
/// How long a barrier waits for in-flight watch events.
const BARRIER: Duration = Duration::from_secs(5);
/// Time for etcd's unsynced-watcher loop (every 100 ms) to catch a new
/// watch up when it is owed no events, so we cannot see it finish.
const SYNC_TICK: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_vs_etcd_is_identical() {
    if require_etcd().is_none() {
        return;
    }
    for seed in seeds() {
        let a = Etcd::start().await;
        let b = Etcd::start().await;
        run_seed(seed, "etcd", a.channel(), "etcd#2", b.channel()).await;
    }
}

/// The harness is live: one write planted on side B only must be reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_reports_a_planted_difference() {
    if require_etcd().is_none() {
        return;
    }
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let mut kv = KvClient::new(b.channel());
    kv.put(PutRequest { key: b"a".to_vec().into(), value: b"planted".to_vec().into(), ..Default::default() })
        .await
        .unwrap();
    let (ca, cb) = (a.channel(), b.channel());
    let res = tokio::spawn(async move { run_seed(1, "etcd", ca, "etcd+planted", cb).await }).await;
    let err = res.expect_err("a planted difference went unnoticed");
    let msg = err.into_panic();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("DIFFERENTIAL MISMATCH"), "unexpected failure: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_matches_etcd() {
    if require_etcd().is_none() {
        return;
    }
    for seed in seeds() {
        let a = Etcd::start().await;
        let b = Roster::start(roster_bin()).await;
        let outcome = tokio::spawn({
            let (ca, cb) = (a.channel(), b.channel());
            async move { run_seed(seed, "etcd", ca, "roster", cb).await }
        })
        .await;
        if let Err(e) = outcome {
            eprintln!("roster log (tail):\n{}", b.log().tail(40));
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("ROSTER_DIFF_SEED") {
        return s.split(',').map(|x| x.trim().parse().expect("ROSTER_DIFF_SEED: comma-separated u64s")).collect();
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // Two fixed seeds (stable coverage) and two fresh ones (new coverage).
    vec![1, 2, t % 1_000_000_007, (t / 7) % 1_000_000_009]
}

fn ops_per_seed() -> usize {
    std::env::var("ROSTER_DIFF_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(300)
}

fn verbose() -> bool {
    std::env::var_os("ROSTER_DIFF_VERBOSE").is_some()
}

// ---------------------------------------------------------------------------
// Bidirectional streams, read by a task into a shared log.

/// A bidi gRPC stream whose responses a task appends to `got`.
struct Bidi<Req, Resp> {
    tx: mpsc::UnboundedSender<Req>,
    got: Arc<Mutex<Vec<Resp>>>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<Req, Resp> Drop for Bidi<Req, Resp> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<Req, Resp: Clone> Bidi<Req, Resp> {
    fn snapshot(&self) -> Vec<Resp> {
        self.got.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
    fn send(&self, r: Req) {
        // A closed stream shows up as missing responses.
        let _ = self.tx.send(r);
    }
    fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }
}

macro_rules! open_bidi {
    ($client:expr, $method:ident) => {{
        let (tx, rx) = mpsc::unbounded_channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let (g, e) = (got.clone(), error.clone());
        let mut client = $client;
        // The call itself waits for response headers, which a server may
        // send only with its first message: run it in the task.
        let task = tokio::spawn(async move {
            match client.$method(UnboundedReceiverStream::new(rx)).await {
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    loop {
                        match s.message().await {
                            Ok(Some(m)) => g.lock().unwrap().push(m),
                            Ok(None) => {
                                *e.lock().unwrap() = Some("stream ended".into());
                                break;
                            }
                            Err(st) => {
                                *e.lock().unwrap() = Some(format!("{:?}: {}", st.code(), st.message()));
                                break;
                            }
                        }
                    }
                }
                Err(st) => *e.lock().unwrap() = Some(format!("{:?}: {}", st.code(), st.message())),
            }
        });
        Bidi { tx, got, error, task }
    }};
}

/// One server under test.
struct Side {
    name: &'static str,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watches: Vec<Bidi<WatchRequest, WatchResponse>>,
    keepalive: Bidi<LeaseKeepAliveRequest, LeaseKeepAliveResponse>,
}

impl Side {
    fn new(name: &'static str, ch: Channel) -> Side {
        Side {
            name,
            kv: KvClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            lease: LeaseClient::new(ch.clone()),
            watches: (0..STREAMS).map(|_| open_bidi!(WatchClient::new(ch.clone()), watch)).collect(),
            keepalive: open_bidi!(LeaseClient::new(ch.clone()), lease_keep_alive),
        }
    }
}

// ---------------------------------------------------------------------------
// Operations and replies.

#[derive(Debug, Clone)]
enum Op {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
    TimeToLive(LeaseTimeToLiveRequest),
    Leases,
    KeepAlive(LeaseKeepAliveRequest),
    Watch { stream: usize, req: WatchCreateRequest },
    Cancel { stream: usize, watch_id: i64 },
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    Grant(LeaseGrantResponse),
    Revoke(LeaseRevokeResponse),
    TimeToLive(LeaseTimeToLiveResponse),
    Leases(LeaseLeasesResponse),
    KeepAlive(LeaseKeepAliveResponse),
    Watch(WatchResponse),
    Error {
        code: tonic::Code,
        message: String,
    },
    /// No answer in time (or a stream broke).
    NoAnswer(String),
}

impl Reply {
    fn from<T>(r: Result<tonic::Response<T>, tonic::Status>, wrap: fn(T) -> Reply) -> Reply {
        match outcome(r) {
            Ok(v) => wrap(v),
            Err((code, message)) => Reply::Error { code, message },
        }
    }

    /// Calls `f` on every response header, nested txn responses included.
    fn headers(&mut self, f: &mut dyn FnMut(&mut Option<ResponseHeader>)) {
        match self {
            Reply::Range(r) => f(&mut r.header),
            Reply::Put(r) => f(&mut r.header),
            Reply::Delete(r) => f(&mut r.header),
            Reply::Txn(r) => txn_headers(r, f),
            Reply::Compact(r) => f(&mut r.header),
            Reply::Grant(r) => f(&mut r.header),
            Reply::Revoke(r) => f(&mut r.header),
            Reply::TimeToLive(r) => f(&mut r.header),
            Reply::Leases(r) => f(&mut r.header),
            Reply::KeepAlive(r) => f(&mut r.header),
            Reply::Watch(r) => f(&mut r.header),
            Reply::Error { .. } | Reply::NoAnswer(_) => {}
        }
    }

    fn revision(&self) -> i64 {
        let mut rev = 0;
        self.clone().headers(&mut |h| rev = rev.max(h.as_ref().map_or(0, |h| h.revision)));
        rev
    }
}

fn txn_headers(t: &mut TxnResponse, f: &mut dyn FnMut(&mut Option<ResponseHeader>)) {
    f(&mut t.header);
    for r in &mut t.responses {
        match &mut r.response {
            Some(Response::ResponseRange(r)) => f(&mut r.header),
            Some(Response::ResponsePut(r)) => f(&mut r.header),
            Some(Response::ResponseDeleteRange(r)) => f(&mut r.header),
            Some(Response::ResponseTxn(t)) => txn_headers(t, f),
            None => {}
        }
    }
}

/// Zeroes the per-cluster ids and applies the order normalizations that the
/// module doc lists.
fn normalize(op: &Op, reply: &mut Reply) {
    reply.headers(&mut |h| zero_ids(h));
    match (op, reply) {
        (Op::Range(req), Reply::Range(resp)) => normalize_range(req, resp),
        (Op::Txn(req), Reply::Txn(resp)) => normalize_txn(req, resp),
        (Op::Leases, Reply::Leases(resp)) => resp.leases.sort_by_key(|l| l.id),
        (Op::TimeToLive(_), Reply::TimeToLive(resp)) => resp.keys.sort(),
        _ => {}
    }
}

fn normalize_txn(req: &TxnRequest, resp: &mut TxnResponse) {
    let branch = if resp.succeeded { &req.success } else { &req.failure };
    for (op, r) in branch.iter().zip(resp.responses.iter_mut()) {
        match (&op.request, &mut r.response) {
            (Some(Request::RequestRange(q)), Some(Response::ResponseRange(r))) => normalize_range(q, r),
            (Some(Request::RequestTxn(q)), Some(Response::ResponseTxn(r))) => normalize_txn(q, r),
            _ => {}
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone)]
enum SortValue {
    Num(i64),
    Bytes(Vec<u8>),
}

fn sort_value(target: i32, kv: &KeyValue) -> SortValue {
    match SortTarget::try_from(target).unwrap_or(SortTarget::Key) {
        SortTarget::Key => SortValue::Bytes(kv.key.to_vec()),
        SortTarget::Version => SortValue::Num(kv.version),
        SortTarget::Create => SortValue::Num(kv.create_revision),
        SortTarget::Mod => SortValue::Num(kv.mod_revision),
        SortTarget::Value => SortValue::Bytes(kv.value.to_vec()),
    }
}

/// Only the sort target of `kv`, for a tie group whose members are
/// unspecified.
fn only_sort_value(target: i32, kv: &KeyValue) -> KeyValue {
    let mut out = KeyValue::default();
    match SortTarget::try_from(target).unwrap_or(SortTarget::Key) {
        SortTarget::Key => out.key = kv.key.clone(),
        SortTarget::Version => out.version = kv.version,
        SortTarget::Create => out.create_revision = kv.create_revision,
        SortTarget::Mod => out.mod_revision = kv.mod_revision,
        SortTarget::Value => out.value = kv.value.clone(),
    }
    out
}

/// etcd sorts with Go's `sort.Sort`, which is not stable: within a group of
/// kvs that tie on a non-key sort target the order is unspecified, so both
/// sides have each tie group sorted by key. When the limit cut the sorted
/// list (`more`), the last tie group may be partial and which of its members
/// made the cut is unspecified too: that group keeps only its size and sort
/// values.
fn normalize_range(req: &RangeRequest, resp: &mut RangeResponse) {
    if req.sort_target == SortTarget::Key as i32 || resp.kvs.is_empty() {
        return;
    }
    let target = req.sort_target;
    let mut groups: Vec<Vec<KeyValue>> = Vec::new();
    for kv in resp.kvs.drain(..) {
        match groups.last_mut() {
            Some(g) if sort_value(target, &g[0]) == sort_value(target, &kv) => g.push(kv),
            _ => groups.push(vec![kv]),
        }
    }
    for g in &mut groups {
        g.sort_by(|a, b| a.key.cmp(&b.key));
    }
    if resp.more
        && req.limit > 0
        && let Some(last) = groups.last_mut()
    {
        for kv in last.iter_mut() {
            *kv = only_sort_value(target, kv);
        }
    }
    resp.kvs = groups.into_iter().flatten().collect();
}

// ---------------------------------------------------------------------------
// The generator: random requests from what side A (etcd) has answered.

/// What the harness knows about one watch (same on both sides).
#[derive(Debug, Clone)]
struct WatchSpec {
    stream: usize,
    id: i64,
    req: WatchCreateRequest,
    /// First revision the watch is owed.
    start: i64,
    /// The start revision was compacted: expect a cancel, no events.
    compacted: bool,
    /// Revision at which it was cancelled (events after it are not owed).
    cancelled_at: Option<i64>,
    /// The create failed (duplicate explicit id): nothing more is owed.
    refused: bool,
}

struct Gen {
    rng: StdRng,
    /// Latest revision side A reported.
    rev: i64,
    /// Last successful compaction revision on side A.
    compacted: i64,
    /// Leases side A holds.
    leases: BTreeSet<i64>,
    watches: Vec<WatchSpec>,
    next_explicit_watch_id: i64,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            rev: 1,
            compacted: 0,
            leases: BTreeSet::new(),
            watches: Vec::new(),
            next_explicit_watch_id: 1000,
        }
    }

    fn p(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn key(&mut self) -> Vec<u8> {
        KEYS.choose(&mut self.rng).unwrap().to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        VALUES.choose(&mut self.rng).unwrap().to_vec()
    }

    /// A range end for `key`: none, prefix, "\0", or another key (which may
    /// be below `key`: an inverted range).
    fn range_end(&mut self, key: &[u8], p_single: f64) -> Vec<u8> {
        if self.p(p_single) {
            return Vec::new();
        }
        match self.rng.random_range(0..10) {
            0..=3 => prefix_end(key),
            4 => vec![0],
            5 => b"z".to_vec(),
            _ => self.key(),
        }
    }

    fn lease_for_put(&mut self) -> i64 {
        match self.rng.random_range(0..20) {
            0..=3 if !self.leases.is_empty() => {
                *self.leases.iter().collect::<Vec<_>>().choose(&mut self.rng).copied().unwrap()
            }
            4 => *LEASE_IDS.choose(&mut self.rng).unwrap(),
            _ => 0,
        }
    }

    fn revision_for_read(&mut self) -> i64 {
        match self.rng.random_range(0..10) {
            0..=5 => 0,
            6..=8 => {
                let lo = (self.compacted - 1).max(1);
                self.rng.random_range(lo..=self.rev.max(lo))
            }
            _ => self.rev + self.rng.random_range(1..=3),
        }
    }

    fn put(&mut self) -> PutRequest {
        let ignore_value = self.p(0.1);
        let ignore_lease = self.p(0.1);
        let value = if ignore_value && self.p(0.8) { Vec::new() } else { self.value() };
        let lease = if ignore_lease && self.p(0.8) { 0 } else { self.lease_for_put() };
        PutRequest {
            key: self.key().into(),
            value: value.into(),
            lease,
            prev_kv: self.p(0.5),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key, 0.5);
        DeleteRangeRequest { key: key.into(), range_end: range_end.into(), prev_kv: self.p(0.5) }
    }

    fn range(&mut self) -> RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key, 0.3);
        let sort_order = self.rng.random_range(0..3);
        let sort_target = if self.p(0.4) { 0 } else { self.rng.random_range(0..5) };
        let count_only = self.p(0.1);
        // keys_only drops the values that a VALUE sort orders by, which
        // would leave the tie normalization blind; that pair is not sent.
        let keys_only = sort_target != SortTarget::Value as i32 && self.p(0.2);
        let rev_filter = |g: &mut Gen| {
            if g.p(0.15) { g.rng.random_range(0..=g.rev + 1) } else { 0 }
        };
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            limit: if self.p(0.3) { self.rng.random_range(1..5) } else { 0 },
            revision: self.revision_for_read(),
            sort_order,
            sort_target,
            serializable: self.p(0.3),
            keys_only,
            count_only,
            min_mod_revision: rev_filter(self),
            max_mod_revision: rev_filter(self),
            min_create_revision: rev_filter(self),
            max_create_revision: rev_filter(self),
        }
    }

    fn compare(&mut self) -> Compare {
        let key = self.key();
        let range_end = self.range_end(&key, 0.75);
        let target = self.rng.random_range(0..5);
        let union = match CompareTarget::try_from(target).unwrap() {
            CompareTarget::Version => TargetUnion::Version(self.rng.random_range(0..4)),
            CompareTarget::Create => TargetUnion::CreateRevision(self.rng.random_range(0..=self.rev + 1)),
            CompareTarget::Mod => TargetUnion::ModRevision(self.rng.random_range(0..=self.rev + 1)),
            CompareTarget::Value => TargetUnion::Value(self.value().into()),
            CompareTarget::Lease => {
                TargetUnion::Lease(if self.p(0.5) { 0 } else { *LEASE_IDS.choose(&mut self.rng).unwrap() })
            }
        };
        Compare {
            result: self.rng.random_range(0..4),
            target,
            key: key.into(),
            target_union: Some(union),
            range_end: range_end.into(),
        }
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let compare = (0..self.rng.random_range(0..=3)).map(|_| self.compare()).collect();
        let success = self.txn_ops(depth);
        let failure = self.txn_ops(depth);
        TxnRequest { compare, success, failure }
    }

    fn txn_ops(&mut self, depth: u32) -> Vec<RequestOp> {
        let mut ops = Vec::new();
        for _ in 0..self.rng.random_range(0..=4) {
            let request = match self.rng.random_range(0..20) {
                0..=6 => {
                    let put = self.put();
                    let key = put.key.clone();
                    ops.push(RequestOp { request: Some(Request::RequestPut(put)) });
                    // A read of what the txn just wrote must see it.
                    if self.p(0.5) {
                        let mut r = self.range();
                        r.key = key;
                        r.revision = 0;
                        if self.p(0.5) {
                            r.range_end = Default::default();
                        }
                        Request::RequestRange(r)
                    } else {
                        continue;
                    }
                }
                7..=12 => {
                    let mut r = self.range();
                    // Past revisions are refused inside a txn too; keep most
                    // txns useful.
                    if self.p(0.7) {
                        r.revision = 0;
                    }
                    Request::RequestRange(r)
                }
                13..=16 => {
                    let mut d = self.delete();
                    if self.p(0.5) {
                        d.range_end = Default::default();
                    }
                    Request::RequestDeleteRange(d)
                }
                _ if depth < 2 => Request::RequestTxn(self.txn(depth + 1)),
                _ => continue,
            };
            ops.push(RequestOp { request: Some(request) });
        }
        ops
    }

    fn compaction(&mut self) -> CompactionRequest {
        let revision = match self.rng.random_range(0..20) {
            0 => 0,
            1..=2 => self.compacted,                          // already compacted
            3..=4 => self.rev + self.rng.random_range(1..=3), // future
            5 => self.rev,
            _ => {
                // Somewhat behind, so that past reads still find history.
                let lo = self.compacted.max(1);
                let hi = (self.rev - 5).max(lo);
                self.rng.random_range(lo..=hi)
            }
        };
        CompactionRequest { revision, physical: self.p(0.5) }
    }

    fn watch(&mut self) -> (usize, WatchCreateRequest) {
        let stream = self.rng.random_range(0..STREAMS);
        let key = self.key();
        let range_end = match self.rng.random_range(0..10) {
            0..=3 => Vec::new(),
            4..=6 => prefix_end(&key),
            7 => vec![0],
            // Another key above this one (never an inverted watch range).
            _ => KEYS
                .iter()
                .filter(|k| **k > &key[..])
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .map_or(vec![0], |k| k.to_vec()),
        };
        let start_revision = match self.rng.random_range(0..20) {
            0..=7 => 0,
            8..=16 => {
                let lo = (self.compacted - 2).max(1);
                self.rng.random_range(lo..=self.rev.max(lo))
            }
            _ => self.rev + self.rng.random_range(1..=3),
        };
        let filters = match self.rng.random_range(0..10) {
            0 => vec![FilterType::Noput as i32],
            1 => vec![FilterType::Nodelete as i32],
            _ => vec![],
        };
        let watch_id = if self.p(0.1) {
            // Now and then reuse an explicit id: etcd refuses duplicates.
            if self.next_explicit_watch_id > 1000 && self.p(0.3) {
                self.next_explicit_watch_id - 1
            } else {
                self.next_explicit_watch_id += 1;
                self.next_explicit_watch_id - 1
            }
        } else {
            0
        };
        let req = WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            progress_notify: false,
            filters,
            prev_kv: self.p(0.5),
            watch_id,
            fragment: false,
        };
        (stream, req)
    }

    fn next(&mut self) -> Op {
        let live_watches: Vec<WatchSpec> = self
            .watches
            .iter()
            .skip(1)
            .filter(|w| w.cancelled_at.is_none() && !w.compacted && !w.refused)
            .cloned()
            .collect();
        loop {
            let op = match self.rng.random_range(0..100) {
                0..=24 => Op::Put(self.put()),
                25..=44 => Op::Range(self.range()),
                45..=52 => Op::Delete(self.delete()),
                53..=71 => Op::Txn(self.txn(0)),
                72..=74 => Op::Compact(self.compaction()),
                75..=79 => {
                    let ttl = match self.rng.random_range(0..20) {
                        0 => 9_000_000_001, // too large
                        1..=9 => 600,
                        _ => 3600,
                    };
                    Op::Grant(LeaseGrantRequest { ttl, id: *LEASE_IDS.choose(&mut self.rng).unwrap() })
                }
                80..=82 => Op::Revoke(LeaseRevokeRequest { id: *LEASE_IDS.choose(&mut self.rng).unwrap() }),
                83..=85 => Op::TimeToLive(LeaseTimeToLiveRequest {
                    id: *LEASE_IDS.choose(&mut self.rng).unwrap(),
                    keys: self.p(0.7),
                }),
                86..=87 => Op::Leases,
                88..=90 | 97..=99 => {
                    Op::KeepAlive(LeaseKeepAliveRequest { id: *LEASE_IDS.choose(&mut self.rng).unwrap() })
                }
                91..=94 if self.watches.len() < 20 => {
                    let (stream, req) = self.watch();
                    Op::Watch { stream, req }
                }
                95..=96 if !live_watches.is_empty() => {
                    let w = live_watches.choose(&mut self.rng).unwrap();
                    Op::Cancel { stream: w.stream, watch_id: w.id }
                }
                _ => continue,
            };
            return op;
        }
    }

    /// Learns from side A's answer.
    fn observe(&mut self, op: &Op, reply: &Reply) {
        self.rev = self.rev.max(reply.revision());
        match (op, reply) {
            (Op::Compact(c), Reply::Compact(_)) => self.compacted = self.compacted.max(c.revision),
            (Op::Grant(g), Reply::Grant(_)) => {
                self.leases.insert(g.id);
            }
            (Op::Revoke(r), Reply::Revoke(_)) => {
                self.leases.remove(&r.id);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Running one op on both sides.

async fn bounded_reply<F: std::future::Future<Output = Reply>>(f: F) -> Reply {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| Reply::NoAnswer("no answer within 15 s".into()))
}

async fn apply(side: &mut Side, op: &Op) -> Reply {
    let mut kv = side.kv.clone();
    let mut lease = side.lease.clone();
    match op.clone() {
        Op::Put(r) => bounded_reply(async { Reply::from(kv.put(r).await, Reply::Put) }).await,
        Op::Range(r) => bounded_reply(async { Reply::from(kv.range(r).await, Reply::Range) }).await,
        Op::Delete(r) => bounded_reply(async { Reply::from(kv.delete_range(r).await, Reply::Delete) }).await,
        Op::Txn(r) => bounded_reply(async { Reply::from(kv.txn(r).await, Reply::Txn) }).await,
        Op::Compact(r) => bounded_reply(async { Reply::from(kv.compact(r).await, Reply::Compact) }).await,
        Op::Grant(r) => bounded_reply(async { Reply::from(lease.lease_grant(r).await, Reply::Grant) }).await,
        Op::Revoke(r) => bounded_reply(async { Reply::from(lease.lease_revoke(r).await, Reply::Revoke) }).await,
        Op::TimeToLive(r) => {
            bounded_reply(async { Reply::from(lease.lease_time_to_live(r).await, Reply::TimeToLive) }).await
        }
        Op::Leases => {
            bounded_reply(async { Reply::from(lease.lease_leases(LeaseLeasesRequest {}).await, Reply::Leases) }).await
        }
        Op::KeepAlive(r) => {
            let before = side.keepalive.len();
            side.keepalive.send(r);
            match wait_for(|| side.keepalive.snapshot().get(before).cloned(), BARRIER).await {
                Some(resp) => Reply::KeepAlive(resp),
                None => Reply::NoAnswer(format!("keepalive stream: {:?}", side.keepalive.error())),
            }
        }
        Op::Watch { stream, req } => {
            let s = &side.watches[stream];
            let before = s.len();
            s.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(req)) });
            let found = wait_for(|| s.snapshot().into_iter().skip(before).find(|r| r.created), BARRIER).await;
            match found {
                Some(resp) => Reply::Watch(resp),
                None => Reply::NoAnswer(format!("no created response; stream: {:?}", s.error())),
            }
        }
        Op::Cancel { stream, watch_id } => {
            let s = &side.watches[stream];
            let before = s.len();
            s.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) });
            let found = wait_for(
                || s.snapshot().into_iter().skip(before).find(|r| r.canceled && r.watch_id == watch_id),
                BARRIER,
            )
            .await;
            match found {
                Some(resp) => Reply::Watch(resp),
                None => Reply::NoAnswer(format!("no canceled response; stream: {:?}", s.error())),
            }
        }
    }
}

/// Polls `f` until it yields, for at most `limit`.
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>, limit: Duration) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How two normalized replies relate.
enum Verdict {
    Same,
    /// Equal but for `header.raft_term`.
    RaftTermOnly,
    Differ,
}

fn verdict(a: &Reply, b: &Reply) -> Verdict {
    if a == b {
        return Verdict::Same;
    }
    let (mut a, mut b) = (a.clone(), b.clone());
    for r in [&mut a, &mut b] {
        r.headers(&mut |h| {
            if let Some(h) = h {
                h.raft_term = 0;
            }
        });
    }
    if a == b { Verdict::RaftTermOnly } else { Verdict::Differ }
}

/// The remaining TTL runs on each side's clock: a difference of 2 s is fine.
fn align_ttl(a: &Reply, b: &mut Reply) {
    if let (Reply::TimeToLive(a), Reply::TimeToLive(b)) = (a, b)
        && a.ttl > 0
        && b.ttl > 0
        && (a.ttl - b.ttl).abs() <= 2
    {
        b.ttl = a.ttl;
    }
}

/// The first line where the pretty forms of `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> String {
    for (i, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
        if la != lb {
            return format!("line {}:\n  A: {}\n  B: {}", i + 1, la.trim(), lb.trim());
        }
    }
    format!("one is a prefix of the other ({} vs {} lines)", a.lines().count(), b.lines().count())
}

// ---------------------------------------------------------------------------
// The sequence.

struct Run {
    seed: u64,
    a: Side,
    b: Side,
    model: Gen,
    /// Ops so far, for failure context.
    history: Vec<(Op, Reply)>,
    raft_term_diffs: Vec<String>,
}

async fn run_seed(seed: u64, a_name: &'static str, a: Channel, b_name: &'static str, b: Channel) {
    let n = ops_per_seed();
    eprintln!("differential {a_name} vs {b_name}: seed {seed}, {n} ops (reproduce with ROSTER_DIFF_SEED={seed})");
    let started = Instant::now();
    let mut run = Run {
        seed,
        a: Side::new(a_name, a),
        b: Side::new(b_name, b),
        model: Gen::new(seed),
        history: Vec::new(),
        raft_term_diffs: Vec::new(),
    };
    // The oracle: every key, from the first write on, with prev_kv.
    let oracle =
        WatchCreateRequest { key: vec![0].into(), range_end: vec![0].into(), prev_kv: true, ..Default::default() };
    run.step(usize::MAX, Op::Watch { stream: 0, req: oracle }).await;
    for _ in 0..2 {
        let (stream, req) = run.model.watch();
        run.step(usize::MAX, Op::Watch { stream, req }).await;
    }
    for i in 0..n {
        let op = run.model.next();
        run.step(i, op).await;
    }
    let (responses, events) = run.check_watches().await;
    assert!(
        run.raft_term_diffs.is_empty(),
        "seed {seed}: header.raft_term differs ({} responses), e.g.:\n{}",
        run.raft_term_diffs.len(),
        run.raft_term_diffs.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
    let errors = run.history.iter().filter(|(_, r)| matches!(r, Reply::Error { .. })).count();
    eprintln!(
        "differential seed {seed}: {n} ops identical in {:?} (final revision {}, {errors} errors, {} watches: {responses} responses, {events} events)",
        started.elapsed(),
        run.model.rev,
        run.model.watches.len(),
    );
}

impl Run {
    async fn step(&mut self, i: usize, op: Op) {
        // Keep etcd deterministic: in-flight watch events must be delivered
        // before a cancel, and before a compaction (etcd reads prev_kv for
        // an event when it sends it, which fails once compacted).
        if matches!(op, Op::Cancel { .. } | Op::Compact(_)) {
            self.barrier().await;
        }
        let (mut ra, mut rb) = tokio::join!(apply(&mut self.a, &op), apply(&mut self.b, &op));
        normalize(&op, &mut ra);
        normalize(&op, &mut rb);
        align_ttl(&ra, &mut rb);
        if verbose() {
            eprintln!("#{i} {op:?}\n  -> {ra:?}");
        }
        match verdict(&ra, &rb) {
            Verdict::Same => {}
            Verdict::RaftTermOnly => self.raft_term_diffs.push(format!("op #{i} {op:?}:\n  A: {ra:?}\n  B: {rb:?}")),
            Verdict::Differ => self.fail(i, &op, &ra, &rb),
        }
        self.model.observe(&op, &ra);
        match (&op, &ra) {
            (Op::Watch { stream, req }, Reply::Watch(created)) => self.new_watch(*stream, req, created).await,
            (Op::Cancel { stream, watch_id }, Reply::Watch(_)) => {
                let rev = self.model.rev;
                if let Some(w) = self.model.watches.iter_mut().find(|w| w.stream == *stream && w.id == *watch_id) {
                    w.cancelled_at = Some(rev);
                }
            }
            _ => {}
        }
        self.history.push((op, ra));
    }

    fn fail(&self, i: usize, op: &Op, a: &Reply, b: &Reply) -> ! {
        let (pa, pb) = (format!("{a:#?}"), format!("{b:#?}"));
        let context: Vec<String> =
            self.history.iter().rev().take(5).rev().map(|(op, r)| format!("  {op:?}\n    -> {r:?}")).collect();
        panic!(
            "\n=== DIFFERENTIAL MISMATCH (seed {seed}, op {at}) ===\nreproduce: ROSTER_DIFF_SEED={seed}\n\
             last ops before it:\n{ctx}\n\nrequest:\n{op:#?}\n\n{an} (A):\n{pa}\n\n{bn} (B):\n{pb}\n\nfirst difference: {diff}\n",
            seed = self.seed,
            at = if i == usize::MAX { "setup".to_string() } else { format!("#{i}") },
            ctx = context.join("\n"),
            an = self.a.name,
            bn = self.b.name,
            diff = first_difference(&pa, &pb),
        );
    }

    async fn new_watch(&mut self, stream: usize, req: &WatchCreateRequest, created: &WatchResponse) {
        let created_rev = created.header.as_ref().map_or(0, |h| h.revision);
        let refused = created.canceled;
        let start = if req.start_revision == 0 { created_rev + 1 } else { req.start_revision };
        let compacted = req.start_revision != 0 && req.start_revision < self.model.compacted && !refused;
        let spec =
            WatchSpec { stream, id: created.watch_id, req: req.clone(), start, compacted, cancelled_at: None, refused };
        self.model.watches.push(spec.clone());
        if refused {
            return;
        }
        if compacted {
            // etcd answers the compacted start on its next sync pass.
            let id = spec.id;
            for side in [&self.a, &self.b] {
                let s = &side.watches[stream];
                wait_for(|| s.snapshot().iter().any(|r| r.watch_id == id && r.canceled).then_some(()), BARRIER).await;
            }
            return;
        }
        if req.start_revision != 0 && req.start_revision <= created_rev {
            // A catch-up is owed; etcd delivers it on a sync pass. Let it
            // land before anything else is written.
            let owed = self.owed(&spec).await;
            if owed == 0 {
                tokio::time::sleep(SYNC_TICK).await;
            } else {
                self.await_owed(&spec, owed).await;
            }
        }
    }

    /// Waits until the oracle (on side A) has seen every revision so far.
    async fn sync_oracle(&self) -> Vec<roster_api::mvccpb::Event> {
        let rev = self.model.rev;
        let oracle = &self.a.watches[0];
        let id = self.model.watches[0].id;
        let events = || -> Vec<roster_api::mvccpb::Event> {
            oracle.snapshot().into_iter().filter(|r| r.watch_id == id).flat_map(|r| r.events).collect()
        };
        let done = wait_for(
            || {
                let ev = events();
                let last = ev.last().and_then(|e| e.kv.as_ref()).map_or(1, |kv| kv.mod_revision);
                (last >= rev).then_some(ev)
            },
            BARRIER,
        )
        .await;
        done.unwrap_or_else(|| {
            eprintln!("warning: oracle watch did not reach revision {rev} in time");
            events()
        })
    }

    /// Events `w` is owed so far, by the oracle's history.
    async fn owed(&self, w: &WatchSpec) -> usize {
        if w.compacted || w.refused {
            return 0;
        }
        let history = self.sync_oracle().await;
        let range = KeyRange::new(&w.req.key, &w.req.range_end);
        history
            .iter()
            .filter(|e| {
                let kv = e.kv.as_ref().expect("event kv");
                let put = e.r#type == EventType::Put as i32;
                let filtered =
                    w.req.filters.iter().any(|f| {
                        (*f == FilterType::Noput as i32 && put) || (*f == FilterType::Nodelete as i32 && !put)
                    });
                kv.mod_revision >= w.start
                    && w.cancelled_at.is_none_or(|c| kv.mod_revision <= c)
                    && range.contains(&kv.key)
                    && !filtered
            })
            .count()
    }

    fn delivered(side: &Side, w: &WatchSpec) -> usize {
        side.watches[w.stream].snapshot().iter().filter(|r| r.watch_id == w.id).map(|r| r.events.len()).sum()
    }

    async fn await_owed(&self, w: &WatchSpec, owed: usize) {
        for side in [&self.a, &self.b] {
            let ok = wait_for(|| (Self::delivered(side, w) >= owed).then_some(()), BARRIER).await;
            if ok.is_none() && side.name.starts_with("etcd") {
                eprintln!(
                    "warning: {} delivered {} of {owed} events to watch {}/{} in time",
                    side.name,
                    Self::delivered(side, w),
                    w.stream,
                    w.id
                );
            }
        }
    }

    /// Every live watch has everything it is owed, on both sides.
    async fn barrier(&self) {
        let watches: Vec<WatchSpec> = self.model.watches.iter().filter(|w| w.cancelled_at.is_none()).cloned().collect();
        for w in &watches {
            let owed = self.owed(w).await;
            self.await_owed(w, owed).await;
        }
    }

    /// Drains every watch up to the final revision and compares each watch's
    /// responses, grouping included.
    async fn check_watches(&mut self) -> (usize, usize) {
        let (mut responses, mut events) = (0, 0);
        self.barrier().await;
        // Room for anything extra (doubled events) to arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for w in &self.model.watches {
            let mut per_side = Vec::new();
            for side in [&self.a, &self.b] {
                let mut rs: Vec<WatchResponse> =
                    side.watches[w.stream].snapshot().into_iter().filter(|r| r.watch_id == w.id).collect();
                for r in &mut rs {
                    zero_ids(&mut r.header);
                }
                per_side.push((rs, side.watches[w.stream].error()));
            }
            let (ra, rb) = (&per_side[0].0, &per_side[1].0);
            responses += ra.len();
            events += ra.iter().map(|r| r.events.len()).sum::<usize>();
            let wrap = |v: &Vec<WatchResponse>| {
                Reply::Watch(WatchResponse {
                    events: v.iter().flat_map(|r| r.events.clone()).collect(),
                    ..Default::default()
                })
            };
            if ra == rb {
                continue;
            }
            // Tell a grouping/ordering difference from raft_term only.
            let strip = |v: &Vec<WatchResponse>| -> Vec<WatchResponse> {
                v.iter()
                    .cloned()
                    .map(|mut r| {
                        if let Some(h) = &mut r.header {
                            h.raft_term = 0;
                        }
                        r
                    })
                    .collect()
            };
            if strip(ra) == strip(rb) {
                self.raft_term_diffs.push(format!("watch {}/{}: {:?} vs {:?}", w.stream, w.id, ra.first(), rb.first()));
                continue;
            }
            let same_events = wrap(ra) == wrap(rb);
            let (pa, pb) = (format!("{ra:#?}"), format!("{rb:#?}"));
            panic!(
                "\n=== DIFFERENTIAL WATCH MISMATCH (seed {seed}) ===\nreproduce: ROSTER_DIFF_SEED={seed}\n\
                 watch on stream {stream}, id {id}: {req:?}\n{what}\n\n{an} (A) responses ({la}), stream error {ea:?}:\n{pa}\n\n\
                 {bn} (B) responses ({lb}), stream error {eb:?}:\n{pb}\n\nfirst difference: {diff}\n",
                seed = self.seed,
                stream = w.stream,
                id = w.id,
                req = w.req,
                what = if same_events {
                    "the same events, grouped into responses differently (or different headers)"
                } else {
                    "different events"
                },
                an = self.a.name,
                bn = self.b.name,
                la = ra.len(),
                lb = rb.len(),
                ea = per_side[0].1,
                eb = per_side[1].1,
                diff = first_difference(&pa, &pb),
            );
        }
        (responses, events)
    }
}
