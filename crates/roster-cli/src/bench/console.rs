//! `roster bench console`: the web console over a registry of
//! `--services` x `--instances`, per target:
//!
//! - first render of the services page (a fresh console, first GET), and
//!   the median of the next ten;
//! - change-to-event latency with `--pages` event streams open: a put,
//!   then the time until every stream has delivered an event whose id
//!   (the revision) covers it; plus the same plus one re-fetch of a
//!   service's live fragment, which is what a page does to show it;
//! - the registry's watcher count before the console, with it, and with
//!   every page open (read from the target's `/metrics`), so the
//!   console's extra load shows as one watch whatever the page count.
//!
//! - with `--keys N`: N more keys, then the key browser's pages (the first,
//!   one from the middle, the last, and a prefix search), each the median
//!   of five GETs, checked for the right first key and count.
//!
//! The console runs in this process, against the target like any client.
//! Everything is bounded: the load, `--changes`, and a deadline per event.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use roster::{Client, ClientConfig, Instance};
use roster_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleBench {
    /// `NAME=ENDPOINT` or `NAME=ENDPOINT@METRICS_URL` (repeatable), e.g.
    /// `roster=127.0.0.1:2379@http://127.0.0.1:2381`.
    #[arg(long = "target", required = true, value_name = "NAME=ENDPOINT[@URL]")]
    targets: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Event streams open at once (pages).
    #[arg(long, default_value_t = 10)]
    pages: usize,
    /// Changes timed, 50 ms apart.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Keys (`/bench-keys/NNNNNNN`) loaded for the key-browser figures; 0
    /// skips them. They are deleted afterwards.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    keys: u64,
}

type Http = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Row {
    name: String,
    first_render: Duration,
    render_median: Duration,
    event_p50: Duration,
    event_p99: Duration,
    visible_p99: Duration,
    watchers: [Option<f64>; 3],
    /// First page, a middle page, the last page, a prefix search.
    browser: Option<[Duration; 4]>,
}

const BROWSER: [&str; 4] = ["first page", "middle page", "last page", "prefix search"];

pub async fn run(args: ConsoleBench) -> Result<()> {
    let mut rows = Vec::new();
    for t in &args.targets {
        let (name, rest) = t.split_once('=').context("--target is NAME=ENDPOINT[@METRICS_URL]")?;
        let (endpoint, metrics) = match rest.split_once('@') {
            Some((e, m)) => (e, Some(m.to_owned())),
            None => (rest, None),
        };
        eprintln!("console bench on {name} ({endpoint})");
        rows.push(one(&args, name, endpoint, metrics).await?);
    }
    println!(
        "{:<10} {:>13} {:>14} {:>11} {:>11} {:>15} {:>22}",
        "target",
        "first render",
        "render median",
        "event p50",
        "event p99",
        "visible p99",
        "watchers before/+console/+pages"
    );
    for r in &rows {
        let w = r.watchers.map(|w| w.map_or("-".to_owned(), |v| format!("{v:.0}")));
        println!(
            "{:<10} {:>13.1?} {:>14.1?} {:>11.1?} {:>11.1?} {:>15.1?} {:>22}",
            r.name,
            r.first_render,
            r.render_median,
            r.event_p50,
            r.event_p99,
            r.visible_p99,
            format!("{}/{}/{}", w[0], w[1], w[2])
        );
    }
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64().max(1e-9);
    if let [a, b, ..] = &rows[..] {
        println!(
            "ratio {}/{}: first render {:.2}, event p99 {:.2}, visible p99 {:.2}",
            a.name,
            b.name,
            ratio(a.first_render, b.first_render),
            ratio(a.event_p99, b.event_p99),
            ratio(a.visible_p99, b.visible_p99)
        );
    }
    if args.keys > 0 {
        println!("\nkey browser over {} keys (median of 5 GETs each)", args.keys);
        println!("{:<10} {:>13} {:>13} {:>13} {:>14}", "target", BROWSER[0], BROWSER[1], BROWSER[2], BROWSER[3]);
        for r in &rows {
            let b = r.browser.unwrap_or_default();
            println!("{:<10} {:>13.1?} {:>13.1?} {:>13.1?} {:>14.1?}", r.name, b[0], b[1], b[2], b[3]);
        }
        if let [a, b, ..] = &rows[..]
            && let (Some(x), Some(y)) = (a.browser, b.browser)
        {
            let parts: Vec<String> = (0..4).map(|i| format!("{} {:.2}", BROWSER[i], ratio(x[i], y[i]))).collect();
            println!("ratio {}/{}: {}", a.name, b.name, parts.join(", "));
        }
    }
    Ok(())
}

