//! The checks etcd makes on a request before it reaches the store, in etcd's
//! order, so that a request with several faults gets the same error etcd
//! would give.

use crate::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request};
use crate::{EtcdError, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use std::collections::HashSet;

/// Rejects a request whose encoding exceeds etcd's request limit.
pub fn check_size(encoded_len: usize) -> Result<(), EtcdError> {
    if encoded_len > MAX_REQUEST_BYTES {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Op-count limit, empty keys, then conflicting writes, as etcd checks them.
pub fn check_txn(r: &TxnRequest) -> Result<(), EtcdError> {
    check_txn_shape(r, MAX_TXN_OPS)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_shape(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_shape(t, max_ops),
        None => Ok(()),
    }
}

/// A deleted interval `[from, to)`; `to == None` is a single key.
struct Deleted<'a> {
    from: &'a [u8],
    to: Option<&'a [u8]>,
}

impl Deleted<'_> {
    /// etcd compares the interval with the point `[k, k+"\0")`.
    fn covers(&self, k: &[u8]) -> bool {
        match self.to {
            None => self.from == k,
            Some(to) => self.from <= k && k < to,
        }
    }
}

/// Puts and deletes collected from one branch, nested txns included.
#[derive(Default)]
struct Writes<'a> {
    puts: HashSet<&'a [u8]>,
    dels: Vec<Deleted<'a>>,
}

/// One key may be written once per txn: two puts, or a put inside a deleted
/// range, is a duplicate. The two branches of a nested txn exclude each
/// other, so a key put in both is fine.
fn check_intervals(ops: &[RequestOp]) -> Result<(), EtcdError> {
    collect_writes(ops).map(|_| ())
}

fn collect_writes(ops: &[RequestOp]) -> Result<Writes<'_>, EtcdError> {
    let mut w = Writes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let to = (!d.range_end.is_empty()).then_some(&d.range_end[..]);
            w.dels.push(Deleted { from: &d.key, to });
        }
    }
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let then = collect_writes(&t.success)?;
        let other = collect_writes(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.dels.iter().any(|d| d.covers(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            w.puts.insert(k);
        }
        for k in &other.puts {
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.dels.iter().any(|d| d.covers(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            w.puts.insert(k);
        }
        // A later sibling's puts are checked against these deletes too.
        w.dels.extend(then.dels);
        w.dels.extend(other.dels);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        let k = &p.key[..];
        if w.puts.contains(k) || w.dels.iter().any(|d| d.covers(k)) {
            return Err(EtcdError::DuplicateKey);
        }
        w.puts.insert(k);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.to_owned().into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.to_owned().into(),
                range_end: end.to_owned().into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(TxnRequest { compare: vec![], success, failure })) }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), EtcdError> {
        check_txn(&TxnRequest { compare: vec![], success, failure: vec![] })
    }

    #[test]
    fn two_puts_to_one_key_are_duplicates() {
        assert_eq!(check(vec![put("a"), put("a")]), Err(EtcdError::DuplicateKey));
        assert_eq!(check(vec![put("a"), put("b")]), Ok(()));
    }

    #[test]
    fn put_inside_deleted_range_is_duplicate() {
        assert_eq!(check(vec![del("a", "c"), put("b")]), Err(EtcdError::DuplicateKey));
        assert_eq!(check(vec![del("a", "c"), put("c")]), Ok(()));
        assert_eq!(check(vec![del("a", ""), put("a")]), Err(EtcdError::DuplicateKey));
        // Overlapping deletes are fine.
        assert_eq!(check(vec![del("a", "c"), del("b", "d")]), Ok(()));
    }

    #[test]
    fn nested_branches_exclude_each_other() {
        assert_eq!(check(vec![txn(vec![put("a")], vec![put("a")])]), Ok(()));
        assert_eq!(check(vec![put("a"), txn(vec![put("a")], vec![])]), Err(EtcdError::DuplicateKey));
        assert_eq!(check(vec![del("a", "b"), txn(vec![put("a")], vec![])]), Err(EtcdError::DuplicateKey));
        // A delete in one nested txn conflicts with a put in a later one.
        assert_eq!(
            check(vec![txn(vec![del("a", "")], vec![]), txn(vec![put("a")], vec![])]),
            Err(EtcdError::DuplicateKey)
        );
        // A delete in a child conflicts with a put at this level.
        assert_eq!(check(vec![txn(vec![del("a", "b")], vec![]), put("a")]), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn op_limit_is_the_largest_list() {
        let ops = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(ops), Err(EtcdError::TooManyOps));
        let ops = (0..128).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(ops), Ok(()));
    }

    #[test]
    fn empty_keys_are_rejected_everywhere() {
        assert_eq!(check(vec![put("")]), Err(EtcdError::EmptyKey));
        assert_eq!(check(vec![txn(vec![del("", "")], vec![])]), Err(EtcdError::EmptyKey));
    }
}
