//! One request through the gateway: route, pick an instance, forward with
//! retries, stream the answer back.

use crate::config::{Config, Policies};
use crate::metrics::Metrics;
use crate::route::route;
use crate::limits::{Limited, Permit};
use crate::upstream::{RetryBudget, Unavailable, Upstream, Upstreams};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use roster::balance::Guard;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Bodies up to this size are held so that the request can be retried.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;
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

    pub async fn handle(&self, pools: &Pools, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let grpc = is_grpc(req.headers());
        let method = req.method().clone();
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let outcome = self.forward(pools, req, client, grpc, &path).await;
        let (resp, service, instance, retries) = match outcome {
            Ok(done) => (done.response, done.service, done.instance, done.retries),
            Err(fail) => (fail.response(grpc, self.config.load().debug_errors), fail.service().to_owned(), "-".to_owned(), fail.retries()),
        };
        let grpc_status = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("");
        let access = Access { client, method: method.as_str(), path: &path, service: &service, instance: &instance, grpc_status, retries };
        self.record(&access, resp.status().as_u16(), started.elapsed());
        resp
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

    async fn forward(&self, pools: &Pools, req: Request<Incoming>, client: SocketAddr, grpc: bool, path: &str) -> Result<Done, Failure> {
        let config = self.config.load();
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().authority().map(|a| a.as_str())).map(str::to_owned);
        let Some(target) = route(&config, host.as_deref(), path, grpc) else {
            return Err(Failure::NoRoute { path: path.to_owned() });
        };
        let service = target.service.into_owned();
        let policies: &Policies = target.policies;
        let upstream = self
            .upstreams
            .get(&service, policies.policy, FIRST_LIST_WAIT, target.configured)
            .await
            .map_err(|e| Failure::unavailable(service.clone(), e))?;
        // Held until the response body ends or is dropped (see `hold`).
        let permit = admit(&upstream, &service, policies)?;
        let (mut parts, body) = req.into_parts();
        let hash_key = policies.hash_header.as_ref().and_then(|h| parts.headers.get(h)).map(|v| v.as_bytes().to_vec());
        let trusted = !config.trusted_proxies.is_empty() && config.trusts(client.ip());
        prepare_headers(&mut parts.headers, client, host.as_deref(), grpc, trusted);
        let version = parts.version;
        let idempotent = grpc || is_idempotent(&parts.method);
        let mut body = RequestBody::read(body).await.map_err(|e| Failure::BadRequest { service: service.clone(), detail: e })?;

        let deadline = Instant::now() + policies.timeout;
        let mut attempts = Attempts::new(&self.metrics, &upstream.budget, &service, policies, deadline, idempotent, body.replayable());
        loop {
            let Some(guard) = upstream.balancer.pick(hash_key.as_deref()) else {
                return Err(attempts.exhausted());
            };
            let instance = guard.instance().addr.clone();
            let uri: Uri = match format!("http://{instance}{}", target.path).parse() {
                Ok(u) => u,
                Err(e) => {
                    guard.failure();
                    return Err(attempts.give_up(LastError::Transport(format!("bad instance address {instance}: {e}"))));
                }
            };
            let mut up = Request::from_parts(parts.clone(), body.take());
            *up.uri_mut() = uri;
            let use_h2 = grpc || version == Version::HTTP_2;
            *up.version_mut() = if use_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
            let try_started = Instant::now();
            let sent = if use_h2 { pools.http2.request(up) } else { pools.http1.request(up) };
            let fault = match tokio::time::timeout(policies.per_try_timeout.min(attempts.left()), sent).await {
                Err(_) => Fault::Timeout,
                Ok(Err(e)) if e.is_connect() => Fault::Connect(format!("cannot connect to {instance}: {}", source_text(&e))),
                Ok(Err(e)) => Fault::Transport(format!("{instance}: {}", source_text(&e))),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let unavailable = if grpc {
                        resp.headers().get("grpc-status").is_some_and(|s| s == "14")
                    } else {
                        idempotent && matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE)
                    };
                    match attempts.answered(guard, &instance, status, unavailable, grpc, try_started.elapsed()) {
                        Answered::Retry => continue,
                        Answered::Fail(f) => return Err(f),
                        Answered::Deliver => {
                            let retries = attempts.retries();
                            return Ok(Done { response: hold(finish_response(resp), permit), service, instance, retries });
                        }
                    }
                }
            };
            attempts.failed(guard, &instance, fault)?;
        }
    }
}

