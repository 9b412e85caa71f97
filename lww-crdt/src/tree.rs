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
//!
//! Heads skip a prefix their keys share (byte-string keys, up to [`MAX_PREFIX`] bytes): with
//! keys such as `key:000000012345` the first 8 bytes are the same everywhere, and heads of
//! those bytes would send every comparison to the keys' buffers. Two prefixes: the separators'
//! heads skip the one every key of the tree shares, which only shrinks, when a key without it
//! arrives (then every separator's head is computed anew); each chunk's slots skip the one its
//! own keys share, set when the chunk is made (built, split) and shortened when a key without
//! it joins the chunk (its heads are computed anew, at most [`MAX`] of them). So a tree holding
//! several key families (`user:…` and `session:…`, whose shared prefix is empty) still
//! compares most keys by their heads alone within a chunk.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;
use triomphe::Arc;

use crate::Record;
use crate::key::{Key, Probe, Query, head_after};

/// Most slots in one chunk; an insert into a full chunk splits it in two.
pub(crate) const MAX: usize = 128;
/// Slots a chunk grows by when full (its unused room stays below this).
pub(crate) const GROW: usize = 8;
/// Slots per chunk when a tree is built from sorted input: room for a few inserts before a
/// chunk must grow.
const FILL: usize = 112;
/// Longest shared prefix the heads skip.
pub(crate) const MAX_PREFIX: usize = 64;
/// How many more shared bytes make a chunk's heads worth computing anew when it splits.
const LONGER: usize = 4;

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
    fn at(rec: Arc<Record<K, V>>, skip: usize) -> Self {
        Slot { head: head_after(&rec.key, skip), rec }
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

/// A sorted run of at most [`MAX`] slots, whose heads skip the first `skip` bytes every key of
/// the chunk shares, kept inline (`prefix`) so that a search need not read a key to use them.
#[derive(Debug)]
struct Chunk<K, V> {
    skip: usize,
    prefix: [u8; MAX_PREFIX],
    slots: Vec<Slot<K, V>>,
}

impl<K, V> Clone for Chunk<K, V> {
    fn clone(&self) -> Self {
        Chunk { skip: self.skip, prefix: self.prefix, slots: self.slots.clone() }
    }
}

impl<K, V> std::ops::Deref for Chunk<K, V> {
    type Target = Vec<Slot<K, V>>;

    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

impl<K, V> std::ops::DerefMut for Chunk<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.slots
    }
}

impl<K: Key, V> Chunk<K, V> {
    /// A chunk of `slots` (sorted, not empty) whose heads skip `skip_now` bytes. If their keys
    /// no longer all share those bytes, or share [`LONGER`] more, the heads are computed anew
    /// for the prefix they share; otherwise they stay (reading every key to gain a byte or two
    /// would cost more than it saves).
    fn new(mut slots: Vec<Slot<K, V>>, skip_now: usize) -> Self {
        let shared = shared_prefix(&slots);
        if shared >= skip_now && shared < skip_now + LONGER {
            return Chunk::with_skip(slots, skip_now);
        }
        for s in &mut slots {
            s.head = head_after(&s.rec.key, shared);
        }
        Chunk::with_skip(slots, shared)
    }

    /// A chunk of `slots` whose heads already skip the `skip` bytes their keys share.
    fn with_skip(slots: Vec<Slot<K, V>>, skip: usize) -> Self {
        let mut prefix = [0; MAX_PREFIX];
        if let Some(first) = slots.first().and_then(|s| s.rec.key.as_bytes()) {
            prefix[..skip].copy_from_slice(&first[..skip]);
        }
        Chunk { skip, prefix, slots }
    }

