//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use crate::{Server, check_raft_size};
use roster_api::etcdserverpb::request_op::Request as Op;
use roster_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use roster_api::validate;
use tonic::{Request, Response, Status};

const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";
const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
const TXN: &str = "/etcdserverpb.KV/Txn";
const COMPACT: &str = "/etcdserverpb.KV/Compact";

// === impl Server as Kv ===

#[tonic::async_trait]
impl Kv for Server {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.unary(RANGE, req, |r| async move {
            validate::check_range(&r)?;
            Ok(self.store().range(r).await?)
        })
        .await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.unary(PUT, req, |r| async move {
            // etcd's quota layer runs before validation.
            self.store().check_quota_put(&r)?;
            validate::check_put(&r)?;
            check_raft_size(&r)?;
            Ok(self.store().put(r).await?)
        })
        .await
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        self.unary(DELETE_RANGE, req, |r| async move {
            validate::check_delete(&r)?;
            check_raft_size(&r)?;
            Ok(self.store().delete_range(r).await?)
        })
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.unary(TXN, req, |r| async move {
            self.store().check_quota_txn(&r)?;
            validate::check_txn(&r)?;
            // A read-only txn is served like a Range, off the raft path.
            if !is_read_only(&r) {
                check_raft_size(&r)?;
            }
            Ok(self.store().txn(r).await?)
        })
        .await
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.unary(COMPACT, req, |r| async move {
            check_raft_size(&r)?;
            Ok(self.store().compact(r).await?)
        })
        .await
    }
}

/// etcd's `isTxnReadonly`: every op of both branches is a Range. A nested
/// txn counts as a write, whatever it holds.
fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_api::etcdserverpb::RequestOp;

    fn op(r: Op) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn only_all_range_txns_are_read_only() {
        let range = || op(Op::RequestRange(RangeRequest::default()));
        let put = || op(Op::RequestPut(PutRequest::default()));
        let txn = |success| TxnRequest { compare: vec![], success, failure: vec![] };
        assert!(is_read_only(&txn(vec![])));
        assert!(is_read_only(&txn(vec![range(), range()])));
        assert!(!is_read_only(&txn(vec![range(), put()])));
        assert!(!is_read_only(&TxnRequest { compare: vec![], success: vec![range()], failure: vec![put()] }));
        assert!(!is_read_only(&txn(vec![op(Op::RequestTxn(txn(vec![range()])))])));
    }
}
