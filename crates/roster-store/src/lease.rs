//! The lease table: TTLs, attached keys, and an expiry queue ordered by
//! deadline (the shape of mini-redis's `BTreeSet<(Instant, key)>`).

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Lease {
    pub ttl: i64,
    pub deadline: Duration,
    pub keys: HashSet<Bytes>,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: HashMap<i64, Lease>,
    expiry: BTreeSet<(Duration, i64)>,
}

impl LeaseTable {
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl))
    }

    pub fn grant(&mut self, id: i64, ttl: i64, now: Duration) {
        let deadline = now + Duration::from_secs(ttl.max(0) as u64);
        self.expiry.insert((deadline, id));
        self.leases.insert(id, Lease { ttl, deadline, keys: HashSet::new() });
    }

    /// Removes the lease; returns the keys that were attached to it.
    pub fn revoke(&mut self, id: i64) -> Option<HashSet<Bytes>> {
        let l = self.leases.remove(&id)?;
        self.expiry.remove(&(l.deadline, id));
        Some(l.keys)
    }

    /// Pushes the deadline out by the full TTL; returns the TTL, or 0 when the
    /// lease is unknown or already past its deadline (awaiting revocation).
    pub fn renew(&mut self, id: i64, now: Duration) -> i64 {
        let Some(l) = self.leases.get_mut(&id) else { return 0 };
        if l.deadline <= now {
            return 0;
        }
        self.expiry.remove(&(l.deadline, id));
        l.deadline = now + Duration::from_secs(l.ttl.max(0) as u64);
        self.expiry.insert((l.deadline, id));
        l.ttl
    }

    /// Leases whose deadline has passed, soonest first.
    pub fn expired(&self, now: Duration) -> Vec<i64> {
        self.expiry.iter().take_while(|(d, _)| *d <= now).map(|(_, id)| *id).collect()
    }

    pub fn attach(&mut self, id: i64, key: &Bytes) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.clone());
        }
    }

    pub fn next_deadline(&self) -> Option<Duration> {
        self.expiry.first().map(|(d, _)| *d)
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn expiry_follows_renewals() {
        let mut t = LeaseTable::default();
        t.grant(1, 5, S(0));
        t.grant(2, 10, S(0));
        assert!(t.expired(S(4)).is_empty());
        assert_eq!(t.renew(1, S(4)), 5);
        assert_eq!(t.expired(S(8)), Vec::<i64>::new());
        assert_eq!(t.expired(S(10)), vec![1, 2]);
        assert_eq!(t.renew(1, S(10)), 0, "an expired lease is not renewed");
        assert_eq!(t.renew(7, S(0)), 0, "unknown lease");
    }

    #[test]
    fn revoke_returns_attached_keys() {
        let mut t = LeaseTable::default();
        t.grant(1, 5, S(0));
        t.attach(1, &Bytes::from("a"));
        t.attach(1, &Bytes::from("b"));
        t.detach(1, b"a");
        assert_eq!(t.revoke(1).unwrap(), HashSet::from([Bytes::from("b")]));
        assert!(t.revoke(1).is_none());
        assert!(t.expired(S(100)).is_empty());
    }
}
