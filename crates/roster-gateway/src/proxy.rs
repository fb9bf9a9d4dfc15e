//! The hyper engine (HTTP/2, h2c and so gRPC, and the HTTP/1.1 requests
//! the fast path hands over), and what both engines share: the attempts,
//! the failures and the access record. The pipeline itself is
//! `crate::pipeline`.

use crate::config::{Config, Policies};
use crate::limits::{Limited, Permit};
use crate::metrics::Metrics;
use crate::pipeline::{Ask, ErrorReply, Exchange, Reply, connection_tokens, hop_by_hop};
use crate::upstream::{Unavailable, Upstreams};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use roster::balance::RetryBudget;
use roster::balance::{EndpointStats, Guard};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Bodies up to this size are held so that the request can be retried.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;
/// How long the first frame of a body of unknown length (HTTP/2, gRPC) is
/// waited for before the body is streamed as it comes, and so sent once.
/// It was 1 ms, which a loaded machine overran: a unary gRPC call then
/// could not be sent to another instance when its first was refused.
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(50);
/// How long a new service may take to list its instances on first use.
pub(crate) const FIRST_LIST_WAIT: Duration = Duration::from_secs(2);

/// The metrics label of requests for no route or an unregistered name.
pub(crate) const UNROUTED: &str = "-";

/// What every request shares.
pub struct Proxy {
    pub config: ArcSwap<Config>,
    pub upstreams: Upstreams,
    pub metrics: Metrics,
}

/// Connection pools to the instances. Each worker thread has its own, so a
/// request and its upstream connection stay on one thread.
#[derive(Clone)]
pub struct Pools {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Pools {
    pub fn new() -> Pools {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.timer(TokioTimer::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(30));
        let http1 = builder.clone().pool_max_idle_per_host(1024).build(connector.clone());
        let http2 = builder.http2_only(true).build(connector);
        Pools { http1, http2 }
    }
}

impl Proxy {
    pub fn new(config: Config, upstreams: Upstreams) -> Proxy {
        Proxy { config: ArcSwap::from_pointee(config), upstreams, metrics: Metrics::new() }
    }

    /// The hyper engine: the request as hyper read it goes through the
    /// pipeline; the answer goes back through hyper.
    pub async fn handle(&self, pools: &Pools, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let host =
            parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(parts.uri.authority().map(|a| a.as_str()));
        // A length the client declared (and hyper holds the body to) goes on as it was.
        let content_length =
            if parts.headers.contains_key(header::CONTENT_LENGTH) { body.size_hint().exact() } else { None };
        let ask = Ask { client, method: &parts.method, host, path, grpc, content_length };
        // http's header iterator cannot be cloned; the pipeline reads the lines twice.
        let lines: Vec<(&[u8], &[u8])> =
            parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect();
        let mut exchange = HyperExchange {
            pools,
            method: parts.method.clone(),
            use_h2: grpc || parts.version == Version::HTTP_2,
            path: String::new(),
            headers: HeaderMap::new(),
            incoming: Some(body),
            body: RequestBody::Replayable(None),
        };
        // Held for the request, which may stream for long: not a guard.
        let config = self.config.load_full();
        match self.pipeline(&config, &ask, lines.iter().copied(), &mut exchange).await {
            Reply::Deliver { answer, permit } => relay_response(answer, permit, config.response_idle_timeout),
            Reply::Error(e) => e.into_response(),
        }
    }

    /// Counts an answered request and writes its access log line.
    pub(crate) fn record(&self, a: &Access<'_>, status: u16, took: Duration) {
        // No route and names nobody registered share one series.
        let service = if a.service.is_empty() { UNROUTED } else { a.service };
        self.metrics.request(service, a.instance, status, took);
        tracing::info!(
            target: "roster_gateway::access",
            client = %a.client.ip(), method = a.method, path = a.path, service = a.service, instance = a.instance, status,
            grpc_status = a.grpc_status, retries = a.retries, micros = took.as_micros() as u64,
        );
    }
}

/// One request on the hyper engine: the forwarded head is built from what
/// the pipeline writes; each attempt goes out through hyper's client.
struct HyperExchange<'p> {
    pools: &'p Pools,
    method: Method,
    use_h2: bool,
    path: String,
    headers: HeaderMap,
    incoming: Option<Incoming>,
    body: RequestBody,
}

