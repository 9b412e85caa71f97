//! The record codec: how a batch of LWW entries becomes bytes on disk and back. Pure: byte
//! slices in, byte vectors or borrowed entries out.
//!
//! A record is a 12-byte header and a payload:
//!
//! ```text
//! len: u32 LE | len_crc: u32 LE = CRC-32C(len) | crc: u32 LE = CRC-32C(payload) | payload
//! ```
//!
//! The length has its own checksum so that a damaged length is told apart from a record cut
//! short by a crash: with a good `len_crc` the length is the one that was written, and a record
//! that runs past the end of its file was torn; with a bad one the length cannot be trusted at
//! all (see [`crate::scan`]).
//!
//! A payload starts with a kind byte:
//!
//! - [`KIND_ENTRIES`]: `count`, the distinct replica ids of the batch (`n`, then `n` ids), then
//!   `count` entries of `key_len, key, wall_ms delta (zigzag), logical, replica index, value`,
//!   where `value` is `0` for a tombstone and `len + 1` followed by the bytes otherwise. Every
//!   integer is an unsigned LEB128 varint. Within a batch the timestamps are close together and
//!   the replicas few, so a timestamp costs 3 bytes instead of 20: a SET of a 16-byte key and a
//!   100-byte value costs 121 bytes plus its share of the record and batch headers.
//! - [`KIND_ENTRIES_EXPIRY`] (what this version writes): the same, except the `value` tag, which
//!   is `0` for a tombstone, `1` for a value with a deadline (followed by `len`, the bytes, and
//!   the deadline as the zigzag difference from the entry's `wall_ms`), and `len + 2` followed
//!   by the bytes for a value without one. A value without a deadline costs what it costs in
//!   [`KIND_ENTRIES`], which is still read (directories written before deadlines existed).
//! - [`KIND_SNAPSHOT_END`]: `count, covers`: the last record of a snapshot, which is complete
//!   only with it.
//!
//! Decoding never panics and never allocates more than the input justifies.

use lww_crdt::{ReplicaId, Timestamp};

/// Bytes of a record header.
pub const HEADER: usize = 12;

/// The largest payload a record may have: one entry of the largest key (64 KiB) and value
/// (8 MiB) fits, with room to spare. A header claiming more is damaged.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Encoders start a new record once a payload reaches this size, so records stay small enough
/// to check and decode one at a time (and a torn tail loses at most one batch's worth).
pub const TARGET_PAYLOAD: usize = 1024 * 1024;

/// Payload kind: a batch of entries.
pub const KIND_ENTRIES: u8 = 1;
/// Payload kind: the end of a snapshot.
pub const KIND_SNAPSHOT_END: u8 = 2;
/// Payload kind: a batch of entries, values possibly with deadlines.
pub const KIND_ENTRIES_EXPIRY: u8 = 3;

/// One LWW entry as stored: borrowed from the payload it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordEntry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// When the write happened; with `value`, the entry's LWW order (as `lww_crdt::Entry`).
    pub ts: Timestamp,
    /// The value, `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// When the value expires (wall-clock ms since the Unix epoch), if it does.
    pub expires: Option<u64>,
}

impl RecordEntry<'_> {
    /// Compares the entries of one key the way `lww_crdt::Entry` does: timestamp first, then
    /// the rank (a value with a deadline below a tombstone below a value without one), the
    /// value and the deadline, so the greater one is the one a merge keeps.
    pub fn lww_cmp(&self, other: &RecordEntry<'_>) -> std::cmp::Ordering {
        let rank = |e: &RecordEntry<'_>| match (e.value, e.expires) {
            (Some(_), Some(_)) => 0,
            (None, _) => 1,
            (Some(_), None) => 2,
        };
        (self.ts, rank(self), self.value, self.expires).cmp(&(
            other.ts,
            rank(other),
            other.value,
            other.expires,
        ))
    }

    /// The entry as the replica holds it.
    pub fn to_entry(&self) -> lww_crdt::Entry<bytes::Bytes> {
        lww_crdt::Entry {
            ts: self.ts,
            value: self.value.map(bytes::Bytes::copy_from_slice),
            expires: self.expires.filter(|_| self.value.is_some()).and_then(std::num::NonZeroU64::new),
        }
    }
}

