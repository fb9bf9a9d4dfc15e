//! The HTTP/1.1 fast path: plain requests are parsed with `httparse` and
//! forwarded as bytes over pooled upstream connections, with the same
//! routing, balancing, retries, timeouts and errors as [`crate::proxy`].
//!
//! Why: with hyper on both sides of the proxy, user space cost about as
//! much per request as the kernel's loopback TCP path, and the gateway
//! served fewer requests per second than nginx on the same cores. Here a
//! request is one read from the client, one write and one read upstream,
//! one write back, with little in between.
//!
//! Anything out of the ordinary goes to hyper instead, with the bytes read
//! so far: h2c (and so gRPC), HTTP/1.0, `Upgrade`, `Expect`, chunked or
//! large (> 64 KiB) request bodies, and request targets that are not a
//! path. The hand-over happens between requests, so hyper starts clean.

#[cfg(test)]
mod fuzz;
mod request;
pub(crate) mod strict;

use crate::config::Config;
use crate::pipeline::{ErrorReply, Exchange, Reply, connection_tokens, hop_by_hop};
use crate::proxy::{Fault, Proxy, REPLAY_LIMIT, is_idempotent};
use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use parking_lot::Mutex;
use request::{Parsed, RequestHead, header_line, parse_length, parse_request};
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const MAX_HEADERS: usize = 128;
/// How long a kept-alive client connection may sit idle between requests.
const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// Pooled upstream connections idle longer than this are closed.
const POOL_IDLE: Duration = Duration::from_secs(30);
const POOL_MAX_PER_INSTANCE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// An instance's response head larger than this is a failed attempt.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bound on reading a small request body after its head.
const MIN_BODY_READ: Duration = Duration::from_secs(10);

/// Idle keep-alive connections to instances, by address. One per worker
/// thread, so the lock is never contended.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
}

impl Pool {
    /// A pooled connection that still looks open.
    fn take(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(addr)?;
        while let Some((s, since)) = list.pop() {
            if since.elapsed() > POOL_IDLE {
                continue;
            }
            // An instance that closed the connection has left EOF (or a
            // reset) to read; a live idle one has nothing.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(s),
                _ => continue,
            }
        }
        None
    }

    fn put(&self, addr: &str, s: TcpStream) {
        let mut idle = self.idle.lock();
        let list = match idle.get_mut(addr) {
            Some(l) => l,
            None => idle.entry(addr.to_owned()).or_default(),
        };
        if list.len() < POOL_MAX_PER_INSTANCE {
            list.push((s, Instant::now()));
        }
    }

    /// Closes connections idle past [`POOL_IDLE`], including those to
    /// instances that are gone.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock();
        idle.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() <= POOL_IDLE);
            !list.is_empty()
        });
    }
}

/// What the fast path leaves behind.
pub enum Handover {
    /// The connection is finished.
    Done,
    /// hyper serves the rest of the connection, starting with `buffered`.
    Hyper(TcpStream, BytesMut),
}

