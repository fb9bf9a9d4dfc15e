//! `roster gateway` as a user runs it: routes from a config kept in the
//! registry, reloaded when that key changes; a bad new config is refused
//! and the running one kept; SIGHUP reloads `--config`; clear errors for a
//! bad config file.

use crate::support::roster_bin;
use roster_testkit::{Etcdctl, Roster};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

fn gateway(args: &[&str]) -> Child {
    Command::new(roster_bin())
        .args(["--log", "warn", "gateway", "--no-admin"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

async fn until_status(url: &str, want: u16, limit: Duration) {
    roster_testkit::eventually(&format!("{url} to answer {want}"), limit, async || {
        let got = status(url).await;
        if got == want { Ok(()) } else { Err(format!("{got}")) }
    })
    .await;
}

fn sig(child: &Child, which: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args([which, &pid]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_follows_its_config_key_and_sighup() {
    if roster_testkit::require_etcdctl().is_none() {
        return;
    }
    let server = Roster::start_in_memory(roster_bin()).await;
    let ep = server.endpoint();
    let ctl = Etcdctl::new(ep.clone());
    // A backend: the registry's own HTTP health endpoint, registered by hand.
    let health = server.http_url();
    let addr = health.trim_start_matches("http://").trim_end_matches('/').to_owned();
    ctl.run(&["put", "/services/regsvc/r1", &format!("{{\"Addr\":\"{addr}\"}}")]).await.ok();

    ctl.run(&[
        "put",
        "/config/gateway.toml",
        "auto_routes = false\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/a\"\n",
    ])
    .await
    .ok();
    let port = roster_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let gw = gateway(&["--listen", &listen, "--endpoints", &ep, "--config-key", "/config/gateway.toml"]);
    until_status(&format!("http://{listen}/a/health"), 200, Duration::from_secs(10)).await;
    assert_eq!(status(&format!("http://{listen}/b/health")).await, 404);

    // The key changes: /b routes, /a no longer does.
    ctl.run(&[
        "put",
        "/config/gateway.toml",
        "auto_routes = false\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/b\"\n",
    ])
    .await
    .ok();
    until_status(&format!("http://{listen}/b/health"), 200, Duration::from_secs(5)).await;
    assert_eq!(status(&format!("http://{listen}/a/health")).await, 404);
    // A bad config is refused; the running one stays.
    ctl.run(&["put", "/config/gateway.toml", "[[route]]\nservice = \"regsvc\"\npolicy = \"fastest\"\n"]).await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&format!("http://{listen}/b/health")).await, 200);
    drop(gw);

    // --config with SIGHUP.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "auto_routes = false\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/c\"\n").unwrap();
    let port = roster_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let gw = gateway(&["--listen", &listen, "--endpoints", &ep, "--config", file.to_str().unwrap()]);
    until_status(&format!("http://{listen}/c/health"), 200, Duration::from_secs(10)).await;
    std::fs::write(&file, "auto_routes = false\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/d\"\n").unwrap();
    sig(&gw, "-HUP");
    until_status(&format!("http://{listen}/d/health"), 200, Duration::from_secs(5)).await;
    assert_eq!(status(&format!("http://{listen}/c/health")).await, 404);
    sig(&gw, "-TERM");
    let mut gw = gw;
    let exit = tokio::time::timeout(Duration::from_secs(15), gw.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit}");

    // A bad file is a clear error at start.
    std::fs::write(&file, "[[route]]\nservice = \"x\"\nretries = \"many\"\n").unwrap();
    let out = Command::new(roster_bin())
        .args(["gateway", "--config", file.to_str().unwrap(), "--endpoints", &ep])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("gateway.toml") && err.contains("retries"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_prefix_is_refused_with_a_clear_message() {
    use tokio::io::AsyncBufReadExt;
    if roster_testkit::require_etcdctl().is_none() {
        return;
    }
    let server = Roster::start_in_memory(roster_bin()).await;
    let ep = server.endpoint();
    let addr = server.http_url().trim_start_matches("http://").trim_end_matches('/').to_owned();
    Etcdctl::new(ep.clone()).run(&["put", "/services/regsvc/r1", &format!("{{\"Addr\":\"{addr}\"}}")]).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "auto_routes = false\nmax_services = 4\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/c\"\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", roster_testkit::free_port());
    let mut gw = gateway(&["--listen", &listen, "--endpoints", &ep, "--config", file.to_str().unwrap()]);
    until_status(&format!("http://{listen}/c/health"), 200, Duration::from_secs(10)).await;

    std::fs::write(
        &file,
        "auto_routes = false\nprefix = \"/other\"\n[[route]]\nservice = \"regsvc\"\npath_prefix = \"/d\"\n",
    )
    .unwrap();
    sig(&gw, "-HUP");
    let mut lines = tokio::io::BufReader::new(gw.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("not reloaded") {
                return l;
            }
        }
        panic!("stderr closed without a refusal");
    })
    .await
    .expect("the refusal is logged");
    assert!(line.contains("prefix cannot change") && line.contains("/other") && line.contains("restart"), "{line}");
    // Nothing of the refused config applies.
    assert_eq!(status(&format!("http://{listen}/c/health")).await, 200);
    assert_eq!(status(&format!("http://{listen}/d/health")).await, 404);
}