impl<'a> RecordEntry<'a> {
    /// The record form of `key`'s entry `e`, borrowing from them.
    pub fn of(key: &'a [u8], e: &'a lww_crdt::Entry<bytes::Bytes>) -> Self {
        RecordEntry { key, ts: e.ts, value: e.value.as_deref(), expires: e.deadline() }
    }
}

/// Why a payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended inside a field.
    #[error("payload ends inside a field at byte {0}")]
    Truncated(usize),
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("malformed integer at byte {0}")]
    BadVarint(usize),
    /// The kind byte is not one this version writes.
    #[error("unknown payload kind {0}")]
    UnknownKind(u8),
    /// A count or index is impossible for the payload's size.
    #[error("{0}")]
    Invalid(&'static str),
    /// Bytes follow the last field.
    #[error("{0} bytes after the end of the payload")]
    Trailing(usize),
}

/// A decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A batch of entries, in the order they were encoded.
    Entries(Vec<RecordEntry<'a>>),
    /// The end of a snapshot: it holds `count` entries and covers the log segments below
    /// `covers`.
    SnapshotEnd {
        /// Entries in the snapshot.
        count: u64,
        /// The first log segment the snapshot does not cover.
        covers: u64,
    },
}

/// The header of a record holding `payload`.
pub fn record_header(payload: &[u8]) -> [u8; HEADER] {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&len);
    h[4..8].copy_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    h[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h
}

/// Appends a record holding `payload` to `out`.
///
/// # Panics
///
/// If `payload` is empty or longer than [`MAX_PAYLOAD`] (the encoders here never produce one).
pub fn push_record(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD, "record payload of {} bytes", payload.len());
    out.extend_from_slice(&record_header(payload));
    out.extend_from_slice(payload);
}

/// The payload length a header announces, if the header's own checksum holds and the length
/// is possible. `None`: the header is damaged (or not a header at all).
pub fn header_len(header: &[u8; HEADER]) -> Option<usize> {
    let len_bytes: [u8; 4] = [header[0], header[1], header[2], header[3]];
    let len_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    (crc32c::crc32c(&len_bytes) == len_crc && len > 0 && len <= MAX_PAYLOAD).then_some(len)
}

/// Whether `payload` matches the payload checksum of `header`.
pub fn payload_ok(header: &[u8; HEADER], payload: &[u8]) -> bool {
    u32::from_le_bytes([header[8], header[9], header[10], header[11]]) == crc32c::crc32c(payload)
}

/// Builds [`KIND_ENTRIES`] payloads: push entries, take the payload when it is big enough
/// (or at the end of a batch).
///
/// Entries are written as they are pushed; the replica table and the count, which precede them,
/// are assembled when the payload is taken.
#[derive(Debug, Default, Clone)]
pub struct BatchEncoder {
    body: Vec<u8>,
    count: u64,
    replicas: Vec<ReplicaId>,
    prev_wall: u64,
}

