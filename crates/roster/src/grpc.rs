//! A tonic channel that follows discovery and balances on the client.
//!
//! [`Channel`] implements the `tower::Service` that generated tonic clients
//! take (`HelloClient::new(channel)`). It keeps one HTTP/2 connection per
//! discovered instance, opened and dropped as instances come and go, and
//! picks an instance per call with a [`Balancer`]. Calls in flight on a
//! removed instance finish normally: they hold their own connection handle.
//!
//! Unlike tonic's `balance_channel`, load is real (in-flight count and
//! latency feed least-request, which passes over an instance several times
//! slower than the other candidate: see [`Policy::LeastRequest`]), weights
//! and zones reach the balancer, and a failed instance is ejected for a
//! while and probed, not evicted for good.
//!
//! # Calls that never reached an instance are sent again
//!
//! A call whose attempt failed before any of it reached a server goes to
//! another instance within the same call (gRPC's transparent retry): the
//! connection was refused or could not be made, the server refused the
//! stream (`REFUSED_STREAM`), the picked instance had just left, or the
//! transport failed before it read a byte of the request body. So a dead
//! instance that is not yet ejected, or an ejected one probed half-open,
//! never fails a call: the probe is an ordinary call, retried elsewhere when
//! it fails. Each retry goes to an instance the call has not tried, within
//! the call's deadline (`grpc-timeout`) and a [`RetryBudget`] that retries
//! may draw only a share of the calls from.
//!
//! To send a body again it must be kept: bodies that are complete at once
//! and at most [`ChannelConfig::max_replay_bytes`] long (every unary call)
//! are buffered; longer bodies and client streams go to one attempt, and to
//! another only if that attempt never read them.
//!
//! Calls that did reach a server are retried only for methods the user
//! marks idempotent with a [`RetryPolicy`] (gRPC's `retryPolicy`: codes,
//! attempts, exponential backoff with jitter), and only on an answer whose
//! head carries the status (trailers-only) or on a transport failure, which
//! counts as `UNAVAILABLE`.
//!
//! # Readiness
//!
//! `poll_ready` is ready only when some instance can take a call: not every
//! one is ejected (and not being probed), and, with
//! [`ChannelConfig::max_in_flight_per_instance`], not every one is full.
//! So tower layers stacked on the channel (`LoadShed`, `ConcurrencyLimit`,
//! `Timeout`) see back-pressure. A service with no instance at all is
//! ready, and its calls fail fast with `UNAVAILABLE`.

use crate::balance::{Balancer, EndpointStats, Guard, HealthConfig, Policy, RetryBudget};
use crate::discovery::Discovery;
use crate::instance::Instance;
use crate::task::DropGuard;
use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::Endpoint;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a [`Channel`] balances and retries.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub policy: Policy,
    pub health: HealthConfig,
    /// Prefer instances in this zone.
    pub zone: Option<String>,
    /// For consistent hashing: the request header (gRPC metadata) whose
    /// value is the key.
    pub hash_header: Option<String>,
    pub connect_timeout: Duration,
    /// Calls in flight at which an instance is full: it is passed over, and
    /// `poll_ready` waits while every instance is full (0: no limit).
    pub max_in_flight_per_instance: usize,
    /// Retries may add at most this share of calls (percent), plus a small
    /// reserve (see [`RetryBudget`]).
    pub retry_budget_percent: u32,
    /// Request bodies up to this size are kept so that the call can be sent
    /// to another instance.
    pub max_replay_bytes: usize,
    /// Retries of calls that reached a server, for the methods marked.
    pub retry_policies: Vec<RetryPolicy>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            policy: Policy::LeastRequest,
            health: HealthConfig::default(),
            zone: None,
            hash_header: None,
            connect_timeout: Duration::from_secs(1),
            max_in_flight_per_instance: 0,
            retry_budget_percent: 20,
            max_replay_bytes: 64 * 1024,
            retry_policies: Vec::new(),
        }
    }
}

/// gRPC's `retryPolicy` for methods the user knows are idempotent.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Full method paths (`/hello.Hello/Say`) or whole services
    /// (`/hello.Hello/`).
    pub methods: Vec<String>,
    /// Attempts in all, the first included; gRPC caps it at 5.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    /// Answers with these codes are retried. A transport failure counts as
    /// `UNAVAILABLE`.
    pub retryable_codes: Vec<tonic::Code>,
}

