//! Finding the external tools, and skipping (loudly) without them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The first executable named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

fn require(tool: &str) -> Option<PathBuf> {
    require_from(tool, "etcd-server etcd-client")
}

fn require_from(tool: &str, packages: &str) -> Option<PathBuf> {
    if let Some(p) = which(tool) {
        return Some(p);
    }
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let msg = format!("!!! SKIPPED: `{tool}` not installed; install the Debian packages {packages} !!!");
    if ci {
        panic!("{msg} (CI=true: tests must not skip)");
    }
    eprintln!("\n{}\n{msg}\n{}\n", "!".repeat(msg.len()), "!".repeat(msg.len()));
    None
}

/// The path of `etcd`, or `None` after a loud notice on stderr when it is not
/// installed. Under `CI=true` a missing `etcd` panics: CI never skips.
pub fn require_etcd() -> Option<PathBuf> {
    require("etcd")
}

/// As [`require_etcd`], for `etcdctl`.
pub fn require_etcdctl() -> Option<PathBuf> {
    require("etcdctl")
}

/// As [`require_etcd`], for `openssl` (the TLS tests make their
/// certificates with it).
pub fn require_openssl() -> Option<PathBuf> {
    require_from("openssl", "openssl")
}

/// The path of `go`, when it and the Go sources a program imports
/// (`sources`: GOPATH import paths under `/usr/share/gocode/src`, from
/// Debian's golang-* packages) are there; otherwise as [`require_etcd`].
pub fn require_go(sources: &[&str]) -> Option<PathBuf> {
    const PACKAGES: &str = "golang-go golang-etcd-server-dev golang-google-grpc-dev";
    let go = require_from("go", PACKAGES)?;
    match sources.iter().find(|s| !Path::new(GOPATH).join("src").join(s).is_dir()) {
        None => Some(go),
        Some(missing) => require_from(&format!("{GOPATH}/src/{missing}"), PACKAGES),
    }
}

/// Builds the Go program `main.go` in `src` (importing `sources`) to `out`,
/// offline in GOPATH mode over Debian's sources: nothing is downloaded. It
/// is built beside `out` and renamed over it, so a run elsewhere that is
/// using the old binary keeps it. `None` (after [`require_go`]'s notice)
/// without Go or the sources; a failed build panics with go's output.
pub fn go_build(src: &Path, sources: &[&str], out: &Path) -> Option<PathBuf> {
    let go = require_go(sources)?;
    let building = out.with_extension(format!("{}.tmp", std::process::id()));
    let built = std::process::Command::new(go)
        .args(["build", "-o"])
        .arg(&building)
        .arg("main.go")
        .current_dir(src)
        .env("GOPATH", GOPATH)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .output()
        .expect("run go build");
    assert!(built.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&built.stderr));
    std::fs::rename(&building, out).expect("move the Go binary in place");
    Some(out.to_owned())
}

/// Where Debian's Go packages keep their sources, as a GOPATH.
pub const GOPATH: &str = "/usr/share/gocode";

/// A loopback port that was free a moment ago. The caller's server binds it
/// next; a lost race shows up as a failed start, which the starters retry.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}
