//! Messages between the gateways of two servers (the peer wire protocol).
//!
//! Each message travels as one length-prefixed rmp-serde frame (framed by the driver with
//! `net-quic`'s codec; this crate holds only the serde types) on one of two
//! long-lived streams per connection: deltas and control on the high-priority stream, snapshot
//! chunks on the low-priority one. Entries are merged by last-writer-wins, so a frame that is
//! duplicated, or a chunk that overlaps a delta, does no harm.
//!
//! Deltas are acknowledged (see [`crate::gateway`]): each carries a sequence number, counted
//! per link by its sender, and a cumulative [`Ack`] of what the sender has merged from the
//! receiver. A sender keeps every delta until it is acknowledged and re-sends what was not
//! when a connection is replaced, so a batch written to a connection that then died is not
//! lost. Sequence numbers only mean something within one incarnation (one run of a process):
//! [`PeerMsg::Hello`] announces the sender's, and an ack names the incarnation it is for.

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry};
use serde::ser::{SerializeSeq, SerializeStructVariant, Serializer};
use serde::{Deserialize, Serialize};

/// The version of this protocol; a peer speaking another is disconnected.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest payload of a delta or snapshot frame the sender builds (entries larger than that
/// travel alone); below the frame limit so one maximal entry always fits.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Frame limit for peer connections: a maximal value and key plus framing overhead.
pub const MAX_FRAME: usize = crate::MAX_VALUE + crate::MAX_KEY + 64 * 1024;

/// "I have merged every delta up to `seq` that incarnation `incarnation` of you sent me."
///
/// Cumulative: a delta is only ever numbered after every unacknowledged one before it has been
/// folded into it or sent ahead of it on the same (ordered) stream, so having merged `seq`
/// means having merged the content of everything before it. `seq` 0 acknowledges nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The incarnation of the acknowledged sender, as its [`PeerMsg::Hello`] announced it; an
    /// ack for another incarnation (a restarted process) is ignored.
    pub incarnation: u64,
    /// The highest sequence number merged.
    pub seq: u64,
}

/// One message between two gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// First message on a connection, from both sides.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The sender's peer address as it advertises it (for logs).
        peer: String,
        /// Random per process: a change tells the receiver that the sender restarted and its
        /// sequence numbers start afresh.
        incarnation: u64,
    },
    /// Writes made on the sender's node since its last delta to this peer (and writes it sent
    /// before that were not acknowledged when a connection went down).
    Delta {
        /// The sender's sequence number for this delta on this link, from 1, increasing.
        seq: u64,
        /// What the sender has merged from the receiver.
        ack: Ack,
        /// The entries.
        entries: BytesMap,
    },
    /// The sender is joining: please send a snapshot of your state.
    SnapshotRequest,
    /// Part of a snapshot, in key order.
    SnapshotChunk {
        /// The entries of this chunk.
        entries: BytesMap,
        /// Entries the sender held when the snapshot started (for progress; entries written
        /// during the transfer may make the snapshot slightly larger).
        total: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// An acknowledgement with no delta to carry it (after the variants above, so their
    /// encodings keep their variant indices).
    Ack(Ack),
}

/// A [`PeerMsg::SnapshotChunk`] whose entries are borrowed from the sender's replica.
///
/// It encodes byte for byte as the owned message with the same entries (the receiver, and the
/// `peer_frame` fuzz target, see only `PeerMsg`), so a snapshot streams without copying the
/// replica into a map per chunk first.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotChunkRef<'a> {
    /// The entries, in strictly increasing key order (as a map would hold them).
    pub entries: &'a [(&'a Bytes, &'a Entry<Bytes>)],
    /// As [`PeerMsg::SnapshotChunk`]'s `total`.
    pub total: u64,
    /// As [`PeerMsg::SnapshotChunk`]'s `last`.
    pub last: bool,
}

impl Serialize for SnapshotChunkRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The entries as an `LwwMap` serializes them: a sequence of `(key, entry)` pairs.
        struct Pairs<'a>(&'a [(&'a Bytes, &'a Entry<Bytes>)]);

        impl Serialize for Pairs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for pair in self.0 {
                    seq.serialize_element(pair)?;
                }
                seq.end()
            }
        }

        // What `#[derive(Serialize)]` emits for the fourth variant of `PeerMsg`.
        let mut v = serializer.serialize_struct_variant("PeerMsg", 3, "SnapshotChunk", 3)?;
        v.serialize_field("entries", &Pairs(self.entries))?;
        v.serialize_field("total", &self.total)?;
        v.serialize_field("last", &self.last)?;
        v.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::Timestamp;

    /// The payload of a frame, encoded as the frame codec encodes it (rmp-serde's defaults).
    fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
        rmp_serde::to_vec(msg).unwrap()
    }

    fn decode(payload: &[u8]) -> PeerMsg {
        rmp_serde::from_slice(payload).unwrap()
    }

    fn roundtrip(msg: &PeerMsg) -> PeerMsg {
        decode(&encode(msg))
    }

    #[test]
    fn every_message_round_trips() {
        let mut m = BytesMap::new();
        m.put(Bytes::from_static(b"k"), Bytes::from_static(b"v"), Timestamp::new(5, 1, 9));
        m.delete(Bytes::from_static(b"gone"), Timestamp::new(6, 0, 9));
        for msg in [
            PeerMsg::Hello {
                version: PROTOCOL_VERSION,
                peer: "127.0.0.1:6000".into(),
                incarnation: u64::MAX,
            },
            PeerMsg::Delta { seq: 7, ack: Ack { incarnation: 3, seq: 5 }, entries: m.clone() },
            PeerMsg::Delta { seq: 1, ack: Ack::default(), entries: BytesMap::new() },
            PeerMsg::SnapshotRequest,
            PeerMsg::SnapshotChunk { entries: m, total: 2, last: true },
            PeerMsg::Ack(Ack { incarnation: 1 << 63, seq: u64::MAX }),
        ] {
            assert_eq!(roundtrip(&msg), msg);
        }
    }

    #[test]
    fn a_borrowed_chunk_encodes_exactly_as_the_owned_one() {
        let mut m = BytesMap::new();
        for i in 0..50u32 {
            let ts = Timestamp::new(u64::from(i) * 1_000_003, i, u64::from(i % 3));
            if i % 7 == 0 {
                m.delete(Bytes::from(format!("key{i}")), ts);
            } else {
                m.put(Bytes::from(format!("key{i}")), Bytes::from(vec![i as u8; i as usize * 11]), ts);
            }
        }
        for map in [BytesMap::new(), m] {
            let pairs: Vec<_> = map.entries().collect();
            for (total, last) in [(0, false), (u64::MAX, true), (300, false)] {
                let msg = PeerMsg::SnapshotChunk { entries: map.clone(), total, last };
                let owned = encode(&msg);
                let borrowed = encode(&SnapshotChunkRef { entries: &pairs, total, last });
                assert_eq!(borrowed, owned);
                assert_eq!(decode(&borrowed), msg);
            }
        }
    }

    #[test]
    fn a_maximal_entry_fits_in_a_frame() {
        let mut m = BytesMap::new();
        let key = Bytes::from(vec![b'k'; crate::MAX_KEY]);
        m.put(key, Bytes::from(vec![0xab; crate::MAX_VALUE]), Timestamp::new(1, 0, 1));
        let msg =
            PeerMsg::Delta { seq: u64::MAX, ack: Ack { incarnation: u64::MAX, seq: u64::MAX }, entries: m };
        assert!(encode(&msg).len() <= MAX_FRAME);
    }
}
