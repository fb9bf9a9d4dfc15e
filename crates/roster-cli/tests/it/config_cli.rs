//! `roster config set|get|watch` as a user runs them, against `roster serve`
//! and against real etcd.

use crate::support::roster_bin;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

async fn roster(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(roster_bin())
        .args(["--log", "warn", "config"])
        .args(args)
        .args(["--endpoints", endpoint])
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

async fn scenario(target: &str, endpoint: String) {
    let (ok, out, err) = roster(&endpoint, &["set", "/config/app.toml", "workers = 4\n"]).await;
    assert!(ok, "{target}: {err}");
    assert!(out.contains("/config/app.toml: 12 bytes of toml written at revision"), "{target}: {out}");
    assert_eq!(roster(&endpoint, &["get", "/config/app.toml"]).await.1, "workers = 4\n");

    // A value that does not parse is refused and nothing is written.
    let (ok, _, err) = roster(&endpoint, &["set", "/config/app.toml", "workers = [4"]).await;
    assert!(!ok, "{target}: invalid TOML was accepted");
    assert!(err.contains("not written: the value is not valid toml") && err.contains("line 1"), "{target}: {err}");
    let (ok, _, err) = roster(&endpoint, &["set", "/config/app.json", "{\"workers\": }"]).await;
    assert!(!ok && err.contains("invalid JSON"), "{target}: {err}");
    let (ok, _, err) = roster(&endpoint, &["set", "/config/app", "x"]).await;
    assert!(!ok && err.contains("cannot tell the format"), "{target}: {err}");
    assert_eq!(roster(&endpoint, &["get", "/config/app.toml"]).await.1, "workers = 4\n");
    let (ok, _, err) = roster(&endpoint, &["get", "/config/nothing.toml"]).await;
    assert!(!ok && err.contains("/config/nothing.toml is not set"), "{target}: {err}");

    // From a file, with an explicit format.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits");
    std::fs::write(&file, "rps: 500\nburst: 50\n").unwrap();
    let (ok, _, err) =
        roster(&endpoint, &["set", "/config/limits", "--file", file.to_str().unwrap(), "--format", "yaml"]).await;
    assert!(ok, "{target}: {err}");
    let (_, out, _) = roster(&endpoint, &["get", "/config/", "--prefix"]).await;
    assert_eq!(out, "/config/app.toml\nworkers = 4\n/config/limits\nrps: 500\nburst: 50\n", "{target}");

    // watch prints the value, each new one, and reports a bad one on stderr.
    let mut watch = Command::new(roster_bin())
        .args(["--log", "error", "config", "watch", "/config/app.toml", "--endpoints", &endpoint])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(watch.stderr.take().unwrap()).lines();
    let mut next =
        async || tokio::time::timeout(Duration::from_secs(10), out.next_line()).await.unwrap().unwrap().unwrap();
    assert!(next().await.starts_with("# revision "), "{target}");
    assert_eq!(next().await, "workers = 4");
    assert!(roster(&endpoint, &["set", "/config/app.toml", "workers = 8"]).await.0);
    assert!(next().await.starts_with("# revision "), "{target}");
    assert_eq!(next().await, "workers = 8");
    // A bad value written past the check (by etcdctl) is reported, not shown.
    Etcdctl::new(endpoint.clone()).run(&["put", "/config/app.toml", "workers = ["]).await.ok();
    let line = tokio::time::timeout(Duration::from_secs(10), err.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.starts_with("rejected at revision") && line.contains("invalid TOML"), "{target}: {line}");
    let _ = watch.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_get_watch_on_roster_and_etcd() {
    if roster_testkit::require_etcdctl().is_none() {
        return;
    }
    let server = Roster::start_in_memory(roster_bin()).await;
    scenario("roster", server.endpoint()).await;
    if require_etcd().is_some() {
        let etcd = Etcd::start().await;
        scenario("etcd", etcd.endpoint()).await;
    }
}
