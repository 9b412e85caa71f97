//! The sans-IO core of a replica server: every decision a server makes, as state machines that
//! take time and messages in and return what to send.
//!
//! - [`replica`]: one query actor's replica: client writes, merges of local and remote deltas,
//!   when to send its own delta to the other actors.
//! - [`gateway`]: the node's link to other servers: one batch per remote server per pacing
//!   step, acknowledged and re-sent after a connection drops, fan-out of remote batches to the
//!   local actors, identity and membership, joins and refills, anti-entropy repair.
//! - [`pacer`]: when a sync message may go out (10 per second per recipient, never held longer
//!   than a fixed bound); shared by both machines.
//! - [`digest`]: the bucketed digest of a replica that repair compares.
//! - [`snapshot`]: the chunked walk that streams a snapshot from the gateway's replica.
//! - [`peer`]: the messages servers exchange.
//!
//! What this crate deliberately does not do: read a clock, spawn a thread, touch a socket or a
//! file, or draw randomness. Time is an argument ([`Now`]). `clippy.toml` beside this crate's
//! manifest turns a slip into a CI failure, and its dependencies hold no IO crate. The drivers
//! (the per-core loops, the QUIC gateway loop) live in `replica-node`.

pub mod digest;
pub mod gateway;
pub mod pacer;
pub mod peer;
pub mod replica;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod snapshot;
pub mod stats;

pub use replica::{Now, Replica, SyncBatch};

/// Largest key the store accepts, in bytes (design 4.5).
pub const MAX_KEY: usize = 64 * 1024;
/// Largest value the store accepts, in bytes (design 4.5).
pub const MAX_VALUE: usize = 8 * 1024 * 1024;
