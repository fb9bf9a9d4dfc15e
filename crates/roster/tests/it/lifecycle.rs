//! Drop means stop: every handle that owns a background task ends it, and
//! the task's server-side streams, within a second of the last clone
//! dropping. Counted on the server, from roster serve's `/metrics`.

use crate::support::Server;
use roster::config::ConfigTree;
use roster::grpc::{Channel, ChannelConfig};
use roster::health::{Check, HealthCheck};
use roster::mirror::{self, Mirror};
use roster::sync::{Election, Session};
use roster::{Instance, Registry};
use roster_api::etcdserverpb::PutRequest;
use roster_api::mvccpb::{Event, KeyValue};
use std::sync::Arc;
use std::time::Duration;

/// The open Watch and LeaseKeepAlive streams the server counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streams {
    watch: i64,
    keepalive: i64,
}

async fn streams(server: &Server) -> Streams {
    let get = async |name| server.metric(name).await.unwrap_or_else(|| panic!("/metrics has no {name}")) as i64;
    Streams { watch: get("roster_watch_streams").await, keepalive: get("roster_keepalive_streams").await }
}

/// Waits (up to `limit`) until the server counts `want`.
async fn until_streams(server: &Server, what: &str, want: Streams, limit: Duration) {
    roster_testkit::eventually(what, limit, async || {
        let got = streams(server).await;
        if got == want { Ok(()) } else { Err(format!("{got:?}, want {want:?}")) }
    })
    .await;
}

/// With the handle open (`base` counted before it was), waits until its
/// streams are counted, drops one clone
/// (nothing may stop), then the last one: back to the baseline within 1 s.
/// A handle that is not `Clone` passes `()` as its first.
async fn drop_means_stop<A, B>(server: &Server, what: &str, base: Streams, open: Streams, (first, last): (A, B)) {
    let with = Streams { watch: base.watch + open.watch, keepalive: base.keepalive + open.keepalive };
    until_streams(server, &format!("{what}: its streams open"), with, Duration::from_secs(5)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(streams(server).await, with, "{what}: a clone is still alive, yet a stream closed");
    drop(last);
    until_streams(
        server,
        &format!("{what}: its streams closed after the last handle dropped"),
        base,
        Duration::from_secs(1),
    )
    .await;
}

struct Ignore;

impl Mirror for Ignore {
    fn label(&self) -> &str {
        "ignore"
    }
    fn reset(&self, _: &[KeyValue], _: i64) {}
    fn apply(&self, _: &[Event], _: i64) {}
    fn unreachable(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handle_stops_its_task_and_streams_when_the_last_clone_drops() {
    let server = Server::start(None).await;
    let client = server.client();
    let registry = Registry::new(client.clone()).with_ttl(Duration::from_secs(5));
    let one_watch = Streams { watch: 1, keepalive: 0 };
    let base = Streams { watch: 0, keepalive: 0 };
    until_streams(&server, "nothing open at the start", base, Duration::from_secs(5)).await;

    let d = registry.discover("svc");
    d.ready().await;
    drop_means_stop(&server, "Discovery", base, one_watch, (d.clone(), d)).await;

    client
        .put(PutRequest {
            key: b"/cfg/app.json".to_vec().into(),
            value: br#"{"n":1}"#.to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = roster::config::watch::<serde_json::Value>(&client, "/cfg/app.json").await.unwrap();
    drop_means_stop(&server, "Config", base, one_watch, (c.clone(), c)).await;
    let t: ConfigTree<serde_json::Value> = roster::config::Options::new().watch_prefix(&client, "/cfg/").await.unwrap();
    drop_means_stop(&server, "ConfigTree", base, one_watch, (t.clone(), t)).await;

    // Observing with no leader (a watch for the first candidate), then with
    // one (a watch on the leader's key): both are stopped by the drop.
    let election = Election::new(&client, "/elect/e");
    drop_means_stop(&server, "Election::observe without a leader", base, one_watch, ((), election.observe())).await;
    let session = Session::new(&client, Duration::from_secs(5)).await.unwrap();
    let leader = election.campaign(&session, "me").await.unwrap();
    let with_session = Streams { watch: 0, keepalive: 1 };
    until_streams(&server, "the session's keepalive", with_session, Duration::from_secs(5)).await;
    drop_means_stop(&server, "Election::observe with a leader", with_session, one_watch, ((), election.observe()))
        .await;
    election.resign(&leader).await.unwrap();
    let one_keepalive = Streams { watch: 0, keepalive: 1 };
    drop_means_stop(&server, "Session", base, one_keepalive, (session.clone(), session)).await;

    // A channel holds its discovery: with the caller's dropped, the channel
    // is what keeps the watch open, and its drop ends it.
    let d = registry.discover("svc");
    d.ready().await;
    let ch = Channel::new(d.clone(), ChannelConfig::default()).unwrap();
    drop(d);
    drop_means_stop(&server, "grpc::Channel", base, one_watch, (ch.clone(), ch)).await;

    let m = mirror::spawn(client.clone(), mirror::Range::prefix("/m/"), Arc::new(Ignore), None);
    drop_means_stop(&server, "mirror::spawn", base, one_watch, ((), m)).await;

    // A registration renews on a keepalive stream and watches its own key.
    let both = Streams { watch: 1, keepalive: 1 };
    let reg = registry.register(Instance::new("svc", "127.0.0.1:1").with_id("plain")).await.unwrap();
    reg.registered(Duration::from_secs(5)).await.unwrap();
    drop_means_stop(&server, "Registration", base, both, ((), reg)).await;
    let custom = HealthCheck::new(Check::custom(|| async { Ok(()) })).with_interval(Duration::from_millis(100));
    let reg = registry.register_checked(Instance::new("svc", "127.0.0.1:2").with_id("checked"), custom).await.unwrap();
    reg.registered(Duration::from_secs(5)).await.unwrap();
    drop_means_stop(&server, "Registration with a health check", base, both, ((), reg)).await;
    // Dropped registrations revoked their leases on the way out.
    let d = registry.discover("svc");
    d.ready().await;
    roster_testkit::eventually("dropped registrations withdrawn", Duration::from_secs(2), async || {
        d.instances().is_empty()
    })
    .await;
}