impl Exchange for HyperExchange<'_> {
    type Answer = Response<Incoming>;

    fn target(&mut self, path: &str) {
        path.clone_into(&mut self.path);
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            self.headers.append(n, v);
        }
    }

    async fn body(&mut self) -> Result<bool, String> {
        if let Some(incoming) = self.incoming.take() {
            self.body = RequestBody::read(incoming).await?;
        }
        Ok(self.body.replayable())
    }

    async fn attempt(&mut self, instance: &str) -> Result<Response<Incoming>, Fault> {
        let uri: Uri = format!("http://{instance}{}", self.path)
            .parse()
            .map_err(|e| Fault::Transport(format!("bad instance address {instance}: {e}")))?;
        let mut up = Request::new(self.body.take());
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = self.headers.clone();
        *up.version_mut() = if self.use_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let sent = if self.use_h2 { self.pools.http2.request(up) } else { self.pools.http1.request(up) };
        sent.await.map_err(|e| {
            if e.is_connect() {
                Fault::Connect(format!("cannot connect to {instance}: {}", source_text(&e)))
            } else {
                Fault::Transport(format!("{instance}: {}", source_text(&e)))
            }
        })
    }

    fn status(answer: &Response<Incoming>) -> StatusCode {
        answer.status()
    }

    fn grpc_status(answer: &Response<Incoming>) -> Option<&[u8]> {
        answer.headers().get("grpc-status").map(HeaderValue::as_bytes)
    }
}

impl ErrorReply {
    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(if self.body.is_empty() { empty() } else { full(self.body) });
        *resp.status_mut() = self.status;
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(name, v);
            }
        }
        resp
    }
}

/// How an attempt failed before an answer came.
pub(crate) enum Fault {
    Timeout,
    Connect(String),
    Transport(String),
}

/// What to do with an answer.
pub(crate) enum Answered {
    /// Pass it to the caller.
    Deliver,
    /// Try another instance.
    Retry,
    /// Answer the caller with this instead.
    Fail(Failure),
}

/// One request's attempts, the same for both engines: after each one it
/// tells the balancer how the instance did and decides whether another
/// instance is tried, within the count, the deadline and the budget.
pub(crate) struct Attempts<'a> {
    metrics: &'a Metrics,
    budget: &'a RetryBudget,
    service: &'a str,
    max: u32,
    deadline: Instant,
    idempotent: bool,
    replayable: bool,
    retries: u32,
    /// Retries of attempts that never reached an instance; they do not
    /// count against `max`, only against the budget and the deadline.
    transparent: u32,
    /// The instances tried, so a retry goes elsewhere.
    tried: Vec<Arc<EndpointStats>>,
    last: LastError,
}

/// Transparent retries per request at most, whatever the set's size: the
/// budget bounds them across requests, this within one.
const MAX_TRANSPARENT: u32 = 8;

impl<'a> Attempts<'a> {
    /// Starts a request's attempts; the request pays into the retry budget.
    pub(crate) fn new(
        metrics: &'a Metrics,
        budget: &'a RetryBudget,
        service: &'a str,
        policies: &Policies,
        deadline: Instant,
        idempotent: bool,
        replayable: bool,
    ) -> Self {
        budget.deposit(policies.retry_budget_percent);
        Attempts {
            metrics,
            budget,
            service,
            max: policies.retries,
            deadline,
            idempotent,
            replayable,
            retries: 0,
            transparent: 0,
            tried: Vec::new(),
            last: LastError::None,
        }
    }

    /// The instances this request tried, for [`Balancer::pick_avoiding`](roster::balance::Balancer::pick_avoiding).
    pub(crate) fn tried(&self) -> &[Arc<EndpointStats>] {
        &self.tried
    }

    pub(crate) fn retries(&self) -> u32 {
        self.retries + self.transparent
    }

    /// Time left before the overall timeout.
    pub(crate) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether one more attempt is allowed: counts the retry if so.
    fn another(&mut self, wanted: bool, instance: &str) -> bool {
        let allowed = wanted && self.replayable && self.retries < self.max && Instant::now() < self.deadline;
        if !allowed || !self.budget.withdraw() {
            return false;
        }
        self.metrics.retry(self.service, instance);
        self.retries += 1;
        true
    }

