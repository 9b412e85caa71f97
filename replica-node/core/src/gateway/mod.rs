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
//! - **Clocks and tombstones.** Links measure their peers' clocks ([`clock`]); tombstones every
//!   member holds are collected after the grace ([`gc`]).
//!
//! Here: the machine's state, its API and its timers. The API's types are in [`events`]; the
//! handling of deltas and messages in [`messages`]; membership in [`members`].

mod clock;
mod events;
mod fill;
mod gc;
mod link;
mod members;
mod messages;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, Timestamp};

use crate::digest::Digest;
use crate::pacer::Pacer;
use crate::peer::{BulkRef, CHUNK_BYTES, MemberState, PeerMsg};
use crate::replica::{Now, SyncBatch};
use crate::snapshot::SnapshotWalk;
use crate::stats::GatewayStats;

pub use clock::{ClockView, Measured, PROBE_INTERVAL_MS};
pub use events::{CloseWhy, Event, MemberStatus, MemberView, Notice, SnapshotPiece, Transmit};
pub use fill::FILL_RETRY_MS;
pub use link::{ACK_DELAY_MS, MAX_PENDING_WHILE_DOWN, MAX_UNACKED, ROOT_INTERVAL_MS};
pub use repair::{MAX_ROUND_INTERVAL_MS, MIN_ROUND_INTERVAL_MS, QUIET_MS, REPAIR_AFTER_MS, ROUND_TIMEOUT_MS};

use fill::Filling;
use gc::collected_pieces;
use link::{Deltas, Live, Phase};

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
///
/// Safety does not rest on it: the key stays deleted either way (see `collect_tombstones`).
/// A tombstone handed back after its ghost is gone is merged again and collected again, a
/// repeat of work. The peers collect on the `Collected` message, a round trip after this
/// node; 30 s covers that and a reconnect with its repair round. Longer costs memory: about
/// 150 bytes per collected key (measured with dhat), so a node collecting 8 000 keys a second
/// holds ~35 MiB of ghosts.
pub const GHOST_TTL_MS: u64 = 30_000;

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

    fn live_on(&self, conn: ConnId) -> Option<&Live> {
        let ConnInfo { peer, .. } = self.conns.get(&conn)?;
        self.members.get(peer)?.phase.live().filter(|l| l.conn == conn)
    }
}
