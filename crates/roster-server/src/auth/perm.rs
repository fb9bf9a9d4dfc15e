//! The permission index: per user, the union of every key range its roles
//! may read and may write, merged into disjoint spans in a `BTreeMap`. A
//! check is one map lookup plus one `BTreeMap` range step, O(log n) in the
//! number of grants, never a scan. The index is rebuilt from the store's
//! auth tables whenever they change.

use bytes::Bytes;
use roster_api::authpb::permission::Type;
use roster_store::AuthTables;
use std::collections::{BTreeMap, HashMap};

/// Disjoint, non-adjacent spans `[start, end)`; an empty end is unbounded.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct KeySet {
    spans: BTreeMap<Bytes, Bytes>,
}

/// `a <= b` for span ends, where empty means +infinity.
fn end_le(a: &[u8], b: &[u8]) -> bool {
    b.is_empty() || (!a.is_empty() && a <= b)
}

/// The interval a request names: a single key when `range_end` is empty,
/// everything from `key` on when it is "\0".
pub(crate) fn interval(key: &[u8], range_end: &[u8]) -> (Bytes, Bytes) {
    let key = Bytes::copy_from_slice(key);
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key, Bytes::from(end))
        }
        [0] => (key, Bytes::new()),
        end => (key, Bytes::copy_from_slice(end)),
    }
}

// === impl KeySet ===

impl KeySet {
    /// Adds `[start, end)`, merging it with every span it overlaps or touches.
    pub(crate) fn insert(&mut self, start: Bytes, end: Bytes) {
        if !end.is_empty() && end <= start {
            return;
        }
        let (mut start, mut end) = (start, end);
        // The span starting at or before ours may reach into it, or touch it.
        if let Some((s, e)) = self.spans.range(..=start.clone()).next_back()
            && (e.is_empty() || e[..] >= start[..])
        {
            start = s.clone();
            if !end_le(e, &end) {
                end = e.clone();
            }
        }
        // Swallow every span that starts inside (or right at the end of) ours.
        loop {
            let next = self.spans.range(start.clone()..).next().map(|(s, e)| (s.clone(), e.clone()));
            let Some((s, e)) = next else { break };
            if !end.is_empty() && s > end {
                break;
            }
            self.spans.remove(&s);
            if !end_le(&e, &end) {
                end = e;
            }
        }
        self.spans.insert(start, end);
    }

    /// Whether `[start, end)` lies inside the set.
    pub(crate) fn covers(&self, start: &[u8], end: &[u8]) -> bool {
        match self.spans.range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(start))).next_back() {
            Some((_, e)) => end_le(end, e) && (e.is_empty() || start < &e[..]),
            None => false,
        }
    }
}

/// What one user may touch.
#[derive(Debug, Default)]
pub(crate) struct UserPerms {
    /// Holds the root role: everything is allowed.
    pub root: bool,
    /// The roles granted, sorted (the store keeps them so).
    pub roles: Vec<String>,
    pub read: KeySet,
    pub write: KeySet,
}

/// Every user's merged permissions at one auth revision.
#[derive(Debug, Default)]
pub(crate) struct PermIndex {
    pub enabled: bool,
    pub revision: u64,
    pub users: HashMap<String, UserPerms>,
}

// === impl PermIndex ===

impl PermIndex {
    pub(crate) fn build(t: &AuthTables) -> PermIndex {
        let mut users = HashMap::with_capacity(t.users.len());
        for (name, u) in &t.users {
            let mut p = UserPerms { roles: u.roles.clone(), ..Default::default() };
            for role in &u.roles {
                if role == roster_store::auth::ROOT {
                    p.root = true;
                }
                let Some(r) = t.roles.get(role) else { continue };
                for perm in &r.key_permission {
                    let (s, e) = interval(&perm.key, &perm.range_end);
                    let ty = Type::try_from(perm.perm_type).unwrap_or(Type::Read);
                    if matches!(ty, Type::Read | Type::Readwrite) {
                        p.read.insert(s.clone(), e.clone());
                    }
                    if matches!(ty, Type::Write | Type::Readwrite) {
                        p.write.insert(s, e);
                    }
                }
            }
            users.insert(name.clone(), p);
        }
        PermIndex { enabled: t.enabled, revision: t.revision, users }
    }

    /// Whether `user` was granted `role` (etcd's HasRole).
    pub(crate) fn holds(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(spans: &[(&str, &str)]) -> KeySet {
        let mut s = KeySet::default();
        for (a, b) in spans {
            s.insert(Bytes::from(a.to_string()), Bytes::from(b.to_string()));
        }
        s
    }

    fn spans(s: &KeySet) -> Vec<(String, String)> {
        s.spans.iter().map(|(a, b)| (String::from_utf8_lossy(a).into(), String::from_utf8_lossy(b).into())).collect()
    }

    #[test]
    fn overlapping_and_touching_grants_merge() {
        let s = set(&[("b", "d"), ("a", "b"), ("c", "f"), ("x", "z")]);
        assert_eq!(spans(&s), vec![("a".into(), "f".into()), ("x".into(), "z".into())]);
        let s = set(&[("m", ""), ("a", "c"), ("n", "p")]);
        assert_eq!(spans(&s), vec![("a".into(), "c".into()), ("m".into(), "".into())]);
        let s = set(&[("a", "c"), ("b", "")]);
        assert_eq!(spans(&s), vec![("a".into(), "".into())]);
    }

    #[test]
    fn covers_needs_one_span_to_hold_the_whole_range() {
        let s = set(&[("a", "c"), ("e", "g")]);
        assert!(s.covers(b"a", b"c"));
        assert!(s.covers(b"b", b"b\0"));
        assert!(!s.covers(b"b", b"f"), "the gap c..e is not granted");
        assert!(!s.covers(b"c", b"c\0"), "the end is exclusive");
        assert!(!s.covers(b"0", b"a"));
        assert!(!s.covers(b"e", b""), "an open range needs an open grant");
        let open = set(&[("k", "")]);
        assert!(open.covers(b"k", b""));
        assert!(open.covers(b"zz", b"zzz"));
        assert!(!open.covers(b"j", b"k\0"));
    }

    #[test]
    fn single_keys_and_from_key_requests_map_to_intervals() {
        assert_eq!(interval(b"k", b""), (Bytes::from_static(b"k"), Bytes::from_static(b"k\0")));
        assert_eq!(interval(b"k", b"\0"), (Bytes::from_static(b"k"), Bytes::new()));
        let s = set(&[("k", "k\0")]);
        let (a, b) = interval(b"k", b"");
        assert!(s.covers(&a, &b));
        let (a, b) = interval(b"k", b"l");
        assert!(!s.covers(&a, &b));
    }
}
