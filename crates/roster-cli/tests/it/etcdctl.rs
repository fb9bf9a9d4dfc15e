//! Interop with the real `etcdctl` (v3), a client this project did not
//! write. Every scenario runs against `roster serve` and, as a conformance
//! check that the expectations themselves are right, against real etcd.
//!
//! Note: etcdctl 3.4 has no `get --count-only`; counts are checked through
//! `-w json` instead.

use crate::support::roster_bin;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl};
use serde_json::Value;
use std::time::Duration;

/// The server a scenario runs against.
enum Server {
    Etcd(Etcd),
    Roster(Roster),
}

impl Server {
    async fn etcd() -> Option<Server> {
        require_etcd()?;
        require_etcdctl()?;
        Some(Server::Etcd(Etcd::start().await))
    }

    async fn roster() -> Option<Server> {
        require_etcdctl()?;
        Some(Server::Roster(Roster::start(roster_bin()).await))
    }

    fn endpoint(&self) -> String {
        match self {
            Server::Etcd(e) => e.endpoint(),
            Server::Roster(r) => r.endpoint(),
        }
    }

    fn ctl(&self) -> Etcdctl {
        Etcdctl::new(self.endpoint())
    }

    fn log_tail(&self) -> String {
        match self {
            Server::Etcd(e) => e.log().tail(30),
            Server::Roster(r) => r.log().tail(30),
        }
    }
}

/// Runs `$scenario` against etcd and against roster, as two tests.
macro_rules! against_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                if let Some(s) = super::Server::etcd().await {
                    super::run(&s, super::$scenario(&s)).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn roster() {
                if let Some(s) = super::Server::roster().await {
                    super::run(&s, super::$scenario(&s)).await;
                }
            }
        }
    )*};
}

against_both!(
    put_get_del,
    txn_from_stdin,
    watch_prefix_rev_and_prev_kv,
    lease_lifecycle,
    lease_expiry_deletes_keys,
    compaction,
    endpoint_status_health_and_member_list,
    lock_holders_exclude_each_other,
    elect_fails_over_to_second_candidate,
);

/// Runs a scenario; on failure shows the server's log as well.
async fn run(server: &Server, scenario: impl std::future::Future<Output = ()> + Send + 'static) {
    let res = tokio::time::timeout(Duration::from_secs(120), tokio::spawn(scenario)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("server log (tail):\n{}", server.log_tail());
            std::panic::resume_unwind(e.into_panic());
        }
        Err(_) => panic!("scenario took more than 120 s; server log:\n{}", server.log_tail()),
    }
}

const LINE: Duration = Duration::from_secs(10);

