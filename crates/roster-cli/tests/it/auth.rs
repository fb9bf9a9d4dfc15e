//! etcd's auth, as etcdctl drives it: one transcript of user, role, auth
//! and permission commands run against etcd 3.4 and against roster, whose
//! outputs (errors and exit codes included) must be identical.
//!
//! It covers enabling without root (and etcdctl's recovery when root lacks
//! the root role), duplicate users and roles, grants and revokes on keys,
//! ranges and prefixes, permission denied on put, get, del, txn and watch,
//! a wrong password and an unknown user, removing root while enabled,
//! maintenance needing root, password change, deletes, and disable.

use crate::support::roster_bin;
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl};
use std::time::Duration;

/// (etcdctl arguments, stdin). `--user root:rootpw` is root once created.
const TRANSCRIPT: &[(&[&str], Option<&str>)] = &[
    (&["auth", "enable"], None),
    (&["user", "add", "root:rootpw"], None),
    (&["user", "add", "root:again"], None),
    (&["auth", "enable"], None),
    (&["user", "add", "root:x"], None),
    (&["--user", "root:rootpw", "role", "add", "r1"], None),
    (&["--user", "root:rootpw", "role", "add", "r1"], None),
    (&["--user", "root:rootpw", "user", "add", "alice:apw"], None),
    (&["--user", "root:rootpw", "user", "add", "alice:apw"], None),
    (&["--user", "root:rootpw", "user", "add", "bob:bpw"], None),
    (&["--user", "root:rootpw", "role", "grant-permission", "r1", "readwrite", "/a/", "--prefix"], None),
    (&["--user", "root:rootpw", "role", "grant-permission", "r1", "read", "/b"], None),
    (&["--user", "root:rootpw", "role", "grant-permission", "r1", "write", "/c", "/e"], None),
    (&["--user", "root:rootpw", "role", "grant-permission", "r2", "write", "/c", "/e"], None),
    (&["--user", "root:rootpw", "role", "get", "r1"], None),
    (&["--user", "root:rootpw", "user", "grant-role", "alice", "r1"], None),
    (&["--user", "root:rootpw", "user", "grant-role", "alice", "r1"], None),
    (&["--user", "root:rootpw", "user", "grant-role", "alice", "nope"], None),
    (&["--user", "root:rootpw", "user", "get", "alice"], None),
    (&["--user", "root:rootpw", "user", "list"], None),
    (&["--user", "root:rootpw", "role", "list"], None),
    (&["put", "/a/1", "x"], None),
    (&["--user", "alice:apw", "put", "/a/1", "v1"], None),
    (&["--user", "alice:apw", "get", "/a/1"], None),
    (&["--user", "alice:apw", "put", "/b", "v"], None),
    (&["--user", "alice:apw", "get", "/b"], None),
    (&["--user", "alice:apw", "put", "/d", "v"], None),
    (&["--user", "alice:apw", "get", "/d"], None),
    (&["--user", "alice:apw", "del", "/d"], None),
    (&["--user", "alice:apw", "get", "/a", "--prefix"], None),
    (&["--user", "alice:apw", "watch", "/d"], None),
    (&["--user", "alice:apw", "watch", "/c/x"], None),
    (&["--user", "alice:wrong", "get", "/a/1"], None),
    (&["--user", "nobody:x", "get", "/a/1"], None),
    (&["--user", "bob:bpw", "get", "/a/1"], None),
    (&["--user", "alice:apw", "txn"], Some("\nput /a/2 v\n\n")),
    (
        &["--user", "alice:apw", "txn"],
        Some(
            r#"value("/d") = "x"

put /a/3 v

"#,
        ),
    ),
    (
        &["--user", "alice:apw", "txn"],
        Some(
            r#"value("/a/1") = "v1"
put /a/3 v

put /d v
"#,
        ),
    ),
    (&["--user", "alice:apw", "put", "/c/x", "v"], None),
    (&["--user", "alice:apw", "get", "/c/x"], None),
    (&["--user", "alice:apw", "del", "/a/", "--prefix"], None),
    (&["--user", "root:rootpw", "user", "delete", "root"], None),
    (&["--user", "root:rootpw", "role", "delete", "root"], None),
    (&["--user", "root:rootpw", "user", "revoke-role", "root", "root"], None),
    (&["--user", "root:rootpw", "role", "revoke-permission", "r1", "/b"], None),
    (&["--user", "root:rootpw", "role", "revoke-permission", "r1", "/zz"], None),
    (&["--user", "alice:apw", "get", "/b"], None),
    (&["--user", "root:wrongpw", "get", "/b"], None),
    (&["--user", "root:rootpw", "user", "revoke-role", "alice", "r1"], None),
    (&["--user", "root:rootpw", "user", "revoke-role", "alice", "r1"], None),
    (&["--user", "alice:apw", "get", "/a/1"], None),
    (&["--user", "root:rootpw", "compaction", "1"], None),
    (&["--user", "alice:apw", "compaction", "2"], None),
    (&["alarm", "list"], None),
    (&["--user", "alice:apw", "defrag"], None),
    (&["defrag"], None),
    (&["--user", "root:rootpw", "defrag"], None),
    (&["--user", "alice:apw", "user", "list"], None),
    (&["--user", "root:rootpw", "user", "passwd", "bob", "--interactive=false"], Some("newpw")),
    (&["--user", "bob:bpw", "get", "/a/1"], None),
    (&["--user", "bob:newpw", "get", "/a/1"], None),
    (&["--user", "root:rootpw", "user", "delete", "bob"], None),
    (&["--user", "root:rootpw", "user", "delete", "bob"], None),
    (&["--user", "root:rootpw", "role", "delete", "r1"], None),
    (&["--user", "root:rootpw", "role", "delete", "r1"], None),
    (&["--user", "root:rootpw", "user", "get", "alice"], None),
    (&["--user", "root:rootpw", "user", "get", "nobody"], None),
    (&["--user", "root:rootpw", "role", "get", "nope"], None),
    (&["--user", "root:rootpw", "auth", "disable"], None),
    (&["auth", "disable"], None),
    (&["get", "/a/1"], None),
    (&["user", "delete", "root"], None),
    (&["user", "list"], None),
    (&["role", "list"], None),
];