/// Serves requests on `client` until it closes, the gateway drains, or a
/// request needs hyper.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    pool: &Pool,
    mut drain: watch::Receiver<bool>,
) -> Handover {
    let (header_timeout, max_head) = {
        let c = proxy.config.load();
        (c.header_read_timeout, c.max_header_bytes.max(8192))
    };
    // Reloads show on the next request; reading the current config costs
    // one atomic load, with no shared write.
    let mut config = arc_swap::Cache::new(&proxy.config);
    let mut buf = BytesMut::with_capacity(4096);
    // The first head is bounded from the accept; later ones from their first byte.
    let mut head_started = Some(Instant::now());
    loop {
        let idle_since = Instant::now();
        let head = loop {
            if !buf.is_empty() {
                // The HTTP/2 preface (h2c with prior knowledge) starts "PRI ".
                let maybe_h2 = b"PRI ".starts_with(&buf[..buf.len().min(4)]);
                if maybe_h2 && buf.len() >= 4 {
                    return Handover::Hyper(client, buf);
                }
                if !maybe_h2 {
                    let parsed = parse_request(&buf);
                    let too_large = match &parsed {
                        Parsed::Complete(head) => head.head_len > max_head,
                        Parsed::Partial => buf.len() >= max_head,
                        _ => false,
                    };
                    if too_large {
                        answer_error(
                            &mut client,
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request head too large",
                        )
                        .await;
                        return Handover::Done;
                    }
                    match parsed {
                        Parsed::Complete(head) => break head,
                        Parsed::Hyper { .. } => return Handover::Hyper(client, buf),
                        Parsed::Partial => {}
                        Parsed::TooManyHeaders => {
                            answer_error(
                                &mut client,
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "too many header fields",
                            )
                            .await;
                            return Handover::Done;
                        }
                        Parsed::Bad(why) => {
                            answer_error(&mut client, StatusCode::BAD_REQUEST, why).await;
                            return Handover::Done;
                        }
                    }
                }
                head_started.get_or_insert_with(Instant::now);
            }
            if buf.is_empty() && *drain.borrow() {
                return Handover::Done;
            }
            let deadline = match head_started {
                Some(t) => t + header_timeout,
                None => idle_since + CLIENT_IDLE,
            };
            buf.reserve(4096);
            tokio::select! {
                read = client.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Handover::Done,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    if head_started.is_some() && !buf.is_empty() {
                        answer_error(&mut client, StatusCode::REQUEST_TIMEOUT, "request head not received in time").await;
                    }
                    return Handover::Done;
                }
                _ = drain.changed(), if buf.is_empty() => return Handover::Done,
            }
        };
        let body_len = head.content_length.unwrap_or(0);
        if body_len > REPLAY_LIMIT as u64 {
            // Large bodies stream through hyper instead of being held.
            return Handover::Hyper(client, buf);
        }
        let whole = head.head_len + body_len as usize;
        if buf.len() < whole {
            let limit = header_timeout.max(MIN_BODY_READ);
            let read = tokio::time::timeout(limit, async {
                while buf.len() < whole {
                    buf.reserve(whole - buf.len());
                    if client.read_buf(&mut buf).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok::<_, io::Error>(())
            })
            .await;
            match read {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Handover::Done,
                Err(_) => {
                    answer_error(&mut client, StatusCode::REQUEST_TIMEOUT, "request body not received in time").await;
                    return Handover::Done;
                }
            }
        }
        let head_bytes = buf.split_to(head.head_len);
        let body = buf.split_to(body_len as usize);
        head_started = None;
        match exchange(&mut client, peer, proxy, config.load(), pool, &head, &head_bytes, &body).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Handover::Done,
        }
        if *drain.borrow() && buf.is_empty() {
            return Handover::Done;
        }
    }
}

/// One request on the fast path: through the pipeline, then the answer
/// relayed as bytes. `Ok(true)` keeps the client connection for another.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    client: &mut TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    config: &Config,
    pool: &Pool,
    head: &RequestHead,
    head_bytes: &[u8],
    body: &[u8],
) -> io::Result<bool> {
    let ask = head.ask(head_bytes, peer);
    let mut exchange = FastExchange::new(pool, &head.method, body, head_bytes.len());
    match proxy.pipeline(config, &ask, head.lines(head_bytes), &mut exchange).await {
        Reply::Deliver { answer, permit } => {
            // Held until the answer is relayed.
            let _permit = permit;
            let no_body = head.method == Method::HEAD;
            let idle = config.response_idle_timeout;
            relay(client, pool, answer, exchange.rbuf, no_body, head.close, idle).await
        }
        Reply::Error(reply) => write_reply(client, &reply, head.close).await,
    }
}

