//! The gateway with real parts: an in-process `roster serve`, gateway-echo
//! backends as separate processes registered through the SDK, and the hello
//! gRPC server. Every load loop is bounded in count and time.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use roster_gateway::{Config, Gateway};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The registry, in process.
async fn registry() -> (String, oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let store = roster_store::Store::in_memory();
    tokio::spawn(roster_server::serve(l, None, store, roster_server::ServerConfig::default(), async {
        let _ = rx.await;
    }));
    (addr, tx)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_path_prefix_host_and_grpc_service() {
    let (reg, _stop) = registry().await;
    let _b1 = Backend::start(&reg, "echo", "e1").await;
    let _b2 = Backend::start(&reg, "echo", "e2").await;
    // The hello gRPC server, registered through the SDK.
    let hl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let haddr = hl.local_addr().unwrap().to_string();
    tokio::spawn(hello::serve(hl, "h1".into(), std::future::pending()));
    let _hello = sdk(&reg).register(roster::Instance::new("hello", haddr).with_id("h1")).await.unwrap();

    let gw = Gw::start(
        &reg,
        r#"
        domain = "svc.test"
        [[route]]
        service = "echo"
        path_prefix = "/api/v1/echo"
        [[route]]
        service = "hello"
        grpc = ["hello.Hello"]
        [[route]]
        service = "echo"
        path_prefix = "/keep"
        strip_prefix = false
        "#,
    )
    .await;
    let c = http();

    // By first path segment, prefix stripped, query kept, forwarding headers set.
    let req = Request::get(gw.url("/echo/a/b?x=1"))
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop-only")
        .body(Full::default())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!((a.json["path"].as_str(), a.json["query"].as_str()), (Some("/a/b"), Some("x=1")));
    assert_eq!(a.json["x_forwarded_for"], "127.0.0.1");
    assert_eq!(a.json["x_forwarded_proto"], "http");
    assert_eq!(a.json["x_forwarded_host"], gw.addr.to_string());
    assert_eq!(a.json["x_secret"], "", "a header named in Connection is hop-by-hop");
    // Both instances serve.
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        ids.insert(get(&c, &gw.url("/echo/x")).await.json["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, ["e1", "e2"].map(String::from).into());

    // By a configured prefix, stripped or kept.
    assert_eq!(get(&c, &gw.url("/api/v1/echo/b")).await.json["path"], "/b");
    assert_eq!(get(&c, &gw.url("/keep/c")).await.json["path"], "/keep/c");
    // By Host.
    let req = Request::get(gw.url("/by-host")).header("host", "echo.svc.test").body(Full::default()).unwrap();
    assert_eq!(send(&c, req).await.json["path"], "/by-host");
    // A body streams through.
    let big = Bytes::from(vec![b'x'; 300_000]);
    let a = send(&c, Request::post(gw.url("/echo/upload")).body(Full::new(big)).unwrap()).await;
    assert_eq!((a.json["method"].as_str(), a.json["body_len"].as_u64()), (Some("POST"), Some(300_000)), "{}", a.json);
    // HTTP/2 cleartext on the same port.
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    assert_eq!(get(&h2, &gw.url("/echo/h2")).await.json["path"], "/h2");

    // gRPC by its service name: the hello client works through the gateway.
    let ch = tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.unwrap();
    let mut hello = hello::pb::hello_client::HelloClient::new(ch.clone());
    let reply = hello.say(hello::pb::SayRequest { name: "gw".into() }).await.unwrap().into_inner();
    assert_eq!((reply.message.as_str(), reply.instance.as_str()), ("hello, gw", "h1"));

    // Errors: unknown route 404, no instance 503 naming the service, gRPC gets grpc-status.
    let a = get(&c, &gw.url("/")).await;
    assert_eq!((a.status, a.json["error"].as_str()), (StatusCode::NOT_FOUND, Some("no route")));
    let a = get(&c, &gw.url("/nobody/x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json["service"], "nobody");
    let mut health = tonic_health_free_unknown(ch).await;
    assert_eq!(health.code(), tonic::Code::Unimplemented, "{health:?}");
    health = hello_without_instances(&reg, &gw).await;
    assert_eq!(health.code(), tonic::Code::Unavailable, "{health:?}");
    assert!(health.message().contains("\"hello2\""), "{health:?}");

    // Metrics count requests per service and instance.
    let m = get(&c, &format!("http://{}/metrics", gw.admin)).await.json;
    let m = m.as_str().unwrap();
    assert!(m.contains("roster_gateway_requests_total{service=\"echo\""), "{m}");
    assert!(m.contains("roster_gateway_request_duration_seconds_bucket"), "{m}");
    drop(gw.stop);
    gw.task.await.unwrap().unwrap();
}

/// A gRPC call to a service no route names.
async fn tonic_health_free_unknown(ch: tonic::transport::Channel) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<hello::pb::SayRequest, hello::pb::SayReply>::default();
    let path = http::uri::PathAndQuery::from_static("/nowhere.Svc/Call");
    grpc.unary(tonic::Request::new(hello::pb::SayRequest { name: "x".into() }), path, codec).await.unwrap_err()
}

/// A gRPC call routed to a service without instances.
async fn hello_without_instances(reg: &str, _gw: &Gw) -> tonic::Status {
    let gw = Gw::start(reg, "[[route]]\nservice = \"hello2\"\ngrpc = [\"hello.Hello\"]\n").await;
    let ch = tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.unwrap();
    let mut hello = hello::pb::hello_client::HelloClient::new(ch);
    hello.say(hello::pb::SayRequest { name: "x".into() }).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_idempotent_request() {
    let (reg, _stop) = registry().await;
    let mut backends = [
        Backend::start(&reg, "echo", "k1").await,
        Backend::start(&reg, "echo", "k2").await,
        Backend::start(&reg, "echo", "k3").await,
    ];
    let gw = Gw::start(&reg, "[defaults]\nretries = 2\n").await;
    let c = http();
    const TOTAL: usize = 3000;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (c, url, tx) = (c.clone(), gw.url("/echo/load"), done_tx.clone());
            tokio::spawn(async move {
                for i in 0..TOTAL / 16 {
                    let req = Request::get(&url).body(Full::default()).unwrap();
                    let r = tokio::time::timeout(Duration::from_secs(10), c.request(req)).await;
                    let outcome = match r {
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["id"].as_str().map(str::to_owned));
                            (status.as_u16(), id)
                        }
                        _ => (0, None),
                    };
                    let _ = tx.send((w * 1000 + i, outcome));
                }
            })
        })
        .collect();
    drop(done_tx);
    let mut seen = 0usize;
    let mut failures = Vec::new();
    let mut after_kill: Vec<Option<String>> = Vec::new();
    let mut killed = false;
    while let Some((_, (status, id))) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await.expect("load finished in time") {
        seen += 1;
        if status != 200 {
            failures.push(status);
        }
        if killed {
            after_kill.push(id);
        }
        if seen == TOTAL / 4 && !killed {
            backends[1].kill_9();
            killed = true;
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(seen, TOTAL / 16 * 16);
    assert!(failures.is_empty(), "{} of {seen} requests failed: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    // The dead instance is dropped: nothing from it in the last half.
    let tail = &after_kill[after_kill.len() / 2..];
    assert!(tail.iter().all(|id| id.as_deref() != Some(backends[1].id.as_str())), "traffic still reached the killed instance");
    assert!(tail.iter().any(|id| id.as_deref() == Some("k1")) && tail.iter().any(|id| id.as_deref() == Some("k3")));
    eprintln!("{seen} requests in {:?}, none failed; kill -9 after {}", started.elapsed(), TOTAL / 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_gets_traffic_within_100ms_of_registering() {
    let (reg, _stop) = registry().await;
    let _b1 = Backend::start(&reg, "echo", "j1").await;
    let gw = Gw::start(&reg, "[[route]]\nservice = \"echo\"\npolicy = \"round-robin\"\n").await;
    let c = http();
    assert_eq!(get(&c, &gw.url("/echo/x")).await.json["id"], "j1");
    // Backend::start returns once the new instance is registered.
    let _b2 = Backend::start(&reg, "echo", "j2").await;
    let registered = Instant::now();
    loop {
        if get(&c, &gw.url("/echo/x")).await.json["id"] == "j2" {
            break;
        }
        assert!(registered.elapsed() < Duration::from_secs(2), "the new instance got no traffic");
    }
    let took = registered.elapsed();
    eprintln!("new instance served after {took:?}");
    assert!(took <= Duration::from_millis(100), "first request to the new instance after {took:?}");
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_cleanly_and_the_gateway_stays_up() {
    let (reg, _stop) = registry().await;
    let _b1 = Backend::start(&reg, "echo", "x1").await;
    let _b2 = Backend::start(&reg, "echo", "x2").await;
    let gw = Gw::start(
        &reg,
        "header_read_timeout_ms = 500\nmax_header_bytes = 16384\n\
         [defaults]\nretries = 1\nper_try_timeout_ms = 300\ntimeout_ms = 1000\n",
    )
    .await;
    let c = http();

    // A malformed request line.
    let r = raw(gw.addr, b"NOT A REQUEST\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    // Oversized headers.
    let mut big = b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw(gw.addr, &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{:?}", &r[..r.len().min(80)]);
    // A slowloris client: half a request head, then silence. The gateway
    // closes the connection once the header-read timeout passes.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /echo/x HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.expect("closed by the gateway");
    assert!(t.elapsed() < Duration::from_secs(3), "slow client held on for {:?}", t.elapsed());
    // The admin listener drops one too.
    let mut slow = TcpStream::connect(gw.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.expect("admin closed the slow client");
    assert!(t.elapsed() < Duration::from_secs(3), "slow admin client held on for {:?}", t.elapsed());
    // An upstream that hangs: bounded by the timeouts, answered 504.
    let t = Instant::now();
    let a = get(&c, &gw.url("/echo/hang")).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.json);
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    // An idempotent request that gets 503 everywhere is retried, then 502.
    let a = get(&c, &gw.url("/echo/status/503")).await;
    assert_eq!((a.status, a.json["retries"].as_u64()), (StatusCode::BAD_GATEWAY, Some(1)), "{}", a.json);
    // A POST is not retried after it was sent: the 503 comes back as is.
    let a = send(&c, Request::post(gw.url("/echo/status/503")).body(Full::default()).unwrap()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // Still serving.
    let a = get(&c, &gw.url("/echo/fine")).await;
    assert_eq!(a.status, StatusCode::OK);
    let m = get(&c, &format!("http://{}/metrics", gw.admin)).await.json;
    assert!(m.as_str().unwrap().contains("roster_gateway_retries_total{service=\"echo\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "d1").await;
    let mut gw = Gw::start(&reg, "").await;
    let c = http();
    assert_eq!(get(&c, &gw.url("/echo/warm")).await.status, StatusCode::OK);
    let url = gw.url("/echo/slow/600");
    let slow = tokio::spawn(async move { get(&c, &url).await.status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = gw.stop.take().unwrap().send(());
    assert_eq!(slow.await.unwrap(), StatusCode::OK, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(6), &mut gw.task).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(gw.addr).await.is_err(), "no longer accepting");
    let _ = gw.gateway.config();
}

/// A hand-written HTTP/1.1 backend, registered as `service`, that answers
/// with each way a response body can end: `/chunked` (sent in pieces, with
/// a trailer), `/close` (no length: the body ends when the connection
/// does), `/hints` (a 103 before the answer), `/drop` (closes after each
/// answer without saying so); any other path gets itself back with a
/// length, or only the head for HEAD.
async fn framing_backend(registry: &str, service: &str) -> (roster::Registration, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
                    let pieces: Vec<String> = match path.as_str() {
                        "/chunked" => vec![
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-kind: chunked\r\n\r\n5\r\nhel".into(),
                            "lo\r\n6\r\n world\r\n0\r\n".into(),
                            "x-t: 1\r\n\r\n".into(),
                        ],
                        "/close" => vec!["HTTP/1.1 200 OK\r\nx-kind: close\r\n\r\nuntil ".into(), "close".into()],
                        "/hints" => vec!["HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".into(), "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()],
                        "/drop" => vec!["HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndrop".into()],
                        _ if method == "HEAD" => vec![format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", path.len())],
                        _ => vec![format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len())],
                    };
                    for p in pieces {
                        if s.write_all(p.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                    if path == "/close" || path == "/drop" {
                        return;
                    }
                }
            });
        }
    });
    let inst = roster::Instance::new(service, addr.to_string()).with_id("f1");
    let registration = sdk(registry).register(inst).await.unwrap();
    (registration, task)
}

async fn text(c: &HttpClient, url: &str) -> (StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.get(url.parse().unwrap())).await.expect("answered in time").unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect()).await.expect("body in time").unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_is_relayed_and_connections_stay_in_step() {
    let (reg, _stop) = registry().await;
    let (_registration, _backend) = framing_backend(&reg, "framed").await;
    let gw = Gw::start(&reg, "").await;
    let c = http();

    let (status, headers, body) = text(&c, &gw.url("/framed/chunked")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello world"));
    assert_eq!(headers["x-kind"], "chunked");
    let (status, headers, body) = text(&c, &gw.url("/framed/close")).await;
    assert_eq!((status, body.as_str(), headers["x-kind"].to_str().unwrap()), (StatusCode::OK, "until close", "close"));
    let (status, _, body) = text(&c, &gw.url("/framed/hints")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "the 103 is not passed on as the answer");
    // Each of these leaves a pooled connection the backend has closed; the
    // next request must not fail on it.
    for i in 0..20 {
        let (status, _, body) = text(&c, &gw.url("/framed/drop")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "drop"), "request {i}");
    }

    // Pipelined requests on one connection, a HEAD among them, the last
    // asking to close: three answers in order, no body for the HEAD, then
    // the gateway closes.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /framed/one HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /framed/two HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /framed/three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("closed after the last answer").unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    let (one, three) = (out.find("\r\n\r\n/one").expect("first answer"), out.find("\r\n\r\n/three").expect("third answer"));
    assert!(one < three, "{out}");
    assert!(!out.contains("/two"), "a HEAD answer has no body: {out}");
    assert!(out.contains("content-length: 4\r\n"), "the HEAD answer keeps its length: {out}");
    assert!(out.ends_with("/three"), "{out}");
}

/// Reads one answer with a Content-Length body from a raw connection.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_from_the_fast_path_to_hyper_between_requests() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "m1").await;
    let gw = Gw::start(&reg, "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /echo/first HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut buf).await;
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("\"path\":\"/first\""), "{a}");
    // A chunked body is hyper's to read: the same connection carries on.
    s.write_all(b"POST /echo/second HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut buf).await;
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("\"path\":\"/second\"") && a.contains("\"body_len\":3"), "{a}");
    s.write_all(b"GET /echo/third HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut buf).await;
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("\"path\":\"/third\""), "{a}");
}

/// A bidirectional gRPC stream through the gateway: etcd's Watch, served by
/// the in-process registry, which is registered as a service itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_grpc_stream_flows_through_the_gateway() {
    use roster_api::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion};
    use roster_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
    let (reg, _stop) = registry().await;
    let _self = sdk(&reg).register(roster::Instance::new("etcd-api", reg.clone()).with_id("r1")).await.unwrap();
    let gw = Gw::start(&reg, "[[route]]\nservice = \"etcd-api\"\ngrpc = [\"etcdserverpb.Watch\", \"etcdserverpb.KV\"]\n").await;
    let ch = tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut events = WatchClient::new(ch.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut kv = KvClient::new(ch);
    // Two watches created one after the other on the open stream, each
    // seeing its own put: messages flow both ways for the stream's life.
    for (id, key) in [(0, "a"), (1, "b")] {
        let create = WatchCreateRequest { key: key.into(), ..Default::default() };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
        let created = next_message(&mut events).await;
        assert!(created.created && created.watch_id == id, "{created:?}");
        kv.put(PutRequest { key: key.into(), value: Bytes::from_static(b"v"), ..Default::default() }).await.unwrap();
        let ev = next_message(&mut events).await;
        assert_eq!((ev.watch_id, ev.events.len()), (id, 1), "{ev:?}");
        assert_eq!(ev.events[0].kv.as_ref().unwrap().key, key.as_bytes());
    }
}

async fn next_message<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.message()).await.expect("a message in time").unwrap().expect("stream open")
}

// === Smuggling: the backend must see only what the gateway routed ===

/// What a logging backend saw: one entry per request it read.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    target: String,
    host: String,
    body_len: usize,
    content_lengths: usize,
}

type Log = std::sync::Arc<parking_lot::Mutex<Vec<Seen>>>;

/// A raw HTTP/1.1 backend that reads requests back to back by their
/// Content-Length, as a naive server would, and logs each one; it answers
/// 200 with the target as the body. A smuggled request shows in its log.
async fn logging_backend(registry: &str, service: &str) -> (Log, roster::Registration) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Log::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let (entry, end) = loop {
                        let mut slots = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut slots);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let header = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).into_owned()).collect::<Vec<_>>();
                            let lengths = header("content-length");
                            let body_len = lengths.first().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                            let entry = Seen {
                                method: req.method.unwrap_or("").to_owned(),
                                target: req.path.unwrap_or("").to_owned(),
                                host: header("host").join(","),
                                body_len,
                                content_lengths: lengths.len(),
                            };
                            break (entry, n + body_len);
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < end {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end);
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", entry.target.len(), entry.target);
                    seen.lock().push(entry);
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let registration = sdk(registry).register(roster::Instance::new(service, addr.to_string()).with_id("log1")).await.unwrap();
    (log, registration)
}

struct Smuggle {
    registry: String,
    _stop: oneshot::Sender<()>,
    _registration: roster::Registration,
    log: Log,
    gw: Gw,
}

async fn smuggle_fixture() -> Smuggle {
    let (reg, stop) = registry().await;
    let (log, registration) = logging_backend(&reg, "logged").await;
    let gw = Gw::start(&reg, "").await;
    // Warm up: the service is followed, and a pooled upstream connection exists.
    let warm = raw(gw.addr, b"GET /logged/warm HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
    log.lock().clear();
    Smuggle { registry: reg, _stop: stop, _registration: registration, log, gw }
}

/// The engine an attack meets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Engine {
    Fast,
    /// The connection is hyper's: a chunked request goes first, in the
    /// same write as the attack.
    Hyper,
}

const ENGINES: [Engine; 2] = [Engine::Fast, Engine::Hyper];

/// The chunked request that hands a connection to hyper.
const PRIMER: &[u8] = b"POST /logged/primer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

impl Smuggle {
    /// Sends `attack` then, on the same connection and on a new one, a
    /// plain request; returns what came back on the first (after the
    /// primer's answer, for hyper).
    async fn attack(&self, engine: Engine, attack: &[u8]) -> String {
        let mut s = TcpStream::connect(self.gw.addr).await.unwrap();
        let mut first = Vec::new();
        if engine == Engine::Hyper {
            first.extend_from_slice(PRIMER);
        }
        first.extend_from_slice(attack);
        s.write_all(&first).await.unwrap();
        // Let a smuggled request, if any, reach the backend before the next one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(b"GET /logged/after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the gateway closes the connection");
        let other = raw(self.gw.addr, b"GET /logged/other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 200") && other.ends_with("/other"), "{other}");
        let mut out = String::from_utf8_lossy(&out).into_owned();
        if engine == Engine::Hyper {
            let primed = "\r\n\r\n/primer";
            let end = out.find(primed).unwrap_or_else(|| panic!("the primer was answered: {out:?}")) + primed.len();
            assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
            out.drain(..end);
        }
        out
    }

    /// What the backend saw, the primer left out.
    fn take_log(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.log.lock()).into_iter().filter(|s| s.target != "/primer").collect()
    }

    /// The attack got 400, the connection closed, and the backend saw only
    /// the other client, on both engines.
    async fn refused(&self, attack: &[u8]) {
        for engine in ENGINES {
            let answer = self.attack(engine, attack).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{engine:?}: {answer:?}");
            assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{engine:?}: nothing after the 400: {answer:?}");
            let targets: Vec<String> = self.take_log().into_iter().map(|s| s.target).collect();
            assert_eq!(targets, ["/other"], "{engine:?}: {attack:?}");
        }
    }
}

