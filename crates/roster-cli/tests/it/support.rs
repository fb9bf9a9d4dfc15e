//! Helpers shared by the test modules.

use roster_api::etcdserverpb::ResponseHeader;
use std::future::Future;
use std::time::Duration;

/// The `roster` binary cargo built for these tests.
pub fn roster_bin() -> &'static str {
    env!("CARGO_BIN_EXE_roster")
}

/// Bounds one RPC: a server that hangs fails the test instead of hanging it.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within 15 s"),
    }
}

/// The gRPC outcome reduced to what clients see: the message, or the error's
/// code and exact text.
pub fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, (tonic::Code, String)> {
    r.map(tonic::Response::into_inner).map_err(|s| (s.code(), s.message().to_owned()))
}

/// Header fields that legitimately differ between two servers.
pub fn zero_ids(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
    }
}