/// `put` with `-w json`, returning the revision it made.
async fn put_rev(ctl: &Etcdctl, key: &str, value: &str) -> i64 {
    let out = ctl.run(&["put", key, value, "-w", "json"]).await.ok();
    out.json::<Value>()["header"]["revision"].as_i64().expect("header.revision")
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn put_get_del(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let first = put_rev(&ctl, "foo", "bar").await;
        for (k, v) in [("foo1", "bar1"), ("foo2", "bar2"), ("fop", "x"), ("zoo", "z")] {
            assert_eq!(ctl.run(&["put", k, v]).await.ok().lines(), ["OK"]);
        }
        let get = |args: &'static [&'static str]| {
            let ctl = ctl.clone();
            async move { ctl.run(args).await.ok().stdout }
        };
        assert_eq!(get(&["get", "foo"]).await, "foo\nbar\n");
        assert_eq!(get(&["get", "foo", "--print-value-only"]).await, "bar\n");
        assert_eq!(get(&["get", "foo", "--prefix"]).await, "foo\nbar\nfoo1\nbar1\nfoo2\nbar2\n");
        assert_eq!(get(&["get", "foo", "--from-key"]).await, "foo\nbar\nfoo1\nbar1\nfoo2\nbar2\nfop\nx\nzoo\nz\n");
        assert_eq!(get(&["get", "foo", "--prefix", "--limit=2"]).await, "foo\nbar\nfoo1\nbar1\n");
        assert_eq!(
            get(&["get", "foo", "--prefix", "--sort-by=KEY", "--order=DESCEND"]).await,
            "foo2\nbar2\nfoo1\nbar1\nfoo\nbar\n"
        );
        assert_eq!(
            get(&["get", "foo", "--prefix", "--sort-by=VALUE", "--order=DESCEND"]).await,
            "foo2\nbar2\nfoo1\nbar1\nfoo\nbar\n"
        );
        assert_eq!(
            get(&["get", "foo", "--prefix", "--sort-by=MODIFY", "--order=ASCEND", "--limit=2"]).await,
            "foo\nbar\nfoo1\nbar1\n"
        );
        assert_eq!(
            get(&["get", "foo", "--prefix", "--sort-by=CREATE", "--order=DESCEND", "--limit=1"]).await,
            "foo2\nbar2\n"
        );
        assert_eq!(get(&["get", "foo", "--prefix", "--keys-only"]).await, "foo\n\nfoo1\n\nfoo2\n\n");
        assert_eq!(get(&["get", "a", "b"]).await, "", "range [a, b) is empty");
        assert_eq!(get(&["get", "zzz", "a"]).await, "", "an inverted range is empty");

        // -w json: count is taken before limit; `more` says it was cut.
        let j: Value = ctl.run(&["get", "foo", "--prefix", "--limit=1", "-w", "json"]).await.ok().json();
        assert_eq!(j["count"], 3, "{j}");
        assert_eq!(j["more"], true, "{j}");
        assert_eq!(j["kvs"].as_array().map(Vec::len), Some(1), "{j}");
        assert_eq!(j["kvs"][0]["key"], b64("foo"), "{j}");

        let prev = ctl.run(&["put", "foo", "baz", "--prev-kv"]).await.ok();
        assert_eq!(prev.lines(), ["OK", "foo", "bar"]);
        assert_eq!(get(&["get", "foo"]).await, "foo\nbaz\n");
        let at_first = ctl.run(&["get", "foo", &format!("--rev={first}")]).await.ok();
        assert_eq!(at_first.stdout, "foo\nbar\n", "get --rev={first}");

        let j: Value = ctl.run(&["get", "foo", "-w", "json"]).await.ok().json();
        let kv = &j["kvs"][0];
        assert_eq!(kv["key"], b64("foo"), "{j}");
        assert_eq!(kv["value"], b64("baz"), "{j}");
        assert_eq!(kv["create_revision"], first, "{j}");
        assert_eq!(kv["version"], 2, "{j}");
        assert_eq!(kv["mod_revision"], j["header"]["revision"], "{j}");
        assert_eq!(j["count"], 1, "{j}");
        assert!(j["header"]["member_id"].as_u64().unwrap_or(0) != 0, "header.member_id is set: {j}");
        assert!(j["header"]["cluster_id"].as_u64().unwrap_or(0) != 0, "header.cluster_id is set: {j}");

        assert_eq!(ctl.run(&["del", "foo", "--prev-kv"]).await.ok().lines(), ["1", "foo", "baz"]);
        assert_eq!(ctl.run(&["del", "foo"]).await.ok().lines(), ["0"]);
        assert_eq!(ctl.run(&["del", "foo", "--prefix"]).await.ok().lines(), ["2"]);
        assert_eq!(ctl.run(&["del", "fop", "--from-key"]).await.ok().lines(), ["2"]);
        let j: Value = ctl.run(&["get", "", "--from-key", "-w", "json"]).await.ok().json();
        assert!(j.get("count").is_none() || j["count"] == 0, "everything deleted: {j}");
        assert!(j.get("kvs").is_none(), "everything deleted: {j}");
    }
}

fn txn_from_stdin(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        ctl.run(&["put", "key1", "v1"]).await.ok();
        let ok = ctl
            .run_stdin(&["txn"], "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n")
            .await
            .ok();
        assert_eq!(ok.stdout, "SUCCESS\n\nOK\n");
        assert_eq!(ctl.run(&["get", "key1"]).await.ok().stdout, "key1\noverwrote-key1\n");
        assert_eq!(ctl.run(&["get", "key2"]).await.ok().stdout, "", "the failure branch did not run");

        let failed = ctl
            .run_stdin(
                &["txn"],
                "value(\"key1\") = \"nope\"\n\nput key1 \"x\"\n\nput key2 \"from-failure\"\nget key1\n\n",
            )
            .await
            .ok();
        assert_eq!(failed.stdout, "FAILURE\n\nOK\n\nkey1\noverwrote-key1\n");
        assert_eq!(ctl.run(&["get", "key2", "--print-value-only"]).await.ok().stdout, "from-failure\n");

        // A missing key has version 0; the range inside sees the txn's put.
        let j: Value = ctl
            .run_stdin(&["txn", "-w", "json"], "version(\"missing\") = \"0\"\n\nput missing \"now\"\nget missing\n\n\n")
            .await
            .ok()
            .json();
        assert_eq!(j["succeeded"], true, "{j}");
        let responses = j["responses"].as_array().expect("responses");
        assert_eq!(responses.len(), 2, "{j}");
        let range = &responses[1]["Response"]["ResponseRange"];
        assert_eq!(range["kvs"][0]["value"], b64("now"), "{j}");
        assert_eq!(range["kvs"][0]["mod_revision"], j["header"]["revision"], "{j}");
    }
}

