//! Hostile clients against a real `roster serve`, each while a well-behaved
//! client keeps putting and a registration keeps its lease alive.
//!
//! Each scenario measures the writer's put p99 with the server idle, then
//! while the hostile client runs, and asserts loosely that it stayed within
//! [`P99_FACTOR`] of idle or under [`P99_FLOOR`] (the suite shares 2 cores
//! with other tests, so a tight bound would flake; the bench measures the
//! real ratio). It also asserts that the registration's lease was never
//! lost and that the server's RSS grew by less than a bound per scenario.
//!
//! The scenarios run one at a time ([`SERIAL`]), each on its own server, and
//! every hostile loop is bounded by count and by time. Transport limits
//! (keepalive pings, the stream limit, the in-flight cap) are tested here
//! too, against the binary's flags.

use crate::support::roster_bin;
use bytes::{BufMut, Bytes, BytesMut};
use roster_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use roster_testkit::Roster;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Scenarios measure latency: never two at once.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// During a hostile client, the writer's p99 may be this many times idle...
const P99_FACTOR: u32 = 5;
/// ...or up to this, whichever is larger.
const P99_FLOOR: Duration = Duration::from_millis(100);
/// Longest any one hostile phase may run.
const HOSTILE_MAX: Duration = Duration::from_secs(40);
/// TTL of the registration's lease; renewed every second.
const REG_TTL: i64 = 3;
/// Keys for the range and catch-up scenarios, written in txns of 128 puts.
const DATA_KEYS: usize = 100_000;
const MIB: u64 = 1 << 20;

// === the well-behaved side ===

/// The writer, the registration and the RSS baseline of one scenario.
struct Harness {
    pid: u32,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    writes: u64,
    idle_p99: Duration,
    rss_before: u64,
    reg: Registration,
}