    /// Where `key` is (`Ok`) or would go (`Err`) in this chunk. `query` is its query for the
    /// tree's prefix of `tree_skip` bytes, reused when the chunk skips as many.
    fn search<Q>(&self, key: &Q, query: &Query<'_, Q>, tree_skip: usize) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        if self.skip == tree_skip {
            return self.slots.binary_search_by(|s| cmp(s, query));
        }
        // Only byte-string keys have a prefix.
        let Some(bytes) = key.as_bytes() else {
            return self.slots.binary_search_by(|s| cmp(s, query));
        };
        let prefix = &self.prefix[..self.skip];
        if !bytes.starts_with(prefix) {
            // Outside the chunk's prefix: before or after every key of the chunk.
            return Err(if bytes < prefix { 0 } else { self.slots.len() });
        }
        let query = Query::after(key, self.skip);
        self.slots.binary_search_by(|s| cmp(s, &query))
    }

    /// The index of the first slot at or above (`after_equal`: above) the key of `query`.
    fn position<Q>(&self, query: &Query<'_, Q>, tree_skip: usize, after_equal: bool) -> usize
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        match self.search(query.key(), query, tree_skip) {
            Ok(i) if after_equal => i + 1,
            Ok(i) | Err(i) => i,
        }
    }

    /// Inserts `rec` at `at`: with its head for this chunk's prefix if its key has it, else
    /// the prefix shrinks to what the new key shares and every head is computed anew.
    fn insert_rec(&mut self, at: usize, rec: Arc<Record<K, V>>) {
        let fits = self.fits(&rec.key);
        insert_at(&mut self.slots, at, Slot::at(rec, self.skip));
        if !fits {
            let skip = self.skip;
            let slots = std::mem::take(&mut self.slots);
            *self = Chunk::new(slots, skip);
        }
    }

    /// Whether `key` has this chunk's prefix (so its head for the chunk is order-consistent).
    fn fits(&self, key: &K) -> bool {
        key.as_bytes().is_none_or(|b| b.starts_with(&self.prefix[..self.skip]))
    }

    /// Splits off the upper half when over [`MAX`]; both halves take their own prefix.
    fn split(&mut self) -> Option<Chunk<K, V>> {
        if self.slots.len() <= MAX {
            return None;
        }
        let upper = self.slots.split_off(self.slots.len() / 2);
        shrink(&mut self.slots);
        let skip = self.skip;
        let lower = std::mem::take(&mut self.slots);
        *self = Chunk::new(lower, skip);
        Some(Chunk::new(upper, skip))
    }
}

/// The longest prefix (at most [`MAX_PREFIX`]) every key of sorted, non-empty `slots` shares.
fn shared_prefix<K: Key, V>(slots: &[Slot<K, V>]) -> usize {
    span_prefix(&slots[0].rec.key, &slots[slots.len() - 1].rec.key)
}

/// The longest prefix (at most [`MAX_PREFIX`]) every key from `first` to `last` (sorted)
/// shares: theirs, 0 for keys that are not byte strings.
fn span_prefix<K: Key>(first: &K, last: &K) -> usize {
    match (first.as_bytes(), last.as_bytes()) {
        (Some(a), Some(b)) => common_prefix(a, b).min(MAX_PREFIX),
        _ => 0,
    }
}

/// How `a` (a slot) compares with `b` (a query), in tree order; an exact query with the
/// slot's head is its key, without reading the slot's record.
fn cmp<K: Borrow<Q>, V, Q: Ord + ?Sized>(a: &Slot<K, V>, b: &Query<'_, Q>) -> Ordering {
    match a.head.cmp(&b.head()) {
        Ordering::Equal if b.exact => Ordering::Equal,
        Ordering::Equal => a.rec.key.borrow().cmp(b.key()),
        other => other,
    }
}

/// What [`Tree::put`] did.
pub(crate) enum Put<K, V> {
    /// The key was new.
    Inserted,
    /// The record replaced the one held, returned.
    Replaced(Arc<Record<K, V>>),
    /// The tree held the key and kept its record.
    Kept,
}

