//! The gateway's integration tests, one binary, with real parts: an
//! in-process `roster serve` (roster-testkit's [`InProcess`]), gateway-echo
//! backends as separate processes registered through the SDK, and the hello
//! gRPC server. Every load loop is bounded in count and time.
//!
//! - `routing`: routes by path, host and gRPC service; backends that come
//!   and go (kill -9 under load, a new one within 100 ms).
//! - `framing`: body framing on both engines, bad input, drain on shutdown,
//!   the fast path handing a connection to hyper, bidirectional gRPC.
//! - `smuggling`: smuggling and header injection get 400 and close.
//! - `limits`: made-up names, forwarding headers, error bodies, slow
//!   readers, connection floods, rate and concurrency limits, reloads.
//! - `access_log`: what the access log records and redacts.
//! - `lifecycle`: a dropped gateway closes every watch it opened.

mod access_log;
mod framing;
mod lifecycle;
mod limits;
mod routing;
mod smuggling;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use roster_gateway::{Config, Gateway};
use roster_testkit::InProcess;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The registry, in process; it stops when the second half drops.
async fn registry() -> (String, InProcess) {
    let server = InProcess::start().await;
    (server.endpoint(), server)
}

fn sdk(registry: &str) -> roster::Registry {
    let mut cfg = roster::ClientConfig::new([registry.to_owned()]);
    cfg.request_timeout = Duration::from_secs(2);
    roster::Registry::new(roster::Client::new(cfg).unwrap()).with_ttl(Duration::from_secs(2))
}

/// A gateway-echo process registered as `service`; killed on drop.
struct Backend {
    child: tokio::process::Child,
    id: String,
}

impl Backend {
    async fn start(registry: &str, service: &str, id: &str) -> Backend {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway-echo"))
            .args(["--register", service, "--endpoints", registry, "--id", id, "--ttl", "2"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // It prints its address once registered.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        assert!(line.starts_with("listening "), "{line}");
        Backend { child, id: id.to_owned() }
    }

    fn kill_9(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    }
}

struct Gw {
    addr: SocketAddr,
    admin: SocketAddr,
    gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gw {
    async fn start(registry: &str, toml: &str) -> Gw {
        let config = Config::parse(toml, "test").unwrap();
        let gateway = Gateway::new(sdk(registry), config);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin) = (l.local_addr().unwrap(), a.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let g = gateway.clone();
        let task = tokio::spawn(async move {
            g.serve(l, Some(a), Duration::from_secs(5), async {
                let _ = rx.await;
            })
            .await
        });
        Gw { addr, admin, gateway, stop: Some(tx), task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    json: Value,
}

async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req)).await.expect("answered in time").unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    Answer { status, json }
}

async fn get(c: &HttpClient, url: &str) -> Answer {
    send(c, Request::get(url).body(Full::default()).unwrap()).await
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one answer with a Content-Length body from a raw connection.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + len {
                let answer = String::from_utf8_lossy(&buf[..end + len]).into_owned();
                buf.drain(..end + len);
                return answer;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "connection closed before a whole answer: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn text(c: &HttpClient, url: &str) -> (StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.get(url.parse().unwrap()))
        .await
        .expect("answered in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body =
        tokio::time::timeout(Duration::from_secs(10), body.collect()).await.expect("body in time").unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}
