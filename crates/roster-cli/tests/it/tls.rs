//! TLS on `roster serve` with openssl-made certificates: etcdctl and the
//! SDK get in with a certificate signed by the trusted CA, and are refused
//! without one, with one from another CA, and over plaintext; a certificate
//! replaced on disk is served on the next handshake, and a trusted CA file
//! replaced on disk is used on the next handshake; the HTTP listener serves
//! HTTPS.

use crate::support::roster_bin;
use roster::{Client, ClientConfig};
use roster_api::etcdserverpb::{PutRequest, RangeRequest};
use roster_testkit::{CtlOutput, Etcdctl, Pair, Roster, TestCa, require_etcdctl, require_openssl};
use std::path::Path;
use std::time::Duration;

/// Two CAs; a server certificate and a client certificate from the first,
/// a client certificate from the second.
struct Certs {
    ca: TestCa,
    other: TestCa,
    server: Pair,
    client: Pair,
    rogue: Pair,
    _dir: tempfile::TempDir,
}

fn certs() -> Option<Certs> {
    require_openssl()?;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "good");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("server", "first-server");
    let client = ca.client("client", "alice");
    let rogue = other.client("rogue", "mallory");
    Some(Certs { ca, other, server, client, rogue, _dir: dir })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn serve_mtls(c: &Certs, extra: &[&str]) -> Roster {
    let mut args = vec![
        "--cert-file",
        s(&c.server.cert),
        "--key-file",
        s(&c.server.key),
        "--trusted-ca-file",
        s(&c.ca.cert),
        "--client-cert-auth",
    ];
    args.extend_from_slice(extra);
    Roster::try_start_tls(roster_bin(), &args).await.unwrap_or_else(|e| panic!("roster serve with TLS: {e}"))
}

/// etcdctl over https with the given TLS flags, failing fast.
async fn ctl(endpoint: &str, tls: &[&str], cmd: &[&str]) -> CtlOutput {
    let mut args: Vec<&str> = tls.to_vec();
    args.extend(["--dial-timeout=1s", "--command-timeout=3s"]);
    args.extend_from_slice(cmd);
    Etcdctl::new(endpoint).with_timeout(Duration::from_secs(15)).run(&args).await
}

fn sdk(endpoint: String, tls: Option<tonic::transport::ClientTlsConfig>) -> Client {
    let mut cfg = ClientConfig::new([endpoint]);
    cfg.request_timeout = Duration::from_secs(3);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.tls = tls;
    Client::new(cfg).unwrap()
}

fn put(k: &'static str, v: &'static str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_auth_admits_only_clients_signed_by_the_trusted_ca() {
    let Some(c) = certs() else { return };
    if require_etcdctl().is_none() {
        return;
    }
    let server = serve_mtls(&c, &[]).await;
    let https = format!("https://{}", server.endpoint());
    let (ca, cert, key) = (s(&c.ca.cert), s(&c.client.cert), s(&c.client.key));

    // etcdctl with a CA-signed client certificate.
    let good = ["--cacert", ca, "--cert", cert, "--key", key];
    ctl(&https, &good, &["put", "/tls/k", "v1"]).await.ok();
    assert_eq!(ctl(&https, &good, &["get", "/tls/k", "--print-value-only"]).await.ok().stdout.trim(), "v1");
    // Without a client certificate, with one from another CA, and over plaintext.
    let refused = [
        ("no client certificate", https.clone(), vec!["--cacert", ca]),
        (
            "another CA's certificate",
            https.clone(),
            vec!["--cacert", ca, "--cert", s(&c.rogue.cert), "--key", s(&c.rogue.key)],
        ),
        ("plaintext", format!("http://{}", server.endpoint()), vec![]),
    ];
    for (what, endpoint, tls) in &refused {
        let out = ctl(endpoint, tls, &["put", "/tls/k", "stolen"]).await;
        assert!(!out.success(), "etcdctl with {what} was served: {}", out.stdout);
    }

    // The SDK the same way.
    let identity = ClientConfig::tls_from_files(Some(&c.ca.cert), Some(&c.client.cert), Some(&c.client.key)).unwrap();
    let client = sdk(https.clone(), Some(identity));
    client.put(put("/tls/sdk", "v2")).await.unwrap();
    let got = client.range(RangeRequest { key: "/tls/k".into(), ..Default::default() }).await.unwrap();
    assert_eq!(&got.kvs[0].value[..], b"v1");
    let no_cert = ClientConfig::tls_from_files(Some(&c.ca.cert), None, None).unwrap();
    let rogue = ClientConfig::tls_from_files(Some(&c.ca.cert), Some(&c.rogue.cert), Some(&c.rogue.key)).unwrap();
    for (what, client) in [
        ("no client certificate", sdk(https.clone(), Some(no_cert))),
        ("another CA's certificate", sdk(https.clone(), Some(rogue))),
        ("plaintext", sdk(server.endpoint(), None)),
    ] {
        let r = client.put(put("/tls/k", "stolen")).await;
        assert!(r.is_err(), "the SDK with {what} was served");
    }
    // Nothing the refused clients sent was written.
    assert_eq!(ctl(&https, &good, &["get", "/tls/k", "--print-value-only"]).await.ok().stdout.trim(), "v1");
}

/// The subject the server presents, as `openssl s_client` prints it.
async fn served_subject(endpoint: &str, c: &Certs) -> String {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            endpoint,
            "-CAfile",
            s(&c.ca.cert),
            "-cert",
            s(&c.client.cert),
            "-key",
            s(&c.client.key),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("subject=")).unwrap_or_else(|| panic!("no subject in:\n{text}"));
    line.to_owned()
}

