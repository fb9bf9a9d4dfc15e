//! The lease table: TTLs, attached keys, and an expiry queue ordered by
//! deadline (the shape of mini-redis's `BTreeSet<(Instant, key)>`).
//!
//! A renewal only stores the new deadline in an atomic, so keepalives run
//! under the shared state lock and never wait for, or hold up, writers. The
//! queue therefore may hold a lease under an older, earlier deadline; the
//! expiry pass, which has the exclusive lock anyway, moves such a lease to
//! its real deadline when it comes up.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Lease {
    pub ttl: i64,
    /// The deadline, in nanoseconds of the store's clock.
    deadline: AtomicU64,
    /// The deadline this lease is filed under in the expiry queue.
    queued: Duration,
    pub keys: HashSet<Bytes>,
}

impl Lease {
    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline.load(Ordering::Acquire))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ttl_of(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
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
        let deadline = now + ttl_of(ttl);
        if let Some(old) = self.leases.get(&id) {
            self.expiry.remove(&(old.queued, id));
        }
        self.expiry.insert((deadline, id));
        self.leases.insert(
            id,
            Lease { ttl, deadline: AtomicU64::new(nanos(deadline)), queued: deadline, keys: HashSet::new() },
        );
    }

    /// Removes the lease; returns the keys that were attached to it.
    pub fn revoke(&mut self, id: i64) -> Option<HashSet<Bytes>> {
        let l = self.leases.remove(&id)?;
        self.expiry.remove(&(l.queued, id));
        Some(l.keys)
    }

    /// Pushes the deadline out by the full TTL; returns the TTL, or 0 when the
    /// lease is unknown or already past its deadline (awaiting revocation).
    /// Needs only shared access.
    pub fn renew(&self, id: i64, now: Duration) -> i64 {
        let Some(l) = self.leases.get(&id) else { return 0 };
        let next = nanos(now + ttl_of(l.ttl));
        let now = nanos(now);
        // Renewals race only with each other: keep the later deadline, and
        // never bring back a lease whose deadline has passed.
        let renewed =
            l.deadline.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d > now).then_some(d.max(next)));
        if renewed.is_ok() { l.ttl } else { 0 }
    }

    /// Leases whose deadline has passed, soonest first. Leases renewed
    /// since they were queued are moved to their real deadline.
    pub fn expired(&mut self, now: Duration) -> Vec<i64> {
        let due: Vec<(Duration, i64)> = self.expiry.iter().take_while(|(d, _)| *d <= now).copied().collect();
        let mut out = Vec::new();
        for (queued, id) in due {
            let Some(l) = self.leases.get_mut(&id) else { continue };
            let real = l.deadline();
            if real <= now {
                out.push((real, id));
            } else {
                self.expiry.remove(&(queued, id));
                self.expiry.insert((real, id));
                l.queued = real;
            }
        }
        out.sort();
        out.into_iter().map(|(_, id)| id).collect()
    }

    pub fn attach(&mut self, id: i64, key: &Bytes) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.clone());
        }
    }

    /// The earliest deadline in the queue; a renewed lease may make it
    /// early, which costs only a pass that finds nothing to revoke.
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
        assert_eq!(t.expired(S(10)), vec![1, 2], "by real deadline: 9, then 10");
        assert_eq!(t.renew(1, S(10)), 0, "an expired lease is not renewed");
        assert_eq!(t.renew(7, S(0)), 0, "unknown lease");
    }

    #[test]
    fn a_renewed_lease_is_requeued_not_expired() {
        let mut t = LeaseTable::default();
        t.grant(1, 5, S(0));
        assert_eq!(t.renew(1, S(3)), 5);
        assert_eq!(t.next_deadline(), Some(S(5)), "the queue still holds the old deadline");
        assert!(t.expired(S(5)).is_empty(), "renewed until 8");
        assert_eq!(t.next_deadline(), Some(S(8)), "moved to its real deadline");
        assert_eq!(t.expired(S(8)), vec![1]);
        t.revoke(1);
        assert_eq!(t.next_deadline(), None, "revoke removes the requeued entry");
    }

    #[test]
    fn expired_leases_come_soonest_first() {
        let mut t = LeaseTable::default();
        t.grant(1, 5, S(0));
        t.grant(2, 3, S(0));
        t.renew(2, S(1)); // real deadline 4, queued at 3
        assert_eq!(t.expired(S(10)), vec![2, 1]);
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
