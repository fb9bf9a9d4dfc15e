//! Waiting for a condition, bounded: the one polling helper of the tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a polled condition returns: `true`/`Ok` when it holds; an `Err`
/// says what was seen instead, for the failure message.
pub trait Outcome {
    fn holds(self) -> Result<(), String>;
}

impl Outcome for bool {
    fn holds(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet".into()) }
    }
}

impl Outcome for Result<(), String> {
    fn holds(self) -> Result<(), String> {
        self
    }
}

/// Polls `check` every 10 ms until it holds and returns how long that
/// took; panics past `limit` with `what` and the last thing seen.
pub async fn eventually<O: Outcome>(what: &str, limit: Duration, check: impl AsyncFnMut() -> O) -> Duration {
    eventually_or(what, limit, check, String::new).await
}

/// As [`eventually`]; a timeout adds what `context` says (server logs).
pub async fn eventually_or<O: Outcome>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> O,
    context: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen = match check().await.holds() {
            Ok(()) => return start.elapsed(),
            Err(seen) => seen,
        };
        if start.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: the status and the
/// body, or what went wrong. Bounded by 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), run).await.map_err(|_| "timed out".to_owned())?
}
