//! The web console in a real Chromium, driven over WebDriver (chromedriver,
//! started here on a free loopback port and killed by its PID).
//!
//! One browser session runs every step, in order: live updates (an
//! instance registered after the page loaded appears within 1 s; one whose
//! process is killed with `kill -9` goes once its TTL runs out, without a
//! reload), the instance actions (checked with the SDK), configuration
//! edits (validation, a concurrent edit refused, rollback), paging through
//! 100,000 keys, a read-only user under auth, and the same page against a
//! real etcd; `--console-read-only`, the latest backup, and the resync after
//! a compaction the console's watch missed. Screenshots of the main views
//! go to `target/console-screenshots/`.
//!
//! Without a browser: the event stream resuming from `Last-Event-ID`, and
//! the console refusing to serve on a non-loopback address (in a network
//! namespace the test creates) without TLS or auth.

use crate::support::roster_bin;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use roster::{Client, ClientConfig, Instance, Registry};
use roster_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use roster_testkit::{Etcd, Etcdctl, Roster, free_port, http_get, require_etcd, require_etcdctl, which};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// chromedriver and a headless Chromium; both stop on drop.
struct Chrome {
    driver: std::process::Child,
    browser: Option<Browser>,
}

impl Chrome {
    async fn start() -> Option<Chrome> {
        let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
            let msg = "!!! SKIPPED: console browser tests need `chromium` and `chromedriver`; install the Debian packages chromium chromium-driver !!!";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: tests must not skip)");
            }
            eprintln!("\n{msg}\n");
            return None;
        };
        let port = free_port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut chrome = Chrome { driver: child, browser: None };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("WebDriver session");
        chrome.browser = Some(browser);
        Some(chrome)
    }

    fn b(&self) -> &Browser {
        self.browser.as_ref().expect("started")
    }

    async fn stop(mut self) {
        if let Some(b) = self.browser.take() {
            let _ = b.close().await;
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        // chromedriver takes its Chromium with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Waits up to `within` for `css` to match; how long it took.
async fn appears(b: &Browser, css: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if !b.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let main = b.source().await.unwrap_or_default();
            panic!("{css} did not appear within {within:?}; the page has:\n{main}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn disappears(b: &Browser, css: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if b.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{css} still there after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn text(b: &Browser, css: &str) -> String {
    b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
}

/// Marks the document, so that a later check tells a reload apart.
async fn mark(b: &Browser) {
    b.execute("window.__rosterMark = 42;", vec![]).await.unwrap();
}

async fn still_marked(b: &Browser) -> bool {
    b.execute("return window.__rosterMark === 42;", vec![]).await.unwrap() == json!(true)
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await.unwrap();
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.canonicalize().unwrap_or(path).display());
}

fn sdk(endpoint: &str) -> Client {
    Client::connect([endpoint.to_owned()]).unwrap()
}

async fn value_of(c: &Client, key: &str) -> Option<Vec<u8>> {
    let r = c.range(RangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() }).await.unwrap();
    r.kvs.first().map(|kv| kv.value.to_vec())
}

/// An instance on a lease nobody renews (60 s): it stays unless acted on.
async fn put_instance(c: &Client, inst: &Instance) -> String {
    let lease = c.lease_grant(60).await.unwrap().id;
    let key = format!("/services/{}/{}", inst.service, inst.id);
    c.put(PutRequest {
        key: key.clone().into_bytes().into(),
        value: inst.to_value().into_bytes().into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
    key
}

fn sel(key: &str) -> String {
    format!("tr[data-key=\"{key}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_in_chromium() {
    let Some(chrome) = Chrome::start().await else {
        return;
    };
    let server = Roster::start_in_memory(roster_bin()).await;
    let ui = format!("{}/ui", server.http_url());
    let c = sdk(&server.endpoint());
    let b = chrome.b();

    live_updates(b, &ui, &server.endpoint(), &c).await;
    actions(b, &ui, &c).await;
    filters(b, &ui, &c).await;
    many_pages_in_a_row_do_not_stall(b, &ui).await;
    config_edits(b, &ui, &c).await;
    paging(b, &ui, &c).await;
    coordination(b, &ui, &c).await;
    screenshots(b, &ui).await;
    auth_read_only(b).await;
    read_only_flag(b).await;
    latest_backup(b).await;
    compaction_resync(b).await;
    real_etcd(b).await;
    chrome.stop().await;
}

/// `roster console --endpoints <endpoint> [args]` on a free loopback port,
/// once it listens; killed on drop. Returns the process and the `/ui` URL.
async fn spawn_console(endpoint: &str, args: &[&str]) -> (tokio::process::Child, String) {
    let port = free_port();
    let console = tokio::process::Command::new(roster_bin())
        .args(["console", "--endpoints", endpoint, "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "roster console did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (console, format!("http://127.0.0.1:{port}/ui"))
}

/// Waits until the page's event stream is open.
async fn goes_live(b: &Browser, what: &str) {
    let start = Instant::now();
    while !text(b, "#live-status").await.starts_with("live") {
        assert!(start.elapsed() < Duration::from_secs(5), "the page never went live {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--console-read-only`: no action buttons or edit forms, and an action
/// sent anyway (the confirm page typed in by hand) is refused with 403.
async fn read_only_flag(b: &Browser) {
    let dir = tempfile::tempdir().unwrap();
    let server = Roster::try_start_in_with_args(roster_bin(), dir.path(), &["--console-read-only"]).await.unwrap();
    let ui = format!("{}/ui", server.http_url());
    let c = sdk(&server.endpoint());
    let key = put_instance(&c, &Instance::new("frozen", "10.3.0.1:80").with_id("f1")).await;
    c.put(PutRequest { key: "/config/frozen.json".into(), value: r#"{"a":1}"#.into(), ..Default::default() })
        .await
        .unwrap();
    b.goto(&format!("{ui}/services/frozen")).await.unwrap();
    appears(b, &sel(&key), Duration::from_secs(3)).await;
    assert_eq!(text(b, "span.badge").await, "read-only");
    assert!(
        b.find_all(Locator::Css("td.actions, a.button, form.inline")).await.unwrap().is_empty(),
        "a read-only console shows actions"
    );
    b.goto(&format!("{ui}/config")).await.unwrap();
    assert!(b.find_all(Locator::Css("details.new")).await.unwrap().is_empty(), "a read-only console offers a new key");
    b.goto(&format!("{ui}/config/key?key=/config/frozen.json")).await.unwrap();
    assert!(b.find_all(Locator::Css("textarea")).await.unwrap().is_empty(), "a read-only console offers an edit");
    // The action anyway: the confirm page by its URL, then its button.
    b.goto(&format!("{ui}/confirm?action=deregister&key={key}")).await.unwrap();
    click(b, "#confirm").await;
    appears(b, "p.error[role=alert]", Duration::from_secs(3)).await;
    assert_eq!(text(b, "h1").await, "Forbidden");
    assert!(text(b, "p.error").await.contains("read-only (--console-read-only)"), "{}", text(b, "p.error").await);
    assert!(value_of(&c, &key).await.is_some(), "a read-only console deregistered an instance");
    screenshot(b, "read-only-console").await;
}

/// The Registry page shows the latest scheduled backup (`--backup-dir`).
async fn latest_backup(b: &Browser) {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().to_str().unwrap();
    let server = Roster::try_start_in_with_args(roster_bin(), dir.path(), &["--backup-dir", backup_dir]).await.unwrap();
    let ui = format!("{}/ui", server.http_url());
    // The backup taken at start is listed once it is written.
    let start = Instant::now();
    loop {
        b.goto(&format!("{ui}/registry")).await.unwrap();
        if !b.find_all(Locator::Css("#backup-path")).await.unwrap().is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no backup shown: {}", text(b, "main").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let path = text(b, "#backup-path").await;
    assert!(path.starts_with(backup_dir), "backup path {path} is not under {backup_dir}");
    let file = std::fs::read_dir(backups.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| path.ends_with(e.file_name().to_str().unwrap()));
    assert!(file.is_some(), "the page names {path}, which is not in {backup_dir}");
    let rev: i64 = text(b, "#backup-revision").await.parse().unwrap();
    assert!(rev >= 1, "backup revision {rev}");
    screenshot(b, "registry-backup").await;
}

/// The registry compacts past the console's watch while the console cannot
/// reach it: the open page is told to resync, and shows the registry as it
/// now is, without a reload.
async fn compaction_resync(b: &Browser) {
    if require_etcdctl().is_none() {
        return;
    }
    // What the registry will hold when the console next reaches it: more
    // revisions than the console has seen, compacted.
    let later = tempfile::tempdir().unwrap();
    {
        let mut ahead = Roster::start_in(roster_bin(), later.path()).await;
        let c = sdk(&ahead.endpoint());
        for i in 0..30 {
            c.put(PutRequest {
                key: format!("/filler/{i}").into_bytes().into(),
                value: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let inst = Instance::new("after-compaction", "10.4.0.1:80").with_id("n1");
        let rev = c
            .put(PutRequest {
                key: "/services/after-compaction/n1".into(),
                value: inst.to_value().into_bytes().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
        Etcdctl::new(ahead.endpoint()).run(&["compact", &rev.to_string()]).await.ok();
        ahead.kill_9();
    }
    let now = tempfile::tempdir().unwrap();
    let mut server = Roster::start_in(roster_bin(), now.path()).await;
    let (mut console, ui) = spawn_console(&server.endpoint(), &[]).await;
    b.goto(&format!("{ui}/")).await.unwrap();
    goes_live(b, "before the compaction").await;
    mark(b).await;
    // The registry goes away and comes back compacted beyond the console.
    server.kill_9();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", later.path().display()))
        .arg(now.path())
        .status()
        .unwrap();
    assert!(cp.success());
    server.restart().await;
    let start = Instant::now();
    while text(b, "#live-status").await != "live · resynced" {
        assert!(start.elapsed() < Duration::from_secs(10), "no resync: status {}", text(b, "#live-status").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    appears(b, "tr[data-service=\"after-compaction\"]", Duration::from_secs(3)).await;
    assert!(still_marked(b).await, "the page reloaded");
    console.start_kill().unwrap();
    console.wait().await.unwrap();
}

async fn live_updates(b: &Browser, ui: &str, endpoint: &str, c: &Client) {
    b.goto(&format!("{ui}/")).await.unwrap();
    appears(b, "#live-status", Duration::from_secs(2)).await;
    goes_live(b, "on roster").await;
    mark(b).await;
    let registry = Registry::new(c.clone());
    let reg = registry.register(Instance::new("late", "127.0.0.1:7001")).await.unwrap();
    reg.registered(Duration::from_secs(5)).await.unwrap();
    let took = appears(b, "tr[data-service=\"late\"]", Duration::from_secs(3)).await;
    println!("registered after load: visible after {took:?}");
    assert!(took < Duration::from_secs(1), "appeared after {took:?}");
    assert!(still_marked(b).await, "the page reloaded");

    // A registration whose process dies: gone once its 2 s TTL runs out.
    let mut proc = tokio::process::Command::new(roster_bin())
        .args(["register", "doomed", "127.0.0.1:7002", "--ttl", "2", "--endpoints", endpoint])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    b.goto(&format!("{ui}/services/doomed")).await.unwrap();
    appears(b, "tr[data-key=\"/services/doomed/127.0.0.1:7002\"]", Duration::from_secs(5)).await;
    mark(b).await;
    // A TTL counting down is on the row.
    let ttl: i64 =
        b.find(Locator::Css("span.ttl")).await.unwrap().attr("data-ttl").await.unwrap().unwrap().parse().unwrap();
    assert!((0..=2).contains(&ttl), "ttl {ttl}");
    proc.start_kill().unwrap(); // SIGKILL
    proc.wait().await.unwrap();
    let gone = disappears(b, "tr[data-key=\"/services/doomed/127.0.0.1:7002\"]", Duration::from_secs(8)).await;
    println!("kill -9: row gone after {gone:?}");
    assert!(gone > Duration::from_millis(500), "gone after {gone:?}: before the lease could expire");
    assert!(still_marked(b).await, "the page reloaded");
    reg.deregister().await.unwrap();
}

async fn actions(b: &Browser, ui: &str, c: &Client) {
    // A live SDK registration follows Drain; the others are keys put by hand.
    let registry = Registry::new(c.clone()).with_ttl(Duration::from_secs(10));
    let reg = registry.register(Instance::new("shop", "10.0.0.1:80").with_id("a").with_zone("eu-1")).await.unwrap();
    let lease = reg.registered(Duration::from_secs(5)).await.unwrap();
    let a = reg.key().to_owned();
    let discovery = registry.discover("shop");
    discovery.ready().await;
    let w = put_instance(c, &Instance::new("shop", "10.0.0.2:80").with_id("w").with_zone("eu-2")).await;
    let d = put_instance(c, &Instance::new("shop", "10.0.0.3:80").with_id("d")).await;
    b.goto(&format!("{ui}/services/shop")).await.unwrap();
    appears(b, &sel(&d), Duration::from_secs(3)).await;
    let listed = |id: &str| discovery.instances().iter().any(|i| i.id == id);
    assert!(listed("a"), "discovered before the drain");

    // Drain: confirmed, then the registration withdraws it (keeping its
    // lease) and the page shows it drained, from its marker.
    click(b, &format!("{} a[href*='action=drain']", sel(&a))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    assert!(text(b, "main").await.contains("Drain: a drain marker on its own lease"), "confirmation page");
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(5)).await;
    let flash = text(b, "#flash").await;
    assert!(flash.contains("shop/a drained"), "{flash}");
    // The key went first; the status follows within the same step.
    let paused = tokio::time::timeout(Duration::from_secs(2), async {
        reg.status().wait_for(|s| *s == roster::RegistrationStatus::Paused).await.is_ok()
    })
    .await;
    assert!(paused == Ok(true), "paused by the drain: {:?}", *reg.status().borrow());
    assert_eq!(value_of(c, &a).await, None, "key withdrawn");
    let marker = registry.drain_key_of("shop", "a");
    let held =
        c.range(RangeRequest { key: marker.clone().into_bytes().into(), ..Default::default() }).await.unwrap().kvs;
    assert_eq!(held.first().map(|kv| kv.lease), Some(lease), "marker on the instance's lease");
    let start = Instant::now();
    while listed("a") {
        assert!(start.elapsed() < Duration::from_secs(3), "discovery still lists a drained instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    appears(b, &format!("{}[data-drained]", sel(&a)), Duration::from_secs(2)).await;
    assert!(text(b, &sel(&a)).await.contains("10.0.0.1:80"), "a drained instance still shows its address");
    b.goto(&format!("{ui}/")).await.unwrap();
    appears(b, "tr[data-service=\"shop\"]", Duration::from_secs(3)).await;
    let row = text(b, "tr[data-service=\"shop\"]").await;
    assert!(row.contains("partly drained") && row.contains("1 drained"), "{row}");
    b.goto(&format!("{ui}/services/shop")).await.unwrap();

    // Resume: the marker goes, the registration puts the key back.
    click(b, &format!("{} a[href*='action=resume']", sel(&a))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(5)).await;
    let flash = text(b, "#flash").await;
    assert!(flash.contains("shop/a resumed"), "{flash}");
    let back = tokio::time::timeout(Duration::from_secs(2), async {
        reg.status().wait_for(|s| *s == roster::RegistrationStatus::Registered { lease }).await.is_ok()
    })
    .await;
    assert!(back == Ok(true), "registered again on the same lease: {:?}", *reg.status().borrow());
    assert!(value_of(c, &a).await.is_some(), "key back");
    assert_eq!(value_of(c, &marker).await, None, "marker deleted");
    let start = Instant::now();
    while !listed("a") {
        assert!(start.elapsed() < Duration::from_secs(3), "discovery did not list it again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b.find(Locator::Css(&format!("{}[data-drained]", sel(&a)))).await.is_err(),
        "still shown drained after resume"
    );

    // A key that no registration keeps does not follow: said so, nothing
    // changed (no marker left behind, weight as it was).
    click(b, &format!("{} a[href*='action=drain']", sel(&w))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(6)).await;
    let flash = text(b, "#flash").await;
    assert!(flash.contains("does not follow drain requests; set its weight to 0 instead"), "{flash}");
    assert_eq!(value_of(c, &registry.drain_key_of("shop", "w")).await, None, "marker taken back");
    let inst = Instance::from_value("shop", "w", &value_of(c, &w).await.unwrap()).unwrap();
    assert_eq!(inst.weight, 100);

    // Weight.
    let input = b.find(Locator::Css(&format!("{} input.weight", sel(&w)))).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("7").await.unwrap();
    click(b, &format!("{} form.inline button", sel(&w))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(3)).await;
    let inst = Instance::from_value("shop", "w", &value_of(c, &w).await.unwrap()).unwrap();
    assert_eq!(inst.weight, 7);
    assert_eq!(text(b, &format!("{} td[data-weight]", sel(&w))).await, "7");

    // Deregister: the lease is revoked.
    click(b, &format!("{} a[href*='action=deregister']", sel(&d))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(3)).await;
    assert_eq!(value_of(c, &d).await, None, "deregistered in the registry");
    disappears(b, &sel(&d), Duration::from_secs(2)).await;

    // Filters: by zone.
    b.goto(&format!("{ui}/services/shop?zone=eu-2")).await.unwrap();
    appears(b, &sel(&w), Duration::from_secs(2)).await;
    assert!(b.find_all(Locator::Css(&sel(&a))).await.unwrap().is_empty(), "zone filter");
    screenshot(b, "service-instances").await;
    reg.deregister().await.unwrap();
}

/// Search, and the tag and metadata filters, typed into the form as a
/// keyboard user would (Enter submits).
async fn filters(b: &Browser, ui: &str, c: &Client) {
    let mut canary = Instance::new("catalog", "10.7.0.1:80").with_id("c1").with_zone("eu-1").with_meta("team", "blue");
    canary.tags = vec!["canary".into()];
    canary.version = "2.1.0".into();
    let stable = Instance::new("catalog", "10.7.0.2:80").with_id("c2").with_zone("eu-1").with_meta("team", "red");
    let other = Instance::new("billing", "10.7.0.3:80").with_id("b1").with_meta("team", "blue");
    let (k1, k2, k3) = (put_instance(c, &canary).await, put_instance(c, &stable).await, put_instance(c, &other).await);
    let shown = async |keys: &[&str]| -> Vec<bool> {
        let mut out = Vec::new();
        for k in keys {
            out.push(!b.find_all(Locator::Css(&sel(k))).await.unwrap().is_empty());
        }
        out
    };
    let submit = async |field: &str, value: &str| {
        let input = b.find(Locator::Css(field)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(&format!("{value}\u{E007}")).await.unwrap(); // Enter
        let start = Instant::now();
        while !b.current_url().await.unwrap().as_str().contains(&format!("={}", value.replace('=', "%3D"))) {
            assert!(start.elapsed() < Duration::from_secs(3), "the filter form did not submit {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    b.goto(&format!("{ui}/services/catalog")).await.unwrap();
    appears(b, &sel(&k2), Duration::from_secs(3)).await;
    submit("#tag", "canary").await;
    assert_eq!(shown(&[&k1, &k2]).await, [true, false], "tag filter");
    b.goto(&format!("{ui}/services/catalog")).await.unwrap();
    submit("#meta", "team=red").await;
    assert_eq!(shown(&[&k1, &k2]).await, [false, true], "metadata filter");
    // Search across services: a version, then a metadata value.
    b.goto(&format!("{ui}/")).await.unwrap();
    submit("#q", "2.1.0").await;
    let rows = b.find_all(Locator::Css("tr[data-service]")).await.unwrap();
    let mut names = Vec::new();
    for r in rows {
        names.push(r.attr("data-service").await.unwrap().unwrap());
    }
    assert_eq!(names, ["catalog"], "search by version");
    b.goto(&format!("{ui}/")).await.unwrap();
    submit("#q", "blue").await;
    appears(b, "tr[data-service=\"billing\"]", Duration::from_secs(2)).await;
    appears(b, "tr[data-service=\"catalog\"]", Duration::from_secs(2)).await;
    for k in [k1, k2, k3] {
        c.delete_range(roster_api::etcdserverpb::DeleteRangeRequest {
            key: k.into_bytes().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// Pages left behind keep no event stream open: over HTTP/1.1 Chromium
/// allows six connections per host, and the streams of pages it kept for
/// "back" once stalled the seventh page's load for a minute.
async fn many_pages_in_a_row_do_not_stall(b: &Browser, ui: &str) {
    for i in 0..12 {
        let start = Instant::now();
        b.goto(&format!("{ui}/?q=page-{i}")).await.unwrap();
        goes_live(b, "after many pages").await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "page {i} took {took:?} to load and go live");
    }
}

async fn set_value(b: &Browser, v: &str) {
    b.execute("document.getElementById('value').value = arguments[0];", vec![json!(v)]).await.unwrap();
}

async fn config_edits(b: &Browser, ui: &str, c: &Client) {
    let key = "/config/app.json";
    let original = r#"{"workers": 2}"#;
    c.put(PutRequest { key: key.into(), value: original.into(), ..Default::default() }).await.unwrap();
    let page = format!("{ui}/config/key?key={key}");

    // Invalid: refused with the message `roster config set` gives.
    b.goto(&page).await.unwrap();
    set_value(b, r#"{"workers": "#).await;
    click(b, "#review").await;
    appears(b, "#validation", Duration::from_secs(3)).await;
    let shown = text(b, "#validation").await;
    let expected = roster::config::check_value(roster::config::Format::Json, br#"{"workers": "#).unwrap_err();
    assert_eq!(shown, expected);
    assert_eq!(value_of(c, key).await.unwrap(), original.as_bytes());

    // Valid, but someone else writes between review and publish.
    set_value(b, r#"{"workers": 3}"#).await;
    click(b, "#review").await;
    appears(b, "#publish", Duration::from_secs(3)).await;
    assert!(text(b, "pre.diff").await.contains(r#"+ {"workers": 3}"#), "{}", text(b, "pre.diff").await);
    c.put(PutRequest { key: key.into(), value: r#"{"workers": 9}"#.into(), ..Default::default() }).await.unwrap();
    click(b, "#publish").await;
    appears(b, "#conflict", Duration::from_secs(3)).await;
    assert!(text(b, "#conflict").await.contains("was changed by someone else"), "{}", text(b, "#conflict").await);
    assert_eq!(value_of(c, key).await.unwrap(), br#"{"workers": 9}"#);
    screenshot(b, "config-conflict").await;

    // Rollback to the original value.
    b.goto(&page).await.unwrap();
    let first_rev: i64 = {
        let rows = b.find_all(Locator::Css("table.history tr[data-revision]")).await.unwrap();
        rows.last().unwrap().attr("data-revision").await.unwrap().unwrap().parse().unwrap()
    };
    click(b, &format!("tr[data-revision=\"{first_rev}\"] button")).await;
    appears(b, "#flash", Duration::from_secs(3)).await;
    assert!(text(b, "#flash").await.contains("Rolled back"), "{}", text(b, "#flash").await);
    assert_eq!(value_of(c, key).await.unwrap(), original.as_bytes());
    screenshot(b, "config-key").await;
}

async fn paging(b: &Browser, ui: &str, c: &Client) {
    const N: usize = 100_000;
    let start = Instant::now();
    // 128 puts per txn (etcd's limit), 16 txns in flight.
    let batches: Vec<Vec<usize>> = (0..N).collect::<Vec<_>>().chunks(128).map(<[usize]>::to_vec).collect();
    let mut set = tokio::task::JoinSet::new();
    for batch in batches {
        while set.len() >= 16 {
            set.join_next().await.unwrap().unwrap();
        }
        let c = c.clone();
        set.spawn(async move {
            let success = batch
                .iter()
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: format!("/bulk/{i:06}").into_bytes().into(),
                        value: "x".into(),
                        ..Default::default()
                    })),
                })
                .collect();
            c.txn(TxnRequest { success, ..Default::default() }).await.unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    println!("loaded {N} keys in {:?}", start.elapsed());
    b.goto(&format!("{ui}/keys?prefix=/bulk/")).await.unwrap();
    assert!(text(b, "#key-count").await.starts_with("100000 keys"), "{}", text(b, "#key-count").await);
    let first = |n: usize| format!("/bulk/{n:06}");
    for page in 0..3 {
        let rows = b.find_all(Locator::Css("table.keys tbody th")).await.unwrap();
        assert_eq!(rows.len(), 100);
        assert_eq!(rows[0].text().await.unwrap(), first(page * 100));
        click(b, "#next-page").await;
        let first_row = format!("a[href$='key={}']", first((page + 1) * 100));
        appears(b, &first_row, Duration::from_secs(3)).await;
    }
    // The last page: 50 keys and no next link.
    b.goto(&format!("{ui}/keys?prefix=/bulk/&after=/bulk/099949")).await.unwrap();
    let rows = b.find_all(Locator::Css("table.keys tbody th")).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert!(b.find_all(Locator::Css("#next-page")).await.unwrap().is_empty());
    screenshot(b, "keys").await;
}

async fn coordination(b: &Browser, ui: &str, c: &Client) {
    use roster::sync::{Mutex, Session};
    let holder = Session::new(c, Duration::from_secs(10)).await.unwrap();
    let waiter = Session::new(c, Duration::from_secs(10)).await.unwrap();
    let guard = Mutex::new(&holder, "/locks/nightly").lock().await.unwrap();
    let queued = Mutex::new(&waiter, "/locks/nightly");
    let wait = tokio::spawn(async move { queued.lock().await });
    b.goto(&format!("{ui}/coordination")).await.unwrap();
    let waiter_key = format!("/locks/nightly/{:x}", waiter.lease());
    appears(b, &format!("li[data-key=\"{waiter_key}\"]"), Duration::from_secs(3)).await;
    let row = text(b, "tr[data-name=\"/locks/nightly\"]").await;
    assert!(row.contains(&format!("/locks/nightly/{:x}", holder.lease())), "holder: {row}");
    screenshot(b, "coordination").await;
    // The holder lets go: the waiter holds it, and the page shows that live.
    guard.unlock().await.unwrap();
    let held = wait.await.unwrap().unwrap();
    assert_eq!(held.key(), waiter_key);
    disappears(b, &format!("li[data-key=\"{waiter_key}\"]"), Duration::from_secs(2)).await;
    assert!(text(b, "tr[data-name=\"/locks/nightly\"]").await.contains(&waiter_key));
    held.unlock().await.unwrap();
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}

async fn screenshots(b: &Browser, ui: &str) {
    b.goto(&format!("{ui}/")).await.unwrap();
    screenshot(b, "services").await;
    b.goto(&format!("{ui}/registry")).await.unwrap();
    appears(b, "#revision", Duration::from_secs(2)).await;
    screenshot(b, "registry").await;
    b.goto(&format!("{ui}/config")).await.unwrap();
    screenshot(b, "config-tree").await;
}

async fn login(b: &Browser, ui: &str, user: &str, password: &str) {
    b.goto(&format!("{ui}/login")).await.unwrap();
    b.find(Locator::Css("#user")).await.unwrap().send_keys(user).await.unwrap();
    b.find(Locator::Css("#password")).await.unwrap().send_keys(password).await.unwrap();
    click(b, "#sign-in").await;
    appears(b, "span.user", Duration::from_secs(5)).await;
}

async fn auth_read_only(b: &Browser) {
    if require_etcdctl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Roster::try_start_in_with_args(roster_bin(), dir.path(), &["--bcrypt-cost", "4"]).await.unwrap();
    let ctl = Etcdctl::new(server.endpoint());
    for cmd in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "viewer:viewerpw"],
        &["role", "add", "viewer"],
        &["role", "grant-permission", "viewer", "--prefix=true", "read", "/"],
        &["user", "grant-role", "viewer", "viewer"],
        &["auth", "enable"],
    ] {
        ctl.run(cmd).await.ok();
    }
    let ui = format!("{}/ui", server.http_url());
    let root = Client::new(ClientConfig::new([server.endpoint()]).with_credentials("root", "rootpw")).unwrap();
    let key = put_instance(&root, &Instance::new("vault", "10.1.0.1:80").with_id("v1")).await;

    // Not signed in: the console asks for credentials.
    b.goto(&format!("{ui}/")).await.unwrap();
    appears(b, "#sign-in", Duration::from_secs(3)).await;
    login(b, &ui, "viewer", "viewerpw").await;
    b.goto(&format!("{ui}/services/vault")).await.unwrap();
    appears(b, &sel(&key), Duration::from_secs(3)).await;
    // Live under auth too: the console's watch runs on a signed-in user's client.
    let live = put_instance(&root, &Instance::new("vault", "10.1.0.2:80").with_id("v2")).await;
    let took = appears(b, &sel(&live), Duration::from_secs(3)).await;
    println!("under auth: visible after {took:?}");
    assert!(took < Duration::from_secs(1), "appeared after {took:?}");
    assert!(
        b.find_all(Locator::Css("td.actions, a.button, form.inline")).await.unwrap().is_empty(),
        "read-only user sees actions"
    );
    screenshot(b, "read-only-user").await;
    // A forged deregister, with the session's own CSRF token: 403.
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch('/ui/action', { method: 'POST', body: new URLSearchParams({ csrf, action: 'deregister', key: arguments[0] }) })
               .then(r => done(r.status));",
            vec![json!(key)],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert!(value_of(&root, &key).await.is_some(), "the forged action did something");

    // root, in the same browser, gets the buttons.
    click(b, "form[action='/ui/logout'] button").await;
    login(b, &ui, "root", "rootpw").await;
    b.goto(&format!("{ui}/services/vault")).await.unwrap();
    appears(b, &format!("{} td.actions", sel(&key)), Duration::from_secs(3)).await;
    click(b, "form[action='/ui/logout'] button").await;
}

async fn real_etcd(b: &Browser) {
    if require_etcd().is_none() {
        return;
    }
    let etcd = Etcd::start().await;
    let (mut console, ui) = spawn_console(&etcd.endpoint(), &[]).await;
    let c = sdk(&etcd.endpoint());
    b.goto(&format!("{ui}/")).await.unwrap();
    goes_live(b, "against etcd").await;
    let key = put_instance(&c, &Instance::new("on-etcd", "10.2.0.1:80").with_id("e1")).await;
    let took = appears(b, "tr[data-service=\"on-etcd\"]", Duration::from_secs(3)).await;
    println!("against etcd: visible after {took:?}");
    assert!(took < Duration::from_secs(1));
    b.goto(&format!("{ui}/services/on-etcd")).await.unwrap();
    click(b, &format!("{} a[href*='action=drain']", sel(&key))).await;
    appears(b, "#confirm", Duration::from_secs(3)).await;
    click(b, "#confirm").await;
    appears(b, "#flash", Duration::from_secs(6)).await;
    let flash = text(b, "#flash").await;
    assert!(flash.contains("does not follow drain requests"), "{flash}");
    assert!(value_of(&c, &key).await.is_some(), "a key put by hand stays");
    b.goto(&format!("{ui}/registry")).await.unwrap();
    assert!(text(b, "main").await.contains("3.4"), "etcd's version on the registry page");
    screenshot(b, "registry-etcd").await;
    console.start_kill().unwrap();
    console.wait().await.unwrap();
}

/// The first event of `/ui/events` for a given `Last-Event-ID` (or none):
/// its `event:` name and `id:`.
async fn first_event(http: &str, last_id: Option<i64>) -> (String, i64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = http.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let header = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let req = format!("GET /ui/events HTTP/1.1\r\nHost: {host}\r\n{header}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await.expect("no event within 3 s").unwrap();
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(ev) = text.split("\r\n\r\n").nth(1).and_then(|body| body.split("\n\n").find(|e| e.contains("id:")))
        {
            let field = |name: &str| ev.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
            return (field("event:").unwrap_or_default(), field("id:").unwrap().parse().unwrap());
        }
    }
}

/// A reconnecting page sends the last revision it saw: it is told of what
/// changed since at once, and a page that is current just gets a hello.
#[tokio::test]
async fn event_stream_resumes_from_last_event_id() {
    let server = Roster::start_in_memory(roster_bin()).await;
    let c = sdk(&server.endpoint());
    let mut rev = 0;
    for i in 0..3 {
        let put = PutRequest {
            key: format!("/services/resume/{i}").into_bytes().into(),
            value: "10.0.0.1:80".into(),
            ..Default::default()
        };
        rev = c.put(put).await.unwrap().header.unwrap().revision;
    }
    // The console's watch has caught up once a fresh stream says hello at `rev`.
    let start = Instant::now();
    loop {
        let (event, id) = first_event(&server.http_url(), None).await;
        assert_eq!(event, "hello");
        if id == rev {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the console's watch is at {id}, not {rev}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first_event(&server.http_url(), Some(rev - 2)).await, ("change".to_owned(), rev));
    assert_eq!(first_event(&server.http_url(), Some(rev)).await, ("hello".to_owned(), rev));
}

/// Set inside the network namespace [`exposed_console_serves_nothing_without_tls_or_auth`] creates.
const IN_NETNS: &str = "ROSTER_TEST_IN_NETNS";
/// A non-loopback address, on the namespace's own `lo`.
const EXPOSED_IP: &str = "10.77.0.1";

/// On a non-loopback address without TLS, the console serves nothing while
/// the registry has auth off, serves the login once auth is on, and serves
/// everything with `--console-insecure`. The address lives in a network
/// namespace this test creates (`unshare -rn`), so nothing is reachable
/// from outside: the test re-runs itself in there.
#[tokio::test]
async fn exposed_console_serves_nothing_without_tls_or_auth() {
    if std::env::var_os(IN_NETNS).is_some() {
        return exposed_console_in_namespace().await;
    }
    let Some(unshare) = which("unshare") else {
        panic!("`unshare` (util-linux) is missing: it makes the network namespace this test needs");
    };
    if !std::process::Command::new(&unshare).args(["-rn", "true"]).status().is_ok_and(|s| s.success()) {
        // The kernel (or a container policy) refuses user namespaces: an
        // environment limit, not a missing tool. CI never skips.
        let msg = "!!! SKIPPED: this kernel refuses `unshare -rn` (user and network namespaces) !!!";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: tests must not skip)");
        }
        eprintln!("\n{msg}\n");
        return;
    }
    let name = "console::exposed_console_serves_nothing_without_tls_or_auth";
    let out = std::process::Command::new(unshare)
        .arg("-rn")
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{name} failed in its namespace (output above)");
}

/// `roster serve --in-memory` with `--http` on the exposed address; its
/// HTTP address and the process (killed on drop).
async fn serve_exposed(
    extra: &[&str],
) -> (std::net::SocketAddr, String, tokio::process::Child, tempfile::NamedTempFile) {
    let (grpc, http) = (free_port(), free_port());
    let http_addr: std::net::SocketAddr = format!("{EXPOSED_IP}:{http}").parse().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = tokio::process::Command::new(roster_bin())
        .args(["serve", "--in-memory", "--listen", &format!("127.0.0.1:{grpc}"), "--http", &http_addr.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(http_addr).await.is_err() {
        assert!(Instant::now() < deadline, "roster serve did not listen on {http_addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (http_addr, format!("127.0.0.1:{grpc}"), child, log)
}

async fn exposed_console_in_namespace() {
    for args in [&["link", "set", "lo", "up"][..], &["addr", "add", &format!("{EXPOSED_IP}/32"), "dev", "lo"]] {
        let ok = std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?} failed in the test's namespace");
    }
    let (http, grpc, _server, log) = serve_exposed(&[]).await;
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("reachable beyond this machine without TLS"), "no warning at start:\n{logged}");
    // Auth off: every console page is refused; health is still served.
    for path in ["/ui/", "/ui/keys", "/ui/registry", "/ui/events"] {
        let (status, body) = http_get(http, path).await.unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("reachable beyond loopback without TLS"), "{path}: {body}");
    }
    assert_eq!(http_get(http, "/health").await.unwrap().0, 200);
    // Auth on: the console asks for credentials (never shows data unasked).
    if require_etcdctl().is_some() {
        let ctl = Etcdctl::new(grpc);
        for cmd in [&["user", "add", "root:rootpw"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]] {
            ctl.run(cmd).await.ok();
        }
        let start = Instant::now();
        loop {
            let (status, body) = http_get(http, "/ui/").await.unwrap();
            if status != 403 {
                assert!(body.contains("sign-in") || status == 303, "{status}: {body}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "still refused with auth on: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Asked for explicitly: served.
    let (http, _, _insecure, _) = serve_exposed(&["--console-insecure"]).await;
    let (status, body) = http_get(http, "/ui/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Services"), "{body}");
}
