//! Generators and helpers shared by the integration tests.
//!
//! Inputs are deliberately small: four keys (one of them a prefix of another, one empty), three
//! values plus tombstones, two deadlines, and timestamps from a range of eight, so that two
//! entries for the same key with the same timestamp but different values (or a value and a
//! tombstone, or two deadlines) are common rather than a one-in-a-billion draw. Style item 7: merge must need no caller
//! validation, so the tests never filter ties out.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use bytes::Bytes;
use std::num::NonZeroU64;

use lww_crdt::{BytesMap, Entry, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Cases per property; the brief and CI budget ask for at least 256.
pub const CASES: u32 = 256;

/// A proptest configuration that records failing seeds in
/// `lww-crdt/proptest-regressions/<file>.txt` (proptest's default location rule does not work
/// for `tests/`, which has no `lib.rs`, and would put them beside the source file instead).
#[allow(unused_macros)] // exhaustive.rs runs no proptest
macro_rules! config {
    ($file:literal) => {
        proptest::test_runner::Config {
            cases: common::CASES,
            failure_persistence: Some(Box::new(common::regressions(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/proptest-regressions/",
                $file,
                ".txt"
            )))),
            ..proptest::test_runner::Config::default()
        }
    };
}

/// The failure persistence used by [`config!`].
pub fn regressions(path: &'static str) -> FileFailurePersistence {
    FileFailurePersistence::Direct(path)
}

/// The keys the generators draw from: `a` is a prefix of `ab`, and the empty key is a prefix of
/// everything.
pub const KEYS: [&[u8]; 4] = [b"", b"a", b"ab", b"b"];

pub fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(KEYS.to_vec()).prop_map(Bytes::from_static)
}

/// A value or a tombstone (`None`, one draw in four).
pub fn value() -> impl Strategy<Value = Option<Bytes>> {
    prop::sample::select(vec![None, Some(&b""[..]), Some(&b"x"[..]), Some(&b"y"[..])])
        .prop_map(|v| v.map(Bytes::from_static))
}

/// Timestamps from a tiny range (2 × 2 × 2 = 8 distinct values, weighted towards logical 0
/// and replica 0), so ties are frequent.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    let small = || prop_oneof![3 => Just(0u8), 1 => Just(1u8)];
    (0u64..2, small(), small())
        .prop_map(|(wall_ms, logical, replica)| Timestamp::new(wall_ms, logical.into(), replica.into()))
}

/// No deadline (one draw in two) or one of two, so entries that differ only by their
/// deadline, and a value with a deadline against a tombstone at the same timestamp (what an
/// expiry produces), are common.
pub fn deadline() -> impl Strategy<Value = Option<NonZeroU64>> {
    prop_oneof![2 => Just(None), 1 => Just(NonZeroU64::new(1)), 1 => Just(NonZeroU64::new(2))]
}

/// An entry: a value or a tombstone, and for a value maybe a deadline. (Tombstones never carry
/// one: `Entry::tombstone` and `Entry::expired` make none.)
pub fn entry() -> impl Strategy<Value = Entry<Bytes>> {
    (timestamp(), value(), deadline()).prop_map(|(ts, value, expires)| {
        let expires = expires.filter(|_| value.is_some());
        Entry { ts, value, expires }
    })
}

/// One write: a key and the entry written (a put or a delete).
pub fn write() -> impl Strategy<Value = (Bytes, Entry<Bytes>)> {
    (key(), entry())
}

/// A map (or delta) built from up to six writes to four keys, tombstones included.
pub fn map() -> impl Strategy<Value = BytesMap> {
    vec(write(), 0..7).prop_map(|writes| writes.into_iter().collect())
}

/// `a ⊔ b` by the borrowing merge.
pub fn merged(a: &BytesMap, b: &BytesMap) -> BytesMap {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// `a ⊔ b` by the consuming merge (which takes a shortcut when `a` is empty).
pub fn merged_owned(a: BytesMap, b: BytesMap) -> BytesMap {
    let mut a = a;
    a.merge_owned(b);
    a
}

/// The map's counts agree with its entries (`lww_crdt::harness::check_invariants`; without the
/// `harness` feature only the algebraic checks run).
pub fn consistent(m: &BytesMap) -> Result<(), TestCaseError> {
    #[cfg(feature = "harness")]
    lww_crdt::harness::check_invariants(m).map_err(TestCaseError::fail)?;
    let _ = m;
    Ok(())
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn ts(wall_ms: u64, logical: u32, replica: u64) -> Timestamp {
    Timestamp::new(wall_ms, logical, replica)
}