impl Harness {
    /// Registers, then measures the writer's idle p99.
    async fn new(r: &Roster) -> Harness {
        let ch = r.channel();
        let reg = Registration::start(ch.clone()).await;
        let mut h = Harness {
            pid: r.pid().expect("roster is running"),
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch),
            writes: 0,
            idle_p99: Duration::ZERO,
            rss_before: 0,
            reg,
        };
        // Warm up connections and allocator before the baseline.
        h.put_for(Duration::from_millis(300), 100).await;
        let mut idle = h.put_for(Duration::from_millis(1500), 400).await;
        h.idle_p99 = p99(&mut idle);
        h.rss_before = rss(h.pid);
        h
    }

    /// Puts one after another until `until` says stop, at most `max` of
    /// them; their latencies.
    async fn put_while(&mut self, until: impl Fn() -> bool, max: usize) -> Vec<Duration> {
        let mut lat = Vec::new();
        let hard = Instant::now() + HOSTILE_MAX + Duration::from_secs(5);
        while !until() && lat.len() < max && Instant::now() < hard {
            let req = PutRequest {
                key: format!("/hostile/writer/{:03}", self.writes % 100).into_bytes().into(),
                value: Bytes::from(vec![b'w'; 1024]),
                ..Default::default()
            };
            self.writes += 1;
            let t0 = Instant::now();
            match tokio::time::timeout(Duration::from_secs(10), self.kv.put(req)).await {
                Ok(Ok(_)) => lat.push(t0.elapsed()),
                Ok(Err(s)) => panic!("the well-behaved writer's put failed: {s:?}"),
                Err(_) => panic!("the well-behaved writer's put took over 10 s"),
            }
        }
        lat
    }

    async fn put_for(&mut self, d: Duration, max: usize) -> Vec<Duration> {
        let end = Instant::now() + d;
        self.put_while(|| Instant::now() >= end, max).await
    }

    /// Runs `hostile` (spawned; it must end by itself within
    /// [`HOSTILE_MAX`]) while the writer puts, then checks the writer's p99,
    /// the registration and the server's RSS. Returns what `hostile` did.
    async fn under<T: Send + 'static>(
        &mut self,
        what: &str,
        max_rss_growth: u64,
        hostile: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.under_task(what, max_rss_growth, tokio::spawn(tokio::time::timeout(HOSTILE_MAX, hostile))).await
    }

    /// [`Harness::under`] with the hostile client on a runtime of its own
    /// (see [`apart`]).
    async fn under_apart<T: Send + 'static>(
        &mut self,
        what: &str,
        max_rss_growth: u64,
        hostile: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.under_task(what, max_rss_growth, apart(hostile)).await
    }

    async fn under_task<T: Send + 'static>(
        &mut self,
        what: &str,
        max_rss_growth: u64,
        task: JoinHandle<Result<T, tokio::time::error::Elapsed>>,
    ) -> T {
        let sampler = RssSampler::start(self.pid);
        // The writer runs for at least a second, so a short hostile phase
        // still yields samples.
        let min_end = Instant::now() + Duration::from_secs(1);
        let mut during = self.put_while(|| task.is_finished() && Instant::now() >= min_end, 20_000).await;
        let out = task
            .await
            .expect("the hostile client panicked")
            .unwrap_or_else(|_| panic!("{what}: the hostile client ran over {HOSTILE_MAX:?}"));
        let peak = sampler.stop();
        let p = p99(&mut during);
        let bound = (self.idle_p99 * P99_FACTOR).max(P99_FLOOR);
        let growth = peak.saturating_sub(self.rss_before);
        eprintln!(
            "hostile {what}: writer put p99 idle {:?}, during {:?} ({:.2}x, {} puts); RSS {} MiB before, peak {} MiB",
            self.idle_p99,
            p,
            p.as_secs_f64() / self.idle_p99.as_secs_f64(),
            during.len(),
            self.rss_before / MIB,
            peak / MIB
        );
        assert!(
            p <= bound,
            "{what}: the writer's put p99 was {p:?} during, {:?} idle (bound {bound:?})",
            self.idle_p99
        );
        assert!(
            growth <= max_rss_growth,
            "{what}: server RSS grew by {} MiB (bound {} MiB)",
            growth / MIB,
            max_rss_growth / MIB
        );
        self.reg.assert_alive(&mut self.kv, &mut self.lease, what).await;
        out
    }
}

/// Runs a hostile client (within [`HOSTILE_MAX`]) on a runtime and threads
/// of its own, as a client process of its own would: for a client that
/// decodes large answers, which on the test's runtime would hold up the
/// writer's own tasks (a debug build decodes a 1 MiB catch-up response in
/// tens of milliseconds).
fn apart<T: Send + 'static>(
    hostile: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<Result<T, tokio::time::error::Elapsed>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(rt.block_on(async move { tokio::time::timeout(HOSTILE_MAX, hostile).await }));
    });
    tokio::spawn(async move { rx.await.expect("the hostile client's thread panicked") })
}

/// The 99th percentile (nearest rank).
fn p99(v: &mut [Duration]) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort_unstable();
    v[((v.len() * 99).div_ceil(100)).saturating_sub(1)]
}

