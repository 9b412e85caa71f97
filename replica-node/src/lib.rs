//! The replica server of the CRDT key-value store.
//!
//! A node runs one query actor per core. Each actor is an OS thread that owns a full replica
//! (an [`lww_crdt::BytesMap`]), serves its own client port in RESP (so `redis-cli` and every
//! Redis client work), and exchanges deltas with the other actors of its node through
//! unbounded FIFO mailboxes. Nothing on the data path takes a lock. A gateway thread links the
//! node to the other servers over QUIC.
//!
//! The crates of the server, from the bottom up:
//! - `replica-core` (`replica-node/core`): the sans-IO state machines — every decision, with
//!   time passed in and messages returned; no clock, socket, thread or randomness.
//! - `resp` (`replica-node/resp`): the RESP2/RESP3 codec, pure as well.
//! - this crate: `command` (the RESP command set applied to a replica), `runtime` (the thin
//!   drivers: per-core mio loops, the tokio gateway loop, mailboxes, clocks) and `node` (start
//!   and stop a whole node; its description line).
//! - `replica-client` (`replica-node/client`): the client library and the `kv` CLI, re-exported
//!   here as [`client`].

mod command;
mod node;
mod runtime;
mod stats;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use command::Password;
pub use node::{Description, MAX_ACTORS, Node, NodeConfig, StartError, default_actors, issue_cert};
/// The client library (`replica-client`), for embedders and the contract path
/// `replica_node::client::Client`.
pub use replica_client as client;
pub use runtime::client_conn::{ClientOptions, DEFAULT_MAXCLIENTS, DEFAULT_OUTPUT_LIMIT, MIN_OUTPUT_LIMIT};
pub use stats::NodeStats;
