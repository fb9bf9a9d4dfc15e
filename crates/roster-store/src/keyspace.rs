//! The in-memory MVCC keyspace: every key with its history of revisions.
//!
//! A key's history is a list of entries ordered by revision. A delete leaves
//! a tombstone, which ends one generation of the key; a later put starts the
//! next. Reading "at revision R" takes the newest entry at or below R.

use bytes::Bytes;
use roster_api::mvccpb::{self, event::EventType};
use roster_api::range::KeyRange;
use std::collections::BTreeMap;
use std::ops::Bound;

/// A change's place in revision order: (revision, sub-revision).
pub type ChangePos = (i64, u32);

/// One revision of one key. `version == 0` marks a tombstone.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
    /// Position of this change within its revision; orders a txn's events.
    pub sub: u32,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn to_kv(&self, key: &Bytes) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: key.clone(),
            create_revision: self.create_rev,
            mod_revision: self.mod_rev,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

/// What a put did.
pub(crate) struct Put {
    pub key: Bytes,
    pub new: Entry,
    /// The live entry it replaced.
    pub prev: Option<Entry>,
    /// The live entry as of the revision before the write.
    pub before: Option<Entry>,
}

/// The entries of one key, oldest first.
#[derive(Debug, Default, Clone)]
pub(crate) struct History {
    pub entries: Vec<Entry>,
}

impl History {
    /// The live entry at `rev`, if the key existed then.
    pub fn at(&self, rev: i64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.mod_rev <= rev);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (!e.is_tombstone()).then_some(e)
    }

    pub fn latest(&self) -> Option<&Entry> {
        self.entries.last().filter(|e| !e.is_tombstone())
    }
}

#[derive(Debug, Default)]
pub(crate) struct KeySpace {
    keys: BTreeMap<Bytes, History>,
    /// Keys alive at the newest revision.
    live: u64,
    /// Every change since the compaction point as `(revision, sub, key)`,
    /// in that order: watch catch-up reads a window of revisions from here,
    /// so its cost follows the changes in the window, not the keys in the
    /// watched range. The key shares the map's allocation.
    changes: Vec<(i64, u32, Bytes)>,
}

impl KeySpace {
    pub fn live_keys(&self) -> u64 {
        self.live
    }

    pub fn get(&self, key: &[u8]) -> Option<&History> {
        self.keys.get(key)
    }

    pub fn get_key_value(&self, key: &[u8]) -> Option<(&Bytes, &History)> {
        self.keys.get_key_value(key)
    }