const SMUGGLED: &str = "GET /secret HTTP/1.1\r\nHost: internal\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_content_length_cannot_smuggle_a_second_request() {
    let f = smuggle_fixture().await;
    for (engine, named) in ENGINES.into_iter().flat_map(|e| ["content-length", "Content-Length, close", "keep-alive, content-length"].map(|n| (e, n))) {
        let attack = format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nConnection: {named}\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len());
        let answer = f.attack(engine, attack.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\r\n\r\n/x"), "{engine:?}: {answer:?}");
        let log = f.take_log();
        let first = &log[0];
        assert_eq!((first.method.as_str(), first.target.as_str(), first.body_len, first.content_lengths), ("POST", "/x", SMUGGLED.len(), 1), "{engine:?}");
        assert!(log.iter().all(|s| s.target != "/secret" && s.host != "internal"), "{engine:?}: smuggled: {log:?}");
        let targets: Vec<_> = log.iter().map(|s| s.target.as_str()).collect();
        assert!(targets == ["/x", "/other"] || targets == ["/x", "/after", "/other"], "{engine:?}: {targets:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_transfer_encoding_cannot_smuggle_a_second_request() {
    let f = smuggle_fixture().await;
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let attack = format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
    for engine in ENGINES {
        let answer = f.attack(engine, attack.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{engine:?}: {answer:?}");
        let log = f.take_log();
        assert_eq!((log[0].target.as_str(), log[0].body_len), ("/x", SMUGGLED.len()), "{engine:?}: {log:?}");
        assert!(log.iter().all(|s| s.target != "/secret"), "{engine:?}: smuggled: {log:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_close() {
    let f = smuggle_fixture().await;
    let chunk = format!("0\r\n\r\n{SMUGGLED}");
    for head in [
        format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n", chunk.len()),
        format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n", chunk.len()),
        format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {}\r\n\r\n", chunk.len()),
    ] {
        f.refused(format!("{head}{chunk}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_signed_content_length_get_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    for lengths in [format!("Content-Length: 0\r\nContent-Length: {n}"), format!("Content-Length: {n}\r\nContent-Length: {n}"), format!("Content-Length: +{n}"), format!("Content-Length: {n}, 0")] {
        f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\n{lengths}\r\n\r\n{SMUGGLED}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_gets_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n Content-Length: {n}\r\n\r\n{SMUGGLED}").as_bytes()).await;
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\t{n}\r\n\r\n{SMUGGLED}").as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_gets_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\nContent-Length: {n}\r\n\r\n{SMUGGLED}").as_bytes()).await;
    f.refused(format!("POST /logged/x HTTP/1.1\nHost: t\nContent-Length: {n}\n\n{SMUGGLED}").as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_before_the_colon_gets_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nContent-Length : {n}\r\n\r\n{SMUGGLED}").as_bytes()).await;
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}").as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_nul_and_bad_targets_get_400_and_close() {
    let f = smuggle_fixture().await;
    f.refused(b"GET /logged/x HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n").await;
    f.refused(b"GET /logged/x HTTP/1.1\r\nHost: t\r\nX-A: a\rX-B: b\r\n\r\n").await;
    f.refused(b"GET /logged/x%zz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    f.refused(b"GET /logged/x#f HTTP/1.1\r\nHost: t\r\n\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_too_slow_or_too_large_on_a_hyper_connection_gets_408_or_431_and_close() {
    let (reg, _stop) = registry().await;
    let (log, _registration) = logging_backend(&reg, "logged").await;
    let gw = Gw::start(&reg, "header_read_timeout_ms = 300\nmax_header_bytes = 8192\n").await;
    for (rest, status) in [(b"GET /logged/slow HTTP/1.1\r\nHost: t\r\n".to_vec(), "408"), ([&b"GET /logged/big HTTP/1.1\r\nX-A: "[..], &[b'a'; 9000]].concat(), "431")] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&[PRIMER, &rest].concat()).await.unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the gateway closes the connection");
        let out = String::from_utf8_lossy(&out);
        let after = out.split_once("\r\n\r\n/primer").unwrap_or_else(|| panic!("the primer was answered: {out:?}")).1;
        assert!(after.starts_with(&format!("HTTP/1.1 {status}")), "{status}: {out:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{status}: closed after {:?}", started.elapsed());
    }
    assert!(log.lock().iter().all(|s| s.target == "/primer"), "{:?}", log.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_an_instance_address_never_reaches_a_header() {
    let f = smuggle_fixture().await;
    // An instance whose registered address carries a header of its own.
    // The SDK refuses such an address; anyone with write access to the
    // registry can still put one.
    let client = roster::Client::new(roster::ClientConfig::new([f.registry.clone()])).unwrap();
    let value = serde_json::json!({"Op": 0, "Addr": "127.0.0.1:1\r\nx-injected: 1", "Metadata": {"id": "evil", "service": "forged"}});
    let put = roster_api::etcdserverpb::PutRequest { key: "/services/forged/evil".into(), value: value.to_string().into(), ..Default::default() };
    client.put(put).await.unwrap();
    let answer = raw(f.gw.addr, b"GET /forged/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503") && !answer.contains("x-injected"), "{answer:?}");
    assert!(f.log.lock().is_empty());
}

// === Made-up names: bounded state ===

/// Resident memory of this process, in bytes.
/// Runs the named test of this module alone, in a child process of this
/// test binary, so that the process's memory it measures is its own and
/// not that of the tests running beside it. True in the child, which then
/// runs the body; the parent only checks that the child passed.
fn alone(test: &str) -> bool {
    if std::env::var_os("ROSTER_TEST_ALONE").is_some() {
        return true;
    }
    let module = module_path!().split_once("::").map(|(_, m)| format!("{m}::")).unwrap_or_default();
    let name = format!("{module}{test}");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("ROSTER_TEST_ALONE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{name} failed when run alone (its output is above)");
    false
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Sends `count` pipelined requests for random names on one connection,
/// `batch` at a time; returns how many answers had each status.
async fn random_names(addr: SocketAddr, seed: u64, count: usize, batch: usize) -> std::collections::BTreeMap<u16, usize> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut x = seed | 1;
    let mut statuses = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let mut sent = 0;
    while sent < count {
        let n = batch.min(count - sent);
        let mut out = Vec::with_capacity(n * 48);
        for _ in 0..n {
            // xorshift64: a fresh name per request.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(format!("GET /n{x:x}/x HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        s.write_all(&out).await.unwrap();
        for _ in 0..n {
            let answer = read_answer(&mut s, &mut buf).await;
            let status: u16 = answer[9..12].parse().unwrap();
            *statuses.entry(status).or_default() += 1;
        }
        sent += n;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_start_no_discovery_and_cannot_lock_out_a_real_service() {
    if !alone("made_up_names_start_no_discovery_and_cannot_lock_out_a_real_service") {
        return;
    }
    let (reg, _stop) = registry().await;
    let _real = Backend::start(&reg, "real", "r1").await;
    let gw = Gw::start(&reg, "max_services = 4\n").await;
    let c = http();
    assert_eq!(get(&c, &gw.url("/real/x")).await.status, StatusCode::OK);
    // Warm up allocator pools and metrics, then measure.
    let warm = random_names(gw.addr, 7, 5_000, 200).await;
    assert_eq!(warm.get(&503), Some(&5_000), "{warm:?}");
    let before = rss();
    let started = Instant::now();
    let loads: Vec<_> = (0..4).map(|i| tokio::spawn(random_names(gw.addr, 1000 + i, 25_000, 200))).collect();
    let mut total = 0;
    for l in loads {
        let statuses = tokio::time::timeout(Duration::from_secs(120), l).await.expect("load finished in time").unwrap();
        assert_eq!(statuses.keys().collect::<Vec<_>>(), [&503], "every made-up name gets 503: {statuses:?}");
        total += statuses[&503];
    }
    let grew = rss().saturating_sub(before);
    eprintln!("{total} requests to made-up names in {:?}; resident memory grew {} KiB", started.elapsed(), grew / 1024);
    assert_eq!(total, 100_000);
    assert!(grew <= 4 << 20, "memory grew {} KiB", grew / 1024);

    // /metrics holds no made-up name, and one upstream (real) is followed.
    let m = get(&c, &format!("http://{}/metrics", gw.admin)).await.json;
    let m = m.as_str().unwrap();
    assert!(m.len() < 16 * 1024, "metrics grew to {} bytes", m.len());
    assert!(!m.contains("service=\"n"), "a made-up name has a series");
    assert!(m.contains("roster_gateway_requests_total{service=\"-\",instance=\"-\",code=\"503\"} 105000"), "{m}");
    assert!(m.contains("roster_gateway_upstreams 1\n"), "{m}");

    // max_services (4) was never filled: three more real services are routed,
    // the last within 100 ms of registering.
    let _a = Backend::start(&reg, "late-a", "a1").await;
    let _b = Backend::start(&reg, "late-b", "b1").await;
    assert_eq!(get(&c, &gw.url("/late-a/x")).await.status, StatusCode::OK);
    assert_eq!(get(&c, &gw.url("/late-b/x")).await.status, StatusCode::OK);
    let _late = Backend::start(&reg, "late", "l1").await;
    let registered = Instant::now();
    loop {
        let a = get(&c, &gw.url("/late/x")).await;
        if a.status == StatusCode::OK {
            break;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(registered.elapsed() < Duration::from_secs(2), "never routed: {}", a.json);
    }
    let took = registered.elapsed();
    eprintln!("a service registered after the made-up names was routed after {took:?}");
    assert!(took <= Duration::from_millis(100), "routed after {took:?}");
}

// === Trust ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_unless_from_trusted_proxies_on_both_engines() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "t1").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (toml, want) in [("", "127.0.0.1"), ("trusted_proxies = [\"127.0.0.0/8\"]\n", "6.6.6.6, 127.0.0.1")] {
        let gw = Gw::start(&reg, toml).await;
        for (engine, c) in [("fast path", &h1), ("hyper", &h2)] {
            let req = Request::get(gw.url("/echo/x")).header("x-forwarded-for", "6.6.6.6").header("x-forwarded-proto", "https").body(Full::default()).unwrap();
            let a = send(c, req).await;
            assert_eq!(a.json["x_forwarded_for"], want, "{engine}, config {toml:?}");
            assert_eq!(a.json["x_forwarded_proto"], if toml.is_empty() { "http" } else { "https" }, "{engine}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_never_show_instance_addresses_unless_debug_errors() {
    let (reg, _stop) = registry().await;
    // An instance registered at a port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let _r = sdk(&reg).register(roster::Instance::new("dead", dead.clone()).with_id("d1")).await.unwrap();
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (toml, shown) in [("", false), ("debug_errors = true\n", true)] {
        let gw = Gw::start(&reg, toml).await;
        for (engine, c) in [("fast path", &h1), ("hyper", &h2)] {
            let a = get(c, &gw.url("/dead/x")).await;
            assert_eq!((a.status, a.json["service"].as_str()), (StatusCode::BAD_GATEWAY, Some("dead")), "{engine}: {}", a.json);
            assert_eq!(a.json.to_string().contains(&dead), shown, "{engine}, config {toml:?}: {}", a.json);
        }
    }
}

// === Limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_gives_up_its_upstream_connection_at_the_timeout() {
    let (reg, _stop) = registry().await;
    // A backend that sends an endless body and reports when its write fails.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (broke_tx, mut broke) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let broke = broke_tx.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n").await;
                let chunk = vec![b'x'; 64 * 1024];
                // Bounded: 1 GiB at most, far more than the socket buffers hold.
                for _ in 0..16 * 1024 {
                    if s.write_all(&chunk).await.is_err() {
                        let _ = broke.send(Instant::now());
                        return;
                    }
                }
            });
        }
    });
    let _r = sdk(&reg).register(roster::Instance::new("endless", addr).with_id("e1")).await.unwrap();
    let gw = Gw::start(&reg, "response_idle_timeout_ms = 300\n").await;
    // HTTP/1.0 is hyper's; the same request in HTTP/1.1 is the fast path's.
    for (engine, request) in [("fast path", &b"GET /endless/x HTTP/1.1\r\nHost: t\r\n\r\n"[..]), ("hyper", b"GET /endless/x HTTP/1.0\r\n\r\n")] {
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let asked = Instant::now();
        // The client never reads; the gateway's writes stall, then it lets go.
        let at = tokio::time::timeout(Duration::from_secs(10), broke.recv()).await.expect("the upstream connection was closed").unwrap();
        let held = at - asked;
        eprintln!("{engine}: upstream connection released {held:?} after the request");
        assert!(held >= Duration::from_millis(300) && held < Duration::from_secs(3), "{engine}: held for {held:?}");
        drop(client);
    }
}

/// Whether the gateway closes `s` unread within `within`.
async fn closed_unread(mut s: TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_above_the_cap_is_refused_while_routed_traffic_keeps_flowing() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "c1").await;
    let gw = Gw::start(&reg, "max_connections = 20\nmax_connections_per_ip = 0\n").await;
    let mut routed = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    routed.write_all(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut routed, &mut buf).await.starts_with("HTTP/1.1 200"));

    // 100 more connections that send nothing: 19 fit under the cap.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let checks: Vec<_> = flood.into_iter().map(|s| tokio::spawn(closed_unread(s, Duration::from_secs(1)))).collect();
    // The routed connection keeps getting answers meanwhile.
    for i in 0..50 {
        routed.write_all(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let a = read_answer(&mut routed, &mut buf).await;
        assert!(a.starts_with("HTTP/1.1 200"), "request {i} during the flood: {a}");
    }
    let mut refused = 0;
    for c in checks {
        refused += usize::from(c.await.unwrap());
    }
    assert_eq!(refused, 100 - 19, "connections over max_connections are closed at accept, the rest kept");
    let metrics = get(&http(), &format!("http://{}/metrics", gw.admin)).await.json;
    assert!(metrics.as_str().unwrap().contains("roster_gateway_refused_connections_total 81"), "{metrics}");

    // Per address: the fourth connection from 127.0.0.1 is refused.
    let gw = Gw::start(&reg, "max_connections_per_ip = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    assert!(closed_unread(TcpStream::connect(gw.addr).await.unwrap(), Duration::from_secs(2)).await, "over max_connections_per_ip");
    let first = held.remove(0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(gw.addr).await.unwrap();
    again.write_all(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    assert!(read_answer(&mut again, &mut buf).await.starts_with("HTTP/1.1 200"), "a closed connection gives its slot back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after_at_the_configured_rate_on_both_engines() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "r1").await;
    let gw = Gw::start(&reg, "[[route]]\nservice = \"echo\"\nrate_limit_per_second = 20\nrate_limit_burst = 10\n").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (engine, c) in [("fast path", &h1), ("hyper", &h2)] {
        // A full bucket to start from.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let started = Instant::now();
        let (mut ok, mut limited) = (0u32, 0u32);
        while started.elapsed() < Duration::from_secs(1) && ok + limited < 20_000 {
            let (status, headers, body) = text(c, &gw.url("/echo/x")).await;
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    assert_eq!(headers["retry-after"], "1", "{engine}");
                    assert!(body.contains("rate limited") && body.contains("echo"), "{engine}: {body}");
                }
                s => panic!("{engine}: unexpected {s}: {body}"),
            }
        }
        let took = started.elapsed().as_secs_f64();
        eprintln!("{engine}: {ok} admitted, {limited} refused in {took:.2}s");
        // The burst plus 20 a second, loosely.
        let most = 10.0 + 20.0 * took + 3.0;
        assert!(f64::from(ok) <= most && ok >= 20, "{engine}: {ok} admitted in {took:.2}s");
        assert!(limited > 0, "{engine}: nothing was refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_answers_503_with_retry_after_on_both_engines() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "m1").await;
    let gw = Gw::start(&reg, "[defaults]\nmax_concurrent_requests = 2\n").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (engine, c) in [("fast path", &h1), ("hyper", &h2)] {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let (c, url) = (c.clone(), gw.url("/echo/slow/800"));
                tokio::spawn(async move { text(&c, &url).await.0 })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, headers, body) = text(c, &gw.url("/echo/x")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{engine}: {body}");
        assert_eq!(headers["retry-after"], "1", "{engine}");
        assert!(body.contains("too many requests in flight"), "{engine}: {body}");
        for s in slow {
            assert_eq!(s.await.unwrap(), StatusCode::OK, "{engine}");
        }
        assert_eq!(text(c, &gw.url("/echo/x")).await.0, StatusCode::OK, "{engine}: slots are given back");
    }
}

// === Reload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_max_services_and_refuses_a_new_prefix() {
    let (reg, _stop) = registry().await;
    let (_a, _b) = (Backend::start(&reg, "one", "o1").await, Backend::start(&reg, "two", "t1").await);
    let gw = Gw::start(&reg, "max_services = 1\n").await;
    let c = http();
    assert_eq!(get(&c, &gw.url("/one/x")).await.status, StatusCode::OK);
    let a = get(&c, &gw.url("/two/x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "max_services = 1 is full: {}", a.json);

    gw.gateway.reload(Config::parse("max_services = 2\n", "t").unwrap()).unwrap();
    assert_eq!(gw.gateway.config().max_services, 2);
    assert_eq!(get(&c, &gw.url("/two/x")).await.status, StatusCode::OK, "the raised max_services took effect");

    let e = gw.gateway.reload(Config::parse("prefix = \"/elsewhere\"\nmax_services = 5\n", "t").unwrap()).unwrap_err().0;
    assert!(e.contains("prefix cannot change") && e.contains("/elsewhere") && e.contains("restart"), "{e}");
    let kept = gw.gateway.config();
    assert_eq!((kept.prefix.as_str(), kept.max_services), ("/services", 2), "a refused reload changes nothing");
    assert_eq!(get(&c, &gw.url("/one/x")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_answer_holds_its_concurrency_slot_until_its_body_ends_on_both_engines() {
    let (reg, _stop) = registry().await;
    // Answers (HTTP/1.1 or h2c) with the head and one byte at once, the end 500 ms later.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(2);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                });
                let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let _r = sdk(&reg).register(roster::Instance::new("drip", addr).with_id("d1")).await.unwrap();
    let gw = Gw::start(&reg, "[defaults]\nmax_concurrent_requests = 1\n").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (engine, c) in [("fast path", &h1), ("hyper", &h2)] {
        let first = tokio::time::timeout(Duration::from_secs(5), c.get(gw.url("/drip/x").parse().unwrap())).await.unwrap().unwrap();
        if first.status() != StatusCode::OK {
            panic!("{engine}: {:?}", first.into_body().collect().await.unwrap().to_bytes());
        }
        
        let (status, headers, _) = text(c, &gw.url("/drip/x")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{engine}: the first answer's body is still flowing");
        assert_eq!(headers["retry-after"], "1", "{engine}");
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"x", "{engine}");
        // The slot is given back once the body has ended.
        let t = Instant::now();
        loop {
            let (status, _, body) = text(c, &gw.url("/drip/x")).await;
            if status == StatusCode::OK {
                assert_eq!(body, "x");
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(2), "{engine}: still {status} after the body ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// === Access log ===

/// While set, access log events are formatted for [`capture_access_log`];
/// otherwise the subscriber turns every event away at once, so the other
/// tests of this binary (the memory one above all) are not slowed or grown.
static CAPTURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Access log lines for paths under `/echo/q-`, from every gateway in this
/// process, while [`CAPTURING`] is set.
fn capture_access_log() -> std::sync::Arc<parking_lot::Mutex<String>> {
    use tracing_subscriber::layer::SubscriberExt;
    static LOG: std::sync::OnceLock<std::sync::Arc<parking_lot::Mutex<String>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = log.clone();
        let only_access = tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == "roster_gateway::access" && CAPTURING.load(std::sync::atomic::Ordering::Relaxed)
        });
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || Capture(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(layer, only_access));
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
        log
    })
    .clone()
}

struct Capture(std::sync::Arc<parking_lot::Mutex<String>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if line.contains("roster_gateway::access") && line.contains("/echo/q-") {
            self.0.lock().push_str(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_redacts_query_strings_when_configured_on_both_engines() {
    let log = capture_access_log();
    CAPTURING.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "q1").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (toml, redact) in [("", false), ("access_log_redact_query = true\n", true)] {
        let gw = Gw::start(&reg, toml).await;
        for (engine, c) in [("fast", &h1), ("hyper", &h2)] {
            let path = format!("/echo/q-{engine}-{redact}");
            let a = get(c, &gw.url(&format!("{path}?token=s3cret-{engine}"))).await;
            assert_eq!(a.status, StatusCode::OK, "{engine}: {}", a.json);
            let text = log.lock().clone();
            let line = text.lines().find(|l| l.contains(&format!("{path}?"))).unwrap_or_else(|| panic!("{engine}: no access line for {path}: {text}"));
            assert_eq!(line.contains("s3cret"), !redact, "{engine}, config {toml:?}: {line}");
            assert_eq!(line.contains(&format!("{path}?REDACTED")), redact, "{engine}, config {toml:?}: {line}");
        }
    }
    CAPTURING.store(false, std::sync::atomic::Ordering::Relaxed);
}
