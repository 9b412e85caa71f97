//! The ordered structure under [`crate::LwwMap`]: sorted chunks of 16-byte slots under a
//! B-tree index.
//!
//! A `BTreeSet` of slots costs about 33 bytes per key: its nodes are 192-byte blocks of 11
//! slots, about 70 % full after random inserts, plus the inner nodes. Here the slots live in
//! sorted `Vec`s of at most [`MAX`] (a chunk), grown [`GROW`] slots at a time so a chunk holds
//! little unused room, and an ordinary `BTreeMap` indexes the chunks by their first key: about
//! 19 bytes per key. A lookup searches the index (a few thousand small entries per million
//! keys, mostly in cache) and then binary-searches one contiguous chunk; an insert moves at
//! most a chunk's slots. Every key of a chunk is at least the chunk's separator and below the
//! next chunk's; a key below every separator is new and becomes the first chunk's first key,
//! and that chunk its separator.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;
use std::sync::Arc;

use crate::Record;
use crate::key::{Key, Probe};

/// Most slots in one chunk; an insert into a full chunk splits it in two.
pub(crate) const MAX: usize = 128;
/// Slots a chunk grows by when full (its unused room stays below this).
pub(crate) const GROW: usize = 8;
/// Slots per chunk when a tree is built from sorted input: room for a few inserts before a
/// chunk must grow.
const FILL: usize = 112;

/// An element of the tree: a shared record and its key's head, inline so that most comparisons
/// never leave the chunk (see [`Key`]). 16 bytes.
#[derive(Debug)]
pub(crate) struct Slot<K, V> {
    pub(crate) head: u64,
    pub(crate) rec: Arc<Record<K, V>>,
}

impl<K, V> Clone for Slot<K, V> {
    fn clone(&self) -> Self {
        Slot { head: self.head, rec: Arc::clone(&self.rec) }
    }
}

impl<K: Key, V> Slot<K, V> {
    pub(crate) fn new(rec: Arc<Record<K, V>>) -> Self {
        Slot { head: rec.key.head(), rec }
    }
}

impl<K: Borrow<Q>, V, Q: ?Sized> Probe<Q> for Slot<K, V> {
    fn head(&self) -> u64 {
        self.head
    }

    fn key(&self) -> &Q {
        self.rec.key.borrow()
    }
}

/// A chunk's separator in the index: a copy of the key of the chunk's first slot when the
/// chunk was made (for `Bytes`, a reference count), and its head.
#[derive(Clone, Debug)]
struct Sep<K> {
    head: u64,
    key: K,
}

impl<K: Key> PartialEq for Sep<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Key> Eq for Sep<K> {}

impl<K: Key> PartialOrd for Sep<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Key> Ord for Sep<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head.cmp(&other.head).then_with(|| self.key.cmp(&other.key))
    }
}

impl<K: Borrow<Q>, Q: ?Sized> Probe<Q> for Sep<K> {
    fn head(&self) -> u64 {
        self.head
    }

    fn key(&self) -> &Q {
        self.key.borrow()
    }
}

impl<'a, K: Borrow<Q> + 'a, Q: ?Sized> Borrow<dyn Probe<Q> + 'a> for Sep<K> {
    fn borrow(&self) -> &(dyn Probe<Q> + 'a) {
        self
    }
}

type Chunk<K, V> = Vec<Slot<K, V>>;

/// How `a` (a slot) compares with `b` (a probe), in tree order.
fn cmp<K: Borrow<Q>, V, Q: Ord + ?Sized>(a: &Slot<K, V>, b: &dyn Probe<Q>) -> Ordering {
    (a as &dyn Probe<Q>).cmp(b)
}

/// What [`Tree::put`] did.
pub(crate) enum Put<K, V> {
    /// The key was new.
    Inserted,
    /// The slot replaced the one held, returned.
    Replaced(Arc<Record<K, V>>),
    /// The tree held the key and kept its slot.
    Kept,
}

/// Sorted chunks of slots under an index; see the module documentation.
#[derive(Debug)]
pub(crate) struct Tree<K, V> {
    index: BTreeMap<Sep<K>, Chunk<K, V>>,
    len: usize,
}