/// Where a key falls relative to the tree's shared prefix.
enum Place<'q, Q: ?Sized> {
    /// Below every key of the tree (it lacks the prefix and sorts before it).
    Below,
    /// Above every key of the tree.
    Above,
    /// It has the prefix: search with this query.
    Within(Query<'q, Q>),
}

/// Sorted chunks of slots under an index; see the module documentation.
#[derive(Debug)]
pub(crate) struct Tree<K, V> {
    index: BTreeMap<Sep<K>, Chunk<K, V>>,
    len: usize,
    /// The bytes every key starts with, which heads skip (empty for keys that are not byte
    /// strings).
    prefix: Vec<u8>,
}

impl<K, V> Default for Tree<K, V> {
    fn default() -> Self {
        Tree { index: BTreeMap::new(), len: 0, prefix: Vec::new() }
    }
}

impl<K: Clone, V> Clone for Tree<K, V> {
    fn clone(&self) -> Self {
        Tree { index: self.index.clone(), len: self.len, prefix: self.prefix.clone() }
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
        self.index.into_values().flat_map(|c| c.slots)
    }
}

/// The separator of a chunk starting with `slot`, in a tree whose keys share `skip` bytes.
fn sep_of<K: Key + Clone, V>(slot: &Slot<K, V>, skip: usize) -> Sep<K> {
    Sep { head: head_after(&slot.rec.key, skip), key: slot.rec.key.clone() }
}

/// Inserts into a chunk, growing it by [`GROW`] slots when full.
fn insert_at<K, V>(chunk: &mut Vec<Slot<K, V>>, at: usize, slot: Slot<K, V>) {
    if chunk.len() == chunk.capacity() {
        chunk.reserve_exact(GROW);
    }
    chunk.insert(at, slot);
}

