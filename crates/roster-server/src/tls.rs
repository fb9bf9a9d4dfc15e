//! TLS on the gRPC and HTTP listeners (the handshake, reload and CN parsing
//! live in `roster-tls`).
//!
//! The gRPC server is fed handshaken connections ([`TlsConn`]) through
//! tonic's `serve_with_incoming`. Each connection carries its peer
//! ([`TlsPeer`], tonic's connect info, which tonic copies into every
//! request); [`CertUserLayer`] turns a verified client certificate's CN into
//! a [`CertUser`] extension on each request, which auth takes as the user
//! name when the request has no token, as etcd does under
//! `--client-cert-auth`.

use roster_tls::{Peer, TlsIncoming, TlsStream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Request;

pub(crate) use crate::auth::CertUser;

/// tonic's connect info for a TLS connection.
#[derive(Debug, Clone)]
pub(crate) struct TlsPeer(pub Peer);

/// A handshaken TLS connection, as tonic serves it.
pub(crate) struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

// === impl TlsConn ===

impl TlsConn {
    pub(crate) fn new((stream, peer): (TlsStream<TcpStream>, Peer)) -> Self {
        TlsConn { stream, peer }
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        TlsPeer(self.peer.clone())
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Handshaken connections as tonic's incoming stream.
pub(crate) fn grpc_incoming(incoming: TlsIncoming) -> impl tokio_stream::Stream<Item = io::Result<TlsConn>> {
    tokio_stream::StreamExt::map(incoming, |c| Ok(TlsConn::new(c)))
}

/// Inserts [`CertUser`] into requests that came with a client certificate.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CertUserLayer;

impl<S> tower::Layer<S> for CertUserLayer {
    type Service = CertUserService<S>;

    fn layer(&self, inner: S) -> CertUserService<S> {
        CertUserService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CertUserService<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for CertUserService<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let cn = req.extensions().get::<TlsPeer>().and_then(|p| p.0.common_name.clone());
        if let Some(cn) = cn {
            req.extensions_mut().insert(CertUser(cn));
        }
        self.inner.call(req)
    }
}

/// The HTTP listener over TLS, for axum.
pub(crate) struct HttpsListener(pub TlsIncoming);

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some((io, peer)) => (io, peer.addr),
            // The accept loop only ends when this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{Ready, ready};
    use tower::{Layer, Service};

    /// Answers with the CertUser the request carried.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Option<CertUser>;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<Option<CertUser>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            ready(Ok(req.extensions().get::<CertUser>().cloned()))
        }
    }

    fn request(common_name: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        let peer = Peer { addr: "127.0.0.1:1".parse().unwrap(), common_name: common_name.map(str::to_owned) };
        req.extensions_mut().insert(TlsPeer(peer));
        req
    }

    #[tokio::test]
    async fn client_certificate_cn_becomes_the_request_cert_user() {
        let mut svc = CertUserLayer.layer(Echo);
        assert_eq!(svc.call(request(Some("alice"))).await.unwrap(), Some(CertUser("alice".into())));
        assert_eq!(svc.call(request(None)).await.unwrap(), None, "no certificate, no user");
        assert_eq!(svc.call(Request::new(())).await.unwrap(), None, "plaintext connection");
    }
}
