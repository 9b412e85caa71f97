//! The replica server of the CRDT key-value store, its client library and the `kv` CLI.
//!
//! A node runs one query actor per core. Each actor is an OS thread that owns a full replica
//! (an [`lww_crdt::BytesMap`]), serves its own client port in RESP (so `redis-cli` and every
//! Redis client work), and exchanges deltas with the other actors of its node through
//! unbounded FIFO mailboxes. Nothing on the data path takes a lock.
//!
//! - [`actor`]: mailboxes that wake an event loop.
//! - [`replica`]: the pure state machine of one actor (time in, messages out): writes,
//!   merges, what to sync.
//! - [`pacer`]: when a sync message may go out: it spends the budget of 10 messages per
//!   second per recipient, sending at once when it can and never holding anything longer than
//!   a fixed bound; shared by the actors and the gateway.
//! - [`commands`]: the RESP command set, applied to a replica.
//! - [`server`]: the thin per-core loop around them (sockets, mailbox, clock).
//! - [`node`]: start and stop a whole node; its description line.
//! - [`client`]: the client library (routers, failover).
//! - [`resp`]: the RESP2/RESP3 codec.
//! - [`gateway`]: the pure state machine of the node's link to other servers: one batch per
//!   remote server per pacing step, acknowledged and re-sent after a connection drops,
//!   fan-out of remote batches to the local actors, joins.
//! - [`remote`]: the QUIC driver around the gateway (connections from `net-quic`, dialing,
//!   snapshots on the low-priority stream); [`peer`]: the peer messages; [`snapshot`]: the
//!   chunked walk that streams a snapshot straight from the gateway's replica.
//! - [`stats`]: the node-wide counters behind `INFO`.
//!
//! Not here yet: digest-based anti-entropy between gateways (only deltas lost with a
//! connection are repaired) and persistence (`--data-dir`).

pub mod actor;
pub mod client;
pub mod commands;
pub mod gateway;
pub mod node;
pub mod pacer;
pub mod peer;
pub mod remote;
pub mod replica;
pub mod resp;
pub mod server;
pub mod snapshot;
pub mod stats;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use node::{Description, Node, NodeConfig, StartError};
