//! Clients that authenticate, against a real etcd 3.4 with auth on and
//! simple tokens that expire after 2 s (`--auth-token-ttl 2`): the SDK
//! sends its token, re-authenticates when the token expires or the server
//! restarts, and a registration and a discovery carry on through both;
//! the CLI's `--user`, `--password-file` and `ROSTER_USER`. Under
//! `--client-cert-auth` etcd takes the client certificate's CN as the user.

use crate::support::roster_bin;
use roster::{Change, Client, ClientConfig, Instance, Registry};
use roster_api::etcdserverpb::auth_client::AuthClient;
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest};
use roster_testkit::{Etcd, Etcdctl, TestCa, require_etcd, require_etcdctl, require_openssl};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const ROOT: &str = "root:rootpw";
const TOKEN_TTL: Duration = Duration::from_secs(2);

/// etcd with auth on: `root`, and `svc` who may read and write under
/// `/services/` only.
async fn etcd_with_auth() -> Option<Etcd> {
    require_etcd()?;
    require_etcdctl()?;
    let etcd = Etcd::start_with_args(&["--auth-token=simple", "--auth-token-ttl=2"]).await;
    let ctl = Etcdctl::new(etcd.endpoint());
    for cmd in [
        vec!["user", "add", ROOT],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "svc:svcpw"],
        vec!["role", "add", "svc"],
        vec!["role", "grant-permission", "svc", "--prefix=true", "readwrite", "/services/"],
        vec!["user", "grant-role", "svc", "svc"],
        vec!["auth", "enable"],
    ] {
        ctl.run(&cmd).await.ok();
    }
    Some(etcd)
}

fn client(etcd: &Etcd, user: Option<(&str, &str)>) -> Client {
    let mut cfg = ClientConfig::new([etcd.endpoint()]);
    cfg.request_timeout = Duration::from_secs(3);
    if let Some((u, p)) = user {
        cfg = cfg.with_credentials(u, p);
    }
    Client::new(cfg).unwrap()
}

