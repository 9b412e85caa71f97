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

mod fill;
mod link;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, MergeStats};

use crate::digest::Digest;
use crate::pacer::Pacer;
use crate::peer::{
    BulkRef, CHUNK_BYTES, Hello, MAX_MEMBERS, MemberInfo, MemberState, PROTOCOL_VERSION, PeerMsg,
};
use crate::replica::{Now, SyncBatch};
use crate::snapshot::SnapshotWalk;
use crate::stats::GatewayStats;

pub use fill::FILL_RETRY_MS;
pub use link::{ACK_DELAY_MS, MAX_PENDING_WHILE_DOWN, MAX_UNACKED, ROOT_INTERVAL_MS};
pub use repair::{MAX_ROUND_INTERVAL_MS, MIN_ROUND_INTERVAL_MS, QUIET_MS, REPAIR_AFTER_MS, ROUND_TIMEOUT_MS};

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
                [m.deltas.next_due(root), l.repair.next_due(), Some(l.gossip_at)].into_iter().flatten()
            });
        let greetings = self
            .conns
            .iter()
            .filter(|(c, _)| self.live_on(**c).is_none())
            .map(|(_, i)| i.since + HELLO_TIMEOUT_MS);
        let redial = self.next_redial();
        [fanout, held, self.fill.stall_at(), redial].into_iter().flatten().chain(links).chain(greetings).min()
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
        let stats = self.replica.merge_with(delta, |k, old, e| {
            digest.replace(k, old, e, now.mono_ms);
            // A member whose queue was dropped gets nothing more until it is back: repair then
            // finds everything it missed.
            for m in members.values_mut().filter(|m| m.is_active() && !m.deltas.lost) {
                m.deltas.pending.record(k.clone(), e.clone());
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
        let stats = self.replica.merge_with(delta, |k, old, e| {
            digest.replace(k, old, e, now.mono_ms);
            inbound.record(k.clone(), e.clone());
        });
        self.stats.sync.received(&stats);
        stats
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
        m.deltas.requeue_unacked();
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
        if m.phase.live().is_none_or(|l| l.conn != conn) {
            // Before its Hello, or on a connection being replaced: the protocol state (acks,
            // rounds) belongs to the live connection, but entries are good data from a proven
            // peer, and the sender may not live to send them again.
            if let PeerMsg::Delta { entries, .. }
            | PeerMsg::SnapshotChunk { entries, .. }
            | PeerMsg::RepairEntries { entries, .. } = &msg
            {
                self.on_remote(entries, now);
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
            PeerMsg::Members(list) => self.on_members(conn, &peer, list, now),
            PeerMsg::RepairGroups { round, groups } => {
                if let Some(l) = m.phase.live_mut() {
                    let reply = l.repair.on_groups(round, &groups, &self.digest, now.mono_ms);
                    self.out.push_back(Transmit::Send { conn, msg: reply });
                }
            }
            PeerMsg::RepairBuckets { round, buckets } => {
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_buckets(round, &buckets, &self.digest, now.mono_ms);
                }
            }
            PeerMsg::RepairSummary { round, buckets, fingerprints, last } => {
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_summary(round, &buckets, &fingerprints, last, &self.replica, &self.digest);
                }
            }
            PeerMsg::RepairWant { round, fingerprints, last } => {
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_want(round, &fingerprints, last);
                }
            }
            PeerMsg::RepairEntries { round, entries, last } => {
                self.stats.repair_entries_received += entries.entry_count() as u64;
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
            m.deltas.requeue_unacked();
            if self.fill.uses(current) {
                self.fill.interrupted();
                fill_interrupted = true;
            }
        }
        m.deltas.on_hello(hello.incarnation);
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
            self.on_remote(&piece.entries, now);
            return;
        }
        let n = piece.entry_count() as u64;
        let last_key = piece.entries.entries().next_back().map(|(k, _)| k.clone());
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
            live.repair.check(root, t);
            if let Some(msg) = live.repair.on_time(&self.digest, t) {
                self.stats.repair_rounds += 1;
                self.out.push_back(Transmit::Send { conn, msg });
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
        if !self.inbound.is_empty() && self.fanout.allows(t) {
            let delta = Arc::new(self.inbound.flush());
            let n = self.actors as u64;
            self.stats.sync.sent(self.fanout.record(t), n, n * delta.entry_count() as u64);
            self.out.push_back(Transmit::FanOut(SyncBatch { from: self.index, delta }));
        }
        self.update(now);
    }

    fn live_on(&self, conn: ConnId) -> Option<&Live> {
        let ConnInfo { peer, .. } = self.conns.get(&conn)?;
        self.members.get(peer)?.phase.live().filter(|l| l.conn == conn)
    }
}

/// Whether a node id heard from a peer could be one: a DNS label of letters, digits and '-'.
fn plausible_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