impl BatchEncoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries pushed since the last [`BatchEncoder::take_payload`].
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was pushed since the last take.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Approximate size of the payload so far.
    pub fn size(&self) -> usize {
        self.body.len() + 10 * (self.replicas.len() + 2)
    }

    /// Whether the payload has reached [`TARGET_PAYLOAD`] and should be taken.
    pub fn is_full(&self) -> bool {
        self.size() >= TARGET_PAYLOAD
    }

    /// Appends one entry without a deadline.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>, ts: Timestamp) {
        self.push_until(key, value, None, ts);
    }

    /// Appends one entry whose value (if any) expires at `expires` (wall-clock ms).
    pub fn push_until(&mut self, key: &[u8], value: Option<&[u8]>, expires: Option<u64>, ts: Timestamp) {
        // A batch holds a handful of replicas (a node's actors, its peers' actors): a linear
        // search beats a map.
        let index = match self.replicas.iter().position(|&r| r == ts.replica) {
            Some(i) => i,
            None => {
                self.replicas.push(ts.replica);
                self.replicas.len() - 1
            }
        };
        put_varint(&mut self.body, key.len() as u64);
        self.body.extend_from_slice(key);
        let delta = ts.wall_ms.wrapping_sub(self.prev_wall) as i64;
        put_varint(&mut self.body, zigzag(delta));
        self.prev_wall = ts.wall_ms;
        put_varint(&mut self.body, u64::from(ts.logical));
        put_varint(&mut self.body, index as u64);
        match (value, expires) {
            (None, _) => put_varint(&mut self.body, 0),
            (Some(v), Some(deadline)) => {
                put_varint(&mut self.body, 1);
                put_varint(&mut self.body, v.len() as u64);
                self.body.extend_from_slice(v);
                put_varint(&mut self.body, zigzag(deadline.wrapping_sub(ts.wall_ms) as i64));
            }
            (Some(v), None) => {
                put_varint(&mut self.body, v.len() as u64 + 2);
                self.body.extend_from_slice(v);
            }
        }
        self.count += 1;
    }

    /// The payload of everything pushed since the last take (`None` if nothing was), leaving
    /// the encoder empty.
    pub fn take_payload(&mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(self.body.len() + 11 + 10 * (self.replicas.len() + 1));
        out.push(KIND_ENTRIES_EXPIRY);
        put_varint(&mut out, self.count);
        put_varint(&mut out, self.replicas.len() as u64);
        for &r in &self.replicas {
            put_varint(&mut out, r);
        }
        out.extend_from_slice(&self.body);
        self.body.clear();
        self.replicas.clear();
        self.count = 0;
        self.prev_wall = 0;
        Some(out)
    }

    /// Appends the pending entries as a record to `out` (nothing if there are none).
    pub fn take_record(&mut self, out: &mut Vec<u8>) {
        if let Some(payload) = self.take_payload() {
            push_record(out, &payload);
        }
    }
}

/// The payload of a snapshot's last record.
pub fn snapshot_end_payload(count: u64, covers: u64) -> Vec<u8> {
    let mut out = vec![KIND_SNAPSHOT_END];
    put_varint(&mut out, count);
    put_varint(&mut out, covers);
    out
}

/// Decodes a payload (the checksum already held). Validates every field before returning, so a
/// caller never applies part of a bad batch.
pub fn decode_payload(payload: &[u8]) -> Result<Payload<'_>, DecodeError> {
    let mut r = Reader { buf: payload, pos: 0 };
    let kind = r.byte()?;
    let decoded = match kind {
        KIND_ENTRIES => Payload::Entries(decode_entries(&mut r, false)?),
        KIND_ENTRIES_EXPIRY => Payload::Entries(decode_entries(&mut r, true)?),
        KIND_SNAPSHOT_END => Payload::SnapshotEnd { count: r.varint()?, covers: r.varint()? },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    match payload.len() - r.pos {
        0 => Ok(decoded),
        n => Err(DecodeError::Trailing(n)),
    }
}

