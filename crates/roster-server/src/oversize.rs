//! A request over the gRPC receive limit gets grpc-go's answer, as etcd
//! gives it: `ResourceExhausted`, "grpc: received message larger than max
//! (N vs. M)". tonic refuses the same message with `OutOfRange` and its own
//! words; this layer rewrites that one trailers-only answer, nothing else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http::{HeaderValue, Request, Response};

const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Oversize<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for Oversize<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut());
            Ok(resp)
        })
    }
}

fn rewrite(h: &mut tonic::codegen::http::HeaderMap) {
    if h.get("grpc-status").is_none_or(|s| s != "11") {
        return;
    }
    let Some(msg) = h.get("grpc-message").and_then(|m| m.to_str().ok()) else { return };
    let Some(etcd) = etcd_text(&roster_api::codec::decode_grpc_message(msg.as_bytes())) else { return };
    h.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(v) = HeaderValue::from_str(&etcd) {
        h.insert("grpc-message", v);
    }
}

/// "…found N bytes, the limit is: M bytes" → "grpc: received message larger than max (N vs. M)".
fn etcd_text(tonic: &str) -> Option<String> {
    let rest = tonic.strip_prefix(TONIC_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (found, limit): (u64, u64) = (found.parse().ok()?, limit.parse().ok()?);
    Some(format!("grpc: received message larger than max ({found} vs. {limit})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_refusal_becomes_grpc_gos() {
        let mut h = tonic::codegen::http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error, decoded message length too large: found 3000012 bytes, the limit is: 2097152 bytes",
            ),
        );
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "grpc: received message larger than max (3000012 vs. 2097152)");
    }

    #[test]
    fn other_out_of_range_answers_are_left_alone() {
        let mut h = tonic::codegen::http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert("grpc-message", HeaderValue::from_static("etcdserver: too large lease TTL"));
        rewrite(&mut h);
        assert_eq!(
            (h["grpc-status"].to_str().unwrap(), h["grpc-message"].to_str().unwrap()),
            ("11", "etcdserver: too large lease TTL")
        );
    }
}
