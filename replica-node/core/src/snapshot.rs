//! Streaming a snapshot straight from a live replica, one bounded chunk at a time.
//!
//! The sender does not copy its replica: it walks it in key order, encodes about
//! [`crate::peer::CHUNK_BYTES`] of entries into a frame, remembers the last key, and returns to
//! its event loop, where deltas and other traffic go on between chunks. The replica keeps
//! changing meanwhile; that is still a correct snapshot for last-writer-wins:
//!
//! - an entry present when the walk started is sent once, with that version or a newer one
//!   (entries are never removed from the gateway's replica, only superseded);
//! - an entry written or merged after the walk passed its key is not in the snapshot, but it
//!   changed the replica after the joiner connected, so it goes to the joiner as a delta
//!   anyway; one written ahead of the walk is sent in both, which merge makes harmless.
//!
//! Pure: the caller passes the replica in and a sink that frames and ships each chunk.
//!
//! [`split`] cuts deltas by the same rule ([`take_chunk`]), so no frame of either kind exceeds
//! the transport's limit.

use std::iter::Peekable;
use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry};

use crate::peer::SnapshotChunkRef;

/// How far a snapshot walk over a replica has got.
#[derive(Debug, Clone)]
pub struct SnapshotWalk {
    /// The request this walk answers (its chunks carry it).
    id: u64,
    /// The last key sent; the next chunk starts after it. `None` before the first chunk.
    after: Option<Bytes>,
    /// Entries in the replica when the walk started (for the joiner's progress bar).
    total: u64,
    done: bool,
}

impl SnapshotWalk {
    /// A walk over `replica` answering request `id`, from the first key after `after` (from
    /// its first key if `None`: a transfer cut short resumes where it stopped).
    pub fn new(replica: &BytesMap, id: u64, after: Option<Bytes>) -> Self {
        SnapshotWalk { id, after, total: replica.entry_count() as u64, done: false }
    }

    /// The request this walk answers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Entries the replica held when the walk started.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the last chunk has been produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The entries of the next chunk: those after the last key sent, in key order, up to
    /// `max_bytes` of keys and values (an entry larger than that travels alone), and whether
    /// it is the last chunk. Does not advance the walk.
    pub fn page<'a>(
        &self,
        replica: &'a BytesMap,
        max_bytes: usize,
    ) -> (Vec<(&'a Bytes, &'a Entry<Bytes>)>, bool) {
        let start = match &self.after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut range = replica.range::<Bytes, _>((start, Bound::Unbounded)).peekable();
        let page = take_chunk(&mut range, max_bytes, |(k, e)| entry_size(k, e));
        let last = range.peek().is_none();
        (page, last)
    }

    /// Hands the next chunk to `sink` (which frames and ships it, as a `PeerMsg::SnapshotChunk`)
    /// and advances the walk; returns how many entries it holds. An error from the sink (an
    /// entry too large for a frame, which the limits on keys and values rule out) leaves the
    /// walk where it was.
    pub fn next_chunk<E>(
        &mut self,
        replica: &BytesMap,
        max_bytes: usize,
        sink: impl FnOnce(SnapshotChunkRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let (entries, last) = self.page(replica, max_bytes);
        sink(SnapshotChunkRef { id: self.id, entries: &entries, total: self.total, last })?;
        if let Some((k, _)) = entries.last() {
            self.after = Some((*k).clone());
        }
        self.done = last;
        Ok(entries.len())
    }
}

/// The one chunk rule: takes entries from `entries` while their `size` adds up to at most
/// `max_bytes`; the first is always taken, so an entry larger than that travels alone.
pub(crate) fn take_chunk<T>(
    entries: &mut Peekable<impl Iterator<Item = T>>,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while let Some(item) = entries.next_if(|item| chunk.is_empty() || bytes + size(item) <= max_bytes) {
        bytes += size(&item);
        chunk.push(item);
    }
    chunk
}

/// Splits `delta` into pieces of about `max_bytes` of keys and values each (an entry larger than
/// that travels alone), so no frame exceeds the transport's limit.
pub fn split(delta: BytesMap, max_bytes: usize) -> Vec<BytesMap> {
    let mut entries = delta.into_records().peekable();
    let mut pieces = Vec::new();
    while entries.peek().is_some() {
        // The records come in key order: each piece is built in bulk.
        let piece: BytesMap =
            take_chunk(&mut entries, max_bytes, |r| entry_size(&r.key, &r.entry)).into_iter().collect();
        pieces.push(piece);
    }
    pieces
}

