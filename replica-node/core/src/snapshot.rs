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
//! Pure: the caller passes the replica in and ships the encoded bytes.

use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry};
use net_quic::{EncodedFrames, FrameError};

use crate::peer::{MAX_FRAME, SnapshotChunkRef};

/// How far a snapshot walk over a replica has got.
#[derive(Debug, Clone)]
pub struct SnapshotWalk {
    /// The last key sent; the next chunk starts after it. `None` before the first chunk.
    after: Option<Bytes>,
    /// Entries in the replica when the walk started (for the joiner's progress bar).
    total: u64,
    done: bool,
}

impl SnapshotWalk {
    /// A walk over `replica` from its first key.
    pub fn new(replica: &BytesMap) -> Self {
        SnapshotWalk { after: None, total: replica.entry_count() as u64, done: false }
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
        let mut page = Vec::new();
        let mut size = 0;
        // The same size rule as `gateway::split`, so a chunk never exceeds the frame limit.
        while let Some((k, e)) =
            range.next_if(|(k, e)| page.is_empty() || size + entry_size(k, e) <= max_bytes)
        {
            size += entry_size(k, e);
            page.push((k, e));
        }
        let last = range.peek().is_none();
        (page, last)
    }

    /// Encodes the next chunk as one `PeerMsg::SnapshotChunk` frame into `out` and advances
    /// the walk; returns how many entries it holds. An error (an entry too large for a frame,
    /// which the limits on keys and values rule out) leaves the walk where it was.
    pub fn next_chunk(
        &mut self,
        replica: &BytesMap,
        max_bytes: usize,
        out: &mut EncodedFrames,
    ) -> Result<usize, FrameError> {
        let (entries, last) = self.page(replica, max_bytes);
        out.push(&SnapshotChunkRef { entries: &entries, total: self.total, last }, MAX_FRAME)?;
        if let Some((k, _)) = entries.last() {
            self.after = Some((*k).clone());
        }
        self.done = last;
        Ok(entries.len())
    }
}

/// The size estimate of an entry for chunking: key, value and ~32 bytes of timestamp and
/// framing.
pub(crate) fn entry_size(key: &Bytes, entry: &Entry<Bytes>) -> usize {
    key.len() + entry.value.as_ref().map_or(0, Bytes::len) + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{PeerMsg, decode};
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

    /// Decodes the frames in `out` back into chunks.
    fn chunks(out: &EncodedFrames) -> Vec<(BytesMap, u64, bool)> {
        let mut rest = out.as_bytes();
        let mut got = Vec::new();
        while let Some(len) = net_quic::frame_len(rest, MAX_FRAME).unwrap() {
            let payload = &rest[net_quic::FRAME_HEADER_LEN..net_quic::FRAME_HEADER_LEN + len];
            match decode(payload).unwrap() {
                PeerMsg::SnapshotChunk { entries, total, last } => got.push((entries, total, last)),
                other => panic!("not a chunk: {other:?}"),
            }
            rest = &rest[net_quic::FRAME_HEADER_LEN + len..];
        }
        got
    }

    #[test]
    fn a_walk_sends_every_entry_exactly_once_in_bounded_chunks() {
        let r = replica(1_000, 10);
        let mut walk = SnapshotWalk::new(&r);
        let mut out = EncodedFrames::new();
        while !walk.is_done() {
            walk.next_chunk(&r, 2_000, &mut out).unwrap();
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
        let mut walk = SnapshotWalk::new(&r);
        let mut out = EncodedFrames::new();
        walk.next_chunk(&r, 1_000, &mut out).unwrap();
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
            walk.next_chunk(&r, 1_000, &mut out).unwrap();
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
    fn an_empty_replica_is_one_empty_last_chunk_and_a_huge_entry_travels_alone() {
        let empty = BytesMap::new();
        let mut walk = SnapshotWalk::new(&empty);
        let mut out = EncodedFrames::new();
        assert_eq!(walk.next_chunk(&empty, 1_000, &mut out).unwrap(), 0);
        assert!(walk.is_done());
        let got = chunks(&out);
        assert_eq!((got.len(), got[0].0.entry_count(), got[0].2), (1, 0, true));

        let mut r = replica(3, 1);
        r.put(key(1), Bytes::from(vec![0; 5_000]), Timestamp::new(2, 0, 1));
        let walk = SnapshotWalk::new(&r);
        let (page, last) = walk.page(&r, 1_000);
        assert_eq!((page.len(), last), (1, false));
        let mut walk = walk;
        let mut out = EncodedFrames::new();
        let sizes: Vec<usize> =
            std::iter::from_fn(|| (!walk.is_done()).then(|| walk.next_chunk(&r, 1_000, &mut out).unwrap()))
                .collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }
}
