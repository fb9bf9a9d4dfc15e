//! Helpers shared by the test modules.

use roster_api::etcdserverpb::ResponseHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `roster` binary cargo built for these tests.
pub fn roster_bin() -> &'static str {
    env!("CARGO_BIN_EXE_roster")
}

/// The gRPC outcome reduced to what clients see: the message, or the error's
/// code and exact text.
pub fn outcome<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, (tonic::Code, String)> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| (s.code(), s.message().to_owned()))
}

/// Header fields that legitimately differ between two servers.
pub fn zero_ids(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
    }
}

/// `GET` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
