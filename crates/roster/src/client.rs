//! An etcd v3 API client with multi-endpoint failover.
//!
//! Every unary call has a timeout. A call that fails because its endpoint is
//! unreachable moves on to the next endpoint; the client then stays there.
//! A member that is stopped (or cut off behind a firewall that drops
//! packets) is the hard case: its connection stays open and it simply never
//! answers. So with several endpoints each attempt gets only
//! [`ClientConfig::attempt_timeout`], and an endpoint that failed is
//! avoided for a while ([`FAILED_COOLDOWN`]).
//!
//! Only what cannot have been applied, or is harmless to apply twice, is
//! sent to the next endpoint after an attempt that may have reached its
//! member: reads, put, delete, lease revoke and renewals. A lease grant is
//! made safe by choosing its ID here. A transaction that writes is applied
//! at most once: after a timeout it fails with [`Error::OutcomeUnknown`],
//! and it moves on only when its connection was refused (so `fenced_txn`
//! can never apply twice while its fence still holds).
//!
//! Streams (watch, keepalive) are opened on the current endpoint, and their
//! owners reconnect through [`Client`] when they break, after telling it
//! which endpoint failed ([`Client::fail_over_from`]). Watches carry the
//! `hasleader` metadata so that an etcd member cut off from its cluster
//! refuses them instead of hanging, and [`WatchStream::next`] probes a
//! silent stream so that a stopped member is noticed within seconds rather
//! than when HTTP/2 keepalive gives up.
//!
//! With [`ClientConfig::credentials`] the client authenticates
//! (`Auth.Authenticate`) before its first call and sends the token as the
//! `token` metadata of every request, streams included. A call refused with
//! `etcdserver: invalid auth token` (the token expired, or the server
//! restarted and forgot it), `etcdserver: user name is empty` or
//! `etcdserver: revision of auth store is old` re-authenticates once and is
//! retried once, as etcd's Go client does. A watch whose create is
//! canceled for a stale token (etcd's cancel reason names the same errors)
//! is reopened once with a fresh token too. A server with auth
//! off answers Authenticate with "authentication is not enabled", and the
//! client then carries on without a token.

use crate::error::{Error, Result};
use arc_swap::ArcSwapOption;
use roster_api::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, *,
};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Where and how to reach the registry. `Debug` shows no secret: neither
/// the password nor the TLS key.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port`, `http://host:port` or (with the `tls` feature) `https://host:port`.
    pub endpoints: Vec<String>,
    /// Limit on each unary call, failover included.
    pub request_timeout: Duration,
    /// Limit on one attempt on one endpoint (a unary call, or opening a
    /// stream) when there are other endpoints to fail over to. A stopped or
    /// cut-off member never answers; without this limit it would eat the
    /// whole request timeout. Capped by `request_timeout`. A write whose
    /// attempt timed out may still be applied, and is then applied again
    /// elsewhere: for puts, deletes and revokes that changes nothing but the
    /// revision (as when etcd's own client retries).
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// With several endpoints, a watch stream silent for this long is probed
    /// with a progress request (by [`WatchStream::next`], which discovery
    /// and config use; one probe per stream, so per watched service, not per
    /// registration); a probe unanswered for as long again means the member is
    /// stopped or cut off, and the stream fails ([`Error::Stalled`]) so its
    /// owner reconnects elsewhere. HTTP/2 keepalive would take 15 s.
    pub watch_probe: Duration,
    /// TLS for `https://` endpoints: the CA to trust and, for servers that
    /// require client certificates, the client's identity (see
    /// [`ClientConfig::tls_from_files`]).
    #[cfg(feature = "tls")]
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// An etcd user to authenticate as; `None`: no token is sent.
    pub credentials: Option<Credentials>,
}

/// An etcd user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

