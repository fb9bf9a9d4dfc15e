//! TLS connections accepted from a `TcpListener`, handshakes run apart.

use crate::common_name;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake not done within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at accept,
/// so a flood of silent sockets costs an accept and a close each.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Who is on the other end of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject CN of the client certificate, when the client sent one
    /// (it was verified: unverified certificates fail the handshake).
    pub common_name: Option<String>,
}

/// A stream of handshaken connections. The accept loop is a task that
/// stops when this is dropped.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl TlsIncoming ===

impl TlsIncoming {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        // Handshaken connections waiting for the server to take them: a
        // small queue, backed up by the handshake cap.
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsIncoming { rx, local, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next handshaken connection; `None` once the accept loop ended.
    pub async fn accept(&mut self) -> Option<(TlsStream<TcpStream>, Peer)> {
        self.rx.recv().await
    }

    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(TlsStream<TcpStream>, Peer)>> {
        self.rx.poll_recv(cx)
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = (TlsStream<TcpStream>, Peer);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx)
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<(TlsStream<TcpStream>, Peer)>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "TLS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(client = %addr, "connection closed: {MAX_PENDING_HANDSHAKES} TLS handshakes already in progress");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let common_name =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c));
                    let _ = tx.send((tls, Peer { addr, common_name })).await;
                }
                // A plaintext client, an untrusted or missing client
                // certificate: the client sees the alert; we note it.
                Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
            }
        });
    }
}
