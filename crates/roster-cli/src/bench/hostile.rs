//! `hostile`: a writer's put p99 while one hostile client runs, as a ratio
//! to its p99 with the server idle.
//!
//! Each scenario is one table row per target. On each target it first sets
//! up what the hostile client needs (keys, leases), then measures one
//! writer's sequential puts for `--phase` seconds while the hostile client
//! runs, and for `--phase` seconds idle: half before, half after, so a
//! change in the machine's load during the run biases neither side. The row's figure is
//! the ratio during/idle of the writer's p99; its p50 and p99 columns are
//! the writer's latencies during the hostile phase. A registration (a key
//! on a 3 s lease renewed every second) lives through both phases, and a
//! lost lease counts as an error.
//!
//! Scenarios (`--scenario`, all by default):
//! - `range`: full-keyspace ranges in a loop, over `--keys` keys;
//! - `keepalive`: `--leases` leases renewed as fast as 8 streams can send;
//! - `unread`: one watch stream with `--unread-watches` watches on the
//!   writer's keys, whose answers are never read (raw HTTP/2, so flow
//!   control stops the server's sends);
//! - `watches`: `--watches` single-key watches on one stream, none of them
//!   on a key anyone writes;
//! - `catch-up`: watches replaying the `--keys` events written for `range`
//!   (from the revision before them), one after another.
//!
//! The keys are written once, in txns of 128 puts, and left for later runs.

use super::Workload;
use super::keepalive;
use super::report::{FirstError, Gauge, Outcome, histogram, record_since};
use super::target::Target;
use super::wire::{Conn, KV_PUT, KV_RANGE};
use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use roster_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Range,
    Keepalive,
    Unread,
    Watches,
    #[value(name = "catch-up")]
    CatchUp,
}

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Hostile {
    /// Scenarios to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Seconds of the hostile phase, and of the idle one (half before it,
    /// half after).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub phase: u64,
    /// Keys for `range` and `catch-up`.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Leases kept alive by `keepalive`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub leases: u64,
    /// Watches on the one stream of `watches`.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub watches: u64,
    /// Watches on the never-read stream of `unread`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub unread_watches: u64,
}

// === impl Hostile ===

impl Hostile {
    /// The scenarios asked for, in a fixed order.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let all = Scenario::value_variants();
        if self.scenario.is_empty() {
            return all.to_vec();
        }
        all.iter().copied().filter(|s| self.scenario.contains(s)).collect()
    }

    /// One workload per scenario, each its own table row.
    pub fn workloads(&self) -> Vec<HostileRun> {
        self.scenarios().into_iter().map(|scenario| HostileRun { scenario, args: self.clone() }).collect()
    }
}

/// One scenario of [`Hostile`].
pub struct HostileRun {
    scenario: Scenario,
    args: Hostile,
}

const DATA: &str = "/bench/hostile/data/";
const WRITER: &str = "/bench/hostile/writer/";
const REG_TTL: i64 = 3;
/// Puts per phase at most, so a phase is bounded in count as well as time.
const MAX_PUTS: usize = 1_000_000;

impl Workload for HostileRun {
    fn name(&self) -> String {
        let a = &self.args;
        match self.scenario {
            Scenario::Range => format!("hostile range {}", a.keys),
            Scenario::Keepalive => format!("hostile keepalive {}", a.leases),
            Scenario::Unread => format!("hostile unread {}", a.unread_watches),
            Scenario::Watches => format!("hostile watches {}", a.watches),
            Scenario::CatchUp => format!("hostile catch-up {}", a.keys),
        }
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let phase = Duration::from_secs(self.args.phase).min(max);
        let setup = Setup::new(t, &self.args, self.scenario, max).await?;
        let writer = t.connect_unary(1).await?.remove(0);
        let reg = Registration::start(t.connect_one().await?).await?;
        // Warm up, then half the idle baseline; the other half comes after
        // the hostile phase, so drift in a shared machine's load biases
        // neither side.
        put_for(&writer, Duration::from_millis(500)).await?;
        let (mut idle, _) = put_for(&writer, phase / 2).await?;

        let stop = Arc::new(AtomicBool::new(false));
        let hostile =
            apart(run_hostile(t.clone(), self.args.clone(), self.scenario, setup, stop.clone(), phase + max))?;
        let (during, put_errors) = put_for(&writer, phase).await?;
        stop.store(true, Ordering::Relaxed);
        let did = tokio::time::timeout(max, hostile)
            .await
            .context("the hostile client did not stop within --max-duration")?
            .context("the hostile client panicked")??;
        let (after, _) = put_for(&writer, phase - phase / 2).await?;
        idle.add(after).context("merging histograms")?;
        let lost = reg.lost.load(Ordering::Relaxed);
        reg.task.abort();

        let q = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
        let (p_idle, p_during) = (q(&idle), q(&during));
        let ratio = if p_idle > 0.0 { p_during / p_idle } else { f64::NAN };
        let mut o = Outcome::new(during, phase, put_errors + u64::from(lost));
        o.gauges = vec![Gauge { label: "p99 during/idle", value: ratio, unit: "x" }];
        o.note = format!(
            "writer p99 idle {p_idle:.2} ms -> during {p_during:.2} ms ({ratio:.2}x); idle p50 {:.2} ms; {did}{}",
            idle.value_at_quantile(0.5) as f64 / 1000.0,
            if lost { "; the registration's lease was LOST" } else { "" }
        );
        Ok(o)
    }
}

