//! The HTTP side: `GET /health` in etcd's shape and `GET /metrics` for
//! Prometheus, plus whatever routes the caller adds
//! ([`ServerConfig::http_routes`](crate::ServerConfig::http_routes)).

use crate::{Server, ServerError};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use tokio::net::TcpListener;

/// etcd 3.4's `/health` body for a healthy member.
const HEALTHY: &str = r#"{"health":"true"}"#;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) fn router(server: Server) -> Router {
    let extra = server.config().http_routes.clone();
    let own = Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(server);
    match extra {
        Some(routes) => own.merge(routes),
        None => own,
    }
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
///
/// With `--backup-dir` set, the body also carries the latest backup:
/// `"backup":{"path":…,"revision":…,"age_seconds":…}` (or `null` before
/// the first), so a probe can alert on stale backups.
async fn health(State(server): State<Server>) -> impl IntoResponse {
    let backup = server.config().backup.is_some().then(|| {
        server.backups().latest().map(|l| {
            serde_json::json!({
                "path": l.path.display().to_string(),
                "revision": l.revision,
                "age_seconds": l.at.elapsed().unwrap_or_default().as_secs(),
            })
        })
    });
    let (status, mut body) = match server.store().failure() {
        None => (StatusCode::OK, serde_json::json!({ "health": "true" })),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "health": "false", "reason": reason })),
    };
    let body = match backup {
        None if status == StatusCode::OK => HEALTHY.to_owned(),
        None => body.to_string(),
        Some(b) => {
            body["backup"] = b.unwrap_or(serde_json::Value::Null);
            body.to_string()
        }
    };
    (status, [(CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let text = server.metrics().render(&server.store().status(), server.backups());
    ([(CONTENT_TYPE, OPENMETRICS)], text)
}
