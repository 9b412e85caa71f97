//! The last-writer-wins map.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::num::NonZeroU64;
use std::ops::{AddAssign, Bound, RangeBounds};
use triomphe::Arc;

use crate::Timestamp;
use crate::key::Key;
use crate::tree::{Put, Tree};

/// The state of one key: a value, or a tombstone (`None`), the timestamp of the write that
/// produced it, and optionally the deadline after which the value counts as deleted.
///
/// The deadline (`expires`, wall-clock milliseconds since the Unix epoch) is part of the write:
/// every replica that holds the entry holds the same deadline, so every replica agrees on when
/// the key expires. Changing a deadline is a write of the whole entry with a new timestamp, and
/// resolves against other writes of the key by timestamp like any write. An entry whose
/// deadline has passed reads as absent ([`Entry::is_live_at`]); a replica may replace it with a
/// tombstone of the same timestamp ([`Entry::expired`]), which wins over it in a merge, so that
/// it is then reclaimed like any tombstone and never lets an older write of the key back.
///
/// Entries are ordered by timestamp first. Between entries of the same timestamp (which only
/// an expiry or arbitrary input produce: clocks never issue one timestamp twice) a value with a
/// deadline ranks below a tombstone, which ranks below a value without one; then the values
/// and the deadlines are compared. The greater entry wins a merge. The ranks make the tombstone
/// an expired entry turns into win over that entry; the rest makes the winner of any tie
/// independent of delivery order, which is what keeps merge commutative and associative for
/// every input (a peer bug, a fuzzer, a hand-made delta) rather than only for well-behaved
/// callers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry<V> {
    /// When the write happened (the primary sort key).
    pub ts: Timestamp,
    /// The value written, or `None` for a delete.
    pub value: Option<V>,
    /// When the value expires (wall-clock ms since the Unix epoch), if it does. Meaningful
    /// with a value only; a tombstone has none.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub expires: Option<NonZeroU64>,
}

impl<V> Entry<V> {
    /// An entry holding `value`.
    pub fn live(value: V, ts: Timestamp) -> Self {
        Entry { ts, value: Some(value), expires: None }
    }

    /// An entry holding `value` until `deadline_ms` (wall-clock ms since the Unix epoch); a
    /// deadline of 0 means none.
    pub fn expiring(value: V, ts: Timestamp, deadline_ms: u64) -> Self {
        Entry { ts, value: Some(value), expires: NonZeroU64::new(deadline_ms) }
    }

    /// A tombstone: the key was deleted at `ts`.
    pub fn tombstone(ts: Timestamp) -> Self {
        Entry { ts, value: None, expires: None }
    }

    /// Whether this entry records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The deadline of a value that expires (wall-clock ms since the Unix epoch).
    pub fn deadline(&self) -> Option<u64> {
        self.expires.filter(|_| self.value.is_some()).map(NonZeroU64::get)
    }

    /// Whether the entry holds a value that expires.
    pub fn is_expiring(&self) -> bool {
        self.deadline().is_some()
    }

    /// Whether the entry holds a value at `now_ms` (wall-clock ms): not a tombstone, and not
    /// past its deadline (a value expires at its deadline, not after it).
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.deadline().is_none_or(|d| now_ms < d)
    }

    /// Whether the entry holds a value whose deadline has passed at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.deadline().is_some_and(|d| now_ms >= d)
    }

    /// The value at `now_ms`, if the entry is live then.
    pub fn value_at(&self, now_ms: u64) -> Option<&V> {
        self.value.as_ref().filter(|_| self.is_live_at(now_ms))
    }

    /// The tombstone an expired entry turns into: the same timestamp, no value. It is greater
    /// than the entry, so a merge keeps it wherever the two meet.
    pub fn expired(&self) -> Entry<V> {
        Entry::tombstone(self.ts)
    }

    /// Where the entry ranks among entries of the same timestamp (see the type's docs).
    fn rank(&self) -> u8 {
        match (&self.value, self.expires) {
            (Some(_), Some(_)) => 0,
            (None, _) => 1,
            (Some(_), None) => 2,
        }
    }
}

impl<V: Ord> Ord for Entry<V> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts
            .cmp(&other.ts)
            .then_with(|| self.rank().cmp(&other.rank()))
            .then_with(|| self.value.cmp(&other.value))
            .then_with(|| self.expires.cmp(&other.expires))
    }
}

