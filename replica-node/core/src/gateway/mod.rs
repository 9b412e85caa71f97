//! The gateway state machine: the node's one link to the other servers.
//!
//! Pure, like [`crate::replica`], and in quinn-proto's shape: the driver feeds it [`Event`]s
//! ([`Gateway::handle`]), sends what [`Gateway::poll_transmit`] returns, sleeps until
//! [`Gateway::poll_timeout`], and fills each connection's low-priority stream from
//! [`Gateway::poll_bulk`]. Every decision is made here, so the daemon
//! (`replica_node::runtime::gateway_loop`) and the deterministic simulation drive the same
//! code:
//!
//! - **Deltas.** Local deltas are merged into the gateway's own full replica; what changed it
//!   is queued for every member of the cluster, so each Put crosses to each remote server once,
//!   however many actors either side has, paced per server ([`crate::pacer`]). Deltas are
//!   numbered and kept until acknowledged, so a connection that dies loses nothing
//!   ([`link`]). Remote entries are fanned out once to every local actor and never forwarded.
//! - **Identity and connections.** A peer is the node its certificate proves (the driver says
//!   who in [`Event::Connected`]); a `Hello` claiming another id is refused. Of two servers, the
//!   one that started later dials the other; a second connection to the same peer replaces the
//!   first if the peer restarted (a new incarnation), else the one dialled by the smaller id
//!   wins, so both sides keep the same one.
//! - **Membership.** Servers tell each other the members they know, so a server joined through
//!   any one member finds all the others. A new node id at a member's address is that member
//!   restarted without its data: the old id is `Replaced` and holds nothing back. An operator
//!   removes a server for good with [`Event::Forget`]; the cluster stops dialling and waiting
//!   for it. A member that stays unreachable keeps at most [`MAX_PENDING_WHILE_DOWN`] entries
//!   queued; beyond that, repair catches it up when it returns.
//! - **Fill.** A server that started empty pulls one snapshot from the first peer with data,
//!   resumed after a failure until complete ([`fill`]); the chunks reach the actors as one
//!   batch when it ends.
//! - **Repair.** Digests of the replicas are compared and what differs is exchanged
//!   ([`repair`]): only the entries that differ travel, so replicas that diverged for any
//!   reason converge without new writes.

mod clock;
mod fill;
mod link;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, MergeStats, Timestamp};

use crate::digest::{BUCKETS, BUCKETS_PER_GROUP, Digest};
use crate::pacer::Pacer;
use crate::peer::{
    BulkRef, CHUNK_BYTES, Hello, MAX_MEMBERS, MemberInfo, MemberState, PROTOCOL_VERSION, PeerMsg,
};
use crate::replica::{Now, SyncBatch};
use crate::snapshot::SnapshotWalk;
use crate::stats::GatewayStats;

pub use clock::{ClockView, PROBE_INTERVAL_MS};
pub use fill::FILL_RETRY_MS;
pub use link::{ACK_DELAY_MS, MAX_PENDING_WHILE_DOWN, MAX_UNACKED, ROOT_INTERVAL_MS};
pub use repair::{MAX_ROUND_INTERVAL_MS, MIN_ROUND_INTERVAL_MS, QUIET_MS, REPAIR_AFTER_MS, ROUND_TIMEOUT_MS};

use clock::PeerClock;
use fill::Filling;
use link::{Deltas, Down, Greeting, Live, Phase};
use repair::Repair;

/// How long held snapshot entries wait for the next chunk before they go to the actors anyway.
pub const SNAPSHOT_STALL_MS: u64 = 1_000;

/// A connection whose peer has not said `Hello` after this long is closed (and redialled by
/// its dialler).
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// How often each live peer is told the membership again, changed or not: a list lost or
/// refused on the way (or an update that crossed a connection going down) is made good.
pub const GOSSIP_INTERVAL_MS: u64 = 30_000;

/// Default bound on how far ahead of this node's clock an entry may be stamped (design 4.9).
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// Default age past which a tombstone may be collected, once every server has it (design 4.9).
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 10 * 60 * 1_000;

/// How often the gateway looks for tombstones to collect.
pub const GC_INTERVAL_MS: u64 = 10_000;

/// An agreement with a peer counts for collecting tombstones once the peer has been heard from,
/// in the same run, this long after it: long enough for a peer with a data directory to have
/// made what it held durable (its commit window is 100 ms).
pub const DURABLE_AFTER_MS: u64 = 1_000;

/// A collected tombstone is remembered this long (its key and timestamp only), so that a
/// server that has not collected it yet cannot hand it back through repair meanwhile.
pub const GHOST_TTL_MS: u64 = 120_000;

/// Notices about a peer's clock or its entries from the future are repeated at most this often.
const NOTICE_EVERY_MS: u64 = 10_000;

/// A connection, as the driver names it (unique among the process's connections).
pub type ConnId = u64;

/// A server to join, from a `--join` description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTarget {
    /// Its node id.
    pub node: String,
    /// The address to dial (its peer address, or a relay in front of it).
    pub addr: String,
}

/// What a gateway starts with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's id.
    pub node: String,
    /// This node's peer address as others should dial it.
    pub advertised: String,
    /// Query actors on this node.
    pub actors: usize,
    /// Random per process (never 0): tells peers this run from earlier ones.
    pub incarnation: u64,
    /// Wall-clock ms at which this process started.
    pub started_ms: u64,
    /// The key of the digest hashes, the same on every server of the cluster.
    pub digest_key: [u8; 16],
    /// The servers to join.
    pub joins: Vec<JoinTarget>,
    /// A member that started after this node is dialled by this node too once it has been
    /// unreachable this long (`None`: never; for tests whose links run through relays that
    /// only the newer server's dials use). See [`DEFAULT_REDIAL_NEWER_MS`].
    pub redial_newer_ms: Option<u64>,
    /// The most entries kept for an unreachable member ([`MAX_PENDING_WHILE_DOWN`] by
    /// default); beyond it they are dropped and repair catches the member up when it is back.
    pub pending_limit: usize,
    /// Entries stamped more than this far ahead of this node's clock are refused
    /// ([`DEFAULT_MAX_CLOCK_OFFSET_MS`]); a node ahead of most peers by more refuses writes.
    pub max_clock_offset_ms: u64,
    /// Tombstones older than this are collected once every member has them
    /// ([`DEFAULT_TOMBSTONE_GRACE_MS`]).
    pub tombstone_grace_ms: u64,
}

/// By default a newer member is dialled once it has been unreachable this long.
pub const DEFAULT_REDIAL_NEWER_MS: u64 = 5_000;

/// Something that happened, for [`Gateway::handle`].
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

/// What the gateway asks its driver to do, from [`Gateway::poll_transmit`].
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
    entries: BytesMap,
    copy: BytesMap,
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