/// A key on a lease of [`REG_TTL`] renewed every second over one keepalive
/// stream, as the SDK's registration does; never re-registered, so a lost
/// lease shows.
struct Registration {
    id: i64,
    key: Bytes,
    lost: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Registration {
    async fn start(ch: Channel) -> Registration {
        let mut lease = LeaseClient::new(ch.clone());
        let id = lease.lease_grant(LeaseGrantRequest { ttl: REG_TTL, id: 0 }).await.unwrap().into_inner().id;
        let key = Bytes::from_static(b"/services/hostile/instance-1");
        let put = PutRequest { key: key.clone(), value: "127.0.0.1:1".into(), lease: id, ..Default::default() };
        KvClient::new(ch).put(put).await.unwrap();
        let lost = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let lost = lost.clone();
            async move {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id }).await;
                let Ok(resp) = lease.lease_keep_alive(ReceiverStream::new(rx)).await else {
                    return lost.store(true, Ordering::Relaxed);
                };
                let mut stream = resp.into_inner();
                loop {
                    match tokio::time::timeout(Duration::from_secs(REG_TTL as u64), stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl > 0 => {}
                        _ => return lost.store(true, Ordering::Relaxed),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        return;
                    }
                }
            }
        });
        Registration { id, key, lost, task }
    }

    async fn assert_alive(&self, kv: &mut KvClient<Channel>, lease: &mut LeaseClient<Channel>, what: &str) {
        assert!(
            !self.lost.load(Ordering::Relaxed),
            "{what}: a keepalive of the live registration failed or answered TTL 0"
        );
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: self.id, keys: false })
            .await
            .unwrap()
            .into_inner()
            .ttl;
        assert!(ttl > 0, "{what}: the registration's lease is gone (TTL {ttl})");
        let got = kv.range(RangeRequest { key: self.key.clone(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs.first().map(|kv| kv.lease), Some(self.id), "{what}: the registration's key is gone");
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a VmRSS line");
    kb * 1024
}

/// The largest RSS seen, sampled every 50 ms.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss(pid)));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

// === set-up ===

/// Writes [`DATA_KEYS`] keys under `/hostile/data/` in txns of 128 puts
/// (one revision each), from 8 clients.
async fn populate(ch: &Channel) {
    const TXN: usize = 128;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (mut kv, next) = (KvClient::new(ch.clone()), next.clone());
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(TXN as u64, Ordering::Relaxed) as usize;
                if start >= DATA_KEYS {
                    return;
                }
                let success = (start..(start + TXN).min(DATA_KEYS))
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: format!("/hostile/data/{i:06}").into_bytes().into(),
                            value: Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
                            ..Default::default()
                        })),
                    })
                    .collect();
                kv.txn(TxnRequest { success, ..Default::default() }).await.expect("populating txn");
            }
        });
    }
    let started = Instant::now();
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap()
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("populating took over 60 s");
    eprintln!("hostile: wrote {DATA_KEYS} keys in {:?}", started.elapsed());
}

/// The whole keyspace: key "\0", range_end "\0".
fn everything() -> (Bytes, Bytes) {
    (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"))
}

fn create(key: Bytes, range_end: Bytes, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision,
            ..Default::default()
        })),
    }
}

/// A stop flag that also trips at a deadline.
#[derive(Clone)]
struct Until(Instant);

