//! The hello system end to end, against `roster serve` (in process) and
//! against real etcd: processes that register and die, balanced calls that
//! route around a killed instance, and a new instance joining.

use hello::pb::hello_client::HelloClient;
use roster::balance::Policy;
use roster::grpc::{Channel, ChannelConfig, RetryPolicy};
use roster::{Client, ClientConfig, Discovery, Instance, Registry};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::codegen::StdError;

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A registry to run against: an in-process `roster serve` or a real etcd.
enum Backend {
    Roster(Box<roster_testkit::InProcess>),
    Etcd(roster_testkit::Etcd),
}

impl Backend {
    async fn roster() -> Backend {
        Backend::Roster(Box::new(roster_testkit::InProcess::start().await))
    }

    async fn etcd() -> Option<Backend> {
        init_log();
        roster_testkit::require_etcd()?;
        Some(Backend::Etcd(roster_testkit::Etcd::start().await))
    }

    fn endpoint(&self) -> String {
        match self {
            Backend::Roster(r) => r.endpoint(),
            Backend::Etcd(e) => e.endpoint(),
        }
    }

    fn registry(&self) -> Registry {
        let mut cfg = ClientConfig::new([self.endpoint()]);
        cfg.request_timeout = Duration::from_secs(3);
        Registry::new(Client::new(cfg).unwrap())
    }
}

/// A `hello-server` process, killed by its PID when dropped.
struct HelloProc {
    child: Child,
    id: String,
}

impl HelloProc {
    fn spawn(backend: &Backend, id: &str, ttl: u64) -> HelloProc {
        Self::spawn_on(backend, id, ttl, 0)
    }

