//! What the one member says about itself, and auth while it is off.

use super::*;

#[tokio::test]
async fn status_leader_is_the_listed_member() {
    let mut srv = TestServer::start().await;
    let ch = srv.channel().await;
    let st = MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await.unwrap().into_inner();
    let ml = ClusterClient::new(ch.clone()).member_list(MemberListRequest {}).await.unwrap().into_inner();
    assert_eq!(st.version, "3.4.0");
    assert_eq!(st.leader, MEMBER_ID);
    assert_eq!(st.raft_term, RAFT_TERM);
    assert_eq!(ml.members.len(), 1);
    assert_eq!(ml.members[0].id, st.leader);
    assert_eq!(ml.members[0].name, "it");
    assert_eq!(ml.members[0].client_ur_ls, vec![format!("http://{}", srv.grpc_addr())]);
    let h = ml.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.revision),
        (CLUSTER_ID, MEMBER_ID, 0),
        "etcd's MemberList has no revision"
    );

    let alarms = MaintenanceClient::new(ch).alarm(AlarmRequest::default()).await.unwrap().into_inner();
    assert!(alarms.alarms.is_empty());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn authenticate_says_auth_is_off() {
    let mut srv = TestServer::start().await;
    let mut auth = AuthClient::new(srv.channel().await);
    let err = auth.authenticate(AuthenticateRequest { name: "u".into(), password: "p".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: authentication is not enabled");
    srv.stop().await.unwrap();
}