/// What the gateway knows of one other server.
#[derive(Debug)]
struct Member {
    /// Its advertised peer address, from its `Hello` or from another member.
    advertised: Option<String>,
    /// The address this node dials it at (a `--join` address, or the advertised one).
    dial: Option<String>,
    /// When its current process started (wall-clock ms), 0 if unknown.
    started_ms: u64,
    state: MemberState,
    /// When it was last heard (monotonic ms).
    last_contact: Option<u64>,
    /// Entries in its replica, from its latest `Hello`.
    entries: u64,
    phase: Phase,
    deltas: Deltas,
    /// When (monotonic ms) its replica was seen to agree with ours: whole (the current stretch
    /// of equal roots, and the latest moment of agreement already confirmed durable), and
    /// bucket by bucket (empty until a round reports buckets). Reset when its process changes.
    root_agreeing: Option<(u64, u64)>,
    /// The last stretch of equal roots that ended, kept until it is confirmed durable.
    root_ended: Option<(u64, u64)>,
    root_durable: u64,
    agreed: Vec<u64>,
    /// Tombstones it handed back that were collected here: it is told so.
    collected_for: Vec<(Bytes, Timestamp)>,
    /// A fingerprint of the membership as it last told it (its list and itself): tombstones
    /// are collected only while every member sees the same cluster.
    view: Option<u64>,
    /// Entries from the future it sent since the last notice, and the furthest ahead.
    future: (u64, u64),
    future_noticed_at: Option<u64>,
}

impl Member {
    fn new(now: u64) -> Self {
        Member {
            advertised: None,
            dial: None,
            started_ms: 0,
            state: MemberState::Active,
            last_contact: None,
            entries: 0,
            phase: Phase::Down(Down { since: now }),
            deltas: Deltas::default(),
            root_agreeing: None,
            root_ended: None,
            root_durable: 0,
            agreed: Vec::new(),
            collected_for: Vec::new(),
            view: None,
            future: (0, 0),
            future_noticed_at: None,
        }
    }

    /// The latest moment its replica agreed with ours in bucket `b` that is confirmed durable:
    /// the member was heard from, in the same run, [`DURABLE_AFTER_MS`] after it (0: none).
    fn durable_agreement(&self, b: usize) -> u64 {
        let heard = self.last_contact.map_or(0, |c| c.saturating_sub(DURABLE_AFTER_MS));
        let bucket = self.agreed.get(b).copied().filter(|&t| t <= heard).unwrap_or(0);
        bucket.max(self.root_durable_at(heard))
    }

    /// The latest confirmed moment of whole agreement, given the member was heard from after
    /// `heard` + [`DURABLE_AFTER_MS`].
    fn root_durable_at(&self, heard: u64) -> u64 {
        // Any moment of a stretch counts: the latest one heard from after.
        let confirmed = |stretch: Option<(u64, u64)>| match stretch {
            Some((since, until)) if since <= heard => until.min(heard),
            _ => 0,
        };
        self.root_durable.max(confirmed(self.root_agreeing)).max(confirmed(self.root_ended))
    }

    /// Roots compared at `now`: equal or not.
    fn root_check(&mut self, equal: bool, now: u64) {
        match (self.root_agreeing, equal) {
            (Some((since, _)), true) => self.root_agreeing = Some((since, now)),
            (None, true) => self.root_agreeing = Some((now, now)),
            (Some(stretch), false) => {
                // The stretch ends: what of the one before is confirmed by now is kept, and
                // this one waits to be confirmed by later contact.
                let heard = self.last_contact.map_or(0, |c| c.saturating_sub(DURABLE_AFTER_MS));
                self.root_durable = self.root_durable_at(heard);
                self.root_ended = Some(stretch);
                self.root_agreeing = None;
            }
            (None, false) => {}
        }
    }

    /// Its replica agreed with ours at `now` in every bucket of the groups in `mask`, and in
    /// `buckets`.
    fn agree(&mut self, mask: u64, buckets: &[u16], now: u64) {
        if mask == 0 && buckets.is_empty() {
            return;
        }
        if self.agreed.is_empty() {
            self.agreed = vec![0; BUCKETS];
        }
        for g in (0..64).filter(|g| mask & (1 << g) != 0) {
            for a in &mut self.agreed[g * BUCKETS_PER_GROUP..(g + 1) * BUCKETS_PER_GROUP] {
                *a = (*a).max(now);
            }
        }
        for &b in buckets {
            if let Some(a) = self.agreed.get_mut(usize::from(b)) {
                *a = (*a).max(now);
            }
        }
    }

    fn is_active(&self) -> bool {
        self.state == MemberState::Active
    }

    /// Resets the link: nothing more is queued or kept for it.
    fn drop_link(&mut self) {
        self.phase = Phase::Down(Down { since: 0 });
        self.deltas = Deltas::default();
    }
}

/// A connection up, and whose it is.
#[derive(Debug, Clone)]
struct ConnInfo {
    peer: String,
    /// Whether this node dialled it.
    dialed: bool,
    /// When it came up (monotonic ms).
    since: u64,
}

/// The gateway of one node.
#[derive(Debug)]
pub struct Gateway {
    me: String,
    advertised: String,
    started_ms: u64,
    incarnation: u64,
    redial_newer_ms: Option<u64>,
    pending_limit: usize,
    max_clock_offset_ms: u64,
    tombstone_grace_ms: u64,
    /// What the clocks of the live peers say (recomputed after every event).
    clock: ClockView,
    /// When the next tombstone collection is due (monotonic ms).
    gc_at: u64,
    /// Tombstones collected lately: key, timestamp, and until when they are remembered
    /// (monotonic ms).
    ghosts: BTreeMap<Bytes, (Timestamp, u64)>,
    /// The gateway's index among the node's sync participants (after the query actors).
    index: usize,
    actors: usize,
    replica: BytesMap,
    digest: Digest,
    members: BTreeMap<String, Member>,
    /// Every connection up (a member may have a second one being decided).
    conns: BTreeMap<ConnId, ConnInfo>,
    /// Addresses with a dial outstanding.
    dialing: BTreeSet<String>,
    /// Addresses that led back to this node.
    self_addrs: BTreeSet<String>,
    /// Entries from remote servers owed to the local actors.
    inbound: DeltaBuffer<Bytes, Bytes>,
    /// Snapshot entries owed to the local actors, held back until the snapshot ends.
    held: BytesMap,
    /// When the last chunk went into `held` (monotonic ms).
    held_at: Option<u64>,
    /// Every local actor gets every fan-out batch at the same instant: one pacer for all.
    fanout: Pacer,
    fill: Filling,
    /// Membership changed: tell every live peer.
    members_dirty: bool,
    out: VecDeque<Transmit>,
    stats: GatewayStats,
}

impl Gateway {
    /// A gateway holding `replica` (what the node recovered, or an empty map).
    pub fn new(config: GatewayConfig, replica: BytesMap, now: Now) -> Self {
        let digest = Digest::of(&replica, config.digest_key, now.mono_ms);
        let fill = Filling::new(replica.entry_count() == 0);
        let mut g = Gateway {
            me: config.node,
            advertised: config.advertised,
            started_ms: config.started_ms,
            incarnation: config.incarnation,
            redial_newer_ms: config.redial_newer_ms,
            pending_limit: config.pending_limit,
            max_clock_offset_ms: config.max_clock_offset_ms,
            tombstone_grace_ms: config.tombstone_grace_ms,
            clock: ClockView::default(),
            gc_at: now.mono_ms + GC_INTERVAL_MS,
            ghosts: BTreeMap::new(),
            index: config.actors,
            actors: config.actors,
            replica,
            digest,
            members: BTreeMap::new(),
            conns: BTreeMap::new(),
            dialing: BTreeSet::new(),
            self_addrs: BTreeSet::new(),
            inbound: DeltaBuffer::new(),
            held: BytesMap::new(),
            held_at: None,
            fanout: Pacer::default(),
            fill,
            members_dirty: false,
            out: VecDeque::new(),
            stats: GatewayStats::default(),
        };
        for JoinTarget { node, addr } in config.joins {
            if node == g.me {
                continue;
            }
            let m = g.members.entry(node).or_insert_with(|| Member::new(now.mono_ms));
            m.dial = Some(addr);
        }
        g.update(now);
        g
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.me
    }