fn watch_prefix_rev_and_prev_kv(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let r1 = put_rev(&ctl, "foo1", "bar1").await;
        let next = (r1 + 1).to_string();
        // From the next revision on, whenever the watch is established.
        let mut live = ctl.spawn(&["watch", "foo", "--prefix", "--prev-kv", "--rev", &next]);
        let mut plain = ctl.spawn(&["watch", "foo", "--prefix", "--rev", &next]);
        // From history.
        let mut past = ctl.spawn(&["watch", "foo1", "--rev", &r1.to_string()]);
        assert_eq!(past.expect_lines(3, LINE).await, ["PUT", "foo1", "bar1"]);

        ctl.run(&["put", "foo1", "new"]).await.ok();
        ctl.run(&["put", "foo2", "v2"]).await.ok();
        ctl.run(&["put", "other", "x"]).await.ok();
        ctl.run(&["del", "foo1"]).await.ok();

        // prev_kv comes before the kv; none for a creation.
        assert_eq!(
            live.expect_lines(13, LINE).await,
            ["PUT", "foo1", "bar1", "foo1", "new", "PUT", "foo2", "v2", "DELETE", "foo1", "new", "foo1", ""]
        );
        assert_eq!(
            plain.expect_lines(9, LINE).await,
            ["PUT", "foo1", "new", "PUT", "foo2", "v2", "DELETE", "foo1", ""]
        );
        assert_eq!(past.expect_lines(6, LINE).await, ["PUT", "foo1", "new", "DELETE", "foo1", ""]);
        for w in [&mut live, &mut plain, &mut past] {
            w.expect_silence(Duration::from_millis(300)).await;
        }
    }
}

fn lease_lifecycle(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let grant = ctl.run(&["lease", "grant", "100"]).await.ok();
        let line = grant.stdout.trim().to_owned();
        let id = line
            .strip_prefix("lease ")
            .and_then(|r| r.strip_suffix(" granted with TTL(100s)"))
            .unwrap_or_else(|| panic!("grant output: {line:?}"));
        assert_eq!(id.len(), 16, "lease ids print as 16 hex digits: {line:?}");
        let id = id.to_owned();
        assert_eq!(ctl.run(&["put", "lk", "v", &format!("--lease={id}")]).await.ok().lines(), ["OK"]);
        ctl.run(&["put", "lk2", "v", &format!("--lease={id}")]).await.ok();

        let ttl = ctl.run(&["lease", "timetolive", &id, "--keys"]).await.ok().stdout;
        let prefix = format!("lease {id} granted with TTL(100s), remaining(");
        let rest = ttl.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("timetolive: {ttl:?}"));
        let (remaining, keys) = rest.split_once("s), attached keys(").unwrap_or_else(|| panic!("timetolive: {ttl:?}"));
        let remaining: i64 = remaining.parse().unwrap_or_else(|_| panic!("timetolive: {ttl:?}"));
        assert!((95..=100).contains(&remaining), "remaining TTL {remaining}: {ttl:?}");
        let mut keys: Vec<&str> = keys.trim_end_matches(')').trim_matches(['[', ']']).split(' ').collect();
        keys.sort();
        assert_eq!(keys, ["lk", "lk2"], "{ttl:?}");

        let list = ctl.run(&["lease", "list"]).await.ok();
        assert_eq!(list.lines(), ["found 1 leases", id.as_str()]);

        let mut ka = ctl.spawn(&["lease", "keep-alive", &id]);
        assert_eq!(ka.expect_line(LINE).await, format!("lease {id} keepalived with TTL(100)"));
        ka.kill();

        assert_eq!(ctl.run(&["lease", "revoke", &id]).await.ok().lines(), [format!("lease {id} revoked")]);
        assert_eq!(ctl.run(&["get", "lk", "--prefix"]).await.ok().stdout, "", "revoke deletes the attached keys");
        assert_eq!(ctl.run(&["lease", "timetolive", &id]).await.ok().lines(), [format!("lease {id} already expired")]);
        let again = ctl.run(&["lease", "revoke", &id]).await.err();
        assert!(again.stderr.contains("etcdserver: requested lease not found"), "{}", again.stderr);
        assert_eq!(ctl.run(&["lease", "list"]).await.ok().lines(), ["found 0 leases"]);

        // keep-alive of an unknown lease: TTL 0, reported, not an error.
        let unknown = ctl.run(&["lease", "keep-alive", "1234"]).await.ok();
        assert_eq!(unknown.lines(), ["lease 0000000000001234 expired or revoked."]);
    }
}