impl<K, V> Default for Tree<K, V> {
    fn default() -> Self {
        Tree { index: BTreeMap::new(), len: 0 }
    }
}

impl<K: Clone, V> Clone for Tree<K, V> {
    fn clone(&self) -> Self {
        Tree { index: self.index.clone(), len: self.len }
    }
}

impl<K, V> Tree<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every slot in key order.
    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        let chunks = self.index.values();
        Iter { front: [].iter(), back: [].iter(), chunks, len: self.len }
    }

    /// Every slot in key order, consuming the tree.
    pub(crate) fn into_slots(self) -> impl Iterator<Item = Slot<K, V>> {
        self.index.into_values().flatten()
    }

    /// Builds a tree from slots in strictly increasing key order.
    pub(crate) fn from_sorted(slots: Vec<Slot<K, V>>) -> Self
    where
        K: Key + Clone,
    {
        let len = slots.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(FILL));
        let mut slots = slots.into_iter().peekable();
        while slots.peek().is_some() {
            let chunk: Chunk<K, V> = slots.by_ref().take(FILL).collect();
            chunks.push((sep_of(&chunk[0]), chunk));
        }
        // Sorted input: the index is built in bulk too.
        Tree { index: chunks.into_iter().collect(), len }
    }
}

/// The separator of a chunk starting with `slot`.
fn sep_of<K: Clone, V>(slot: &Slot<K, V>) -> Sep<K> {
    Sep { head: slot.head, key: slot.rec.key.clone() }
}

/// Inserts into a chunk, growing it by [`GROW`] slots when full.
fn insert_at<K, V>(chunk: &mut Chunk<K, V>, at: usize, slot: Slot<K, V>) {
    if chunk.len() == chunk.capacity() {
        chunk.reserve_exact(GROW);
    }
    chunk.insert(at, slot);
}

/// Gives back a chunk's unused room beyond [`GROW`].
fn shrink<K, V>(chunk: &mut Chunk<K, V>) {
    if chunk.capacity() > chunk.len() + 2 * GROW {
        chunk.shrink_to(chunk.len() + GROW);
    }
}

