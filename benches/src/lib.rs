//! Benchmarks and measurement tools for the store.
//!
//! - [`data`]: deterministic keys, values and scenarios for the CRDT benchmarks
//!   (`benches/crdt.rs`, criterion) and the `crdt_ratio` binary (direct timings, ratio table).
//! - [`harness`]: in-process servers on loopback, joined directly or through link emulators,
//!   polling, percentiles and table footers, for the binaries below.
//! - [`visibility`]: the probe of `local_visibility` and `remote_visibility` (Put on one actor,
//!   time until other actors return it).
//! - [`bulk`]: the loopback QUIC bulk rate, the anchor of `join_speed`.
//! - [`load`]: pipelined `SET` loading of any RESP server, RSS and CPU time of a process.
//! - [`churn`]: the delete-heavy workload of `clocks_tombstones` and `tombstone_heap`.
//!
//! Binaries (`src/bin/`): `crdt_ratio`, `local_visibility`, `remote_visibility`, `join_speed`,
//! `memory` (RSS of 1 M keys against redis-server), `flood_fairness` (PING latency and visibility under a pipelining flood, RSS under the `MGET`
//! attack), and `linkem`, a command-line link emulator to put between two `replica-node`
//! processes.

pub mod bulk;
pub mod churn;
pub mod data;
pub mod harness;
pub mod load;
pub mod visibility;
