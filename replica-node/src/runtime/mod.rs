//! The thin drivers around the core's state machines: the per-core query loop (mio), the gateway
//! loop (tokio, QUIC), the mailboxes between them and the clocks they read.

mod clock;
pub(crate) mod gateway_loop;
pub(crate) mod mailbox;
pub(crate) mod persist_loop;
pub(crate) mod query_loop;

use replica_core::SyncBatch;

pub(crate) use clock::{Clock, random_u64};

/// Mail a query actor accepts.
#[derive(Debug)]
pub enum ActorMsg {
    /// A delta from another actor of this node (or, fanned out, from a remote server).
    Sync(SyncBatch),
}