impl RetryPolicy {
    /// Retries `methods` on `UNAVAILABLE`, up to 3 attempts, backing off
    /// from 10 ms.
    pub fn idempotent(methods: impl IntoIterator<Item = impl Into<String>>) -> RetryPolicy {
        RetryPolicy {
            methods: methods.into_iter().map(Into::into).collect(),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            backoff_multiplier: 2.0,
            retryable_codes: vec![tonic::Code::Unavailable],
        }
    }

    fn covers(&self, path: &str) -> bool {
        self.methods.iter().any(|m| if m.ends_with('/') { path.starts_with(m.as_str()) } else { path == m })
    }

    /// Before attempt `attempt + 1`: a random share of the current backoff.
    fn backoff(&self, attempt: u32) -> Duration {
        let grown = self.initial_backoff.as_secs_f64()
            * self.backoff_multiplier.max(1.0).powi(attempt.saturating_sub(1) as i32);
        let cap = grown.min(self.max_backoff.as_secs_f64()).max(0.0);
        Duration::from_secs_f64(cap * rand::random::<f64>())
    }
}

/// A balanced channel to every instance of one service.
pub struct Channel {
    inner: Arc<Inner>,
    /// Stops the task that follows discovery with the last clone.
    _follow: Arc<DropGuard>,
    /// Until the first ejection ends, while no instance can take a call.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Clone for Channel {
    fn clone(&self) -> Self {
        Channel { inner: self.inner.clone(), _follow: self._follow.clone(), wait: None }
    }
}

struct Inner {
    service: String,
    balancer: Balancer,
    conns: ArcSwap<HashMap<String, tonic::transport::Channel>>,
    hash_header: Option<http::HeaderName>,
    connect_timeout: Duration,
    budget: RetryBudget,
    budget_percent: u32,
    max_replay: usize,
    limited: bool,
    policies: Vec<RetryPolicy>,
    /// Tasks whose `poll_ready` waits for an instance to take calls.
    waiters: Mutex<Vec<Waker>>,
    waiting: AtomicBool,
    _discovery: Discovery,
}

/// Transparent retries per call at most; each goes to an untried instance.
const MAX_TRANSPARENT: u32 = 8;

// === impl Channel ===

impl Channel {
    /// A channel following `discovery`. Calls made before the first list
    /// arrives fail fast with UNAVAILABLE; await [`Discovery::ready`] first.
    pub fn new(discovery: Discovery, config: ChannelConfig) -> Result<Channel, crate::Error> {
        let hash_header = match &config.hash_header {
            Some(h) => Some(
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| crate::Error::Config(format!("hash header {h:?}: {e}")))?,
            ),
            None => None,
        };
        let mut balancer = Balancer::new(config.policy)
            .with_health(config.health.clone())
            .with_max_in_flight(config.max_in_flight_per_instance);
        if let Some(z) = &config.zone {
            balancer = balancer.with_zone(z.clone());
        }
        let inner = Arc::new(Inner {
            service: discovery.service().to_owned(),
            balancer,
            conns: ArcSwap::from_pointee(HashMap::new()),
            hash_header,
            connect_timeout: config.connect_timeout,
            budget: RetryBudget::new(),
            budget_percent: config.retry_budget_percent,
            max_replay: config.max_replay_bytes,
            limited: config.max_in_flight_per_instance > 0,
            policies: config.retry_policies.clone(),
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
            _discovery: discovery.clone(),
        });
        inner.sync(&discovery.instances());
        let mut changes = Box::pin(discovery.changes());
        let state = inner.clone();
        let follow = crate::task::spawn(async move {
            while changes.next().await.is_some() {
                state.sync(&discovery.instances());
            }
        });
        Ok(Channel { inner, _follow: Arc::new(follow), wait: None })
    }

    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }
}

impl Inner {
    /// Matches connections and the balancer to the discovered set.
    fn sync(&self, instances: &[Instance]) {
        let old = self.conns.load();
        let mut conns = HashMap::with_capacity(instances.len());
        for i in instances {
            let conn = match old.get(&i.id) {
                Some(c) => c.clone(),
                None => match Endpoint::from_shared(format!("http://{}", i.addr)) {
                    Ok(e) => e.connect_timeout(self.connect_timeout).tcp_nodelay(true).connect_lazy(),
                    Err(e) => {
                        tracing::warn!(instance = %i.id, addr = %i.addr, error = %e, "skipping instance with a bad address");
                        continue;
                    }
                },
            };
            conns.insert(i.id.clone(), conn);
        }
        let usable: Vec<Instance> = instances.iter().filter(|i| conns.contains_key(&i.id)).cloned().collect();
        // Connections first: a picked instance always has one.
        self.conns.store(Arc::new(conns));
        self.balancer.update(usable);
        self.wake();
    }