fn lease_expiry_deletes_keys(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let grant = ctl.run(&["lease", "grant", "2"]).await.ok();
        let id = grant.stdout.split_whitespace().nth(1).expect("lease id").to_owned();
        ctl.run(&["put", "ephemeral/a", "1", &format!("--lease={id}")]).await.ok();
        ctl.run(&["put", "ephemeral/b", "2", &format!("--lease={id}")]).await.ok();
        let before = put_rev(&ctl, "marker", "m").await;
        let mut watch = ctl.spawn(&["watch", "ephemeral/", "--prefix", "--rev", &(before + 1).to_string()]);
        // Both keys go in one revision when the lease expires (TTL 2 s).
        let lines = watch.expect_lines(6, Duration::from_secs(15)).await;
        assert_eq!(lines, ["DELETE", "ephemeral/a", "", "DELETE", "ephemeral/b", ""]);
        assert_eq!(ctl.run(&["get", "ephemeral/", "--prefix"]).await.ok().stdout, "");
        assert_eq!(ctl.run(&["lease", "timetolive", &id]).await.ok().lines(), [format!("lease {id} already expired")]);
        let j: Value = ctl.run(&["get", "marker", "-w", "json"]).await.ok().json();
        assert_eq!(j["header"]["revision"], before + 1, "expiry deleted both keys in one revision: {j}");
    }
}

fn compaction(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let r1 = put_rev(&ctl, "c", "1").await;
        let r2 = put_rev(&ctl, "c", "2").await;
        let r3 = put_rev(&ctl, "c", "3").await;
        assert_eq!(ctl.run(&["compaction", &r2.to_string()]).await.ok().lines(), [format!("compacted revision {r2}")]);
        let old = ctl.run(&["get", "c", &format!("--rev={r1}")]).await.err();
        assert!(old.stderr.contains("etcdserver: mvcc: required revision has been compacted"), "{}", old.stderr);
        assert_eq!(ctl.run(&["get", "c", &format!("--rev={r2}")]).await.ok().stdout, "c\n2\n");
        assert_eq!(ctl.run(&["get", "c"]).await.ok().stdout, "c\n3\n");
        let again = ctl.run(&["compaction", &r2.to_string()]).await.err();
        assert!(again.stderr.contains("etcdserver: mvcc: required revision has been compacted"), "{}", again.stderr);
        let future = ctl.run(&["compaction", &(r3 + 100).to_string()]).await.err();
        assert!(
            future.stderr.contains("etcdserver: mvcc: required revision is a future revision"),
            "{}",
            future.stderr
        );
        let future = ctl.run(&["get", "c", &format!("--rev={}", r3 + 100)]).await.err();
        assert!(
            future.stderr.contains("etcdserver: mvcc: required revision is a future revision"),
            "{}",
            future.stderr
        );
        assert_eq!(
            ctl.run(&["compaction", "--physical", &r3.to_string()]).await.ok().lines(),
            [format!("compacted revision {r3}")]
        );
    }
}