    /// Whether an attempt that never reached its instance (refused
    /// connection) may go to another one: within the deadline and the
    /// budget, and not counted against `retries`, so that a dead instance
    /// not yet ejected, or probed half-open, never fails a request.
    fn transparently(&mut self, instance: &str) -> bool {
        let allowed = self.replayable && self.transparent < MAX_TRANSPARENT && Instant::now() < self.deadline;
        if !allowed || !self.budget.withdraw() {
            return false;
        }
        self.metrics.retry(self.service, instance);
        self.transparent += 1;
        true
    }

    /// The attempt failed before an answer: `Ok` to try another instance,
    /// or the failure to answer with.
    pub(crate) fn failed(&mut self, guard: Guard, instance: &str, fault: Fault) -> Result<(), Failure> {
        self.tried.push(guard.endpoint().stats.clone());
        // A refused connection never reached the instance: safe to retry anything.
        let (retryable, last) = match fault {
            Fault::Timeout => {
                guard.failure();
                (self.idempotent, LastError::Timeout)
            }
            Fault::Connect(why) => {
                guard.connect_failure();
                if self.transparently(instance) {
                    self.last = LastError::Transport(why);
                    return Ok(());
                }
                (false, LastError::Transport(why))
            }
            Fault::Transport(why) => {
                guard.failure();
                (self.idempotent, LastError::Transport(why))
            }
        };
        if self.another(retryable, instance) {
            self.last = last;
            Ok(())
        } else {
            Err(self.give_up(last))
        }
    }

    /// An answer came. An unavailable one (502/503 for idempotent HTTP,
    /// `UNAVAILABLE` for gRPC) is retried while allowed; after that an HTTP
    /// caller gets 502 and a gRPC caller the answer itself.
    pub(crate) fn answered(
        &mut self,
        guard: Guard,
        instance: &str,
        status: StatusCode,
        unavailable: bool,
        grpc: bool,
        latency: Duration,
    ) -> Answered {
        if unavailable {
            self.tried.push(guard.endpoint().stats.clone());
        }
        if unavailable && self.another(true, instance) {
            guard.failure();
            self.last = LastError::Status(status);
            return Answered::Retry;
        }
        if unavailable && !grpc {
            guard.failure();
            return Answered::Fail(self.give_up(LastError::Status(status)));
        }
        if status.is_server_error() || unavailable {
            guard.failure();
        } else {
            let mut guard = guard;
            guard.success_with(latency);
        }
        Answered::Deliver
    }

    /// No instance left to pick.
    pub(crate) fn exhausted(self) -> Failure {
        match self.last {
            LastError::None => Failure::NoInstance {
                service: self.service.to_owned(),
                detail: "no instance is registered or healthy".into(),
            },
            last => {
                Failure::Upstream { service: self.service.to_owned(), retries: self.retries + self.transparent, last }
            }
        }
    }

    /// Stops with `last` as the reason.
    pub(crate) fn give_up(&self, last: LastError) -> Failure {
        Failure::Upstream { service: self.service.to_owned(), retries: self.retries + self.transparent, last }
    }
}

/// What the access log says about a request, besides status and time.
pub(crate) struct Access<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub service: &'a str,
    pub instance: &'a str,
    pub grpc_status: &'a str,
    pub retries: u32,
}

#[derive(Debug)]
pub(crate) enum LastError {
    None,
    Timeout,
    Transport(String),
    Status(StatusCode),
}

#[derive(Debug)]
pub(crate) enum Failure {
    NoRoute {
        path: String,
    },
    NoInstance {
        service: String,
        detail: String,
    },
    /// No route names it and no instance is registered: nothing is kept
    /// about the name, not even a metrics series.
    Unknown {
        service: String,
    },
    BadRequest {
        service: String,
        detail: String,
    },
    Upstream {
        service: String,
        retries: u32,
        last: LastError,
    },
    /// Over the route's concurrency (503) or rate (429) limit.
    Limited {
        service: String,
        limited: Limited,
    },
}

impl Failure {
    pub(crate) fn unavailable(service: String, e: Unavailable) -> Failure {
        match e {
            Unavailable::Unknown => Failure::Unknown { service },
            e @ Unavailable::TooMany(_) => Failure::NoInstance { service, detail: e.to_string() },
        }
    }

