//! A last-writer-wins map CRDT with hybrid-logical-clock timestamps.
//!
//! This crate is the data model of the key-value store: every replica (every query actor of
//! every server) holds one [`LwwMap`], accepts writes stamped by its own [`Hlc`], and converges
//! with every other replica by [`LwwMap::merge`]-ing the [`Delta`]s they send it.
//!
//! - [`Timestamp`]: `(wall_ms, logical, replica)`, totally ordered; the replica id makes two
//!   timestamps from different replicas always distinct.
//! - [`Hlc`]: a hybrid logical clock that issues strictly increasing timestamps even when the
//!   wall clock stalls or steps back, and moves past every timestamp it observes.
//! - [`LwwMap`]: `key -> (Option<value>, Timestamp, deadline)`; `None` is a tombstone, and a
//!   value may expire at a deadline written with it ([`Entry::expiring`]). Merge is a join in
//!   a semilattice: associative, commutative and idempotent, for *any* input, including two
//!   different entries with the same timestamp (see [`Entry`] for the tie-break and for the
//!   tombstone an expired entry turns into).
//! - [`Key`]: what a map key provides besides `Ord`, a 64-bit head that agrees with the key
//!   order (for byte strings, the first 8 bytes; a map of byte strings takes its heads from the
//!   bytes after the prefix all its keys share), so the tree compares most keys without
//!   reading their buffers.
//! - [`Record`]: a key and its entry in one shared allocation. Maps hold records by pointer,
//!   so every map a write reaches (each query actor's replica, the gateway's, the buffers in
//!   between) shares one copy of its key and value.
//! - [`Delta`] and [`DeltaBuffer`]: a delta is itself a small map; a buffer collects what
//!   changed since the last flush, newest entry per key.
//!
//! What this crate deliberately does not do: IO, threads, clock reads or randomness. Time is
//! always an argument (a `lww-crdt/clippy.toml` turns a slip into a lint error), so every
//! behaviour is reproducible in tests and simulations.
//!
//! ```
//! use bytes::Bytes;
//! use lww_crdt::{Hlc, LwwMap};
//!
//! let (mut a, mut b) = (LwwMap::new(), LwwMap::new());
//! let (mut clock_a, mut clock_b) = (Hlc::new(1), Hlc::new(2));
//!
//! a.put(Bytes::from("k"), Bytes::from("from a"), clock_a.now(1_000));
//! b.put(Bytes::from("k"), Bytes::from("from b"), clock_b.now(1_010)); // 10 ms later: wins
//!
//! let (snap_a, snap_b) = (a.clone(), b.clone());
//! a.merge(&snap_b);
//! b.merge(&snap_a);
//! assert_eq!(a, b);
//! assert_eq!(a.get(&b"k"[..]), Some(&Bytes::from("from b")));
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod clock;
mod delta;
mod key;
mod map;
#[cfg(feature = "serde")]
mod serde_impls;
mod tree;

#[cfg(any(test, feature = "harness"))]
pub mod harness;

pub use clock::{Hlc, ReplicaId, Timestamp};
pub use delta::{Delta, DeltaBuffer};
pub use key::Key;
pub use map::{Entry, LwwMap, MergeStats, Record};

/// The reference-counted pointer that shares a [`Record`] between maps and delta buffers
/// (`triomphe`'s `Arc`: a std `Arc` without weak references, so 8 bytes smaller per record).
pub type Shared<T> = triomphe::Arc<T>;

/// The map the store replicates: binary keys and values in shared, cheaply cloned buffers.
pub type BytesMap = LwwMap<bytes::Bytes, bytes::Bytes>;

/// The README's example, compiled and run as a doc test.
#[cfg(all(doctest, feature = "serde"))]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