/// Gives back a chunk's unused room beyond [`GROW`].
fn shrink<K, V>(chunk: &mut Vec<Slot<K, V>>) {
    if chunk.capacity() > chunk.len() + 2 * GROW {
        chunk.shrink_to(chunk.len() + GROW);
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<K: Key + Clone, V> Tree<K, V> {
    /// Builds a tree from records in strictly increasing key order.
    pub(crate) fn from_sorted(recs: Vec<Arc<Record<K, V>>>) -> Self {
        let len = recs.len();
        // Sorted: the first and the last key share what every key shares.
        let prefix = match (recs.first(), recs.last()) {
            (Some(a), Some(b)) => {
                a.key.as_bytes().map_or_else(Vec::new, |k| k[..span_prefix(&a.key, &b.key)].to_vec())
            }
            _ => Vec::new(),
        };
        let skip = prefix.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(FILL));
        let mut recs = recs.into_iter().peekable();
        while recs.peek().is_some() {
            let run: Vec<Arc<Record<K, V>>> = recs.by_ref().take(FILL).collect();
            let chunk_skip = span_prefix(&run[0].key, &run[run.len() - 1].key);
            let slots: Vec<Slot<K, V>> = run.into_iter().map(|r| Slot::at(r, chunk_skip)).collect();
            let chunk = Chunk::with_skip(slots, chunk_skip);
            chunks.push((sep_of(&chunk[0], skip), chunk));
        }
        // Sorted input: the index is built in bulk too.
        Tree { index: chunks.into_iter().collect(), len, prefix }
    }

    /// Shortens the shared prefix to what `key` shares with it and computes every head anew.
    fn shorten_prefix(&mut self, key: &[u8]) {
        self.shorten_prefix_to(common_prefix(&self.prefix, key));
    }

    /// Moves every slot of `other` over if all its keys are above all of this tree's (a run
    /// of a snapshot, which arrives in key order): whole chunks move, no slot is searched
    /// for. Otherwise hands `other` back.
    pub(crate) fn append(&mut self, mut other: Tree<K, V>) -> Result<(), Tree<K, V>> {
        let last = self.index.last_key_value().and_then(|(_, c)| c.last());
        let first = other.index.first_key_value().and_then(|(_, c)| c.first());
        match (last, first) {
            (_, None) => return Ok(()),
            (None, Some(_)) => {
                *self = other;
                return Ok(());
            }
            (Some(last), Some(first)) if last.rec.key < first.rec.key => {}
            _ => return Err(other),
        }
        let keep = common_prefix(&self.prefix, &other.prefix);
        if keep < self.prefix.len() {
            self.shorten_prefix_to(keep);
        }
        if keep < other.prefix.len() {
            other.shorten_prefix_to(keep);
        }
        self.len += other.len;
        for (sep, chunk) in other.index {
            self.index.insert(sep, chunk);
        }
        Ok(())
    }

    /// Shortens the shared prefix to its first `keep` bytes and computes every separator's
    /// head anew (the chunks keep their own prefixes).
    fn shorten_prefix_to(&mut self, keep: usize) {
        self.prefix.truncate(keep);
        let index = std::mem::take(&mut self.index);
        // The order does not change: the index is rebuilt in bulk.
        self.index = index
            .into_iter()
            .map(|(sep, chunk)| (Sep { head: head_after(&sep.key, keep), key: sep.key }, chunk))
            .collect();
    }

    /// Inserts `rec` if its key is new; otherwise replaces the record held if
    /// `wins(held, rec)`. One search either way.
    pub(crate) fn put(
        &mut self,
        rec: Arc<Record<K, V>>,
        wins: impl FnOnce(&Arc<Record<K, V>>, &Arc<Record<K, V>>) -> bool,
    ) -> Put<K, V> {
        if self.index.is_empty() {
            self.prefix = rec.key.as_bytes().map_or_else(Vec::new, |b| b[..b.len().min(MAX_PREFIX)].to_vec());
            let skip = self.prefix.len();
            let slot = Slot::at(rec, skip);
            self.index.insert(sep_of(&slot, skip), Chunk::with_skip(vec![slot], skip));
            self.len = 1;
            return Put::Inserted;
        }
        if let Some(bytes) = rec.key.as_bytes()
            && !bytes.starts_with(&self.prefix)
        {
            self.shorten_prefix(bytes);
        }
        let skip = self.prefix.len();
        let query = Query::after(&rec.key, skip);
        let probe = &query as &dyn Probe<K>;
        if self.index.first_key_value().is_some_and(|(first, _)| probe < first as &dyn Probe<K>) {
            // Below every key: the first slot of the first chunk, which takes a new separator
            // (separators never exceed their chunk's keys, or the index would misorder chunks).
            let (_, mut chunk) = self.index.pop_first().expect("not empty");
            chunk.insert_rec(0, rec);
            self.len += 1;
            if let Some(upper) = chunk.split() {
                self.index.insert(sep_of(&upper[0], skip), upper);
            }
            self.index.insert(sep_of(&chunk[0], skip), chunk);
            return Put::Inserted;
        }
        let (_, chunk) = self
            .index
            .range_mut::<dyn Probe<K>, _>((Bound::Unbounded, Bound::Included(probe)))
            .next_back()
            .expect("not before every separator: some separator is at most the key");
        let at = match chunk.search(&rec.key, &query, skip) {
            Ok(i) => {
                return if wins(&chunk[i].rec, &rec) {
                    let head = chunk[i].head;
                    Put::Replaced(std::mem::replace(&mut chunk[i], Slot { head, rec }).rec)
                } else {
                    Put::Kept
                };
            }
            Err(i) => i,
        };
        chunk.insert_rec(at, rec);
        self.len += 1;
        if let Some(upper) = chunk.split() {
            self.index.insert(sep_of(&upper[0], skip), upper);
        }
        Put::Inserted
    }
}

impl<K: Key, V> Tree<K, V> {
    /// Where `key` falls: outside the shared prefix (below or above every key), or within it.
    fn place<'q, Q>(&self, key: &'q Q) -> Place<'q, Q>
    where
        Q: Key + ?Sized,
    {
        if let Some(bytes) = key.as_bytes()
            && !bytes.starts_with(&self.prefix)
        {
            // It differs from the prefix, or is a proper prefix of it (hence below).
            return if bytes < &self.prefix[..] { Place::Below } else { Place::Above };
        }
        Place::Within(Query::after(key, self.prefix.len()))
    }
}

