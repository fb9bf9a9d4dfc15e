//! Key-value calls: headers, validation and size limits.

use super::*;

#[tokio::test]
async fn put_then_get_carries_full_header() {
    let mut srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let p = kv.put(put("a", "1")).await.unwrap().into_inner();
    let h = p.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term, h.revision), (CLUSTER_ID, MEMBER_ID, RAFT_TERM, 2));

    let r = kv.range(RangeRequest { key: "a".into(), ..Default::default() }).await.unwrap().into_inner();
    let h = r.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term, h.revision), (CLUSTER_ID, MEMBER_ID, RAFT_TERM, 2));
    assert_eq!(r.count, 1);
    assert_eq!(&r.kvs[0].value[..], b"1");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn txn_fills_only_the_top_level_header() {
    let mut srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let op = RequestOp { request: Some(request_op::Request::RequestPut(put("t", "v"))) };
    let t = kv.txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] }).await.unwrap().into_inner();
    let h = t.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.raft_term), (CLUSTER_ID, MEMBER_ID, RAFT_TERM));
    let Some(response_op::Response::ResponsePut(p)) = &t.responses[0].response else { panic!("{t:?}") };
    if let Some(nested) = &p.header {
        assert_eq!((nested.cluster_id, nested.member_id), (0, 0), "etcd leaves nested headers as the store made them");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn empty_key_is_invalid_argument() {
    let mut srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let err = kv.put(put("", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");
    let err = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: key is not provided");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_request_is_too_large() {
    let mut srv = TestServer::start().await;
    let mut kv = KvClient::new(srv.channel().await);
    let big = PutRequest { key: "big".into(), value: vec![b'x'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    let err = kv.put(big).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");

    // Validation comes first, as in etcd.
    let big_empty = PutRequest { value: vec![b'x'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    assert_eq!(kv.put(big_empty).await.unwrap_err().message(), "etcdserver: key is not provided");

    // Reads are not size-checked: etcd answers a range with a huge key.
    let huge_key = RangeRequest { key: vec![b'k'; MAX_REQUEST_BYTES + 1].into(), ..Default::default() };
    assert_eq!(kv.range(huge_key).await.unwrap().into_inner().count, 0);
    srv.stop().await.unwrap();
}
