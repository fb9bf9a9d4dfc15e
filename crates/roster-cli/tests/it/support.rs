//! Helpers shared by the test modules.

use roster_api::etcdserverpb::ResponseHeader;

/// The `roster` binary cargo built for these tests.
pub fn roster_bin() -> &'static str {
    env!("CARGO_BIN_EXE_roster")
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

/// `GET` over plain HTTP/1.1 on `http://host:port`: the status code and
/// the body (roster-testkit's [`roster_testkit::http_get`]).
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://").parse().unwrap_or_else(|e| panic!("{base}: {e}"));
    roster_testkit::http_get(addr, path).await.unwrap()
}