    /// This run's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What the gateway sent and received, and how it stands.
    pub fn stats(&self) -> &GatewayStats {
        &self.stats
    }

    /// The gateway's replica: everything the node has sent to or received from other servers.
    pub fn replica(&self) -> &BytesMap {
        &self.replica
    }

    /// The digest root of the replica.
    pub fn root(&self) -> u128 {
        self.digest.root()
    }

    /// What the clocks of the live peers say: how far to move this node's clock up when
    /// stamping writes, and whether it is too far ahead to take writes at all.
    pub fn clock(&self) -> ClockView {
        self.clock
    }

    /// Whether a snapshot this node needs is incomplete (design 4.7: `INFO loading`).
    pub fn loading(&self) -> bool {
        match &self.fill.state {
            fill::Fill::Receiving { .. } => true,
            fill::Fill::Wanted { .. } => self.members.values().any(Member::is_active),
            fill::Fill::Idle => false,
        }
    }

    /// Entries queued for `peer`.
    pub fn pending_for(&self, peer: &str) -> usize {
        self.members.get(peer).map_or(0, |m| m.deltas.pending_len())
    }

    /// Deltas sent to `peer` and not acknowledged yet.
    pub fn unacked_for(&self, peer: &str) -> usize {
        self.members.get(peer).map_or(0, |m| m.deltas.unacked_len())
    }

    /// The cluster as this node sees it: itself first, then every member not forgotten.
    pub fn members(&self) -> Vec<MemberView> {
        let me = MemberView {
            node: self.me.clone(),
            peer: self.advertised.clone(),
            status: MemberStatus::Myself,
            last_contact: None,
        };
        let others = self.members.iter().filter(|(_, m)| m.state != MemberState::Forgotten).map(|(id, m)| {
            let status = match (m.state, &m.phase) {
                (MemberState::Replaced, _) => MemberStatus::Replaced,
                (_, Phase::Live(_)) => MemberStatus::Connected,
                _ => MemberStatus::Disconnected,
            };
            MemberView {
                node: id.clone(),
                peer: m.advertised.clone().or_else(|| m.dial.clone()).unwrap_or_default(),
                status,
                last_contact: m.last_contact,
            }
        });
        std::iter::once(me).chain(others).collect()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event, now: Now) {
        match event {
            Event::Local(delta) => {
                self.on_local(&delta, now);
            }
            Event::Connected { conn, peer, dialed } => self.on_connected(conn, peer, dialed, now),
            Event::Disconnected { conn } => self.on_disconnected(conn, now),
            Event::Message { conn, msg } => self.on_message(conn, msg, now),
            Event::Chunk { conn, id, piece, total, last } => self.on_chunk(conn, id, piece, total, last, now),
            Event::Forget(node) => {
                self.forget(&node);
            }
        }
        self.update(now);
    }

    /// The next thing to do now, if any; call until `None` after every event and timeout.
    pub fn poll_transmit(&mut self, now: Now) -> Option<Transmit> {
        if self.out.is_empty() {
            self.tick(now);
        }
        self.out.pop_front()
    }

    /// When [`Gateway::poll_transmit`] will next have something to do by the clock
    /// (monotonic ms), if ever; it may already have passed.
    pub fn poll_timeout(&self) -> Option<u64> {
        let root = self.digest.root();
        let fanout = (!self.inbound.is_empty()).then(|| self.fanout.next_at());
        let held = self.held_at.map(|t| t + SNAPSHOT_STALL_MS);
        let links =
            self.members.values().filter_map(|m| m.phase.live().map(|l| (m, l))).flat_map(|(m, l)| {
                [m.deltas.next_due(root), l.repair.next_due(), Some(l.gossip_at), Some(l.clock.next_probe_at)]
                    .into_iter()
                    .flatten()
            });
        let gc = (self.replica.tombstones() > 0 || !self.ghosts.is_empty()).then_some(self.gc_at);
        let greetings = self
            .conns
            .iter()
            .filter(|(c, _)| self.live_on(**c).is_none())
            .map(|(_, i)| i.since + HELLO_TIMEOUT_MS);
        let redial = self.next_redial();
        [fanout, held, self.fill.stall_at(), redial, gc]
            .into_iter()
            .flatten()
            .chain(links)
            .chain(greetings)
            .min()
    }

    /// Whether connection `conn` has something for its low-priority stream.
    pub fn wants_bulk(&self, conn: ConnId) -> bool {
        self.live_on(conn).is_some_and(|l| l.repair.wants_bulk() || l.outgoing.is_some())
    }

