//! Compaction's merge: an old snapshot (sorted by key, read a record at a time) and the log
//! records since (in arrival order) become the entries of a new snapshot, in key order, newest
//! entry per key. Pure: entries in, entries out.
//!
//! The log side is sorted in memory as borrowed entries (keys and values stay in the segment
//! buffers they were read into); the snapshot side streams. So a compaction holds the log
//! segments it compacts and about 80 bytes per log entry, never a copy of the snapshot, and
//! never any state between compactions.

use std::cmp::Ordering;

use crate::codec::RecordEntry;

/// The log entries of a compaction, sorted by key and reduced to the winner per key.
#[derive(Debug)]
pub struct LogRun<'a> {
    entries: Vec<RecordEntry<'a>>,
    next: usize,
}

impl<'a> LogRun<'a> {
    /// Sorts `entries` (any order, any number per key) and keeps the LWW winner of each key.
    pub fn new(entries: Vec<RecordEntry<'a>>) -> Self {
        // The first 16 bytes of the key as a big-endian integer order keys as their bytes do
        // wherever they differ (see `lww_crdt::Key`, which uses 8), so most comparisons stay in
        // the vector: keys often share their first 8 bytes (`user:000…`), rarely 16.
        let mut keyed: Vec<(u128, RecordEntry<'a>)> = entries.into_iter().map(|e| (head(e.key), e)).collect();
        keyed.sort_unstable_by(|(ha, a), (hb, b)| {
            ha.cmp(hb).then_with(|| a.key.cmp(b.key)).then_with(|| b.lww_cmp(a))
        });
        let mut entries: Vec<RecordEntry<'a>> = Vec::with_capacity(keyed.len());
        for (_, e) in keyed {
            // Sorted greatest first within a key: the first one seen wins.
            if entries.last().is_none_or(|last| last.key != e.key) {
                entries.push(e);
            }
        }
        LogRun { entries, next: 0 }
    }

    /// Entries left to merge.
    pub fn remaining(&self) -> usize {
        self.entries.len() - self.next
    }

    /// Merges one batch of snapshot entries (keys strictly increasing, continuing the previous
    /// batches) with the log entries they reach, passing the result to `emit` in key order.
    pub fn merge_batch(&mut self, snapshot: &[RecordEntry<'_>], mut emit: impl FnMut(&RecordEntry<'_>)) {
        for s in snapshot {
            loop {
                match self.entries.get(self.next) {
                    Some(l) if l.key < s.key => {
                        emit(l);
                        self.next += 1;
                    }
                    Some(l) if l.key == s.key => {
                        self.next += 1;
                        emit(if l.lww_cmp(s) == Ordering::Greater { l } else { s });
                        break;
                    }
                    _ => {
                        emit(s);
                        break;
                    }
                }
            }
        }
    }

    /// Passes every log entry not merged yet to `emit` (after the last snapshot batch).
    pub fn finish(&mut self, mut emit: impl FnMut(&RecordEntry<'_>)) {
        for l in &self.entries[self.next..] {
            emit(l);
        }
        self.next = self.entries.len();
    }
}

fn head(key: &[u8]) -> u128 {
    let mut padded = [0u8; 16];
    let n = key.len().min(16);
    padded[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(padded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::{BytesMap, Timestamp};
    use proptest::prelude::*;

    /// A write as the tests build it: key, value (`None` deletes), timestamp, deadline.
    type Write = (Vec<u8>, Option<Vec<u8>>, Timestamp, Option<u64>);

    fn to_map(entries: &[Write]) -> BytesMap {
        entries
            .iter()
            .map(|(k, v, ts, d)| (bytes::Bytes::from(k.clone()), record(k, v, *ts, *d).to_entry()))
            .collect()
    }

    fn record<'a>(k: &'a [u8], v: &'a Option<Vec<u8>>, ts: Timestamp, d: Option<u64>) -> RecordEntry<'a> {
        RecordEntry { key: k, ts, value: v.as_deref(), expires: d.filter(|_| v.is_some()) }
    }

    fn arb_entry() -> impl Strategy<Value = Write> {
        (
            prop::collection::vec(0u8..4, 0..10),
            prop::option::of(prop::collection::vec(0u8..3, 0..3)),
            (0u64..5, 0u32..2, 0u64..3),
            prop::option::of(1u64..3),
        )
            .prop_map(|(k, v, (w, l, r), d)| (k, v, Timestamp::new(w, l, r), d))
    }

    proptest! {
        /// Merging a snapshot with the log since gives what merging every entry into a map does
        /// (ties on timestamps, tombstones and deadlines included).
        #[test]
        fn merge_equals_lww_merge(
            snap in prop::collection::vec(arb_entry(), 0..40),
            log in prop::collection::vec(arb_entry(), 0..40),
            batch in 1usize..7,
        ) {
            let snapshot = to_map(&snap);
            let snap_entries: Vec<RecordEntry<'_>> = snapshot.entries().map(|(k, e)| RecordEntry::of(k, e)).collect();
            let log_entries: Vec<RecordEntry<'_>> = log.iter().map(|(k, v, ts, d)| record(k, v, *ts, *d)).collect();
            let mut run = LogRun::new(log_entries);
            let mut out: Vec<Write> = Vec::new();
            let mut emit =
                |e: &RecordEntry<'_>| out.push((e.key.to_vec(), e.value.map(<[u8]>::to_vec), e.ts, e.expires));
            for chunk in snap_entries.chunks(batch) {
                run.merge_batch(chunk, &mut emit);
            }
            run.finish(&mut emit);
            prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "strictly increasing keys: {:?}", out);
            let mut expected = snapshot.clone();
            expected.merge_owned(to_map(&log));
            prop_assert_eq!(to_map(&out), expected);
        }
    }
}
