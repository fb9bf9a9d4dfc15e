//! Executes requests against the keyspace and lease table, with etcd's rules.
//!
//! Writes mutate the state in place at revision `rev + 1`; readers are not
//! disturbed because they read at the durable revision, which is older. A
//! write's effects are gathered into a [`Record`] for the log and a list of
//! events for watchers.

use crate::auth::{AuthChange, AuthTables};
use crate::keyspace::{Entry, KeySpace, make_event};
use crate::lease::LeaseTable;
use crate::record::{Change, EntryRec, KeyRec, LeaseRec, Record, Snapshot};
use bytes::Bytes;
use roster_api::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use roster_api::{EtcdError, mvccpb};
use std::time::Duration;

/// Everything a write can change, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub kv: KeySpace,
    pub leases: LeaseTable,
    /// Newest applied revision (possibly not yet durable).
    pub rev: i64,
    /// Reads below this revision fail; -1 until the first compaction.
    pub compact_rev: i64,
    /// Sequence number of the newest log record.
    pub seq: u64,
    /// Users, roles and the auth flag; copied on write (see `auth`).
    pub auth: std::sync::Arc<AuthTables>,
}

impl State {
    pub fn new() -> Self {
        State { rev: 1, compact_rev: -1, ..Default::default() }
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

// === reads ===

impl State {
    /// A range read at `cur`, the newest revision this reader may see, in
    /// one go.
    pub fn range(&self, r: &RangeRequest, cur: i64) -> Result<RangeResponse, EtcdError> {
        let mut scan = self.range_start(r, cur)?;
        self.range_step(&mut scan, r, usize::MAX);
        Ok(scan.finish(r))
    }

    /// Begins a range read at `cur`: checks the revision. The scan is then
    /// fed by [`State::range_step`], under the shared lock each time but
    /// not necessarily one hold, and answered by [`RangeScan::finish`]
    /// with no lock at all.
    pub fn range_start(&self, r: &RangeRequest, cur: i64) -> Result<RangeScan, EtcdError> {
        if r.revision > cur {
            return Err(EtcdError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        // With no explicit order and no filters, etcd reads only limit + 1
        // keys (in key order) and sorts just those by the target.
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let cap = (r.limit > 0 && r.sort_order == SortOrder::None as i32 && !filtered)
            .then(|| usize::try_from(r.limit).unwrap_or(usize::MAX).saturating_add(1));
        Ok(RangeScan { cur, rev, count: 0, found: Vec::new(), after: None, cap, done: false })
    }

    /// Visits up to `keys` more keys of the range at the scan's revision;
    /// returns whether the range is exhausted. Between calls the history
    /// the scan reads must not be compacted away (the store pins it).
    pub fn range_step(&self, scan: &mut RangeScan, r: &RangeRequest, keys: usize) -> bool {
        if scan.done {
            return true;
        }
        let keep = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        let mut last = None;
        let mut visited = 0;
        for (k, h) in self.kv.range_after(&r.key, &r.range_end, scan.after.as_deref()) {
            if visited == keys {
                break;
            }
            visited += 1;
            last = Some(k);
            let Some(e) = h.at(scan.rev) else { continue };
            // `count` is taken before the filters and the limit.
            scan.count += 1;
            if r.count_only || scan.cap.is_some_and(|c| scan.found.len() >= c) {
                continue;
            }
            if keep(e.mod_rev, r.min_mod_revision, r.max_mod_revision)
                && keep(e.create_rev, r.min_create_revision, r.max_create_revision)
            {
                scan.found.push(e.to_kv(k));
            }
        }
        scan.done = visited < keys || keys == usize::MAX;
        if let Some(k) = last {
            scan.after = Some(k.clone());
        }
        scan.done
    }
}

/// A range read in progress: what it has found so far and where it stopped.
pub(crate) struct RangeScan {
    /// The revision the header carries.
    cur: i64,
    /// The revision the range is read at.
    pub rev: i64,
    count: i64,
    /// With their values: a sort by value needs them even for keys_only.
    found: Vec<mvccpb::KeyValue>,
    /// The last key visited.
    after: Option<Bytes>,
    /// Keys worth keeping (limit + 1), when no order or filter needs more.
    cap: Option<usize>,
    done: bool,
}

impl RangeScan {
    /// Sorts, limits and encodes what the scan found; needs no lock.
    pub fn finish(self, r: &RangeRequest) -> RangeResponse {
        let RangeScan { cur, count, mut found, .. } = self;
        if r.count_only {
            return RangeResponse { header: header(cur), kvs: vec![], more: false, count };
        }
        sort(&mut found, r);
        let more = r.limit > 0 && found.len() as i64 > r.limit;
        if more {
            found.truncate(r.limit as usize);
        }
        if r.keys_only {
            found.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        RangeResponse { header: header(cur), kvs: found, more, count }
    }
}

/// etcd sorts by the requested target; a non-key target with no order means
/// ascending. The sort is stable, so ties stay in key order.
fn sort(found: &mut [mvccpb::KeyValue], r: &RangeRequest) {
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None {
        return;
    }
    match target {
        SortTarget::Key => {}
        SortTarget::Version => found.sort_by_key(|kv| kv.version),
        SortTarget::Create => found.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => found.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => found.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        found.reverse();
    }
}

// === writes ===

/// One write in progress: the revision it will make and what it changed.
pub(crate) struct Write {
    begin: i64,
    sub: u32,
    pub record: Record,
    pub events: Vec<mvccpb::Event>,
}

impl Write {
    pub fn new(state: &State) -> Self {
        Write { begin: state.rev, sub: 0, record: Record::default(), events: Vec::new() }
    }

    fn rev(&self) -> i64 {
        self.begin + 1
    }

    fn changed(&self) -> bool {
        !self.record.changes.is_empty()
    }

    /// The revision a read inside this write sees.
    pub fn read_rev(&self) -> i64 {
        if self.changed() { self.rev() } else { self.begin }
    }

    /// Seals the write into state: bumps the revision if anything changed.
    /// Returns the record to log, or `None` when nothing needs logging.
    pub fn finish(mut self, state: &mut State) -> (Option<Record>, Vec<mvccpb::Event>) {
        if self.changed() {
            state.rev = self.rev();
            self.record.rev = self.rev();
        }
        let r = &self.record;
        if r.changes.is_empty()
            && r.grants.is_empty()
            && r.revokes.is_empty()
            && r.compact.is_none()
            && r.auth.is_none()
        {
            return (None, self.events);
        }
        state.seq += 1;
        self.record.seq = state.seq;
        (Some(self.record), self.events)
    }
}

impl State {
    fn do_put(&mut self, w: &mut Write, key: &[u8], value: &[u8], lease: i64) -> Option<Entry> {
        let rev = w.rev();
        let crate::keyspace::Put { key, new, prev, before } = self.kv.put(key, value, lease, rev, w.sub, w.begin);
        w.sub += 1;
        // etcd sends no previous value with a creation, whatever came before,
        // and otherwise the value as of the revision before this write.
        let readable = w.begin >= self.compact_rev;
        let event_prev = if new.create_rev == rev || !readable { None } else { before.map(|b| b.to_kv(&key)) };
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
        {
            self.leases.detach(p.lease, &key);
        }
        if lease != 0 {
            self.leases.attach(lease, &key);
        }
        w.record.changes.push(Change { key: key.clone(), value: new.value.clone(), lease, delete: false });
        w.events.push(make_event(&key, &new, event_prev));
        prev
    }

    fn do_delete(&mut self, w: &mut Write, key: &Bytes) -> Option<Entry> {
        let rev = w.rev();
        let prev = self.kv.delete(key, rev, w.sub)?;
        let tomb = Entry { mod_rev: rev, create_rev: 0, version: 0, lease: 0, value: Bytes::new(), sub: w.sub };
        w.sub += 1;
        if prev.lease != 0 {
            self.leases.detach(prev.lease, key);
        }
        w.record.changes.push(Change { key: key.clone(), value: Bytes::new(), lease: 0, delete: true });
        let event_prev = self.prev_for_event(key, w.begin);
        w.events.push(make_event(key, &tomb, event_prev));
        Some(prev)
    }

    /// A watch event's previous value is the key as it was before the
    /// write's revision (etcd reads it at revision - 1), not a value put
    /// earlier in the same txn.
    fn prev_for_event(&self, key: &[u8], before: i64) -> Option<mvccpb::KeyValue> {
        if before < self.compact_rev {
            return None;
        }
        let (k, h) = self.kv.get_key_value(key)?;
        h.at(before).map(|e| e.to_kv(k))
    }

    /// The checks etcd makes on a put before applying anything.
    fn check_put(&self, p: &PutRequest) -> Result<(), EtcdError> {
        if (p.ignore_value || p.ignore_lease) && self.kv.get(&p.key).and_then(|h| h.latest()).is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains(p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(())
    }

    fn check_range(&self, r: &RangeRequest, cur: i64) -> Result<(), EtcdError> {
        if r.revision > cur {
            return Err(EtcdError::FutureRev);
        }
        if r.revision > 0 && r.revision < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        Ok(())
    }

    fn apply_put(&mut self, w: &mut Write, p: &PutRequest) -> PutResponse {
        let cur =
            if p.ignore_value || p.ignore_lease { self.kv.get(&p.key).and_then(|h| h.latest()).cloned() } else { None };
        let value = match (&cur, p.ignore_value) {
            (Some(c), true) => c.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&cur, p.ignore_lease) {
            (Some(c), true) => c.lease,
            _ => p.lease,
        };
        let prev = self.do_put(w, &p.key, &value, lease);
        let prev_kv = if p.prev_kv { prev.map(|e| e.to_kv(&p.key)) } else { None };
        PutResponse { header: header(w.rev()), prev_kv }
    }

    /// A standalone put. etcd looks the lease up before the key here,
    /// unlike inside a txn.
    pub fn put(&mut self, w: &mut Write, p: &PutRequest) -> Result<PutResponse, EtcdError> {
        if p.lease != 0 && !self.leases.contains(p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        self.check_put(p)?;
        Ok(self.apply_put(w, p))
    }

    pub fn delete_range(&mut self, w: &mut Write, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys = self.kv.live_in(&d.key, &d.range_end);
        let mut prev_kvs = Vec::new();
        for k in &keys {
            if let Some(prev) = self.do_delete(w, k)
                && d.prev_kv
            {
                prev_kvs.push(prev.to_kv(k));
            }
        }
        DeleteRangeResponse { header: header(w.read_rev()), deleted: keys.len() as i64, prev_kvs }
    }

    /// A txn, as etcd runs it: every compare in the tree is evaluated against
    /// the state before the txn, the chosen branches are checked, and only
    /// then are the ops applied in order.
    pub fn txn(&mut self, w: &mut Write, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let mut path = Vec::new();
        let cur = w.begin;
        self.compare_path(t, cur, &mut path);
        self.check_branch(t, &path, &mut 0, &|s, op| match op {
            Request::RequestPut(p) => s.check_put(p),
            _ => Ok(()),
        })?;
        self.check_branch(t, &path, &mut 0, &|s, op| match op {
            Request::RequestRange(r) => s.check_range(r, cur),
            _ => Ok(()),
        })?;
        let mut resp = self.apply_txn(w, t, &path, &mut 0);
        resp.header = header(w.read_rev());
        Ok(resp)
    }

    fn compare_path(&self, t: &TxnRequest, rev: i64, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c, rev));
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.compare_path(nested, rev, path);
            }
        }
    }

    /// A txn that cannot write (see [`is_read_only`]), run with shared
    /// access at `cur`, the newest revision this reader may see.
    pub fn txn_read(&self, t: &TxnRequest, cur: i64) -> Result<TxnResponse, EtcdError> {
        let mut path = Vec::new();
        self.compare_path(t, cur, &mut path);
        self.check_branch(t, &path, &mut 0, &|s, op| match op {
            Request::RequestRange(r) => s.check_range(r, cur),
            _ => Ok(()),
        })?;
        let mut resp = self.read_txn(t, &path, &mut 0, cur);
        resp.header = header(cur);
        Ok(resp)
    }

    fn read_txn(&self, t: &TxnRequest, path: &[bool], at: &mut usize, cur: i64) -> TxnResponse {
        let ok = path[*at];
        *at += 1;
        let ops: &[RequestOp] = if ok { &t.success } else { &t.failure };
        let responses = ops
            .iter()
            .filter_map(|op| {
                let response = match op.request.as_ref()? {
                    // Checked above, so this cannot fail.
                    Request::RequestRange(r) => Response::ResponseRange(self.range(r, cur).unwrap_or_default()),
                    Request::RequestTxn(nested) => {
                        let mut r = self.read_txn(nested, path, at, cur);
                        r.header = Some(ResponseHeader::default());
                        Response::ResponseTxn(r)
                    }
                    Request::RequestPut(_) | Request::RequestDeleteRange(_) => unreachable!("a read-only txn"),
                };
                Some(ResponseOp { response: Some(response) })
            })
            .collect();
        TxnResponse { header: None, succeeded: ok, responses }
    }

    fn check_branch(
        &self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        check: &dyn Fn(&State, &Request) -> Result<(), EtcdError>,
    ) -> Result<(), EtcdError> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(Request::RequestTxn(nested)) => self.check_branch(nested, path, at, check)?,
                Some(req) => check(self, req)?,
                None => {}
            }
        }
        Ok(())
    }