/// One request on the fast path: the head is written as bytes from what
/// the pipeline decides; each attempt writes it and the body to a pooled
/// connection and reads the answer's head.
struct FastExchange<'a> {
    pool: &'a Pool,
    method: &'a Method,
    idempotent: bool,
    request_line: Vec<u8>,
    /// Header lines after `host:`, without the blank line.
    headers: Vec<u8>,
    body: &'a [u8],
    /// The answer's head and what came after it.
    rbuf: BytesMut,
}

/// An instance's answer on the fast path: its connection and head.
struct Upstreamed {
    conn: TcpStream,
    addr: String,
    head: ResponseHead,
}

impl<'a> FastExchange<'a> {
    fn new(pool: &'a Pool, method: &'a Method, body: &'a [u8], head_len: usize) -> Self {
        FastExchange {
            pool,
            method,
            idempotent: is_idempotent(method),
            request_line: Vec::new(),
            headers: Vec::with_capacity(head_len + 128),
            body,
            rbuf: BytesMut::new(),
        }
    }

    /// The bytes sent to `instance`.
    fn request(&self, instance: &str) -> Vec<u8> {
        let mut request =
            Vec::with_capacity(self.request_line.len() + instance.len() + self.headers.len() + self.body.len() + 10);
        request.extend_from_slice(&self.request_line);
        header_line(&mut request, b"host", instance.as_bytes());
        request.extend_from_slice(&self.headers);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(self.body);
        request
    }
}

impl Exchange for FastExchange<'_> {
    type Answer = Upstreamed;

    fn target(&mut self, path: &str) {
        self.request_line.clear();
        self.request_line.extend_from_slice(self.method.as_str().as_bytes());
        self.request_line.push(b' ');
        self.request_line.extend_from_slice(path.as_bytes());
        self.request_line.extend_from_slice(b" HTTP/1.1\r\n");
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        header_line(&mut self.headers, name, value);
    }

    async fn body(&mut self) -> Result<bool, String> {
        Ok(true)
    }

    async fn attempt(&mut self, instance: &str) -> Result<Upstreamed, Fault> {
        let request = self.request(instance);
        if self.rbuf.capacity() == 0 {
            self.rbuf.reserve(4096);
        }
        match send(self.pool, instance, &request, &mut self.rbuf, self.idempotent).await {
            Ok((conn, head)) => Ok(Upstreamed { conn, addr: instance.to_owned(), head }),
            Err(SendError::Connect(e)) => Err(Fault::Connect(format!("cannot connect to {instance}: {e}"))),
            Err(SendError::Exchange(e)) => Err(Fault::Transport(format!("{instance}: {e}"))),
        }
    }

    fn status(answer: &Upstreamed) -> StatusCode {
        StatusCode::from_u16(answer.head.status).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    fn grpc_status(_: &Upstreamed) -> Option<&[u8]> {
        None
    }
}

/// The head the fast path would send to `instance` for a request parsed
/// from `buf`, or `None` when it does not route.
#[cfg(test)]
pub(crate) fn upstream_head(
    buf: &[u8],
    head: &RequestHead,
    config: &Config,
    peer: SocketAddr,
    instance: &str,
) -> Option<Vec<u8>> {
    let head_bytes = &buf[..head.head_len];
    let ask = head.ask(head_bytes, peer);
    let target = crate::route::route(config, ask.host, ask.path, false)?;
    let pool = Pool::default();
    let mut exchange = FastExchange::new(&pool, &head.method, &[], head.head_len);
    crate::pipeline::forward(config, &ask, &target.path, head.lines(head_bytes), &mut exchange);
    Some(exchange.request(instance))
}

enum SendError {
    Connect(io::Error),
    Exchange(io::Error),
}

