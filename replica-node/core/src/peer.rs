//! Messages between the gateways of two servers (the peer wire protocol).
//!
//! Each message travels as one length-prefixed rmp-serde frame (framed by the driver with
//! `net-quic`'s codec; this crate holds only the serde types) on one of two long-lived streams
//! per connection: deltas and control on the high-priority stream, snapshot chunks and repair
//! entries on the low-priority one. Entries are merged by last-writer-wins, so a frame that is
//! duplicated, or a chunk that overlaps a delta, does no harm.
//!
//! - [`Hello`] opens every connection from both sides: who the sender claims to be (it must be
//!   the node its certificate proves), where it can be dialled, when it started and its
//!   incarnation.
//! - Deltas are acknowledged (see [`crate::gateway`]): each carries a sequence number, counted
//!   per link by its sender, and a cumulative [`Ack`] of what the sender has merged from the
//!   receiver. Sequence numbers only mean something within one incarnation (one run of a
//!   process); an ack names the incarnation it is for.
//! - Deltas and acks carry the sender's [`Fingerprint`] of its replica (the digest root of
//!   [`crate::digest`]); when the roots of two servers differ for a while, a repair round
//!   (`Repair*`) finds and exchanges what differs.
//! - [`PeerMsg::Members`] spreads what each server knows of the cluster's membership.

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};
use serde::ser::{SerializeSeq, SerializeStructVariant, Serializer};
use serde::{Deserialize, Serialize};

/// The version of this protocol; a peer speaking another is disconnected. Version 4: entries
/// carry the deadline of a value that expires.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest payload of a delta, snapshot or repair frame the sender builds (entries larger than
/// that travel alone); below the frame limit so one maximal entry always fits.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Frame limit for peer connections: a maximal value and key plus framing overhead.
pub const MAX_FRAME: usize = crate::MAX_VALUE + crate::MAX_KEY + 64 * 1024;

/// Most members one [`PeerMsg::Members`] may list; a longer list is a protocol violation.
pub const MAX_MEMBERS: usize = 4096;

/// A 128-bit digest value (a bucket, a group of buckets or a whole replica), as two words so
/// every serde format carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub u64, pub u64);

impl From<u128> for Fingerprint {
    fn from(v: u128) -> Self {
        Fingerprint((v >> 64) as u64, v as u64)
    }
}

impl From<Fingerprint> for u128 {
    fn from(f: Fingerprint) -> Self {
        (u128::from(f.0) << 64) | u128::from(f.1)
    }
}

/// "I have merged every delta up to `seq` that incarnation `incarnation` of you sent me."
///
/// Cumulative: a delta is only ever numbered after every unacknowledged one before it has been
/// folded into it or sent ahead of it on the same (ordered) stream, so having merged `seq`
/// means having merged the content of everything before it. `seq` 0 acknowledges nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The incarnation of the acknowledged sender, as its [`Hello`] announced it; an ack for
    /// another incarnation (a restarted process) is ignored.
    pub incarnation: u64,
    /// The highest sequence number merged.
    pub seq: u64,
}

/// The first message on a connection, from both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The node id the sender claims; the receiver refuses a connection whose certificate
    /// proves another.
    pub node: String,
    /// The sender's peer address as it advertises it: where others dial it.
    pub peer: String,
    /// Random per process: a change tells the receiver that the sender restarted and its
    /// sequence numbers start afresh.
    pub incarnation: u64,
    /// Wall-clock ms at which the sender's process started: of two servers, the one that
    /// started later dials the other.
    pub started_ms: u64,
    /// The sender's digest root.
    pub root: Fingerprint,
    /// Entries in the sender's replica: a server that started empty asks a peer that holds
    /// some for a snapshot.
    pub entries: u64,
}

/// What a server knows of one member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its node id.
    pub node: String,
    /// Its advertised peer address.
    pub peer: String,
    /// When its current process started (wall-clock ms), 0 if unknown.
    pub started_ms: u64,
    /// Whether it is still part of the cluster.
    pub state: MemberState,
}

/// The standing of a member, as spread between servers. `Replaced` and `Forgotten` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// A member of the cluster (connected or not).
    Active,
    /// Its address is now served by another node id: it restarted without its data.
    Replaced,
    /// Removed by an operator (`CLUSTER FORGET`): nobody dials it, nobody waits for it.
    Forgotten,
}

/// The digest of one bucket, as a repair responder reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// The bucket's index (below [`crate::digest::BUCKETS`]).
    pub index: u16,
    /// Its digest.
    pub digest: Fingerprint,
}