    fn apply_txn(&mut self, w: &mut Write, t: &TxnRequest, path: &[bool], at: &mut usize) -> TxnResponse {
        let ok = path[*at];
        *at += 1;
        let ops: &[RequestOp] = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    // Checked above, so this cannot fail.
                    let cur = w.read_rev();
                    Response::ResponseRange(self.range(r, cur).unwrap_or_default())
                }
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.apply_put(w, p)),
                Some(Request::RequestDeleteRange(d)) => Response::ResponseDeleteRange(self.delete_range(w, d)),
                Some(Request::RequestTxn(nested)) => {
                    // etcd leaves nested txn headers empty.
                    let mut r = self.apply_txn(w, nested, path, at);
                    r.header = Some(ResponseHeader::default());
                    Response::ResponseTxn(r)
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        TxnResponse { header: None, succeeded: ok, responses }
    }

    /// etcd's compare: a VALUE compare on a missing key is false; any other
    /// target compares against zero. With a range, every key must match.
    fn compare(&self, c: &Compare, rev: i64) -> bool {
        let kvs: Vec<(&Bytes, &Entry)> =
            self.kv.range(&c.key, &c.range_end).filter_map(|(k, h)| Some((k, h.at(rev)?))).collect();
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            if target == CompareTarget::Value {
                return false;
            }
            return compare_one(c, target, None);
        }
        kvs.iter().all(|(_, e)| compare_one(c, target, Some(e)))
    }
}

