//! Request builders for the lock and election recipes, shared by the SDK
//! (over the network) and the server's Lock and Election services (over
//! the store), so both follow etcd's `concurrency` package to the letter.

use crate::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, compare,
    range_request::{SortOrder, SortTarget},
    request_op, response_op,
};
use crate::mvccpb::KeyValue;

/// The key a lease holds under a lock or election prefix:
/// `<prefix><lease id in lowercase hex>`.
pub fn lease_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

/// `<name>/`: the prefix of a lock or election named `name`.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

pub fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into().into(),
            value: value.into().into(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into().into(),
            ..Default::default()
        })),
    }
}

pub fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(r)) }
}

/// A single-key get.
pub fn get(key: impl Into<Vec<u8>>) -> RangeRequest {
    RangeRequest { key: key.into().into(), ..Default::default() }
}

/// `create_revision(key) == rev`: while true, the key created at `rev`
/// lives (with `rev` 0: the key does not exist).
pub fn created_at(key: impl Into<Vec<u8>>, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.into().into(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Default::default(),
    }
}

/// The oldest key under `prefix`: the lock holder or the leader.
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec().into(),
        range_end: crate::range::prefix_end(prefix).into(),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

/// The newest key under `prefix` created at or before `max_create_rev`:
/// the one a waiter queued after it watches.
pub fn last_created_by(prefix: &[u8], max_create_rev: i64) -> RangeRequest {
    RangeRequest { max_create_revision: max_create_rev, sort_order: SortOrder::Descend as i32, ..first_created(prefix) }
}

/// The key-values of a range inside a txn response.
pub fn kvs_of(op: Option<&ResponseOp>) -> &[KeyValue] {
    match op.and_then(|o| o.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(prefix_of(b"/locks/job"), b"/locks/job/");
        assert_eq!(lease_key(b"/locks/job/", 0x694d7b3c2a8f1e05), b"/locks/job/694d7b3c2a8f1e05");
        let r = last_created_by(b"/e/", 7);
        assert_eq!((&r.key[..], &r.range_end[..], r.limit, r.max_create_revision), (&b"/e/"[..], &b"/e0"[..], 1, 7));
        assert_eq!(r.sort_order, SortOrder::Descend as i32);
    }
}