    /// The service for metrics and the access log: empty when unrouted.
    pub(crate) fn service(&self) -> &str {
        match self {
            Failure::NoRoute { .. } | Failure::Unknown { .. } => "",
            Failure::NoInstance { service, .. }
            | Failure::BadRequest { service, .. }
            | Failure::Upstream { service, .. }
            | Failure::Limited { service, .. } => service,
        }
    }

    pub(crate) fn retries(&self) -> u32 {
        match self {
            Failure::Upstream { retries, .. } => *retries,
            _ => 0,
        }
    }

    /// Seconds for the `Retry-After` header, for answers that have one.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            Failure::Limited { limited: Limited::Concurrency, .. } => Some(1),
            Failure::Limited { limited: Limited::Rate { retry_after }, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Logs what the caller is not told: which instance failed and how.
    pub(crate) fn log(&self) {
        if let Failure::Upstream { service, retries, last: LastError::Transport(detail) } = self {
            tracing::warn!(service, retries, error = detail, "upstream failed");
        }
    }

    /// The HTTP status, the gRPC code and the JSON body that say it. Only
    /// with `debug` does the body show instance addresses and error text.
    pub(crate) fn parts(&self, debug: bool) -> (StatusCode, u8, serde_json::Value) {
        match self {
            Failure::NoRoute { path } => {
                (StatusCode::NOT_FOUND, 12, serde_json::json!({"error": "no route", "path": path}))
            }
            Failure::Unknown { service } => (
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                serde_json::json!({"error": "no instance available", "service": service, "detail": "no instance is registered"}),
            ),
            Failure::NoInstance { service, detail } => (
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                serde_json::json!({"error": "no instance available", "service": service, "detail": detail}),
            ),
            Failure::BadRequest { service, detail } => (
                StatusCode::BAD_REQUEST,
                13,
                serde_json::json!({"error": "cannot read the request body", "service": service, "detail": detail}),
            ),
            Failure::Limited { service, limited: Limited::Concurrency } => (
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                serde_json::json!({"error": "too many requests in flight", "service": service, "detail": "max_concurrent_requests reached"}),
            ),
            Failure::Limited { service, limited: Limited::Rate { .. } } => (
                StatusCode::TOO_MANY_REQUESTS,
                8,
                serde_json::json!({"error": "rate limited", "service": service, "detail": "rate_limit_per_second reached"}),
            ),
            Failure::Upstream { service, retries, last: LastError::Timeout } => (
                StatusCode::GATEWAY_TIMEOUT,
                4,
                serde_json::json!({"error": "upstream timed out", "service": service, "retries": retries}),
            ),
            Failure::Upstream { service, retries, last } => {
                let detail = match last {
                    LastError::Transport(t) if debug => t.clone(),
                    LastError::Transport(_) => "the instance could not be reached".to_owned(),
                    LastError::Status(s) => format!("upstream answered {s}"),
                    LastError::None | LastError::Timeout => String::new(),
                };
                (
                    StatusCode::BAD_GATEWAY,
                    14,
                    serde_json::json!({"error": "upstream failed", "service": service, "retries": retries, "detail": detail}),
                )
            }
        }
    }
}

/// The request body, held in memory when it is small enough to replay.
enum RequestBody {
    Replayable(Option<Bytes>),
    Streaming(Option<Body>),
}

impl RequestBody {
    /// Holds a body that is already complete (or has a small declared
    /// length); anything else streams through unbuffered.
    async fn read(mut body: Incoming) -> Result<RequestBody, String> {
        if body.is_end_stream() {
            return Ok(RequestBody::Replayable(None));
        }
        let small = body.size_hint().upper().is_some_and(|n| n as usize <= REPLAY_LIMIT);
        if small {
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            return Ok(RequestBody::Replayable(Some(bytes)));
        }
        // Unknown length (HTTP/2, gRPC): take what has already arrived; if
        // the end is among it, the body can be replayed.
        let mut held = Vec::new();
        let mut size = 0;
        while size <= REPLAY_LIMIT {
            // The first frame may wait for a busy connection task: a unary
            // gRPC body then stays replayable, so a refused connection can
            // go to another instance. Later frames are already in hand.
            let wait = if held.is_empty() { FIRST_FRAME_WAIT } else { Duration::from_millis(1) };
            match tokio::time::timeout(wait, body.frame()).await {
                Ok(None) => return Ok(RequestBody::Replayable(Some(concat(held)))),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        size += data.len();
                        held.push(data);
                        if body.is_end_stream() {
                            return Ok(RequestBody::Replayable(Some(concat(held))));
                        }
                    }
                    // Request trailers: rare; stream to keep them.
                    Err(frame) => return Ok(RequestBody::streaming(held, Some(frame), body)),
                },
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Ok(RequestBody::streaming(held, None, body))
    }

