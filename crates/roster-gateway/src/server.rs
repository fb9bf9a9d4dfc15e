//! Accepting connections: HTTP/1.1 and h2c on one port, bounded request
//! heads, graceful drain, connection caps and bounded per-worker accept
//! queues (see `limits`); and the admin port with `/metrics` and `/health`.

use crate::h1;
use crate::limits::{Connections, Slot};
use crate::proxy::{Body, Pools, Proxy, empty, full};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests may take to finish after shutdown begins.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Serves `proxy` on `listener` (and the admin endpoints on `admin`) until
/// `shutdown` resolves, then drains in-flight requests for up to `drain`.
///
/// Like nginx's worker processes, one thread per core serves the
/// connections it is handed on a single-threaded runtime with its own
/// upstream pools, so a request never hops threads between client and
/// instance.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    tls: Option<Arc<rustls::ServerConfig>>,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut inboxes = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::channel(INBOX);
        let (proxy, tls) = (proxy.clone(), tls.clone());
        let thread = std::thread::Builder::new().name(format!("gateway-{i}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(worker(rx, proxy, tls, drain));
            Ok::<_, std::io::Error>(())
        })?;
        inboxes.push(tx);
        threads.push(thread);
    }
    let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, proxy.clone())));
    // One acceptor deals connections to the workers in turn, so load stays
    // even however the kernel would have woken them.
    tokio::pin!(shutdown);
    let connections = Arc::new(Connections::default());
    let mut next = 0usize;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = {
            let c = proxy.config.load();
            let per_ip = if c.trusts(peer.ip()) { 0 } else { c.max_connections_per_ip };
            connections.admit(peer.ip(), c.max_connections, per_ip)
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err(why) => {
                // Closed unread: a flood costs an accept and a close each.
                proxy.metrics.refused_connection();
                tracing::debug!(client = %peer, ?why, "connection refused: over the connection cap");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match stream.into_std() {
            Ok(std) => {
                // The first worker with room, from the next one in turn; with
                // every inbox full the connection is closed.
                let mut conn = Some((std, peer, slot));
                for i in 0..workers {
                    let Some(c) = conn.take() else { break };
                    match inboxes[(next + i) % workers].try_send(c) {
                        Ok(()) => break,
                        Err(e) => conn = Some(e.into_inner()),
                    }
                }
                if conn.is_some() {
                    proxy.metrics.refused_connection();
                    tracing::warn!(client = %peer, "connection refused: every worker's accept queue is full");
                }
                next = next.wrapping_add(1);
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
        }
    }
    drop(listener);
    tracing::info!(?drain, "gateway stopping; draining in-flight requests");
    // Closing the inboxes tells the workers to drain and stop.
    drop(inboxes);
    let joined = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()).await;
    if let Some(t) = admin_task {
        t.abort();
    }
    for r in joined.map_err(std::io::Error::other)? {
        match r {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::other("a gateway worker thread panicked")),
        }
    }
    Ok(())
}

/// Connections accepted but not yet taken up, per worker.
const INBOX: usize = 1024;

type Inbox = tokio::sync::mpsc::Receiver<(std::net::TcpStream, std::net::SocketAddr, Slot)>;

/// One worker: serve the connections it is handed; when the inbox closes,
/// drain them.
async fn worker(mut inbox: Inbox, proxy: Arc<Proxy>, tls: Option<tokio_rustls::TlsAcceptor>, drain: Duration) {
    let config = proxy.config.load_full();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // A client that sends its last request and half-closes still gets
        // the answer; the strict reader (`h1::strict`) ends the stream this
        // way too after a refused head.
        .half_close(true)
        // hyper answers 431 past this (its floor is 8 KiB).
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .max_concurrent_streams(1024);
    let pools = Pools::new();
    let fast_pool = Arc::new(h1::Pool::default());
    let graceful = GracefulShutdown::new();
    // Fast-path connections watch `draining` and hold a `done` sender each;
    // the worker knows they are all gone when `finished` yields nothing.
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    let (done, mut finished) = tokio::sync::mpsc::channel::<()>(1);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        let (std, peer, slot) = tokio::select! {
            next = inbox.recv() => match next {
                Some(conn) => conn,
                None => break,
            },
            _ = sweep.tick() => {
                fast_pool.sweep();
                let config = proxy.config.load();
                proxy.upstreams.sweep(|name| config.routes.iter().any(|r| r.service == name));
                continue;
            }
        };
        let stream = match tokio::net::TcpStream::from_std(std) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "cannot take over a connection");
                continue;
            }
        };
        let (proxy, pools, fast_pool, builder) = (proxy.clone(), pools.clone(), fast_pool.clone(), builder.clone());
        let (watcher, draining, done) = (graceful.watcher(), draining.clone(), done.clone());
        if let Some(tls) = tls.clone() {
            // HTTPS: handshake (bounded), then hyper for both HTTP/1.1 and
            // h2 as ALPN chose; the plaintext fast path is not used.
            tokio::spawn(async move {
                let (_done, _slot) = (done, slot);
                let stream = match tokio::time::timeout(roster_tls::HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (proxy, pools) = (proxy.clone(), pools.clone());
                    async move { Ok::<_, Infallible>(proxy.handle(&pools, req, peer).await) }
                });
                let conn =
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned());
                if let Err(e) = conn.await {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let (_done, _slot) = (done, slot);
            let (stream, buffered) = match h1::serve(stream, peer, &proxy, &fast_pool, draining).await {
                h1::Handover::Done => return,
                h1::Handover::Hyper(stream, buffered) => (stream, buffered),
            };
            let (max_head, header_timeout) = {
                let c = proxy.config.load();
                (c.max_header_bytes.max(8192), c.header_read_timeout)
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let (proxy, pools) = (proxy.clone(), pools.clone());
                async move { Ok::<_, Infallible>(proxy.handle(&pools, req, peer).await) }
            });
            let io = TokioIo::new(h1::strict::StrictIo::new(buffered, stream, max_head, header_timeout));
            let conn = watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned());
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    let _ = draining_tx.send(true);
    drop(done);
    let all_finished = async {
        tokio::join!(graceful.shutdown(), finished.recv());
    };
    if tokio::time::timeout(drain, all_finished).await.is_err() {
        tracing::warn!(?drain, "requests still in flight after the drain period; closing them");
    }
}

/// Admin connections open at once: scrapes and health checks need few.
const ADMIN_MAX_CONNECTIONS: usize = 64;

async fn serve_admin(listener: TcpListener, proxy: Arc<Proxy>) {
    let header_timeout = proxy.config.load().header_read_timeout;
    let connections = Arc::new(Connections::default());
    loop {
        let stream = match listener.accept().await {
            Ok((s, peer)) => match connections.admit(peer.ip(), ADMIN_MAX_CONNECTIONS, 0) {
                Ok(slot) => (s, slot),
                Err(_) => {
                    tracing::debug!(client = %peer, "admin connection refused: over the cap");
                    continue;
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(admin(&proxy, &req)) }
        });
        let (stream, slot) = stream;
        tokio::spawn(async move {
            let _slot = slot;
            // A client that never finishes its head is dropped, as on the main listener.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(proxy: &Proxy, req: &Request<Incoming>) -> Response<Body> {
    let (status, body, ctype) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            full(Bytes::from({
                let (upstreams, directory) = proxy.upstreams.held();
                proxy.metrics.held(upstreams, directory);
                proxy.metrics.render()
            })),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/health" => (StatusCode::OK, full(Bytes::from_static(b"{\"health\":\"true\"}\n")), "application/json"),
        _ => (StatusCode::NOT_FOUND, empty(), "text/plain"),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}
