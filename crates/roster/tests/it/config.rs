//! Dynamic configuration: fan-out to 100 watchers, rejected values, the
//! cache file across a registry outage, deletes, and the prefix form.

use crate::support;

use roster::Client;
use roster::config::{self, ConfigEvent, Format, Options};
use roster_api::etcdserverpb::{DeleteRangeRequest, PutRequest};
use serde::Deserialize;
use std::time::Duration;
use support::{Server, client, eventually, on_roster_and_etcd};
use tokio_stream::StreamExt;

#[derive(Debug, Deserialize, PartialEq)]
struct App {
    workers: u32,
    #[serde(default)]
    mode: String,
}

async fn put(c: &Client, key: &str, value: &str) -> i64 {
    let r = c.put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    });
    r.await.unwrap().header.unwrap().revision
}

async fn delete(c: &Client, key: &str) {
    c.delete_range(DeleteRangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() }).await.unwrap();
}

fn positive_workers() -> Options<App> {
    Options::new().validate(|a: &App| if a.workers == 0 { Err("workers must be at least 1".into()) } else { Ok(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_100_watchers() {
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        put(&c, "/config/fanout.json", r#"{"workers": 1}"#).await;
        let mut watchers = Vec::new();
        for _ in 0..100 {
            watchers.push(config::watch::<App>(&c, "/config/fanout.json").await.unwrap());
        }
        assert!(watchers.iter().all(|w| w.get().workers == 1));
        let rev = put(&c, "/config/fanout.json", r#"{"workers": 8, "mode": "fast"}"#).await;
        for (i, w) in watchers.iter().enumerate() {
            eventually(&format!("{target}: watcher {i} sees the change"), Duration::from_secs(5), || {
                w.get().workers == 8
            })
            .await;
            assert_eq!(*w.get(), App { workers: 8, mode: "fast".into() });
            assert_eq!(w.revision(), rev);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_rejected_and_the_last_good_one_kept() {
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        put(&c, "/config/app.toml", "workers = 4\nmode = \"safe\"\n").await;
        let cfg = positive_workers().watch(&c, "/config/app.toml").await.unwrap();
        let mut events = Box::pin(cfg.changes());
        assert_eq!(cfg.get().workers, 4);

        // Fails validation.
        let rev = put(&c, "/config/app.toml", "workers = 0\n").await;
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap() {
            ConfigEvent::Rejected { key, revision, error } => {
                assert_eq!((key.as_str(), revision), ("/config/app.toml", rev), "{target}");
                assert!(error.contains("workers must be at least 1"), "{target}: {error}");
            }
            other => panic!("{target}: {other:?}"),
        }
        // Does not parse.
        put(&c, "/config/app.toml", "workers = [").await;
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap() {
            ConfigEvent::Rejected { error, .. } => assert!(error.starts_with("invalid TOML"), "{target}: {error}"),
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(*cfg.get(), App { workers: 4, mode: "safe".into() }, "{target}: the last good value must stay");
        assert!(cfg.last_error().unwrap().contains("invalid TOML"));

        // A good value is taken again, and deleting the key keeps it.
        let rev = put(&c, "/config/app.toml", "workers = 6\n").await;
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap() {
            ConfigEvent::Updated { value, revision, .. } => assert_eq!((value.workers, revision), (6, rev)),
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(cfg.last_error(), None);
        delete(&c, "/config/app.toml").await;
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap() {
            ConfigEvent::Deleted { key, .. } => assert_eq!(key, "/config/app.toml"),
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(cfg.get().workers, 6, "{target}: a delete must not empty the config");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_are_chosen_by_suffix_or_explicitly() {
    let server = Server::start(None).await;
    let c = server.client();
    put(&c, "/config/a.json", r#"{"workers": 1}"#).await;
    put(&c, "/config/a.yaml", "workers: 2\nmode: yaml\n").await;
    put(&c, "/config/a.yml", "workers: 3\n").await;
    put(&c, "/config/a.toml", "workers = 4\n").await;
    put(&c, "/config/plain", "workers = 5\n").await;
    assert_eq!(config::watch::<App>(&c, "/config/a.json").await.unwrap().get().workers, 1);
    assert_eq!(
        *config::watch::<App>(&c, "/config/a.yaml").await.unwrap().get(),
        App { workers: 2, mode: "yaml".into() }
    );
    assert_eq!(config::watch::<App>(&c, "/config/a.yml").await.unwrap().get().workers, 3);
    assert_eq!(config::watch::<App>(&c, "/config/a.toml").await.unwrap().get().workers, 4);
    let e = config::watch::<App>(&c, "/config/plain").await.err().unwrap().to_string();
    assert!(e.contains("cannot tell the format"), "{e}");
    let plain = Options::<App>::new().format(Format::Toml).watch(&c, "/config/plain").await.unwrap();
    assert_eq!(plain.get().workers, 5);

    let e = config::watch::<App>(&c, "/config/missing.json").await.err().unwrap().to_string();
    assert!(e.contains("is not set"), "{e}");
    put(&c, "/config/bad.json", r#"{"workers": "x"}"#).await;
    let e = config::watch::<App>(&c, "/config/bad.json").await.err().unwrap().to_string();
    assert!(e.contains("invalid JSON") && e.contains("/config/bad.json"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_cache_file_while_the_registry_is_down_then_catches_up() {
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join("cache/app.json.cache");
    let mut server = Server::start(Some(data.path().join("registry"))).await;
    let c = server.client();
    put(&c, "/config/app.json", r#"{"workers": 3}"#).await;
    {
        let cfg = positive_workers().cache_file(&cache).watch(&c, "/config/app.json").await.unwrap();
        assert_eq!(cfg.get().workers, 3);
        assert!(!cfg.is_stale());
    }
    assert!(cache.exists(), "the cache file is written");

    // The registry is down: without a cache there is a clear error...
    server.stop().await;
    let e = config::watch::<App>(&c, "/config/app.json").await.err().unwrap();
    assert!(matches!(e, roster::Error::Unreachable { .. } | roster::Error::Timeout(_)), "{e}");
    // ...and with one the process starts on the last good value.
    let cfg = positive_workers().cache_file(&cache).watch(&c, "/config/app.json").await.unwrap();
    assert_eq!(cfg.get().workers, 3);
    assert!(cfg.is_stale());

    // The registry returns with a newer value.
    server.restart().await;
    let rev = put(&c, "/config/app.json", r#"{"workers": 9}"#).await;
    eventually("the newer value after the registry returns", Duration::from_secs(10), || cfg.get().workers == 9).await;
    assert_eq!(cfg.revision(), rev);
    assert!(!cfg.is_stale());
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(cached.contains(r#"{\"workers\": 9}"#), "the cache follows: {cached}");

    // A cache for another key is not used.
    server.stop().await;
    let other = positive_workers().cache_file(&cache).watch(&c, "/config/other.json").await;
    assert!(other.is_err(), "a cache written for another key was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_form_keeps_a_whole_tree() {
    on_roster_and_etcd(|target, endpoint| async move {
        let c = client(&endpoint);
        put(&c, "/config/tree/a.json", r#"{"workers": 1}"#).await;
        put(&c, "/config/tree/b.yaml", "workers: 2\n").await;
        put(&c, "/config/tree/bad.json", "{").await;
        put(&c, "/config/treehouse.json", r#"{"workers": 99}"#).await;
        let tree = positive_workers().watch_prefix(&c, "/config/tree/").await.unwrap();
        let now = tree.get();
        assert_eq!(now.keys().cloned().collect::<Vec<_>>(), vec!["a.json", "b.yaml"], "{target}");
        assert_eq!(tree.entry("b.yaml").unwrap().workers, 2);

        put(&c, "/config/tree/c.toml", "workers = 3\n").await;
        put(&c, "/config/tree/a.json", r#"{"workers": 0}"#).await; // rejected: keeps 1
        delete(&c, "/config/tree/b.yaml").await;
        eventually(&format!("{target}: tree follows"), Duration::from_secs(5), || {
            let t = tree.get();
            t.contains_key("c.toml") && !t.contains_key("b.yaml")
        })
        .await;
        let t = tree.get();
        assert_eq!(t.keys().cloned().collect::<Vec<_>>(), vec!["a.json", "c.toml"], "{target}");
        assert_eq!(t["a.json"].workers, 1, "{target}: a rejected entry keeps its last good value");
        assert_eq!(t["c.toml"].workers, 3);
    })
    .await;
}

/// An update is announced only once it is in effect: a subscriber that
/// reads the value on the event (as `roster config watch` does) finds it,
/// never the one before. Hundreds of updates, so that an event sent before
/// the value is stored would be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_in_effect_when_it_is_announced() {
    const N: u32 = 200;
    let server = Server::start(None).await;
    let c = server.client();
    put(&c, "/config/order.json", r#"{"workers": 1}"#).await;
    let cfg = config::watch::<App>(&c, "/config/order.json").await.unwrap();
    let reader = cfg.clone();
    let checker = support::spin_read(cfg.changes(), N as usize, move |_, ev| {
        let ConfigEvent::Updated { value, revision, .. } = ev else { panic!("unexpected {ev:?}") };
        assert!(
            reader.revision() >= revision,
            "revision {revision} announced while {} is in effect",
            reader.revision()
        );
        assert!(
            reader.get().workers >= value.workers,
            "workers {} announced while {} is in effect",
            value.workers,
            reader.get().workers
        );
    });
    for n in 2..=N + 1 {
        put(&c, "/config/order.json", &format!(r#"{{"workers": {n}}}"#)).await;
    }
    tokio::task::spawn_blocking(move || checker.join())
        .await
        .unwrap()
        .expect("the reader saw an update before it was in effect");
}