/// Writes the request to the instance and reads the response head into
/// `rbuf`. A pooled connection the instance closed meanwhile is replaced by
/// a fresh one for an idempotent request.
async fn send(
    pool: &Pool,
    addr: &str,
    request: &[u8],
    rbuf: &mut BytesMut,
    idempotent: bool,
) -> Result<(TcpStream, ResponseHead), SendError> {
    let mut reused = pool.take(addr);
    loop {
        let was_pooled = reused.is_some();
        let mut conn = match reused.take() {
            Some(c) => c,
            None => connect(addr).await.map_err(SendError::Connect)?,
        };
        rbuf.clear();
        match write_and_read_head(&mut conn, request, rbuf).await {
            Ok(resp) => return Ok((conn, resp)),
            // Nothing came back on a connection the instance had closed: the
            // request was not processed.
            Err(e) if was_pooled && idempotent && rbuf.is_empty() && is_closed(&e) => continue,
            Err(e) => return Err(SendError::Exchange(e)),
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

async fn connect(addr: &str) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct ResponseHead {
    status: u16,
    head_len: usize,
    framing: Framing,
    /// The instance will close the connection after this response.
    upstream_close: bool,
    /// Status line and headers for the client, hop-by-hop headers removed,
    /// without the blank line.
    head: Vec<u8>,
}

async fn write_and_read_head(conn: &mut TcpStream, request: &[u8], rbuf: &mut BytesMut) -> io::Result<ResponseHead> {
    conn.write_all(request).await?;
    loop {
        rbuf.reserve(4096);
        if conn.read_buf(rbuf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // Informational answers (103 Early Hints) are dropped; the final one follows.
        loop {
            match parse_response(rbuf)? {
                Some(resp) if (100..200).contains(&resp.status) => rbuf.advance(resp.head_len),
                Some(resp) => return Ok(resp),
                None => break,
            }
        }
        if rbuf.len() > MAX_RESPONSE_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
    }
}

fn parse_response(buf: &[u8]) -> io::Result<Option<ResponseHead>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("invalid response: {what}"));
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&e.to_string())),
    };
    let status = resp.code.ok_or_else(|| invalid("no status"))?;
    if status == 101 {
        return Err(invalid("101 Switching Protocols without an upgrade request"));
    }
    let http10 = resp.version == Some(0);
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut upstream_close = http10;
    let mut connection_named: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            let v = std::str::from_utf8(h.value).unwrap_or("");
            chunked = v.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                upstream_close = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or_else(|| invalid("Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in connection_tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    upstream_close = false;
                }
                connection_named.push(token);
            }
        }
    }
    // Both framings at once may be an attack on some other hop: use the
    // connection for this answer only (RFC 9112 §6.3).
    upstream_close |= transfer_encoding && length.is_some();
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        // A coding other than chunked last: the body ends with the connection.
        upstream_close = true;
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        upstream_close = true;
        Framing::UntilClose
    };
    let mut head = Vec::with_capacity(head_len + 32);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let n = h.name;
        let drop = hop_by_hop(n.as_bytes(), &connection_named)
            || (n.eq_ignore_ascii_case("content-length") && transfer_encoding)
            || (n.eq_ignore_ascii_case("transfer-encoding") && !chunked);
        if !drop {
            header_line(&mut head, n.as_bytes(), h.value);
        }
    }
    Ok(Some(ResponseHead { status, head_len, framing, upstream_close, head }))
}

