//! Which watchers a key belongs to, without looking at the others.
//!
//! Single-key watchers sit in a hash map by key. Range watchers (prefixes,
//! from-key, `[key, end)`) sit in an interval tree: a treap ordered by
//! `(start, watcher)` whose nodes also know which node of their subtree has
//! the greatest end. A point query skips every subtree that ends at or before
//! the key and every right subtree that starts after it, so it visits
//! O(log n + matches) nodes. Nodes live in one arena with a free list; links
//! are indices, so there is no unsafe code and no pointer chasing through
//! separate allocations.

use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The end of a watched range: a key (exclusive), or none (`range_end = "\0"`).
/// Declared in this order so that `Unbounded` sorts after every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum End {
    Key(Bytes),
    Unbounded,
}

impl End {
    /// True when a range with this end still covers `k`.
    fn covers(&self, k: &[u8]) -> bool {
        match self {
            End::Key(e) => &e[..] > k,
            End::Unbounded => true,
        }
    }
}

const NIL: u32 = u32::MAX;

struct Node<T> {
    start: Bytes,
    end: End,
    item: T,
    prio: u64,
    left: u32,
    right: u32,
    /// The node of this subtree with the greatest end.
    max: u32,
}

/// Watchers by the keys they cover. `T` names a watcher (stream and id).
pub(crate) struct Index<T> {
    single: HashMap<Bytes, HashSet<T>>,
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    root: u32,
    /// xorshift state for treap priorities; fixed seed, so runs repeat.
    seed: u64,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index { single: HashMap::new(), nodes: Vec::new(), free: Vec::new(), root: NIL, seed: 0x9e37_79b9_7f4a_7c15 }
    }
}

// === impl Index ===

impl<T: Copy + Ord + Hash> Index<T> {
    pub fn insert_key(&mut self, key: Bytes, item: T) {
        self.single.entry(key).or_default().insert(item);
    }

    pub fn remove_key(&mut self, key: &[u8], item: T) {
        if let Some(set) = self.single.get_mut(key) {
            set.remove(&item);
            if set.is_empty() {
                self.single.remove(key);
            }
        }
    }

    /// Adds a range watcher for `[start, end)`; `(start, item)` must be unique.
    pub fn insert_range(&mut self, start: Bytes, end: End, item: T) {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let node = Node { start, end, item, prio: self.seed, left: NIL, right: NIL, max: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.nodes[i as usize].max = i;
        let start = self.node(i).start.clone();
        let (l, r) = self.split(self.root, &start, item);
        let l = self.merge(l, i);
        self.root = self.merge(l, r);
    }

    pub fn remove_range(&mut self, start: &[u8], item: T) {
        self.root = self.remove_at(self.root, start, item);
    }

    /// Calls `f` once for every watcher that covers `key`.
    pub fn for_each_match(&self, key: &[u8], mut f: impl FnMut(T)) {
        if let Some(set) = self.single.get(key) {
            set.iter().for_each(|&t| f(t));
        }
        self.stab(self.root, key, &mut f);
    }

    pub fn is_empty(&self) -> bool {
        self.single.is_empty() && self.root == NIL
    }

    fn node(&self, i: u32) -> &Node<T> {
        &self.nodes[i as usize]
    }

    fn cmp(&self, a: u32, start: &[u8], item: T) -> Ordering {
        let n = self.node(a);
        (&n.start[..], n.item).cmp(&(start, item))
    }

    /// Recomputes `max` of `t` from its children.
    fn pull(&mut self, t: u32) {
        let n = self.node(t);
        let mut best = t;
        for c in [n.left, n.right] {
            if c != NIL {
                let m = self.node(c).max;
                if self.node(m).end > self.node(best).end {
                    best = m;
                }
            }
        }
        self.nodes[t as usize].max = best;
    }

    /// Splits `t` into the nodes ordered before `(start, item)` and the rest.
    fn split(&mut self, t: u32, start: &[u8], item: T) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.cmp(t, start, item) == Ordering::Less {
            let (l, r) = self.split(self.node(t).right, start, item);
            self.nodes[t as usize].right = l;
            self.pull(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.node(t).left, start, item);
            self.nodes[t as usize].left = r;
            self.pull(t);
            (l, t)
        }
    }