    /// Ready once some instance can take a call; until then the task is
    /// woken by a call that ends, a new set, or the end of an ejection.
    fn poll_capacity(&self, cx: &mut Context<'_>, wait: &mut Option<Pin<Box<tokio::time::Sleep>>>) -> Poll<()> {
        loop {
            let retry_in = match self.balancer.capacity() {
                Ok(()) => {
                    *wait = None;
                    return Poll::Ready(());
                }
                Err(retry_in) => retry_in,
            };
            {
                let mut ws = self.waiters.lock();
                if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                    ws.push(cx.waker().clone());
                }
                self.waiting.store(true, Ordering::Relaxed);
            }
            // Look again: a call that ended before we were listed woke no one.
            fence(Ordering::SeqCst);
            if self.balancer.capacity().is_ok() {
                *wait = None;
                return Poll::Ready(());
            }
            let Some(d) = retry_in else { return Poll::Pending };
            let sleep = wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => *wait = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Wakes the tasks waiting for capacity, if any.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) {
            let ws = std::mem::take(&mut *self.waiters.lock());
            self.waiting.store(false, Ordering::Relaxed);
            ws.into_iter().for_each(Waker::wake);
        }
    }

    fn policy_for(&self, path: &str) -> Option<&RetryPolicy> {
        if self.policies.is_empty() {
            return None;
        }
        self.policies.iter().find(|p| p.covers(path))
    }

    fn unavailable(&self, msg: String) -> http::Response<Body> {
        tonic::Status::unavailable(msg).into_http()
    }

    /// One call: attempts until one is answered, or nothing more may be
    /// tried.
    async fn send(self: Arc<Self>, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        // Nothing below this channel reads request extensions (they are for
        // layers above it), so the first attempt takes them and retries go
        // without: cloning them cost an allocation per call.
        let mut extensions = Some(std::mem::take(&mut parts.extensions));
        let deadline = grpc_timeout(&parts.headers).map(|t| started + t);
        let key = self.hash_header.as_ref().and_then(|h| parts.headers.get(h)).map(|v| v.as_bytes().to_vec());
        let policy = self.policy_for(parts.uri.path());
        let payload = Payload::take(body, self.max_replay).await?;
        self.budget.deposit(self.budget_percent);
        let mut tried: Vec<Arc<EndpointStats>> = Vec::new();
        let (mut transparent, mut attempts) = (0u32, 1u32);
        let in_time = || deadline.is_none_or(|d| Instant::now() < d);
        loop {
            let retried = transparent + attempts > 1;
            let outcome = self
                .attempt(
                    &parts,
                    extensions.take().unwrap_or_default(),
                    &payload,
                    key.as_deref(),
                    &tried,
                    deadline.filter(|_| retried),
                )
                .await;
            let (stats, failure) = match outcome {
                Outcome::Answer(resp) => {
                    let code = || resp.headers().get(GRPC_STATUS).map(|v| tonic::Code::from_bytes(v.as_bytes()));
                    let again = policy.is_some_and(|p| code().is_some_and(|c| p.retryable_codes.contains(&c)));
                    if !again {
                        return Ok(resp);
                    }
                    (None, Failure::Answered(resp))
                }
                Outcome::Full => {
                    // Every instance is at its cap: wait for one, within the deadline.
                    let mut wait = None;
                    let ready = std::future::poll_fn(|cx| self.poll_capacity(cx, &mut wait));
                    match deadline {
                        Some(d) => {
                            if tokio::time::timeout_at(d.into(), ready).await.is_err() {
                                return Ok(
                                    self.unavailable(format!("every instance of service {:?} is busy", self.service))
                                );
                            }
                        }
                        None => ready.await,
                    }
                    continue;
                }
                Outcome::NoInstance(resp) => return Ok(resp),
                Outcome::Unsent(stats, failure) => {
                    let again =
                        transparent < MAX_TRANSPARENT && payload.resendable() && in_time() && self.budget.withdraw();
                    if again {
                        tracing::debug!(service = %self.service, error = %failure, "the attempt never reached its instance; trying another");
                        tried.push(stats);
                        transparent += 1;
                        continue;
                    }
                    (Some(stats), failure)
                }
                Outcome::Failed(stats, e) => (Some(stats), Failure::Transport(e)),
            };
            // It reached a server: only a marked method is sent again.
            let Some(p) = policy.filter(|p| attempts < p.max_attempts.min(5) && payload.resendable()) else {
                return failure.into_result();
            };
            let pause = p.backoff(attempts);
            if deadline.is_some_and(|d| Instant::now() + pause >= d) || !self.budget.withdraw() {
                return failure.into_result();
            }
            tokio::time::sleep(pause).await;
            tried.extend(stats);
            attempts += 1;
        }
    }

    /// One attempt on one instance. `deadline` rewrites `grpc-timeout` to
    /// the time left (on retries).
    async fn attempt(
        &self,
        parts: &http::request::Parts,
        extensions: http::Extensions,
        payload: &Payload,
        key: Option<&[u8]>,
        tried: &[Arc<EndpointStats>],
        deadline: Option<Instant>,
    ) -> Outcome {
        let picked = self.balancer.pick_avoiding(key, tried);
        let Some(guard) = picked else {
            if !tried.is_empty() {
                // Everything untried is ejected or gone: any instance, then.
                return match self.balancer.pick(key) {
                    Some(g) => self.attempt_on(g, parts, extensions, payload, deadline).await,
                    None => Outcome::NoInstance(
                        self.unavailable(format!("no available instance of service {:?}", self.service)),
                    ),
                };
            }
            if self.limited && !self.balancer.set().endpoints.is_empty() && self.balancer.capacity().is_err() {
                return Outcome::Full;
            }
            return Outcome::NoInstance(
                self.unavailable(format!("no available instance of service {:?}", self.service)),
            );
        };
        self.attempt_on(guard, parts, extensions, payload, deadline).await
    }

    async fn attempt_on(
        &self,
        guard: Guard,
        parts: &http::request::Parts,
        extensions: http::Extensions,
        payload: &Payload,
        deadline: Option<Instant>,
    ) -> Outcome {
        // The statistics are cloned only when the attempt fails: a clone is
        // two atomic operations on the line every core's picks write.
        let stats = |g: &Guard| g.endpoint().stats.clone();
        // However the attempt ends (also when the call is dropped), the
        // guard goes first, then whoever waits for capacity is woken.
        let mut held = Held { guard: Some(guard), inner: self };
        let conn = self.conns.load().get(&held.guard().instance().id).cloned();
        let Some(mut conn) = conn else {
            let msg = format!("instance {} of service {:?} just left", held.guard().instance().id, self.service);
            return Outcome::Unsent(stats(held.guard()), Failure::Answered(self.unavailable(msg)));
        };
        if let Err(e) = std::future::poll_fn(|cx| conn.poll_ready(cx)).await {
            let tried = stats(held.guard());
            held.take().connect_failure();
            return Outcome::Unsent(tried, Failure::Transport(e.into()));
        }
        let (body, read) = payload.body();
        let mut req = http::Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = extensions;
        if let Some(d) = deadline {
            set_grpc_timeout(req.headers_mut(), d.saturating_duration_since(Instant::now()));
        }
        match conn.call(req).await {
            Ok(resp) => {
                report(held.take(), &resp);
                Outcome::Answer(resp)
            }
            Err(e) => {
                // The connection failed: the instance is likely gone.
                let tried = stats(held.guard());
                held.take().connect_failure();
                let e: BoxError = e.into();
                if never_sent(&*e) || payload.unread(read.as_deref()) {
                    Outcome::Unsent(tried, Failure::Transport(e))
                } else {
                    Outcome::Failed(tried, e)
                }
            }
        }
    }
}