impl<V: Ord> PartialOrd for Entry<V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A key with its entry: what a map holds per key, immutable and shared.
///
/// Maps hold records behind an [`Arc`], so a record written once is held by every map it
/// reaches (the replicas of all the query actors of a server and its gateway, the delta
/// buffers and batches on the way) at the cost of a pointer each: a merge by reference
/// clones the pointer, not the key and the value. A newer write replaces the pointer; the
/// old record is freed when the last map lets go of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record<K, V> {
    /// The key.
    pub key: K,
    /// Its value or tombstone, and when it was written.
    pub entry: Entry<V>,
}

impl<K, V> Record<K, V> {
    /// A shared record of `entry` under `key`.
    pub fn shared(key: K, entry: Entry<V>) -> Arc<Self> {
        Arc::new(Record { key, entry })
    }
}

/// What a merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Entries that changed the state of the receiving map (new keys, newer writes).
    pub changed: usize,
    /// Entries that changed nothing: the map already held them or something newer.
    pub redundant: usize,
    /// The greatest timestamp among the merged entries ([`Timestamp::ZERO`] if there were
    /// none); a replica's clock observes it so its next write wins over everything it has seen.
    pub newest: Timestamp,
}

impl MergeStats {
    /// Total number of entries merged.
    pub fn total(&self) -> usize {
        self.changed + self.redundant
    }
}

impl AddAssign for MergeStats {
    fn add_assign(&mut self, rhs: Self) {
        self.changed += rhs.changed;
        self.redundant += rhs.redundant;
        self.newest = self.newest.max(rhs.newest);
    }
}

/// A last-writer-wins map: `key -> (Option<value>, Timestamp, deadline)`, where `None` is a
/// tombstone.
///
/// Every operation is a merge of one entry: the entry with the greater [`Entry`] order wins.
/// Hence [`LwwMap::merge`] is associative, commutative and idempotent, and any interleaving,
/// duplication or regrouping of the same writes yields the same map.
///
/// Keys are kept sorted, so [`LwwMap::scan_prefix`] costs `O(log n + result)` rather than a scan
/// of the whole map. Each key's entry lives in a shared [`Record`]; the map holds a pointer to
/// it and the key's [`Key::head`] (for byte strings, the first 8 bytes), 16 bytes in sorted
/// chunks under a small index (about 19 bytes per key in all), ordered by head first, so most
/// comparisons never touch a record. Cloning a map, or merging one into another by
/// reference, shares the records instead of copying keys and values.
///
/// ```
/// use lww_crdt::{LwwMap, Timestamp};
///
/// let ts = |ms| Timestamp::new(ms, 0, 1);
/// let mut a: LwwMap<&str, &str> = LwwMap::new();
/// a.put("user:1", "ada", ts(10));
/// a.put("user:2", "grace", ts(11));
/// a.delete("user:2", ts(12)); // a tombstone: it beats every older write of the key
/// assert!(!a.put("user:2", "late", ts(11)), "an older write loses");
///
/// let mut b = LwwMap::new();
/// b.put("user:1", "ada lovelace", ts(20)); // newer
/// let stats = a.merge(&b);
/// assert_eq!((stats.changed, stats.redundant), (1, 0));
/// assert_eq!(a.get("user:1"), Some(&"ada lovelace"));
/// assert_eq!((a.len(), a.tombstones()), (1, 1));
/// ```
pub struct LwwMap<K, V> {
    entries: Tree<K, V>,
    tombstones: usize,
    /// Entries holding a value with a deadline.
    expiring: usize,
}

impl<K: Clone, V> Clone for LwwMap<K, V> {
    fn clone(&self) -> Self {
        LwwMap { entries: self.entries.clone(), tombstones: self.tombstones, expiring: self.expiring }
    }
}

/// Two maps are equal when they hold the same entries under the same keys (whether or not
/// they share the records).
impl<K: PartialEq, V: PartialEq> PartialEq for LwwMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.tombstones == other.tombstones
            && self.entries.iter().zip(other.entries.iter()).all(|(a, b)| {
                Arc::ptr_eq(&a.rec, &b.rec) || (a.rec.key == b.rec.key && a.rec.entry == b.rec.entry)
            })
    }
}

impl<K: Eq, V: Eq> Eq for LwwMap<K, V> {}