/// Replaces `dst` by `src` with a rename, as certificate renewers do.
fn swap_in(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_on_disk_is_served_on_the_next_handshake() {
    let Some(c) = certs() else { return };
    // The server reads copies, so that the test can replace them.
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("server.pem"), live.path().join("server.key"));
    swap_in(&c.server.cert, &cert);
    swap_in(&c.server.key, &key);
    let args =
        ["--cert-file", s(&cert), "--key-file", s(&key), "--trusted-ca-file", s(&c.ca.cert), "--client-cert-auth"];
    let server = Roster::try_start_tls(roster_bin(), &args).await.unwrap();
    let endpoint = server.endpoint();
    assert!(served_subject(&endpoint, &c).await.contains("first-server"));

    // A renewed certificate, with a new key: key first, then certificate.
    let renewed = c.ca.server("renewed", "second-server");
    swap_in(&renewed.key, &key);
    swap_in(&renewed.cert, &cert);
    assert!(served_subject(&endpoint, &c).await.contains("second-server"), "the renewed certificate was not served");

    // A broken file on disk keeps the last good pair in service.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    assert!(served_subject(&endpoint, &c).await.contains("second-server"));
    let identity = ClientConfig::tls_from_files(Some(&c.ca.cert), Some(&c.client.cert), Some(&c.client.key)).unwrap();
    sdk(format!("https://{endpoint}"), Some(identity)).put(put("/tls/after-swap", "ok")).await.unwrap();
    assert!(server.log().read().contains("does not load; still serving the previous one"), "{}", server.log().tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_ca_swapped_on_disk_is_used_on_the_next_handshake() {
    let Some(c) = certs() else { return };
    let live = tempfile::tempdir().unwrap();
    let ca = live.path().join("ca.pem");
    swap_in(&c.ca.cert, &ca);
    let args = [
        "--cert-file",
        s(&c.server.cert),
        "--key-file",
        s(&c.server.key),
        "--trusted-ca-file",
        s(&ca),
        "--client-cert-auth",
    ];
    let server = Roster::try_start_tls(roster_bin(), &args).await.unwrap();
    let https = format!("https://{}", server.endpoint());
    // A new client each time: a new connection, so a new handshake.
    let put_as = |who: &Pair| {
        let identity = ClientConfig::tls_from_files(Some(&c.ca.cert), Some(&who.cert), Some(&who.key)).unwrap();
        let client = sdk(https.clone(), Some(identity));
        async move { client.put(put("/tls/ca", "v")).await }
    };
    put_as(&c.client).await.unwrap();
    put_as(&c.rogue).await.expect_err("a client of the other CA got in");

    // The CA rotated: the other CA's clients get in, the first's no longer.
    swap_in(&c.other.cert, &ca);
    put_as(&c.rogue).await.expect("the new CA's client was refused");
    put_as(&c.client).await.expect_err("the old CA's client still got in");

    // A broken file keeps the CAs in use.
    std::fs::write(&ca, "not a certificate").unwrap();
    put_as(&c.rogue).await.expect("a broken CA file dropped the CAs in use");
    assert!(
        server.log().read().contains("trusted CA file changed on disk but does not load"),
        "{}",
        server.log().tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_serves_https_and_refuses_bad_tls_flags() {
    let Some(c) = certs() else { return };
    let server = serve_mtls(&c, &["--http-cert-file", s(&c.server.cert), "--http-key-file", s(&c.server.key)]).await;
    let health = server.http_url().replace("http://", "https://") + "/health";
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", s(&c.ca.cert), &health])
        .output()
        .await;
    match out {
        Ok(out) => {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                r#"{"health":"true"}"#,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!("!!! curl not runnable ({e}); HTTPS health not checked !!!"),
    }
    // Flags that contradict each other fail the start with a hint.
    for (args, want) in [
        (vec!["--listen", "https://127.0.0.1:0"], "needs --cert-file"),
        (
            vec!["--listen", "http://127.0.0.1:0", "--cert-file", s(&c.server.cert), "--key-file", s(&c.server.key)],
            "plaintext but --cert-file",
        ),
        (vec!["--cert-file", s(&c.server.cert), "--key-file", s(&c.ca.cert)], "--key-file"),
        (
            vec!["--cert-file", s(&c.server.cert), "--key-file", s(&c.server.key), "--client-cert-auth"],
            "--trusted-ca-file",
        ),
    ] {
        let out = tokio::process::Command::new(roster_bin())
            .args(["serve", "--in-memory", "--no-http"])
            .args(&args)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// curl's status code and HTTP version for `url`, trusting `ca`.
async fn curl(url: &str, ca: &Path, extra: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--max-time", "5", "--cacert", s(ca)])
        .args(extra)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, version) = text.split_once(' ').unwrap_or(("0", ""));
    (code.parse().unwrap_or(0), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_terminates_tls_with_h2_and_http1_and_reaches_its_registry_over_mtls() {
    let Some(c) = certs() else { return };
    if require_etcdctl().is_none() {
        return;
    }
    let server = serve_mtls(&c, &[]).await;
    let https = format!("https://{}", server.endpoint());
    let (ca, cert, key) = (s(&c.ca.cert), s(&c.client.cert), s(&c.client.key));
    // A backend: the registry's own plaintext health endpoint.
    let backend = server.http_url().trim_start_matches("http://").to_owned();
    let good = ["--cacert", ca, "--cert", cert, "--key", key];
    ctl(&https, &good, &["put", "/services/regsvc/r1", &format!("{{\"Addr\":\"{backend}\"}}")]).await.ok();

    let listen = format!("127.0.0.1:{}", roster_testkit::free_port());
    let _gw = tokio::process::Command::new(roster_bin())
        .args(["--log", "warn", "gateway", "--no-admin", "--listen", &listen, "--endpoints", &https])
        .args(["--cacert", ca, "--cert", cert, "--key", key])
        .args(["--cert-file", s(&c.server.cert), "--key-file", s(&c.server.key)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("https://{listen}/regsvc/health");
    let start = std::time::Instant::now();
    while curl(&url, &c.ca.cert, &["--http1.1"]).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(15), "the gateway over TLS never routed to regsvc");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(curl(&url, &c.ca.cert, &["--http1.1"]).await, (200, "1.1".to_owned()));
    assert_eq!(curl(&url, &c.ca.cert, &["--http2"]).await, (200, "2".to_owned()), "ALPN h2");
    // Plaintext to the TLS port is not served.
    assert_eq!(curl(&format!("http://{listen}/regsvc/health"), &c.ca.cert, &[]).await.0, 0);

    // The same TLS from the config file's [tls], client certificates
    // required: served to a CA-signed client only.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("gateway.toml");
    std::fs::write(
        &toml,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\ntrusted_ca_file = {:?}\nclient_cert_auth = true\n",
            s(&c.server.cert),
            s(&c.server.key),
            ca
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", roster_testkit::free_port());
    let _gw2 = tokio::process::Command::new(roster_bin())
        .args(["--log", "warn", "gateway", "--no-admin", "--listen", &listen, "--endpoints", &https])
        .args(["--cacert", ca, "--cert", cert, "--key", key, "--config", s(&toml)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("https://{listen}/regsvc/health");
    let with_cert = ["--http1.1", "--cert", cert, "--key", key];
    let start = std::time::Instant::now();
    while curl(&url, &c.ca.cert, &with_cert).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(15), "the gateway with [tls] never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(curl(&url, &c.ca.cert, &["--http1.1"]).await.0, 0, "served without a client certificate");
}

/// `GET /ui/` on `roster serve`'s plain `--http` listener until `done`
/// says yes (the console's probes settle within a few seconds).
async fn ui_until(server: &Roster, what: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let http: std::net::SocketAddr = server.http_url().trim_start_matches("http://").parse().unwrap();
    let start = std::time::Instant::now();
    loop {
        let (status, body) = roster_testkit::http_get(http, "/ui/").await.unwrap();
        if done(status, &body) {
            return (status, body);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With TLS and client certificates on the gRPC listener, `roster serve`'s
/// console reaches it over mTLS with `--console-cert`; without one it is
/// not served (and says why).
#[tokio::test]
async fn console_on_an_mtls_server_reaches_it_with_its_own_certificate() {
    let Some(c) = certs() else { return };
    let console = c.ca.client("console", "console");
    let (cert, key) = (s(&console.cert), s(&console.key));
    let server = serve_mtls(&c, &["--console-cert", cert, "--console-key", key]).await;
    let https = format!("https://{}", server.endpoint());
    let identity = ClientConfig::tls_from_files(Some(&c.ca.cert), Some(&c.client.cert), Some(&c.client.key)).unwrap();
    let sdk = sdk(https, Some(identity));
    let inst = roster::Instance::new("over-mtls", "10.5.0.1:80").with_id("m1");
    sdk.put(PutRequest {
        key: "/services/over-mtls/m1".into(),
        value: inst.to_value().into_bytes().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    ui_until(&server, "the console over mTLS", |status, body| status == 200 && body.contains("over-mtls")).await;

    let bare = serve_mtls(&c, &[]).await;
    let http: std::net::SocketAddr = bare.http_url().trim_start_matches("http://").parse().unwrap();
    assert_eq!(roster_testkit::http_get(http, "/ui/").await.unwrap().0, 404);
    assert!(bare.log().read().contains("give --console-cert and --console-key"), "{}", bare.log().read());
}

/// The console's client certificate names a user (here root), and under
/// auth on a request with no token passes as that user. The console must
/// still ask every visitor to sign in, never serve pages as its CN.
#[tokio::test]
async fn console_client_certificate_is_never_a_login() {
    let Some(c) = certs() else { return };
    if require_etcdctl().is_none() {
        return;
    }
    let root = c.ca.client("console-root", "root");
    let server = serve_mtls(&c, &["--console-cert", s(&root.cert), "--console-key", s(&root.key)]).await;
    let https = format!("https://{}", server.endpoint());
    let good = ["--cacert", s(&c.ca.cert), "--cert", s(&root.cert), "--key", s(&root.key)];
    for cmd in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["put", "/services/secret/s1", "10.6.0.1:80"],
    ] {
        ctl(&https, &good, cmd).await.ok();
    }
    ui_until(&server, "auth off", |status, body| status == 200 && body.contains("secret")).await;
    ctl(&https, &good, &["auth", "enable"]).await.ok();
    // Reads with the certificate alone still pass as root...
    assert!(ctl(&https, &good, &["get", "/services/secret/s1"]).await.ok().stdout.contains("10.6.0.1"));
    // ...but the console sends visitors to sign in (303 to /ui/login).
    let (_, body) = ui_until(&server, "auth on", |status, body| status == 303 || body.contains("sign-in")).await;
    assert!(!body.contains("10.6.0.1"), "the console served a page as its certificate's user: {body}");
}
