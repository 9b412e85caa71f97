//! The thin drivers around the core's state machines: the per-core query loop (mio), the gateway
//! loop (tokio, QUIC) with its connection tasks and progress bar, the client connections the
//! query loop serves, the mailboxes between them and the clocks they read.

pub(crate) mod client_conn;
mod clock;
pub(crate) mod gateway_loop;
pub(crate) mod mailbox;
mod memory;
mod peer_conn;
pub(crate) mod persist_loop;
mod progress;
pub(crate) mod query_loop;

use replica_core::SyncBatch;

pub(crate) use clock::{Clock, random_u64};
pub(crate) use memory::rss_bytes;

/// Mail a query actor accepts.
#[derive(Debug)]
pub enum ActorMsg {
    /// A delta from another actor of this node (or, fanned out, from a remote server).
    Sync(SyncBatch),
    /// Tombstones every server of the cluster holds, older than the grace: remove them (each
    /// only if the replica holds that very tombstone).
    Collect(std::sync::Arc<Vec<(bytes::Bytes, lww_crdt::Timestamp)>>),
    /// `CLIENT KILL` on another actor: close this actor's client connection with that id.
    KillClient(u64),
}

/// Requests from operators to the gateway (through a query actor's client port).
#[derive(Debug)]
pub enum AdminMsg {
    /// `CLUSTER FORGET id`: remove a server from the cluster.
    Forget(String),
}