/// How an incoming entry compared with what the map held for its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The key was new.
    Inserted,
    /// The incoming entry was greater and replaced the held one.
    Won,
    /// The map held the same entry.
    Tied,
    /// The map held a greater entry.
    Lost,
}

impl Outcome {
    fn changed(self) -> bool {
        matches!(self, Outcome::Inserted | Outcome::Won)
    }
}

impl<K, V> Default for LwwMap<K, V> {
    fn default() -> Self {
        LwwMap { entries: Tree::default(), tombstones: 0, expiring: 0 }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for LwwMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

impl<K, V> LwwMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live (non-deleted) keys.
    pub fn len(&self) -> usize {
        self.entries.len() - self.tombstones
    }

    /// Whether the map holds no live key (it may still hold tombstones).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Number of entries holding a value with a deadline, whether it has passed or not (the
    /// map does not know the time; see [`Entry::is_live_at`]).
    pub fn expiring(&self) -> usize {
        self.expiring
    }

    /// Number of entries, live and tombstones.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Live `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + '_ {
        self.entries.iter().filter_map(|s| s.rec.entry.value.as_ref().map(|v| (&s.rec.key, v)))
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = (&K, &Entry<V>)> + ExactSizeIterator + '_ {
        self.entries.iter().map(|s| (&s.rec.key, &s.rec.entry))
    }

    /// Every record, tombstones included, in key order: to share them with another map or a
    /// buffer ([`LwwMap::apply_record`], [`crate::DeltaBuffer::record_shared`]) without
    /// copying keys or values.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Arc<Record<K, V>>> + ExactSizeIterator + '_ {
        self.entries.iter().map(|s| &s.rec)
    }

    /// Consumes the map into its records, tombstones included, in key order.
    pub fn into_records(self) -> impl Iterator<Item = Arc<Record<K, V>>> {
        self.entries.into_slots().map(|s| s.rec)
    }

    /// Consumes the map into its entries, tombstones included, in key order. Keys and entries
    /// still held by another map are cloned (for `Bytes`, a reference count).
    pub fn into_entries(self) -> impl Iterator<Item = (K, Entry<V>)>
    where
        K: Clone,
        V: Clone,
    {
        self.entries.into_slots().map(|s| {
            let Record { key, entry } = Arc::unwrap_or_clone(s.rec);
            (key, entry)
        })
    }

    /// The newest timestamp in the map, if any entry exists. `O(n)`.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.entries.iter().map(|s| s.rec.entry.ts).max()
    }
}

impl<K: Key, V> LwwMap<K, V> {
    /// The live value of `key`, if any.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.get_entry(key).and_then(|e| e.value.as_ref())
    }

    /// The entry of `key` (a value or a tombstone), if the map knows the key at all.
    pub fn get_entry<Q>(&self, key: &Q) -> Option<&Entry<V>>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.get_record(key).map(|r| &r.entry)
    }

    /// The shared record of `key`, if the map knows the key at all.
    pub fn get_record<Q>(&self, key: &Q) -> Option<&Arc<Record<K, V>>>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.entries.get(key).map(|s| &s.rec)
    }

    /// Whether `key` has a live value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Entries (tombstones included) whose keys fall in `range`, in key order. Used to page
    /// through the map, e.g. for snapshots in bounded chunks. A range that starts after it
    /// ends is empty (where `BTreeMap::range` would panic).
    pub fn range<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = (&K, &Entry<V>)> + '_
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
        R: RangeBounds<Q>,
    {
        self.range_records(range).map(|r| (&r.key, &r.entry))
    }

    /// The records whose keys fall in `range`, in key order (see [`LwwMap::range`]).
    pub fn range_records<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = &Arc<Record<K, V>>> + '_
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
        R: RangeBounds<Q>,
    {
        self.entries.range(range.start_bound(), range.end_bound()).map(|s| &s.rec)
    }

    /// Removes the entry of `key` if it is the tombstone written at `ts` (a newer write of the
    /// key is kept); returns whether it did.
    ///
    /// Only safe once every replica holds that tombstone: a write older than it that arrives
    /// later would otherwise bring the key back. Deciding when is the caller's business.
    pub fn remove_tombstone<Q>(&mut self, key: &Q, ts: Timestamp) -> bool
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let removed = self.entries.remove_if(key, |s| s.rec.entry.is_tombstone() && s.rec.entry.ts == ts);
        self.tombstones -= usize::from(removed);
        removed
    }

    /// Removes tombstones older than `horizon` and returns how many were removed.
    ///
    /// Only safe once every replica has seen every write older than `horizon`: a write older
    /// than a collected tombstone that arrives later would otherwise bring the key back.
    pub fn collect_tombstones(&mut self, horizon: Timestamp) -> usize {
        let before = self.tombstones;
        let mut removed = 0;
        self.entries.retain(|s| {
            let drop = s.rec.entry.is_tombstone() && s.rec.entry.ts < horizon;
            removed += usize::from(drop);
            !drop
        });
        self.tombstones = before - removed;
        removed
    }
}