    /// Hands the next message for connection `conn`'s low-priority stream to `sink` (repair
    /// entries first, then snapshot chunks), borrowed from the replica; returns the entries it
    /// held, or `None` if there was nothing to send. An error from the sink leaves the
    /// transfer where it was.
    pub fn poll_bulk<E>(
        &mut self,
        conn: ConnId,
        now: Now,
        sink: impl FnOnce(BulkRef<'_>) -> Result<(), E>,
    ) -> Result<Option<usize>, E> {
        let Some(ConnInfo { peer, .. }) = self.conns.get(&conn) else { return Ok(None) };
        let Some(m) = self.members.get_mut(peer) else { return Ok(None) };
        let Some(live) = m.phase.live_mut().filter(|l| l.conn == conn) else { return Ok(None) };
        if live.repair.wants_bulk() {
            let n = live.repair.next_chunk(&self.replica, &self.digest, CHUNK_BYTES, now.mono_ms, sink)?;
            self.stats.repair_entries_sent += n as u64;
            return Ok(Some(n));
        }
        if let Some(walk) = &mut live.outgoing {
            let n = walk.next_chunk(&self.replica, CHUNK_BYTES, |c| sink(BulkRef::Chunk(c)))?;
            if walk.is_done() {
                live.outgoing = None;
            }
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// Everything owed to connected peers now, regardless of pacing: the last messages of a
    /// stopping node.
    pub fn flush_all(&mut self, now: Now) -> Vec<Transmit> {
        let root = self.digest.root();
        let mut out = Vec::new();
        for m in self.members.values_mut() {
            if let Some(live) = m.phase.live() {
                let conn = live.conn;
                for msg in m.deltas.take(root, now.mono_ms, false, &mut self.stats.sync) {
                    out.push(Transmit::Send { conn, msg });
                }
            }
        }
        out
    }

    // ---- events ----

    /// Merges a delta of local writes; entries new to the gateway are queued for every member.
    fn on_local(&mut self, delta: &BytesMap, now: Now) -> MergeStats {
        let members = &mut self.members;
        let digest = &mut self.digest;
        // Records are shared, not copied: the gateway's replica and every member's queue hold
        // the record the writing actor made.
        let stats = self.replica.merge_records_with(delta, |rec, old| {
            digest.replace(&rec.key, old, &rec.entry, now.mono_ms);
            // A member whose queue was dropped gets nothing more until it is back: repair then
            // finds everything it missed.
            for m in members.values_mut().filter(|m| m.is_active() && !m.deltas.lost) {
                m.deltas.pending.record_shared(Arc::clone(rec));
            }
        });
        self.stats.sync.received(&stats);
        if stats.changed > 0 {
            for (peer, m) in &mut self.members {
                if matches!(m.phase, Phase::Down(_)) && m.is_active() && !m.deltas.lost {
                    m.deltas.bound_while_down(self.pending_limit);
                    if m.deltas.lost {
                        self.out.push_back(Transmit::Notice(Notice::Dropped { peer: peer.clone() }));
                    }
                }
            }
        }
        stats
    }

    /// Merges entries from a remote server (a delta, snapshot chunk or repair); entries new to
    /// the node are queued for the local actors. They are not sent on to other servers: every
    /// server sends its own writes to every other.
    fn on_remote(&mut self, delta: &BytesMap, now: Now) -> MergeStats {
        let inbound = &mut self.inbound;
        let digest = &mut self.digest;
        let members = &mut self.members;
        let stats = self.replica.merge_records_with(delta, |rec, old| {
            digest.replace(&rec.key, old, &rec.entry, now.mono_ms);
            inbound.record_shared(Arc::clone(rec));
            // A local write still queued for a member and now replaced goes as the newer entry:
            // this node never sends an entry older than its own (see `Deltas::requeue_unacked`).
            for m in members.values_mut() {
                if m.deltas.pending.pending().get_entry(&rec.key).is_some() {
                    m.deltas.pending.record_shared(Arc::clone(rec));
                }
            }
        });
        self.stats.sync.received(&stats);
        stats
    }

    /// The entries of `delta` from `peer` that are not stamped more than the bound ahead of
    /// this node's clock (its wall clock, moved up as its peers' clocks say): entries from
    /// the future are refused, counted and reported (design 4.9), so a peer with a clock far
    /// ahead cannot stamp writes that beat every later one. They are not lost: the peer keeps
    /// them, and repair brings them once they are no longer in the future.
    fn admit<'d>(&mut self, peer: &str, delta: &'d BytesMap, now: Now) -> std::borrow::Cow<'d, BytesMap> {
        // Our clock as our peers' clocks say it should read; while too few of them can tell
        // whether ours is behind, the one ahead of us is given the benefit of the doubt
        // rather than losing what it took (it refuses writes itself if its clock is the one
        // that is off).
        let ours = now.wall_ms + self.clock.correction_ms + self.clock.disputed_ms.unwrap_or(0);
        let limit = ours.saturating_add(self.max_clock_offset_ms);
        let newest = delta.max_timestamp().map_or(0, |ts| ts.wall_ms);
        let ghosts = &self.ghosts;
        let is_ghost = |k: &Bytes, e: &lww_crdt::Entry<Bytes>| {
            e.is_tombstone() && ghosts.get(k).is_some_and(|(ts, _)| *ts == e.ts)
        };
        if !ghosts.is_empty() && delta.entries().any(|(k, e)| is_ghost(k, e)) {
            // A tombstone collected here, handed back by a server that has not collected it
            // yet: it stays collected, and that server is told it may collect it too.
            let back: Vec<(Bytes, Timestamp)> =
                delta.entries().filter(|(k, e)| is_ghost(k, e)).map(|(k, e)| (k.clone(), e.ts)).collect();
            let kept: BytesMap = delta
                .entries()
                .filter(|(k, e)| !is_ghost(k, e))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            if let Some(m) = self.members.get_mut(peer) {
                m.collected_for.extend(back);
            }
            return std::borrow::Cow::Owned(self.admit(peer, &kept, now).into_owned());
        }
        if newest <= limit {
            return std::borrow::Cow::Borrowed(delta);
        }
        let admitted: BytesMap = delta
            .entries()
            .filter(|(_, e)| e.ts.wall_ms <= limit)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let refused = (delta.entry_count() - admitted.entry_count()) as u64;
        self.stats.entries_future += refused;
        if let Some(m) = self.members.get_mut(peer) {
            m.future.0 += refused;
            m.future.1 = m.future.1.max(newest - now.wall_ms);
            if m.future_noticed_at.is_none_or(|at| now.mono_ms >= at + NOTICE_EVERY_MS) {
                let (count, ahead_ms) = std::mem::take(&mut m.future);
                m.future_noticed_at = Some(now.mono_ms);
                self.out.push_back(Transmit::Notice(Notice::FutureEntries {
                    peer: peer.to_owned(),
                    count,
                    ahead_ms,
                }));
            }
        }
        std::borrow::Cow::Owned(admitted)
    }

    fn on_connected(&mut self, conn: ConnId, peer: String, dialed: Option<String>, now: Now) {
        if let Some(addr) = &dialed {
            self.dialing.remove(addr);
        }
        if peer == self.me {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Loop });
            self.out.push_back(Transmit::Notice(Notice::SelfConnection { addr: dialed.clone() }));
            if let Some(addr) = dialed {
                // Any other member dialled here is gone: this node took its address.
                self.replace_dialed_at(&addr, &peer);
                self.self_addrs.insert(addr);
            }
            return;
        }
        let m = self.members.entry(peer.clone()).or_insert_with(|| Member::new(now.mono_ms));
        if m.state == MemberState::Forgotten {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Refused });
            self.out.push_back(Transmit::Notice(Notice::RefusedForgotten { peer }));
            return;
        }
        if m.state == MemberState::Replaced {
            // It is alive after all (its id survived: it has a data directory).
            m.state = MemberState::Active;
            self.members_dirty = true;
        }
        m.last_contact = Some(now.mono_ms);
        self.conns
            .insert(conn, ConnInfo { peer: peer.clone(), dialed: dialed.is_some(), since: now.mono_ms });
        if let Phase::Down(_) = m.phase {
            m.phase = Phase::Greeting(Greeting { conn, dialed: dialed.is_some() });
        }
        // Otherwise a second connection to the same peer: decided when its Hello arrives.
        let root = self.digest.root();
        m.deltas.root_told(root, now.mono_ms);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: self.me.clone(),
            peer: self.advertised.clone(),
            incarnation: self.incarnation,
            started_ms: self.started_ms,
            root: root.into(),
            entries: self.replica.entry_count() as u64,
        };
        self.out.push_back(Transmit::Send { conn, msg: PeerMsg::Hello(hello) });
        if let Some(addr) = dialed {
            m.dial = Some(addr.clone());
            // Another member dialled at this address is gone: this node took its place.
            self.replace_dialed_at(&addr, &peer);
        }
    }

    /// Every active member other than `node` dialled at `addr` and not connected has been
    /// replaced by `node`, which answers there now.
    fn replace_dialed_at(&mut self, addr: &str, node: &str) {
        let replaced: Vec<String> = self
            .members
            .iter()
            .filter(|(id, o)| {
                id.as_str() != node
                    && o.is_active()
                    && o.dial.as_deref() == Some(addr)
                    && o.phase.conn().is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for old in replaced {
            self.replace(&old, node);
        }
    }

    fn on_disconnected(&mut self, conn: ConnId, now: Now) {
        let Some(ConnInfo { peer, .. }) = self.conns.remove(&conn) else { return };
        let Some(m) = self.members.get_mut(&peer) else { return };
        if m.phase.conn() != Some(conn) {
            return; // a second connection that was never used
        }
        let was_live = m.phase.live().is_some();
        m.last_contact = Some(now.mono_ms);
        m.phase = Phase::Down(Down { since: now.mono_ms });
        m.deltas.requeue_unacked(&self.replica);
        // A second connection to the same peer, still greeting, takes over.
        if let Some((&other, info)) = self.conns.iter().find(|(_, c)| c.peer == peer) {
            m.phase = Phase::Greeting(Greeting { conn: other, dialed: info.dialed });
        }
        if was_live {
            self.out.push_back(Transmit::Notice(Notice::Down { peer: peer.clone() }));
        }
        // A newer process already answered at its address while this connection lingered:
        // the member was replaced.
        let (addr, started) = (m.advertised.clone(), m.started_ms);
        let anonymous = m.phase.conn().is_none() && m.advertised.is_none() && m.dial.is_none();
        let successor = self
            .members
            .iter()
            .find(|(id, o)| {
                **id != peer
                    && o.is_active()
                    && o.phase.live().is_some()
                    && o.advertised.is_some()
                    && o.advertised == addr
                    && o.started_ms > started
            })
            .map(|(id, _)| id.clone());
        if let Some(new) = successor {
            self.replace(&peer, &new);
        } else if anonymous {
            // A node that connected and went before saying who it is or where it can be
            // reached: nothing to keep of it.
            self.members.remove(&peer);
        }
        if self.fill.uses(conn) {
            self.fill.interrupted();
            self.release_held();
            self.out.push_back(Transmit::Notice(Notice::FillInterrupted { peer }));
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: PeerMsg, now: Now) {
        let Some(ConnInfo { peer, .. }) = self.conns.get(&conn) else { return };
        let peer = peer.clone();
        let Some(m) = self.members.get_mut(&peer) else { return };
        m.last_contact = Some(now.mono_ms);
        if let PeerMsg::Hello(hello) = msg {
            self.on_hello(conn, &peer, hello, now);
            return;
        }
        if let PeerMsg::Members(list) = msg {
            // From a proven peer, whichever of its connections it came on.
            self.on_members(conn, &peer, list, now);
            return;
        }
        if m.phase.live().is_none_or(|l| l.conn != conn) {
            // Before its Hello, or on a connection being replaced: the protocol state (acks,
            // rounds) belongs to the live connection, but entries are good data from a proven
            // peer, and the sender may not live to send them again.
            if let PeerMsg::Delta { entries, .. }
            | PeerMsg::SnapshotChunk { entries, .. }
            | PeerMsg::RepairEntries { entries, .. } = &msg
            {
                let entries = self.admit(&peer, entries, now).into_owned();
                self.on_remote(&entries, now);
            }
            return;
        }
        match msg {
            PeerMsg::Hello(_) => unreachable!("handled above"),
            PeerMsg::Delta { seq, ack, root, entries } => {
                m.deltas.on_ack(ack, self.incarnation);
                m.deltas.on_delta(seq, now.mono_ms);
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_root(root);
                }
                let entries = self.admit(&peer, &entries, now).into_owned();
                self.on_remote(&entries, now);
            }
            PeerMsg::Ack { ack, root } => {
                m.deltas.on_ack(ack, self.incarnation);
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_root(root);
                }
            }
            PeerMsg::SnapshotRequest { id, after } => {
                let keys = self.replica.entry_count() as u64;
                let resumed = after.is_some();
                if let Some(l) = m.phase.live_mut() {
                    l.outgoing = Some(SnapshotWalk::new(&self.replica, id, after));
                }
                self.out.push_back(Transmit::Notice(Notice::Serving { peer, keys, resumed }));
            }
            PeerMsg::SnapshotChunk { id, entries, total, last } => {
                self.on_chunk(conn, id, SnapshotPiece::new(entries), total, last, now);
            }
            PeerMsg::Members(_) => unreachable!("handled above"),
            PeerMsg::RepairGroups { round, groups } => {
                if let Some(l) = m.phase.live_mut() {
                    let reply = l.repair.on_groups(round, &groups, &self.digest, now.mono_ms);
                    if let PeerMsg::RepairBuckets { equal_groups, .. } = &reply {
                        m.agree(*equal_groups, &[], now.mono_ms);
                    }
                    self.out.push_back(Transmit::Send { conn, msg: reply });
                }
            }
            PeerMsg::RepairBuckets { round, equal_groups, buckets } => {
                if let Some(l) = m.phase.live_mut() {
                    let (equal, started) = l.repair.on_buckets(round, &buckets, &self.digest, now.mono_ms);
                    // The responder compared the groups with what we held when the round
                    // started, and the buckets with what we hold now.
                    if let Some(started) = started {
                        m.agree(equal_groups, &[], started);
                    }
                    m.agree(0, &equal, now.mono_ms);
                }
            }
            PeerMsg::Collected { tombstones } => self.remove_tombstones(tombstones, now),
            PeerMsg::ClockProbe { t0 } => {
                let refusing = self.clock.refusal().is_some();
                self.out.push_back(Transmit::Send {
                    conn,
                    msg: PeerMsg::ClockReply { t0, t1: now.wall_ms, refusing },
                });
            }
            PeerMsg::ClockReply { t0, t1, refusing } => {
                if let Some(l) = m.phase.live_mut() {
                    l.clock.on_reply(t0, t1, refusing, now.mono_ms);
                    if let Some(offset_ms) = l.clock.offset() {
                        let bound_ms = self.max_clock_offset_ms;
                        let worth_telling = offset_ms.unsigned_abs() > bound_ms / 2
                            && l.clock.reported.is_none_or(|r| r.abs_diff(offset_ms) > bound_ms / 2);
                        if worth_telling {
                            l.clock.reported = Some(offset_ms);
                            self.out.push_back(Transmit::Notice(Notice::ClockOffset {
                                peer,
                                offset_ms,
                                bound_ms,
                            }));
                        }
                    }
                }
            }
            PeerMsg::RepairSummary { round, buckets, fingerprints, last } => {
                if let Some(l) = m.phase.live_mut() {
                    let ghosts = self.ghosts.iter().map(|(k, (ts, _))| (k, lww_crdt::Entry::tombstone(*ts)));
                    let collected = l.repair.on_summary(
                        round,
                        &buckets,
                        &fingerprints,
                        last,
                        &self.replica,
                        &self.digest,
                        ghosts,
                    );
                    m.collected_for.extend(collected);
                }
            }
            PeerMsg::RepairWant { round, fingerprints, last } => {
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_want(round, &fingerprints, last);
                }
            }
            PeerMsg::RepairEntries { round, entries, last } => {
                self.stats.repair_entries_received += entries.entry_count() as u64;
                let entries = self.admit(&peer, &entries, now).into_owned();
                self.on_remote(&entries, now);
                if let Some(m) = self.members.get_mut(&peer)
                    && let Some(l) = m.phase.live_mut()
                {
                    l.repair.on_entries(round, last, now.mono_ms);
                }
            }
        }
    }

    fn on_hello(&mut self, conn: ConnId, peer: &str, hello: Hello, now: Now) {
        if hello.version != PROTOCOL_VERSION {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Protocol });
            self.out.push_back(Transmit::Notice(Notice::VersionMismatch {
                peer: peer.to_owned(),
                version: hello.version,
            }));
            return;
        }
        if hello.node != peer {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Protocol });
            self.out.push_back(Transmit::Notice(Notice::WrongClaim {
                peer: peer.to_owned(),
                claimed: hello.node,
            }));
            return;
        }
        let i_am_smaller = self.me.as_str() < peer;
        let Some(m) = self.members.get_mut(peer) else { return };
        let new_dialed = self.conns.get(&conn).is_some_and(|c| c.dialed);
        let mut fill_interrupted = false;
        if let Some(current) = m.phase.conn().filter(|&c| c != conn) {
            // A second connection to the same peer. A new incarnation means the current one
            // is a leftover of the process before; otherwise both sides keep the connection
            // dialled by the smaller id (a reconnect by the same side replaces the old one).
            let restarted =
                m.deltas.peer_incarnation.is_some_and(|i| i != hello.incarnation) && m.phase.live().is_some();
            let old_dialed = m.phase.dialed().unwrap_or(false);
            let keep_new = restarted
                || old_dialed == new_dialed
                || (if i_am_smaller { new_dialed } else { !new_dialed });
            if !keep_new {
                self.conns.remove(&conn);
                self.out.push_back(Transmit::Close { conn, why: CloseWhy::Replaced });
                return;
            }
            self.conns.remove(&current);
            self.out.push_back(Transmit::Close { conn: current, why: CloseWhy::Replaced });
            m.deltas.requeue_unacked(&self.replica);
            if self.fill.uses(current) {
                self.fill.interrupted();
                fill_interrupted = true;
            }
        }
        if m.deltas.peer_incarnation.is_some_and(|i| i != hello.incarnation) {
            // Another run of the peer: what it held before says nothing of what it holds now.
            m.root_agreeing = None;
            m.root_ended = None;
            m.root_durable = 0;
            m.agreed.clear();
        }
        m.deltas.on_hello(hello.incarnation, &self.replica);
        m.started_ms = hello.started_ms;
        m.entries = hello.entries;
        if m.advertised.as_deref() != Some(&hello.peer) {
            m.advertised = Some(hello.peer.clone());
            self.members_dirty = true;
        }
        if m.dial.is_none() {
            m.dial = Some(hello.peer.clone());
        }
        let force = std::mem::take(&mut m.deltas.lost);
        m.phase = Phase::Live(Box::new(Live {
            conn,
            dialed: new_dialed,
            repair: Repair::new(i_am_smaller, hello.root.into(), force),
            outgoing: None,
            gossip_at: now.mono_ms + GOSSIP_INTERVAL_MS,
            clock: PeerClock::default(),
        }));
        self.out.push_back(Transmit::Notice(Notice::Up { peer: peer.to_owned(), addr: hello.peer.clone() }));
        // Another active member advertised at this address is gone: this node took its place.
        let replaced: Vec<String> = self
            .members
            .iter()
            .filter(|(id, o)| {
                id.as_str() != peer
                    && o.is_active()
                    && o.advertised.as_deref() == Some(&hello.peer)
                    && o.phase.conn().is_none()
                    && o.started_ms < hello.started_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for old in replaced {
            self.replace(&old, peer);
        }
        if fill_interrupted {
            // What arrived goes to the actors now, as when its connection goes down.
            self.release_held();
        }
        let list = self.member_list();
        self.out.push_back(Transmit::Send { conn, msg: PeerMsg::Members(list) });
        if self.fill.wanted() {
            if hello.entries > 0 {
                self.request_fill(peer, conn, now);
            } else {
                self.fill.met_empty_peer();
            }
        }
    }

    fn on_chunk(&mut self, conn: ConnId, id: u64, piece: SnapshotPiece, total: u64, last: bool, now: Now) {
        let Some(peer) = self.conns.get(&conn).map(|c| c.peer.clone()) else { return };
        if !self.fill.is_current(conn, id) {
            // A chunk of a transfer given up on, or on a connection being replaced: still good
            // data.
            let entries = self.admit(&peer, &piece.entries, now).into_owned();
            self.on_remote(&entries, now);
            return;
        }
        let n = piece.entry_count() as u64;
        let last_key = piece.entries.entries().next_back().map(|(k, _)| k.clone());
        let piece = match self.admit(&peer, &piece.entries, now) {
            std::borrow::Cow::Borrowed(_) => piece,
            std::borrow::Cow::Owned(admitted) => SnapshotPiece::new(admitted),
        };
        self.merge_chunk(piece, now);
        if self.fill.on_chunk(n, last_key, total, last, now.mono_ms) {
            self.release_held();
            let entries = self.fill.received;
            self.out.push_back(Transmit::Notice(Notice::Filled { peer, entries }));
        }
    }

    /// Merges a snapshot chunk. The same outcome as [`Gateway::on_remote`], cheaper for the
    /// chunks of a join: when the gateway holds no key in the chunk's key range, every entry is
    /// new, so the chunk is moved into the replica without recording entries one by one, and
    /// its copy is kept for the actors. Kept chunks join the fan-out when the snapshot ends (or
    /// stalls for [`SNAPSHOT_STALL_MS`]), as one large batch.
    fn merge_chunk(&mut self, piece: SnapshotPiece, now: Now) -> MergeStats {
        let SnapshotPiece { entries: chunk, copy } = piece;
        let fresh = match (chunk.entries().next(), chunk.entries().next_back()) {
            (Some((first, _)), Some((end, _))) => self
                .replica
                .range::<Bytes, _>((Bound::Included(first), Bound::Included(end)))
                .next()
                .is_none(),
            _ => false,
        };
        if !fresh {
            // Progress all the same: held entries wait for the end of the transfer.
            if self.held_at.is_some() {
                self.held_at = Some(now.mono_ms);
            }
            return self.on_remote(&chunk, now);
        }
        for (k, e) in chunk.entries() {
            self.digest.insert(k, e, now.mono_ms);
        }
        let stats = self.replica.merge_owned(copy);
        self.stats.sync.entries_received += stats.total() as u64;
        // Merging into the empty map adopts the chunk whole; afterwards the chunks arrive in
        // key order, so each entry is appended.
        self.held.merge_owned(chunk);
        self.held_at = Some(now.mono_ms);
        stats
    }

    /// Hands held snapshot entries to the fan-out now (a snapshot ended, or its sender went
    /// away).
    fn release_held(&mut self) {
        self.held_at = None;
        // Absorbing merges by value and keeps the larger tree whole (into an empty buffer: no
        // entry is touched).
        self.inbound.absorb(std::mem::take(&mut self.held));
    }

    fn request_fill(&mut self, peer: &str, conn: ConnId, now: Now) {
        if let Some((id, after)) = self.fill.request(peer, conn, now.mono_ms) {
            let resumed = after.is_some();
            self.out.push_back(Transmit::Send { conn, msg: PeerMsg::SnapshotRequest { id, after } });
            self.out.push_back(Transmit::Notice(Notice::Filling { peer: peer.to_owned(), resumed }));
        }
    }

    // ---- membership ----

    /// What this node tells others of the cluster.
    fn member_list(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                let peer = m.advertised.clone().or_else(|| m.dial.clone())?;
                Some(MemberInfo { node: id.clone(), peer, started_ms: m.started_ms, state: m.state })
            })
            .collect()
    }

    fn on_members(&mut self, conn: ConnId, peer: &str, list: Vec<MemberInfo>, now: Now) {
        if list.len() > MAX_MEMBERS {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Protocol });
            self.out.push_back(Transmit::Notice(Notice::BadMembers { peer: peer.to_owned() }));
            return;
        }
        let view = self.view_fingerprint(peer, list.iter().map(|i| (i.node.as_str(), i.state)));
        if let Some(m) = self.members.get_mut(peer) {
            m.view = Some(view);
        }
        for info in list {
            if info.node == self.me
                || !plausible_id(&info.node)
                || info.peer.is_empty()
                || info.peer.len() > 255
            {
                continue;
            }
            match self.members.get_mut(&info.node) {
                None => {
                    let mut m = Member::new(now.mono_ms);
                    m.started_ms = info.started_ms;
                    m.state = info.state;
                    m.advertised = Some(info.peer.clone());
                    m.dial = Some(info.peer.clone());
                    self.members.insert(info.node.clone(), m);
                    self.members_dirty = true;
                    if info.state == MemberState::Active {
                        self.replace_at(&info.node, &info.peer, info.started_ms);
                    }
                }
                Some(m) => match (m.state, info.state) {
                    (MemberState::Forgotten, _) => {}
                    (_, MemberState::Forgotten) => {
                        self.forget(&info.node);
                    }
                    (MemberState::Active, MemberState::Replaced) if m.phase.conn().is_none() => {
                        m.state = MemberState::Replaced;
                        m.drop_link();
                        self.members_dirty = true;
                    }
                    (MemberState::Active, MemberState::Active) if info.started_ms > m.started_ms => {
                        let dialed_advertised = m.dial == m.advertised;
                        m.started_ms = info.started_ms;
                        m.advertised = Some(info.peer.clone());
                        if m.dial.is_none() || dialed_advertised {
                            m.dial = Some(info.peer.clone());
                        }
                        self.members_dirty = true;
                    }
                    _ => {}
                },
            }
        }
    }

    /// A fingerprint of a view of the membership: `owner` (active) and `others`, in any order.
    fn view_fingerprint<'a>(
        &self,
        owner: &'a str,
        others: impl Iterator<Item = (&'a str, MemberState)>,
    ) -> u64 {
        let mut all: Vec<(&str, MemberState)> = others.chain([(owner, MemberState::Active)]).collect();
        all.sort_unstable();
        all.dedup();
        let text: String = all.iter().map(|(id, st)| format!("{id}:{st:?};")).collect();
        self.digest.entry_hash(text.as_bytes(), &lww_crdt::Entry::tombstone(Timestamp::ZERO)) as u64
    }

    /// The fingerprint of this node's view of the membership, as its peers compute it from
    /// what it tells them.
    fn own_view(&self) -> u64 {
        let list = self.member_list();
        self.view_fingerprint(&self.me, list.iter().map(|i| (i.node.as_str(), i.state)))
    }

    /// A member newly heard of, started at `started_ms` and advertised at `addr`, replaces any
    /// older member advertised at the same address that is not connected.
    fn replace_at(&mut self, node: &str, addr: &str, started_ms: u64) {
        let replaced: Vec<String> = self
            .members
            .iter()
            .filter(|(id, o)| {
                id.as_str() != node
                    && o.is_active()
                    && o.advertised.as_deref() == Some(addr)
                    && o.phase.conn().is_none()
                    && o.started_ms < started_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for old in replaced {
            self.replace(&old, node);
        }
    }

    fn replace(&mut self, old: &str, new: &str) {
        if let Some(m) = self.members.get_mut(old) {
            m.state = MemberState::Replaced;
            m.drop_link();
            self.members_dirty = true;
            self.out
                .push_back(Transmit::Notice(Notice::Replaced { old: old.to_owned(), new: new.to_owned() }));
        }
    }

    /// Removes `node` from the cluster; false if it is this node or not a member.
    pub fn forget(&mut self, node: &str) -> bool {
        let Some(m) = self.members.get_mut(node) else { return false };
        if m.state == MemberState::Forgotten {
            return false;
        }
        if let Some(conn) = m.phase.conn() {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Refused });
        }
        let extra: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.peer == node).map(|(c, _)| *c).collect();
        for c in extra {
            self.conns.remove(&c);
            if Some(c) != m.phase.conn() {
                self.out.push_back(Transmit::Close { conn: c, why: CloseWhy::Refused });
            }
        }
        m.state = MemberState::Forgotten;
        m.drop_link();
        self.members_dirty = true;
        self.out.push_back(Transmit::Notice(Notice::Forgotten { node: node.to_owned() }));
        true
    }

    /// Keeps dials, gossip and counters in step with the state, after every event.
    fn update(&mut self, now: Now) {
        let wanted: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(id, m)| m.is_active() && self.should_dial(id, m, now.mono_ms))
            .filter_map(|(_, m)| m.dial.clone())
            .filter(|a| !self.self_addrs.contains(a))
            .collect();
        for addr in wanted.difference(&self.dialing) {
            self.out.push_back(Transmit::Dial { addr: addr.clone() });
        }
        for addr in self.dialing.difference(&wanted) {
            self.out.push_back(Transmit::StopDial { addr: addr.clone() });
        }
        self.dialing = wanted;
        if std::mem::take(&mut self.members_dirty) {
            let list = self.member_list();
            for m in self.members.values() {
                if let Some(l) = m.phase.live() {
                    self.out.push_back(Transmit::Send { conn: l.conn, msg: PeerMsg::Members(list.clone()) });
                }
            }
        }
        let measured: Vec<(i64, bool)> = self
            .members
            .values()
            .filter_map(|m| m.phase.live().and_then(|l| Some((l.clock.offset()?, l.clock.refusing))))
            .collect();
        let clock = ClockView::from_offsets(measured, self.max_clock_offset_ms);
        if clock.refusal().is_some() != self.clock.refusal().is_some() {
            self.out.push_back(Transmit::Notice(Notice::Skewed { refusal: clock.refusal() }));
        }
        self.clock = clock;
        self.stats.clock = clock;
        self.stats.peers_connected =
            self.members.values().filter(|m| m.phase.live().is_some()).count() as u64;
        self.stats.loading = self.loading();
        self.stats.fill_received = self.fill.received;
        self.stats.fill_total = self.fill.total;
    }

    /// Whether to dial member `id` now: it is not connected, and it started before this node
    /// (the newer of two servers dials), or it has been unreachable for
    /// [`GatewayConfig::redial_newer_ms`] (a newer member that went away may have come back
    /// under a new id that knows nobody: whoever knows its address must dial it).
    fn should_dial(&self, id: &str, m: &Member, now: u64) -> bool {
        let Phase::Down(down) = &m.phase else { return false };
        (m.started_ms, id) < (self.started_ms, self.me.as_str())
            || self.redial_newer_ms.is_some_and(|after| now >= down.since.saturating_add(after))
    }

    /// When a newer member that is down is next due to be dialled (monotonic ms).
    fn next_redial(&self) -> Option<u64> {
        let after = self.redial_newer_ms?;
        self.members
            .values()
            .filter(|m| m.is_active() && m.dial.as_ref().is_some_and(|a| !self.dialing.contains(a)))
            .filter_map(|m| match &m.phase {
                Phase::Down(d) => Some(d.since.saturating_add(after)),
                _ => None,
            })
            .min()
    }

    // ---- time ----

    fn tick(&mut self, now: Now) {
        let t = now.mono_ms;
        let silent: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(c, info)| t >= info.since + HELLO_TIMEOUT_MS && self.live_on(**c).is_none())
            .map(|(c, _)| *c)
            .collect();
        for conn in silent {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Protocol });
            self.on_disconnected(conn, now);
        }
        if self.held_at.is_some_and(|at| t >= at + SNAPSHOT_STALL_MS) {
            self.release_held();
        }
        if self.fill.stall_at().is_some_and(|at| t >= at) {
            if let fill::Fill::Receiving { peer, .. } = &self.fill.state {
                self.out.push_back(Transmit::Notice(Notice::FillInterrupted { peer: peer.clone() }));
            }
            self.fill.interrupted();
            self.release_held();
        }
        if self.fill.wanted() {
            let source = self
                .members
                .iter()
                .find_map(|(id, m)| m.phase.live().filter(|_| m.entries > 0).map(|l| (id.clone(), l.conn)));
            if let Some((peer, conn)) = source {
                self.request_fill(&peer, conn, now);
            }
        }
        let root = self.digest.root();
        let mut gossip = Vec::new();
        for m in self.members.values_mut() {
            let Phase::Live(live) = &mut m.phase else { continue };
            let conn = live.conn;
            let equal = live.repair.check(root, t);
            if let Some(t0) = live.clock.poll_probe(now.wall_ms, t) {
                self.out.push_back(Transmit::Send { conn, msg: PeerMsg::ClockProbe { t0 } });
            }
            if let Some(msg) = live.repair.on_time(&self.digest, t) {
                self.stats.repair_rounds += 1;
                self.out.push_back(Transmit::Send { conn, msg });
            }
            m.root_check(equal, t);
            if !m.collected_for.is_empty() {
                let back = std::mem::take(&mut m.collected_for);
                for piece in collected_pieces(&back) {
                    self.out
                        .push_back(Transmit::Send { conn, msg: PeerMsg::Collected { tombstones: piece } });
                }
            }
            for msg in m.deltas.take(root, t, true, &mut self.stats.sync) {
                self.out.push_back(Transmit::Send { conn, msg });
            }
            if let Phase::Live(live) = &mut m.phase
                && t >= live.gossip_at
            {
                live.gossip_at = t + GOSSIP_INTERVAL_MS;
                gossip.push(conn);
            }
        }
        if !gossip.is_empty() {
            let list = self.member_list();
            for conn in gossip {
                self.out.push_back(Transmit::Send { conn, msg: PeerMsg::Members(list.clone()) });
            }
        }
        if t >= self.gc_at {
            self.gc_at = t + GC_INTERVAL_MS;
            self.collect_tombstones(now);
        }
        if !self.inbound.is_empty() && self.fanout.allows(t) {
            let delta = Arc::new(self.inbound.flush());
            let n = self.actors as u64;
            self.stats.sync.sent(self.fanout.record(t), n, n * delta.entry_count() as u64);
            self.out.push_back(Transmit::FanOut(SyncBatch { from: self.index, delta }));
        }
        self.update(now);
    }

    /// Collects the tombstones older than the grace that every member holds (design 4.9).
    ///
    /// The proof that a member holds tombstone X of bucket b: its replica agreed with ours in
    /// b (whole roots equal, or b's digests equal in a repair round) at some time `t` at or
    /// after b last changed here. X entered our replica no later than that last change (its
    /// merge changed b), so we held X at `t`, and the member held what we held. A member counts
    /// only once heard from, in the same run, [`DURABLE_AFTER_MS`] after that agreement, so
    /// a member with a data directory had X on disk; a restarted member starts without
    /// agreements. Forgotten and replaced members hold nothing back; a member that is down
    /// holds collection back until it agrees again. With every member holding X and this node
    /// never sending an entry older than its own, no older write of the key can arrive here
    /// afterwards, so the key stays deleted.
    fn collect_tombstones(&mut self, now: Now) {
        self.ghosts.retain(|_, (_, until)| *until > now.mono_ms);
        if self.replica.tombstones() == 0 {
            return;
        }
        // Only while every member is connected and sees the same cluster as this node: a member
        // this node has not heard of yet could hold anything.
        let view = self.own_view();
        let settled = self
            .members
            .values()
            .filter(|m| m.is_active())
            .all(|m| m.phase.live().is_some() && m.view == Some(view));
        if !settled {
            return;
        }
        let horizon =
            now.wall_ms.saturating_add(self.clock.correction_ms).saturating_sub(self.tombstone_grace_ms);
        let held_by_all = |b: usize| {
            let changed = self.digest.changed_at(b);
            self.members.values().filter(|m| m.is_active()).all(|m| m.durable_agreement(b) >= changed)
        };
        let doomed: Vec<(Bytes, Timestamp)> = self
            .replica
            .entries()
            .filter(|(_, e)| e.is_tombstone() && e.ts.wall_ms < horizon)
            .filter(|(k, _)| held_by_all(self.digest.bucket_of(k)))
            .map(|(k, e)| (k.clone(), e.ts))
            .collect();
        if doomed.is_empty() {
            return;
        }
        self.remove_tombstones(doomed, now);
    }

    /// Removes collected tombstones (each only if the replica holds that very one), remembers
    /// them for [`GHOST_TTL_MS`], has the local actors remove them, and tells every live peer:
    /// the proof that every member holds them holds for the peers too, and a peer that lacked
    /// the same evidence could otherwise never collect them (its replica and ours would never
    /// agree in their bucket again).
    fn remove_tombstones(&mut self, tombstones: Vec<(Bytes, Timestamp)>, now: Now) {
        let until = now.mono_ms + GHOST_TTL_MS;
        let removed: Vec<(Bytes, Timestamp)> = tombstones
            .into_iter()
            .filter(|(k, ts)| {
                let gone = self.replica.remove_tombstone(k, *ts);
                if gone {
                    self.digest.remove(k, &lww_crdt::Entry::tombstone(*ts), now.mono_ms);
                    self.ghosts.insert(k.clone(), (*ts, until));
                }
                gone
            })
            .collect();
        if removed.is_empty() {
            return;
        }
        self.stats.tombstones_collected += removed.len() as u64;
        for m in self.members.values() {
            if let Some(l) = m.phase.live() {
                for piece in collected_pieces(&removed) {
                    self.out.push_back(Transmit::Send {
                        conn: l.conn,
                        msg: PeerMsg::Collected { tombstones: piece },
                    });
                }
            }
        }
        self.out.push_back(Transmit::Collect(Arc::new(removed)));
    }

    /// Why the tombstone of `key` is or is not collectable (for studying a simulation run).
    #[cfg(feature = "sim")]
    pub fn explain_gc(&self, key: &[u8], now: Now) -> String {
        let b = self.digest.bucket_of(key);
        let mut out = format!("bucket {b} changed at {} (now {}):", self.digest.changed_at(b), now.mono_ms);
        for (id, m) in &self.members {
            out.push_str(&format!(
                " {id} {:?} durable {} agreeing {:?} ended {:?} bucket {:?} contact {:?};",
                m.state,
                m.durable_agreement(b),
                m.root_agreeing,
                m.root_ended,
                m.agreed.get(b),
                m.last_contact
            ));
        }
        out
    }

    fn live_on(&self, conn: ConnId) -> Option<&Live> {
        let ConnInfo { peer, .. } = self.conns.get(&conn)?;
        self.members.get(peer)?.phase.live().filter(|l| l.conn == conn)
    }
}

/// `tombstones` in pieces of at most about [`CHUNK_BYTES`] of keys.
fn collected_pieces(tombstones: &[(Bytes, Timestamp)]) -> Vec<Vec<(Bytes, Timestamp)>> {
    let mut pieces = vec![Vec::new()];
    let mut bytes = 0;
    for t in tombstones {
        if bytes + t.0.len() + 32 > CHUNK_BYTES && !pieces.last().is_none_or(Vec::is_empty) {
            pieces.push(Vec::new());
            bytes = 0;
        }
        bytes += t.0.len() + 32;
        pieces.last_mut().expect("never empty").push(t.clone());
    }
    pieces
}

/// Whether a node id heard from a peer could be one: a DNS label of letters, digits and '-'.
fn plausible_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
