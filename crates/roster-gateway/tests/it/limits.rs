//! Bounded state and limits: made-up names, forwarding headers, error bodies, slow readers, connection flood, rate and concurrency limits, reloads.

use super::*;

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
async fn random_names(
    addr: SocketAddr,
    seed: u64,
    count: usize,
    batch: usize,
) -> std::collections::BTreeMap<u16, usize> {
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
            let req = Request::get(gw.url("/echo/x"))
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "https")
                .body(Full::default())
                .unwrap();
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
            assert_eq!(
                (a.status, a.json["service"].as_str()),
                (StatusCode::BAD_GATEWAY, Some("dead")),
                "{engine}: {}",
                a.json
            );
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
    for (engine, request) in [
        ("fast path", &b"GET /endless/x HTTP/1.1\r\nHost: t\r\n\r\n"[..]),
        ("hyper", b"GET /endless/x HTTP/1.0\r\n\r\n"),
    ] {
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let asked = Instant::now();
        // The client never reads; the gateway's writes stall, then it lets go.
        let at = tokio::time::timeout(Duration::from_secs(10), broke.recv())
            .await
            .expect("the upstream connection was closed")
            .unwrap();
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
    assert!(
        closed_unread(TcpStream::connect(gw.addr).await.unwrap(), Duration::from_secs(2)).await,
        "over max_connections_per_ip"
    );
    let first = held.remove(0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(gw.addr).await.unwrap();
    again.write_all(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    assert!(
        read_answer(&mut again, &mut buf).await.starts_with("HTTP/1.1 200"),
        "a closed connection gives its slot back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after_at_the_configured_rate_on_both_engines() {
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "r1").await;
    let gw =
        Gw::start(&reg, "[[route]]\nservice = \"echo\"\nrate_limit_per_second = 20\nrate_limit_burst = 10\n").await;
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

    let e =
        gw.gateway.reload(Config::parse("prefix = \"/elsewhere\"\nmax_services = 5\n", "t").unwrap()).unwrap_err().0;
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
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(2);
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
        let first = tokio::time::timeout(Duration::from_secs(5), c.get(gw.url("/drip/x").parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
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