/// One message between two gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// First message on a connection, from both sides.
    Hello(Hello),
    /// Writes made on the sender's node since its last delta to this peer (and writes it sent
    /// before that were not acknowledged when a connection went down).
    Delta {
        /// The sender's sequence number for this delta on this link, from 1, increasing.
        seq: u64,
        /// What the sender has merged from the receiver.
        ack: Ack,
        /// The sender's digest root after merging these entries.
        root: Fingerprint,
        /// More pieces of the same flush follow (a flush larger than [`CHUNK_BYTES`] goes as
        /// several deltas). The receiver merges the pieces together when the last arrives, so a
        /// batch of writes (the writes of one `EXEC`) split across frames is never seen in part.
        more: bool,
        /// The entries.
        entries: BytesMap,
    },
    /// An acknowledgement (and the sender's digest root) with no delta to carry it.
    Ack {
        /// What the sender has merged from the receiver.
        ack: Ack,
        /// The sender's digest root.
        root: Fingerprint,
    },
    /// Please send a snapshot of your state, of the keys after `after` (all keys if `None`):
    /// a join, or the rest of one that a failed connection cut short.
    SnapshotRequest {
        /// Names the transfer; its chunks carry it back.
        id: u64,
        /// Resume after this key.
        after: Option<Bytes>,
    },
    /// Part of a snapshot, in key order.
    SnapshotChunk {
        /// The request this answers.
        id: u64,
        /// The entries of this chunk.
        entries: BytesMap,
        /// Entries the sender held when the snapshot started (for progress; entries written
        /// during the transfer may make the snapshot slightly larger).
        total: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// The members the sender knows (itself excluded), sent after `Hello` and on changes.
    Members(Vec<MemberInfo>),
    /// A repair round starts: the initiator's digest of each group of buckets.
    RepairGroups {
        /// Names the round.
        round: u64,
        /// One digest per group ([`crate::digest::GROUPS`]).
        groups: Vec<Fingerprint>,
    },
    /// The responder's digests of the buckets of every group that differed, for the buckets
    /// that have been quiet (unchanged) for a while on its side.
    RepairBuckets {
        /// The round.
        round: u64,
        /// Bit `g` set: group `g` was the same on both sides.
        equal_groups: u64,
        /// The buckets.
        buckets: Vec<BucketDigest>,
    },
    /// The initiator's fingerprints of its entries in the buckets a round found different (the
    /// list of buckets is the same in every chunk of a round).
    RepairSummary {
        /// The round.
        round: u64,
        /// The buckets concerned.
        buckets: Vec<u16>,
        /// A 64-bit fingerprint of each entry (key, timestamp, value).
        fingerprints: Vec<u64>,
        /// Whether this is the last chunk of the summary.
        last: bool,
    },
    /// The responder asks for the initiator's entries with these fingerprints (it has no such
    /// entry).
    RepairWant {
        /// The round.
        round: u64,
        /// Fingerprints of the entries wanted.
        fingerprints: Vec<u64>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// A measurement of the receiver's clock: the sender's wall-clock time (ms). Answered at
    /// once with [`PeerMsg::ClockReply`].
    ClockProbe {
        /// The sender's wall-clock time when it sent the probe.
        t0: u64,
    },
    /// The answer to a [`PeerMsg::ClockProbe`].
    ClockReply {
        /// The probe's `t0`.
        t0: u64,
        /// The answering node's wall-clock time when the probe arrived.
        t1: u64,
        /// Whether the answering node refuses client writes for its clock: then its time is
        /// not the cluster's, and nobody moves its clock up to it.
        refusing: bool,
    },
    /// The sender collected these tombstones (key and timestamp): it found every member of
    /// the cluster holding them, so the receiver may collect them too (each only if it holds
    /// that very tombstone).
    Collected {
        /// The tombstones.
        tombstones: Vec<(Bytes, Timestamp)>,
    },
    /// Entries of a round: from the responder, those whose fingerprints the initiator lacked;
    /// from the initiator, those the responder asked for.
    RepairEntries {
        /// The round.
        round: u64,
        /// The entries.
        entries: BytesMap,
        /// Whether this is the sender's last chunk for the round.
        last: bool,
    },
}

/// The entries of a chunk as an `LwwMap` serializes them: a sequence of `(key, entry)` pairs,
/// borrowed.
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

/// A [`PeerMsg::SnapshotChunk`] whose entries are borrowed from the sender's replica.
///
/// It encodes byte for byte as the owned message with the same entries (the receiver, and the
/// `peer_frame` fuzz target, see only `PeerMsg`), so a snapshot streams without copying the
/// replica into a map per chunk first.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotChunkRef<'a> {
    /// As [`PeerMsg::SnapshotChunk`]'s `id`.
    pub id: u64,
    /// The entries, in strictly increasing key order (as a map would hold them).
    pub entries: &'a [(&'a Bytes, &'a Entry<Bytes>)],
    /// As [`PeerMsg::SnapshotChunk`]'s `total`.
    pub total: u64,
    /// As [`PeerMsg::SnapshotChunk`]'s `last`.
    pub last: bool,
}

