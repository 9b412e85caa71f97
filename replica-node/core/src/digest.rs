//! The digest of a replica, for anti-entropy repair (design 4.2).
//!
//! Keys are hashed into [`BUCKETS`] buckets; a bucket's digest is the wrapping sum of the
//! 128-bit hashes of its entries (key, timestamp, value or tombstone, deadline), so a merge updates it in
//! O(1) per changed entry (subtract the replaced entry's hash, add the new one's) and no scan of
//! the store is ever needed to keep it. Two replicas holding the same entries have the same
//! digests whatever order they merged them in. Groups of [`BUCKETS_PER_GROUP`] buckets and the
//! root (the sum of everything) are sums too, for a two-level comparison: roots first, then the
//! [`GROUPS`] group digests, then the buckets of the groups that differ, then the entries of the
//! buckets that differ.
//!
//! Hashes are keyed SipHash-1-3 (128 bits for entries, 64 for bucket placement) under a key
//! the whole cluster shares, so every server files a key in the same bucket and a peer cannot
//! craft entries that collide.
//!
//! Each bucket also remembers when it last changed (monotonic ms), so repair can leave alone
//! a bucket that is still changing: writes in flight make two replicas differ for a moment,
//! which is not divergence (see [`crate::gateway`]).

use std::hash::Hasher;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry};
use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};

/// Buckets per replica digest.
pub const BUCKETS: usize = 4096;
/// Buckets per group.
pub const BUCKETS_PER_GROUP: usize = 64;
/// Groups per replica digest.
pub const GROUPS: usize = BUCKETS / BUCKETS_PER_GROUP;

// Groups fit one 64-bit mask on the wire (`RepairBuckets::equal_groups`).
const _: () = assert!(BUCKETS.is_power_of_two() && GROUPS * BUCKETS_PER_GROUP == BUCKETS && GROUPS == 64);

/// The digest of one replica (see the module documentation).
#[derive(Clone)]
pub struct Digest {
    key: [u8; 16],
    buckets: Box<[u128]>,
    /// When each bucket last changed (monotonic ms).
    changed_at: Box<[u64]>,
    root: u128,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hashing key is left out.
        f.debug_struct("Digest").field("root", &format_args!("{:032x}", self.root)).finish_non_exhaustive()
    }
}

impl Digest {
    /// The digest of an empty replica, hashing under `key`.
    pub fn new(key: [u8; 16]) -> Self {
        Digest {
            key,
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            changed_at: vec![0; BUCKETS].into_boxed_slice(),
            root: 0,
        }
    }

    /// The digest of `map` (one pass over it: for a replica loaded at start).
    pub fn of(map: &BytesMap, key: [u8; 16], mono_ms: u64) -> Self {
        let mut d = Digest::new(key);
        for (k, e) in map.entries() {
            d.insert(k, e, mono_ms);
        }
        d
    }

    /// The bucket `key` is filed in.
    pub fn bucket_of(&self, key: &[u8]) -> usize {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write(key);
        (h.finish() >> (64 - BUCKETS.trailing_zeros())) as usize
    }

    /// The hash of one entry: its key, timestamp, value (or the fact that it is a delete) and
    /// deadline: two replicas that disagree on when a key expires disagree in their digests,
    /// and repair settles it. (An entry without a deadline hashes as before deadlines existed.)
    pub fn entry_hash(&self, key: &[u8], entry: &Entry<Bytes>) -> u128 {
        let mut h = SipHasher13x128::new_with_key(&self.key);
        h.write_u64(key.len() as u64);
        h.write(key);
        h.write_u64(entry.ts.wall_ms);
        h.write_u32(entry.ts.logical);
        h.write_u64(entry.ts.replica);
        match &entry.value {
            Some(v) => {
                h.write_u8(1);
                h.write_u64(v.len() as u64);
                h.write(v);
            }
            None => h.write_u8(0),
        }
        if let Some(deadline) = entry.expires {
            h.write_u8(2);
            h.write_u64(deadline.get());
        }
        h.finish128().as_u128()
    }

