//! One request pipeline for both engines: route → balance → attempts →
//! classify → respond, and the header rewrite, written once.
//!
//! An engine reads a request its own way (the fast path from bytes with
//! `httparse`, the hyper path from `http::Request`), describes it as an
//! [`Ask`] plus its header lines, and implements [`Exchange`]: how one
//! attempt's bytes go to an instance and how its answer head comes back.
//! Everything that decides is here:
//!
//! 1. route (`crate::route`), or 404;
//! 2. the service's upstream (discovery, balancer, budget), or 503;
//! 3. the route's concurrency and rate limits, or 503/429;
//! 4. the forwarded headers ([`forward_headers`]): hop-by-hop headers and
//!    whatever `Connection` names go, framing and forwarding headers are
//!    the gateway's own;
//! 5. attempts: pick an instance, send within the per-try and overall
//!    timeouts, classify the answer (unavailable or not), retry within the
//!    count, the deadline and the budget ([`Attempts`]);
//! 6. respond: the answer to deliver (with the concurrency permit held
//!    until its body ends) or one [`ErrorReply`]; the request is counted
//!    and logged here, once.
//!
//! The engines differ only in how they read and write bytes.

use crate::config::{Config, Policies};
use crate::limits::Permit;
use crate::proxy::{Access, Answered, Attempts, FIRST_LIST_WAIT, Failure, Fault, Proxy, is_idempotent};
use crate::route::route;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

/// What a request asks, as either engine read it.
pub(crate) struct Ask<'a> {
    pub client: SocketAddr,
    pub method: &'a Method,
    /// `Host` (or the URI's authority), when there is one.
    pub host: Option<&'a str>,
    /// The path and query as the client sent them.
    pub path: &'a str,
    pub grpc: bool,
    /// The one framing header to forward: the body's length, when the
    /// engine relays the body as it came. `None` leaves framing to the
    /// engine's writer (hyper computes it from the body it sends).
    pub content_length: Option<u64>,
}

/// One header line: name and value, as bytes.
pub(crate) type Line<'h> = (&'h [u8], &'h [u8]);

/// How an engine sends one attempt and reads its answer head.
pub(crate) trait Exchange {
    type Answer;

    /// The path and query to send, once, before the headers.
    fn target(&mut self, path: &str);
    /// One forwarded header, in order, as [`forward_headers`] decides.
    fn header(&mut self, name: &[u8], value: &[u8]);
    /// Gets the request body ready once the request is admitted; whether
    /// it can be sent more than once.
    async fn body(&mut self) -> Result<bool, String>;
    /// Sends the request to `instance` and reads the answer's head.
    async fn attempt(&mut self, instance: &str) -> Result<Self::Answer, Fault>;
    fn status(answer: &Self::Answer) -> StatusCode;
    /// `grpc-status` in the answer's head (a trailers-only answer), if any.
    fn grpc_status(answer: &Self::Answer) -> Option<&[u8]>;
}

/// What the engine writes back.
pub(crate) enum Reply<A> {
    /// The instance's answer; `permit` is held until its body ends.
    Deliver {
        answer: A,
        permit: Permit,
    },
    Error(ErrorReply),
}

/// An answer the gateway makes itself: status, headers and body, for
/// either engine to write.
pub(crate) struct ErrorReply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Bytes,
}