    /// On a given port (0: any), so that a restart keeps the address.
    fn spawn_on(backend: &Backend, id: &str, ttl: u64, port: u16) -> HelloProc {
        let child = Command::new(env!("CARGO_BIN_EXE_hello-server"))
            .args([
                "--endpoints",
                &backend.endpoint(),
                "--id",
                id,
                "--ttl",
                &ttl.to_string(),
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hello-server");
        HelloProc { child, id: id.to_owned() }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for HelloProc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

async fn wait_until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    roster_testkit::eventually(what, limit, || std::future::ready(f())).await
}

fn listed(d: &Discovery, id: &str) -> bool {
    d.instances().iter().any(|i| i.id == id)
}

// === a process that dies, or stops cleanly ===

async fn dead_process_leaves_within_ttl(backend: Backend) {
    let ttl = 3;
    let d = backend.registry().discover(hello::SERVICE);
    d.ready().await;
    let mut p = HelloProc::spawn(&backend, "doomed", ttl);
    wait_until("registered", Duration::from_secs(10), || listed(&d, &p.id)).await;
    p.kill_9();
    let took = wait_until("dropped after kill -9", Duration::from_secs(ttl + 1), || !listed(&d, "doomed")).await;
    eprintln!("instance dropped {took:?} after kill -9 (TTL {ttl}s)");
}

async fn sigterm_removes_at_once(backend: Backend) {
    let d = backend.registry().discover(hello::SERVICE);
    d.ready().await;
    let mut p = HelloProc::spawn(&backend, "clean", 10);
    wait_until("registered", Duration::from_secs(10), || listed(&d, &p.id)).await;
    p.sigterm();
    let took = wait_until("dropped after SIGTERM", Duration::from_secs(2), || !listed(&d, "clean")).await;
    assert!(took < Duration::from_secs(1), "SIGTERM must revoke the lease, not wait for the TTL ({took:?})");
    let exited = tokio::task::spawn_blocking(move || p.child.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "hello-server exits cleanly on SIGTERM: {exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_process_leaves_within_ttl_roster() {
    dead_process_leaves_within_ttl(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_process_leaves_within_ttl_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    dead_process_leaves_within_ttl(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_at_once_roster() {
    sigterm_removes_at_once(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_at_once_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    sigterm_removes_at_once(b).await;
}

// === balanced calls ===

async fn kill_9_traffic_moves_before_ttl(backend: Backend) {
    let registry = backend.registry();
    let d = registry.discover(hello::SERVICE);
    d.ready().await;
    let mut procs: Vec<HelloProc> = (0..3).map(|i| HelloProc::spawn(&backend, &format!("h{i}"), 10)).collect();
    wait_until("three instances", Duration::from_secs(10), || d.instances().len() == 3).await;
    let config = ChannelConfig { policy: Policy::RoundRobin, ..Default::default() };
    let mut client = HelloClient::new(Channel::new(d.clone(), config).unwrap());
    let mut tally = hello::Tally::default();
    for _ in 0..30 {
        tally.record(&hello::say(&mut client, "t", Duration::from_secs(2)).await);
    }
    assert_eq!((tally.by_instance.len(), tally.errors), (3, 0), "{}", tally.line());

    procs[1].kill_9();
    let killed = Instant::now();
    let mut after = hello::Tally::default();
    for _ in 0..60 {
        after.record(&hello::say(&mut client, "t", Duration::from_secs(2)).await);
    }
    let elapsed = killed.elapsed();
    assert_eq!(
        after.errors,
        0,
        "no call fails: those the dead instance would take are sent elsewhere: {}",
        after.line()
    );
    assert_eq!(after.by_instance.get("h1").copied().unwrap_or(0), 0, "{}", after.line());
    assert_eq!(after.by_instance.values().sum::<u64>(), 60 - after.errors);
    assert!(elapsed < Duration::from_secs(10), "all of this happens well before the 10 s TTL ({elapsed:?})");
    assert!(listed(&d, "h1"), "the lease has not expired yet: ejection, not discovery, moved the traffic");
}

async fn new_server_gets_calls_within_100ms(backend: Backend) {
    let registry = backend.registry();
    let d = registry.discover(hello::SERVICE);
    d.ready().await;
    let _procs: Vec<HelloProc> = (0..2).map(|i| HelloProc::spawn(&backend, &format!("old{i}"), 10)).collect();
    wait_until("two instances", Duration::from_secs(10), || d.instances().len() == 2).await;
    let mut client = HelloClient::new(
        Channel::new(d.clone(), ChannelConfig { policy: Policy::RoundRobin, ..Default::default() }).unwrap(),
    );

    // A fourth server, in process so we know the moment it is registered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(hello::serve(listener, "new".into(), async {
        let _ = stopped.await;
    }));
    let (seen_tx, seen_rx) = oneshot::channel::<Instant>();
    let caller = tokio::spawn(async move {
        let mut seen_tx = Some(seen_tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(id) = hello::say(&mut client, "t", Duration::from_secs(1)).await
                && id == "new"
            {
                let _ = seen_tx.take().expect("once").send(Instant::now());
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let reg = registry.register(Instance::new(hello::SERVICE, addr).with_id("new")).await.unwrap();
    let registered = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(10), seen_rx).await.expect("new server reached").unwrap();
    let took = first.saturating_duration_since(registered);
    eprintln!("new server answered {took:?} after registering");
    assert!(took < Duration::from_millis(100), "new server must get calls within 100 ms ({took:?})");
    caller.abort();
    reg.deregister().await.unwrap();
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_traffic_moves_before_ttl_roster() {
    kill_9_traffic_moves_before_ttl(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_traffic_moves_before_ttl_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    kill_9_traffic_moves_before_ttl(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_server_gets_calls_within_100ms_roster() {
    new_server_gets_calls_within_100ms(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_server_gets_calls_within_100ms_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    new_server_gets_calls_within_100ms(b).await;
}

// === kill -9 under load, and half-open probing: not one failed call ===

/// Calls `Say` in a loop until `stop`, counting answers before and after
/// `killed` was set; bounded by `limit`.
async fn call_until<T>(
    mut client: HelloClient<T>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> (hello::Tally, hello::Tally)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<StdError> + Send,
    T::Future: Send,
{
    let (mut before, mut after) = (hello::Tally::default(), hello::Tally::default());
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
        let mut req = tonic::Request::new(hello::pb::SayRequest { name: "load".into() });
        req.set_timeout(Duration::from_secs(2));
        let r = client.say(req).await.map(|r| r.into_inner().instance);
        if let Err(s) = &r {
            eprintln!("call failed: {s:?}");
        }
        if killed.load(Ordering::Relaxed) {
            after.record(&r)
        } else {
            before.record(&r)
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (before, after)
}

/// A gateway in process over `backend`, routing `hello.Hello` to `hello`.
async fn gateway(backend: &Backend) -> (String, oneshot::Sender<()>) {
    let config =
        roster_gateway::Config::parse("[[route]]\nservice = \"hello\"\ngrpc = [\"hello.Hello\"]\n", "test").unwrap();
    let gw = roster_gateway::Gateway::new(backend.registry(), config);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = gw
            .serve(l, None, Duration::from_secs(1), async {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx)
}

fn merge(into: &mut hello::Tally, t: hello::Tally) {
    for (k, v) in t.by_instance {
        *into.by_instance.entry(k).or_default() += v;
    }
    into.errors += t.errors;
}

/// Three hello processes under steady load from two clients, one through
/// `roster::grpc` and one through the gateway; one process is killed with
/// `kill -9` and the load goes on past its lease's TTL. Not one call may
/// fail on either client, and the two survivors share the calls.
///
/// `Say` is marked idempotent for the SDK client (as the gateway treats
/// gRPC): a call in flight on the instance when it dies did reach it, so
/// only a retry policy may send it again. Every other call the dead
/// instance would have failed (its half-open probes, calls on a connection
/// not yet known to be dead) never reaches it and is retried
/// transparently.
async fn kill_9_under_load_fails_no_call(backend: Backend) {
    let ttl = 2;
    let registry = backend.registry();
    let d = registry.discover(hello::SERVICE);
    d.ready().await;
    let mut procs: Vec<HelloProc> = (0..3).map(|i| HelloProc::spawn(&backend, &format!("k{i}"), ttl)).collect();
    wait_until("three instances", Duration::from_secs(10), || d.instances().len() == 3).await;
    let config = ChannelConfig {
        policy: Policy::RoundRobin,
        retry_policies: vec![RetryPolicy::idempotent(["/hello.Hello/Say"])],
        ..Default::default()
    };
    let sdk = HelloClient::new(Channel::new(d.clone(), config).unwrap());
    let (gw_addr, _gw_stop) = gateway(&backend).await;
    let gw =
        HelloClient::new(tonic::transport::Endpoint::from_shared(format!("http://{gw_addr}")).unwrap().connect_lazy());

    let (killed, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let limit = Duration::from_secs(30);
    let mut sdk_callers = Vec::new();
    let mut gw_callers = Vec::new();
    for _ in 0..3 {
        sdk_callers.push(tokio::spawn(call_until(sdk.clone(), killed.clone(), stop.clone(), limit)));
        gw_callers.push(tokio::spawn(call_until(gw.clone(), killed.clone(), stop.clone(), limit)));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    killed.store(true, Ordering::Relaxed);
    procs[0].kill_9();
    let took =
        wait_until("the killed instance's lease expires", Duration::from_secs(ttl + 5), || !listed(&d, "k0")).await;
    eprintln!("k0 left discovery {took:?} after kill -9 (TTL {ttl}s)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    for (name, callers) in [("roster::grpc", sdk_callers), ("gateway", gw_callers)] {
        let (mut before, mut after) = (hello::Tally::default(), hello::Tally::default());
        for c in callers {
            let (b, a) = c.await.unwrap();
            merge(&mut before, b);
            merge(&mut after, a);
        }
        eprintln!("{name}: before the kill {}; after {}", before.line(), after.line());
        assert_eq!(
            (before.errors, after.errors),
            (0, 0),
            "{name}: no call may fail; before {}; after {}",
            before.line(),
            after.line()
        );
        assert_eq!(before.by_instance.len(), 3, "{name}: all three answered before the kill: {}", before.line());
        let (k1, k2) =
            (after.by_instance.get("k1").copied().unwrap_or(0), after.by_instance.get("k2").copied().unwrap_or(0));
        let total: u64 = after.by_instance.values().sum();
        assert!(total >= 100, "{name}: the load went on after the kill: {}", after.line());
        assert!(k1 * 4 >= total && k2 * 4 >= total, "{name}: the survivors share the calls: {}", after.line());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_fails_no_call_roster() {
    kill_9_under_load_fails_no_call(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_fails_no_call_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    kill_9_under_load_fails_no_call(b).await;
}

/// A free loopback port (closed again; a process is about to take it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An instance that dies while still listed is ejected and probed
/// half-open every few hundred ms; each probe is a real call, refused, and
/// sent to another instance, so no call fails. Started again on its
/// address, it is readmitted by the next probe. No retry policy: only
/// transparent retries.
async fn an_instance_down_then_back_is_readmitted_and_fails_no_call(backend: Backend) {
    let registry = backend.registry();
    let d = registry.discover(hello::SERVICE);
    d.ready().await;
    let port = free_port();
    let mut back = HelloProc::spawn_on(&backend, "b0", 30, port);
    let _others: Vec<HelloProc> = (1..3).map(|i| HelloProc::spawn(&backend, &format!("b{i}"), 30)).collect();
    wait_until("three instances", Duration::from_secs(10), || d.instances().len() == 3).await;
    let health = roster::balance::HealthConfig {
        base_ejection: Duration::from_millis(100),
        max_ejection: Duration::from_millis(300),
        ..Default::default()
    };
    let mut client = HelloClient::new(
        Channel::new(d.clone(), ChannelConfig { policy: Policy::RoundRobin, health, ..Default::default() }).unwrap(),
    );
    let mut tally = hello::Tally::default();
    for _ in 0..30 {
        tally.record(&hello::say(&mut client, "t", Duration::from_secs(2)).await);
    }
    assert_eq!((tally.by_instance.len(), tally.errors), (3, 0), "{}", tally.line());

    back.kill_9();
    // Let the client see the connection close: a call racing it was in
    // flight on the instance, which only a retry policy may send again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut down = hello::Tally::default();
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(2) {
        down.record(&hello::say(&mut client, "t", Duration::from_secs(2)).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        down.errors,
        0,
        "no call fails while the instance is down (about ten probes were made): {}",
        down.line()
    );
    assert_eq!(down.by_instance.get("b0"), None, "{}", down.line());
    assert!(listed(&d, "b0"), "the lease is alive: the channel, not discovery, kept calls away");

    let _back = HelloProc::spawn_on(&backend, "b0", 30, port);
    let restarted = Instant::now();
    let mut up = hello::Tally::default();
    while up.by_instance.get("b0").copied().unwrap_or(0) < 5 {
        assert!(restarted.elapsed() < Duration::from_secs(10), "b0 was not readmitted within 10 s: {}", up.line());
        up.record(&hello::say(&mut client, "t", Duration::from_secs(2)).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("b0 answered again {:?} after its restart; while down: {}", restarted.elapsed(), down.line());
    assert_eq!(up.errors, 0, "{}", up.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_down_then_back_is_readmitted_and_fails_no_call_roster() {
    an_instance_down_then_back_is_readmitted_and_fails_no_call(Backend::roster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_down_then_back_is_readmitted_and_fails_no_call_etcd() {
    let Some(b) = Backend::etcd().await else { return };
    an_instance_down_then_back_is_readmitted_and_fails_no_call(b).await;
}