/// Runs the hostile client on a runtime and threads of its own, as a
/// separate client process would run it. On the writer's runtime, decoding
/// a 100,000-key range or a catch-up response would hold up the writer's
/// own tasks in this process, which measures the load generator, not the
/// server.
fn apart<T: Send + 'static>(
    f: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<Result<T>>> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("hostile").enable_all().build()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("hostile".into()).spawn(move || {
        let _ = tx.send(rt.block_on(f));
    })?;
    Ok(rx)
}

/// Sequential puts for `d`: their latencies, and errors.
async fn put_for(conn: &Conn, d: Duration) -> Result<(Histogram<u64>, u64)> {
    let mut hist = histogram();
    let (end, mut errors) = (Instant::now() + d, 0u64);
    let value = Bytes::from(vec![b'w'; 256]);
    let first = FirstError::default();
    for n in 0..MAX_PUTS {
        if Instant::now() >= end {
            break;
        }
        let req = PutRequest {
            key: Bytes::from(format!("{WRITER}{:03}", n % 100)),
            value: value.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), conn.call::<_, PutResponse>(KV_PUT, &req)).await {
            Ok(Ok(_)) => record_since(&mut hist, t0),
            Ok(Err(s)) => {
                errors += 1;
                first.status(&s);
            }
            Err(_) => bail!("a writer's put had no answer within 30 s"),
        }
    }
    if hist.is_empty() {
        bail!("the writer's puts all failed: {}", first.get().unwrap_or_default());
    }
    Ok((hist, errors))
}

/// A key on a short lease renewed every second, never re-registered.
struct Registration {
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    async fn start(ch: Channel) -> Result<Registration> {
        let mut lease = LeaseClient::new(ch.clone());
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl: REG_TTL, id: 0 })
            .await
            .context("cannot grant a lease")?
            .into_inner()
            .id;
        let put = PutRequest {
            key: "/bench/hostile/registration".into(),
            value: "127.0.0.1:1".into(),
            lease: id,
            ..Default::default()
        };
        KvClient::new(ch).put(put).await.context("cannot register")?;
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
        Ok(Registration { lost, task })
    }
}

/// What a scenario prepared before the idle phase.
enum Setup {
    None,
    /// The revision before the data keys were first written.
    Data {
        since: i64,
    },
    Leases(Vec<i64>),
}

impl Setup {
    async fn new(t: &Target, a: &Hostile, s: Scenario, max: Duration) -> Result<Setup> {
        Ok(match s {
            Scenario::Range | Scenario::CatchUp => Setup::Data { since: ensure_keys(t, a.keys, max).await? },
            Scenario::Keepalive => {
                let conns = t.connect(4).await?;
                Setup::Leases(keepalive::grant(&conns, a.leases, 600, max).await?)
            }
            Scenario::Unread | Scenario::Watches => Setup::None,
        })
    }
}