fn put(k: &'static str, v: &'static str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn message(e: roster::Error) -> String {
    match e {
        roster::Error::Status(s) => s.message().to_owned(),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_authenticates_and_reauthenticates_after_token_expiry_on_etcd() {
    let Some(etcd) = etcd_with_auth().await else {
        return;
    };
    let svc = client(&etcd, Some(("svc", "svcpw")));
    svc.put(put("/services/a", "1")).await.unwrap();

    // etcd's refusals reach the caller verbatim.
    let anon = client(&etcd, None).put(put("/services/a", "x")).await.unwrap_err();
    assert_eq!(message(anon), "etcdserver: user name is empty");
    let wrong = client(&etcd, Some(("svc", "nope"))).put(put("/services/a", "x")).await.unwrap_err();
    assert_eq!(message(wrong), "etcdserver: authentication failed, invalid user ID or password");
    let denied = svc.put(put("/other", "x")).await.unwrap_err();
    assert_eq!(message(denied), "etcdserver: permission denied");

    // A token taken now expires while unused ...
    let token = AuthClient::new(etcd.channel())
        .authenticate(AuthenticateRequest { name: "svc".into(), password: "svcpw".into() })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(TOKEN_TTL + Duration::from_secs(2)).await;
    let mut stale = tonic::Request::new(put("/services/a", "stale"));
    stale.metadata_mut().insert("token", token.parse().unwrap());
    let refused = KvClient::new(etcd.channel()).put(stale).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
    // ... as the client's own did. A watch opened first with it is
    // refused by etcd ("permission denied"); the client authenticates
    // again and reopens it once.
    let create = WatchCreateRequest { key: "/services/a".into(), ..Default::default() };
    let mut w = svc.watch_stream(create).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.message()).await.unwrap().unwrap().unwrap();
    assert!(first.created && !first.canceled, "{first:?}");
    // Unary calls authenticate again and go on.
    svc.put(put("/services/a", "2")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), w.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(&event.events[0].kv.as_ref().unwrap().value[..], b"2");
    let got = svc.range(RangeRequest { key: "/services/a".into(), ..Default::default() }).await.unwrap();
    assert_eq!(&got.kvs[0].value[..], b"2");
}

/// Waits (bounded) for `want` among the changes of `service`.
async fn next_insert(changes: &mut (impl tokio_stream::Stream<Item = Change> + Unpin), id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, changes.next()).await {
            Ok(Some(Change::Added(i) | Change::Updated(i))) if i.id == id => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("discovery ended"),
            Err(_) => panic!("{id} not registered again within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_discovery_survive_token_expiry_and_etcd_restart() {
    let Some(mut etcd) = etcd_with_auth().await else {
        return;
    };
    let svc = Registry::new(client(&etcd, Some(("svc", "svcpw")))).with_ttl(Duration::from_secs(6));
    let reg = svc.register(Instance::new("hello", "127.0.0.1:50051").with_id("one")).await.unwrap();
    reg.registered(Duration::from_secs(5)).await.unwrap();
    // Discovery as the same scoped user, so its watch needs the token too.
    let hello = svc.discover("hello");
    hello.ready().await;
    assert_eq!(hello.instances().len(), 1);
    let mut changes = Box::pin(hello.changes());
    let ctl = Etcdctl::new(etcd.endpoint());
    // A config watch as the same user.
    ctl.run(&["--user", ROOT, "put", "/services/cfg.json", r#"{"n":1}"#]).await.ok();
    let cfg: roster::config::Config<serde_json::Value> =
        roster::config::watch(svc.client(), "/services/cfg.json").await.unwrap();
    assert_eq!(cfg.get()["n"], 1);

    // Past the token's TTL, the key is deleted: putting it back needs a
    // new token.
    tokio::time::sleep(TOKEN_TTL + Duration::from_secs(1)).await;
    ctl.run(&["--user", ROOT, "del", "/services/hello/one"]).await.ok();
    next_insert(&mut changes, "one", Duration::from_secs(10)).await;

    // etcd restarts and forgets every token: streams reconnect with a stale
    // one, the watch is refused until the client authenticates again.
    etcd.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl.run(&["--user", ROOT, "del", "/services/hello/one"]).await.ok();
    next_insert(&mut changes, "one", Duration::from_secs(15)).await;
    let listed = ctl.run(&["--user", ROOT, "get", "/services/hello/one", "--print-value-only"]).await.ok();
    assert!(listed.stdout.contains("127.0.0.1:50051"), "{}", listed.stdout);
    assert_eq!(hello.instances().len(), 1);
    // The config watch followed too: a change after the restart arrives.
    ctl.run(&["--user", ROOT, "put", "/services/cfg.json", r#"{"n":2}"#]).await.ok();
    let start = Instant::now();
    while cfg.get()["n"] != 2 {
        assert!(start.elapsed() < Duration::from_secs(15), "config change after the restart not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reg.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_user_flag_password_file_and_env_authenticate() {
    let Some(etcd) = etcd_with_auth().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "svcpw\n").unwrap();
    let ls = |extra: &[&str], env: Option<&str>| {
        let mut cmd = tokio::process::Command::new(roster_bin());
        cmd.args(["--log", "warn", "ls", "--json", "--endpoints", &etcd.endpoint(), "--timeout", "3"]).args(extra);
        cmd.env_remove("ROSTER_USER").stdin(std::process::Stdio::null());
        if let Some(u) = env {
            cmd.env("ROSTER_USER", u);
        }
        cmd.output()
    };
    for (extra, env) in [
        (vec!["--user", "svc:svcpw"], None),
        (vec!["--user", "svc", "--password-file", pwfile.to_str().unwrap()], None),
        (vec![], Some("svc:svcpw")),
    ] {
        let out = ls(&extra, env).await.unwrap();
        assert!(out.status.success(), "{extra:?} {env:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (extra, want) in [
        (vec![], "etcdserver: user name is empty"),
        (vec!["--user", "svc:bad"], "etcdserver: authentication failed, invalid user ID or password"),
        // No password, no file, no terminal: a hint, not a hang.
        (vec!["--user", "svc"], "has no password"),
    ] {
        let out = ls(&extra, None).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("svcpw") && !err.contains(":bad"), "a password was printed: {err}");
    }
}

/// Under `--client-cert-auth` with auth on, a request without a token is
/// the user named by the client certificate's CN: on etcd 3.4 and on
/// `roster serve` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_takes_the_client_certificate_cn_as_the_user() {
    if require_openssl().is_none() || require_etcd().is_none() || require_etcdctl().is_none() {
        return;
    }
    cn_is_the_user(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_takes_the_client_certificate_cn_as_the_user() {
    if require_openssl().is_none() || require_etcdctl().is_none() {
        return;
    }
    cn_is_the_user(false).await;
}

async fn cn_is_the_user(on_etcd: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cn");
    let server = ca.server("server", "etcd");
    let svc = ca.client("svc", "svc");
    let root = ca.client("root", "root");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (cert, key, cafile) = (s(&server.cert), s(&server.key), s(&ca.cert));
    let args = ["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &cafile, "--client-cert-auth"];
    // Whichever runs, the other stays None and is dropped at the end.
    let (etcd, roster) = if on_etcd {
        (Some(Etcd::try_start_tls(&args).await.unwrap_or_else(|e| panic!("etcd with TLS: {e}"))), None)
    } else {
        let r = roster_testkit::Roster::try_start_tls(crate::support::roster_bin(), &args)
            .await
            .unwrap_or_else(|e| panic!("roster serve with TLS: {e}"));
        (None, Some(r))
    };
    let https = match (&etcd, &roster) {
        (Some(e), _) => e.tls_endpoint().unwrap(),
        (_, Some(r)) => format!("https://{}", r.endpoint()),
        _ => unreachable!(),
    };
    let ctl = |pair: &roster_testkit::Pair| {
        vec![
            "--cacert".to_owned(),
            cafile.clone(),
            "--cert".to_owned(),
            s(&pair.cert),
            "--key".to_owned(),
            s(&pair.key),
        ]
    };
    let run = |tls: Vec<String>, cmd: &'static [&'static str]| {
        let https = https.clone();
        async move {
            let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
            args.extend_from_slice(cmd);
            Etcdctl::new(https).run(&args).await
        }
    };
    for cmd in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "svc:svcpw"],
        &["role", "add", "svc"],
        &["role", "grant-permission", "svc", "--prefix=true", "readwrite", "/services/"],
        &["user", "grant-role", "svc", "svc"],
        &["auth", "enable"],
    ] {
        run(ctl(&root), cmd).await.ok();
    }
    // CN "svc" writes under /services/ with no password, and nowhere else.
    run(ctl(&svc), &["put", "/services/x", "1"]).await.ok();
    let denied = run(ctl(&svc), &["put", "/other", "1"]).await.err();
    assert!(denied.stderr.contains("etcdserver: permission denied"), "{}", denied.stderr);
    // The SDK with the same certificate and no credentials.
    let mut cfg = ClientConfig::new([https.clone()]);
    cfg.tls = Some(ClientConfig::tls_from_files(Some(&ca.cert), Some(&svc.cert), Some(&svc.key)).unwrap());
    let sdk = Client::new(cfg).unwrap();
    sdk.put(put("/services/y", "2")).await.unwrap();
    assert_eq!(message(sdk.put(put("/other", "2")).await.unwrap_err()), "etcdserver: permission denied");
}

/// `roster auth enable` and `roster auth grant-service hello svc` on
/// `roster serve`: the scoped user registers `hello`, is refused for
/// `other` with nothing written, and its registration carries on across a
/// token TTL shorter than its lease and a server restart (tokens gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_service_credential_registers_only_its_service_across_token_expiry_and_restart() {
    let mut server = roster_testkit::Roster::try_start_in_with_args(
        roster_bin(),
        tempfile::tempdir().unwrap().keep(),
        &["--auth-token-ttl", "2"],
    )
    .await
    .unwrap();
    let ep = server.endpoint();
    let cli = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(roster_bin()).args(&args).output().await.unwrap();
        assert!(out.status.success(), "roster {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let password_in = |out: &str, user: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("Created user {user} with password ")))
            .unwrap_or_else(|| panic!("{out}"));
        line.rsplit(' ').next().unwrap().to_owned()
    };
    let out = cli(vec!["auth".into(), "enable".into(), "--endpoints".into(), ep.clone()]).await;
    let root = format!("root:{}", password_in(&out, "root"));
    let out = cli(vec![
        "auth".into(),
        "grant-service".into(),
        "hello".into(),
        "svc".into(),
        "--user".into(),
        root.clone(),
        "--endpoints".into(),
        ep.clone(),
    ])
    .await;
    let svc_pw = password_in(&out, "svc");

    let svc_client = || {
        let mut cfg = ClientConfig::new([ep.clone()]);
        cfg.request_timeout = Duration::from_secs(3);
        Client::new(cfg.with_credentials("svc", svc_pw.clone())).unwrap()
    };
    let svc = Registry::new(svc_client()).with_ttl(Duration::from_secs(6));
    let reg = svc.register(Instance::new("hello", "127.0.0.1:50051").with_id("one")).await.unwrap();
    reg.registered(Duration::from_secs(5)).await.unwrap();

    // Another service: refused with etcd's error, and nothing written.
    let refused = svc_client()
        .put(PutRequest { key: "/services/other/x".into(), value: "127.0.0.1:50052".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(message(refused), "etcdserver: permission denied");
    // Registering as another service says so at once, not after a timeout.
    let started = Instant::now();
    let refused =
        svc.register(Instance::new("other", "127.0.0.1:50052").with_id("x")).await.err().expect("registered as other");
    assert_eq!(message(refused), "etcdserver: permission denied");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let ctl = Etcdctl::new(ep.clone());
    let listed = ctl.run(&["--user", &root, "get", "/services/", "--prefix", "--keys-only"]).await.ok();
    assert!(listed.stdout.contains("/services/hello/one"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("other"), "nothing written for other: {}", listed.stdout);

    // Longer than the token TTL and the lease TTL: still registered.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = ctl.run(&["--user", &root, "get", "/services/hello/one", "--keys-only"]).await.ok();
    assert!(got.stdout.contains("/services/hello/one"), "lost across token expiry: {}", got.stdout);

    // A restart forgets every token.
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let got = ctl.run(&["--user", &root, "get", "/services/hello/one", "--keys-only"]).await.ok();
    assert!(got.stdout.contains("/services/hello/one"), "lost across a restart: {}", got.stdout);
    drop(reg);
}
