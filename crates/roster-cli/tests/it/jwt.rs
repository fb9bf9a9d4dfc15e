//! `--auth-token jwt,...` against etcd 3.4 started with the same flag and
//! the same openssl-made keys: a token either server issues is accepted by
//! the other, header and claims are etcd's, a verify-only server (pub-key
//! only) refuses Authenticate with etcd's error yet accepts the signer's
//! tokens, and an expired token is refused with etcd's error.

use crate::support::roster_bin;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use roster_api::etcdserverpb::auth_client::AuthClient;
use roster_api::etcdserverpb::kv_client::KvClient;
use roster_api::etcdserverpb::{AuthenticateRequest, RangeRequest};
use roster_testkit::{Etcd, Etcdctl, Roster, require_etcd, require_etcdctl, require_openssl};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::transport::Channel;

/// Runs openssl in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The same users on both servers, in the same order, so that both stand
/// at the same auth revision: root, and alice who reads `/a`.
async fn setup(endpoint: String) {
    let ctl = Etcdctl::new(endpoint);
    for cmd in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "alice:apw"],
        vec!["role", "add", "r"],
        vec!["role", "grant-permission", "r", "read", "/a"],
        vec!["user", "grant-role", "alice", "r"],
        vec!["auth", "enable"],
    ] {
        ctl.run(&cmd).await.ok();
    }
}

async fn authenticate(ch: Channel, name: &str, pw: &str) -> Result<String, (tonic::Code, String)> {
    AuthClient::new(ch)
        .authenticate(AuthenticateRequest { name: name.into(), password: pw.into() })
        .await
        .map(|r| r.into_inner().token)
        .map_err(|s| (s.code(), s.message().to_owned()))
}

/// A Range of `/a` with `token`: Ok, or the refusal's code and message.
async fn read_with(ch: Channel, token: &str) -> Result<(), (tonic::Code, String)> {
    let mut req = tonic::Request::new(RangeRequest { key: "/a".into(), ..Default::default() });
    req.metadata_mut().insert("token", token.parse().unwrap());
    KvClient::new(ch).range(req).await.map(drop).map_err(|s| (s.code(), s.message().to_owned()))
}

fn segment(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

struct Pair {
    etcd: Etcd,
    roster: Roster,
    _data: tempfile::TempDir,
}

async fn start_pair(spec: &str) -> Pair {
    let flag = format!("--auth-token={spec}");
    let etcd = Etcd::start_with_args(&[&flag]).await;
    let data = tempfile::tempdir().unwrap();
    let roster = Roster::try_start_in_with_args(roster_bin(), data.path(), &["--auth-token", spec])
        .await
        .unwrap_or_else(|e| panic!("roster serve {flag}: {e}"));
    setup(etcd.endpoint()).await;
    setup(roster.endpoint()).await;
    Pair { etcd, roster, _data: data }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_of_roster_and_etcd_verify_on_each_other_for_each_method() {
    if require_etcd().is_none() || require_etcdctl().is_none() || require_openssl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // RSA as PKCS#8, EC P-256 as SEC1 (openssl's `ecparam` output), P-384
    // as PKCS#8, and an HMAC secret.
    openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.key"]);
    openssl(d, &["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "p256.key"]);
    openssl(d, &["pkey", "-in", "p256.key", "-pubout", "-out", "p256.pub"]);
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "p384.key"]);
    openssl(d, &["pkey", "-in", "p384.key", "-pubout", "-out", "p384.pub"]);
    std::fs::write(d.join("hmac.key"), b"a shared secret of some length").unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let cases = [
        ("RS256", format!("pub-key={},priv-key={}", p("rsa.pub"), p("rsa.key"))),
        ("PS384", format!("pub-key={},priv-key={}", p("rsa.pub"), p("rsa.key"))),
        ("ES256", format!("pub-key={},priv-key={}", p("p256.pub"), p("p256.key"))),
        ("ES384", format!("priv-key={},pub-key={}", p("p384.key"), p("p384.pub"))),
        ("HS256", format!("priv-key={}", p("hmac.key"))),
    ];
    for (method, keys) in cases {
        let spec = format!("jwt,{keys},sign-method={method}");
        let pair = start_pair(&spec).await;
        let from_etcd = authenticate(pair.etcd.channel(), "alice", "apw").await.unwrap();
        let from_roster = authenticate(pair.roster.channel(), "alice", "apw").await.unwrap();
        // Header and claims are etcd's, key for key.
        assert_eq!(segment(&from_roster, 0), segment(&from_etcd, 0), "{method} header");
        assert_eq!(segment(&from_roster, 0)["alg"], method);
        let (ce, cr) = (segment(&from_etcd, 1), segment(&from_roster, 1));
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&cr), keys(&ce), "{method} claims");
        assert_eq!((&cr["username"], &cr["revision"]), (&ce["username"], &ce["revision"]));
        let exp_gap = cr["exp"].as_i64().unwrap() - ce["exp"].as_i64().unwrap();
        assert!(exp_gap.abs() <= 2, "{method}: exp {cr} vs {ce}");
        // Each server takes the other's token.
        for (who, ch) in [("etcd", pair.etcd.channel()), ("roster", pair.roster.channel())] {
            for (whose, t) in [("etcd's", &from_etcd), ("roster's", &from_roster)] {
                assert_eq!(read_with(ch.clone(), t).await, Ok(()), "{method}: {who} with {whose} token");
            }
        }
        // A token signed with another key or tampered with is refused alike.
        let mut forged = from_roster.clone();
        forged.truncate(forged.rfind('.').unwrap() + 1);
        forged.push_str(&URL_SAFE_NO_PAD.encode([7u8; 64]));
        let (e, r) = (read_with(pair.etcd.channel(), &forged).await, read_with(pair.roster.channel(), &forged).await);
        assert_eq!(r, e, "{method}: forged token");
        assert_eq!(r.unwrap_err().1, "etcdserver: invalid auth token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verify_only_and_expired_tokens_behave_as_on_etcd() {
    if require_etcd().is_none() || require_etcdctl().is_none() || require_openssl().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "k"]);
    openssl(d, &["pkey", "-in", "k", "-pubout", "-out", "k.pub"]);
    let (k, pubk) = (d.join("k").display().to_string(), d.join("k.pub").display().to_string());
    // ttl=2s: valid for at least one whole second, then gone.
    let signer = start_pair(&format!("jwt,pub-key={pubk},priv-key={k},sign-method=RS256,ttl=2s")).await;
    let verifier = start_pair(&format!("jwt,pub-key={pubk},sign-method=RS256")).await;

    let (e, r) = (
        authenticate(verifier.etcd.channel(), "alice", "apw").await,
        authenticate(verifier.roster.channel(), "alice", "apw").await,
    );
    assert_eq!(r, e, "Authenticate on a verify-only server");
    assert_eq!(r.unwrap_err(), (tonic::Code::Unknown, "auth: token signing attempted with verify-only key".into()));
    let token = authenticate(signer.roster.channel(), "alice", "apw").await.unwrap();
    for ch in [verifier.etcd.channel(), verifier.roster.channel(), signer.etcd.channel()] {
        assert_eq!(read_with(ch, &token).await, Ok(()));
    }
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (e, r) = (read_with(signer.etcd.channel(), &token).await, read_with(signer.roster.channel(), &token).await);
    assert_eq!(r, e, "an expired token");
    assert_eq!(r.unwrap_err(), (tonic::Code::Unauthenticated, "etcdserver: invalid auth token".into()));
}
