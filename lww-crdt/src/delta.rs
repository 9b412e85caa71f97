//! Deltas and delta buffers.

use triomphe::Arc;

use crate::{Entry, Key, LwwMap, Record};

/// A set of entries to send to other replicas. A delta is itself a (small) [`LwwMap`], so
/// deltas merge into each other and into replicas with the same associative, commutative,
/// idempotent [`LwwMap::merge`].
pub type Delta<K, V> = LwwMap<K, V>;

/// Collects the entries that changed a replica since the last flush, keeping only the newest
/// entry per key, so a burst of writes to one key costs one entry on the wire.
///
/// Record only entries that changed local state (a write that won, or a merge's changed
/// entries via [`LwwMap::merge_with`]); that keeps redundant traffic out of the buffer.
///
/// ```
/// use lww_crdt::{DeltaBuffer, Entry, Hlc, LwwMap};
///
/// let (mut replica, mut clock, mut pending) = (LwwMap::new(), Hlc::new(1), DeltaBuffer::new());
/// for value in ["a", "b", "c"] {
///     let entry = Entry::live(value, clock.now(1_000));
///     if replica.apply("k", entry.clone()) {
///         pending.record("k", entry);
///     }
/// }
/// let delta = pending.flush(); // three writes, one entry to send
/// assert_eq!(delta.entry_count(), 1);
///
/// let mut elsewhere = LwwMap::new();
/// elsewhere.merge(&delta);
/// assert_eq!(elsewhere, replica);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaBuffer<K, V> {
    pending: Delta<K, V>,
}

impl<K, V> Default for DeltaBuffer<K, V> {
    fn default() -> Self {
        DeltaBuffer { pending: LwwMap::new() }
    }
}

impl<K: Key + Clone, V: Ord> DeltaBuffer<K, V> {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an entry; an older entry for the same key is superseded.
    pub fn record(&mut self, key: K, entry: Entry<V>) {
        self.pending.apply(key, entry);
    }

    /// Records a shared record (by reference: the buffer holds a pointer, not a copy); an
    /// older entry for the same key is superseded.
    pub fn record_shared(&mut self, rec: Arc<Record<K, V>>) {
        self.pending.apply_record(rec);
    }

    /// Adds every entry of `delta` (e.g. to merge the buffers of several senders).
    pub fn absorb(&mut self, delta: Delta<K, V>) {
        self.pending.merge_owned(delta);
    }

    /// Number of entries waiting to be flushed.
    pub fn len(&self) -> usize {
        self.pending.entry_count()
    }

    /// Whether nothing changed since the last flush.
    pub fn is_empty(&self) -> bool {
        self.pending.entry_count() == 0
    }

    /// The entries waiting to be flushed.
    pub fn pending(&self) -> &Delta<K, V> {
        &self.pending
    }

    /// Takes everything recorded since the last flush, leaving the buffer empty.
    pub fn flush(&mut self) -> Delta<K, V> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    #[test]
    fn keeps_newest_entry_per_key_and_empties_on_flush() {
        let mut buf = DeltaBuffer::new();
        buf.record("a", Entry::live(1, Timestamp::new(1, 0, 1)));
        buf.record("a", Entry::live(3, Timestamp::new(3, 0, 1)));
        buf.record("a", Entry::live(2, Timestamp::new(2, 0, 1)));
        buf.record("b", Entry::tombstone(Timestamp::new(2, 0, 1)));
        assert_eq!(buf.len(), 2);
        let d = buf.flush();
        assert!(buf.is_empty());
        assert_eq!(d.get("a"), Some(&3));
        assert!(d.get_entry("b").is_some_and(Entry::is_tombstone));
    }
}
