//! The HTTP side: `GET /health` in etcd's shape and `GET /metrics` for
//! Prometheus.

use crate::{Server, ServerError};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;

/// etcd 3.4's `/health` body for a healthy member.
const HEALTHY: &str = r#"{"health":"true"}"#;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) fn router(server: Server) -> Router {
    Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(server)
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    server: Server,
) -> Result<(), ServerError> {
    let stop = server.stop().clone();
    let grace = server.config().shutdown_grace;
    let stopped = {
        let stop = stop.clone();
        async move { stop.wait().await }
    };
    let app = router(server);
    let result = match tls {
        Some(config) => {
            let incoming = roster_tls::TlsIncoming::new(listener, config).map_err(ServerError::Http)?;
            let run = axum::serve(crate::tls::HttpsListener(incoming), app).with_graceful_shutdown(stopped);
            crate::with_grace(run.into_future(), stop, grace, "HTTP").await
        }
        None => {
            let run = axum::serve(listener, app).with_graceful_shutdown(stopped);
            crate::with_grace(run.into_future(), stop, grace, "HTTP").await
        }
    };
    result.map_err(ServerError::Http)
}

/// A single node that answers is healthy: there is no quorum to lose. It
/// is unhealthy once its store has failed (it refuses writes until
/// restarted); the body then says why, as etcd's does.
async fn health(State(server): State<Server>) -> impl IntoResponse {
    match server.store().failure() {
        None => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], HEALTHY.to_owned()),
        Some(reason) => {
            let body = serde_json::json!({ "health": "false", "reason": reason }).to_string();
            (StatusCode::SERVICE_UNAVAILABLE, [(CONTENT_TYPE, "application/json")], body)
        }
    }
}

async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let text = server.metrics().render(&server.store().status());
    ([(CONTENT_TYPE, OPENMETRICS)], text)
}
