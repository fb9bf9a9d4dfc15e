//! SDK health checks: an instance is withdrawn while its check fails and
//! back when it passes, with rise and fall counted in a row. The HTTP, TCP
//! and gRPC checks probe real listeners on loopback that the test flips.

use crate::support::Server;
use roster::health::{Check, HealthCheck};
use roster::{Discovery, Instance, Registration, RegistrationStatus, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(5);

async fn listed(d: &Discovery, id: &str, want: bool) {
    let what = format!("{id} {}", if want { "listed" } else { "withdrawn" });
    roster_testkit::eventually(&what, WAIT, async || d.instances().iter().any(|i| i.id == id) == want).await;
}

fn status(reg: &Registration) -> RegistrationStatus {
    reg.status().borrow().clone()
}

/// A custom check whose every probe the test lets through one at a time,
/// so the exact number of passes and failures is known.
struct Stepped {
    passing: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    done: Arc<AtomicU32>,
}

impl Stepped {
    fn new() -> (Stepped, Check) {
        let s = Stepped {
            passing: Arc::new(AtomicBool::new(true)),
            gate: Arc::new(Semaphore::new(0)),
            done: Arc::new(AtomicU32::new(0)),
        };
        let (passing, gate, done) = (s.passing.clone(), s.gate.clone(), s.done.clone());
        let check = Check::custom(move || {
            let (passing, gate, done) = (passing.clone(), gate.clone(), done.clone());
            async move {
                gate.acquire().await.expect("the gate stays open").forget();
                let pass = passing.load(Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                if pass { Ok(()) } else { Err("flipped to failing".into()) }
            }
        });
        (s, check)
    }

    /// Lets one probe run with the given outcome and waits until it has.
    async fn probe(&self, pass: bool) {
        self.passing.store(pass, Ordering::SeqCst);
        let want = self.done.load(Ordering::SeqCst) + 1;
        self.gate.add_permits(1);
        let done = self.done.clone();
        roster_testkit::eventually("the probe ran", WAIT, async || done.load(Ordering::SeqCst) >= want).await;
        // The verdict travels through the task; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_check_withdraws_after_fall_failures_in_a_row_and_restores_after_rise_passes() {
    let server = Server::start(None).await;
    let registry = server.registry(5);
    let d = registry.discover("svc");
    d.ready().await;
    let (step, check) = Stepped::new();
    let check = HealthCheck::new(check)
        .with_interval(Duration::from_millis(10))
        .with_timeout(Duration::from_secs(30))
        .with_rise(2)
        .with_fall(3);
    step.gate.add_permits(1); // the first probe decides: it passes
    let reg = registry.register_checked(Instance::new("svc", "127.0.0.1:1").with_id("c"), check).await.unwrap();
    reg.registered(WAIT).await.unwrap();
    listed(&d, "c", true).await;

    // Two failures, a pass (which breaks the run), two failures: never three
    // in a row, so it stays.
    for pass in [false, false, true, false, false] {
        step.probe(pass).await;
        assert!(
            matches!(status(&reg), RegistrationStatus::Registered { .. }),
            "withdrawn before fall=3 failures in a row: {:?}",
            status(&reg)
        );
    }
    step.probe(false).await;
    listed(&d, "c", false).await;
    assert!(
        matches!(status(&reg), RegistrationStatus::Unhealthy { reason } if reason.contains("flipped to failing")),
        "{:?}",
        status(&reg)
    );

    // One pass, a failure, one pass: not two in a row, so it stays out.
    for pass in [true, false, true] {
        step.probe(pass).await;
        assert!(
            matches!(status(&reg), RegistrationStatus::Unhealthy { .. }),
            "restored before rise=2 passes in a row: {:?}",
            status(&reg)
        );
        assert!(!d.instances().iter().any(|i| i.id == "c"));
    }
    step.probe(true).await;
    reg.registered(WAIT).await.unwrap();
    listed(&d, "c", true).await;

    // A user pause outlives a passing check; resume brings it back.
    reg.pause().await.unwrap();
    step.probe(true).await;
    step.probe(true).await;
    assert_eq!(status(&reg), RegistrationStatus::Paused);
    listed(&d, "c", false).await;
    reg.resume().await.unwrap();
    reg.registered(WAIT).await.unwrap();
    listed(&d, "c", true).await;
    reg.deregister().await.unwrap();
    listed(&d, "c", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_first_probe_fails_is_not_registered_until_it_passes() {
    let server = Server::start(None).await;
    let registry = server.registry(5);
    let d = registry.discover("svc");
    d.ready().await;
    let (step, check) = Stepped::new();
    let check = HealthCheck::new(check)
        .with_interval(Duration::from_millis(10))
        .with_timeout(Duration::from_secs(30))
        .with_rise(2)
        .with_fall(1);
    let registering = tokio::spawn({
        let registry = registry.clone();
        async move { registry.register_checked(Instance::new("svc", "127.0.0.1:1").with_id("late"), check).await.unwrap() }
    });
    step.probe(false).await;
    let reg = registering.await.unwrap();
    assert!(matches!(status(&reg), RegistrationStatus::Unhealthy { .. }), "{:?}", status(&reg));
    assert!(d.instances().is_empty(), "listed before any probe passed");
    step.probe(true).await;
    assert!(d.instances().is_empty(), "rise=2: one pass is not enough");
    step.probe(true).await;
    listed(&d, "late", true).await;
}

/// A registry with one instance on `check` (rise 2, fall 2, every 50 ms).
async fn checked(registry: &Registry, id: &str, check: Check) -> Registration {
    let check = HealthCheck::new(check)
        .with_interval(Duration::from_millis(50))
        .with_timeout(Duration::from_millis(500))
        .with_rise(2)
        .with_fall(2);
    registry.register_checked(Instance::new("svc", "127.0.0.1:1").with_id(id), check).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_follows_a_listener_that_comes_and_goes() {
    let server = Server::start(None).await;
    let registry = server.registry(5);
    let d = registry.discover("svc");
    d.ready().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _reg = checked(&registry, "tcp", Check::Tcp(addr.to_string())).await;
    listed(&d, "tcp", true).await;
    drop(listener);
    listed(&d, "tcp", false).await;
    let _listener = TcpListener::bind(addr).await.unwrap();
    listed(&d, "tcp", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_follows_the_status_the_server_answers() {
    let server = Server::start(None).await;
    let registry = server.registry(5);
    let d = registry.discover("svc");
    d.ready().await;
    let healthy = Arc::new(AtomicBool::new(true));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = healthy.clone();
    let http = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let ok = h.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = if ok { "HTTP/1.1 200 OK" } else { "HTTP/1.1 503 Service Unavailable" };
                let _ =
                    s.write_all(format!("{head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await;
            });
        }
    });
    let _reg = checked(&registry, "http", Check::parse(&format!("http://{addr}/healthz")).unwrap()).await;
    listed(&d, "http", true).await;
    healthy.store(false, Ordering::SeqCst);
    listed(&d, "http", false).await;
    healthy.store(true, Ordering::SeqCst);
    listed(&d, "http", true).await;
    http.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_check_follows_the_serving_status() {
    use tonic_health::ServingStatus;
    let server = Server::start(None).await;
    let registry = server.registry(5);
    let d = registry.discover("svc");
    d.ready().await;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("hello.Greeter", ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let _reg = checked(&registry, "grpc", Check::parse(&format!("grpc://{addr}/hello.Greeter")).unwrap()).await;
    listed(&d, "grpc", true).await;
    reporter.set_service_status("hello.Greeter", ServingStatus::NotServing).await;
    listed(&d, "grpc", false).await;
    reporter.set_service_status("hello.Greeter", ServingStatus::Serving).await;
    listed(&d, "grpc", true).await;
    grpc.abort();
}