// === impl Credentials ===

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { user: user.into(), password: password.into() }
    }

    /// Splits `name[:password]` as etcdctl's `--user` takes it: the user
    /// name, and the password when one was given.
    pub fn split(spec: &str) -> (&str, Option<&str>) {
        match spec.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (spec, None),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ClientConfig");
        d.field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("watch_probe", &self.watch_probe);
        // tonic's own Debug would print the client key's PEM.
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|_| "<set>"));
        d.field("credentials", &self.credentials).finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            watch_probe: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: None,
            credentials: None,
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

    /// Authenticate as `user` with `password`.
    pub fn with_credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(user, password));
        self
    }

    /// TLS from PEM files, as etcdctl's `--cacert`, `--cert` and `--key`:
    /// the CA to trust (without it, the system's roots) and a client
    /// certificate with its key for servers with `--client-cert-auth`.
    #[cfg(feature = "tls")]
    pub fn tls_from_files(
        cacert: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<tonic::transport::ClientTlsConfig> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", p.display())))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match cacert {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca, "CA certificate")?)),
            None => tls.with_native_roots(),
        };
        match (cert, key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(read(c, "certificate")?, read(k, "key")?));
            }
            (None, None) => {}
            _ => return Err(Error::Config("a client certificate needs both --cert and --key".into())),
        }
        Ok(tls)
    }
}

/// A cheap `Clone` handle; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// How long an endpoint that failed is passed over when failing over, so
/// that a stopped member is not tried again (and waited for) on every
/// round. When every endpoint failed recently, the next one is used anyway.
pub const FAILED_COOLDOWN: Duration = Duration::from_secs(10);

struct Inner {
    /// Per endpoint: its name, and its channel with the token attached.
    endpoints: Vec<(String, AuthChannel)>,
    /// The token every request carries, and how to renew it.
    auth: Arc<Auth>,
    /// Index (always `< endpoints.len()`) of the endpoint that last worked.
    /// Atomics rather than a lock: every call reads it, and racing
    /// fail-overs settle by compare-and-swap.
    current: AtomicUsize,
    /// Per endpoint, when it last failed, in milliseconds since `epoch`
    /// plus one; 0 means never.
    failed_at: Vec<AtomicU64>,
    epoch: Instant,
    config: ClientConfig,
}

/// A watch stream: send create/cancel requests, read responses with
/// [`WatchStream::next`].
pub struct WatchStream {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: tonic::Streaming<WatchResponse>,
    /// The endpoint this stream is on.
    pub endpoint: String,
    /// A response (or error) already read from `responses`, handed out
    /// first by [`WatchStream::next`] and [`WatchStream::message`].
    pending: Option<std::result::Result<WatchResponse, tonic::Status>>,
    /// The generation of the token the stream was opened with.
    token_generation: u64,
    /// `None` with a single endpoint: there is nowhere else to go, so a
    /// silent stream is simply waited on.
    probe: Option<Duration>,
    /// When the stream last delivered a response.
    heard: Instant,
    /// When the progress probe that is still unanswered was sent.
    probed: Option<Instant>,
}

/// A keepalive stream for leases.
pub struct KeepAliveStream {
    pub requests: mpsc::Sender<LeaseKeepAliveRequest>,
    pub responses: tonic::Streaming<LeaseKeepAliveResponse>,
    /// The endpoint this stream is on.
    pub endpoint: String,
}

/// Whether a request may be sent again once it may have reached a member.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Repeat {
    /// Reads, and writes harmless to repeat.
    Safe,
    /// Never sent twice; the name is the operation's, for the error.
    AtMostOnce(&'static str),
}

/// etcd refuses a proposal with this when its member has no leader: the
/// request was not applied.
const NO_LEADER: &str = "etcdserver: no leader";

/// etcd's answer to a grant of an ID already in use.
const LEASE_EXISTS: &str = "etcdserver: lease already exists";