/// Runs the transcript; returns what a person would have seen, with the
/// endpoint replaced and etcdctl's JSON log lines (timestamps) dropped.
async fn transcript(endpoint: &str) -> String {
    let ctl = Etcdctl::new(endpoint).with_timeout(Duration::from_secs(20));
    let mut seen = String::new();
    for (args, stdin) in TRANSCRIPT {
        // A watch the user may not read is canceled at once; one that is
        // allowed would run forever, so bound it.
        let mut args: Vec<&str> = args.to_vec();
        if args.contains(&"watch") {
            args.insert(0, "--command-timeout=2s");
        }
        let out = match stdin {
            Some(input) => ctl.run_stdin(&args, input).await,
            None => ctl.run(&args).await,
        };
        seen.push_str(&format!("$ {}\n", args.join(" ")));
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            if !line.starts_with("{\"level\"") {
                seen.push_str(&line.replace(endpoint, "ENDPOINT"));
                seen.push('\n');
            }
        }
        seen.push_str(&format!("exit {}\n", out.status.code().unwrap_or(-1)));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_transcript_matches_etcd() {
    let (Some(_), Some(_)) = (require_etcd(), require_etcdctl()) else {
        return;
    };
    let etcd = Etcd::start().await;
    let roster = Roster::start(roster_bin()).await;
    let theirs = transcript(&etcd.endpoint()).await;
    let ours = transcript(&roster.endpoint()).await;
    // Guards against two servers failing alike (both unreachable, say).
    for expected in [
        "Error: etcdserver: root user does not exist",
        "Authentication Enabled",
        "Error: etcdserver: user name already exists",
        "Error: etcdserver: role name already exists",
        "Error: etcdserver: permission denied",
        "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)",
        "Error: etcdserver: authentication failed, invalid user ID or password",
        "Error: etcdserver: invalid auth management",
        "Error: etcdserver: user name is empty",
        "Authentication Disabled",
    ] {
        assert!(theirs.contains(expected), "etcd's transcript lacks {expected:?}:\n{theirs}");
    }
    if ours != theirs {
        let diff: Vec<String> = theirs
            .lines()
            .zip(ours.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}: etcd {a:?}\n        roster {b:?}", i + 1))
            .take(20)
            .collect();
        panic!(
            "roster's transcript differs from etcd's:\n{}\n\nroster's log:\n{}",
            diff.join("\n"),
            roster.log().tail(30)
        );
    }
}