/// Sends the response head and relays the body as it arrives. Returns
/// whether the client connection stays open.
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut TcpStream,
    pool: &Pool,
    answer: Upstreamed,
    mut rbuf: BytesMut,
    no_body: bool,
    client_close: bool,
    idle: Duration,
) -> io::Result<bool> {
    // A client that stops reading, or an instance that stops sending, gives
    // up the upstream connection after `idle`: both are dropped on return.
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "response idle timeout");
    let Upstreamed { mut conn, addr, head: resp } = answer;
    let framing = if no_body { Framing::Empty } else { resp.framing };
    let close = client_close || framing == Framing::UntilClose;
    let mut out = resp.head;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    rbuf.advance(resp.head_len);
    // Relay what is there; `done` says the body is complete, `extra` that
    // the instance sent more than the body.
    let mut end = BodyEnd::new(framing);
    let (n, mut done) = end.take(&rbuf)?;
    let mut extra = n < rbuf.len();
    out.extend_from_slice(&rbuf[..n]);
    write_within(client, &out, idle).await?;
    while !done {
        rbuf.clear();
        rbuf.reserve(16 * 1024);
        let got = tokio::time::timeout(idle, conn.read_buf(&mut rbuf)).await.map_err(|_| timed_out())??;
        if got == 0 {
            if framing == Framing::UntilClose {
                break;
            }
            // Cut short by the instance: the client sees the connection end.
            return Ok(false);
        }
        // A broken body after the head has gone: the client sees the connection end.
        let Ok((n, complete)) = end.take(&rbuf) else {
            return Ok(false);
        };
        done = complete;
        extra = n < rbuf.len();
        write_within(client, &rbuf[..n], idle).await?;
    }
    if framing != Framing::UntilClose && !resp.upstream_close && !extra {
        pool.put(&addr, conn);
    }
    if close {
        let _ = client.shutdown().await;
    }
    Ok(!close)
}

/// Writes `data` to the client, failing with `TimedOut` when it takes
/// nothing for `idle`. Most answers fit the socket buffer in one write,
/// which then needs no timer (a clock read and a runtime handle per
/// request otherwise); the rest are bounded as before.
async fn write_within(client: &mut TcpStream, data: &[u8], idle: Duration) -> io::Result<()> {
    let rest = match client.try_write(data) {
        Ok(n) => &data[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => data,
        Err(e) => return Err(e),
    };
    if rest.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(idle, client.write_all(rest))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response idle timeout"))?
}

/// Where a response body ends, followed over the bytes that pass through.
enum BodyEnd {
    Empty,
    Length(u64),
    Chunked(ChunkedEnd),
    UntilClose,
}

impl BodyEnd {
    fn new(framing: Framing) -> BodyEnd {
        match framing {
            Framing::Empty => BodyEnd::Empty,
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(ChunkedEnd::default()),
            Framing::UntilClose => BodyEnd::UntilClose,
        }
    }

    /// How many bytes of `data` belong to the body, and whether it is complete.
    fn take(&mut self, data: &[u8]) -> io::Result<(usize, bool)> {
        Ok(match self {
            BodyEnd::Empty => (0, true),
            BodyEnd::Length(remaining) => {
                let n = (*remaining).min(data.len() as u64);
                *remaining -= n;
                (n as usize, *remaining == 0)
            }
            BodyEnd::Chunked(chunks) => match chunks.feed(data) {
                Ok(Some(n)) => (n, true),
                Ok(None) => (data.len(), false),
                Err(()) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunked body from the instance"));
                }
            },
            BodyEnd::UntilClose => (data.len(), false),
        })
    }
}