impl<K: Key + Borrow<[u8]>, V> LwwMap<K, V> {
    /// Live pairs whose key starts with `prefix`, in key order. Costs `O(log n)` plus the
    /// entries (and tombstones) under the prefix, never a scan of the whole map.
    pub fn scan_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a K, &'a V)> + 'a {
        self.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| (*k).borrow().starts_with(prefix))
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v)))
    }
}

impl<K: Key + Clone, V: Ord> LwwMap<K, V> {
    /// Merges one entry; returns whether it changed the map (it was newer than what the map
    /// held for `key`, or the key was new).
    pub fn apply(&mut self, key: K, entry: Entry<V>) -> bool {
        self.apply_record(Record::shared(key, entry))
    }

    /// Merges a shared record (held, if it wins, by reference); returns whether it changed the
    /// map.
    pub fn apply_record(&mut self, rec: Arc<Record<K, V>>) -> bool {
        self.apply_slot(rec).0.changed()
    }

    /// Writes `value` under `key` at `ts`; returns whether the write won (it loses only to a
    /// newer write already merged).
    pub fn put(&mut self, key: K, value: V, ts: Timestamp) -> bool {
        self.apply(key, Entry::live(value, ts))
    }

    /// Deletes `key` at `ts` by writing a tombstone; returns whether the delete won.
    pub fn delete(&mut self, key: K, ts: Timestamp) -> bool {
        self.apply(key, Entry::tombstone(ts))
    }

    /// Merges every entry of `other` (a delta or a whole replica) into `self`, sharing its
    /// records.
    pub fn merge(&mut self, other: &LwwMap<K, V>) -> MergeStats {
        // Merge is commutative, so when `other` is much larger (a join, a resync into a young
        // replica, `self` empty) it is cheaper to copy its tree wholesale (pointers only) and
        // merge our few entries into the copy than to insert its many entries one by one.
        // Copying costs about as much as inserting into a small map, hence the margin.
        if other.entries.len() > self.entries.len().saturating_mul(2) {
            let newest = other.max_timestamp().unwrap_or(Timestamp::ZERO);
            let mine = std::mem::replace(self, other.clone());
            return self.merge_smaller(mine, newest);
        }
        self.merge_records_with(other, |_, _| {})
    }

    /// Merges `other` and calls `on_change` for every entry that changed `self`, with the entry
    /// it replaced (`None` for a new key), e.g. to record it in a [`crate::DeltaBuffer`] or to
    /// keep a digest of the map up to date without reading the map again.
    pub fn merge_with(
        &mut self,
        other: &LwwMap<K, V>,
        mut on_change: impl FnMut(&K, Option<&Entry<V>>, &Entry<V>),
    ) -> MergeStats {
        self.merge_records_with(other, |new, old| on_change(&new.key, old, &new.entry))
    }

    /// As [`LwwMap::merge_with`], handing `on_change` the shared record that changed `self`
    /// (to pass it on by reference) and the entry it replaced.
    pub fn merge_records_with(
        &mut self,
        other: &LwwMap<K, V>,
        mut on_change: impl FnMut(&Arc<Record<K, V>>, Option<&Entry<V>>),
    ) -> MergeStats {
        let mut stats = MergeStats::default();
        for slot in other.entries.iter() {
            stats.newest = stats.newest.max(slot.rec.entry.ts);
            match self.apply_slot(Arc::clone(&slot.rec)) {
                (Outcome::Inserted, _) => {
                    stats.changed += 1;
                    on_change(&slot.rec, None);
                }
                (Outcome::Won, old) => {
                    stats.changed += 1;
                    on_change(&slot.rec, old.as_ref().map(|r| &r.entry));
                }
                (Outcome::Tied | Outcome::Lost, _) => stats.redundant += 1,
            }
        }
        stats
    }