async fn one(args: &ConsoleBench, name: &str, endpoint: &str, metrics: Option<String>) -> Result<Row> {
    let client = Client::connect([endpoint.to_owned()])?;
    let lease = client.lease_grant(600).await?.id;
    load(&client, args, lease).await?;
    let http: Http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let watchers_before = match &metrics {
        Some(m) => watchers(&http, m).await,
        None => None,
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = roster_console::ConsoleConfig::new(ClientConfig::new([endpoint.to_owned()]));
    config.http_base = metrics.clone();
    let console = roster_console::Console::new(config)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, console.router())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    let base = format!("http://{addr}");

    // First render: the console's first services page.
    let start = Instant::now();
    let (status, body) = get(&http, &format!("{base}/ui/"), false).await?;
    let first_render = start.elapsed();
    if status != 200 || !body.contains(&format!("{} services", args.services)) {
        bail!("unexpected services page ({status}): {}", &body[..body.len().min(300)]);
    }
    let mut renders = Vec::new();
    for _ in 0..10 {
        let s = Instant::now();
        get(&http, &format!("{base}/ui/"), false).await?;
        renders.push(s.elapsed());
    }
    renders.sort();
    // Wait for the console's watch to be open before counting it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while console.revision() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let watchers_console = match &metrics {
        Some(m) => watchers(&http, m).await,
        None => None,
    };

    // Pages: each an event stream reporting the ids it receives.
    let (tx, mut events) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let mut streams = Vec::new();
    for page in 0..args.pages {
        streams.push(tokio::spawn(sse(http.clone(), format!("{base}/ui/events"), page, tx.clone())));
    }
    // Every stream says hello first.
    let mut hello = 0;
    while hello < args.pages {
        tokio::time::timeout(Duration::from_secs(5), events.recv()).await.context("event streams did not open")?;
        hello += 1;
    }
    let watchers_pages = match &metrics {
        Some(m) => watchers(&http, m).await,
        None => None,
    };

    let mut latencies = Vec::new();
    let mut visible = Vec::new();
    for n in 0..args.changes {
        let svc = n % args.services;
        let inst = Instance::new(format!("svc-{svc:04}"), format!("10.0.{}.{}:80", svc / 250, svc % 250))
            .with_id("i0")
            .with_weight(100 + (n as u32 % 7));
        let key = format!("/services/svc-{svc:04}/i0");
        let put = PutRequest {
            key: key.into_bytes().into(),
            value: inst.to_value().into_bytes().into(),
            lease,
            ..Default::default()
        };
        let at = Instant::now();
        let rev = client.put(put).await?.header.map_or(0, |h| h.revision);
        let mut seen = vec![None; args.pages];
        let deadline = at + Duration::from_secs(5);
        while seen.iter().any(Option::is_none) {
            let (page, id, when) = tokio::time::timeout_at(deadline.into(), events.recv())
                .await
                .context("an event did not arrive within 5 s")?
                .context("event streams ended")?;
            if id >= rev && seen[page].is_none() {
                seen[page] = Some(when.duration_since(at));
            }
        }
        let worst = seen.iter().flatten().max().copied().unwrap_or_default();
        latencies.extend(seen.into_iter().flatten());
        // What a page then does: re-fetch its live part.
        let s = Instant::now();
        get(&http, &format!("{base}/ui/services/svc-{svc:04}"), true).await?;
        visible.push(worst + s.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    visible.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];

    for s in streams {
        s.abort();
    }
    let browser = if args.keys > 0 { Some(key_browser(&client, &http, &base, args.keys).await?) } else { None };
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(console);
    // Leave nothing behind.
    client.lease_revoke(lease).await?;
    client
        .delete_range(DeleteRangeRequest {
            key: "/services/svc-".into(),
            range_end: roster_api::range::prefix_end(b"/services/svc-").into(),
            ..Default::default()
        })
        .await?;
    Ok(Row {
        name: name.to_owned(),
        first_render,
        render_median: renders[renders.len() / 2],
        event_p50: pct(&latencies, 0.5),
        event_p99: pct(&latencies, 0.99),
        visible_p99: pct(&visible, 0.99),
        watchers: [watchers_before, watchers_console, watchers_pages],
        browser,
    })
}

