//! Routing by path, host and gRPC service; new and killed backends.

use super::*;

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
                            let id = serde_json::from_slice::<Value>(&body)
                                .ok()
                                .and_then(|v| v["id"].as_str().map(str::to_owned));
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
    while let Some((_, (status, id))) =
        tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await.expect("load finished in time")
    {
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
    assert!(
        failures.is_empty(),
        "{} of {seen} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // The dead instance is dropped: nothing from it in the last half.
    let tail = &after_kill[after_kill.len() / 2..];
    assert!(
        tail.iter().all(|id| id.as_deref() != Some(backends[1].id.as_str())),
        "traffic still reached the killed instance"
    );
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