/// Finds the end of a chunked body in the bytes that pass through.
#[derive(Default)]
struct ChunkedEnd {
    state: ChunkState,
    size: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// In the trailer section; `true` at the start of a line.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl ChunkedEnd {
    /// Consumes `data`; `Some(n)` when the body ended after `n` bytes.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).expect("a hex digit") as u64;
                        self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(digit)).ok_or(())?;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 { ChunkState::Trailer(true) } else { ChunkState::Data };
                }
                ChunkState::Data => {
                    let n = self.size.min((data.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    self.state = if b == b'\r' {
                        ChunkState::DataLf
                    } else {
                        return Err(());
                    }
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer(line_start) => {
                    self.state =
                        if b == b'\r' { ChunkState::TrailerLf(line_start) } else { ChunkState::Trailer(false) };
                }
                ChunkState::TrailerLf(blank) => {
                    if b != b'\n' {
                        return Err(());
                    }
                    if blank {
                        self.state = ChunkState::Done;
                        return Ok(Some(i + 1));
                    }
                    self.state = ChunkState::Trailer(true);
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// Writes an answer the gateway made itself. Returns whether the client
/// connection stays open.
async fn write_reply(client: &mut TcpStream, reply: &ErrorReply, close: bool) -> io::Result<bool> {
    let mut text = Vec::with_capacity(160 + reply.body.len());
    let _ = write!(text, "HTTP/1.1 {} {}\r\n", reply.status.as_u16(), reply.status.canonical_reason().unwrap_or(""));
    for (name, value) in &reply.headers {
        header_line(&mut text, name.as_bytes(), value.as_bytes());
    }
    let _ = write!(text, "content-length: {}\r\n", reply.body.len());
    if close {
        text.extend_from_slice(b"connection: close\r\n");
    }
    text.extend_from_slice(b"\r\n");
    text.extend_from_slice(&reply.body);
    client.write_all(&text).await?;
    if close {
        let _ = client.shutdown().await;
    }
    Ok(!close)
}

/// An error before a request could be read; the connection closes after it.
pub(crate) async fn answer_error(client: &mut TcpStream, status: StatusCode, message: &str) {
    let _ = write_reply(client, &ErrorReply::plain(status, message), true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_chunked_body_is_found_across_splits() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut c = ChunkedEnd::default();
            let first = c.feed(&body[..split]).unwrap();
            let end = match first {
                Some(n) => n,
                None => split + c.feed(&body[split..]).unwrap().expect("ends in the second part"),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        let mut c = ChunkedEnd::default();
        assert_eq!(c.feed(b"0\r\n\r\nNEXT").unwrap(), Some(5), "bytes after the body are not part of it");
        assert!(ChunkedEnd::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedEnd::default().feed(b"3\r\nabcX").is_err(), "data must end with CRLF");
    }

    #[test]
    fn response_heads_give_framing_and_drop_hop_by_hop_headers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nx-app: 2\r\n\r\nhello").unwrap().unwrap();
        assert_eq!((r.status, r.framing, r.upstream_close), (200, Framing::Length(5), false));
        let text = String::from_utf8(r.head).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n")
                && text.contains("x-app: 2\r\n")
                && text.contains("Content-Length: 5"),
            "{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("connection") && !text.contains("x-hop"), "{text}");

        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!String::from_utf8(r.head).unwrap().contains("Content-Length"), "chunked wins over a length");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.framing, r.upstream_close), (Framing::UntilClose, true));
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.framing, Framing::Empty);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-").unwrap().is_none());
    }

    #[test]
    fn requests_are_rewritten_for_the_instance_or_left_to_hyper() {
        let config = Config::default();
        let peer: SocketAddr = "127.0.0.7:4000".parse().unwrap();
        let req = b"GET /echo/a/b?x=1 HTTP/1.1\r\nHost: gw:8080\r\nConnection: x-secret\r\nx-secret: 1\r\nX-Forwarded-For: 10.0.0.1\r\nx-app: kept\r\n\r\n";
        let Parsed::Complete(head) = parse_request(req) else { panic!("a complete head") };
        assert_eq!((head.head_len, head.target(req), head.close), (req.len(), "/echo/a/b?x=1", false));
        let up = String::from_utf8(upstream_head(req, &head, &config, peer, "i:1").expect("routed to echo")).unwrap();
        assert_eq!(
            up,
            "GET /a/b?x=1 HTTP/1.1\r\nhost: i:1\r\nx-app: kept\r\nx-forwarded-for: 127.0.0.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw:8080\r\n\r\n"
        );

        for hyper_case in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST /echo/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /echo/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST /echo/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"GET http://example/x HTTP/1.1\r\nHost: example\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(hyper_case), Parsed::Hyper { .. }),
                "{}",
                String::from_utf8_lossy(hyper_case)
            );
        }
        assert!(matches!(parse_request(b"GET /x HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
        assert!(matches!(parse_request(b"NOT A REQUEST\r\n\r\n"), Parsed::Bad(_)));
        assert!(matches!(
            parse_request(b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Parsed::Bad(_)
        ));
        let Parsed::Complete(h) = parse_request(b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        else {
            panic!()
        };
        assert!(h.close);
    }
}