/// Whether a transaction may write: any put, delete or nested writing txn.
fn txn_writes(t: &TxnRequest) -> bool {
    use roster_api::etcdserverpb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => false,
        Some(Request::RequestTxn(inner)) => txn_writes(inner),
        Some(_) => true,
    })
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
                    let tls = config
                        .tls
                        .clone()
                        .unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_native_roots());
                    e = e.tls_config(tls).map_err(|err| Error::Config(format!("TLS for {ep}: {err}")))?;
                }
                #[cfg(not(feature = "tls"))]
                return Err(Error::Config(format!("{ep}: https needs the `tls` feature of the roster crate")));
            }
            endpoints.push((ep.clone(), e.connect_lazy()));
        }
        let auth = Arc::new(Auth::new(config.credentials.clone()));
        let endpoints: Vec<_> =
            endpoints.into_iter().map(|(name, raw)| (name, AuthChannel { raw, token: auth.clone() })).collect();
        let failed_at = endpoints.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                auth,
                current: AtomicUsize::new(0),
                failed_at,
                epoch: Instant::now(),
                config,
            }),
        })
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
        &self.inner.endpoints[self.index()].0
    }

    /// Moves to the next endpoint (passing over those that failed
    /// recently). Prefer [`Client::fail_over_from`], which does not move
    /// off a good endpoint when many stream owners notice one break.
    pub fn rotate(&self) {
        let from = self.index();
        let _ = self.inner.current.compare_exchange(from, self.next_after(from), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Reports that `endpoint` failed (a stream on it broke or stalled): it
    /// is avoided for [`FAILED_COOLDOWN`], and if calls still go to it,
    /// they move to the next endpoint. Unknown names are ignored.
    pub fn fail_over_from(&self, endpoint: &str) {
        if let Some(i) = self.inner.endpoints.iter().position(|(name, _)| name == endpoint) {
            self.fail_over(i);
        }
    }

    /// Whether there is another endpoint to move to. With one, a slow or
    /// silent answer is waited for: reconnecting to the same member would
    /// only add load to a registry that is already slow.
    pub fn can_fail_over(&self) -> bool {
        self.inner.endpoints.len() > 1
    }

    /// How long a lease renewal sent every `period` may go unanswered
    /// before its member is taken for stopped or cut off (its connection
    /// stays open, so nothing else says so before the lease expires) and
    /// renewing moves elsewhere: half a period, at least 0.5 s so that a
    /// loaded machine is not mistaken for a stopped one. `None` with a
    /// single endpoint: a slow answer is then waited for.
    pub fn renewal_deadline(&self, period: Duration) -> Option<Duration> {
        self.can_fail_over().then(|| (period / 2).max(Duration::from_millis(500)).min(period))
    }

    fn index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// Milliseconds since the client was made, plus one (0 is "never").
    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    fn fail_over(&self, from: usize) {
        if !self.can_fail_over() {
            return;
        }
        self.inner.failed_at[from].store(self.now_ms(), Ordering::Relaxed);
        // Only the first of many owners noticing the same failure moves.
        let _ = self.inner.current.compare_exchange(from, self.next_after(from), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The endpoint after `from` that has not failed recently, or simply
    /// the next one when all have.
    fn next_after(&self, from: usize) -> usize {
        let n = self.inner.endpoints.len();
        let now = self.now_ms();
        let cooldown = FAILED_COOLDOWN.as_millis() as u64;
        let healthy = |j: usize| {
            let at = self.inner.failed_at[j].load(Ordering::Relaxed);
            at == 0 || now.saturating_sub(at) > cooldown
        };
        (1..n).map(|k| (from + k) % n).find(|&j| healthy(j)).unwrap_or((from + 1) % n)
    }

    /// How long one attempt on one endpoint may take.
    fn attempt_timeout(&self) -> Duration {
        let c = &self.inner.config;
        if self.can_fail_over() { c.attempt_timeout.min(c.request_timeout) } else { c.request_timeout }
    }

    /// Runs `f` on the current endpoint, failing over to the others when
    /// one is unreachable or does not answer within the attempt timeout,
    /// all within the request timeout.
    ///
    /// With `repeat` [`Repeat::AtMostOnce`] a request that may have reached
    /// its member is never sent again: only a refused connection moves on.
    pub(crate) async fn call<T, F, Fut>(&self, repeat: Repeat, f: F) -> Result<T>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.inner.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let n = self.inner.endpoints.len();
        let mut last = None;
        let mut reauthed = false;
        let mut attempts = 0;
        while attempts < n {
            attempts += 1;
            let i = self.index();
            let (name, ch) = &self.inner.endpoints[i];
            let until = (Instant::now() + self.attempt_timeout()).min(deadline);
            let seen = match tokio::time::timeout_at(until, self.ensure_token(i)).await {
                Ok(Ok(seen)) => seen,
                Ok(Err(Error::Status(s))) if is_unreachable(&s) => {
                    self.fail_over(i);
                    last = Some(s.message().to_owned());
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if Instant::now() >= deadline => return Err(Error::Timeout(timeout)),
                Err(_) => {
                    self.fail_over(i);
                    last = Some(format!("no answer from {name} within {:?}", self.attempt_timeout()));
                    continue;
                }
            };
            match tokio::time::timeout_at(until, f(ch.clone())).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if !reauthed && self.inner.auth.creds.is_some() && needs_new_token(&s) => {
                    // Once: a fresh token refused again is a real refusal.
                    tracing::debug!(endpoint = %name, error = %s.message(), "token refused; authenticating again");
                    reauthed = true;
                    attempts -= 1;
                    self.inner.auth.invalidate(seen);
                }
                Ok(Err(s)) if is_unreachable(&s) => {
                    self.fail_over(i);
                    if let Repeat::AtMostOnce(op) = repeat
                        && !crate::grpc::never_sent(&s)
                        && s.message() != NO_LEADER
                    {
                        return Err(Error::OutcomeUnknown {
                            op,
                            endpoint: name.clone(),
                            reason: s.message().to_owned(),
                        });
                    }
                    tracing::debug!(endpoint = %name, error = %s, "endpoint unreachable; failing over");
                    last = Some(s.message().to_owned());
                }
                Ok(Err(s)) => return Err(Error::Status(s)),
                Err(_) if Instant::now() >= deadline => {
                    if let Repeat::AtMostOnce(op) = repeat {
                        return Err(Error::OutcomeUnknown {
                            op,
                            endpoint: name.clone(),
                            reason: format!("no answer within {timeout:?}"),
                        });
                    }
                    return Err(Error::Timeout(timeout));
                }
                Err(_) => {
                    // Stopped or cut off: it keeps the connection and never answers.
                    self.fail_over(i);
                    if let Repeat::AtMostOnce(op) = repeat {
                        let reason = format!("no answer within {:?}", self.attempt_timeout());
                        return Err(Error::OutcomeUnknown { op, endpoint: name.clone(), reason });
                    }
                    tracing::debug!(endpoint = %name, "no answer within the attempt timeout; failing over");
                    last = Some(format!("no answer from {name} within {:?}", self.attempt_timeout()));
                }
            }
        }
        let reason = last.expect("n >= 1 attempts");
        Err(Error::Unreachable { endpoints: self.inner.config.endpoints.join(","), reason })
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        self.call(Repeat::Safe, |ch| {
            let r = r.clone();
            async move { KvClient::new(ch).range(r).await }
        })
        .await
    }

    /// Sent again on another endpoint after a timeout: a put applied twice
    /// leaves the same value (one more revision).
    pub async fn put(&self, r: PutRequest) -> Result<PutResponse> {
        self.call(Repeat::Safe, |ch| {
            let r = r.clone();
            async move { KvClient::new(ch).put(r).await }
        })
        .await
    }

    pub async fn delete_range(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.call(Repeat::Safe, |ch| {
            let r = r.clone();
            async move { KvClient::new(ch).delete_range(r).await }
        })
        .await
    }

    /// A transaction that writes is applied at most once: after a timeout,
    /// or a connection broken once it was sent, it fails with
    /// [`Error::OutcomeUnknown`] instead of being sent again (its compares
    /// may still hold, so a second copy would apply too). A read-only one
    /// fails over like a range.
    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        let repeat = if txn_writes(&r) { Repeat::AtMostOnce("txn") } else { Repeat::Safe };
        self.call(repeat, |ch| {
            let r = r.clone();
            async move { KvClient::new(ch).txn(r).await }
        })
        .await
    }

    /// The lease ID is chosen here, not by the server, so that a grant that
    /// timed out can be sent again safely: if the first copy was applied,
    /// the retry is refused with etcd's "lease already exists", and the
    /// lease is ours.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        let id = (rand::random::<u64>() >> 1).max(1) as i64;
        let sent = std::sync::atomic::AtomicU32::new(0);
        let granted = self
            .call(Repeat::Safe, |ch| {
                sent.fetch_add(1, Ordering::Relaxed);
                async move { LeaseClient::new(ch).lease_grant(LeaseGrantRequest { ttl, id }).await }
            })
            .await;
        match granted {
            Err(Error::Status(s)) if sent.load(Ordering::Relaxed) > 1 && s.message() == LEASE_EXISTS => {
                let ttl = self.lease_time_to_live(id, false).await?.granted_ttl;
                Ok(LeaseGrantResponse { id, ttl, ..Default::default() })
            }
            other => other,
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.call(Repeat::Safe, |ch| async move { LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id }).await })
            .await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.call(Repeat::Safe, |ch| async move {
            LeaseClient::new(ch).lease_time_to_live(LeaseTimeToLiveRequest { id, keys }).await
        })
        .await
    }

    /// Opens a watch stream with `hasleader` set, on the current endpoint,
    /// and creates its first watcher. The create request is queued before
    /// the stream opens: etcd (grpc-go) sends the response headers only with
    /// its first message, so waiting for them first would hang.
    pub async fn watch_stream(&self, create: WatchCreateRequest) -> Result<WatchStream> {
        let mut stream = self.watch_stream_once(create.clone()).await?;
        if self.inner.auth.creds.is_none() {
            return Ok(stream);
        }
        // etcd refuses a watch with a stale token by canceling its create;
        // see whether a fresh token does better.
        let first = tokio::time::timeout(self.attempt_timeout(), stream.responses.message()).await;
        match first {
            Ok(Ok(Some(r))) if r.canceled && watch_needs_new_token(&r.cancel_reason) => {
                tracing::debug!(endpoint = %stream.endpoint, "watch refused; authenticating again and retrying once");
                self.inner.auth.invalidate(stream.token_generation);
                self.watch_stream_once(create).await
            }
            Ok(Ok(r)) => {
                stream.pending = r.map(Ok);
                Ok(stream)
            }
            Ok(Err(s)) => {
                stream.pending = Some(Err(s));
                Ok(stream)
            }
            Err(_) => Ok(stream),
        }
    }

    async fn watch_stream_once(&self, create: WatchCreateRequest) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(16);
        let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        tx.try_send(first).expect("a new channel has room");
        let (i, endpoint, ch) = self.current();
        let token_generation = self.ensure_token(i).await?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        let mut watch = WatchClient::new(ch);
        let responses = self.open(i, watch.watch(req)).await?;
        let probe = self.can_fail_over().then_some(self.inner.config.watch_probe);
        Ok(WatchStream {
            requests: tx,
            responses,
            endpoint,
            pending: None,
            token_generation,
            probe,
            heard: Instant::now(),
            probed: None,
        })
    }

    /// Opens a keepalive stream for `lease` on the current endpoint, with
    /// its first renewal already queued (see [`Client::watch_stream`]).
    pub async fn keep_alive_stream(&self, lease: i64) -> Result<KeepAliveStream> {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(LeaseKeepAliveRequest { id: lease }).expect("a new channel has room");
        let (i, endpoint, ch) = self.current();
        self.ensure_token(i).await?;
        let mut client = LeaseClient::new(ch);
        let responses = self.open(i, client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))).await?;
        Ok(KeepAliveStream { requests: tx, responses, endpoint })
    }

    /// Opens `Maintenance.Snapshot` on the current endpoint: the etcd
    /// backend database in chunks, then its sha256. A snapshot is of one
    /// member, so this never fails over mid-stream.
    pub async fn snapshot(&self) -> Result<(String, tonic::Streaming<SnapshotResponse>)> {
        let (i, endpoint, ch) = self.current();
        self.ensure_token(i).await?;
        let mut client = MaintenanceClient::new(ch).max_decoding_message_size(usize::MAX);
        let stream = self.open(i, client.snapshot(SnapshotRequest {})).await?;
        Ok((endpoint, stream))
    }

    /// Authenticates on endpoint `i` when no token is held yet; returns the
    /// generation of the token requests will now carry.
    async fn ensure_token(&self, i: usize) -> Result<u64> {
        let auth = &self.inner.auth;
        let Some(creds) = &auth.creds else { return Ok(0) };
        if let Some(generation) = auth.settled() {
            return Ok(generation);
        }
        // One authentication at a time; the others wait for its token.
        let _renewing = auth.renewing.lock().await;
        if let Some(generation) = auth.settled() {
            return Ok(generation);
        }
        // Without the old token: etcd checks a token sent with
        // Authenticate, and refuses a stale one.
        let raw = self.inner.endpoints[i].1.raw.clone();
        let req = AuthenticateRequest { name: creds.user.clone(), password: creds.password.clone() };
        let token = match AuthClient::new(raw).authenticate(req).await {
            Ok(r) => {
                let token = r.into_inner().token;
                let mut value = tonic::codegen::http::HeaderValue::from_str(&token)
                    .map_err(|_| Error::Config("the server sent a token that is not valid metadata".into()))?;
                // Kept out of HPACK's tables, as a secret.
                value.set_sensitive(true);
                Some(value)
            }
            // As etcd's client: credentials for a server without auth are
            // not an error.
            Err(s) if is_auth_not_enabled(&s) => None,
            Err(s) => return Err(Error::Status(s)),
        };
        tracing::debug!(user = %creds.user, with_token = token.is_some(), "authenticated");
        Ok(auth.set(token))
    }

    fn current(&self) -> (usize, String, AuthChannel) {
        let i = self.index();
        let (name, ch) = &self.inner.endpoints[i];
        (i, name.clone(), ch.clone())
    }

    /// Opens a stream on endpoint `i` once (its request half cannot be
    /// replayed); an unreachable or silent endpoint makes the next attempt
    /// use another one.
    async fn open<T>(
        &self,
        i: usize,
        open: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let timeout = self.attempt_timeout();
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                if is_unreachable(&s) {
                    self.fail_over(i);
                }
                Err(Error::Status(s))
            }
            Err(_) => {
                self.fail_over(i);
                Err(Error::Timeout(timeout))
            }
        }
    }
}