/// Admits a request under its route's concurrency and rate limits; the
/// same check for both engines.
pub(crate) fn admit(upstream: &Upstream, service: &str, policies: &Policies) -> Result<Permit, Failure> {
    upstream.limiter.admit(policies).map_err(|limited| Failure::Limited { service: service.to_owned(), limited })
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
    last: LastError,
}

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
        Attempts { metrics, budget, service, max: policies.retries, deadline, idempotent, replayable, retries: 0, last: LastError::None }
    }

    pub(crate) fn retries(&self) -> u32 {
        self.retries
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

    /// The attempt failed before an answer: `Ok` to try another instance,
    /// or the failure to answer with.
    pub(crate) fn failed(&mut self, guard: Guard, instance: &str, fault: Fault) -> Result<(), Failure> {
        // A refused connection never reached the instance: safe to retry anything.
        let (retryable, last) = match fault {
            Fault::Timeout => {
                guard.failure();
                (self.idempotent, LastError::Timeout)
            }
            Fault::Connect(why) => {
                guard.connect_failure();
                (true, LastError::Transport(why))
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
    pub(crate) fn answered(&mut self, guard: Guard, instance: &str, status: StatusCode, unavailable: bool, grpc: bool, latency: Duration) -> Answered {
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
            LastError::None => Failure::NoInstance { service: self.service.to_owned(), detail: "no instance is registered or healthy".into() },
            last => Failure::Upstream { service: self.service.to_owned(), retries: self.retries, last },
        }
    }

    /// Stops with `last` as the reason.
    pub(crate) fn give_up(&self, last: LastError) -> Failure {
        Failure::Upstream { service: self.service.to_owned(), retries: self.retries, last }
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

struct Done {
    response: Response<Body>,
    service: String,
    instance: String,
    retries: u32,
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
    NoRoute { path: String },
    NoInstance { service: String, detail: String },
    /// No route names it and no instance is registered: nothing is kept
    /// about the name, not even a metrics series.
    Unknown { service: String },
    BadRequest { service: String, detail: String },
    Upstream { service: String, retries: u32, last: LastError },
    /// Over the route's concurrency (503) or rate (429) limit.
    Limited { service: String, limited: Limited },
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

    /// A JSON error for HTTP callers; for gRPC callers, a trailers-only
    /// answer with the matching `grpc-status`.
    fn response(&self, grpc: bool, debug: bool) -> Response<Body> {
        self.log();
        let (status, grpc_code, body) = self.parts(debug);
        if grpc {
            let message = body.get("detail").and_then(|d| d.as_str()).filter(|d| !d.is_empty()).unwrap_or_else(|| body["error"].as_str().unwrap_or(""));
            let name = match self {
                Failure::Unknown { service } => service,
                other => other.service(),
            };
            let message = format!("roster gateway: {message}{}", match name {
                "" => String::new(),
                s => format!(" (service {s:?})"),
            });
            let mut resp = grpc_error(grpc_code, &message);
            if let Some(s) = self.retry_after() {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            return resp;
        }
        let mut resp = Response::new(full(Bytes::from(body.to_string() + "\n")));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A gRPC trailers-only error: HTTP 200 with the status in the headers.
pub fn grpc_error(code: u8, message: &str) -> Response<Body> {
    let mut resp = Response::new(empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
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
            match tokio::time::timeout(Duration::from_millis(1), body.frame()).await {
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

fn finish_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, BoxBody::new(body.map_err(|e| Box::new(e) as BoxError)))
}

/// Keeps `permit` until the response body is done, so a streaming answer
/// (a gRPC stream, a large download) counts against the concurrency limit
/// for as long as it flows.
fn hold(resp: Response<Body>, permit: Permit) -> Response<Body> {
    if !permit.counts() {
        return resp;
    }
    resp.map(|body| {
        BoxBody::new(body.map_frame(move |f| {
            let _ = &permit;
            f
        }))
    })
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let te_trailers = keep_te_trailers && h.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
    if te_trailers {
        // gRPC needs `te: trailers` on HTTP/2; it is the one TE value allowed there.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Sets the forwarding headers. A `trusted` client's are extended; anyone
/// else's are replaced.
fn prepare_headers(h: &mut HeaderMap, client: SocketAddr, host: Option<&str>, grpc: bool, trusted: bool) {
    strip_hop_by_hop(h, grpc);
    let mut xff = String::new();
    if trusted {
        for prev in h.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()) {
            xff.push_str(prev);
            xff.push_str(", ");
        }
    }
    xff.push_str(&client.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    if !(trusted && h.contains_key("x-forwarded-proto")) {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !(trusted && h.contains_key("x-forwarded-host")) {
        match host.and_then(|host| HeaderValue::from_str(host).ok()) {
            Some(v) => h.insert("x-forwarded-host", v),
            None => h.remove("x-forwarded-host"),
        };
    }
    // The client sets Host from the instance's address.
    h.remove(header::HOST);
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
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::HOST, HeaderValue::from_static("gw:8080"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let mut trusted = h.clone();
        prepare_headers(&mut h, "127.0.0.9:5555".parse().unwrap(), Some("gw:8080"), false, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TE).is_none(), "te only survives for gRPC");
        assert_eq!(h["x-forwarded-for"], "127.0.0.9", "an untrusted client's forwarding headers are replaced");
        prepare_headers(&mut trusted, "127.0.0.9:5555".parse().unwrap(), Some("gw:8080"), false, true);
        assert_eq!(trusted["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!((h["x-forwarded-proto"].to_str().unwrap(), h["x-forwarded-host"].to_str().unwrap()), ("http", "gw:8080"));
        assert_eq!(h["x-app"], "kept");
        assert!(h.get(header::HOST).is_none());

        let mut g = HeaderMap::new();
        g.insert(header::TE, HeaderValue::from_static("trailers"));
        prepare_headers(&mut g, "127.0.0.1:1".parse().unwrap(), None, true, false);
        assert_eq!(g[header::TE], "trailers");
    }

    #[test]
    fn grpc_errors_carry_status_and_a_percent_encoded_message() {
        let r = grpc_error(14, "no instance: 100% gone");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no instance: 100%25 gone");
    }

    #[test]
    fn only_safe_methods_are_retried_after_a_send() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT) && is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
