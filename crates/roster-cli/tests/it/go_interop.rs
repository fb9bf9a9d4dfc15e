//! etcd's own Go client and Roster's registry, both ways, on the grpc-go
//! that Debian ships with it (1.33, whose base balancer hashes addresses):
//! the Go program in `tests/go/interop` dials `etcd:///services/hello` over
//! hello instances the Rust SDK registered, with round_robin, and an
//! endpoint it registers with `endpoints.Manager` is discovered by the SDK.
//! Against `roster serve` and against etcd.

use crate::support::roster_bin;
use roster::{Client, ClientConfig, Instance, Registry};
use roster_testkit::{Etcd, Roster, eventually, require_etcd};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// The Go program, built once per test run into cargo's temporary
/// directory for integration tests (under `target/`, replaced each run:
/// built beside it and renamed over it, so a run elsewhere that is using
/// the old one keeps it).
fn interop_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/interop"));
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-interop");
        roster_testkit::go_build(src, &["go.etcd.io/etcd/clientv3/naming/resolver", "google.golang.org/grpc"], &out)
    })
    .clone()
}

fn registry(endpoint: &str) -> Registry {
    let mut cfg = ClientConfig::new([endpoint.to_owned()]);
    cfg.request_timeout = Duration::from_secs(3);
    Registry::new(Client::new(cfg).unwrap()).with_ttl(Duration::from_secs(5))
}

async fn scenario(bin: PathBuf, target: &str, endpoint: String) {
    let registry = registry(&endpoint);
    // Three hello instances, registered by the SDK.
    let mut regs = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let id = format!("h{i}");
        servers.push(tokio::spawn(hello::serve(l, id.clone(), std::future::pending())));
        let reg = registry
            .register(Instance::new("hello", addr).with_id(id).with_zone("z1").with_meta("k", "v"))
            .await
            .unwrap();
        reg.registered(Duration::from_secs(5)).await.unwrap();
        regs.push(reg);
    }

    // Go dials etcd:///services/hello with round_robin and calls each.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&bin)
            .args([
                "dial",
                "-endpoints",
                &endpoint,
                "-target",
                "/services/hello",
                "-authority",
                "hello",
                "-calls",
                "30",
                "-want",
                "3",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Go client finished within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{target}: the Go client failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("unhashable"), "{target}: {stderr}");
    let counts: BTreeMap<&str, u32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .map(|l| {
            let (name, n) = l.split_once(' ').unwrap();
            (name, n.parse().unwrap())
        })
        .collect();
    // Round robin over three ready instances: 30 calls, 10 each.
    assert_eq!(counts, BTreeMap::from([("h1", 10), ("h2", 10), ("h3", 10)]), "{target}:\n{stdout}");

    // Go registers with endpoints.Manager; the SDK discovers it, with the
    // metadata Go wrote, and sees it leave.
    let d = registry.discover("hello");
    d.ready().await;
    let mut go = tokio::process::Command::new(&bin)
        .args([
            "register",
            "-endpoints",
            &endpoint,
            "-target",
            "/services/hello",
            "-key",
            "/services/hello/go1",
            "-addr",
            "127.0.0.1:7777",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(go.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("Go registered within 30 s")
        .unwrap();
    assert_eq!(line.as_deref(), Some("registered"), "{target}");
    eventually(&format!("{target}: the SDK discovers the Go endpoint"), Duration::from_secs(5), async || {
        d.instances().iter().any(|i| {
            i.id == "go1" && i.addr == "127.0.0.1:7777" && i.meta.get("zone").map(String::as_str) == Some("go-zone")
        })
    })
    .await;
    drop(go.stdin.take()); // closing stdin deletes the endpoint
    let status = tokio::time::timeout(Duration::from_secs(10), go.wait()).await.expect("Go exits").unwrap();
    assert!(status.success(), "{target}: {status}");
    eventually(&format!("{target}: the Go endpoint leaves"), Duration::from_secs(5), async || {
        !d.instances().iter().any(|i| i.id == "go1")
    })
    .await;
    // The SDK's own instances kept what they were registered with.
    let h1 = d.instances().into_iter().find(|i| i.id == "h1").expect("h1 listed");
    assert_eq!((h1.zone.as_str(), h1.meta.get("k").map(String::as_str)), ("z1", Some("v")), "{target}");

    for r in regs {
        r.deregister().await.unwrap();
    }
    for s in servers {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_resolver_dials_sdk_instances_and_sdk_discovers_go_endpoints_roster() {
    let Some(bin) = interop_bin() else { return };
    let r = Roster::start_in_memory(roster_bin()).await;
    scenario(bin, "roster", r.endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_resolver_dials_sdk_instances_and_sdk_discovers_go_endpoints_etcd() {
    let Some(bin) = interop_bin() else { return };
    if require_etcd().is_none() {
        return;
    }
    let e = Etcd::start().await;
    scenario(bin, "etcd", e.endpoint()).await;
}