// === impl WatchStream ===

impl WatchStream {
    /// The next response; `None` when the server ended the stream.
    ///
    /// With several endpoints, a stream silent for
    /// [`ClientConfig::watch_probe`] is sent a progress request. If that is
    /// not answered within as long again, the member is stopped or cut off
    /// (its connection stays open, so nothing else would say so for a long
    /// while) and this fails with [`Error::Stalled`]. The answers to these
    /// probes are consumed here. With one endpoint it simply waits.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>> {
        if let Some(first) = self.pending.take() {
            return Ok(Some(first?));
        }
        let Some(probe) = self.probe else {
            return Ok(self.responses.message().await?);
        };
        loop {
            let wake = self.probed.unwrap_or(self.heard) + probe;
            tokio::select! {
                // A response already there wins over an expired timer.
                biased;
                r = self.responses.message() => {
                    self.heard = Instant::now();
                    self.probed = None;
                    match r? {
                        Some(r) if is_probe_answer(&r) => continue,
                        r => return Ok(r),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.probed.is_some() {
                        return Err(Error::Stalled { endpoint: self.endpoint.clone(), silent: self.heard.elapsed() });
                    }
                    let probe = WatchRequest {
                        request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    // Never blocks: a full queue means requests are pending
                    // already, and the deadline below still holds.
                    let _ = self.requests.try_send(probe);
                    self.probed = Some(Instant::now());
                }
            }
        }
    }
}

// === impl WatchStream (reads) ===

impl WatchStream {
    /// The next response without probing (see [`WatchStream::next`]);
    /// `None` when the server ended the stream. Cancel-safe.
    pub async fn message(&mut self) -> std::result::Result<Option<WatchResponse>, tonic::Status> {
        if let Some(first) = self.pending.take() {
            return first.map(Some);
        }
        self.responses.message().await
    }
}

/// Refusals that a fresh token may cure, as etcd's Go client retries them.
const TOKEN_REFUSALS: [&str; 3] =
    ["etcdserver: invalid auth token", "etcdserver: user name is empty", "etcdserver: revision of auth store is old"];

fn needs_new_token(s: &tonic::Status) -> bool {
    TOKEN_REFUSALS.contains(&s.message())
}

/// etcd 3.4 cancels a watch created with a stale token with the whole gRPC
/// error as its reason: "rpc error: code = Unauthenticated desc =
/// etcdserver: invalid auth token".
fn watch_needs_new_token(cancel_reason: &str) -> bool {
    TOKEN_REFUSALS.iter().any(|m| cancel_reason.ends_with(m))
}

/// The token requests carry, shared by every endpoint's channel.
struct Auth {
    creds: Option<Credentials>,
    /// `None`: not authenticated yet (or the token was refused). Read on
    /// every request, so lock-free.
    current: ArcSwapOption<Token>,
    /// Held while authenticating, so that many calls refused at once
    /// authenticate once.
    renewing: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

struct Token {
    /// `None`: the server has auth off; requests go without a token.
    value: Option<tonic::codegen::http::HeaderValue>,
    generation: u64,
}

// === impl Auth ===

impl Auth {
    fn new(creds: Option<Credentials>) -> Self {
        Auth {
            creds,
            current: ArcSwapOption::empty(),
            renewing: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(1),
        }
    }