impl<K: Key, V> Tree<K, V> {
    /// Keeps the slots for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Slot<K, V>) -> bool) {
        let mut len = 0;
        self.index.retain(|_, chunk| {
            chunk.retain(&mut keep);
            shrink(chunk);
            len += chunk.len();
            !chunk.is_empty()
        });
        self.len = len;
    }

    /// Whether the chunk holding `probe`'s place is the first one: `probe` is below every
    /// separator (or the tree is empty).
    fn before_all<Q>(&self, probe: &dyn Probe<Q>) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.index.first_key_value().is_none_or(|(first, _)| probe < first as &dyn Probe<Q>)
    }

    /// The chunk where `probe` is or would be, with its separator.
    fn chunk_of<Q>(&self, probe: &dyn Probe<Q>) -> Option<(&Sep<K>, &Chunk<K, V>)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if self.before_all(probe) {
            self.index.first_key_value()
        } else {
            self.index.range::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe))).next_back()
        }
    }

    /// The slot of `probe`'s key, if any.
    pub(crate) fn get<Q>(&self, probe: &dyn Probe<Q>) -> Option<&Slot<K, V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (_, chunk) =
            self.index.range::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe))).next_back()?;
        chunk.binary_search_by(|s| cmp(s, probe)).ok().map(|i| &chunk[i])
    }

    /// Inserts `slot` if its key is new; otherwise replaces the slot held if `wins(held)`.
    /// One search either way.
    pub(crate) fn put(
        &mut self,
        slot: Slot<K, V>,
        wins: impl FnOnce(&Arc<Record<K, V>>, &Arc<Record<K, V>>) -> bool,
    ) -> Put<K, V>
    where
        K: Clone,
    {
        if self.index.is_empty() {
            self.index.insert(sep_of(&slot), vec![slot]);
            self.len = 1;
            return Put::Inserted;
        }
        if self.before_all(&slot as &dyn Probe<K>) {
            // Below every key: the first slot of the first chunk, which takes a new separator
            // (separators never exceed their chunk's keys, or the index would misorder chunks).
            let (_, mut chunk) = self.index.pop_first().expect("not empty");
            insert_at(&mut chunk, 0, slot);
            self.len += 1;
            if chunk.len() > MAX {
                let upper = chunk.split_off(chunk.len() / 2);
                shrink(&mut chunk);
                self.index.insert(sep_of(&upper[0]), upper);
            }
            self.index.insert(sep_of(&chunk[0]), chunk);
            return Put::Inserted;
        }
        let probe = &slot as &dyn Probe<K>;
        let (_, chunk) = self
            .index
            .range_mut::<dyn Probe<K>, _>((Bound::Unbounded, Bound::Included(probe)))
            .next_back()
            .expect("not before every separator: some separator is at most the key");
        let at = match chunk.binary_search_by(|s| cmp(s, &slot as &dyn Probe<K>)) {
            Ok(i) => {
                return if wins(&chunk[i].rec, &slot.rec) {
                    Put::Replaced(std::mem::replace(&mut chunk[i], slot).rec)
                } else {
                    Put::Kept
                };
            }
            Err(i) => i,
        };
        insert_at(chunk, at, slot);
        self.len += 1;
        if chunk.len() > MAX {
            let upper = chunk.split_off(chunk.len() / 2);
            shrink(chunk);
            self.index.insert(sep_of(&upper[0]), upper);
        }
        Put::Inserted
    }

    /// Removes the slot of `probe`'s key if `remove(slot)` says so; returns whether it did.
    pub(crate) fn remove_if<Q>(
        &mut self,
        probe: &dyn Probe<Q>,
        remove: impl FnOnce(&Slot<K, V>) -> bool,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let found = self
            .index
            .range_mut::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe)))
            .next_back()
            .map(|(_, c)| c);
        let Some(chunk) = found else { return false };
        let Ok(i) = chunk.binary_search_by(|s| cmp(s, probe)) else { return false };
        if !remove(&chunk[i]) {
            return false;
        }
        chunk.remove(i);
        self.len -= 1;
        shrink(chunk);
        if chunk.is_empty() {
            self.index.retain(|_, c| !c.is_empty());
        }
        true
    }

    /// The slots whose keys fall within the bounds, in key order. Empty when the start is after
    /// the end.
    pub(crate) fn range<Q>(&self, start: Bound<&dyn Probe<Q>>, end: Bound<&dyn Probe<Q>>) -> Range<'_, K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let empty = Range { front: [].iter(), back: [].iter(), chunks: None };
        let Some(((a_sep, a), lo)) = (match start {
            Bound::Unbounded => self.index.first_key_value().map(|c| (c, 0)),
            Bound::Included(p) => self.chunk_of(p).map(|c| (c, c.1.partition_point(|s| cmp(s, p).is_lt()))),
            Bound::Excluded(p) => self.chunk_of(p).map(|c| (c, c.1.partition_point(|s| cmp(s, p).is_le()))),
        }) else {
            return empty;
        };
        let Some(((b_sep, b), hi)) = (match end {
            Bound::Unbounded => self.index.last_key_value().map(|c| (c, c.1.len())),
            Bound::Included(p) => self.chunk_of(p).map(|c| (c, c.1.partition_point(|s| cmp(s, p).is_le()))),
            Bound::Excluded(p) => self.chunk_of(p).map(|c| (c, c.1.partition_point(|s| cmp(s, p).is_lt()))),
        }) else {
            return empty;
        };
        match a_sep.cmp(b_sep) {
            Ordering::Greater => empty,
            Ordering::Equal => Range { front: a[lo..hi.max(lo)].iter(), back: [].iter(), chunks: None },
            Ordering::Less => Range {
                front: a[lo..].iter(),
                back: b[..hi].iter(),
                chunks: Some(self.index.range::<Sep<K>, _>((Bound::Excluded(a_sep), Bound::Excluded(b_sep)))),
            },
        }
    }
}

/// Slots of a key range, in key order, from either end.
pub(crate) struct Range<'a, K, V> {
    front: std::slice::Iter<'a, Slot<K, V>>,
    back: std::slice::Iter<'a, Slot<K, V>>,
    /// The chunks between the front's and the back's.
    chunks: Option<btree_map::Range<'a, Sep<K>, Chunk<K, V>>>,
}