fn endpoint_status_health_and_member_list(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    let ep = s.endpoint();
    async move {
        ctl.run(&["put", "k", "v"]).await.ok();
        let j: Value = ctl.run(&["endpoint", "status", "-w", "json"]).await.ok().json();
        let st = &j[0]["Status"];
        assert_eq!(j[0]["Endpoint"], ep.as_str(), "{j}");
        let member = st["header"]["member_id"].as_u64().expect("member_id");
        assert_ne!(member, 0, "{j}");
        assert_eq!(st["leader"].as_u64(), Some(member), "the one member leads: {j}");
        let version = st["version"].as_str().expect("version");
        assert!(version.starts_with("3.4."), "etcdctl 3.4 wants a 3.4.x version: {j}");
        assert!(st["dbSize"].as_i64().unwrap_or(0) > 0, "dbSize: {j}");
        assert!(st["header"]["revision"].as_i64().unwrap_or(0) >= 2, "{j}");

        let simple = ctl.run(&["endpoint", "status"]).await.ok().stdout;
        let fields: Vec<&str> = simple.trim_end().split(", ").collect();
        assert_eq!(fields[0], ep, "{simple:?}");
        assert_eq!(fields[1], format!("{member:x}"), "{simple:?}");
        assert_eq!(fields[2], version, "{simple:?}");
        assert_eq!(fields[4], "true", "is leader: {simple:?}");
        assert_eq!(fields[5], "false", "is learner: {simple:?}");

        let health = ctl.run(&["endpoint", "health"]).await.ok();
        // etcdctl 3.4 prints the health line on stderr.
        assert!(
            format!("{}{}", health.stdout, health.stderr)
                .lines()
                .any(|l| l.starts_with(&format!("{ep} is healthy: successfully committed proposal: took = "))),
            "{:?} {:?}",
            health.stdout,
            health.stderr
        );

        let members = ctl.run(&["member", "list"]).await.ok();
        let lines = members.lines();
        assert_eq!(lines.len(), 1, "{:?}", members.stdout);
        let f: Vec<&str> = lines[0].split(", ").collect();
        assert_eq!(f[0], format!("{member:x}"), "member id equals header.member_id: {lines:?}");
        assert_eq!(f[1], "started", "{lines:?}");
        assert!(f[4].split(',').any(|u| u == format!("http://{ep}")), "client URL advertised: {lines:?}");
        assert_eq!(f[5], "false", "{lines:?}");

        let j: Value = ctl.run(&["member", "list", "-w", "json"]).await.ok().json();
        assert_eq!(j["members"].as_array().map(Vec::len), Some(1), "{j}");
        assert_eq!(j["members"][0]["ID"].as_u64(), Some(member), "{j}");
        assert_eq!(j["header"]["member_id"].as_u64(), Some(member), "{j}");
    }
}

fn lock_holders_exclude_each_other(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let mut first = ctl.spawn(&["lock", "--ttl=2", "mylock"]);
        let key1 = first.expect_line(LINE).await;
        assert!(key1.starts_with("mylock/"), "{key1:?}");
        let mut second = ctl.spawn(&["lock", "--ttl=2", "mylock"]);
        second.expect_silence(Duration::from_secs(2)).await;
        // A crash: no unlock, the session lease (TTL 2 s) has to expire.
        first.kill();
        let key2 = second.expect_line(Duration::from_secs(15)).await;
        assert!(key2.starts_with("mylock/") && key2 != key1, "{key1:?} then {key2:?}");
        // A third waits for the second, who releases on SIGTERM.
        let mut third = ctl.spawn(&["lock", "--ttl=2", "mylock"]);
        third.expect_silence(Duration::from_secs(1)).await;
        second.terminate();
        let key3 = third.expect_line(LINE).await;
        assert!(key3.starts_with("mylock/") && key3 != key2, "{key2:?} then {key3:?}");
    }
}

fn elect_fails_over_to_second_candidate(s: &Server) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctl = s.ctl();
    async move {
        let mut c1 = ctl.spawn(&["elect", "myelection", "c1"]);
        let l1 = c1.expect_lines(2, LINE).await;
        assert!(l1[0].starts_with("myelection/") && l1[1] == "c1", "{l1:?}");
        let mut observer = ctl.spawn(&["elect", "-l", "myelection"]);
        assert_eq!(observer.expect_lines(2, LINE).await, l1, "the observer sees the leader");
        let mut c2 = ctl.spawn(&["elect", "myelection", "c2"]);
        c2.expect_silence(Duration::from_secs(2)).await;
        // SIGTERM: etcdctl resigns (its session lease lives 60 s).
        c1.terminate();
        let l2 = c2.expect_lines(2, LINE).await;
        assert!(l2[0].starts_with("myelection/") && l2[0] != l1[0] && l2[1] == "c2", "{l2:?}");
        assert_eq!(observer.expect_lines(2, LINE).await, l2, "the observer sees the new leader");
    }
}