    /// Histories of the keys in `[key, range_end)` in etcd's encoding.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a History)> + 'a> {
        self.range_after(key, range_end, None)
    }

    /// The same, but only the keys after `after` when given: a range read
    /// in pieces resumes here.
    pub fn range_after<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        after: Option<&'a [u8]>,
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a History)> + 'a> {
        let start = |from: &'a [u8]| match after {
            Some(a) if a >= from => Bound::Excluded(a),
            _ => Bound::Included(from),
        };
        match KeyRange::new(key, range_end) {
            KeyRange::Single(_) if after.is_some() => Box::new(std::iter::empty()),
            KeyRange::Single(k) => Box::new(self.keys.get_key_value(k).into_iter()),
            KeyRange::From(from) => Box::new(self.keys.range::<[u8], _>((start(from), Bound::Unbounded))),
            KeyRange::Between(_, to) if after.is_some_and(|a| a >= to) => Box::new(std::iter::empty()),
            KeyRange::Between(from, to) if from < to => {
                Box::new(self.keys.range::<[u8], _>((start(from), Bound::Excluded(to))))
            }
            KeyRange::Between(..) => Box::new(std::iter::empty()),
        }
    }

    /// Each key after `after`'s last entry at or below `compact` if it is
    /// not a tombstone, as (revision, sub, key): the history before the
    /// compaction point that etcd's backend keeps. Visits at most `max`
    /// keys; also returns the last key visited, `None` at the end.
    pub fn kept_at(&self, compact: i64, after: Option<&Bytes>, max: usize) -> (Vec<(i64, u32, Bytes)>, Option<Bytes>) {
        let from = match after {
            Some(a) => Bound::Excluded(a.as_ref()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (k, h) in self.keys.range::<[u8], _>((from, Bound::Unbounded)).take(max) {
            let below = h.entries.partition_point(|e| e.mod_rev <= compact);
            if let Some(e) = below.checked_sub(1).map(|i| &h.entries[i]).filter(|e| !e.is_tombstone()) {
                out.push((e.mod_rev, e.sub, k.clone()));
            }
            last = Some(k.clone());
        }
        (out, last)
    }

    /// Up to `max` changes after `after` (revision, sub) and at or below
    /// revision `upto`, in revision order, each with its key and entry;
    /// also the position of the last one, to resume after (`None` at the
    /// end).
    pub fn changes_after(&self, after: (i64, u32), upto: i64, max: usize) -> (Vec<(Bytes, Entry)>, Option<ChangePos>) {
        let start = self.changes.partition_point(|c| (c.0, c.1) <= after);
        let slice: Vec<&(i64, u32, Bytes)> =
            self.changes[start..].iter().take_while(|c| c.0 <= upto).take(max).collect();
        let last = slice.last().map(|c| (c.0, c.1));
        let found = slice
            .into_iter()
            .filter_map(|(rev, sub, key)| Some((key.clone(), self.entry_at(key, *rev, *sub)?.clone())))
            .collect();
        (found, last)
    }

    /// The entry `key` got at revision `rev`, change `sub`.
    pub fn entry_at(&self, key: &[u8], rev: i64, sub: u32) -> Option<&Entry> {
        let h = self.keys.get(key)?;
        let i = h.entries.partition_point(|e| (e.mod_rev, e.sub) < (rev, sub));
        h.entries.get(i).filter(|e| e.mod_rev == rev && e.sub == sub)
    }

    /// Writes `value` at `rev`; returns the stored key (shared rather than
    /// copied), the new entry, the live entry it replaced, and the live
    /// entry as of revision `before`. The key and value are copied so that
    /// they do not pin the request buffer they were decoded from.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64, rev: i64, sub: u32, before: i64) -> Put {
        // One lookup for an existing key; two only when inserting.
        let found = self.keys.range_mut::<[u8], _>((Bound::Included(key), Bound::Included(key))).next();
        let (stored, hist) = match found {
            Some((k, h)) => (k.clone(), h),
            None => {
                let k = Bytes::copy_from_slice(key);
                let h = self.keys.entry(k.clone()).or_insert_with(|| History { entries: Vec::with_capacity(1) });
                (k, h)
            }
        };
        let prev = hist.latest().cloned();
        let before = hist.at(before).cloned();
        let (create_rev, version) = match &prev {
            Some(p) => (p.create_rev, p.version + 1),
            None => (rev, 1),
        };
        if prev.is_none() {
            self.live += 1;
        }
        let e = Entry { mod_rev: rev, create_rev, version, lease, value: Bytes::copy_from_slice(value), sub };
        hist.entries.push(e.clone());
        self.changes.push((rev, sub, stored.clone()));
        Put { key: stored, new: e, prev, before }
    }

    /// Tombstones a live key at `rev`; returns the entry it ended.
    pub fn delete(&mut self, key: &[u8], rev: i64, sub: u32) -> Option<Entry> {
        let (stored, hist) = self.keys.range_mut::<[u8], _>((Bound::Included(key), Bound::Included(key))).next()?;
        let prev = hist.latest()?.clone();
        hist.entries.push(Entry { mod_rev: rev, create_rev: 0, version: 0, lease: 0, value: Bytes::new(), sub });
        self.changes.push((rev, sub, stored.clone()));
        self.live -= 1;
        Some(prev)
    }

    /// Live keys in the range at the newest revision.
    pub fn live_in(&self, key: &[u8], range_end: &[u8]) -> Vec<Bytes> {
        self.range(key, range_end).filter(|(_, h)| h.latest().is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// Drops history that no read at or after `rev` can see: for each key,
    /// everything before its newest entry at or below `rev`, and that entry
    /// too when it is a tombstone.
    pub fn compact(&mut self, rev: i64) {
        self.keys.retain(|_, h| {
            let i = h.entries.partition_point(|e| e.mod_rev <= rev);
            if i > 0 {
                let keep_from = if h.entries[i - 1].is_tombstone() { i } else { i - 1 };
                h.entries.drain(..keep_from);
                h.entries.shrink_to_fit();
            }
            !h.entries.is_empty()
        });
        // Catch-up never reads below the compaction point.
        let below = self.changes.partition_point(|c| c.0 < rev);
        self.changes.drain(..below);
    }

    /// Events for keys in the range with revisions in `[from, to]`, in
    /// revision order, cut after `limit.revs` revisions or once they hold
    /// about `limit.bytes`, but always whole revisions and at least one with
    /// events. Returns the events and the revision they cover up to: every
    /// event of the range in `[from, covered]` is in them. `prev_floor` is
    /// the oldest revision a previous value may be read at.
    ///
    /// The work follows the changes in the window (from the change index),
    /// not the number of keys in the range, so a watcher far behind costs one
    /// bounded slice per call however wide its range.
    pub fn events(
        &self,
        range: &OwnedRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        prev_floor: i64,
        limit: EventLimit,
    ) -> (Vec<mvccpb::Event>, i64) {
        let last = to.min(from.saturating_add(i64::try_from(limit.revs.max(1) - 1).unwrap_or(i64::MAX)));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut at = self.changes.partition_point(|c| c.0 < from);
        while let Some(&(rev, _, _)) = self.changes.get(at).filter(|c| c.0 <= last) {
            let end = at + self.changes[at..].partition_point(|c| c.0 == rev);
            let mut these = Vec::new();
            let mut size = 0;
            for (_, sub, key) in &self.changes[at..end] {
                if !range.contains(key) {
                    continue;
                }
                // Compaction may have dropped a tombstone the index names.
                let Some(hist) = self.keys.get(key) else { continue };
                let i = hist.entries.partition_point(|e| (e.mod_rev, e.sub) < (rev, *sub));
                let Some(e) = hist.entries.get(i).filter(|e| e.mod_rev == rev && e.sub == *sub) else { continue };
                // The value at revision - 1: a txn may have written the key
                // twice in one revision.
                let creation = !e.is_tombstone() && e.create_rev == e.mod_rev;
                let prev = if prev_kv && !creation && rev > prev_floor {
                    hist.at(rev - 1).map(|p| p.to_kv(key))
                } else {
                    None
                };
                size += EVENT_OVERHEAD
                    + key.len()
                    + e.value.len()
                    + prev.as_ref().map_or(0, |p| p.key.len() + p.value.len());
                these.push(make_event(key, e, prev));
            }
            if !these.is_empty() {
                if !out.is_empty() && bytes + size > limit.bytes {
                    return (out, rev - 1);
                }
                bytes += size;
                out.extend(these);
            }
            at = end;
        }
        (out, last)
    }

    /// Every key with its full retained history, for snapshots.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &History)> {
        self.keys.iter()
    }

    /// Restores one key from a snapshot.
    /// Restores one key from a snapshot; call [`KeySpace::restored`] once
    /// every key is in.
    pub fn restore(&mut self, key: Bytes, entries: Vec<Entry>) {
        if entries.last().is_some_and(|e| !e.is_tombstone()) {
            self.live += 1;
        }
        self.changes.extend(entries.iter().map(|e| (e.mod_rev, e.sub, key.clone())));
        self.keys.insert(key, History { entries });
    }

    /// Puts the change index in order after a restore.
    pub fn restored(&mut self) {
        self.changes.sort_unstable_by_key(|c| (c.0, c.1));
    }
}

/// The event a history entry stands for. Delete events carry only the key
/// and the revision, as etcd's do.
pub(crate) fn make_event(key: &Bytes, e: &Entry, prev_kv: Option<mvccpb::KeyValue>) -> mvccpb::Event {
    if e.is_tombstone() {
        mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue { key: key.clone(), mod_revision: e.mod_rev, ..Default::default() }),
            prev_kv,
        }
    } else {
        mvccpb::Event { r#type: EventType::Put as i32, kv: Some(e.to_kv(key)), prev_kv }
    }
}

