//! The hello system end to end, against `roster serve` (in process) and
//! against real etcd: processes that register and die, balanced calls that
//! route around a killed instance, and a new instance joining.

use hello::pb::hello_client::HelloClient;
use roster::balance::Policy;
use roster::grpc::{Channel, ChannelConfig};
use roster::{Client, ClientConfig, Discovery, Instance, Registry};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

fn init_log() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
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
        let child = Command::new(env!("CARGO_BIN_EXE_hello-server"))
            .args(["--endpoints", &backend.endpoint(), "--id", id, "--ttl", &ttl.to_string()])
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
    assert!(after.errors <= 1, "only the first call to the dead instance may fail: {}", after.line());
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
    let mut client = HelloClient::new(Channel::new(d.clone(), ChannelConfig { policy: Policy::RoundRobin, ..Default::default() }).unwrap());

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
                && id == "new" {
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