/// Decodes the entries of a [`KIND_ENTRIES`] payload, or of a [`KIND_ENTRIES_EXPIRY`] one
/// (`expiry`).
fn decode_entries<'a>(r: &mut Reader<'a>, expiry: bool) -> Result<Vec<RecordEntry<'a>>, DecodeError> {
    let count = r.varint()?;
    // Every entry takes at least 5 bytes (key length, delta, logical, replica, value tag): a
    // count beyond that is a lie, and trusting it would allocate on the input's say-so.
    if count > (r.remaining() / 5) as u64 {
        return Err(DecodeError::Invalid("entry count exceeds the payload"));
    }
    let n_replicas = r.varint()?;
    if n_replicas > r.remaining() as u64 || (count > 0 && n_replicas == 0) {
        return Err(DecodeError::Invalid("replica table size impossible"));
    }
    let mut replicas = Vec::with_capacity(n_replicas as usize);
    for _ in 0..n_replicas {
        replicas.push(r.varint()?);
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut wall = 0u64;
    for _ in 0..count {
        let key_len = r.len_field()?;
        let key = r.bytes(key_len)?;
        wall = wall.wrapping_add(unzigzag(r.varint()?) as u64);
        let logical =
            u32::try_from(r.varint()?).map_err(|_| DecodeError::Invalid("logical clock beyond 32 bits"))?;
        let index = r.varint()?;
        let replica = *replicas
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .ok_or(DecodeError::Invalid("replica index outside the table"))?;
        let (value, expires) = match (r.varint()?, expiry) {
            (0, _) => (None, None),
            (1, true) => {
                let len = r.len_field()?;
                let value = r.bytes(len)?;
                let deadline = wall.wrapping_add(unzigzag(r.varint()?) as u64);
                if deadline == 0 {
                    return Err(DecodeError::Invalid("a deadline of 0"));
                }
                (Some(value), Some(deadline))
            }
            (tagged, _) => {
                let skip = if expiry { 2 } else { 1 };
                let len = usize::try_from(tagged - skip).map_err(|_| DecodeError::Invalid("value length"))?;
                (Some(r.bytes(len)?), None)
            }
        };
        entries.push(RecordEntry { key, ts: Timestamp::new(wall, logical, replica), value, expires });
    }
    Ok(entries)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The 10th byte may only carry the top bit of a u64.
            if shift == 63 && bits > 1 {
                return Err(DecodeError::BadVarint(start));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint(start))
    }

    fn len_field(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated(at))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated(self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall_ms: u64, logical: u32, replica: u64) -> Timestamp {
        Timestamp::new(wall_ms, logical, replica)
    }

    #[test]
    fn a_batch_round_trips_with_tombstones_deadlines_and_extreme_timestamps() {
        let mut enc = BatchEncoder::new();
        let input = [
            RecordEntry { key: b"a", ts: ts(1_700_000_000_000, 0, 7), value: Some(b"1"), expires: None },
            RecordEntry { key: b"", ts: ts(0, u32::MAX, u64::MAX), value: None, expires: None },
            RecordEntry { key: b"b", ts: ts(u64::MAX, 3, 7), value: Some(b""), expires: None },
            RecordEntry { key: b"a", ts: ts(5, 1, 0), value: None, expires: None },
            RecordEntry {
                key: b"ttl",
                ts: ts(1_700_000_000_000, 2, 7),
                value: Some(b"soon"),
                expires: Some(1_700_000_010_000),
            },
            // A deadline before the write (EXPIREAT in the past) and one far away.
            RecordEntry { key: b"past", ts: ts(1_700_000_000_000, 3, 7), value: Some(b""), expires: Some(1) },
            RecordEntry { key: b"far", ts: ts(5, 0, 7), value: Some(b"x"), expires: Some(u64::MAX) },
        ];
        for e in &input {
            enc.push_until(e.key, e.value, e.expires, e.ts);
        }
        let payload = enc.take_payload().unwrap();
        assert_eq!(payload[0], KIND_ENTRIES_EXPIRY);
        assert!(enc.take_payload().is_none(), "the encoder is empty after a take");
        assert_eq!(decode_payload(&payload), Ok(Payload::Entries(input.to_vec())));
        for e in &input {
            assert_eq!(RecordEntry::of(e.key, &e.to_entry()), *e);
        }
    }

    #[test]
    fn payloads_written_before_deadlines_existed_still_decode() {
        // KIND_ENTRIES: one replica (7), then `a` = `1` at wall 10 and a tombstone of `b`.
        let old = [KIND_ENTRIES, 2, 1, 7, 1, b'a', 20, 0, 0, 2, b'1', 1, b'b', 0, 0, 0, 0];
        assert_eq!(
            decode_payload(&old),
            Ok(Payload::Entries(vec![
                RecordEntry { key: b"a", ts: ts(10, 0, 7), value: Some(b"1"), expires: None },
                RecordEntry { key: b"b", ts: ts(10, 0, 7), value: None, expires: None },
            ]))
        );
        // In the new kind, tag 1 is a value with a deadline, and a deadline of 0 is refused.
        let zero = [KIND_ENTRIES_EXPIRY, 1, 1, 7, 1, b'a', 20, 0, 0, 1, 0, 19];
        assert_eq!(decode_payload(&zero), Err(DecodeError::Invalid("a deadline of 0")));
    }

    #[test]
    fn lww_cmp_orders_as_the_replica_does() {
        let t = ts(10, 0, 1);
        let entries = [
            RecordEntry { key: b"k", ts: t, value: Some(b"x"), expires: Some(50) },
            RecordEntry { key: b"k", ts: t, value: Some(b"x"), expires: Some(60) },
            RecordEntry { key: b"k", ts: t, value: None, expires: None },
            RecordEntry { key: b"k", ts: t, value: Some(b""), expires: None },
            RecordEntry { key: b"k", ts: t, value: Some(b"x"), expires: None },
            RecordEntry { key: b"k", ts: ts(11, 0, 0), value: None, expires: None },
        ];
        for a in &entries {
            for b in &entries {
                assert_eq!(a.lww_cmp(b), a.to_entry().cmp(&b.to_entry()), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_set_of_a_16_byte_key_and_100_byte_value_costs_121_bytes_in_a_batch() {
        let mut enc = BatchEncoder::new();
        let value = [7u8; 100];
        for i in 0..1000u64 {
            let key = format!("key:{i:012}");
            enc.push(
                key.as_bytes(),
                Some(&value),
                ts(1_765_000_000_000 + i / 10, (i % 10) as u32, 42 + i % 2),
            );
        }
        let payload = enc.take_payload().unwrap();
        let per_write = (payload.len() + HEADER) as f64 / 1000.0;
        assert!(per_write < 121.1, "{per_write} bytes per write");
    }

    #[test]
    fn snapshot_end_round_trips() {
        let p = snapshot_end_payload(1_000_000, 42);
        assert_eq!(decode_payload(&p), Ok(Payload::SnapshotEnd { count: 1_000_000, covers: 42 }));
    }

    #[test]
    fn header_checks_its_own_length() {
        let mut out = Vec::new();
        push_record(&mut out, b"\x02\x00\x00");
        let header: [u8; HEADER] = out[..HEADER].try_into().unwrap();
        assert_eq!(header_len(&header), Some(3));
        assert!(payload_ok(&header, &out[HEADER..]));
        for bit in 0..64 {
            let mut h = header;
            h[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(header_len(&h), None, "flipping bit {bit} of the length or its checksum");
        }
        assert_eq!(header_len(&[0; HEADER]), None, "zeros are not a header");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(decode_payload(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(decode_payload(&[9]), Err(DecodeError::UnknownKind(9)));
        assert!(matches!(decode_payload(&[KIND_ENTRIES, 0xff]), Err(DecodeError::Truncated(_))));
        assert!(matches!(decode_payload(&[KIND_ENTRIES, 200, 1]), Err(DecodeError::Invalid(_))));
        // One entry, no replica table.
        assert!(matches!(decode_payload(&[KIND_ENTRIES, 1, 0, 0, 0, 0, 0, 0]), Err(DecodeError::Invalid(_))));
        // A replica index outside the table.
        assert!(matches!(
            decode_payload(&[KIND_ENTRIES, 1, 1, 5, 0, 0, 0, 1, 0]),
            Err(DecodeError::Invalid(_))
        ));
        // Trailing bytes.
        assert_eq!(decode_payload(&[KIND_SNAPSHOT_END, 0, 0, 0]), Err(DecodeError::Trailing(1)));
        // An 11-byte varint.
        let mut long = vec![KIND_SNAPSHOT_END];
        long.extend([0xff; 10]);
        long.push(0);
        assert_eq!(decode_payload(&long), Err(DecodeError::BadVarint(1)));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_payload(&bytes);
        }

        #[test]
        fn varints_round_trip(v in proptest::num::u64::ANY, d in proptest::num::i64::ANY) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader { buf: &out, pos: 0 };
            proptest::prop_assert_eq!(r.varint(), Ok(v));
            proptest::prop_assert_eq!(unzigzag(zigzag(d)), d);
        }
    }
}
