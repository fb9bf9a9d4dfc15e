//! `roster register`, `roster ls` and `roster watch` as a user runs them,
//! against `roster serve` and against real etcd.

use crate::support::roster_bin;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn ls_json(endpoint: &str) -> Vec<Value> {
    let out = Command::new(roster_bin())
        .args(["--log", "warn", "ls", "--json", "--endpoints", endpoint])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "roster ls failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn register(endpoint: &str, args: &[&str]) -> Child {
    Command::new(roster_bin())
        .args(["--log", "warn", "register", "--endpoints", endpoint])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Polls `roster ls --json` until `f` holds of it.
async fn until(what: &str, limit: Duration, endpoint: &str, f: impl Fn(&[Value]) -> bool) -> Duration {
    roster_testkit::eventually(what, limit, async || {
        let listed = ls_json(endpoint).await;
        if f(&listed) { Ok(()) } else { Err(format!("{listed:?}")) }
    })
    .await
}

/// `roster watch hello --json`, and its output line by line.
fn watch_json(endpoint: &str) -> (Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
    let mut watch = Command::new(roster_bin())
        .args(["--log", "warn", "watch", "hello", "--json", "--endpoints", endpoint])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    (watch, lines)
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

async fn scenario(endpoint: String) {
    // A watcher started first sees the instance arrive and leave.
    let (mut watch, mut lines) = watch_json(&endpoint);

    let reg = register(
        &endpoint,
        &["hello", "127.0.0.1:50051", "--id", "a", "--ttl", "5", "--zone", "eu-1", "--meta", "k=v"],
    );
    until("registered", Duration::from_secs(10), &endpoint, |l| l.len() == 1).await;
    let listed = ls_json(&endpoint).await;
    let i = &listed[0];
    assert_eq!(
        (i["service"].as_str(), i["id"].as_str(), i["addr"].as_str()),
        (Some("hello"), Some("a"), Some("127.0.0.1:50051"))
    );
    assert_eq!((i["zone"].as_str(), i["meta"]["k"].as_str()), (Some("eu-1"), Some("v")));
    let ttl = i["ttl_remaining"].as_i64().unwrap();
    assert!((1..=5).contains(&ttl), "lease TTL remaining {ttl}");

    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((v["change"].as_str(), v["instance"]["id"].as_str()), (Some("added"), Some("a")));

    // SIGTERM revokes at once.
    sigterm(&reg);
    let took = until("gone after SIGTERM", Duration::from_secs(3), &endpoint, |l| l.is_empty()).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.contains("\"removed\""), "{line}");

    // A registering process killed with -9 cannot revoke: its instance
    // leaves the list and the watcher when the lease runs out, within TTL + 1 s.
    let mut dead = register(&endpoint, &["hello", "127.0.0.1:50053", "--id", "c", "--ttl", "3"]);
    until("c registered", Duration::from_secs(10), &endpoint, |l| l.iter().any(|i| i["id"] == "c")).await;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.contains("\"added\"") && line.contains("\"c\""), "{line}");
    dead.start_kill().unwrap();
    let killed = Instant::now();
    let within = Duration::from_secs(3 + 1);
    until("c gone after kill -9", within, &endpoint, |l| l.is_empty()).await;
    let line = tokio::time::timeout(within.saturating_sub(killed.elapsed()), lines.next_line())
        .await
        .expect("the watcher saw no removal within TTL + 1 s of kill -9")
        .unwrap()
        .unwrap();
    assert!(line.contains("\"removed\"") && line.contains("\"c\""), "{line}");
    assert!(killed.elapsed() <= within, "removal seen {:?} after kill -9", killed.elapsed());
    let _ = dead.wait().await;

    // A failing health check withdraws the instance while the process lives.
    let port = roster_testkit::free_port();
    let check = format!("tcp://127.0.0.1:{port}");
    let _checked =
        register(&endpoint, &["hello", "127.0.0.1:50052", "--id", "b", "--check", &check, "--check-interval", "1"]);
    until("withdrawn while the check fails", Duration::from_secs(10), &endpoint, |l| l.is_empty()).await;
    let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    until("restored once the check passes", Duration::from_secs(10), &endpoint, |l| l.iter().any(|i| i["id"] == "b"))
        .await;
    let _ = watch.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ls_watch_roster() {
    let r = Roster::start(roster_bin()).await;
    scenario(r.endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ls_watch_etcd() {
    if require_etcd().is_none() {
        return;
    }
    let e = Etcd::start().await;
    scenario(e.endpoint()).await;
}

/// Instances written by `etcdctl` by hand, as plain `host:port` and as
/// etcd's endpoint JSON, are listed and watched; a value that is neither is
/// skipped without stopping the watch.
async fn foreign_values(endpoint: String) {
    let (mut watch, mut lines) = watch_json(&endpoint);
    // The watcher is listening once `ls` works; a put before that is listed anyway.
    until("registry answers", Duration::from_secs(10), &endpoint, |_| true).await;
    let ctl = Etcdctl::new(endpoint.clone());
    ctl.run(&["put", "/services/hello/bad", "not an address"]).await.ok();
    ctl.run(&["put", "/services/hello/plain", "127.0.0.1:9000"]).await.ok();
    ctl.run(&["put", "/services/hello/ep", r#"{"Op":0,"Addr":"127.0.0.1:9001","Metadata":{"zone":"z1"}}"#]).await.ok();
    until("both foreign instances listed", Duration::from_secs(10), &endpoint, |l| l.len() == 2).await;
    let listed = ls_json(&endpoint).await;
    let by_id = |id: &str| {
        listed.iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("{id} not listed: {listed:?}")).clone()
    };
    assert_eq!(by_id("plain")["addr"], "127.0.0.1:9000");
    assert_eq!(by_id("ep")["addr"], "127.0.0.1:9001");
    assert!(listed.iter().all(|i| i["id"] != "bad"), "{listed:?}");

    let mut added = Vec::new();
    while added.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the watcher did not report both foreign instances")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["change"], "added", "{line}");
        added.push(v["instance"]["id"].as_str().unwrap().to_owned());
    }
    added.sort();
    assert_eq!(added, ["ep", "plain"]);
    let _ = watch.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_by_etcdctl_are_discovered_roster() {
    if require_etcdctl().is_none() {
        return;
    }
    let r = Roster::start(roster_bin()).await;
    foreign_values(r.endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_by_etcdctl_are_discovered_etcd() {
    if require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    let e = Etcd::start().await;
    foreign_values(e.endpoint()).await;
}

#[tokio::test]
async fn bad_arguments_get_helpful_errors() {
    for (args, want) in [
        (vec!["register", "hello", "nope"], "must be host:port"),
        (vec!["register", "hello", "127.0.0.1:1", "--meta", "novalue"], "expected k=v"),
        (vec!["register", "hello", "127.0.0.1:1", "--ttl", "1"], "at least 2 seconds"),
        (vec!["register", "hello", "127.0.0.1:1", "--check", "ftp://x:1"], "unsupported scheme"),
        (
            vec!["register", "hello", "127.0.0.1:1", "--check", "tcp://127.0.0.1:1", "--check-rise", "0"],
            "rise and fall must be at least 1",
        ),
        (
            vec!["register", "hello", "127.0.0.1:1", "--check", "tcp://127.0.0.1:1", "--check-fall", "0"],
            "rise and fall must be at least 1",
        ),
        (vec!["ls", "--endpoints", "127.0.0.1:1"], "cannot reach any registry endpoint"),
    ] {
        let out = Command::new(roster_bin()).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=roster-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_lists_over_tls_against_etcd() {
    let Some(etcd_bin) = require_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (client, peer) = (roster_testkit::free_port(), roster_testkit::free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Command::new(etcd_bin)
        .current_dir(dir.path())
        .args(["--name", "tls", "--data-dir", "data", "--log-level", "error"])
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let ls = |extra: Vec<String>| {
        let url = url.clone();
        async move {
            Command::new(roster_bin())
                .args(["--log", "warn", "ls", "--json", "--endpoints", &url, "--timeout", "2"])
                .args(extra)
                .output()
                .await
                .unwrap()
        }
    };
    let start = Instant::now();
    while !ls(vec!["--cacert".into(), ca.into()]).await.status.success() {
        assert!(start.elapsed() < Duration::from_secs(30), "etcd with TLS did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _reg = Command::new(roster_bin())
        .args([
            "--log",
            "warn",
            "register",
            "hello",
            "127.0.0.1:50051",
            "--id",
            "tls",
            "--endpoints",
            &url,
            "--cacert",
            ca,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let out = ls(vec!["--cacert".into(), ca.into()]).await;
        let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if listed.iter().any(|i| i["id"] == "tls") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not registered over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let untrusted = ls(vec![]).await;
    assert!(!untrusted.status.success(), "a server signed by an unknown CA must be refused");
}

/// The registry process is killed (`kill -9`) and started again on the same
/// data dir: registrations survive, watchers reconverge with no duplicate,
/// and no watcher ever sees an instance vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_kill_9_and_restart_keeps_every_registration() {
    use roster::{Change, Client, ClientConfig, Instance, RegistrationStatus, Registry};
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Roster::start_in(roster_bin(), dir.path()).await;
    let mut cfg = ClientConfig::new([server.endpoint()]);
    cfg.request_timeout = Duration::from_secs(2);
    let registry = Registry::new(Client::new(cfg).unwrap()).with_ttl(Duration::from_secs(4));
    let mut regs = Vec::new();
    for i in 0..3 {
        regs.push(
            registry
                .register(Instance::new("svc", format!("127.0.0.1:{}", 7000 + i)).with_id(format!("i{i}")))
                .await
                .unwrap(),
        );
    }
    let d = registry.discover("svc");
    d.ready().await;
    let start = Instant::now();
    while d.instances().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "three instances listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut changes = Box::pin(d.changes());
    let removed = tokio::spawn(async move {
        let mut removed = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(9), changes.next()).await {
            if let Change::Removed(i) = c {
                removed.push(i.id);
            }
        }
        removed
    });
    server.kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.instances().len(), 3, "the list survives the outage");
    server.restart().await;
    // Past a whole TTL after the restart: the leases must have been renewed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ids: std::collections::BTreeSet<String> = d.instances().into_iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 3, "no instance lost or doubled: {ids:?}");
    assert!(!d.is_stale());
    assert_eq!(removed.await.unwrap(), Vec::<String>::new(), "no watcher saw an instance vanish");
    for r in &regs {
        assert!(matches!(*r.status().borrow(), RegistrationStatus::Registered { .. }));
    }
}

#[tokio::test]
async fn demo_exits_by_itself_and_shows_traffic_moving_with_no_failed_call() {
    // No --log: the demo's own default (warn) keeps INFO lines out of its narration.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(roster_bin()).arg("demo").env_remove("RUST_LOG").output(),
    )
    .await
    .expect("demo ends within a minute")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hello-2 crashes"), "{stdout}");
    let last = stdout.lines().find(|l| l.contains("final tally")).expect("a final tally");
    let count = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("hello-4") > 0, "the new server got calls: {last}");
    assert!(
        count("hello-1") > count("hello-2") && count("hello-3") > count("hello-2"),
        "traffic moved off the crashed one: {last}"
    );
    assert_eq!(count("errors"), 0, "calls hello-2 would take go to the others: {last}");
    assert!(last.contains("errors=0"), "{last}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(" INFO ") && !stderr.contains(" INFO "), "no INFO lines by default:\n{stdout}\n{stderr}");
}

/// The HTTP and gRPC checks, pointed at roster serve's own `/health` and
/// `grpc.health.v1`; a wrong HTTP path fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_health_checks() {
    let r = Roster::start(roster_bin()).await;
    let endpoint = r.endpoint();
    let http = format!("{}/health", r.http_url());
    let grpc = format!("grpc://{endpoint}");
    let bad = format!("{}/no-such-page", r.http_url());
    let _a = register(&endpoint, &["svc", "127.0.0.1:1001", "--id", "http", "--check", &http, "--check-interval", "1"]);
    let _b = register(&endpoint, &["svc", "127.0.0.1:1002", "--id", "grpc", "--check", &grpc, "--check-interval", "1"]);
    let _c = register(&endpoint, &["svc", "127.0.0.1:1003", "--id", "bad", "--check", &bad, "--check-interval", "1"]);
    until("http and grpc checks pass", Duration::from_secs(10), &endpoint, |l| {
        l.iter().any(|i| i["id"] == "http") && l.iter().any(|i| i["id"] == "grpc")
    })
    .await;
    // Past a few check rounds, the failing one stays withdrawn.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed = ls_json(&endpoint).await;
    let ids: Vec<&str> = listed.iter().filter_map(|i| i["id"].as_str()).collect();
    assert!(ids.contains(&"http") && ids.contains(&"grpc") && !ids.contains(&"bad"), "{ids:?}");
}
