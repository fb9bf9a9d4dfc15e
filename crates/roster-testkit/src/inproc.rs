//! `roster serve` inside the test process: the registry every crate's
//! integration tests start, on `127.0.0.1:0` with its HTTP side (health,
//! `/metrics`) on a second port.

use roster_server::{ServerConfig, ServerError};
use roster_store::{Store, StoreConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// An in-process registry server, stopped on drop. With a data directory
/// it is durable and [`restart`](InProcess::restart) keeps what it held;
/// it restarts on the same ports.
pub struct InProcess {
    grpc: SocketAddr,
    http: SocketAddr,
    data: Option<PathBuf>,
    config: ServerConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl InProcess {
    /// An in-memory server with the default config.
    pub async fn start() -> InProcess {
        Self::start_with(None, ServerConfig::default(), Store::in_memory()).await
    }

    /// A durable server keeping its data in `dir`.
    pub async fn start_in(dir: impl Into<PathBuf>) -> InProcess {
        let dir = dir.into();
        let store = open(&dir);
        Self::start_with(Some(dir), ServerConfig::default(), store).await
    }

    /// A server over `store` with `config` (its `client_urls` set to the
    /// bound address); `data` is where `store` keeps its files, if
    /// anywhere, for restarts.
    pub async fn start_with(data: Option<PathBuf>, mut config: ServerConfig, store: Store) -> InProcess {
        let grpc_l = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let http_l = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let (grpc, http) = (grpc_l.local_addr().unwrap(), http_l.local_addr().unwrap());
        // MemberList advertises where this member really is.
        config.client_urls = vec![format!("http://{grpc}")];
        let mut s = InProcess { grpc, http, data, config, stop: None, task: None };
        s.serve(grpc_l, http_l, store);
        s
    }

    fn serve(&mut self, grpc: TcpListener, http: TcpListener, store: Store) {
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        let shutdown = async move {
            let _ = rx.await;
        };
        self.task = Some(tokio::spawn(roster_server::serve(grpc, Some(http), store, self.config.clone(), shutdown)));
    }

    /// Stops serving (within the config's grace, plus a little) and says how
    /// `serve` ended.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let limit = self.config.shutdown_grace + Duration::from_secs(5);
        tokio::time::timeout(limit, task).await.expect("serve returned within its grace").expect("serve did not panic")
    }

    /// Stops and serves again on the same ports: with a data directory from
    /// what is on disk, otherwise from an empty store.
    pub async fn restart(&mut self) {
        let _ = self.stop().await;
        let store = match &self.data {
            Some(dir) => open(dir),
            None => Store::in_memory(),
        };
        let grpc = TcpListener::bind(self.grpc).await.expect("rebind the gRPC port");
        let http = TcpListener::bind(self.http).await.expect("rebind the HTTP port");
        self.serve(grpc, http, store);
    }

    /// `host:port` of the gRPC side, as clients take it.
    pub fn endpoint(&self) -> String {
        self.grpc.to_string()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// `http://host:port` of the HTTP side (health, metrics).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A connected tonic channel to the gRPC side.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("connect to the in-process server")
    }

    /// One sample of `/metrics`: the value of the series named exactly
    /// `series` (with its labels, if it has any), `None` if absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = crate::http_get(self.http, "/metrics").await.ok()?;
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig { data_dir: Some(dir.to_path_buf()), ..Default::default() }).expect("open the store")
}