/// The variant index of `SnapshotChunk` in [`PeerMsg`] (what `#[derive(Serialize)]` emits).
const SNAPSHOT_CHUNK_VARIANT: u32 = 4;

impl SnapshotChunkRef<'_> {
    /// The owned message with the same encoding.
    pub fn to_msg(&self) -> PeerMsg {
        PeerMsg::SnapshotChunk {
            id: self.id,
            entries: self.entries.iter().map(|(k, e)| ((*k).clone(), (*e).clone())).collect(),
            total: self.total,
            last: self.last,
        }
    }
}

impl Serialize for SnapshotChunkRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut v =
            serializer.serialize_struct_variant("PeerMsg", SNAPSHOT_CHUNK_VARIANT, "SnapshotChunk", 4)?;
        v.serialize_field("id", &self.id)?;
        v.serialize_field("entries", &Pairs(self.entries))?;
        v.serialize_field("total", &self.total)?;
        v.serialize_field("last", &self.last)?;
        v.end()
    }
}

/// A [`PeerMsg::RepairEntries`] whose entries are borrowed from the sender's replica; encodes
/// as the owned message (see [`SnapshotChunkRef`]).
#[derive(Debug, Clone, Copy)]
pub struct RepairEntriesRef<'a> {
    /// As [`PeerMsg::RepairEntries`]'s `round`.
    pub round: u64,
    /// The entries, in strictly increasing key order.
    pub entries: &'a [(&'a Bytes, &'a Entry<Bytes>)],
    /// As [`PeerMsg::RepairEntries`]'s `last`.
    pub last: bool,
}

/// The variant index of `RepairEntries` in [`PeerMsg`].
const REPAIR_ENTRIES_VARIANT: u32 = 13;

impl RepairEntriesRef<'_> {
    /// The owned message with the same encoding.
    pub fn to_msg(&self) -> PeerMsg {
        PeerMsg::RepairEntries {
            round: self.round,
            entries: self.entries.iter().map(|(k, e)| ((*k).clone(), (*e).clone())).collect(),
            last: self.last,
        }
    }
}

impl Serialize for RepairEntriesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut v =
            serializer.serialize_struct_variant("PeerMsg", REPAIR_ENTRIES_VARIANT, "RepairEntries", 3)?;
        v.serialize_field("round", &self.round)?;
        v.serialize_field("entries", &Pairs(self.entries))?;
        v.serialize_field("last", &self.last)?;
        v.end()
    }
}

