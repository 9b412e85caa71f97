//! Encoding round trips and hostile input (feature `serde`). Peer frames, snapshots and logs
//! carry these types as rmp-serde, so decoding must be exact for good input and an error —
//! never a panic, never a corrupt map — for anything else (style item 10).

#![cfg(feature = "serde")]

#[macro_use]
mod common;

use bytes::Bytes;
use common::{b, entry, map, merged_owned, timestamp, ts};
use lww_crdt::{BytesMap, Entry, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;

fn any_timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        timestamp(),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(w, l, r)| Timestamp::new(w, l, r)),
    ]
}

/// Maps with arbitrary binary keys and values too, not only the small alphabet.
fn any_map() -> impl Strategy<Value = BytesMap> {
    let bytes = || vec(any::<u8>(), 0..40).prop_map(Bytes::from);
    let deadline = || prop::option::of(1..=u64::MAX).prop_map(|d| d.and_then(std::num::NonZeroU64::new));
    let wide = vec((bytes(), any_timestamp(), prop::option::of(bytes()), deadline()), 0..12).prop_map(|es| {
        es.into_iter()
            .map(|(k, ts, value, expires)| {
                (k, Entry { ts, expires: expires.filter(|_| value.is_some()), value })
            })
            .collect::<BytesMap>()
    });
    (map(), wide).prop_map(|(a, b)| merged_owned(a, b))
}

/// The map the pairs make when merged one by one (the reference for decoding).
fn applied(pairs: &[(Bytes, Entry<Bytes>)]) -> BytesMap {
    let mut m = BytesMap::new();
    for (k, e) in pairs.iter().cloned() {
        m.apply(k, e);
    }
    m
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding into a Vec cannot fail")
}

/// The encoding a peer would send for these pairs, in this order, duplicates included.
fn encode_pairs(pairs: &[(Bytes, Entry<Bytes>)]) -> Vec<u8> {
    encode(&pairs)
}