impl Until {
    fn after(d: Duration) -> Until {
        Until(Instant::now() + d)
    }
    fn done(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// A new HTTP/2 connection: hostile clients never share the writer's.
fn own_connection(r: &Roster) -> Channel {
    connect_lazy(r.url())
}

fn connect_lazy(url: String) -> Channel {
    tonic::transport::Endpoint::from_shared(url)
        .expect("valid url")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

// === scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_keyspace_range_loop_does_not_stall_writers() {
    let _one = SERIAL.lock().await;
    let r = Roster::start(roster_bin()).await;
    populate(&r.channel()).await;
    let mut h = Harness::new(&r).await;
    let endpoint = r.endpoint();
    let until = Until::after(Duration::from_secs(3));
    let ranges = h
        .under("full-keyspace range loop over 100,000 keys", 512 * MIB, async move {
            // Raw HTTP/2 that never decodes the answers: the server does
            // all the work, the test process little.
            let send = raw_connection(&endpoint).await;
            let (key, range_end) = everything();
            let req = grpc_frame(&RangeRequest { key, range_end, ..Default::default() });
            let mut n = 0u32;
            // At least one full range, however slow.
            while n == 0 || (!until.done() && n < 1000) {
                let bytes = raw_unary(&send, &endpoint, "/etcdserverpb.KV/Range", req.clone()).await;
                // Each key is at least its 20 bytes and a 32-byte value.
                assert!(bytes >= DATA_KEYS * 52, "a full range answered {bytes} bytes");
                n += 1;
            }
            n
        })
        .await;
    eprintln!("hostile range loop: {ranges} full ranges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_flood_of_10000_leases_does_not_stall_writers() {
    const LEASES: usize = 10_000;
    const STREAMS: usize = 8;
    let _one = SERIAL.lock().await;
    let r = Roster::start(roster_bin()).await;
    let ch = r.channel();
    // Grant first, from 32 clients.
    let mut grants = JoinSet::new();
    for c in 0..32 {
        let mut lease = LeaseClient::new(ch.clone());
        grants.spawn(async move {
            let mut ids = Vec::new();
            for _ in (c..LEASES).step_by(32) {
                ids.push(lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant").into_inner().id);
            }
            ids
        });
    }
    let mut ids = Vec::with_capacity(LEASES);
    let all = async {
        while let Some(r) = grants.join_next().await {
            ids.extend(r.unwrap())
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("granting took over 60 s");
    assert_eq!(ids.len(), LEASES);

    let mut h = Harness::new(&r).await;
    let ch = own_connection(&r);
    let until = Until::after(Duration::from_secs(3));
    let renewed = h
        .under("keepalive flood of 10,000 leases", 256 * MIB, async move {
            let mut streams = JoinSet::new();
            for s in 0..STREAMS {
                let mine: Vec<i64> = ids.iter().skip(s).step_by(STREAMS).copied().collect();
                let (ch, until) = (ch.clone(), until.clone());
                streams.spawn(async move {
                    let (tx, rx) = mpsc::channel(16);
                    // At most 256 unanswered per stream, so the flood ends
                    // when told to rather than after a backlog.
                    let window = Arc::new(tokio::sync::Semaphore::new(256));
                    // Sends as fast as the server answers, bounded by time and count.
                    let sender = tokio::spawn({
                        let window = window.clone();
                        async move {
                            for (sent, id) in mine.iter().cycle().enumerate() {
                                let Ok(place) = window.acquire().await else { return };
                                place.forget();
                                if until.done()
                                    || sent >= 2_000_000
                                    || tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                    });
                    // Opened after the sender starts: etcd answers the
                    // headers only with its first renewal.
                    let mut stream = LeaseClient::new(ch)
                        .lease_keep_alive(ReceiverStream::new(rx))
                        .await
                        .expect("keepalive stream")
                        .into_inner();
                    let mut got = 0u64;
                    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                        window.add_permits(1);
                        assert!(r.ttl > 0, "lease {:x} of the flood was lost", r.id);
                        got += 1;
                        if sender.is_finished() && got >= 1 {
                            break;
                        }
                    }
                    sender.abort();
                    got
                });
            }
            let mut total = 0;
            while let Some(n) = streams.join_next().await {
                total += n.unwrap();
            }
            total
        })
        .await;
    eprintln!("hostile keepalive flood: {renewed} renewals answered");
    assert!(renewed >= LEASES as u64 / 10, "the flood barely ran: {renewed} renewals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_that_never_reads_does_not_stall_writers_or_other_watchers() {
    const WATCHES: usize = 100;
    let _one = SERIAL.lock().await;
    let r = Roster::start(roster_bin()).await;
    let mut h = Harness::new(&r).await;

    // A well-behaved watcher of the writer's keys, on its own connection.
    let (good_tx, good_rx) = mpsc::channel(4);
    good_tx.send(create("/hostile/writer/".into(), "/hostile/writer0".into(), 0)).await.unwrap();
    let mut good = WatchClient::new(own_connection(&r)).watch(ReceiverStream::new(good_rx)).await.unwrap().into_inner();
    let created = good.message().await.unwrap().unwrap();
    assert!(created.created);
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let last_seen = last_seen.clone();
        async move {
            while let Ok(Some(resp)) = good.message().await {
                for e in resp.events {
                    last_seen.fetch_max(e.kv.map_or(0, |kv| kv.mod_revision) as u64, Ordering::Relaxed);
                }
            }
        }
    });

    let endpoint = r.endpoint();
    let until = Until::after(Duration::from_secs(3));
    let held = h
        .under("a watch stream that is never read", 128 * MIB, async move {
            // Raw HTTP/2, so nothing reads or acknowledges the answers.
            let send = raw_connection(&endpoint).await;
            let mut send = send.ready().await.unwrap();
            let (answer, mut body) =
                send.send_request(grpc_request(&endpoint, "/etcdserverpb.Watch/Watch"), false).unwrap();
            for _ in 0..WATCHES {
                let frame = grpc_frame(&create("/hostile/writer/".into(), "/hostile/writer0".into(), 0));
                body.send_data(frame, false).unwrap();
            }
            while !until.done() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Held, never polled, until here.
            drop((answer, body));
            WATCHES
        })
        .await;
    // The good watcher kept up: it saw the writer's last put within a second.
    let last =
        h.kv.put(PutRequest { key: "/hostile/writer/last".into(), value: "x".into(), ..Default::default() })
            .await
            .unwrap();
    let last_rev = last.into_inner().header.unwrap().revision as u64;
    let deadline = Instant::now() + Duration::from_secs(1);
    while last_seen.load(Ordering::Relaxed) < last_rev && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    assert!(
        last_seen.load(Ordering::Relaxed) >= last_rev,
        "the well-behaved watcher is behind: saw revision {}, last put {last_rev}",
        last_seen.load(Ordering::Relaxed)
    );
    eprintln!("hostile never-read stream: {held} watches held unread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_100000_on_one_stream_do_not_stall_writers() {
    const WATCHES: u64 = 100_000;
    let _one = SERIAL.lock().await;
    let r = Roster::start(roster_bin()).await;
    let mut h = Harness::new(&r).await;
    let ch = own_connection(&r);
    let created = h
        .under("100,000 watches on one stream", 1024 * MIB, async move {
            let (tx, rx) = mpsc::channel(1024);
            let sender = tokio::spawn(async move {
                for i in 0..WATCHES {
                    // Single keys no put touches: publishing must not scan them.
                    let key = format!("/hostile/idle/{i:06}").into_bytes().into();
                    if tx.send(create(key, Bytes::new(), 0)).await.is_err() {
                        return None;
                    }
                }
                Some(tx)
            });
            let mut stream =
                WatchClient::new(ch).watch(ReceiverStream::new(rx)).await.expect("watch stream").into_inner();
            let mut created = 0u64;
            while created < WATCHES {
                match stream.message().await {
                    Ok(Some(resp)) if resp.created => created += 1,
                    Ok(Some(resp)) => panic!("unexpected watch response: {resp:?}"),
                    other => panic!("the watch stream ended after {created} creates: {other:?}"),
                }
            }
            // Hold them all while the writer keeps putting.
            let tx = sender.await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(tx);
            created
        })
        .await;
    assert_eq!(created, WATCHES);
}

/// A client replaying the whole history in a loop. This once took the
/// writer's p99 to 340-490 ms in debug builds: the server built and encoded
/// each 1 MiB catch-up response in one go on a runtime worker, and the test
/// decoded it on the writer's own runtime. Now the server yields between
/// 64 KiB pieces of responses of 256 KiB, and the replaying client runs
/// apart (67-94 ms on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_revision_1_over_long_history_does_not_stall_writers() {
    let _one = SERIAL.lock().await;
    let r = Roster::start(roster_bin()).await;
    populate(&r.channel()).await;
    let mut h = Harness::new(&r).await;
    let url = r.url();
    let until = Until::after(Duration::from_secs(3));
    let replays = h
        .under_apart("watch from revision 1 over 100,000 events", 512 * MIB, async move {
            // Made here, so its connection runs on the hostile runtime.
            let ch = connect_lazy(url);
            let mut replays = 0u32;
            while replays == 0 || (!until.done() && replays < 100) {
                let (tx, rx) = mpsc::channel(4);
                let (key, range_end) = everything();
                tx.send(create(key, range_end, 1)).await.unwrap();
                let mut stream = WatchClient::new(ch.clone())
                    .max_decoding_message_size(usize::MAX)
                    .watch(ReceiverStream::new(rx))
                    .await
                    .expect("watch stream")
                    .into_inner();
                let mut data = 0usize;
                while data < DATA_KEYS {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            data += resp
                                .events
                                .iter()
                                .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(b"/hostile/data/")))
                                .count();
                        }
                        other => panic!("catch-up ended after {data} events: {other:?}"),
                    }
                }
                let cancel = WatchRequest {
                    request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 0 })),
                };
                let _ = tx.send(cancel).await;
                replays += 1;
            }
            replays
        })
        .await;
    eprintln!("hostile catch-up: {replays} replays of the whole history");
}