    /// Merges one entry; returns whether it changed the map and the entry it replaced (`None`
    /// for a new key or when nothing changed).
    pub fn apply_replacing(&mut self, key: K, entry: Entry<V>) -> (bool, Option<Entry<V>>)
    where
        V: Clone,
    {
        let (outcome, old) = self.apply_slot(Record::shared(key, entry));
        let old = old.map(|r| match Arc::try_unwrap(r) {
            Ok(r) => r.entry,
            Err(shared) => shared.entry.clone(),
        });
        (outcome.changed(), old)
    }

    /// Merges `other`, consuming it (its records move over, none is copied).
    pub fn merge_owned(&mut self, mut other: LwwMap<K, V>) -> MergeStats {
        // A run of keys above all of ours (a snapshot arrives in key order) moves over whole.
        let (newest, tombstones, expiring, len) =
            (other.max_timestamp(), other.tombstones, other.expiring, other.entries.len());
        match self.entries.append(std::mem::take(&mut other.entries)) {
            Ok(()) => {
                self.tombstones += tombstones;
                self.expiring += expiring;
                return MergeStats { changed: len, redundant: 0, newest: newest.unwrap_or(Timestamp::ZERO) };
            }
            Err(entries) => other.entries = entries,
        }
        // Merge is commutative: adopt the larger tree and merge the smaller into it, so the
        // work is proportional to the smaller map.
        if other.entries.len() > self.entries.len() {
            let newest = other.max_timestamp().unwrap_or(Timestamp::ZERO);
            std::mem::swap(self, &mut other);
            return self.merge_smaller(other, newest);
        }
        let mut stats = MergeStats::default();
        for slot in other.entries.into_slots() {
            stats.newest = stats.newest.max(slot.rec.entry.ts);
            if self.apply_slot(slot.rec).0.changed() {
                stats.changed += 1;
            } else {
                stats.redundant += 1;
            }
        }
        stats
    }

    /// The second half of a merge of `other` into `mine` done the other way round: `self`
    /// already holds `other`'s entries (and `newest` is their greatest timestamp); merges
    /// `mine` into it and reports the stats of merging `other` into `mine`.
    ///
    /// An entry of `other` left `mine` unchanged exactly when `mine` held the same or a greater
    /// entry for its key, i.e. when `mine`'s entry wins or ties here; every other entry of
    /// `other` (a key `mine` lacked, or a newer write) changed it.
    fn merge_smaller(&mut self, mine: LwwMap<K, V>, newest: Timestamp) -> MergeStats {
        let theirs = self.entries.len();
        let mut redundant = 0;
        for slot in mine.entries.into_slots() {
            match self.apply_slot(slot.rec).0 {
                Outcome::Won | Outcome::Tied => redundant += 1,
                Outcome::Inserted | Outcome::Lost => {}
            }
        }
        MergeStats { changed: theirs - redundant, redundant, newest }
    }

    /// Merges one record under an already computed head; on a win, also returns the record it
    /// replaced. One search of the tree. A record already held (the same pointer: a delta that
    /// comes back) is recognised without comparing entries.
    fn apply_slot(&mut self, rec: Arc<Record<K, V>>) -> (Outcome, Option<Arc<Record<K, V>>>) {
        let tombstone = rec.entry.is_tombstone();
        let expiring = rec.entry.is_expiring();
        let mut outcome = Outcome::Inserted;
        let put = self.entries.put(rec, |held, new| {
            if Arc::ptr_eq(held, new) {
                outcome = Outcome::Tied;
                return false;
            }
            outcome = match new.entry.cmp(&held.entry) {
                Ordering::Greater => Outcome::Won,
                Ordering::Equal => Outcome::Tied,
                Ordering::Less => Outcome::Lost,
            };
            outcome == Outcome::Won
        });
        match put {
            Put::Inserted => {
                self.tombstones += usize::from(tombstone);
                self.expiring += usize::from(expiring);
                (Outcome::Inserted, None)
            }
            Put::Replaced(old) => {
                self.tombstones += usize::from(tombstone);
                self.tombstones -= usize::from(old.entry.is_tombstone());
                self.expiring += usize::from(expiring);
                self.expiring -= usize::from(old.entry.is_expiring());
                (Outcome::Won, Some(old))
            }
            Put::Kept => (outcome, None),
        }
    }
}