/// Loads `n` keys, times the key browser's pages over them, deletes them.
async fn key_browser(client: &Client, http: &Http, base: &str, n: u64) -> Result<[Duration; 4]> {
    const PREFIX: &str = "/bench-keys/";
    if n < 1000 {
        bail!("--keys is 0 (no key-browser figures) or at least 1000");
    }
    let key = |i: u64| format!("{PREFIX}{i:07}");
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0u64;
    for chunk_start in (0..n).step_by(128) {
        while set.len() >= 8 {
            set.join_next().await.context("join")???;
        }
        let success = (chunk_start..(chunk_start + 128).min(n))
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key(i).into_bytes().into(),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                })),
            })
            .collect();
        let c = client.clone();
        set.spawn(async move { c.txn(TxnRequest { success, ..Default::default() }).await.map(|_| ()) });
        done = (chunk_start + 128).min(n);
        if done % 100_000 < 128 {
            eprintln!("  {done}/{n} keys loaded ({:.0?})", started.elapsed());
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    eprintln!("  {done} keys loaded in {:.1?}", started.elapsed());
    let mid = n / 2;
    let last_page_after = n.saturating_sub(51);
    // A three-digit prefix: a thousandth of the seven-digit space.
    let search = format!("{PREFIX}{:03}", (n / 2) / 10_000);
    let pages = [
        (format!("/ui/keys?prefix={PREFIX}"), key(0), n),
        (format!("/ui/keys?prefix={PREFIX}&after={}", key(mid - 1)), key(mid), n - mid),
        (format!("/ui/keys?prefix={PREFIX}&after={}", key(last_page_after)), key(last_page_after + 1), 50.min(n)),
        (format!("/ui/keys?prefix={search}"), format!("{search}0000"), 0),
    ];
    let mut out = [Duration::ZERO; 4];
    for (i, (path, first, count)) in pages.iter().enumerate() {
        let mut times = Vec::new();
        for _ in 0..5 {
            let s = Instant::now();
            let (status, body) = get(http, &format!("{base}{path}"), false).await?;
            times.push(s.elapsed());
            if status != 200 || !body.contains(&format!("key={first}\"")) {
                bail!(
                    "{}: the page does not start at {first} ({status}): {}",
                    BROWSER[i],
                    &body[..body.len().min(300)]
                );
            }
            if *count > 0 && !body.contains(&format!(">{count} keys from here")) {
                bail!("{}: the page does not count {count} keys", BROWSER[i]);
            }
        }
        times.sort();
        out[i] = times[2];
    }
    client
        .delete_range(DeleteRangeRequest {
            key: PREFIX.into(),
            range_end: roster_api::range::prefix_end(PREFIX.as_bytes()).into(),
            ..Default::default()
        })
        .await?;
    Ok(out)
}

/// `services` x `instances` on one lease, 128 puts per txn, 8 in flight.
async fn load(client: &Client, args: &ConsoleBench, lease: i64) -> Result<()> {
    let mut ops = Vec::with_capacity(args.services * args.instances);
    for s in 0..args.services {
        for i in 0..args.instances {
            let inst = Instance::new(format!("svc-{s:04}"), format!("10.{}.{}.{}:80", s / 250, s % 250, i))
                .with_id(format!("i{i}"))
                .with_zone(format!("z{}", i % 3));
            ops.push(RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("/services/svc-{s:04}/i{i}").into_bytes().into(),
                    value: inst.to_value().into_bytes().into(),
                    lease,
                    ..Default::default()
                })),
            });
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for chunk in ops.chunks(128) {
        while set.len() >= 8 {
            set.join_next().await.context("join")???;
        }
        let (c, success) = (client.clone(), chunk.to_vec());
        set.spawn(async move { c.txn(TxnRequest { success, ..Default::default() }).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

async fn get(http: &Http, url: &str, live: bool) -> Result<(u16, String)> {
    let mut req = http::Request::get(url);
    if live {
        req = req.header("x-roster-live", "1");
    }
    let resp = http.request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The registry's watcher gauge.
async fn watchers(http: &Http, base: &str) -> Option<f64> {
    let (_, text) = get(http, &format!("{}/metrics", base.trim_end_matches('/')), false).await.ok()?;
    text.lines()
        .filter(|l| l.starts_with("roster_watchers ") || l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Reads one event stream; reports each event's id as it arrives.
async fn sse(http: Http, url: String, page: usize, tx: mpsc::UnboundedSender<(usize, i64, Instant)>) -> Result<()> {
    let resp = http.request(http::Request::get(&url).body(Empty::new())?).await?;
    let mut body = resp.into_body();
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.trim().parse().ok()) {
                let _ = tx.send((page, id, Instant::now()));
            }
        }
    }
    Ok(())
}