/// The query of a key within the prefix.
fn within<'p, 'q, Q: ?Sized>(place: &'p Place<'q, Q>) -> Option<&'p Query<'q, Q>> {
    match place {
        Place::Within(q) => Some(q),
        _ => None,
    }
}

impl<K: Key, V> Tree<K, V> {
    /// The chunk where `probe` is or would be, with its separator.
    fn chunk_of<Q>(&self, probe: &dyn Probe<Q>) -> Option<(&Sep<K>, &Chunk<K, V>)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.index
            .range::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe)))
            .next_back()
            .or_else(|| self.index.first_key_value())
    }

    /// The slot of `key`, if any.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&Slot<K, V>>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let Place::Within(query) = self.place(key) else { return None };
        let probe = &query as &dyn Probe<Q>;
        let (_, chunk) =
            self.index.range::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe))).next_back()?;
        chunk.search(key, &query, self.prefix.len()).ok().map(|i| &chunk[i])
    }

    /// Keeps the slots for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Slot<K, V>) -> bool) {
        let mut len = 0;
        self.index.retain(|_, chunk| {
            chunk.retain(&mut keep);
            shrink(&mut chunk.slots);
            len += chunk.len();
            !chunk.is_empty()
        });
        self.len = len;
    }

    /// Removes the slot of `key` if `remove(slot)` says so; returns whether it did.
    pub(crate) fn remove_if<Q>(&mut self, key: &Q, remove: impl FnOnce(&Slot<K, V>) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let Place::Within(query) = self.place(key) else { return false };
        let probe = &query as &dyn Probe<Q>;
        let found = self
            .index
            .range_mut::<dyn Probe<Q>, _>((Bound::Unbounded, Bound::Included(probe)))
            .next_back()
            .map(|(_, c)| c);
        let Some(chunk) = found else { return false };
        let Ok(i) = chunk.search(key, &query, self.prefix.len()) else { return false };
        if !remove(&chunk[i]) {
            return false;
        }
        chunk.remove(i);
        self.len -= 1;
        shrink(&mut chunk.slots);
        if chunk.is_empty() {
            self.index.retain(|_, c| !c.is_empty());
        }
        true
    }

    /// The slots whose keys fall within the bounds, in key order. Empty when the start is after
    /// the end.
    pub(crate) fn range<Q>(&self, start: Bound<&Q>, end: Bound<&Q>) -> Range<'_, K, V>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let empty = Range { front: [].iter(), back: [].iter(), chunks: None };
        let skip = self.prefix.len();
        // Bounds outside the prefix: below every key or above it.
        let start = match start.map(|k| self.place(k)) {
            Bound::Included(Place::Below) | Bound::Excluded(Place::Below) => Bound::Unbounded,
            Bound::Included(Place::Above) | Bound::Excluded(Place::Above) => return empty,
            other => other,
        };
        let end = match end.map(|k| self.place(k)) {
            Bound::Included(Place::Below) | Bound::Excluded(Place::Below) => return empty,
            Bound::Included(Place::Above) | Bound::Excluded(Place::Above) => Bound::Unbounded,
            other => other,
        };
        let Some(((a_sep, a), lo)) = (match &start {
            Bound::Included(p) => within(p)
                .and_then(|p| self.chunk_of(p as &dyn Probe<Q>).map(|c| (c, c.1.position(p, skip, false)))),
            Bound::Excluded(p) => within(p)
                .and_then(|p| self.chunk_of(p as &dyn Probe<Q>).map(|c| (c, c.1.position(p, skip, true)))),
            Bound::Unbounded => self.index.first_key_value().map(|c| (c, 0)),
        }) else {
            return empty;
        };
        let Some(((b_sep, b), hi)) = (match &end {
            Bound::Included(p) => within(p)
                .and_then(|p| self.chunk_of(p as &dyn Probe<Q>).map(|c| (c, c.1.position(p, skip, true)))),
            Bound::Excluded(p) => within(p)
                .and_then(|p| self.chunk_of(p as &dyn Probe<Q>).map(|c| (c, c.1.position(p, skip, false)))),
            Bound::Unbounded => self.index.last_key_value().map(|c| (c, c.1.len())),
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
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;
    use std::fmt::Debug;

    fn rec<K>(k: K, v: u32) -> Arc<Record<K, u32>> {
        Record::shared(k, Entry::live(v, Timestamp::ZERO))
    }

    fn pairs<K: Clone>(t: &Tree<K, u32>) -> Vec<(K, u32)> {
        t.iter().map(|s| (s.rec.key.clone(), s.rec.entry.value.unwrap())).collect()
    }

    fn check_shape<K: Key + Clone + Debug>(t: &Tree<K, u32>) {
        let mut prev: Option<&K> = None;
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
            assert_eq!(sep.head, head_after(&sep.key, t.prefix.len()));
            assert!(chunk.skip >= t.prefix.len() && chunk.skip <= MAX_PREFIX, "chunk prefix {}", chunk.skip);
            let chunk_prefix = chunk[0].rec.key.as_bytes().map(|b| b[..chunk.skip].to_vec());
            if let Some(p) = &chunk_prefix {
                assert_eq!(&chunk.prefix[..chunk.skip], &p[..], "the inline prefix is the keys'");
            }
            for s in chunk.iter() {
                assert!(prev.is_none_or(|p| *p < s.rec.key), "strictly increasing");
                assert_eq!(s.head, head_after(&s.rec.key, chunk.skip), "head after the chunk's prefix");
                if let Some(b) = s.rec.key.as_bytes() {
                    assert!(b.starts_with(&t.prefix), "every key has the prefix");
                    assert!(
                        b.starts_with(chunk_prefix.as_deref().unwrap()),
                        "every key of a chunk has its prefix"
                    );
                }
                prev = Some(&s.rec.key);
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

    fn bound<K>(kind: u8, k: &K) -> Bound<&K> {
        match kind % 3 {
            0 => Bound::Unbounded,
            1 => Bound::Included(k),
            _ => Bound::Excluded(k),
        }
    }

    /// Byte-string keys that mostly share a long prefix, some of which do not (they shorten
    /// the tree's prefix when they arrive), and some that are prefixes of others.
    fn byte_key(k: u16) -> Vec<u8> {
        match k % 53 {
            0 => format!("a{k}").into_bytes(),
            1 => b"key:0000".to_vec(),
            2 => format!("zz{k}").into_bytes(),
            _ => format!("key:{k:012}").into_bytes(),
        }
    }

    /// Runs `ops` on a tree and on a `BTreeMap` (a put wins with a larger value), then
    /// compares contents, lookups, and `ranges` from both ends.
    fn against_model<K: Key + Clone + Debug>(
        key: impl Fn(u16) -> K,
        start: &Model<u16, u32>,
        ops: &[Op],
        ranges: &[(u16, u16, u8, u8)],
    ) -> Result<(), TestCaseError> {
        let mut model: Model<K, u32> = start.iter().map(|(&k, &v)| (key(k), v)).collect();
        let mut t = Tree::from_sorted(model.iter().map(|(k, &v)| rec(k.clone(), v)).collect());
        check_shape(&t);
        for op in ops {
            match *op {
                Op::Put(k, v) => {
                    let k = key(k);
                    let held = model.get(&k).copied();
                    let got = t.put(rec(k.clone(), v), |old, new| old.entry.value < new.entry.value);
                    match (held, got) {
                        (None, Put::Inserted) => {
                            model.insert(k, v);
                        }
                        (Some(h), Put::Replaced(old)) if v > h => {
                            prop_assert_eq!(old.entry.value, Some(h));
                            model.insert(k, v);
                        }
                        (Some(h), Put::Kept) if v <= h => {}
                        (h, _) => prop_assert!(false, "put {:?} {} over {:?}: wrong outcome", k, v, h),
                    }
                }
                Op::Remove(k) => {
                    let k = key(k);
                    prop_assert_eq!(t.remove_if(&k, |_| true), model.remove(&k).is_some());
                }
                Op::Retain(m) => {
                    let keep: std::collections::BTreeSet<K> =
                        (0..600u16).filter(|k| k % m != 0).map(&key).collect();
                    t.retain(|s| keep.contains(&s.rec.key));
                    model.retain(|k, _| keep.contains(k));
                }
            }
        }
        check_shape(&t);
        prop_assert_eq!(pairs(&t), model.iter().map(|(k, &v)| (k.clone(), v)).collect::<Vec<_>>());
        prop_assert_eq!(t.iter().len(), model.len());
        let back: Vec<K> = t.iter().rev().map(|s| s.rec.key.clone()).collect();
        prop_assert_eq!(back, model.keys().rev().cloned().collect::<Vec<_>>());
        for k in (0..610u16).map(&key) {
            prop_assert_eq!(t.get(&k).map(|s| &s.rec.key), model.get_key_value(&k).map(|(k, _)| k));
        }
        for &(a, b, ka, kb) in ranges {
            let (a, b) = (key(a), key(b));
            let (lo, hi) = (bound(ka, &a), bound(kb, &b));
            let valid = match (lo, hi) {
                (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
                    x < y || (x == y && !matches!((lo, hi), (Bound::Excluded(_), Bound::Excluded(_))))
                }
                _ => true,
            };
            let want: Vec<K> =
                if valid { model.range((lo, hi)).map(|(k, _)| k.clone()).collect() } else { Vec::new() };
            let got: Vec<K> = t.range(lo, hi).map(|s| s.rec.key.clone()).collect();
            prop_assert_eq!(&got, &want, "forward {:?}..{:?}", lo, hi);
            let mut got_back: Vec<K> = t.range(lo, hi).rev().map(|s| s.rec.key.clone()).collect();
            got_back.reverse();
            prop_assert_eq!(&got_back, &want, "backward {:?}..{:?}", lo, hi);
            // Both ends at once meet in the middle.
            let mut r = t.range(lo, hi);
            let (mut both, mut tail) = (Vec::new(), Vec::new());
            while let Some(s) = r.next() {
                both.push(s.rec.key.clone());
                match r.next_back() {
                    Some(s) => tail.push(s.rec.key.clone()),
                    None => break,
                }
            }
            tail.reverse();
            both.extend(tail);
            prop_assert_eq!(both, want);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a `BTreeMap`: puts, removes, retains, lookups and every kind of range from
        /// both ends, after any sequence, including trees built from sorted input.
        #[test]
        fn behaves_as_an_ordered_map(
            start in prop::collection::btree_map(0..600u16, any::<u32>(), 0..300),
            ops in prop::collection::vec(op(), 0..1500),
            ranges in prop::collection::vec((0..610u16, 0..610u16, any::<u8>(), any::<u8>()), 1..20),
        ) {
            against_model(|k| k, &start, &ops, &ranges)?;
        }

        /// The same with byte-string keys that share a prefix, and keys without it that
        /// shorten the tree's prefix at any moment.
        #[test]
        fn byte_keys_with_a_shared_prefix_behave_as_an_ordered_map(
            start in prop::collection::btree_map(0..600u16, any::<u32>(), 0..300),
            ops in prop::collection::vec(op(), 0..1500),
            ranges in prop::collection::vec((0..610u16, 0..610u16, any::<u8>(), any::<u8>()), 1..20),
        ) {
            against_model(byte_key, &start, &ops, &ranges)?;
        }
    }

    #[test]
    fn a_shared_prefix_is_skipped_until_a_key_without_it_arrives() {
        let mut t = Tree::default();
        for k in 0..1_000u16 {
            t.put(rec(format!("key:{k:012}").into_bytes(), 0), |_, _| false);
        }
        assert_eq!(t.prefix, b"key:000000000", "heads come from the distinct bytes");
        for chunk in t.index.values() {
            let heads: std::collections::BTreeSet<u64> = chunk.iter().map(|s| s.head).collect();
            assert_eq!(heads.len(), chunk.len(), "every head of a chunk differs");
        }
        t.put(rec(b"other".to_vec(), 0), |_, _| false);
        assert!(t.prefix.is_empty());
        check_shape(&t);
        // The chunks of `key:…` keep their own prefix: within each, heads still differ. (The
        // chunk `other` joined has the prefix it shares with `key:…` until it splits.)
        for chunk in t.index.values().filter(|c| c.iter().all(|s| s.rec.key.starts_with(b"key:"))) {
            let heads: std::collections::BTreeSet<u64> = chunk.iter().map(|s| s.head).collect();
            assert_eq!(heads.len(), chunk.len(), "distinct heads within a chunk");
            assert!(chunk.skip >= 9, "a chunk of key:… keys skips `key:00000`: {}", chunk.skip);
        }
        assert_eq!(t.get(&b"key:000000000999"[..]).map(|s| s.rec.key.len()), Some(16));
        assert!(t.get(&b"key:0000000009999"[..]).is_none());
        assert!(t.get(&b"k"[..]).is_none());
    }

    #[test]
    fn appending_a_run_of_greater_keys_moves_whole_chunks() {
        let run = |from: u16, to: u16| {
            Tree::from_sorted((from..to).map(|k| rec(format!("key:{k:06}").into_bytes(), 0)).collect())
        };
        let mut t: Tree<Vec<u8>, u32> = Tree::default();
        for (from, to) in [(0, 300), (300, 301), (301, 1_000), (1_000, 1_000), (1_000, 5_000)] {
            assert!(t.append(run(from, to)).is_ok());
            check_shape(&t);
        }
        assert_eq!(t.len(), 5_000);
        assert_eq!(t.prefix, b"key:00");
        let mut other = Tree::default();
        other.put(rec(b"a".to_vec(), 0), |_, _| false);
        let other = t.append(other).expect_err("not above every key");
        assert_eq!(other.len(), 1);
        let back = t.append(run(4_999, 5_010)).expect_err("overlaps");
        assert_eq!(back.len(), 11);
        assert!(t.append(Tree::from_sorted(vec![rec(b"zz".to_vec(), 0)])).is_ok());
        assert!(t.prefix.is_empty());
        check_shape(&t);
        assert_eq!(t.get(&b"key:004321"[..]).map(|s| s.rec.key.clone()), Some(b"key:004321".to_vec()));
    }

    #[test]
    fn sequential_inserts_split_and_keep_chunks_compact() {
        let mut t = Tree::default();
        for k in 0..5_000u16 {
            assert!(matches!(t.put(rec(k, 0), |_, _| false), Put::Inserted));
        }
        for k in (0..5_000u16).rev().step_by(7) {
            assert!(matches!(t.put(rec(k, 1), |_, _| true), Put::Replaced(_)));
        }
        check_shape(&t);
        assert!(t.index.len() >= 5_000 / MAX, "split into chunks");
        let mut back = Tree::default();
        for k in (0..5_000u16).rev() {
            back.put(rec(k, 0), |_, _| false);
        }
        check_shape(&back);
        assert_eq!(pairs(&back).len(), 5_000);
    }
}
