//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use crate::Server;
use roster_api::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
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
            validate::check_put(&r)?;
            Ok(self.store().put(r).await?)
        })
        .await
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        self.unary(DELETE_RANGE, req, |r| async move {
            validate::check_delete(&r)?;
            Ok(self.store().delete_range(r).await?)
        })
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.unary(TXN, req, |r| async move {
            validate::check_txn(&r)?;
            Ok(self.store().txn(r).await?)
        })
        .await
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.unary(COMPACT, req, |r| async move { Ok(self.store().compact(r).await?) }).await
    }
}