/// An attempt's guard; when it is dropped, callers waiting in `poll_ready`
/// for capacity are woken.
struct Held<'a> {
    guard: Option<Guard>,
    inner: &'a Inner,
}

impl Held<'_> {
    fn guard(&self) -> &Guard {
        self.guard.as_ref().expect("held until taken")
    }

    fn take(&mut self) -> Guard {
        self.guard.take().expect("taken once")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.inner.wake();
    }
}

/// What an attempt came to.
enum Outcome {
    Answer(http::Response<Body>),
    /// It never reached the instance; safe to send elsewhere.
    Unsent(Arc<EndpointStats>, Failure),
    /// The transport failed after the instance may have read the request.
    Failed(Arc<EndpointStats>, BoxError),
    /// Every instance is at its in-flight cap.
    Full,
    NoInstance(http::Response<Body>),
}

/// How a call ends when nothing more is tried.
enum Failure {
    Answered(http::Response<Body>),
    Transport(BoxError),
}

impl Failure {
    fn into_result(self) -> Result<http::Response<Body>, BoxError> {
        match self {
            Failure::Answered(resp) => Ok(resp),
            Failure::Transport(e) => Err(e),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Answered(resp) => write!(f, "answered {}", resp.status()),
            Failure::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Whether `e` proves the request never reached a server: the connection
/// was refused or could not be made, or the server refused the stream
/// before processing it (`REFUSED_STREAM`). Also used by the registry
/// client to tell a write that cannot have been applied.
pub(crate) fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_capacity(cx, &mut self.wait).map(Ok)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.inner.clone().send(req))
    }
}

