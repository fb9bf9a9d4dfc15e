//! What the SDK's integration tests share: the in-process `roster serve`
//! and the polling helper of `roster-testkit`, with SDK clients on top.

use roster::{Client, ClientConfig, Registry};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use roster_testkit::InProcess;

/// An in-process registry server on a fixed loopback address, restartable.
pub struct Server(InProcess);

impl Server {
    pub async fn start(data: Option<PathBuf>) -> Server {
        Server(match data {
            Some(dir) => InProcess::start_in(dir).await,
            None => InProcess::start().await,
        })
    }

    pub async fn stop(&mut self) {
        let _ = self.0.stop().await;
    }

    pub fn client(&self) -> Client {
        client_with_timeout(&self.endpoint(), Duration::from_secs(2))
    }

    pub fn registry(&self, ttl: u64) -> Registry {
        Registry::new(self.client()).with_ttl(Duration::from_secs(ttl))
    }
}

impl Deref for Server {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut InProcess {
        &mut self.0
    }
}

/// [`roster_testkit::eventually`] for a plain condition.
pub async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    roster_testkit::eventually(what, limit, || std::future::ready(f())).await
}

pub fn client(endpoint: &str) -> Client {
    client_with_timeout(endpoint, Duration::from_secs(3))
}

fn client_with_timeout(endpoint: &str, timeout: Duration) -> Client {
    let mut cfg = ClientConfig::new([endpoint.to_owned()]);
    cfg.request_timeout = timeout;
    Client::new(cfg).unwrap()
}

/// Runs `scenario` against an in-process roster, then a real etcd.
pub async fn on_roster_and_etcd<F, Fut>(scenario: F)
where
    F: Fn(&'static str, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = Server::start(None).await;
    scenario("roster", server.endpoint()).await;
    if roster_testkit::require_etcd().is_some() {
        let etcd = roster_testkit::Etcd::start().await;
        scenario("etcd", etcd.endpoint()).await;
    }
}

/// Reads `stream` on a thread of its own that polls without pause, calling
/// `check` on each item until `count` items or 30 s. A reader that is
/// always running sees an item the moment it is sent, so an item announced
/// before the state it describes is stored gets caught reading that state.
pub fn spin_read<S, F>(stream: S, count: usize, mut check: F) -> std::thread::JoinHandle<()>
where
    S: tokio_stream::Stream + Send + 'static,
    F: FnMut(usize, S::Item) + Send + 'static,
{
    std::thread::spawn(move || {
        let mut stream = Box::pin(stream);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let until = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while n < count {
            match stream.as_mut().poll_next(&mut cx) {
                std::task::Poll::Ready(Some(item)) => {
                    check(n, item);
                    n += 1;
                }
                std::task::Poll::Ready(None) => panic!("the stream ended after {n} of {count} items"),
                std::task::Poll::Pending => {
                    assert!(Instant::now() < until, "only {n} of {count} items within 30 s");
                    std::hint::spin_loop();
                }
            }
        }
    })
}