    fn streaming(held: Vec<Bytes>, extra: Option<Frame<Bytes>>, rest: Incoming) -> RequestBody {
        let head = tokio_stream::iter(held.into_iter().map(Frame::data).chain(extra).map(Ok::<_, BoxError>));
        let tail = BodyStream::new(rest).map(|r| r.map_err(|e| Box::new(e) as BoxError));
        RequestBody::Streaming(Some(BoxBody::new(StreamBody::new(head.chain(tail)))))
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }

    /// The body for one attempt. A streaming body can be sent once.
    fn take(&mut self) -> Body {
        match self {
            RequestBody::Replayable(None) => empty(),
            RequestBody::Replayable(Some(b)) => full(b.clone()),
            RequestBody::Streaming(s) => s.take().unwrap_or_else(empty),
        }
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let mut all = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        all.extend_from_slice(&p);
    }
    all.into()
}

pub fn full(b: Bytes) -> Body {
    BoxBody::new(Full::new(b).map_err(|never| match never {}))
}

pub fn empty() -> Body {
    BoxBody::new(Empty::new().map_err(|never| match never {}))
}

/// The instance's answer for the caller: hop-by-hop headers (and what its
/// `Connection` names) and its framing go, as hyper frames it anew; the
/// body comes through [`relay_body`].
fn relay_response(resp: Response<Incoming>, permit: Permit, idle: Duration) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let named: Vec<Vec<u8>> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| connection_tokens(v.as_bytes()))
        .map(<[u8]>::to_vec)
        .collect();
    let named: Vec<&[u8]> = named.iter().map(Vec::as_slice).collect();
    let drop: Vec<HeaderName> =
        parts.headers.keys().filter(|n| hop_by_hop(n.as_str().as_bytes(), &named)).cloned().collect();
    for n in drop {
        parts.headers.remove(n);
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, relay_body(body, permit, idle))
}

/// The answer's body, from a task of its own that holds `permit` (so a
/// streaming answer counts against the concurrency limit while it flows)
/// and the instance's connection. A frame the client does not take
/// within `idle` ends the task: the instance's connection is let go and
/// the client's answer ends in an error, never as if complete. Bodies
/// that are already complete skip the task.
fn relay_body(body: Incoming, permit: Permit, idle: Duration) -> Body {
    if body.is_end_stream() {
        return BoxBody::new(body.map_err(|e| Box::new(e) as BoxError));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let complete = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = complete.clone();
    let size = body.size_hint();
    tokio::spawn(async move {
        let _permit = permit;
        let mut body = body;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = tx.closed() => return,
            };
            let Some(frame) = frame else {
                done.store(true, std::sync::atomic::Ordering::Release);
                return;
            };
            let frame = frame.map_err(|e| Box::new(e) as BoxError);
            match tokio::time::timeout(idle, tx.send(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(
                        ?idle,
                        "response idle timeout: the client took nothing; the instance's connection is let go"
                    );
                    return;
                }
            }
        }
    });
    BoxBody::new(Relayed { rx, complete, size })
}

/// The client's side of [`relay_body`].
struct Relayed {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    complete: std::sync::Arc<std::sync::atomic::AtomicBool>,
    size: hyper::body::SizeHint,
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) if !self.complete.load(std::sync::atomic::Ordering::Acquire) => {
                std::task::Poll::Ready(Some(Err(
                    "the answer was cut off: response idle timeout or the instance went away".into(),
                )))
            }
            other => other,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.size
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn source_text(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text = format!("{text}: {s}");
        src = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_retried_after_a_send() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT) && is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