/// What the gateway hands its driver for a connection's low-priority stream: entries borrowed
/// from its replica (framed by the driver without copying them into a map first), or a
/// message of fingerprints.
#[derive(Debug, Clone, Copy)]
pub enum BulkRef<'a> {
    /// The next chunk of a snapshot.
    Chunk(SnapshotChunkRef<'a>),
    /// The next chunk of a repair round's entries.
    Repair(RepairEntriesRef<'a>),
    /// Any other message (repair summaries and wants).
    Msg(&'a PeerMsg),
}

impl BulkRef<'_> {
    /// The owned message with the same encoding (for simulations and tests).
    pub fn to_msg(&self) -> PeerMsg {
        match self {
            BulkRef::Chunk(c) => c.to_msg(),
            BulkRef::Repair(r) => r.to_msg(),
            BulkRef::Msg(m) => (*m).clone(),
        }
    }

    /// Entries it carries.
    pub fn entry_count(&self) -> usize {
        match self {
            BulkRef::Chunk(c) => c.entries.len(),
            BulkRef::Repair(r) => r.entries.len(),
            BulkRef::Msg(_) => 0,
        }
    }
}

impl Serialize for BulkRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BulkRef::Chunk(c) => c.serialize(serializer),
            BulkRef::Repair(r) => r.serialize(serializer),
            BulkRef::Msg(m) => m.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let root = Fingerprint::from(u128::MAX - 7);
        for msg in [
            PeerMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                node: "0123456789ab".into(),
                peer: "127.0.0.1:6000".into(),
                incarnation: u64::MAX,
                started_ms: 1_700_000_000_000,
                root,
                entries: 12,
            }),
            PeerMsg::Delta {
                seq: 7,
                ack: Ack { incarnation: 3, seq: 5 },
                root,
                more: true,
                entries: m.clone(),
            },
            PeerMsg::Delta {
                seq: 1,
                ack: Ack::default(),
                root: Fingerprint::default(),
                more: false,
                entries: BytesMap::new(),
            },
            PeerMsg::Ack { ack: Ack { incarnation: 1 << 63, seq: u64::MAX }, root },
            PeerMsg::SnapshotRequest { id: 3, after: Some(Bytes::from_static(b"k")) },
            PeerMsg::SnapshotRequest { id: 4, after: None },
            PeerMsg::SnapshotChunk { id: 9, entries: m.clone(), total: 2, last: true },
            PeerMsg::Members(vec![MemberInfo {
                node: "a".into(),
                peer: "10.0.0.1:6000".into(),
                started_ms: 5,
                state: MemberState::Replaced,
            }]),
            PeerMsg::RepairGroups { round: 1, groups: vec![root; crate::digest::GROUPS] },
            PeerMsg::RepairBuckets {
                round: 2,
                equal_groups: 1 << 63,
                buckets: vec![BucketDigest { index: 4095, digest: root }],
            },
            PeerMsg::ClockProbe { t0: 17 },
            PeerMsg::Collected { tombstones: vec![(Bytes::from_static(b"k"), Timestamp::new(1, 2, 3))] },
            PeerMsg::ClockReply { t0: 17, t1: u64::MAX, refusing: true },
            PeerMsg::RepairSummary {
                round: 3,
                buckets: vec![0, 7],
                fingerprints: vec![1, u64::MAX],
                last: true,
            },
            PeerMsg::RepairWant { round: 3, fingerprints: vec![9], last: false },
            PeerMsg::RepairEntries { round: 3, entries: m, last: false },
        ] {
            assert_eq!(roundtrip(&msg), msg);
        }
    }

    #[test]
    fn fingerprints_keep_every_bit() {
        for v in [0, 1, u128::MAX, 1 << 64, (1 << 64) - 1, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(u128::from(Fingerprint::from(v)), v);
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
            for (id, total, last) in [(0, 0, false), (u64::MAX, u64::MAX, true), (7, 300, false)] {
                let msg = PeerMsg::SnapshotChunk { id, entries: map.clone(), total, last };
                let owned = encode(&msg);
                let chunk = SnapshotChunkRef { id, entries: &pairs, total, last };
                let borrowed = encode(&chunk);
                assert_eq!(borrowed, owned);
                assert_eq!(encode(&BulkRef::Chunk(chunk)), owned);
                assert_eq!(decode(&borrowed), msg);
                assert_eq!(chunk.to_msg(), msg);
            }
        }
    }

    #[test]
    fn borrowed_repair_entries_encode_exactly_as_the_owned_message() {
        let mut m = BytesMap::new();
        m.put(Bytes::from_static(b"a"), Bytes::from_static(b"1"), Timestamp::new(1, 0, 1));
        m.delete(Bytes::from_static(b"b"), Timestamp::new(2, 0, 1));
        for map in [BytesMap::new(), m] {
            let pairs: Vec<_> = map.entries().collect();
            let r = RepairEntriesRef { round: 5, entries: &pairs, last: true };
            let msg = PeerMsg::RepairEntries { round: 5, entries: map.clone(), last: true };
            assert_eq!(encode(&BulkRef::Repair(r)), encode(&msg));
            assert_eq!(r.to_msg(), msg);
        }
    }

    #[test]
    fn a_maximal_entry_fits_in_a_frame() {
        let mut m = BytesMap::new();
        let key = Bytes::from(vec![b'k'; crate::MAX_KEY]);
        m.put(key, Bytes::from(vec![0xab; crate::MAX_VALUE]), Timestamp::new(1, 0, 1));
        let msg = PeerMsg::Delta {
            seq: u64::MAX,
            ack: Ack { incarnation: u64::MAX, seq: u64::MAX },
            root: Fingerprint(u64::MAX, u64::MAX),
            more: true,
            entries: m,
        };
        assert!(encode(&msg).len() <= MAX_FRAME);
    }
}
