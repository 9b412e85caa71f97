//! Deterministic data and scenarios shared by the `crdt` criterion benchmark and the
//! `crdt_ratio` binary, so both measure exactly the same inputs.
//!
//! Keys are 16 bytes, values 100 bytes, both in separately allocated [`Bytes`] (as decoded from
//! the network). The first 4 bytes of a key are a "tenant" prefix shared by about
//! [`KEYS_PER_PREFIX`] keys, which gives `scan_prefix` a realistic result size; the other 12
//! bytes are random, so keys arrive in random order.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use lww_crdt::{BytesMap, Timestamp};

/// Length of every key.
pub const KEY_LEN: usize = 16;
/// Length of every value (the redis-benchmark default the design's targets use).
pub const VALUE_LEN: usize = 100;
/// Expected number of keys under one 4-byte prefix.
pub const KEYS_PER_PREFIX: usize = 100;

/// Wall-clock base of the writes a replica already holds.
const OLD_MS: u64 = 1_000;
/// Wall-clock base of newer writes (deltas, newer replicas): above every `OLD_MS + i`.
const NEW_MS: u64 = 1 << 40;

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for benchmark data, and
/// it keeps `rand` out of the dependencies.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Makes `b` cheap to clone from now on: a `Bytes` built from a `Vec` allocates its shared
/// header on the first clone, which would otherwise land inside the first timed iteration.
fn promoted(b: Bytes) -> Bytes {
    drop(b.clone());
    b
}

/// `n` key-value pairs from `seed`, keys spread over `n / KEYS_PER_PREFIX` prefixes. Keys are
/// unique in practice (96 random bits after the prefix; [`lww`] asserts it).
pub fn pairs(n: usize, seed: u64) -> Vec<(Bytes, Bytes)> {
    pairs_in(n, (n / KEYS_PER_PREFIX).max(1), seed)
}

/// `n` key-value pairs from `seed`, keys spread over `prefixes` prefixes.
pub fn pairs_in(n: usize, prefixes: usize, seed: u64) -> Vec<(Bytes, Bytes)> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut key = [0u8; KEY_LEN];
            key[..4].copy_from_slice(&(rng.below(prefixes) as u32).to_be_bytes());
            key[4..12].copy_from_slice(&rng.next_u64().to_be_bytes());
            key[12..].copy_from_slice(&rng.next_u64().to_be_bytes()[..4]);
            let mut value = [0u8; VALUE_LEN];
            for chunk in value.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
            }
            (promoted(Bytes::copy_from_slice(&key)), promoted(Bytes::copy_from_slice(&value)))
        })
        .collect()
}

/// A new value for every pair (same keys), as a later round of writes would bring.
pub fn rewritten(pairs: &[(Bytes, Bytes)], seed: u64) -> Vec<(Bytes, Bytes)> {
    let fresh = pairs_in(pairs.len(), 1, seed);
    pairs.iter().zip(fresh).map(|((k, _), (_, v))| (k.clone(), v)).collect()
}

/// Timestamp of the `i`-th write a replica already holds.
pub fn old_ts(i: usize) -> Timestamp {
    Timestamp::new(OLD_MS + i as u64, 0, 1)
}

/// Timestamp of the `i`-th newer write: greater than every [`old_ts`].
pub fn new_ts(i: usize) -> Timestamp {
    Timestamp::new(NEW_MS + i as u64, 0, 2)
}

/// A replica (or delta) holding `pairs`, stamped by `ts`.
pub fn lww(pairs: &[(Bytes, Bytes)], ts: fn(usize) -> Timestamp) -> BytesMap {
    let mut map = BytesMap::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        map.put(k.clone(), v.clone(), ts(i));
    }
    assert_eq!(map.len(), pairs.len(), "generated keys must be unique");
    map
}

/// The `HashMap` baseline holding `pairs`.
pub fn hash(pairs: &[(Bytes, Bytes)]) -> HashMap<Bytes, Bytes> {
    pairs.iter().cloned().collect()
}

/// The `BTreeMap` baseline holding `pairs`.
pub fn btree(pairs: &[(Bytes, Bytes)]) -> BTreeMap<Bytes, Bytes> {
    pairs.iter().cloned().collect()
}

/// `n` copies of keys drawn from `pairs` in random order, in their own buffers, as a client
/// request would carry them (a lookup never shares memory with the stored key).
pub fn lookups(pairs: &[(Bytes, Bytes)], n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| Bytes::copy_from_slice(&pairs[rng.below(pairs.len())].0)).collect()
}

/// The 4-byte prefix of `pairs[0]`'s key and how many keys share it.
pub fn prefix_with_count(pairs: &[(Bytes, Bytes)]) -> (Bytes, usize) {
    let prefix = pairs[0].0.slice(..4);
    let count = pairs.iter().filter(|(k, _)| k.starts_with(&prefix)).count();
    (Bytes::copy_from_slice(&prefix), count)
}

/// A replica and a delta to merge into it, the typical sync step.
#[derive(Debug)]
pub struct DeltaScenario {
    /// What the replica holds, stamped with [`old_ts`].
    pub replica: Vec<(Bytes, Bytes)>,
    /// The delta's entries, stamped with [`new_ts`]: the first half are newer writes to keys
    /// the replica holds, the second half new keys.
    pub delta: Vec<(Bytes, Bytes)>,
}

/// A replica of `replica_len` entries and a delta of `delta_len` entries, half of them newer
/// writes to existing keys and half new keys (so the delta both updates and inserts).
pub fn delta_scenario(replica_len: usize, delta_len: usize, seed: u64) -> DeltaScenario {
    let replica = pairs(replica_len, seed);
    let updates = delta_len / 2;
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let mut picked: Vec<usize> = (0..replica_len).collect();
    rng.shuffle(&mut picked);
    let updated: Vec<(Bytes, Bytes)> = picked[..updates].iter().map(|&i| replica[i].clone()).collect();
    let mut delta = rewritten(&updated, seed ^ 1);
    // New keys over the replica's prefixes, so they land all over its key space.
    delta.extend(pairs_in(delta_len - updates, (replica_len / KEYS_PER_PREFIX).max(1), seed ^ 2));
    DeltaScenario { replica, delta }
}