/// How much one call of [`KeySpace::events`] may gather.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventLimit {
    pub revs: usize,
    pub bytes: usize,
}

/// Bytes an event costs beyond its key and values: revisions, versions,
/// lease and framing, roughly.
const EVENT_OVERHEAD: usize = 48;

/// A key range owned by a watcher.
#[derive(Debug, Clone)]
pub(crate) struct OwnedRange {
    pub key: Bytes,
    pub end: Bytes,
}

impl OwnedRange {
    pub fn contains(&self, k: &[u8]) -> bool {
        KeyRange::new(&self.key, &self.end).contains(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KeySpace {
        fn put_at(&mut self, key: &[u8], value: &[u8], lease: i64, rev: i64, sub: u32) {
            self.put(key, value, lease, rev, sub, rev - 1);
        }
    }

    #[test]
    fn history_reads_at_revision_and_hides_tombstones() {
        let mut ks = KeySpace::default();
        ks.put_at(b"a", b"1", 0, 2, 0);
        ks.put_at(b"a", b"2", 0, 3, 0);
        ks.delete(b"a", 4, 0);
        ks.put_at(b"a", b"3", 0, 5, 0);
        let h = ks.get(b"a").unwrap();
        assert!(h.at(1).is_none());
        assert_eq!(h.at(2).unwrap().value, "1");
        assert_eq!(h.at(3).unwrap().version, 2);
        assert!(h.at(4).is_none());
        let e = h.at(5).unwrap();
        assert_eq!((e.create_rev, e.version), (5, 1), "a put after a delete starts a new generation");
        assert_eq!(ks.live_keys(), 1);
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut ks = KeySpace::default();
        ks.put_at(b"a", b"1", 0, 2, 0);
        ks.put_at(b"a", b"2", 0, 3, 0);
        ks.put_at(b"b", b"1", 0, 4, 0);
        ks.delete(b"b", 5, 0);
        ks.put_at(b"a", b"3", 0, 6, 0);
        ks.compact(5);
        let a = ks.get(b"a").unwrap();
        assert_eq!(a.entries.len(), 2, "entry at 3 is still the value at 5");
        assert_eq!(a.at(5).unwrap().value, "2");
        assert!(ks.get(b"b").is_none(), "a key deleted at or before the compaction is gone");
    }

    #[test]
    fn inverted_and_from_key_ranges() {
        let mut ks = KeySpace::default();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            ks.put_at(k.as_bytes(), b"v", 0, 2 + i as i64, 0);
        }
        assert_eq!(ks.range(b"c", b"a").count(), 0);
        assert_eq!(ks.range(b"b", b"b").count(), 0);
        assert_eq!(ks.range(b"b", b"\0").count(), 2);
        assert_eq!(ks.range(b"a", b"c").count(), 2);
    }

    #[test]
    fn events_are_in_revision_order_with_prev() {
        let mut ks = KeySpace::default();
        ks.put_at(b"b", b"1", 0, 2, 0);
        ks.put_at(b"a", b"1", 0, 3, 0);
        ks.put_at(b"b", b"2", 0, 3, 1);
        ks.delete(b"a", 4, 0);
        let all = OwnedRange { key: Bytes::from_static(b"\0"), end: Bytes::from_static(b"\0") };
        let no_limit = EventLimit { revs: usize::MAX, bytes: usize::MAX };
        let (evs, covered) = ks.events(&all, 3, 4, true, 0, no_limit);
        assert_eq!(covered, 4);
        let keys: Vec<_> =
            evs.iter().map(|e| (e.kv.as_ref().unwrap().key.clone(), e.kv.as_ref().unwrap().mod_revision)).collect();
        assert_eq!(keys, vec![(Bytes::from("a"), 3), (Bytes::from("b"), 3), (Bytes::from("a"), 4)]);
        assert!(evs[0].prev_kv.is_none(), "a creation has no previous value");
        assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, "1");
        assert_eq!(evs[2].r#type, EventType::Delete as i32);
        assert_eq!(evs[2].prev_kv.as_ref().unwrap().value, "1");
        let (evs, covered) = ks.events(&all, 2, 4, false, 0, EventLimit { revs: 1, bytes: usize::MAX });
        assert_eq!((evs.len(), covered), (1, 2), "stops after limit.revs revisions");
    }

    #[test]
    fn events_are_cut_at_whole_revisions_by_bytes() {
        let mut ks = KeySpace::default();
        let big = vec![b'x'; 1000];
        for rev in 2..12 {
            // Two keys per revision, as a txn writes them.
            ks.put_at(b"a", &big, 0, rev, 0);
            ks.put_at(b"b", &big, 0, rev, 1);
        }
        let all = OwnedRange { key: Bytes::from_static(b"\0"), end: Bytes::from_static(b"\0") };
        let (evs, covered) = ks.events(&all, 2, 11, false, 0, EventLimit { revs: 1000, bytes: 4500 });
        let revs: Vec<i64> = evs.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
        assert_eq!(revs, vec![2, 2, 3, 3], "about 4.5 KB: two whole revisions");
        assert_eq!(covered, 3);
        let (evs, covered) = ks.events(&all, 2, 11, false, 0, EventLimit { revs: 1000, bytes: 10 });
        assert_eq!((evs.len(), covered), (2, 2), "a revision larger than the limit still goes out whole");
        let (evs, covered) = ks.events(&all, 12, 20, false, 0, EventLimit { revs: 1000, bytes: 10 });
        assert_eq!((evs.len(), covered), (0, 20), "nothing in the window: all of it is covered");
    }
}
