//! Body framing on both engines, bad input, shutdown drain, engine hand-over and gRPC streams.

use super::*;

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
    let _ =
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.expect("closed by the gateway");
    assert!(t.elapsed() < Duration::from_secs(3), "slow client held on for {:?}", t.elapsed());
    // The admin listener drops one too.
    let mut slow = TcpStream::connect(gw.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
        .await
        .expect("admin closed the slow client");
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
                        "/hints" => vec![
                            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".into(),
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
                        ],
                        "/drop" => vec!["HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndrop".into()],
                        _ if method == "HEAD" => {
                            vec![format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", path.len())]
                        }
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
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed after the last answer")
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    let (one, three) =
        (out.find("\r\n\r\n/one").expect("first answer"), out.find("\r\n\r\n/three").expect("third answer"));
    assert!(one < three, "{out}");
    assert!(!out.contains("/two"), "a HEAD answer has no body: {out}");
    assert!(out.contains("content-length: 4\r\n"), "the HEAD answer keeps its length: {out}");
    assert!(out.ends_with("/three"), "{out}");
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
    s.write_all(b"POST /echo/second HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
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
    use roster_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
    use roster_api::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion};
    let (reg, _stop) = registry().await;
    let _self = sdk(&reg).register(roster::Instance::new("etcd-api", reg.clone()).with_id("r1")).await.unwrap();
    let gw =
        Gw::start(&reg, "[[route]]\nservice = \"etcd-api\"\ngrpc = [\"etcdserverpb.Watch\", \"etcdserverpb.KV\"]\n")
            .await;
    let ch = tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut events =
        WatchClient::new(ch.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
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
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("stream open")
}

// === Smuggling: the backend must see only what the gateway routed ===