/// The size estimate of an entry for chunking: key, value and ~32 bytes of timestamp and
/// framing.
pub(crate) fn entry_size(key: &Bytes, entry: &Entry<Bytes>) -> usize {
    key.len() + entry.value.as_ref().map_or(0, Bytes::len) + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::Timestamp;

    fn key(i: u32) -> Bytes {
        Bytes::from(format!("k{i:05}"))
    }

    fn replica(n: u32, wall: u64) -> BytesMap {
        let mut m = BytesMap::new();
        for i in 0..n {
            m.put(key(i), Bytes::from(vec![b'v'; 50]), Timestamp::new(wall, 0, 1));
        }
        m
    }

    /// The chunks a walk handed its sink, as owned maps.
    type Chunks = Vec<(BytesMap, u64, bool)>;

    /// Advances `walk` by one chunk into `out`; returns its entry count.
    fn step(walk: &mut SnapshotWalk, r: &BytesMap, max_bytes: usize, out: &mut Chunks) -> usize {
        let sink = |c: SnapshotChunkRef<'_>| {
            let mut m = BytesMap::new();
            for (k, e) in c.entries {
                m.apply((*k).clone(), (*e).clone());
            }
            out.push((m, c.total, c.last));
            Ok::<(), ()>(())
        };
        walk.next_chunk(r, max_bytes, sink).unwrap()
    }

    fn chunks(out: &Chunks) -> Chunks {
        out.clone()
    }

    #[test]
    fn a_walk_sends_every_entry_exactly_once_in_bounded_chunks() {
        let r = replica(1_000, 10);
        let mut walk = SnapshotWalk::new(&r, 1, None);
        let mut out = Chunks::new();
        while !walk.is_done() {
            step(&mut walk, &r, 2_000, &mut out);
        }
        let got = chunks(&out);
        assert!(got.len() > 10, "{} chunks", got.len());
        let mut seen = Vec::new();
        for (i, (entries, total, last)) in got.iter().enumerate() {
            assert_eq!(*total, 1_000);
            assert_eq!(*last, i == got.len() - 1);
            let size: usize = entries.entries().map(|(k, e)| entry_size(k, e)).sum();
            assert!(size <= 2_000, "chunk {i} holds {size} bytes");
            seen.extend(entries.entries().map(|(k, _)| k.clone()));
        }
        let all: Vec<_> = r.entries().map(|(k, _)| k.clone()).collect();
        assert_eq!(seen, all, "every key once, in order");
    }

    #[test]
    fn changes_between_chunks_are_sent_with_the_newest_version_or_left_to_deltas() {
        let mut r = replica(100, 10);
        let mut walk = SnapshotWalk::new(&r, 1, None);
        let mut out = Chunks::new();
        step(&mut walk, &r, 1_000, &mut out);
        let first = chunks(&out).remove(0).0;
        let sent_up_to = first.entries().next_back().unwrap().0.clone();
        // Between chunks: overwrite a key already sent and one not yet sent, delete one ahead,
        // add keys behind and ahead of the walk.
        let behind = first.entries().next().unwrap().0.clone();
        r.put(behind.clone(), Bytes::from_static(b"new"), Timestamp::new(20, 0, 1));
        r.put(key(90), Bytes::from_static(b"new"), Timestamp::new(20, 0, 1));
        r.delete(key(95), Timestamp::new(21, 0, 1));
        r.put(Bytes::from_static(b"a-behind"), Bytes::from_static(b"x"), Timestamp::new(22, 0, 1));
        r.put(Bytes::from_static(b"z-ahead"), Bytes::from_static(b"x"), Timestamp::new(22, 0, 1));
        while !walk.is_done() {
            step(&mut walk, &r, 1_000, &mut out);
        }
        let mut received = BytesMap::new();
        let mut count = 0;
        for (entries, _, _) in chunks(&out) {
            count += entries.entry_count();
            received.merge_owned(entries);
        }
        assert_eq!(count, received.entry_count(), "no entry sent twice");
        // Everything present at the start arrived, ahead of the walk in its newest version.
        for i in 0..100 {
            assert!(received.get_entry(&key(i)).is_some(), "{i}");
        }
        assert_eq!(received.get(&key(90)[..]), Some(&Bytes::from_static(b"new")));
        assert!(received.get_entry(&key(95)[..]).is_some_and(Entry::is_tombstone));
        assert!(received.get(&b"z-ahead"[..]).is_some());
        // Behind the walk: the old version and no new key; both changed the replica after
        // the request, so the joiner gets them as deltas.
        assert!(behind <= sent_up_to);
        assert_eq!(received.get(&behind[..]), first.get(&behind[..]));
        assert!(received.get_entry(&b"a-behind"[..]).is_none());
    }

    #[test]
    fn a_resumed_walk_sends_only_the_keys_after_the_last_one_received() {
        let r = replica(100, 10);
        let mut walk = SnapshotWalk::new(&r, 7, Some(key(59)));
        let mut out = Chunks::new();
        while !walk.is_done() {
            step(&mut walk, &r, 1_000, &mut out);
        }
        let keys: Vec<Bytes> = out.iter().flat_map(|(m, _, _)| m.entries().map(|(k, _)| k.clone())).collect();
        assert_eq!(keys, (60..100).map(key).collect::<Vec<_>>());
        assert_eq!(walk.id(), 7);
    }

    #[test]
    fn an_empty_replica_is_one_empty_last_chunk_and_a_huge_entry_travels_alone() {
        let empty = BytesMap::new();
        let mut walk = SnapshotWalk::new(&empty, 1, None);
        let mut out = Chunks::new();
        assert_eq!(step(&mut walk, &empty, 1_000, &mut out), 0);
        assert!(walk.is_done());
        let got = chunks(&out);
        assert_eq!((got.len(), got[0].0.entry_count(), got[0].2), (1, 0, true));

        let mut r = replica(3, 1);
        r.put(key(1), Bytes::from(vec![0; 5_000]), Timestamp::new(2, 0, 1));
        let walk = SnapshotWalk::new(&r, 1, None);
        let (page, last) = walk.page(&r, 1_000);
        assert_eq!((page.len(), last), (1, false));
        let mut walk = walk;
        let mut out = Chunks::new();
        let sizes: Vec<usize> =
            std::iter::from_fn(|| (!walk.is_done()).then(|| step(&mut walk, &r, 1_000, &mut out))).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }
}
