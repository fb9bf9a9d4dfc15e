//! Unary gRPC calls straight over an `h2` connection, for the closed-loop
//! workloads.
//!
//! tonic's `Channel` hands every call to a buffer task and then to hyper's
//! dispatcher before h2 sees it, and that cost about as much CPU per call as
//! the server under test spent answering it. The load generator shares the
//! machine with the server, so every microsecond it burns is taken from the
//! server, and more from the cheaper one. Here the calling task writes its
//! request into the connection itself; the connection task only moves bytes.
//! Streams (watch, keepalive) still use tonic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, header};
use prost::Message;
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::{Code, Status};

/// Full gRPC paths of the methods the workloads call.
pub const KV_PUT: &str = "/etcdserverpb.KV/Put";
pub const KV_RANGE: &str = "/etcdserverpb.KV/Range";
pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
pub const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";

/// A gRPC message is at most this large (etcd's client default).
const MAX_MESSAGE: usize = 64 << 20;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
    /// Sent as `token` metadata on every call, when auth is on.
    token: Option<HeaderValue>,
}

// === impl Conn ===

impl Conn {
    /// Connects to `addr` (`host:port`) and completes the HTTP/2 handshake.
    #[cfg(test)]
    pub async fn connect(addr: &str) -> std::io::Result<Conn> {
        Self::connect_with(addr, None).await
    }

    /// As [`Conn::connect`], over TLS when `tls` is given.
    pub async fn connect_with(addr: &str, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> std::io::Result<Conn> {
        let authority: http::uri::Authority = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
        let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection within 3 s"))??;
        tcp.set_nodelay(true)?;
        let Some(tls) = tls else { return Self::handshake(tcp, authority).await };
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?;
        Self::handshake(stream, authority).await
    }

    async fn handshake<T>(io: T, authority: http::uri::Authority) -> std::io::Result<Conn>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Windows large enough that answers never wait on a WINDOW_UPDATE.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "bench connection ended");
            }
        });
        Ok(Conn { send, authority, token: None })
    }

    /// This connection, sending `token` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Conn, Status> {
        let v = HeaderValue::from_str(token).map_err(|_| Status::internal("the token is not a valid header value"))?;
        self.token = Some(v);
        Ok(self)
    }

    /// Calls `path` with `req` and decodes the answer.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static(path));
        let uri = Uri::from_parts(parts).map_err(|e| Status::internal(format!("{path}: {e}")))?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        let h = head.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(t) = &self.token {
            h.insert("token", t.clone());
        }

        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (answer, mut body) = send.send_request(head, false).map_err(transport)?;
        body.send_data(frame(req), true).map_err(transport)?;

        let answer = answer.await.map_err(transport)?;
        if answer.status() != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {} from the server", answer.status())));
        }
        // A trailers-only answer carries grpc-status in its headers.
        if let Some(status) = grpc_status(answer.headers()) {
            status?;
            return Err(Status::internal("trailers-only answer without a message"));
        }
        let mut recv = answer.into_body();
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(transport)?;
            // Hand the window back, so the server may keep sending.
            let _ = recv.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > MAX_MESSAGE + 5 {
                return Err(Status::resource_exhausted("answer larger than 64 MiB"));
            }
            buf.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(transport)?.unwrap_or_default();
        match grpc_status(&trailers) {
            Some(status) => status?,
            None => return Err(Status::internal("answer ended without grpc-status")),
        }
        unframe(buf.freeze())
    }
}

/// `req` with gRPC's five-byte prefix: not compressed, then its length.
fn frame(req: &impl Message) -> Bytes {
    let len = req.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer of the exact size cannot fail.
    let _ = req.encode(&mut buf);
    buf.freeze()
}