/// Judges a call by its response head: UNAVAILABLE (also as HTTP 502/503)
/// counts as a failure. Latency is taken at the head, which for unary calls
/// is the server's processing time.
fn report(guard: Guard, resp: &http::Response<Body>) {
    let status = resp.status();
    let grpc_unavailable = resp.headers().get(GRPC_STATUS).is_some_and(|v| v == "14");
    if grpc_unavailable || status == http::StatusCode::BAD_GATEWAY || status == http::StatusCode::SERVICE_UNAVAILABLE {
        guard.failure();
    } else {
        guard.success();
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The call's `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `left` as `grpc-timeout` in whole milliseconds (at most 8 digits).
fn set_grpc_timeout(headers: &mut http::HeaderMap, left: Duration) {
    let ms = left.as_millis().clamp(1, 99_999_999);
    if let Ok(v) = http::HeaderValue::from_str(&format!("{ms}m")) {
        headers.insert(GRPC_TIMEOUT, v);
    }
}

// === request bodies that can be sent again ===

/// A call's request body as its attempts see it.
enum Payload {
    /// Complete and small: every attempt gets a copy.
    Kept { data: Bytes, trailers: Option<http::HeaderMap> },
    /// Long or still streaming: it goes to one attempt, and to another only
    /// if the first never read it (it is still in the slot).
    Once(Arc<Mutex<Option<Unread>>>),
}

/// The chunks read so far; the first is held inline.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Chunks {
    fn push(&mut self, d: Bytes) {
        if self.first.is_none() { self.first = Some(d) } else { self.more.push(d) }
    }

    fn concat(self) -> Bytes {
        match self.first {
            None => Bytes::new(),
            Some(first) if self.more.is_empty() => first,
            Some(first) => [&[first][..], &self.more].concat().concat().into(),
        }
    }

    fn into_deque(self) -> VecDeque<Bytes> {
        self.first.into_iter().chain(self.more).collect()
    }
}

/// A body no attempt has read yet: what was buffered, then the rest.
struct Unread {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl Payload {
    /// Reads what the body has ready, up to `cap` bytes. A body that ends
    /// within that is kept whole.
    async fn take(mut body: Body, cap: usize) -> Result<Payload, BoxError> {
        use http_body::Body as _;
        // A unary body is one chunk: it is held without a vector (an
        // allocation on every call).
        let mut chunks = Chunks::default();
        let mut len = 0;
        let kept = |chunks: Chunks, trailers| Ok(Payload::Kept { data: chunks.concat(), trailers });
        loop {
            if body.is_end_stream() {
                return kept(chunks, None);
            }
            let next = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            match next {
                Poll::Ready(None) => return kept(chunks, None),
                Poll::Ready(Some(Err(e))) => return Err(e.into()),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        len += d.len();
                        chunks.push(d);
                        if len > cap {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            return kept(chunks, Some(t));
                        }
                    }
                },
                Poll::Pending => break,
            }
        }
        Ok(Payload::Once(Arc::new(Mutex::new(Some(Unread { prefix: chunks.into_deque(), rest: body })))))
    }

    /// The body for one attempt, and the flag it sets once read (kept
    /// bodies only: a once-body tells by leaving its slot).
    fn body(&self) -> (Body, Option<Arc<AtomicBool>>) {
        match self {
            Payload::Kept { data, trailers } => {
                let read = Arc::new(AtomicBool::new(false));
                let body = KeptBody {
                    data: (!data.is_empty()).then(|| data.clone()),
                    trailers: trailers.clone(),
                    read: read.clone(),
                };
                (Body::new(body), Some(read))
            }
            Payload::Once(slot) => (Body::new(OnceBody { slot: slot.clone(), taken: None }), None),
        }
    }

    /// Whether another attempt can get the whole body.
    fn resendable(&self) -> bool {
        match self {
            Payload::Kept { .. } => true,
            Payload::Once(slot) => slot.lock().is_some(),
        }
    }

    /// Whether the attempt given `read` never read its body.
    fn unread(&self, read: Option<&AtomicBool>) -> bool {
        match (self, read) {
            (Payload::Kept { .. }, Some(r)) => !r.load(Ordering::Acquire),
            (Payload::Kept { .. }, None) => false,
            (Payload::Once(slot), _) => slot.lock().is_some(),
        }
    }
}