proptest! {
    #![proptest_config(config!("serde"))]

    #[test]
    fn timestamp_round_trips(t in any_timestamp()) {
        prop_assert_eq!(rmp_serde::from_slice::<Timestamp>(&encode(&t)).ok(), Some(t));
        let named = rmp_serde::to_vec_named(&t).expect("encoding into a Vec cannot fail");
        prop_assert_eq!(rmp_serde::from_slice::<Timestamp>(&named).ok(), Some(t));
    }

    #[test]
    fn entry_round_trips(e in entry(), wide_ts in any_timestamp()) {
        prop_assert_eq!(rmp_serde::from_slice::<Entry<Bytes>>(&encode(&e)).ok(), Some(e.clone()));
        let e = Entry { ts: wide_ts, ..e };
        prop_assert_eq!(rmp_serde::from_slice::<Entry<Bytes>>(&encode(&e)).ok(), Some(e.clone()));
    }

    #[test]
    fn map_with_tombstones_round_trips(m in any_map()) {
        let bytes = encode(&m);
        let back: BytesMap = rmp_serde::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &m);
        prop_assert_eq!((back.len(), back.tombstones()), (m.len(), m.tombstones()));
        common::consistent(&back)?;
        // Every strict prefix of an encoding is incomplete: an error, never a shorter map.
        for cut in 0..bytes.len() {
            prop_assert!(rmp_serde::from_slice::<BytesMap>(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
        }
    }

    #[test]
    fn decoding_pairs_in_any_order_merges_them(pairs in vec((common::key(), entry()), 0..12)) {
        // A hand-made (or hostile) encoding may repeat keys in any order: decoding is a merge.
        let expected = applied(&pairs);
        let decoded: BytesMap = rmp_serde::from_slice(&encode_pairs(&pairs)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &expected);
        common::consistent(&decoded)?;
    }

    #[test]
    fn sorted_encodings_decode_in_bulk_and_disorder_falls_back_to_merging(
        m in any_map(),
        tail in vec((common::key(), entry()), 0..6),
    ) {
        // An encoded map lists its keys strictly increasing: the bulk path.
        let sorted: Vec<(Bytes, Entry<Bytes>)> = m.entries().map(|(k, e)| (k.clone(), e.clone())).collect();
        let decoded: BytesMap = rmp_serde::from_slice(&encode_pairs(&sorted)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &m);
        prop_assert_eq!(&decoded, &applied(&sorted));
        common::consistent(&decoded)?;
        // The same pairs followed by more (repeated or smaller keys, usually): from the first
        // pair out of order on, decoding merges; the result is still the merge of all pairs.
        let mut mixed = sorted;
        mixed.extend(tail);
        let decoded: BytesMap = rmp_serde::from_slice(&encode_pairs(&mixed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &applied(&mixed));
        common::consistent(&decoded)?;
    }

    #[test]
    fn garbage_never_panics(data in vec(any::<u8>(), 0..64)) {
        // Random bytes are occasionally a valid encoding (0x90 is an empty array); whatever
        // decodes must then be a consistent map that round-trips.
        if let Ok(m) = rmp_serde::from_slice::<BytesMap>(&data) {
            common::consistent(&m)?;
            prop_assert_eq!(rmp_serde::from_slice::<BytesMap>(&encode(&m)).ok(), Some(m));
        }
        let _ = rmp_serde::from_slice::<Entry<Bytes>>(&data);
        let _ = rmp_serde::from_slice::<Timestamp>(&data);
    }

    #[test]
    fn corrupted_encodings_never_panic(m in any_map(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&m);
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(decoded) = rmp_serde::from_slice::<BytesMap>(&bytes) {
            common::consistent(&decoded)?;
        }
    }
}

#[test]
fn same_key_twice_decodes_to_the_last_writer_not_the_last_listed() {
    let older = (b("k"), Entry::live(b("old"), ts(10, 0, 1)));
    let newer = (b("k"), Entry::live(b("new"), ts(20, 0, 2)));
    for pairs in [[older.clone(), newer.clone()], [newer.clone(), older.clone()]] {
        let m: BytesMap = rmp_serde::from_slice(&encode_pairs(&pairs)).expect("valid encoding");
        assert_eq!((m.get(&b"k"[..]), m.len(), m.entry_count()), (Some(&b("new")), 1, 1), "{pairs:?}");
        assert_eq!(m.get_entry(&b"k"[..]).map(|e| e.ts), Some(ts(20, 0, 2)));
    }

    // A newer tombstone listed first still deletes; the counts stay right.
    let tomb = (b("k"), Entry::tombstone(ts(30, 0, 1)));
    let m: BytesMap =
        rmp_serde::from_slice(&encode_pairs(&[tomb, older.clone(), newer])).expect("valid encoding");
    assert_eq!((m.get(&b"k"[..]), m.len(), m.tombstones()), (None, 0, 1));

    // Equal timestamps: the greater value wins whichever comes last.
    let x = (b("k"), Entry::live(b("x"), ts(10, 0, 1)));
    let y = (b("k"), Entry::live(b("y"), ts(10, 0, 1)));
    for pairs in [[x.clone(), y.clone()], [y, x]] {
        let m: BytesMap = rmp_serde::from_slice(&encode_pairs(&pairs)).expect("valid encoding");
        assert_eq!(m.get(&b"k"[..]), Some(&b("y")));
    }
}

#[test]
fn a_key_out_of_order_after_a_sorted_run_is_merged_not_appended() {
    let pairs = [
        (b("a"), Entry::live(b("1"), ts(10, 0, 1))),
        (b("b"), Entry::tombstone(ts(10, 0, 1))),
        (b("c"), Entry::live(b("1"), ts(10, 0, 1))),
        // Out of order: an older write to "b" loses, a newer one to "a" wins.
        (b("b"), Entry::live(b("old"), ts(5, 0, 2))),
        (b("a"), Entry::live(b("2"), ts(20, 0, 2))),
        (b("d"), Entry::live(b("1"), ts(10, 0, 1))),
    ];
    let m: BytesMap = rmp_serde::from_slice(&encode_pairs(&pairs)).expect("valid encoding");
    let got: Vec<_> = m.entries().map(|(k, e)| (k.clone(), e.clone())).collect();
    assert_eq!(
        got,
        vec![
            (b("a"), Entry::live(b("2"), ts(20, 0, 2))),
            (b("b"), Entry::tombstone(ts(10, 0, 1))),
            (b("c"), Entry::live(b("1"), ts(10, 0, 1))),
            (b("d"), Entry::live(b("1"), ts(10, 0, 1))),
        ]
    );
    assert_eq!((m.len(), m.tombstones()), (3, 1));
}

#[test]
fn garbage_is_an_error() {
    let cases: &[(&str, &[u8])] = &[
        ("empty input", &[]),
        ("reserved byte 0xc1", &[0xc1]),
        ("a string, not a sequence", &[0xa3, b'a', b'b', b'c']),
        ("an integer", &[0x2a]),
        ("array of 2^32-1 elements, none present", &[0xdd, 0xff, 0xff, 0xff, 0xff]),
        ("pair that is not a pair", &[0x91, 0x01]),
        ("entry with a string timestamp", &[0x91, 0x92, 0xc4, 0x01, b'k', 0x92, 0xa1, b't', 0xc0]),
        ("timestamp with too few fields", &[0x91, 0x92, 0xc4, 0x01, b'k', 0x92, 0x92, 0x01, 0x02, 0xc0]),
        ("bin claiming 4 GiB", &[0x91, 0x92, 0xc6, 0xff, 0xff, 0xff, 0xff]),
        ("negative wall clock", &[0x91, 0x92, 0xc4, 0x01, b'k', 0x92, 0x93, 0xff, 0x00, 0x00, 0xc0]),
    ];
    for (what, data) in cases {
        assert!(rmp_serde::from_slice::<BytesMap>(data).is_err(), "{what} decoded");
    }
    // And the well-formed neighbour of the last two cases does decode, so the errors above come
    // from the corruption, not from a wrong layout in this test.
    let good = [0x91, 0x92, 0xc4, 0x01, b'k', 0x92, 0x93, 0x07, 0x00, 0x01, 0xc0];
    let m: BytesMap = rmp_serde::from_slice(&good).expect("well-formed");
    assert_eq!(m.get_entry(&b"k"[..]), Some(&Entry::tombstone(ts(7, 0, 1))));
    assert_eq!(encode(&m), good, "the encoding is the compact array form");
}

#[test]
fn json_round_trip_of_a_small_map() {
    let mut m = BytesMap::new();
    m.put(b("user:1"), b("alice"), ts(1_000, 0, 1));
    m.put(b("user:2"), b("bob"), ts(1_001, 3, 2));
    m.delete(b("user:3"), ts(1_002, 0, 1));
    m.put(b(""), b(""), ts(5, 0, 9));
    let json = serde_json::to_string(&m).expect("serializable");
    let back: BytesMap = serde_json::from_str(&json).expect("round trip");
    assert_eq!(back, m);
    assert_eq!((back.len(), back.tombstones()), (3, 1));

    // The JSON form is a list of [key, entry] pairs; a duplicate key resolves by timestamp.
    let hand = r#"[[[107], {"ts": {"wall_ms": 9, "logical": 0, "replica": 1}, "value": [110, 101, 119]}],
                  [[107], {"ts": {"wall_ms": 3, "logical": 0, "replica": 1}, "value": [111]}]]"#;
    let m: BytesMap = serde_json::from_str(hand).expect("hand-written JSON");
    assert_eq!(m.get(&b"k"[..]), Some(&b("new")));
    assert!(serde_json::from_str::<BytesMap>(r#"{"k": "v"}"#).is_err());
}
