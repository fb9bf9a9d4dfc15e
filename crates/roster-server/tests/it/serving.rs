//! gRPC health, the HTTP side (health, metrics) and refused configs.

use super::*;

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let mut srv = TestServer::start().await;
    let mut health = HealthClient::new(srv.channel().await);
    for service in ["", "etcdserverpb.KV", "etcdserverpb.Watch"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn http_health_and_metrics() {
    let mut srv = TestServer::start().await;
    KvClient::new(srv.channel().await).put(put("m", "1")).await.unwrap();

    let (status, body) = http_get(srv.http_addr(), "/health").await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"health":"true"}"#);

    let (status, body) = http_get(srv.http_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("roster_store_revision 2"), "{body}");
    assert!(body.contains("roster_store_keys 1"), "{body}");
    assert!(body.contains(r#"roster_grpc_requests_total{method="/etcdserverpb.KV/Put",code="OK"} 1"#), "{body}");
    assert!(body.contains("roster_grpc_request_duration_seconds_bucket"), "{body}");

    let (status, _) = http_get(srv.http_addr(), "/nope").await;
    assert_eq!(status, 404);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig { member_id: 0, ..Default::default() };
    let err = serve(l, None, Store::in_memory(), config, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}
