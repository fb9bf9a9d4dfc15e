//! Request smuggling and header-injection attempts: 400 and close, nothing forwarded.

use super::*;

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
                            let header = |name: &str| {
                                req.headers
                                    .iter()
                                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                                    .collect::<Vec<_>>()
                            };
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
                    let answer =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", entry.target.len(), entry.target);
                    seen.lock().push(entry);
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let registration =
        sdk(registry).register(roster::Instance::new(service, addr.to_string()).with_id("log1")).await.unwrap();
    (log, registration)
}

struct Smuggle {
    registry: String,
    _stop: InProcess,
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
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the gateway closes the connection");
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
    for (engine, named) in ENGINES
        .into_iter()
        .flat_map(|e| ["content-length", "Content-Length, close", "keep-alive, content-length"].map(|n| (e, n)))
    {
        let attack = format!(
            "POST /logged/x HTTP/1.1\r\nHost: t\r\nConnection: {named}\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        );
        let answer = f.attack(engine, attack.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\r\n\r\n/x"), "{engine:?}: {answer:?}");
        let log = f.take_log();
        let first = &log[0];
        assert_eq!(
            (first.method.as_str(), first.target.as_str(), first.body_len, first.content_lengths),
            ("POST", "/x", SMUGGLED.len(), 1),
            "{engine:?}"
        );
        assert!(log.iter().all(|s| s.target != "/secret" && s.host != "internal"), "{engine:?}: smuggled: {log:?}");
        let targets: Vec<_> = log.iter().map(|s| s.target.as_str()).collect();
        assert!(targets == ["/x", "/other"] || targets == ["/x", "/after", "/other"], "{engine:?}: {targets:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_transfer_encoding_cannot_smuggle_a_second_request() {
    let f = smuggle_fixture().await;
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let attack = format!(
        "POST /logged/x HTTP/1.1\r\nHost: t\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
    );
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
        format!(
            "POST /logged/x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk.len()
        ),
        format!(
            "POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
            chunk.len()
        ),
        format!(
            "POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {}\r\n\r\n",
            chunk.len()
        ),
    ] {
        f.refused(format!("{head}{chunk}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_signed_content_length_get_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    for lengths in [
        format!("Content-Length: 0\r\nContent-Length: {n}"),
        format!("Content-Length: {n}\r\nContent-Length: {n}"),
        format!("Content-Length: +{n}"),
        format!("Content-Length: {n}, 0"),
    ] {
        f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\n{lengths}\r\n\r\n{SMUGGLED}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_gets_400_and_close() {
    let f = smuggle_fixture().await;
    let n = SMUGGLED.len();
    f.refused(
        format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n Content-Length: {n}\r\n\r\n{SMUGGLED}").as_bytes(),
    )
    .await;
    f.refused(format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\t{n}\r\n\r\n{SMUGGLED}").as_bytes())
        .await;
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
    f.refused(
        format!("POST /logged/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}")
            .as_bytes(),
    )
    .await;
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
    for (rest, status) in [
        (b"GET /logged/slow HTTP/1.1\r\nHost: t\r\n".to_vec(), "408"),
        ([&b"GET /logged/big HTTP/1.1\r\nX-A: "[..], &[b'a'; 9000]].concat(), "431"),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&[PRIMER, &rest].concat()).await.unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the gateway closes the connection");
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
    let put = roster_api::etcdserverpb::PutRequest {
        key: "/services/forged/evil".into(),
        value: value.to_string().into(),
        ..Default::default()
    };
    client.put(put).await.unwrap();
    let answer = raw(f.gw.addr, b"GET /forged/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503") && !answer.contains("x-injected"), "{answer:?}");
    assert!(f.log.lock().is_empty());
}