impl ErrorReply {
    /// A JSON error for HTTP callers; for gRPC callers a trailers-only
    /// answer with the matching `grpc-status`.
    pub(crate) fn from_failure(fail: &Failure, grpc: bool, debug: bool) -> ErrorReply {
        fail.log();
        let (status, grpc_code, body) = fail.parts(debug);
        let mut headers = Vec::with_capacity(4);
        let reply = if grpc {
            let message = body
                .get("detail")
                .and_then(|d| d.as_str())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| body["error"].as_str().unwrap_or(""));
            let name = match fail {
                Failure::Unknown { service } => service,
                other => other.service(),
            };
            let message = format!(
                "roster gateway: {message}{}",
                match name {
                    "" => String::new(),
                    s => format!(" (service {s:?})"),
                }
            );
            headers.push(("content-type", Cow::Borrowed("application/grpc")));
            headers.push(("grpc-status", Cow::Owned(grpc_code.to_string())));
            headers.push(("grpc-message", Cow::Owned(percent_encode(&message))));
            ErrorReply { status: StatusCode::OK, headers, body: Bytes::new() }
        } else {
            headers.push(("content-type", Cow::Borrowed("application/json")));
            ErrorReply { status, headers, body: Bytes::from(body.to_string() + "\n") }
        };
        let mut reply = reply;
        if let Some(s) = fail.retry_after() {
            reply.headers.push(("retry-after", Cow::Owned(s.to_string())));
        }
        reply
    }

    /// An error before a request could be read (400, 408, 431).
    pub(crate) fn plain(status: StatusCode, message: &str) -> ErrorReply {
        let body = serde_json::json!({ "error": message }).to_string() + "\n";
        ErrorReply {
            status,
            headers: vec![("content-type", Cow::Borrowed("application/json"))],
            body: Bytes::from(body),
        }
    }

    /// The gRPC status this answer carries, for the access log.
    fn grpc_status(&self) -> &str {
        self.headers.iter().find(|(n, _)| *n == "grpc-status").map_or("", |(_, v)| v)
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
pub(crate) fn percent_encode(message: &str) -> String {
    message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl Proxy {
    /// Runs one request through the pipeline and records it. `config` is
    /// the engine's current one: the fast path reads it through a
    /// per-connection [`arc_swap::Cache`], as an `Arc` clone per request
    /// was two contended atomic writes shared by every worker thread.
    pub(crate) async fn pipeline<'h, E, I>(
        &self,
        config: &Config,
        ask: &Ask<'_>,
        headers: I,
        exchange: &mut E,
    ) -> Reply<E::Answer>
    where
        E: Exchange,
        I: Iterator<Item = Line<'h>> + Clone,
    {
        let started = Instant::now();
        let (reply, service, instance, retries) = match self.attempts(config, started, ask, headers, exchange).await {
            Ok((answer, permit, service, instance, retries)) => {
                (Reply::Deliver { answer, permit }, service, instance, retries)
            }
            Err(fail) => {
                let reply = ErrorReply::from_failure(&fail, ask.grpc, config.debug_errors);
                (Reply::Error(reply), fail.service().to_owned(), "-".to_owned(), fail.retries())
            }
        };
        let (status, grpc_status) = match &reply {
            Reply::Deliver { answer, .. } => {
                let g = E::grpc_status(answer).and_then(|g| std::str::from_utf8(g).ok()).unwrap_or("");
                (E::status(answer), g)
            }
            Reply::Error(e) => (e.status, e.grpc_status()),
        };
        let path = logged_path(ask.path, config.access_log_redact_query);
        let access = Access {
            client: ask.client,
            method: ask.method.as_str(),
            path: &path,
            service: &service,
            instance: &instance,
            grpc_status,
            retries,
        };
        self.record(&access, status.as_u16(), started.elapsed());
        reply
    }

    #[allow(clippy::type_complexity)]
    async fn attempts<'h, E, I>(
        &self,
        config: &Config,
        started: Instant,
        ask: &Ask<'_>,
        headers: I,
        exchange: &mut E,
    ) -> Result<(E::Answer, Permit, String, String, u32), Failure>
    where
        E: Exchange,
        I: Iterator<Item = Line<'h>> + Clone,
    {
        let Some(target) = route(config, ask.host, ask.path, ask.grpc) else {
            return Err(Failure::NoRoute { path: ask.path.to_owned() });
        };
        let service = target.service.into_owned();
        let policies: &Policies = target.policies;
        let upstream = self
            .upstreams
            .get(&service, policies.policy, FIRST_LIST_WAIT, target.configured, started)
            .await
            .map_err(|e| Failure::unavailable(service.clone(), e))?;
        let permit = upstream
            .limiter
            .admit(policies)
            .map_err(|limited| Failure::Limited { service: service.clone(), limited })?;
        let hash_key = policies
            .hash_header
            .as_ref()
            .and_then(|name| headers.clone().find(|(n, _)| n.eq_ignore_ascii_case(name.as_str().as_bytes())));
        forward(config, ask, &target.path, headers, exchange);
        let replayable =
            exchange.body().await.map_err(|detail| Failure::BadRequest { service: service.clone(), detail })?;

        let idempotent = ask.grpc || is_idempotent(ask.method);
        let deadline = started + policies.timeout;
        let mut attempts =
            Attempts::new(&self.metrics, &upstream.budget, &service, policies, deadline, idempotent, replayable);
        loop {
            // An instance not tried yet first; with every one tried, any.
            let key = hash_key.map(|(_, v)| v);
            let picked = upstream.balancer.pick_avoiding(key, attempts.tried()).or_else(|| upstream.balancer.pick(key));
            let Some(guard) = picked else {
                return Err(attempts.exhausted());
            };
            let instance = guard.instance().addr.clone();
            let try_started = Instant::now();
            let fault =
                match tokio::time::timeout(policies.per_try_timeout.min(attempts.left()), exchange.attempt(&instance))
                    .await
                {
                    Err(_) => Fault::Timeout,
                    Ok(Err(fault)) => fault,
                    Ok(Ok(answer)) => {
                        let status = E::status(&answer);
                        let unavailable = unavailable(ask.grpc, idempotent, status, E::grpc_status(&answer));
                        match attempts.answered(guard, &instance, status, unavailable, ask.grpc, try_started.elapsed())
                        {
                            Answered::Retry => continue,
                            Answered::Fail(f) => return Err(f),
                            Answered::Deliver => {
                                let retries = attempts.retries();
                                return Ok((answer, permit, service, instance, retries));
                            }
                        }
                    }
                };
            attempts.failed(guard, &instance, fault)?;
        }
    }
}

