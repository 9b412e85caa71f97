//! Decodes arbitrary bytes as a `Delta` of byte keys and values, as a peer frame would be
//! decoded. Must never panic; whatever decodes must be a consistent map whose merge is
//! idempotent and whose re-encoding decodes to the same map.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lww_crdt::{Delta, harness};

fuzz_target!(|data: &[u8]| {
    let Ok(delta) = rmp_serde::from_slice::<Delta<Bytes, Bytes>>(data) else {
        return;
    };
    harness::check_invariants(&delta).unwrap();
    let mut merged = delta.clone();
    assert_eq!(merged.merge(&delta).changed, 0);
    assert_eq!(merged, delta);
    let again: Delta<Bytes, Bytes> = rmp_serde::from_slice(&rmp_serde::to_vec(&delta).unwrap()).unwrap();
    assert_eq!(again, delta);
});
