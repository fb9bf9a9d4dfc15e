//! `roster bench` as a user runs it: small runs of the SDK workloads against
//! `roster serve`, checking the table they print and that they leave
//! nothing registered behind; and the closed-loop workloads against roster
//! and etcd at once, checking that their writes were made.

use crate::support::roster_bin;
use roster_api::etcdserverpb::RangeRequest;
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_testkit::{Etcd, Roster, require_etcd};
use tokio::process::Command;
use tonic::transport::Channel;

async fn bench<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(roster_bin()).args(["--log", "warn", "bench"]).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The fields after the workload name of its row: target, figure..., p50,
/// p99, errors, note words.
fn row<'a>(table: &'a str, workload: &str) -> Vec<&'a str> {
    let line =
        table.lines().find(|l| l.starts_with(workload)).unwrap_or_else(|| panic!("no {workload:?} row in:\n{table}"));
    line[workload.len()..].split_whitespace().collect()
}

/// As [`row`], for every target's row.
fn rows<'a>(table: &'a str, workload: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .filter(|l| l.starts_with(workload))
        .map(|l| l[workload.len()..].split_whitespace().collect())
        .collect()
}

async fn registered_keys(r: &Roster) -> i64 {
    let req = RangeRequest {
        key: b"/services/".to_vec().into(),
        range_end: b"/services0".to_vec().into(),
        count_only: true,
        ..Default::default()
    };
    KvClient::new(r.channel()).range(req).await.unwrap().into_inner().count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_reports_server_cpu_and_rss_and_withdraws_everything() {
    let r = Roster::start(roster_bin()).await;
    let target = format!("roster={}", r.endpoint());
    let pid = format!("roster={}", r.pid().unwrap());
    let args =
        ["hold", "--instances", "300", "--conns", "4", "--ttl", "3", "--hold", "2", "--target", &target, "--pid", &pid];
    let (ok, out, err) = bench(&args).await;
    assert!(ok, "bench hold failed:\n{out}\n{err}");
    // roster  <cpu> %  <p50>  <p99>  <errors>  RSS <mib> MiB; CPU % of one core ...
    let f = row(&out, "hold 300 registrations");
    assert_eq!((f[0], f[2]), ("roster", "%"), "{out}");
    let cpu: f64 = f[1].parse().unwrap();
    assert!((0.0..=200.0).contains(&cpu), "CPU {cpu} % of a core on 2 cores: {out}");
    assert_eq!(f[5], "0", "a registration was lost during the hold: {out}");
    assert_eq!(f[6], "RSS", "{out}");
    let rss: f64 = f[7].parse().unwrap();
    assert!(rss > 1.0, "server RSS {rss} MiB: {out}");
    // Two holds over three seconds: every lease was renewed, none lost.
    assert_eq!(registered_keys(&r).await, 0, "bench hold left registrations behind");

    // Without --pid it still runs and says how to get the figures.
    let (ok, out, err) = bench(&["hold", "--instances", "20", "--hold", "1", "--target", &target]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("pass --pid roster=PID"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_counts_every_watcher_sighting() {
    let r = Roster::start(roster_bin()).await;
    let target = format!("roster={}", r.endpoint());
    let (ok, out, err) =
        bench(&["discovery", "--watchers", "50", "--conns", "3", "--instances", "5", "--target", &target]).await;
    assert!(ok, "bench discovery failed:\n{out}\n{err}");
    let f = row(&out, "appear ->50 watchers");
    assert_eq!(f[0], "roster", "{out}");
    assert_eq!(f[4], "0", "sightings missing: {out}");
    let p99: f64 = f[3].parse().unwrap();
    assert!(p99 < 5000.0, "{out}");
    assert_eq!(registered_keys(&r).await, 0, "bench discovery left registrations behind");
}

async fn keys_in(ch: Channel, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: end.into(),
        count_only: true,
        ..Default::default()
    };
    KvClient::new(ch).range(req).await.unwrap().into_inner().count
}

/// The closed-loop workloads side by side on roster and etcd: every call
/// answered, the writes really made, and the ratio printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_range_and_memory_run_side_by_side_on_roster_and_etcd() {
    if require_etcd().is_none() {
        return;
    }
    let (r, e) = (Roster::start(roster_bin()).await, Etcd::start().await);
    let targets = [format!("roster={}", r.endpoint()), format!("etcd={}", e.endpoint())];
    let two = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for t in &targets {
            v.extend(["--target".to_string(), t.clone()]);
        }
        v
    };

    // Sequential keys 0..300 (digits only): each server then holds exactly 300.
    let args = two(&[
        "put",
        "--total",
        "300",
        "--conns",
        "2",
        "--clients",
        "8",
        "--sequential-keys",
        "--key-space",
        "300",
        "--key-size",
        "6",
    ]);
    let (ok, out, err) = bench(&args).await;
    assert!(ok, "bench put failed:\n{out}\n{err}");
    let f = rows(&out, "put 2x8 seq");
    assert_eq!(f.iter().map(|f| f[0]).collect::<Vec<_>>(), ["roster", "etcd"], "{out}");
    for f in &f {
        assert_eq!(f[4], "0", "errors: {out}");
        assert!(f[1].parse::<f64>().unwrap() > 0.0, "{out}");
    }
    assert!(out.contains("ratio roster/etcd: throughput "), "{out}");
    assert_eq!(keys_in(r.channel(), "0").await, 300, "roster");
    assert_eq!(keys_in(e.channel(), "0").await, 300, "etcd");

    // Each range checks that it got its one key back.
    let args =
        two(&["range", "--keys", "40", "--total", "300", "--conns", "2", "--clients", "4", "--consistency", "s"]);
    let (ok, out, err) = bench(&args).await;
    assert!(ok, "bench range failed:\n{out}\n{err}");
    let f = rows(&out, "range serial 2x4");
    assert_eq!(f.iter().map(|f| (f[0], f[4])).collect::<Vec<_>>(), [("roster", "0"), ("etcd", "0")], "errors: {out}");
    assert_eq!(keys_in(r.channel(), "/bench/range/").await, 40);
    assert_eq!(keys_in(e.channel(), "/bench/range/").await, 40);

    // A lease, then a put on it, per key.
    let args = two(&["memory", "--keys", "120"]);
    let (ok, out, err) = bench(&args).await;
    assert!(ok, "bench memory failed:\n{out}\n{err}");
    assert_eq!(keys_in(r.channel(), "/bench/mem/").await, 120, "{out}");
    assert_eq!(keys_in(e.channel(), "/bench/mem/").await, 120, "{out}");
}

#[tokio::test]
async fn bad_arguments_are_explained() {
    let (ok, _, err) = bench(&["hold", "--target", "roster=127.0.0.1:1", "--pid", "etcd=1"]).await;
    assert!(!ok && err.contains("--pid etcd=... names no --target (targets: roster)"), "{err}");
    let (ok, _, err) = bench(&["hold", "--ttl", "1"]).await;
    assert!(!ok && err.contains("--ttl"), "{err}");
    let (ok, _, err) = bench(&["hold", "--target", "roster=127.0.0.1:1", "--instances", "1"]).await;
    assert!(!ok && err.contains("cannot connect to roster at 127.0.0.1:1"), "{err}");
}