/// Builds a map from `(key, entry)` pairs: in bulk while the keys come strictly increasing
/// (what every map's own iteration, and so every honest encoder, produces), entry by entry
/// by last-writer-wins from the first key that does not (a repeated or out-of-order key).
///
/// Building the tree from sorted input fills its chunks left to right in `O(n)`, several
/// times faster than `n` inserts, and leaves them nearly full.
#[derive(Debug)]
pub(crate) struct Builder<K, V> {
    /// The strictly increasing records so far; emptied when the builder falls back.
    sorted: Vec<Arc<Record<K, V>>>,
    /// Tombstones in `sorted`.
    tombstones: usize,
    /// Expiring values in `sorted`.
    expiring: usize,
    /// Set once a key broke the order: the map the rest is merged into.
    merged: Option<LwwMap<K, V>>,
}

impl<K, V> Default for Builder<K, V> {
    fn default() -> Self {
        Builder { sorted: Vec::new(), tombstones: 0, expiring: 0, merged: None }
    }
}

impl<K: Key + Clone, V: Ord> Builder<K, V> {
    pub(crate) fn push(&mut self, key: K, entry: Entry<V>) {
        self.push_record(Record::shared(key, entry));
    }

    pub(crate) fn push_record(&mut self, rec: Arc<Record<K, V>>) {
        if let Some(map) = &mut self.merged {
            map.apply_slot(rec);
        } else if self.sorted.last().is_none_or(|last| last.key < rec.key) {
            self.tombstones += usize::from(rec.entry.is_tombstone());
            self.expiring += usize::from(rec.entry.is_expiring());
            self.sorted.push(rec);
        } else {
            let mut map = self.bulk();
            map.apply_slot(rec);
            self.merged = Some(map);
        }
    }

    pub(crate) fn finish(mut self) -> LwwMap<K, V> {
        self.merged.take().unwrap_or_else(|| self.bulk())
    }

    /// The map of the sorted records so far.
    fn bulk(&mut self) -> LwwMap<K, V> {
        let entries = Tree::from_sorted(std::mem::take(&mut self.sorted));
        LwwMap {
            entries,
            tombstones: std::mem::take(&mut self.tombstones),
            expiring: std::mem::take(&mut self.expiring),
        }
    }
}

impl<K: Key + Clone, V: Ord> FromIterator<(K, Entry<V>)> for LwwMap<K, V> {
    /// Builds a map by merging the entries; duplicate keys resolve by last-writer-wins. Input
    /// in strictly increasing key order is built in bulk.
    fn from_iter<I: IntoIterator<Item = (K, Entry<V>)>>(iter: I) -> Self {
        let mut builder = Builder::default();
        for (k, e) in iter {
            builder.push(k, e);
        }
        builder.finish()
    }
}

impl<K: Key + Clone, V: Ord> FromIterator<Arc<Record<K, V>>> for LwwMap<K, V> {
    /// Builds a map of shared records; duplicate keys resolve by last-writer-wins. Input in
    /// strictly increasing key order is built in bulk.
    fn from_iter<I: IntoIterator<Item = Arc<Record<K, V>>>>(iter: I) -> Self {
        let mut builder = Builder::default();
        for rec in iter {
            builder.push_record(rec);
        }
        builder.finish()
    }
}

