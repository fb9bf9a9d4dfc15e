//! An etcd v3 API client with multi-endpoint failover.
//!
//! Every unary call has a timeout. A call that fails because its endpoint is
//! unreachable moves on to the next endpoint; the client then stays there.
//! Streams (watch, keepalive) are opened on the current endpoint, and their
//! owners reconnect through [`Client`] when they break. Watches carry the
//! `hasleader` metadata so that an etcd member cut off from its cluster
//! refuses them instead of hanging.

use crate::error::{Error, Result};
use roster_api::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, *,
};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Where and how to reach the registry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`, `http://host:port` or (with the `tls` feature) `https://host:port`.
    pub endpoints: Vec<String>,
    /// Limit on each unary call, failover included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS for `https://` endpoints.
    #[cfg(feature = "tls")]
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientConfig { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// Parses a comma-separated endpoint list, as `--endpoints` takes it.
    pub fn from_list(list: &str) -> Self {
        Self::new(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }
}

/// A cheap `Clone` handle; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<(String, Channel)>,
    /// Index of the endpoint that last worked.
    current: AtomicUsize,
    config: ClientConfig,
}

/// A watch stream: send create/cancel requests, read responses.
pub struct WatchStream {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: tonic::Streaming<WatchResponse>,
    /// The endpoint this stream is on.
    pub endpoint: String,
}

/// A keepalive stream for leases.
pub struct KeepAliveStream {
    pub requests: mpsc::Sender<LeaseKeepAliveRequest>,
    pub responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

fn is_unreachable(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown) && s.message() != "etcdserver: request timed out"
        || s.code() == Code::Cancelled
}

// === impl Client ===

impl Client {
    /// Builds a client. Connections are made lazily, so this succeeds even
    /// when no endpoint is up yet.
    pub fn new(config: ClientConfig) -> Result<Client> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let mut endpoints = Vec::new();
        for ep in &config.endpoints {
            let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
            #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
            let mut e = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Config(format!("bad endpoint {ep:?}: {e}")))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            if url.starts_with("https://") {
                #[cfg(feature = "tls")]
                {
                    let tls = config.tls.clone().unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_native_roots());
                    e = e.tls_config(tls).map_err(|err| Error::Config(format!("TLS for {ep}: {err}")))?;
                }
                #[cfg(not(feature = "tls"))]
                return Err(Error::Config(format!("{ep}: https needs the `tls` feature of the roster crate")));
            }
            endpoints.push((ep.clone(), e.connect_lazy()));
        }
        Ok(Client { inner: Arc::new(Inner { endpoints, current: AtomicUsize::new(0), config }) })
    }

    /// A client for `endpoints` with default timeouts.
    pub fn connect(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        Client::new(ClientConfig::new(endpoints))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The endpoint calls currently go to.
    pub fn current_endpoint(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i].0
    }

    /// Moves to the next endpoint; stream owners call this after a break.
    pub fn rotate(&self) {
        self.inner.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on the current endpoint, failing over to the others when
    /// one is unreachable, all within the request timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.inner.config.request_timeout;
        let n = self.inner.endpoints.len();
        let attempt = async {
            let mut last = None;
            for _ in 0..n {
                let i = self.inner.current.load(Ordering::Relaxed) % n;
                let (_, ch) = &self.inner.endpoints[i];
                match f(ch.clone()).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if is_unreachable(&s) && n > 1 => {
                        tracing::debug!(endpoint = %self.inner.endpoints[i].0, error = %s, "endpoint unreachable; failing over");
                        let _ = self.inner.current.compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed);
                        last = Some(s);
                    }
                    Err(s) if is_unreachable(&s) => last = Some(s),
                    Err(s) => return Err(Error::Status(s)),
                }
            }
            let s = last.expect("n >= 1 attempts");
            Err(Error::Unreachable { endpoints: self.inner.config.endpoints.join(","), reason: s.message().to_owned() })
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| Error::Timeout(timeout))?
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        self.call(|ch| {
            let r = r.clone();
            async move { KvClient::new(ch).range(r).await }
        })
        .await
    }

    pub async fn put(&self, r: PutRequest) -> Result<PutResponse> {
        self.call(|ch| {
            let r = r.clone();
            async move { KvClient::new(ch).put(r).await }
        })
        .await
    }

    pub async fn delete_range(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.call(|ch| {
            let r = r.clone();
            async move { KvClient::new(ch).delete_range(r).await }
        })
        .await
    }

    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        self.call(|ch| {
            let r = r.clone();
            async move { KvClient::new(ch).txn(r).await }
        })
        .await
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.call(|ch| async move { LeaseClient::new(ch).lease_grant(LeaseGrantRequest { ttl, id: 0 }).await }).await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.call(|ch| async move { LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id }).await }).await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.call(|ch| async move { LeaseClient::new(ch).lease_time_to_live(LeaseTimeToLiveRequest { id, keys }).await })
            .await
    }

    /// Opens a watch stream with `hasleader` set, on the current endpoint,
    /// and creates its first watcher. The create request is queued before
    /// the stream opens: etcd (grpc-go) sends the response headers only with
    /// its first message, so waiting for them first would hang.
    pub async fn watch_stream(&self, create: WatchCreateRequest) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(16);
        let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        tx.try_send(first).expect("a new channel has room");
        let (endpoint, ch) = self.current();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        let mut watch = WatchClient::new(ch);
        let responses = self.open(watch.watch(req)).await?;
        Ok(WatchStream { requests: tx, responses, endpoint })
    }

    /// Opens a keepalive stream for `lease` on the current endpoint, with
    /// its first renewal already queued (see [`Client::watch_stream`]).
    pub async fn keep_alive_stream(&self, lease: i64) -> Result<KeepAliveStream> {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(LeaseKeepAliveRequest { id: lease }).expect("a new channel has room");
        let (_, ch) = self.current();
        let mut client = LeaseClient::new(ch);
        let responses = self.open(client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))).await?;
        Ok(KeepAliveStream { requests: tx, responses })
    }

    fn current(&self) -> (String, Channel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        let (name, ch) = &self.inner.endpoints[i];
        (name.clone(), ch.clone())
    }

    /// Opens a stream once (its request half cannot be replayed); an
    /// unreachable endpoint makes the next attempt use another one.
    async fn open<T>(&self, open: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T> {
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                if is_unreachable(&s) {
                    self.rotate();
                }
                Err(Error::Status(s))
            }
            Err(_) => {
                self.rotate();
                Err(Error::Timeout(timeout))
            }
        }
    }
}
