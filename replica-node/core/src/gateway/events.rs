//! What the gateway is told ([`Event`]) and what it asks of its driver ([`Transmit`],
//! [`Notice`]), and the members as `CLUSTER NODES` shows them.

use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, Timestamp};

use super::ConnId;
use crate::peer::PeerMsg;
use crate::replica::SyncBatch;

/// Something that happened, for [`Gateway::handle`](super::Gateway::handle).
#[derive(Debug)]
pub enum Event {
    /// A delta of local writes from a query actor.
    Local(Arc<BytesMap>),
    /// A connection is up; `peer` is the node id its certificate proves. `dialed` is the
    /// address dialled, for a connection this node opened.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The peer's proven node id.
        peer: String,
        /// The address dialled, if this side dialled.
        dialed: Option<String>,
    },
    /// A connection is gone.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// A message arrived on a connection.
    Message {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: PeerMsg,
    },
    /// A snapshot chunk arrived, prepared off the gateway's thread (see [`SnapshotPiece`]).
    Chunk {
        /// The connection.
        conn: ConnId,
        /// The request it answers.
        id: u64,
        /// The entries.
        piece: SnapshotPiece,
        /// Entries the sender held when the transfer started.
        total: u64,
        /// Whether it is the last chunk.
        last: bool,
    },
    /// An operator removes a server from the cluster (`CLUSTER FORGET`).
    Forget(String),
}

/// What the gateway asks its driver to do, from [`Gateway::poll_transmit`](super::Gateway::poll_transmit).
#[derive(Debug, Clone)]
pub enum Transmit {
    /// Send a message on the connection's high-priority stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: PeerMsg,
    },
    /// Close a connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        why: CloseWhy,
    },
    /// Dial this address until a connection is up (then report it as [`Event::Connected`]).
    Dial {
        /// The address.
        addr: String,
    },
    /// Stop dialling this address (a connection already up stays).
    StopDial {
        /// The address.
        addr: String,
    },
    /// Deliver this batch to every local query actor.
    FanOut(SyncBatch),
    /// Every local query actor removes these tombstones (each only if it still holds that very
    /// tombstone): every server of the cluster has them, and they are older than the grace.
    Collect(Arc<Vec<(Bytes, Timestamp)>>),
    /// Something an operator should know (the driver logs it).
    Notice(Notice),
}

/// Why the gateway closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseWhy {
    /// Another connection to the same peer is kept.
    Replaced,
    /// The peer broke the protocol (another version, a false identity, a bad message).
    Protocol,
    /// The peer was removed from the cluster.
    Refused,
    /// The connection leads back to this node.
    Loop,
}

/// Events worth a log line, decided here and logged by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A peer's `Hello` arrived: the link is live.
    Up {
        /// The peer.
        peer: String,
        /// Its advertised address.
        addr: String,
    },
    /// The connection to a peer is gone.
    Down {
        /// The peer.
        peer: String,
    },
    /// A dialled address (or a connection) leads back to this node.
    SelfConnection {
        /// The address, if dialled.
        addr: Option<String>,
    },
    /// A peer's `Hello` claimed another node id than its certificate proves.
    WrongClaim {
        /// The proven id.
        peer: String,
        /// The claimed one.
        claimed: String,
    },
    /// A peer speaks another protocol version.
    VersionMismatch {
        /// The peer.
        peer: String,
        /// Its version.
        version: u32,
    },
    /// A new node id took over a member's address: the old one restarted without its data.
    Replaced {
        /// The old id.
        old: String,
        /// The new id.
        new: String,
    },
    /// A member was removed from the cluster.
    Forgotten {
        /// The member.
        node: String,
    },
    /// A forgotten node tried to connect and was refused.
    RefusedForgotten {
        /// The node.
        peer: String,
    },
    /// A peer sent an unusable membership list.
    BadMembers {
        /// The peer.
        peer: String,
    },
    /// A snapshot is being sent to a peer.
    Serving {
        /// The peer.
        peer: String,
        /// Entries in the replica.
        keys: u64,
        /// Whether it resumes an earlier transfer.
        resumed: bool,
    },
    /// A snapshot was asked for.
    Filling {
        /// From whom.
        peer: String,
        /// Whether it resumes a transfer cut short.
        resumed: bool,
    },
    /// A snapshot transfer to this node stopped before its end; it will be asked for again.
    FillInterrupted {
        /// The peer that was sending it.
        peer: String,
    },
    /// The snapshot transfer to this node is complete.
    Filled {
        /// The peer that sent the last part.
        peer: String,
        /// Entries received in all.
        entries: u64,
    },
    /// Entries queued for an unreachable member were dropped; repair recovers them.
    Dropped {
        /// The member.
        peer: String,
    },
    /// A peer's clock is off from ours by more than half the bound.
    ClockOffset {
        /// The peer.
        peer: String,
        /// How far its clock is ahead of ours (ms; negative: behind).
        offset_ms: i64,
        /// The bound.
        bound_ms: u64,
    },
    /// Entries stamped too far in the future were refused.
    FutureEntries {
        /// Who sent them.
        peer: String,
        /// How many since the last notice.
        count: u64,
        /// How far ahead of our clock the furthest was (ms).
        ahead_ms: u64,
    },
    /// This node's clock is too far from its peers' (ahead of most of them, or apart from its
    /// only peer) by more than the bound: client writes are refused until it is not.
    Skewed {
        /// Why writes are refused, or `None`: no longer.
        refusal: Option<String>,
    },
}

/// A received snapshot chunk and a second copy of its tree (keys and values shared, not
/// copied), made where the chunk was decoded: the gateway moves one copy into its replica and
/// keeps the other for the actors, so its own thread clones no entry. Moving entries into a
/// map is about half the cost of merging them by reference, which looks each key up twice
/// and makes each freshly decoded buffer shareable on its first clone.
#[derive(Debug, Clone)]
pub struct SnapshotPiece {
    pub(super) entries: BytesMap,
    pub(super) copy: BytesMap,
}

impl SnapshotPiece {
    /// Prepares `entries` (this is where the copy is made).
    pub fn new(entries: BytesMap) -> Self {
        let copy = entries.clone();
        SnapshotPiece { entries, copy }
    }

    /// Entries in the chunk.
    pub fn entry_count(&self) -> usize {
        self.entries.entry_count()
    }
}

/// How a member of the cluster stands, as `CLUSTER NODES` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// This node.
    Myself,
    /// Connected (its `Hello` arrived).
    Connected,
    /// Known, not connected.
    Disconnected,
    /// Restarted without its data under another id.
    Replaced,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The node id.
    pub node: String,
    /// Its peer address.
    pub peer: String,
    /// How it stands.
    pub status: MemberStatus,
    /// When it was last heard (monotonic ms; this node: `None`), if it ever was.
    pub last_contact: Option<u64>,
}