impl<K: Key + Clone, V: Ord> Extend<(K, Entry<V>)> for LwwMap<K, V> {
    /// Merges the entries one by one.
    fn extend<I: IntoIterator<Item = (K, Entry<V>)>>(&mut self, iter: I) {
        for (k, e) in iter {
            self.apply(k, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ts(wall_ms: u64, replica: u64) -> Timestamp {
        Timestamp::new(wall_ms, 0, replica)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_tombstone_is_removed_only_if_it_is_the_one_named() {
        let mut m = LwwMap::new();
        m.delete(b("gone"), ts(5, 1));
        m.put(b("live"), b("v"), ts(5, 1));
        m.delete(b("newer"), ts(9, 1));
        assert!(!m.remove_tombstone(&b"live"[..], ts(5, 1)), "not a tombstone");
        assert!(!m.remove_tombstone(&b"newer"[..], ts(5, 1)), "another write");
        assert!(!m.remove_tombstone(&b"absent"[..], ts(5, 1)));
        assert_eq!(m.tombstones(), 2);
        assert!(m.remove_tombstone(&b"gone"[..], ts(5, 1)));
        assert_eq!((m.tombstones(), m.entry_count()), (1, 2));
        assert!(m.get_entry(&b"gone"[..]).is_none());
    }

    #[test]
    fn newer_write_wins_older_loses() {
        let mut m = LwwMap::new();
        assert!(m.put(b("k"), b("v1"), ts(10, 1)));
        assert!(!m.put(b("k"), b("old"), ts(5, 1)));
        assert_eq!(m.get(&b"k"[..]), Some(&b("v1")));
        assert!(m.put(b("k"), b("v2"), ts(11, 1)));
        assert_eq!(m.get(&b"k"[..]), Some(&b("v2")));
        assert_eq!((m.len(), m.tombstones()), (1, 0));
    }

    #[test]
    fn delete_leaves_a_tombstone_that_beats_older_puts() {
        let mut m = LwwMap::new();
        m.put(b("k"), b("v"), ts(10, 1));
        assert!(m.delete(b("k"), ts(20, 1)));
        assert_eq!(m.get(&b"k"[..]), None);
        assert_eq!((m.len(), m.tombstones(), m.entry_count()), (0, 1, 1));
        assert!(!m.put(b("k"), b("late"), ts(15, 2)), "an older put must not resurrect a key");
        assert!(m.put(b("k"), b("new"), ts(21, 2)));
        assert_eq!((m.len(), m.tombstones()), (1, 0));
    }

    #[test]
    fn ties_break_by_value_in_any_order() {
        let t = ts(10, 1);
        let mut a = LwwMap::new();
        a.put(b("k"), b("x"), t);
        a.put(b("k"), b("y"), t);
        a.delete(b("k"), t);
        let mut c = LwwMap::new();
        c.delete(b("k"), t);
        c.put(b("k"), b("y"), t);
        c.put(b("k"), b("x"), t);
        assert_eq!(a, c);
        assert_eq!(a.get(&b"k"[..]), Some(&b("y")));
    }

    #[test]
    fn scan_prefix_returns_sorted_live_pairs_under_the_prefix_only() {
        let mut m = LwwMap::new();
        for (i, k) in ["a", "ab", "abc", "abd", "ac", "b", "ab\u{ff}"].iter().enumerate() {
            m.put(b(k), b(k), ts(i as u64 + 1, 1));
        }
        m.delete(b("abd"), ts(100, 1));
        let got: Vec<_> = m.scan_prefix(b"ab").map(|(k, _)| k.clone()).collect();
        assert_eq!(got, vec![b("ab"), b("abc"), b("ab\u{ff}")]);
        assert_eq!(m.scan_prefix(b"").count(), 6);
        assert_eq!(m.scan_prefix(b"zz").count(), 0);
    }

    #[test]
    fn merge_reports_changed_redundant_and_newest() {
        let mut a = LwwMap::new();
        a.put(b("x"), b("1"), ts(10, 1));
        a.put(b("y"), b("1"), ts(10, 1));
        let mut d = LwwMap::new();
        d.put(b("x"), b("2"), ts(20, 2)); // newer: changes
        d.put(b("y"), b("0"), ts(5, 2)); // older: redundant
        d.delete(b("z"), ts(30, 2)); // new key (tombstone): changes
        let mut changed = Vec::new();
        let stats = a.merge_with(&d, |k, _, _| changed.push(k.clone()));
        assert_eq!(stats, MergeStats { changed: 2, redundant: 1, newest: ts(30, 2) });
        assert_eq!(changed, vec![b("x"), b("z")]);
        assert_eq!(a.merge(&d).redundant, 3, "merging again changes nothing");
        let mut e = a.clone();
        assert_eq!(e.merge_owned(d.clone()).changed, 0);
        let mut empty = LwwMap::new();
        let s = empty.merge_owned(a.clone());
        assert_eq!((s.changed, s.newest), (3, ts(30, 2)));
        assert_eq!(empty, a);
        assert_eq!((a.len(), a.tombstones()), (2, 1));
    }

    #[test]
    fn merges_share_records_instead_of_copying_them() {
        let mut writer = LwwMap::new();
        let rec = Record::shared(b("k"), Entry::live(b("v"), ts(10, 1)));
        assert!(writer.apply_record(Arc::clone(&rec)));
        assert!(!writer.apply_record(Arc::clone(&rec)), "the same record again changes nothing");
        let mut buffer = crate::DeltaBuffer::new();
        buffer.record_shared(Arc::clone(&rec));
        let delta = buffer.flush();
        let (mut by_ref, mut owned, mut via_callback) = (LwwMap::new(), LwwMap::new(), LwwMap::new());
        by_ref.put(b("other"), b("x"), ts(1, 2));
        by_ref.put(b("more"), b("x"), ts(1, 2));
        assert_eq!(by_ref.merge(&delta).changed, 1);
        owned.merge_owned(delta.clone());
        let mut seen = Vec::new();
        via_callback.merge_records_with(&delta, |new, old| {
            assert!(old.is_none());
            seen.push(Arc::clone(new));
        });
        for map in [&writer, &by_ref, &owned, &via_callback] {
            assert!(Arc::ptr_eq(map.get_record(&b"k"[..]).unwrap(), &rec), "one allocation for every map");
        }
        assert!(Arc::ptr_eq(&seen[0], &rec));
        // 1 (rec) + writer + delta + by_ref + owned + via_callback + seen.
        assert_eq!(Arc::count(&rec), 7);
        let clone = by_ref.clone();
        assert!(Arc::ptr_eq(clone.get_record(&b"k"[..]).unwrap(), &rec), "a clone shares records");
        // A newer write replaces the pointer in one map only; the old record lives on elsewhere.
        assert!(by_ref.put(b("k"), b("w"), ts(11, 2)));
        assert_eq!(Arc::count(&rec), 7);
        assert_eq!(writer.get(&b"k"[..]), Some(&b("v")));
    }

    #[test]
    fn equality_compares_contents_not_sharing() {
        let mut a = LwwMap::new();
        let mut c = LwwMap::new();
        a.put(b("k"), b("v"), ts(1, 1));
        c.put(b("k"), b("v"), ts(1, 1));
        assert_eq!(a, c, "separate records with equal contents");
        c.put(b("k"), b("v"), ts(2, 1));
        assert_ne!(a, c);
        let mut d = a.clone();
        assert_eq!(a, d);
        d.delete(b("z"), ts(3, 1));
        assert_ne!(a, d);
    }

    #[test]
    fn apply_replacing_returns_the_replaced_entry_shared_or_not() {
        let mut m = LwwMap::new();
        assert_eq!(m.apply_replacing(b("k"), Entry::live(b("1"), ts(1, 1))), (true, None));
        let keep = m.clone();
        let (won, old) = m.apply_replacing(b("k"), Entry::live(b("2"), ts(2, 1)));
        assert!(won);
        assert_eq!(old, Some(Entry::live(b("1"), ts(1, 1))), "still held by the clone");
        let (won, old) = m.apply_replacing(b("k"), Entry::tombstone(ts(3, 1)));
        assert_eq!((won, old), (true, Some(Entry::live(b("2"), ts(2, 1)))));
        assert_eq!(m.apply_replacing(b("k"), Entry::live(b("0"), ts(0, 1))), (false, None));
        assert_eq!((m.tombstones(), keep.tombstones()), (1, 0));
        let entries: Vec<_> = m.into_entries().collect();
        assert_eq!(entries, vec![(b("k"), Entry::tombstone(ts(3, 1)))]);
    }

    #[test]
    fn a_tree_element_is_two_words() {
        assert_eq!(std::mem::size_of::<crate::tree::Slot<bytes::Bytes, bytes::Bytes>>(), 16);
    }

    #[test]
    fn collect_tombstones_below_horizon_only() {
        let mut m = LwwMap::new();
        m.delete(b("old"), ts(10, 1));
        m.delete(b("new"), ts(50, 1));
        m.put(b("live"), b("v"), ts(5, 1));
        assert_eq!(m.collect_tombstones(ts(20, 0)), 1);
        assert_eq!((m.len(), m.tombstones(), m.entry_count()), (1, 1, 2));
        assert!(m.get_entry(&b"old"[..]).is_none());
        assert!(m.get_entry(&b"new"[..]).is_some_and(Entry::is_tombstone));
    }
}