    /// Joins two treaps where every node of `a` orders before every node of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.node(a).prio > self.node(b).prio {
            let r = self.merge(self.node(a).right, b);
            self.nodes[a as usize].right = r;
            self.pull(a);
            a
        } else {
            let l = self.merge(a, self.node(b).left);
            self.nodes[b as usize].left = l;
            self.pull(b);
            b
        }
    }

    fn remove_at(&mut self, t: u32, start: &[u8], item: T) -> u32 {
        if t == NIL {
            return NIL;
        }
        match self.cmp(t, start, item) {
            Ordering::Equal => {
                let (l, r) = (self.node(t).left, self.node(t).right);
                // Drop the key's bytes now rather than when the slot is reused.
                self.nodes[t as usize].start = Bytes::new();
                self.nodes[t as usize].end = End::Unbounded;
                self.free.push(t);
                self.merge(l, r)
            }
            Ordering::Less => {
                let r = self.remove_at(self.node(t).right, start, item);
                self.nodes[t as usize].right = r;
                self.pull(t);
                t
            }
            Ordering::Greater => {
                let l = self.remove_at(self.node(t).left, start, item);
                self.nodes[t as usize].left = l;
                self.pull(t);
                t
            }
        }
    }

    fn stab(&self, t: u32, key: &[u8], f: &mut impl FnMut(T)) {
        if t == NIL {
            return;
        }
        let n = self.node(t);
        if !self.node(n.max).end.covers(key) {
            return;
        }
        self.stab(n.left, key, f);
        if &n.start[..] <= key {
            if n.end.covers(key) {
                f(n.item);
            }
            self.stab(n.right, key, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> Bytes {
        Bytes::from(vec![b'a' + i % 8, b'a' + i / 8 % 8])
    }

    #[derive(Debug, Clone)]
    enum Op {
        Single(u8, u32),
        Range(u8, Option<u8>, u32),
        Remove(usize),
        Query(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..64, 0u32..20).prop_map(|(k, i)| Op::Single(k, i)),
            (0u8..64, proptest::option::of(0u8..64), 0u32..20).prop_map(|(k, e, i)| Op::Range(k, e, i)),
            (0usize..1000).prop_map(Op::Remove),
            (0u8..64).prop_map(Op::Query),
        ]
    }

    proptest! {
        /// The index answers exactly what a scan of every watcher answers.
        #[test]
        fn index_matches_a_scan_of_all_watchers(ops in proptest::collection::vec(op(), 1..300)) {
            let mut idx: Index<u32> = Index::default();
            // (start, end: None = single key, Some(End)), item
            let mut all: Vec<(Bytes, Option<End>, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Single(k, i) => {
                        if !all.iter().any(|(s, e, it)| e.is_none() && *s == key(k) && *it == i) {
                            idx.insert_key(key(k), i);
                            all.push((key(k), None, i));
                        }
                    }
                    Op::Range(k, e, i) => {
                        let end = e.map_or(End::Unbounded, |e| End::Key(key(e)));
                        if end <= End::Key(key(k)) || all.iter().any(|(s, e, it)| e.is_some() && *s == key(k) && *it == i) {
                            continue;
                        }
                        idx.insert_range(key(k), end.clone(), i);
                        all.push((key(k), Some(end), i));
                    }
                    Op::Remove(n) if !all.is_empty() => {
                        let (s, e, i) = all.swap_remove(n % all.len());
                        match e {
                            None => idx.remove_key(&s, i),
                            Some(_) => idx.remove_range(&s, i),
                        }
                    }
                    Op::Remove(_) => {}
                    Op::Query(k) => {
                        let q = key(k);
                        let mut got = Vec::new();
                        idx.for_each_match(&q, |t| got.push(t));
                        let mut want: Vec<u32> = all
                            .iter()
                            .filter(|(s, e, _)| match e {
                                None => *s == q,
                                Some(end) => *s <= q && end.covers(&q),
                            })
                            .map(|(_, _, i)| *i)
                            .collect();
                        got.sort();
                        want.sort();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            for (s, e, i) in all.drain(..) {
                match e {
                    None => idx.remove_key(&s, i),
                    Some(_) => idx.remove_range(&s, i),
                }
            }
            prop_assert!(idx.is_empty(), "removing every watcher empties the index");
        }
    }
}