/// Writes `n` keys under [`DATA`] unless they are there already; the
/// revision before the first of them.
async fn ensure_keys(t: &Target, n: u64, max: Duration) -> Result<i64> {
    const TXN: u64 = 128;
    let conns = t.connect_unary(4).await?;
    let count = |c: Conn| async move {
        let end = roster_api::range::prefix_end(DATA.as_bytes());
        let req = RangeRequest { key: DATA.into(), range_end: end.into(), count_only: true, ..Default::default() };
        let r = c.call::<_, RangeResponse>(KV_RANGE, &req).await?;
        Ok::<_, tonic::Status>(r)
    };
    let before = count(conns[0].clone()).await.context("cannot count the data keys")?;
    if before.count as u64 >= n {
        // Written by an earlier run, by concurrent txns in any order: start
        // before the earliest created.
        let end = roster_api::range::prefix_end(DATA.as_bytes());
        let oldest = RangeRequest {
            key: DATA.into(),
            range_end: end.into(),
            limit: 1,
            sort_order: 1,  // ASCEND
            sort_target: 2, // CREATE
            keys_only: true,
            ..Default::default()
        };
        let r = conns[0].call::<_, RangeResponse>(KV_RANGE, &oldest).await?;
        return Ok(r.kvs.first().map_or(1, |kv| kv.create_revision - 1));
    }
    let since = before.header.map_or(1, |h| h.revision);
    eprintln!("   writing {n} keys under {DATA} in txns of {TXN}");
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max;
    let mut tasks = JoinSet::new();
    for c in conns {
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(TXN, Ordering::Relaxed);
                if start >= n || Instant::now() >= deadline {
                    return Ok::<_, tonic::Status>(());
                }
                let success = (start..(start + TXN).min(n))
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key(i),
                            value: Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
                            ..Default::default()
                        })),
                    })
                    .collect();
                c.call::<_, roster_api::etcdserverpb::TxnResponse>(
                    "/etcdserverpb.KV/Txn",
                    &TxnRequest { success, ..Default::default() },
                )
                .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a writing task failed")?.context("cannot write the data keys")?;
    }
    Ok(since)
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("{DATA}{i:09}"))
}