    /// Accounts for `key` changing from `old` (`None`: a new key) to `new`, at `mono_ms`.
    pub fn replace(&mut self, key: &[u8], old: Option<&Entry<Bytes>>, new: &Entry<Bytes>, mono_ms: u64) {
        let b = self.bucket_of(key);
        let mut delta = self.entry_hash(key, new);
        if let Some(old) = old {
            delta = delta.wrapping_sub(self.entry_hash(key, old));
        }
        self.buckets[b] = self.buckets[b].wrapping_add(delta);
        self.root = self.root.wrapping_add(delta);
        self.changed_at[b] = self.changed_at[b].max(mono_ms);
    }

    /// Accounts for a new key.
    pub fn insert(&mut self, key: &[u8], entry: &Entry<Bytes>, mono_ms: u64) {
        self.replace(key, None, entry, mono_ms);
    }

    /// Accounts for a key leaving the replica (a collected tombstone).
    pub fn remove(&mut self, key: &[u8], entry: &Entry<Bytes>, mono_ms: u64) {
        let b = self.bucket_of(key);
        let h = self.entry_hash(key, entry);
        self.buckets[b] = self.buckets[b].wrapping_sub(h);
        self.root = self.root.wrapping_sub(h);
        self.changed_at[b] = self.changed_at[b].max(mono_ms);
    }

    /// The root: the digest of the whole replica.
    pub fn root(&self) -> u128 {
        self.root
    }

    /// The digest of group `g`.
    pub fn group(&self, g: usize) -> u128 {
        self.buckets[g * BUCKETS_PER_GROUP..(g + 1) * BUCKETS_PER_GROUP]
            .iter()
            .fold(0u128, |acc, b| acc.wrapping_add(*b))
    }

    /// Every group's digest, in order.
    pub fn groups(&self) -> Vec<u128> {
        (0..GROUPS).map(|g| self.group(g)).collect()
    }

    /// The digest of bucket `b`.
    pub fn bucket(&self, b: usize) -> u128 {
        self.buckets[b]
    }

    /// When bucket `b` last changed (monotonic ms).
    pub fn changed_at(&self, b: usize) -> u64 {
        self.changed_at[b]
    }

