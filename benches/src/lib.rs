//! Benchmarks and measurement tools for the store.
//!
//! - [`data`]: deterministic keys, values and scenarios for the CRDT benchmarks
//!   (`benches/crdt.rs`, criterion) and the `crdt_ratio` binary (direct timings, ratio table).

pub mod data;