    /// The generation of the token held, when one is.
    fn settled(&self) -> Option<u64> {
        self.current.load().as_ref().map(|t| t.generation)
    }

    fn set(&self, value: Option<tonic::codegen::http::HeaderValue>) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Some(Arc::new(Token { value, generation })));
        generation
    }

    /// Drops the token of generation `seen`, unless another call already
    /// replaced it.
    fn invalidate(&self, seen: u64) {
        let cur = self.current.load();
        if cur.as_ref().is_some_and(|t| t.generation == seen) {
            self.current.compare_and_swap(&*cur, None);
        }
    }
}

/// A channel that attaches the current token to every request.
#[derive(Clone)]
pub(crate) struct AuthChannel {
    raw: Channel,
    token: Arc<Auth>,
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for AuthChannel {
    type Response = <Channel as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Error;
    type Future = <Channel as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.raw, cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = self.token.current.load().as_ref().and_then(|t| t.value.clone()) {
            req.headers_mut().insert("token", value);
        }
        tonic::codegen::Service::call(&mut self.raw, req)
    }
}

/// etcd answers a progress request with a response for watch id -1 that
/// carries only a header.
fn is_probe_answer(r: &WatchResponse) -> bool {
    r.watch_id == -1 && r.events.is_empty() && !r.created && !r.canceled
}