/// Runs the hostile client until `stop` (or `limit`); what it did, for the note.
async fn run_hostile(
    t: Target,
    a: Hostile,
    scenario: Scenario,
    setup: Setup,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> Result<String> {
    let end = Instant::now() + limit;
    let go = move || !stop.load(Ordering::Relaxed) && Instant::now() < end;
    match (scenario, setup) {
        (Scenario::Range, _) => range_loop(&t, a.keys, go).await,
        (Scenario::CatchUp, Setup::Data { since }) => catch_up(&t, a.keys, since, go).await,
        (Scenario::Keepalive, Setup::Leases(ids)) => flood(&t, ids, go).await,
        (Scenario::Watches, _) => many_watches(&t, a.watches, go).await,
        (Scenario::Unread, _) => unread(&t, a.unread_watches, go).await,
        (s, _) => bail!("{s:?} was not set up"),
    }
}

/// Full-keyspace ranges from 2 clients.
async fn range_loop(t: &Target, keys: u64, go: impl Fn() -> bool + Clone + Send + 'static) -> Result<String> {
    let conns = t.connect_unary(2).await?;
    let mut tasks = JoinSet::new();
    for c in conns {
        let go = go.clone();
        tasks.spawn(async move {
            let req = RangeRequest { key: "\0".into(), range_end: "\0".into(), ..Default::default() };
            let mut n = 0u64;
            while go() {
                let r = c.call::<_, RangeResponse>(KV_RANGE, &req).await?;
                if (r.count as u64) < keys {
                    return Err(tonic::Status::data_loss(format!("a full range counted {} keys", r.count)));
                }
                n += 1;
            }
            Ok(n)
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.context("a range task failed")??;
    }
    Ok(format!("{n} full ranges"))
}

/// Keepalives for every lease, as fast as 8 streams can send them, each
/// with at most [`FLOOD_WINDOW`] unanswered: without a window, a server
/// that reads faster than it answers (grpc-go grows its receive window)
/// would buffer a backlog that outlasts the phase by a minute.
async fn flood(t: &Target, ids: Vec<i64>, go: impl Fn() -> bool + Clone + Send + Sync + 'static) -> Result<String> {
    const STREAMS: usize = 8;
    const FLOOD_WINDOW: usize = 256;
    let conns = t.connect(STREAMS as u64).await?;
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (s, ch) in conns.into_iter().enumerate() {
        let mine: Vec<i64> = ids.iter().skip(s).step_by(STREAMS).copied().collect();
        let (go, lost) = (go.clone(), lost.clone());
        tasks.spawn(async move {
            let (tx, rx) = mpsc::channel(16);
            let window = Arc::new(tokio::sync::Semaphore::new(FLOOD_WINDOW));
            // Sending first: etcd sends its response headers only with its
            // first answer.
            let sender = tokio::spawn({
                let window = window.clone();
                async move {
                    for id in mine.iter().cycle() {
                        let Ok(place) = window.acquire().await else { return };
                        place.forget();
                        if !go() || tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let mut stream = LeaseClient::new(ch).lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
            let mut got = 0u64;
            while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                window.add_permits(1);
                if r.ttl <= 0 {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                got += 1;
            }
            sender.abort();
            Ok::<_, tonic::Status>(got)
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.context("a keepalive task failed")??;
    }
    // Revoked, so they never expire under a later scenario's writer.
    let n_leases = ids.len();
    keepalive::revoke(&t.connect(4).await?, ids).await;
    let lost = lost.load(Ordering::Relaxed);
    Ok(format!(
        "{n} renewals of {n_leases} leases{}",
        if lost > 0 { format!(", {lost} answered TTL 0") } else { String::new() }
    ))
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

/// One watch stream over raw HTTP/2 with `n` watches on the writer's keys,
/// whose answers are never read: the server's sends stop at the flow
/// control window.
async fn unread(t: &Target, n: u64, go: impl Fn() -> bool) -> Result<String> {
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.with_context(|| format!("cannot connect to {}", t.addr))?;
    let (send, conn) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
    let driver = tokio::spawn(conn);
    let mut send = send.ready().await.context("HTTP/2 connection")?;
    let req = http::Request::post(format!("http://{}/etcdserverpb.Watch/Watch", t.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .context("watch request")?;
    let (answer, mut body) = send.send_request(req, false).context("cannot open the watch stream")?;
    let end = roster_api::range::prefix_end(WRITER.as_bytes());
    for _ in 0..n {
        let m = create(WRITER.into(), end.clone().into(), 0);
        let mut buf = BytesMut::with_capacity(5 + prost::Message::encoded_len(&m));
        buf.put_u8(0);
        buf.put_u32(prost::Message::encoded_len(&m) as u32);
        prost::Message::encode(&m, &mut buf).context("encode")?;
        body.send_data(buf.freeze(), false).context("cannot send a watch create")?;
    }
    while go() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((answer, body));
    driver.abort();
    Ok(format!("{n} watches on a stream never read"))
}

/// `n` single-key watches on keys nobody writes, on one stream: created,
/// then held.
async fn many_watches(t: &Target, n: u64, go: impl Fn() -> bool) -> Result<String> {
    let ch = t.connect_one().await?;
    let (tx, rx) = mpsc::channel(1024);
    // Sending before the stream is open: etcd sends its response headers
    // only with its first answer.
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let key = Bytes::from(format!("/bench/hostile/idle/{i:09}"));
            if tx.send(create(key, Bytes::new(), 0)).await.is_err() {
                return None;
            }
        }
        Some(tx)
    });
    let started = Instant::now();
    let mut stream = WatchClient::new(ch).watch(ReceiverStream::new(rx)).await?.into_inner();
    let mut created = 0u64;
    while created < n && go() {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(Ok(Some(r))) if r.created => created += 1,
            Ok(Ok(Some(_))) => {}
            Ok(other) => bail!("the watch stream ended after {created} creates: {other:?}"),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    while go() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.abort();
    Ok(if created == n {
        format!("{n} watches created in {:.1} s, then held", took.as_secs_f64())
    } else {
        format!("only {created} of {n} watches created during the phase")
    })
}

/// Watches replaying the `keys` data events from `since`, one after
/// another on new streams.
async fn catch_up(t: &Target, keys: u64, since: i64, go: impl Fn() -> bool) -> Result<String> {
    let ch = t.connect_one().await?;
    let end = roster_api::range::prefix_end(DATA.as_bytes());
    let (mut replays, mut partial) = (0u64, 0u64);
    while go() {
        let (tx, rx) = mpsc::channel(1);
        tx.send(create(DATA.into(), end.clone().into(), since + 1)).await?;
        let mut stream = WatchClient::new(ch.clone())
            .max_decoding_message_size(usize::MAX)
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut events = 0u64;
        while events < keys && go() {
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Ok(Some(r))) if r.canceled => bail!("the catch-up watch was canceled: {}", r.cancel_reason),
                Ok(Ok(Some(r))) => events += r.events.len() as u64,
                Ok(other) => bail!("the catch-up stream ended after {events} events: {other:?}"),
                Err(_) => {}
            }
        }
        if events >= keys {
            replays += 1;
        } else {
            partial += 1;
        }
    }
    Ok(format!("{replays} replays of {keys} events{}", if partial > 0 { " (and one cut short)" } else { "" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        h: Hostile,
    }

    #[test]
    fn scenarios_default_to_all_in_a_fixed_order() {
        let all = Cli::parse_from(["x"]).h;
        assert_eq!(all.scenarios(), Scenario::value_variants());
        let some = Cli::parse_from(["x", "--scenario", "catch-up,range"]).h;
        assert_eq!(some.scenarios(), [Scenario::Range, Scenario::CatchUp]);
        let names: Vec<String> = some.workloads().iter().map(Workload::name).collect();
        assert_eq!(names, ["hostile range 100000", "hostile catch-up 100000"]);
        assert!(Cli::try_parse_from(["x", "--scenario", "nope"]).is_err());
    }
}