impl<'a, K, V> Iterator for Range<'a, K, V> {
    type Item = &'a Slot<K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.front.next() {
                return Some(s);
            }
            match self.chunks.as_mut().and_then(Iterator::next) {
                Some((_, chunk)) => self.front = chunk.iter(),
                None => return self.back.next(),
            }
        }
    }
}

impl<K, V> DoubleEndedIterator for Range<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.back.next_back() {
                return Some(s);
            }
            match self.chunks.as_mut().and_then(DoubleEndedIterator::next_back) {
                Some((_, chunk)) => self.back = chunk.iter(),
                None => return self.front.next_back(),
            }
        }
    }
}

/// Every slot, in key order, from either end.
pub(crate) struct Iter<'a, K, V> {
    front: std::slice::Iter<'a, Slot<K, V>>,
    back: std::slice::Iter<'a, Slot<K, V>>,
    chunks: btree_map::Values<'a, Sep<K>, Chunk<K, V>>,
    len: usize,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = &'a Slot<K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.front.next() {
                self.len -= 1;
                return Some(s);
            }
            match self.chunks.next() {
                Some(chunk) => self.front = chunk.iter(),
                None => {
                    let s = self.back.next()?;
                    self.len -= 1;
                    return Some(s);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.back.next_back() {
                self.len -= 1;
                return Some(s);
            }
            match self.chunks.next_back() {
                Some(chunk) => self.back = chunk.iter(),
                None => {
                    let s = self.front.next_back()?;
                    self.len -= 1;
                    return Some(s);
                }
            }
        }
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Entry;
    use crate::Timestamp;
    use crate::key::Query;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    fn slot(k: u16, v: u32) -> Slot<u16, u32> {
        Slot::new(Record::shared(k, Entry::live(v, Timestamp::ZERO)))
    }

    fn pairs(t: &Tree<u16, u32>) -> Vec<(u16, u32)> {
        t.iter().map(|s| (s.rec.key, s.rec.entry.value.unwrap())).collect()
    }

    fn check_shape(t: &Tree<u16, u32>) {
        let mut prev: Option<u16> = None;
        let mut n = 0;
        for (sep, chunk) in &t.index {
            assert!(!chunk.is_empty() && chunk.len() <= MAX, "chunk of {}", chunk.len());
            assert!(
                chunk.capacity() <= chunk.len() + 2 * GROW,
                "room {} for {}",
                chunk.capacity(),
                chunk.len()
            );
            assert!(chunk[0].rec.key >= sep.key, "a chunk's keys are at least its separator");
            for s in chunk {
                assert!(prev.is_none_or(|p| p < s.rec.key), "strictly increasing");
                prev = Some(s.rec.key);
                n += 1;
            }
        }
        assert_eq!(n, t.len());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u16, u32),
        Remove(u16),
        Retain(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..600u16, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
            3 => (0..600u16).prop_map(Op::Remove),
            1 => (2..9u16).prop_map(Op::Retain),
        ]
    }

    fn bound(kind: u8, k: &u16) -> Bound<&u16> {
        match kind % 3 {
            0 => Bound::Unbounded,
            1 => Bound::Included(k),
            _ => Bound::Excluded(k),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a `BTreeMap`: puts (a larger value wins), removes, retains, every range
        /// from both ends, after any sequence, including trees built from sorted input.
        #[test]
        fn behaves_as_an_ordered_map(
            start in prop::collection::btree_map(0..600u16, any::<u32>(), 0..300),
            ops in prop::collection::vec(op(), 0..1500),
            ranges in prop::collection::vec((0..610u16, 0..610u16, any::<u8>(), any::<u8>()), 1..20),
        ) {
            let mut model: Model<u16, u32> = start.clone();
            let mut t = Tree::from_sorted(start.iter().map(|(&k, &v)| slot(k, v)).collect());
            check_shape(&t);
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let held = model.get(&k).copied();
                        let got = t.put(slot(k, v), |old, new| old.entry.value < new.entry.value);
                        match (held, got) {
                            (None, Put::Inserted) => { model.insert(k, v); }
                            (Some(h), Put::Replaced(old)) if v > h => {
                                prop_assert_eq!(old.entry.value, Some(h));
                                model.insert(k, v);
                            }
                            (Some(h), Put::Kept) if v <= h => {}
                            (h, _) => prop_assert!(false, "put {} {} over {:?}: wrong outcome", k, v, h),
                        }
                    }
                    Op::Remove(k) => {
                        let removed = t.remove_if(&Query::new(&k) as &dyn Probe<u16>, |_| true);
                        prop_assert_eq!(removed, model.remove(&k).is_some());
                    }
                    Op::Retain(m) => {
                        t.retain(|s| s.rec.key % m != 0);
                        model.retain(|k, _| k % m != 0);
                    }
                }
            }
            check_shape(&t);
            prop_assert_eq!(pairs(&t), model.iter().map(|(&k, &v)| (k, v)).collect::<Vec<_>>());
            prop_assert_eq!(t.iter().len(), model.len());
            let back: Vec<u16> = t.iter().rev().map(|s| s.rec.key).collect();
            prop_assert_eq!(back, model.keys().rev().copied().collect::<Vec<_>>());
            for k in 0..610u16 {
                prop_assert_eq!(t.get(&Query::new(&k) as &dyn Probe<u16>).map(|s| s.rec.key), model.get_key_value(&k).map(|(k, _)| *k));
            }
            for (a, b, ka, kb) in ranges {
                let (lo, hi) = (bound(ka, &a), bound(kb, &b));
                let valid = match (lo, hi) {
                    (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
                        x < y || (x == y && !matches!((lo, hi), (Bound::Excluded(_), Bound::Excluded(_))))
                    }
                    _ => true,
                };
                let qa = Query::new(&a);
                let qb = Query::new(&b);
                let pb = |b: Bound<&u16>, q| match b {
                    Bound::Unbounded => Bound::Unbounded,
                    Bound::Included(_) => Bound::Included(q),
                    Bound::Excluded(_) => Bound::Excluded(q),
                };
                let r = t.range(pb(lo, &qa as &dyn Probe<u16>), pb(hi, &qb as &dyn Probe<u16>));
                let got: Vec<u16> = r.map(|s| s.rec.key).collect();
                let want: Vec<u16> = if valid { model.range((lo, hi)).map(|(k, _)| *k).collect() } else { Vec::new() };
                prop_assert_eq!(&got, &want, "forward {:?}..{:?}", lo, hi);
                let r = t.range(pb(lo, &qa as &dyn Probe<u16>), pb(hi, &qb as &dyn Probe<u16>));
                let mut got_back: Vec<u16> = r.rev().map(|s| s.rec.key).collect();
                got_back.reverse();
                prop_assert_eq!(got_back, want, "backward {:?}..{:?}", lo, hi);
                // Both ends at once meet in the middle.
                let mut r = t.range(pb(lo, &qa as &dyn Probe<u16>), pb(hi, &qb as &dyn Probe<u16>));
                let mut both = Vec::new();
                let mut tail = Vec::new();
                while let Some(s) = r.next() {
                    both.push(s.rec.key);
                    match r.next_back() { Some(s) => tail.push(s.rec.key), None => break }
                }
                tail.reverse();
                both.extend(tail);
                let want: Vec<u16> = if valid { model.range((lo, hi)).map(|(k, _)| *k).collect() } else { Vec::new() };
                prop_assert_eq!(both, want);
            }
        }
    }

    #[test]
    fn sequential_inserts_split_and_keep_chunks_compact() {
        let mut t = Tree::default();
        for k in 0..5_000u16 {
            assert!(matches!(t.put(slot(k, 0), |_, _| false), Put::Inserted));
        }
        for k in (0..5_000u16).rev().step_by(7) {
            assert!(matches!(t.put(slot(k, 1), |_, _| true), Put::Replaced(_)));
        }
        check_shape(&t);
        assert!(t.index.len() >= 5_000 / MAX, "split into chunks");
        let mut back = Tree::default();
        for k in (0..5_000u16).rev() {
            back.put(slot(k, 0), |_, _| false);
        }
        check_shape(&back);
        assert_eq!(pairs(&back).len(), 5_000);
    }
}