/// etcd's answer to Authenticate while auth is off.
pub(crate) fn is_auth_not_enabled(s: &tonic::Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message() == "etcdserver: authentication is not enabled"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_never_shows_the_password() {
        let c = Credentials::new("svc", "s3cret");
        let cfg = ClientConfig { credentials: Some(c.clone()), ..Default::default() };
        for text in [format!("{c:?}"), format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(!text.contains("s3cret") && text.contains("svc"), "{text}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn config_debug_never_shows_the_tls_key() {
        let key = b"-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n".to_vec();
        let identity = tonic::transport::Identity::from_pem(b"cert", key);
        let tls = tonic::transport::ClientTlsConfig::new().identity(identity);
        let cfg = ClientConfig { tls: Some(tls), ..Default::default() };
        let text = format!("{cfg:?}");
        assert!(!text.contains("SECRETKEYBYTES") && !text.contains("83, 69, 67"), "{text}");
        assert!(text.contains("tls: Some(\"<set>\")"), "{text}");
    }

    #[test]
    fn user_spec_splits_at_the_first_colon() {
        assert_eq!(Credentials::split("svc"), ("svc", None));
        assert_eq!(Credentials::split("svc:pw"), ("svc", Some("pw")));
        assert_eq!(Credentials::split("svc:p:w"), ("svc", Some("p:w")));
        assert_eq!(Credentials::split("svc:"), ("svc", Some("")));
    }

    #[test]
    fn stale_token_refusals_are_told_from_real_denials() {
        assert!(watch_needs_new_token("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"));
        assert!(watch_needs_new_token("etcdserver: invalid auth token"));
        assert!(!watch_needs_new_token("etcdserver: permission denied"));
        assert!(needs_new_token(&tonic::Status::unauthenticated("etcdserver: invalid auth token")));
        assert!(!needs_new_token(&tonic::Status::permission_denied("etcdserver: permission denied")));
    }

    #[test]
    fn a_token_replaced_by_another_call_is_not_dropped() {
        let auth = Auth::new(Some(Credentials::new("u", "p")));
        let first = auth.set(None);
        let second = auth.set(None);
        auth.invalidate(first);
        assert_eq!(auth.settled(), Some(second), "a stale refusal must not drop the newer token");
        auth.invalidate(second);
        assert_eq!(auth.settled(), None);
    }
}