// === transport limits ===

/// A gRPC message: not compressed, then its length, then the bytes.
fn grpc_frame(m: &impl prost::Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + m.encoded_len());
    buf.put_u8(0);
    buf.put_u32(m.encoded_len() as u32);
    m.encode(&mut buf).expect("sized buffer");
    buf.freeze()
}

/// An HTTP/2 connection driven by a task of its own (which ends when the
/// last handle is dropped).
async fn raw_connection(endpoint: &str) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

fn grpc_request(endpoint: &str, path: &str) -> http::Request<()> {
    http::Request::post(format!("http://{endpoint}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A unary call whose answer is read but never decoded: its body's size.
/// Panics unless grpc-status is 0.
async fn raw_unary(send: &h2::client::SendRequest<Bytes>, endpoint: &str, path: &str, frame: Bytes) -> usize {
    let mut send = send.clone().ready().await.unwrap();
    let (answer, mut body) = send.send_request(grpc_request(endpoint, path), false).unwrap();
    body.send_data(frame, true).unwrap();
    let answer = answer.await.unwrap();
    let mut recv = answer.into_body();
    let mut bytes = 0;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    let trailers = recv.trailers().await.unwrap().unwrap_or_default();
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "{path}: {trailers:?}");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_pinged_and_closed_and_stream_limit_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--grpc-keepalive-interval", "1s", "--grpc-keepalive-timeout", "1s", "--max-concurrent-streams", "7"];
    let r = Roster::try_start_in_with_args(roster_bin(), dir.path(), &args).await.unwrap_or_else(|e| panic!("{e}"));
    // HTTP/2 by hand: the preface and empty SETTINGS, then never a byte
    // more, so no PING is ever answered.
    let mut tcp = tokio::net::TcpStream::connect(r.endpoint()).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let started = Instant::now();
    let (mut max_streams, mut pinged, mut bytes) = (None, None, Vec::new());
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
            // Parse every complete frame so far.
            while bytes.len() >= 9 {
                let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
                if bytes.len() < 9 + len {
                    break;
                }
                let (kind, flags, payload) = (bytes[3], bytes[4], &bytes[9..9 + len]);
                match kind {
                    // SETTINGS, not an ACK: 6-byte (id, value) pairs.
                    0x4 if flags & 1 == 0 => {
                        for p in payload.chunks_exact(6) {
                            if u16::from_be_bytes([p[0], p[1]]) == 0x3 {
                                max_streams = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                            }
                        }
                    }
                    0x6 if flags & 1 == 0 => pinged = pinged.or(Some(started.elapsed())),
                    _ => {}
                }
                bytes.drain(..9 + len);
            }
        }
    })
    .await;
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS from --max-concurrent-streams 7");
    let pinged = pinged.expect("the server never pinged an idle connection");
    assert!(pinged >= Duration::from_millis(900), "pinged after {pinged:?}, before the 1 s interval");
    assert!(closed.is_ok(), "a connection that never answers pings was still open after 15 s");
    let gone = started.elapsed();
    assert!(gone >= pinged + Duration::from_millis(900), "closed {gone:?} in, before the 1 s ping timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_inflight_cap_get_etcds_too_many_requests() {
    let dir = tempfile::tempdir().unwrap();
    let r = Roster::try_start_in_with_args(roster_bin(), dir.path(), &["--max-inflight-requests", "2"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // 64 concurrent durable puts wait on fsyncs together: most are over a
    // cap of 2. Bounded: at most 20 bursts.
    let (mut refused, mut served) = (Vec::new(), 0);
    for burst in 0..20 {
        let mut puts = JoinSet::new();
        for i in 0..64 {
            let mut kv = KvClient::new(r.channel());
            puts.spawn(async move {
                let req = PutRequest {
                    key: format!("/cap/{burst}/{i}").into_bytes().into(),
                    value: "v".into(),
                    ..Default::default()
                };
                kv.put(req).await.map(drop)
            });
        }
        while let Some(res) = puts.join_next().await {
            match res.unwrap() {
                Ok(()) => served += 1,
                Err(s) => refused.push((s.code(), s.message().to_owned())),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "no put of 20 bursts of 64 was over a cap of 2");
    assert!(served > 0, "every put was refused");
    for (code, message) in &refused {
        assert_eq!((*code, message.as_str()), (tonic::Code::ResourceExhausted, "etcdserver: too many requests"));
    }
    // Refused calls left no place taken: one put at a time always passes.
    let mut kv = KvClient::new(r.channel());
    for i in 0..10 {
        kv.put(PutRequest {
            key: format!("/cap/after/{i}").into_bytes().into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .expect("a put under the cap");
    }
}

// === the bench ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_hostile_prints_each_targets_ratio_side_by_side() {
    let _one = SERIAL.lock().await;
    let r = Roster::start_in_memory(roster_bin()).await;
    let etcd = match roster_testkit::require_etcd() {
        Some(_) => Some(roster_testkit::Etcd::start().await),
        None => None,
    };
    let mut args = vec!["--log".to_owned(), "warn".to_owned(), "bench".to_owned(), "hostile".to_owned()];
    args.extend(["--scenario", "range", "--keys", "2000", "--phase", "1", "--target"].map(str::to_owned));
    args.push(format!("roster={}", r.endpoint()));
    if let Some(e) = &etcd {
        args.extend(["--target".to_owned(), format!("etcd={}", e.endpoint())]);
    }
    let out =
        tokio::time::timeout(Duration::from_secs(60), tokio::process::Command::new(roster_bin()).args(&args).output())
            .await
            .expect("bench hostile ran over 60 s")
            .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench hostile failed:\n{stdout}\n{stderr}");
    // hostile range 2000  <target>  <ratio> x  <p50>  <p99>  <errors>  writer p99 idle ...
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("hostile range 2000"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let targets: Vec<&str> = rows.iter().map(|f| f[0]).collect();
    assert_eq!(targets, if etcd.is_some() { vec!["roster", "etcd"] } else { vec!["roster"] }, "{stdout}");
    for f in &rows {
        let ratio: f64 = f[1].parse().unwrap_or_else(|_| panic!("no ratio in {f:?}"));
        assert!(ratio > 0.0 && ratio.is_finite(), "{stdout}");
        assert_eq!((f[2], f[5]), ("x", "0"), "unit and errors: {stdout}");
        assert!(f[6..].join(" ").starts_with("writer p99 idle"), "{stdout}");
        assert!(f.join(" ").contains("full ranges"), "{stdout}");
    }
    if etcd.is_some() {
        assert!(stdout.contains("ratio roster/etcd: p99 during/idle "), "{stdout}");
    }
}