/// Writes the request's target and forwarded headers to `exchange`.
pub(crate) fn forward<'h, E: Exchange>(
    config: &Config,
    ask: &Ask<'_>,
    path: &str,
    headers: impl Iterator<Item = Line<'h>> + Clone,
    exchange: &mut E,
) {
    let trusted = !config.trusted_proxies.is_empty() && config.trusts(ask.client.ip());
    exchange.target(path);
    forward_headers(headers, ask, trusted, exchange);
}

/// Whether an answer says the instance could not serve: gRPC
/// `UNAVAILABLE`, or 502/503 to an idempotent HTTP request.
pub(crate) fn unavailable(grpc: bool, idempotent: bool, status: StatusCode, grpc_status: Option<&[u8]>) -> bool {
    if grpc {
        grpc_status == Some(b"14")
    } else {
        idempotent && matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// The path as the access log shows it: with `redact`, the query is
/// replaced by `?REDACTED` (tokens and personal data often ride there).
pub(crate) fn logged_path(path: &str, redact: bool) -> Cow<'_, str> {
    if !redact {
        // The common case costs nothing: this runs for every request.
        return Cow::Borrowed(path);
    }
    match path.split_once('?') {
        Some((p, _)) => Cow::Owned(format!("{p}?REDACTED")),
        None => Cow::Borrowed(path),
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Whether a header stays on this hop: a hop-by-hop one, or one the
/// message's `Connection` names. For requests and answers, both engines.
pub(crate) fn hop_by_hop(name: &[u8], named: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
        || named.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// The names a `Connection` value lists.
pub(crate) fn connection_tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Headers the gateway always writes itself, so the client's never pass.
pub(crate) const REWRITTEN: [&str; 6] =
    ["host", "content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Writes the headers to forward, for both engines: the client's
/// end-to-end headers in order, minus hop-by-hop ones, whatever
/// `Connection` names, framing, `Host` and forwarding headers; then the one
/// framing header the gateway computed and its forwarding headers. A
/// `trusted` client's `X-Forwarded-*` are extended; anyone else's are
/// replaced. gRPC keeps `te: trailers`, the one `TE` HTTP/2 allows.
pub(crate) fn forward_headers<'h, E: Exchange>(
    headers: impl Iterator<Item = Line<'h>> + Clone,
    ask: &Ask<'_>,
    trusted: bool,
    out: &mut E,
) {
    let mut named: Vec<&[u8]> = Vec::new();
    let mut te_trailers = false;
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut proto: Option<&[u8]> = None;
    let mut forwarded_host: Option<&[u8]> = None;
    for (n, v) in headers.clone() {
        if n.eq_ignore_ascii_case(b"connection") {
            named.extend(connection_tokens(v));
        } else if n.eq_ignore_ascii_case(b"te") {
            te_trailers |= ask.grpc && v.trim_ascii().eq_ignore_ascii_case(b"trailers");
        } else if trusted && n.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.push(v);
        } else if trusted && n.eq_ignore_ascii_case(b"x-forwarded-proto") {
            proto.get_or_insert(v);
        } else if trusted && n.eq_ignore_ascii_case(b"x-forwarded-host") {
            forwarded_host.get_or_insert(v);
        }
    }
    for (n, v) in headers {
        if !(REWRITTEN.iter().any(|r| n.eq_ignore_ascii_case(r.as_bytes())) || hop_by_hop(n, &named)) {
            out.header(n, v);
        }
    }
    if te_trailers {
        out.header(b"te", b"trailers");
    }
    if let Some(n) = ask.content_length {
        let mut digits = [0u8; 20];
        let len = write_into(&mut digits, format_args!("{n}"));
        out.header(b"content-length", &digits[..len]);
    }
    // An address is at most 45 bytes; a trusted chain goes to the heap.
    let mut ip = [0u8; 48];
    let ip_len = write_into(&mut ip, format_args!("{}", ask.client.ip()));
    if xff.is_empty() {
        out.header(b"x-forwarded-for", &ip[..ip_len]);
    } else {
        let mut chain = Vec::with_capacity(64);
        for prev in &xff {
            chain.extend_from_slice(prev);
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(&ip[..ip_len]);
        out.header(b"x-forwarded-for", &chain);
    }
    out.header(b"x-forwarded-proto", proto.unwrap_or(b"http"));
    if let Some(h) = forwarded_host.or(ask.host.map(str::as_bytes)) {
        out.header(b"x-forwarded-host", h);
    }
}

/// Formats into a stack buffer; returns the length written.
fn write_into(buf: &mut [u8], args: std::fmt::Arguments<'_>) -> usize {
    let mut cursor = std::io::Cursor::new(buf);
    let _ = cursor.write_fmt(args);
    cursor.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the rewrite forwards.
    #[derive(Default)]
    struct Lines(Vec<(String, String)>);

    impl Exchange for Lines {
        type Answer = ();
        fn target(&mut self, _: &str) {}
        fn header(&mut self, name: &[u8], value: &[u8]) {
            self.0.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
        }
        async fn body(&mut self) -> Result<bool, String> {
            Ok(true)
        }
        async fn attempt(&mut self, _: &str) -> Result<(), Fault> {
            Ok(())
        }
        fn status(_: &()) -> StatusCode {
            StatusCode::OK
        }
        fn grpc_status(_: &()) -> Option<&[u8]> {
            None
        }
    }

    fn rewrite(
        lines: &[(&str, &str)],
        grpc: bool,
        trusted: bool,
        content_length: Option<u64>,
    ) -> Vec<(String, String)> {
        let ask = Ask {
            client: "127.0.0.9:5555".parse().unwrap(),
            method: &Method::GET,
            host: Some("gw:8080"),
            path: "/x",
            grpc,
            content_length,
        };
        let mut out = Lines::default();
        forward_headers(lines.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &ask, trusted, &mut out);
        out.0
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_and_the_gateways_own_come() {
        let lines = [
            ("Connection", "keep-alive, x-secret, content-length"),
            ("x-secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("Host", "gw:8080"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("x-app", "kept"),
        ];
        assert_eq!(
            rewrite(&lines, false, false, Some(5)),
            pairs(&[
                ("x-app", "kept"),
                ("content-length", "5"),
                ("x-forwarded-for", "127.0.0.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "gw:8080")
            ]),
            "an untrusted client's forwarding headers are replaced; framing is the gateway's"
        );
        assert_eq!(
            rewrite(&lines, true, true, None),
            pairs(&[
                ("x-app", "kept"),
                ("te", "trailers"),
                ("x-forwarded-for", "10.0.0.1, 127.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "gw:8080")
            ]),
            "a trusted proxy's are extended; gRPC keeps te: trailers"
        );
    }

    #[test]
    fn the_access_log_can_redact_query_strings() {
        assert_eq!(logged_path("/a/b?token=s3cret&x=1", true), "/a/b?REDACTED");
        assert_eq!(logged_path("/a/b?token=s3cret", false), "/a/b?token=s3cret");
        assert_eq!(logged_path("/a/b", true), "/a/b");
    }

    #[test]
    fn unavailable_means_grpc_14_or_an_idempotent_502_503() {
        assert!(unavailable(true, true, StatusCode::OK, Some(b"14")));
        assert!(!unavailable(true, true, StatusCode::SERVICE_UNAVAILABLE, None));
        assert!(unavailable(false, true, StatusCode::BAD_GATEWAY, None));
        assert!(
            !unavailable(false, false, StatusCode::SERVICE_UNAVAILABLE, None),
            "a POST is not retried after it was sent"
        );
    }

    #[test]
    fn grpc_errors_carry_status_and_a_percent_encoded_message() {
        let r = ErrorReply::from_failure(
            &Failure::NoInstance { service: "s".into(), detail: "100% gone".into() },
            true,
            false,
        );
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.grpc_status(), "14");
        let msg = r.headers.iter().find(|(n, _)| *n == "grpc-message").unwrap().1.clone();
        assert_eq!(msg, "roster gateway: 100%25 gone (service \"s\")");
    }
}
