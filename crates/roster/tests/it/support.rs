//! What the SDK's integration tests share: an in-process `roster serve`.

use roster::{Client, ClientConfig, Registry};
use roster_store::{Store, StoreConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// An in-process registry server on a fixed loopback address, restartable.
pub struct Server {
    addr: SocketAddr,
    data: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(data: Option<PathBuf>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Server { addr, data, stop: None, task: None };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let store = match &self.data {
            Some(dir) => Store::open(StoreConfig { data_dir: Some(dir.clone()), ..Default::default() }).unwrap(),
            None => Store::in_memory(),
        };
        let (tx, rx) = oneshot::channel();
        let config = roster_server::ServerConfig::default();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            roster_server::serve(listener, None, store, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }));
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn client(&self) -> Client {
        let mut cfg = ClientConfig::new([self.endpoint()]);
        cfg.request_timeout = Duration::from_secs(2);
        Client::new(cfg).unwrap()
    }

    pub fn registry(&self, ttl: u64) -> Registry {
        let mut cfg = ClientConfig::new([self.endpoint()]);
        cfg.request_timeout = Duration::from_secs(2);
        Registry::new(Client::new(cfg).unwrap()).with_ttl(Duration::from_secs(ttl))
    }
}

pub async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}


pub fn client(endpoint: &str) -> Client {
    let mut cfg = ClientConfig::new([endpoint.to_owned()]);
    cfg.request_timeout = Duration::from_secs(3);
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