    /// Whether bucket `b` has not changed for `quiet_ms` before `mono_ms`.
    pub fn is_quiet(&self, b: usize, mono_ms: u64, quiet_ms: u64) -> bool {
        self.changed_at[b].saturating_add(quiet_ms) <= mono_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::Timestamp;
    use proptest::prelude::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// The digest of a map, built by merging it entry by entry through `merge_with`, as the
    /// gateway keeps it.
    fn followed(parts: &[BytesMap]) -> (BytesMap, Digest) {
        let mut map = BytesMap::new();
        let mut d = Digest::new(KEY);
        for p in parts {
            map.merge_with(p, |k, old, new| d.replace(k, old, new, 0));
        }
        (map, d)
    }

    /// Key, value (`None` deletes), wall time, replica, deadline (0: none).
    type Write = (String, Option<u8>, u64, u64, u64);

    fn entry_strategy() -> impl Strategy<Value = Write> {
        ("[a-e]{1,2}", proptest::option::of(0u8..3), 0u64..6, 0u64..3, 0u64..3)
    }

    fn map_of(entries: &[Write]) -> BytesMap {
        let mut m = BytesMap::new();
        for (k, v, wall, replica, deadline) in entries {
            let ts = Timestamp::new(*wall, 0, *replica);
            match v {
                Some(v) => m.apply(b(k), Entry::expiring(Bytes::from(vec![*v]), ts, *deadline)),
                None => m.delete(b(k), ts),
            };
        }
        m
    }

    proptest! {
        /// However the same entries arrive (split, reordered, duplicated), the digest kept
        /// up to date merge by merge equals the digest computed from the final map.
        #[test]
        fn an_incremental_digest_equals_the_digest_of_the_map(
            parts in proptest::collection::vec(proptest::collection::vec(entry_strategy(), 0..8), 0..6),
            order in any::<u64>(),
        ) {
            let mut maps: Vec<BytesMap> = parts.iter().map(|p| map_of(p)).collect();
            let (a, da) = followed(&maps);
            // Another order, with a duplicate.
            let n = maps.len().max(1);
            maps.rotate_left((order as usize) % n);
            if let Some(first) = maps.first().cloned() {
                maps.push(first);
            }
            let (b, db) = followed(&maps);
            prop_assert_eq!(&a, &b);
            let fresh = Digest::of(&a, KEY, 0);
            prop_assert_eq!(da.root(), fresh.root());
            prop_assert_eq!(db.root(), fresh.root());
            for i in 0..BUCKETS {
                prop_assert_eq!(da.bucket(i), fresh.bucket(i));
            }
        }
    }

    #[test]
    fn different_replicas_have_different_roots_and_the_differing_bucket_is_found() {
        let mut a = BytesMap::new();
        for i in 0..1000 {
            a.put(b(&format!("k{i}")), b("v"), Timestamp::new(1, 0, 1));
        }
        // Same key, same timestamp, another value; then a tombstone; then a newer write; then
        // the same value with a deadline (an EXPIRE), and the same with another deadline.
        for change in [
            Entry::live(b("w"), Timestamp::new(1, 0, 1)),
            Entry::tombstone(Timestamp::new(1, 1, 1)),
            Entry::live(b("v"), Timestamp::new(2, 0, 1)),
            Entry::expiring(b("v"), Timestamp::new(2, 0, 1), 50),
            Entry::expiring(b("v"), Timestamp::new(2, 0, 1), 60),
        ] {
            let mut m = a.clone();
            assert!(m.apply(b("k500"), change.clone()), "{change:?} wins over the held entry");
            let (da, dm) = (Digest::of(&a, KEY, 0), Digest::of(&m, KEY, 0));
            assert_ne!(da.root(), dm.root(), "{change:?}");
            let bucket = da.bucket_of(b"k500");
            let differ: Vec<usize> = (0..BUCKETS).filter(|&i| da.bucket(i) != dm.bucket(i)).collect();
            assert_eq!(differ, vec![bucket]);
            let groups: Vec<usize> = (0..GROUPS).filter(|&g| da.group(g) != dm.group(g)).collect();
            assert_eq!(groups, vec![bucket / BUCKETS_PER_GROUP]);
        }
        // Another hashing key files keys elsewhere and hashes them differently.
        assert_ne!(Digest::of(&a, *b"fedcba9876543210", 0).root(), Digest::of(&a, KEY, 0).root());
    }

    #[test]
    fn removing_an_entry_undoes_inserting_it_and_buckets_remember_their_last_change() {
        let mut d = Digest::new(KEY);
        let e = Entry::tombstone(Timestamp::new(3, 0, 1));
        d.insert(b"gone", &e, 100);
        let bucket = d.bucket_of(b"gone");
        assert!(!d.is_quiet(bucket, 1_000, 1_000));
        assert!(d.is_quiet(bucket, 1_100, 1_000));
        assert!(d.is_quiet((bucket + 1) % BUCKETS, 0, 0));
        d.remove(b"gone", &e, 200);
        assert_eq!(d.root(), 0);
        assert_eq!(d.bucket(bucket), 0);
        assert!(!d.is_quiet(bucket, 1_100, 1_000));
    }

    #[test]
    fn keys_spread_over_the_buckets() {
        let d = Digest::new(KEY);
        let mut counts = vec![0u32; BUCKETS];
        for i in 0..BUCKETS * 16 {
            counts[d.bucket_of(format!("user:{i}").as_bytes())] += 1;
        }
        let empty = counts.iter().filter(|&&c| c == 0).count();
        let max = counts.iter().max().copied().unwrap_or(0);
        assert!(empty < BUCKETS / 100, "{empty} empty buckets");
        assert!(max < 48, "a bucket holds {max} of 16 per bucket on average");
    }
}