/// The one message of a unary answer.
fn unframe<Resp: Message + Default>(mut buf: Bytes) -> Result<Resp, Status> {
    if buf.len() < 5 {
        return Err(Status::internal(format!("answer of {} bytes has no gRPC message", buf.len())));
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal("compressed answer; the bench asks for none"));
    }
    if len != buf.len() {
        return Err(Status::internal(format!("gRPC message of {len} bytes in {} bytes of body", buf.len())));
    }
    Resp::decode(buf).map_err(|e| Status::internal(format!("cannot decode the answer: {e}")))
}

/// `Some(Ok)` for grpc-status 0, `Some(Err)` for any other, `None` if absent.
fn grpc_status(h: &HeaderMap) -> Option<Result<(), Status>> {
    let code = h.get("grpc-status")?;
    let code = code.to_str().ok().and_then(|c| c.parse::<i32>().ok()).unwrap_or(Code::Unknown as i32);
    if code == 0 {
        return Some(Ok(()));
    }
    let message =
        h.get("grpc-message").map(|m| roster_api::codec::decode_grpc_message(m.as_bytes())).unwrap_or_default();
    Some(Err(Status::new(Code::from_i32(code), message)))
}

fn transport(e: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_api::etcdserverpb::PutRequest;

    #[test]
    fn frame_then_unframe_is_the_message() {
        let req = PutRequest { key: "k".into(), value: vec![b'v'; 300].into(), ..Default::default() };
        let framed = frame(&req);
        assert_eq!(framed[0], 0);
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
        assert_eq!(unframe::<PutRequest>(framed).unwrap(), req);
    }

    #[test]
    fn a_short_or_mislabelled_body_is_an_error() {
        assert_eq!(unframe::<PutRequest>(Bytes::from_static(&[0, 0])).unwrap_err().code(), Code::Internal);
        let mut long = frame(&PutRequest::default()).to_vec();
        long.push(1);
        assert!(unframe::<PutRequest>(long.into()).unwrap_err().message().contains("in 1 bytes"));
    }

    /// Puts, reads and a refused put through [`Conn`] against `addr`.
    async fn round_trip(addr: &str) {
        use roster_api::etcdserverpb::{PutResponse, RangeRequest, RangeResponse};
        let conn = Conn::connect(addr).await.unwrap();
        let put = PutRequest { key: "/wire/k".into(), value: vec![b'v'; 100_000].into(), ..Default::default() };
        let first = conn.call::<_, PutResponse>(KV_PUT, &put).await.unwrap();
        let again = conn.clone().call::<_, PutResponse>(KV_PUT, &put).await.unwrap();
        assert_eq!(again.header.unwrap().revision, first.header.unwrap().revision + 1, "{addr}");
        // An answer larger than h2's default window of 64 KiB.
        let got = conn
            .call::<_, RangeResponse>(KV_RANGE, &RangeRequest { key: "/wire/k".into(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!((got.kvs.len(), got.kvs[0].value.len(), got.kvs[0].version), (1, 100_000, 2), "{addr}");
        // etcd refuses an empty key with a trailers-only answer.
        let e = conn.call::<_, PutResponse>(KV_PUT, &PutRequest::default()).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key is not provided"), "{addr}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_round_trip_against_roster_and_etcd() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(roster_server::serve(
            listener,
            None,
            roster_store::Store::in_memory(),
            roster_server::ServerConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        round_trip(&addr).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();

        if roster_testkit::require_etcd().is_some() {
            let etcd = roster_testkit::Etcd::start().await;
            round_trip(&etcd.endpoint()).await;
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        let port = roster_testkit::free_port();
        let e = Conn::connect(&format!("127.0.0.1:{port}")).await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let e = Conn::connect("no port").await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn grpc_status_and_message_are_read() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(grpc_status(&h).unwrap().is_ok());
        h.insert("grpc-status", HeaderValue::from_static("3"));
        h.insert("grpc-message", HeaderValue::from_static("etcdserver: key is not provided%21"));
        let e = grpc_status(&h).unwrap().unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "etcdserver: key is not provided!");
    }
}