struct KeptBody {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    read: Arc<AtomicBool>,
}

impl http_body::Body for KeptBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.read.store(true, Ordering::Release);
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    // No exact `size_hint`: hyper would turn it into a `content-length`
    // header (formatted, encoded and parsed again on every call) that gRPC
    // does not use and tonic's own request body never sent.
}

struct OnceBody {
    slot: Arc<Mutex<Option<Unread>>>,
    taken: Option<Unread>,
}

impl http_body::Body for OnceBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.taken.is_none() {
            let taken = self.slot.lock().take();
            self.taken = taken;
        }
        let Some(unread) = self.taken.as_mut() else { return Poll::Ready(None) };
        if let Some(d) = unread.prefix.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        Pin::new(&mut unread.rest).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_in_every_unit() {
        let mut h = http::HeaderMap::new();
        for (v, d) in [
            ("2S", Duration::from_secs(2)),
            ("150m", Duration::from_millis(150)),
            ("7u", Duration::from_micros(7)),
            ("1H", Duration::from_secs(3600)),
        ] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), Some(d), "{v}");
        }
        h.insert("grpc-timeout", http::HeaderValue::from_static("12x"));
        assert_eq!(grpc_timeout(&h), None);
        set_grpc_timeout(&mut h, Duration::from_millis(1234));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(1234)));
    }

    #[test]
    fn a_policy_covers_its_methods_and_services_only() {
        let p = RetryPolicy::idempotent(["/hello.Hello/Say", "/kv.Store/"]);
        assert!(p.covers("/hello.Hello/Say"));
        assert!(p.covers("/kv.Store/Get"));
        assert!(!p.covers("/hello.Hello/SayAgain"));
        assert!(!p.covers("/kv.Storage/Get"));
        for n in 1..10 {
            assert!(p.backoff(n) <= p.max_backoff);
        }
    }

    #[test]
    fn only_refusals_prove_a_request_was_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&reset));
        assert!(never_sent(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(!never_sent(&h2::Error::from(h2::Reason::CANCEL)));
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(reset))));
        assert!(never_sent(&status), "the connect error is found through a Status");
    }

    #[tokio::test]
    async fn a_unary_body_is_kept_and_a_pending_stream_is_sent_once() {
        use http_body::Body as _;
        let body =
            Body::new(KeptBody { data: Some(Bytes::from_static(b"hello")), trailers: None, read: Arc::default() });
        let p = Payload::take(body, 1024).await.unwrap();
        assert!(matches!(&p, Payload::Kept { data, .. } if &data[..] == b"hello"));
        for _ in 0..2 {
            let (mut b, read) = p.body();
            assert!(p.unread(read.as_deref()));
            let f = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await.unwrap().unwrap();
            assert_eq!(&f.into_data().unwrap()[..], b"hello");
            assert!(!p.unread(read.as_deref()), "read once polled");
        }

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(1);
        let stream = http_body_util_free::StreamBody(tokio_stream::wrappers::ReceiverStream::new(rx));
        let p = Payload::take(Body::new(stream), 1024).await.unwrap();
        assert!(matches!(p, Payload::Once(_)), "a stream with nothing ready is not kept");
        let (mut first, _) = p.body();
        assert!(p.resendable() && p.unread(None), "an attempt that never read it leaves it for the next");
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        let f = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(&f.into_data().unwrap()[..], b"x");
        assert!(!p.resendable(), "once read, it cannot be sent again");
    }

    /// A body over a stream of frames (http-body-util's `StreamBody`, which
    /// this crate does not depend on).
    mod http_body_util_free {
        use super::*;
        pub struct StreamBody<S>(pub S);
        impl<S> http_body::Body for StreamBody<S>
        where
            S: tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, tonic::Status>> + Unpin,
        {
            type Data = Bytes;
            type Error = tonic::Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                Pin::new(&mut self.0).poll_next(cx)
            }
        }
    }
}