/// Whether no branch of a txn, nested ones included, can write.
pub(crate) fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => false,
        Some(Request::RequestTxn(nested)) => is_read_only(nested),
        Some(Request::RequestRange(_)) | None => true,
    })
}

fn compare_one(c: &Compare, target: CompareTarget, e: Option<&Entry>) -> bool {
    use std::cmp::Ordering;
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            e.map(|e| &e.value[..]).unwrap_or(&[]).cmp(want)
        }
        _ => {
            let have = e.map_or(0, |e| match target {
                CompareTarget::Version => e.version,
                CompareTarget::Create => e.create_rev,
                CompareTarget::Mod => e.mod_rev,
                CompareTarget::Lease => e.lease,
                CompareTarget::Value => 0,
            });
            let want = match c.target_union {
                Some(TargetUnion::Version(v))
                | Some(TargetUnion::CreateRevision(v))
                | Some(TargetUnion::ModRevision(v))
                | Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

// === leases and compaction ===

impl State {
    pub fn lease_grant(&mut self, w: &mut Write, id: i64, ttl: i64, now: Duration) -> Result<i64, EtcdError> {
        if ttl > roster_api::MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains(id) {
            return Err(EtcdError::LeaseExists);
        }
        let ttl = ttl.max(roster_api::MIN_LEASE_TTL);
        self.leases.grant(id, ttl, now);
        w.record.grants.push(LeaseRec { id, ttl });
        Ok(ttl)
    }

    /// Revokes a lease and deletes its keys, all in one revision.
    pub fn lease_revoke(&mut self, w: &mut Write, id: i64) -> Result<(), EtcdError> {
        let keys = self.leases.get(id).ok_or(EtcdError::LeaseNotFound)?.keys.clone();
        let mut keys: Vec<Bytes> = keys.into_iter().collect();
        keys.sort();
        for k in &keys {
            self.do_delete(w, k);
        }
        self.leases.revoke(id);
        w.record.revokes.push(id);
        Ok(())
    }

    /// Marks history below `rev` unreadable. The entries themselves are
    /// dropped by [`KeySpace::compact`] once the compaction is durable.
    pub fn compact(&mut self, w: &mut Write, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if rev > self.rev {
            return Err(EtcdError::FutureRev);
        }
        self.compact_rev = rev;
        w.record.compact = Some(rev);
        Ok(())
    }
}

// === auth ===

impl State {
    /// Applies an auth change with etcd's rules; logs its effect.
    pub fn auth_change(&mut self, w: &mut Write, c: AuthChange) -> Result<(), EtcdError> {
        let mut tables = (*self.auth).clone();
        if let Some(rec) = tables.apply(c)? {
            self.auth = std::sync::Arc::new(tables);
            w.record.auth = Some(rec);
        }
        Ok(())
    }
}

// === recovery ===

impl State {
    /// Re-applies a logged record. Records hold effects, so this is exact.
    pub fn replay(&mut self, r: &Record, now: Duration) {
        let mut w = Write::new(self);
        for l in &r.grants {
            self.leases.grant(l.id, l.ttl, now);
        }
        for c in &r.changes {
            if c.delete {
                self.do_delete(&mut w, &c.key);
            } else {
                self.do_put(&mut w, &c.key, &c.value, c.lease);
            }
        }
        for id in &r.revokes {
            self.leases.revoke(*id);
        }
        if let Some(a) = &r.auth {
            std::sync::Arc::make_mut(&mut self.auth).replay(a);
        }
        if !r.changes.is_empty() {
            debug_assert_eq!(w.rev(), r.rev, "log revisions are consecutive");
            self.rev = r.rev;
        }
        if let Some(c) = r.compact {
            self.compact_rev = c;
            self.kv.compact(c);
        }
        self.seq = r.seq;
    }

    pub fn snapshot(&self) -> Snapshot {
        let keys = self
            .kv
            .iter()
            .map(|(k, h)| KeyRec {
                key: k.clone(),
                entries: h
                    .entries
                    .iter()
                    .map(|e| EntryRec {
                        mod_rev: e.mod_rev,
                        create_rev: e.create_rev,
                        version: e.version,
                        lease: e.lease,
                        value: e.value.clone(),
                        sub: e.sub,
                    })
                    .collect(),
            })
            .collect();
        let leases = self.leases.ids().map(|(id, ttl)| LeaseRec { id, ttl }).collect();
        let auth = Some(self.auth.to_rec());
        Snapshot { seq: self.seq, rev: self.rev, compact_rev: self.compact_rev, keys, leases, auth }
    }

    /// Rebuilds state from a snapshot. Leases get their full TTL again.
    pub fn restore(s: Snapshot, now: Duration) -> State {
        let auth = std::sync::Arc::new(s.auth.as_ref().map(AuthTables::from_rec).unwrap_or_default());
        let mut st = State { rev: s.rev, compact_rev: s.compact_rev, seq: s.seq, auth, ..State::new() };
        for l in &s.leases {
            st.leases.grant(l.id, l.ttl, now);
        }
        for k in s.keys {
            let entries: Vec<Entry> = k
                .entries
                .into_iter()
                .map(|e| Entry {
                    mod_rev: e.mod_rev,
                    create_rev: e.create_rev,
                    version: e.version,
                    lease: e.lease,
                    value: e.value,
                    sub: e.sub,
                })
                .collect();
            if let Some(last) = entries.last().filter(|e| !e.is_tombstone() && e.lease != 0) {
                st.leases.attach(last.lease, &k.key);
            }
            st.kv.restore(k.key, entries);
        }
        st.kv.restored();
        // A snapshot taken while a range held a compaction back keeps the
        // history below it; drop that now.
        if st.compact_rev > 0 {
            st.kv.compact(st.compact_rev);
        }
        st
    }
}
