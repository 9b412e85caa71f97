//! The gateway state machine: the node's one link to the other servers.
//!
//! Pure, like [`crate::replica`]: it takes deltas and time in and says what to send. The QUIC
//! driver around it is `replica_node::runtime::gateway_loop`.
//!
//! - Local deltas are merged into the gateway's own full replica; what changed it is queued
//!   for every known remote server, so each Put crosses to each remote server once, however
//!   many actors either side has. Each remote server, and the fan-out to the local actors, has
//!   its own [`Pacer`].
//! - Remote batches are merged and what changed the replica is fanned out once to every local
//!   actor; they are not forwarded to other servers.
//! - A joiner gets a snapshot streamed from the replica itself ([`crate::snapshot`]); every
//!   entry written during the join also goes out as a delta, so nothing is lost. On the joining
//!   side, chunks new to the gateway are held back and reach the actors as one batch when the
//!   snapshot ends: one large merge into a small replica is cheap, many small ones are not.
//! - Deltas are numbered per link and kept until acknowledged (cumulative acks ride on deltas
//!   or go alone after [`ACK_DELAY_MS`], through the same pacer). A connection that goes down
//!   or is replaced puts every unacknowledged delta back in its link's queue, so a dying
//!   connection loses nothing; `Hello` carries a per-process incarnation so a restarted peer
//!   is sent everything again and acks for an earlier run are ignored. Bounded by
//!   [`MAX_UNACKED`]. State lost with a restarted process is not repaired (no anti-entropy).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, MergeStats};

use crate::pacer::Pacer;
use crate::peer::{Ack, CHUNK_BYTES, PeerMsg};
use crate::replica::SyncBatch;
use crate::snapshot::split;
use crate::stats::GatewayStats;

/// How long held snapshot entries wait for the next chunk before they go to the actors anyway.
pub const SNAPSHOT_STALL_MS: u64 = 1_000;

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

/// How long an acknowledgement may wait for a delta to ride on before it goes out alone. Acks
/// share their link's pacer (and so its 10-per-second budget) with deltas; waiting this long
/// lets one standalone ack cover every delta of a burst and keeps a one-way stream of deltas
/// to at most 4 acks per second back, while a sender holds at most this much (plus a round
/// trip) of acknowledged-later deltas.
pub const ACK_DELAY_MS: u64 = 250;

/// The most unacknowledged deltas kept per remote server before the oldest two are merged.
///
/// The bound on memory when a peer stays connected but never acknowledges: at most this many
/// maps, the oldest of which absorbs everything beyond the bound newest-per-key, so it holds
/// at most one entry per key ever sent (no more than the replica) and the others one batch
/// each. Keys and values are shared `Bytes` with the replica: what is held is tree nodes and
/// reference counts, not copies of the data. Merging loses nothing a re-send needs: an older
/// entry for a key is superseded by the newer one anyway.
pub const MAX_UNACKED: usize = 64;

/// What the gateway knows about one remote server.
#[derive(Debug, Default)]
struct Link {
    connected: bool,
    /// Entries owed to this server (newest per key).
    pending: DeltaBuffer<Bytes, Bytes>,
    pacer: Pacer,
    /// The sequence number of the last delta sent to this server. It only grows, across
    /// reconnects and the peer's restarts: the peer tells runs of this process apart by the
    /// incarnation in our `Hello`, not by the numbers.
    sent_seq: u64,
    /// Deltas sent and not yet acknowledged, oldest first, by sequence number; folded back
    /// into `pending` when a connection goes down or is replaced. At most [`MAX_UNACKED`].
    unacked: VecDeque<(u64, BytesMap)>,
    /// The peer's incarnation, from its latest `Hello`.
    peer_incarnation: Option<u64>,
    /// The highest sequence number merged from that incarnation of the peer.
    received: u64,
    /// Since when (monotonic ms) an ack has been owed, if one is.
    ack_owed_since: Option<u64>,
}

impl Link {
    /// Queues every unacknowledged delta for sending again. The peer may have merged some of
    /// them; a duplicate changes nothing there.
    fn requeue_unacked(&mut self) {
        for (_, batch) in self.unacked.drain(..) {
            self.pending.absorb(batch);
        }
    }

    /// Keeps `batch`, sent as `seq`, until it is acknowledged (see [`MAX_UNACKED`]).
    fn keep_unacked(&mut self, seq: u64, batch: BytesMap) {
        self.unacked.push_back((seq, batch));
        if self.unacked.len() > MAX_UNACKED {
            // Checked above: there are at least two.
            let (_, older) = self.unacked.pop_front().expect("more than MAX_UNACKED");
            let (seq, newer) = self.unacked.pop_front().expect("more than MAX_UNACKED");
            // The result is acknowledged with the newer one. (`merge_owned` keeps the larger
            // tree and merges the smaller into it.)
            let mut merged = older;
            merged.merge_owned(newer);
            self.unacked.push_front((seq, merged));
        }
    }

    /// When an owed ack may go out alone (monotonic ms), if one is owed.
    fn ack_due(&self) -> Option<u64> {
        self.ack_owed_since.map(|t| t.saturating_add(ACK_DELAY_MS))
    }
}

/// The gateway of one node.
#[derive(Debug)]
pub struct Gateway {
    /// The gateway's index among the node's sync participants (after the query actors).
    index: usize,
    /// This run of the process, announced in `Hello` (see [`crate::peer::Ack`]).
    incarnation: u64,
    replica: BytesMap,
    links: BTreeMap<String, Link>,
    /// Entries from remote servers owed to the local actors.
    inbound: DeltaBuffer<Bytes, Bytes>,
    /// Snapshot entries owed to the local actors, held back until the snapshot ends.
    held: BytesMap,
    /// When the last chunk went into `held` (monotonic ms).
    held_at: Option<u64>,
    /// Every local actor gets every fan-out batch at the same instant: one pacer for all.
    fanout: Pacer,
    actors: usize,
    stats: GatewayStats,
}

impl Gateway {
    /// A gateway for a node of `actors` query actors; `incarnation` is random per process.
    pub fn new(actors: usize, incarnation: u64) -> Self {
        Gateway {
            index: actors,
            incarnation,
            replica: BytesMap::new(),
            links: BTreeMap::new(),
            inbound: DeltaBuffer::new(),
            held: BytesMap::new(),
            held_at: None,
            fanout: Pacer::default(),
            actors,
            stats: GatewayStats::default(),
        }
    }

    /// A gateway whose replica starts as `replica` (the state a node recovered from its disk).
    pub fn with_replica(actors: usize, incarnation: u64, replica: BytesMap) -> Self {
        Gateway { replica, ..Gateway::new(actors, incarnation) }
    }

    /// What the gateway sent and received, and how many servers it is connected to.
    pub fn stats(&self) -> &GatewayStats {
        &self.stats
    }

    /// This run's incarnation id, for `Hello`.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The gateway's replica: everything the node has sent to or received from other servers.
    pub fn replica(&self) -> &BytesMap {
        &self.replica
    }

    /// Entries queued for `peer`.
    pub fn pending_for(&self, peer: &str) -> usize {
        self.links.get(peer).map_or(0, |l| l.pending.len())
    }

    /// Deltas sent to `peer` and not acknowledged yet.
    pub fn unacked_for(&self, peer: &str) -> usize {
        self.links.get(peer).map_or(0, |l| l.unacked.len())
    }

    /// A remote server connected (or reconnected). A server seen for the first time owes
    /// nothing from before: it pulls a snapshot for that. A new connection that replaces a
    /// live one gets what was unacknowledged on the old, as after [`Gateway::disconnected`].
    pub fn connected(&mut self, peer: &str) {
        let link = self.links.entry(peer.to_owned()).or_default();
        if link.connected {
            link.requeue_unacked();
        } else {
            link.connected = true;
            self.stats.peers_connected += 1;
        }
    }

    /// `peer` announced its incarnation (its `Hello`). A new one after another is a restarted
    /// process: it has merged nothing we sent its predecessor (so what is unacknowledged is
    /// sent again) and numbers its deltas afresh (so what we received from it starts at 0).
    pub fn on_hello(&mut self, peer: &str, incarnation: u64) {
        let link = self.links.entry(peer.to_owned()).or_default();
        if link.peer_incarnation.is_some_and(|known| known != incarnation) {
            link.requeue_unacked();
            link.received = 0;
            link.ack_owed_since = None;
        }
        link.peer_incarnation = Some(incarnation);
    }

    /// A delta from `peer`, received at `mono_ms`: merges its entries (see
    /// [`Gateway::on_remote`]), takes its piggybacked ack, and owes the peer an ack for it.
    pub fn on_peer_delta(
        &mut self,
        peer: &str,
        seq: u64,
        ack: Ack,
        entries: &BytesMap,
        mono_ms: u64,
    ) -> MergeStats {
        self.on_ack(peer, ack);
        let stats = self.on_remote(entries);
        if let Some(link) = self.links.get_mut(peer)
            && seq > link.received
        {
            link.received = seq;
            link.ack_owed_since.get_or_insert(mono_ms);
        }
        stats
    }

    /// An ack from `peer`: the deltas it covers are dropped. An ack for another incarnation of
    /// this process (sent before the peer saw our `Hello`) says nothing about ours.
    pub fn on_ack(&mut self, peer: &str, ack: Ack) {
        if ack.incarnation != self.incarnation {
            return;
        }
        if let Some(link) = self.links.get_mut(peer) {
            while link.unacked.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                link.unacked.pop_front();
            }
        }
    }

    /// A remote server is known but not connected yet (a `--join` target); entries are queued
    /// for it from now on.
    pub fn expect(&mut self, peer: &str) {
        self.links.entry(peer.to_owned()).or_default();
    }

    /// The connection to `peer` is gone; entries queue until it comes back, and so does
    /// every delta it did not acknowledge: it may have died in the connection.
    pub fn disconnected(&mut self, peer: &str) {
        if let Some(link) = self.links.get_mut(peer)
            && link.connected
        {
            link.connected = false;
            link.requeue_unacked();
            self.stats.peers_connected -= 1;
        }
    }

    /// Merges a delta of local writes; entries new to the gateway are queued for every remote
    /// server.
    pub fn on_local(&mut self, delta: &BytesMap) -> MergeStats {
        let links = &mut self.links;
        let stats = self.replica.merge_with(delta, |k, e| {
            for link in links.values_mut() {
                link.pending.record(k.clone(), e.clone());
            }
        });
        self.stats.sync.received(&stats);
        stats
    }

    /// Merges entries from a remote server (a delta or a snapshot chunk); entries new to the
    /// node are queued for the local actors. They are not sent on to other servers: every
    /// server sends its own writes to every other.
    pub fn on_remote(&mut self, delta: &BytesMap) -> MergeStats {
        let inbound = &mut self.inbound;
        let stats = self.replica.merge_with(delta, |k, e| inbound.record(k.clone(), e.clone()));
        self.stats.sync.received(&stats);
        stats
    }

    /// Merges a chunk of a snapshot from a remote server, received at `mono_ms`; `last` says
    /// whether the snapshot ends with it.
    ///
    /// The same outcome as [`Gateway::on_remote`], cheaper for the chunks of a join: when the
    /// gateway holds no key in the chunk's key range, every entry is new, so the chunk is
    /// moved into the replica without recording entries one by one, and its copy is kept for
    /// the actors. Kept chunks join the fan-out when a snapshot ends (or stalls, see
    /// [`Gateway::held_due`]), as one large batch.
    pub fn on_snapshot_chunk(&mut self, piece: SnapshotPiece, last: bool, mono_ms: u64) -> MergeStats {
        let SnapshotPiece { entries: chunk, copy } = piece;
        let fresh = match (chunk.entries().next(), chunk.entries().next_back()) {
            (Some((first, _)), Some((end, _))) => self
                .replica
                .range::<Bytes, _>((Bound::Included(first), Bound::Included(end)))
                .next()
                .is_none(),
            _ => false,
        };
        let stats = if fresh {
            let stats = self.replica.merge_owned(copy);
            self.stats.sync.entries_received += stats.total() as u64;
            // Merging into the empty map adopts the chunk whole; afterwards the chunks arrive
            // in key order, so each entry is appended.
            self.held.merge_owned(chunk);
            self.held_at = Some(mono_ms);
            stats
        } else {
            self.on_remote(&chunk)
        };
        if last {
            self.release_held();
        }
        stats
    }

    /// When held snapshot entries are due for the fan-out although their snapshot has not
    /// ended (monotonic ms): [`SNAPSHOT_STALL_MS`] after the last chunk, so a transfer that
    /// stops without a last chunk or a disconnect cannot keep them from the actors.
    pub fn held_due(&self) -> Option<u64> {
        self.held_at.map(|t| t + SNAPSHOT_STALL_MS)
    }

    /// Hands held snapshot entries to the fan-out if they are due at `mono_ms`.
    pub fn poll_held(&mut self, mono_ms: u64) {
        if self.held_due().is_some_and(|due| mono_ms >= due) {
            self.release_held();
        }
    }

    /// Hands held snapshot entries to the fan-out now (a snapshot ended, or its sender went
    /// away).
    pub fn release_held(&mut self) {
        self.held_at = None;
        // Absorbing merges by value and keeps the larger tree whole (into an empty buffer: no
        // entry is touched).
        self.inbound.absorb(std::mem::take(&mut self.held));
    }

    /// The messages to send `peer` now, if it is connected, owed something, and pacing allows:
    /// the entries owed as deltas (several if they exceed [`CHUNK_BYTES`], each numbered and
    /// kept until acknowledged), each carrying the ack owed; or, with no entries owed, the ack
    /// alone once [`ACK_DELAY_MS`] has passed. One pacer send either way.
    pub fn poll_peer(&mut self, peer: &str, mono_ms: u64) -> Vec<PeerMsg> {
        self.take_owed(peer, mono_ms, true)
    }

    /// Everything owed to `peer` now if it is connected, regardless of pacing and of
    /// [`ACK_DELAY_MS`]: the last messages of a stopping node.
    pub fn flush_peer(&mut self, peer: &str, mono_ms: u64) -> Vec<PeerMsg> {
        self.take_owed(peer, mono_ms, false)
    }

    fn take_owed(&mut self, peer: &str, mono_ms: u64, paced: bool) -> Vec<PeerMsg> {
        let Some(link) = self.links.get_mut(peer) else {
            return Vec::new();
        };
        let ack_due = link.ack_due().is_some_and(|at| !paced || mono_ms >= at);
        if !link.connected || (link.pending.is_empty() && !ack_due) || (paced && !link.pacer.allows(mono_ms))
        {
            return Vec::new();
        }
        let ack = Ack { incarnation: link.peer_incarnation.unwrap_or(0), seq: link.received };
        link.ack_owed_since = None;
        let mut msgs = Vec::new();
        let mut entries = 0;
        if link.pending.is_empty() {
            msgs.push(PeerMsg::Ack(ack));
        } else {
            // One sequence number per frame: an ack then covers only frames that arrived.
            for piece in split(link.pending.flush(), CHUNK_BYTES) {
                link.sent_seq += 1;
                entries += piece.entry_count();
                msgs.push(PeerMsg::Delta { seq: link.sent_seq, ack, entries: piece.clone() });
                link.keep_unacked(link.sent_seq, piece);
            }
        }
        self.stats.sync.sent(link.pacer.record(mono_ms), msgs.len() as u64, entries as u64);
        msgs
    }

    /// The batch to fan out to every local actor now, if any and pacing allows.
    pub fn poll_fanout(&mut self, mono_ms: u64) -> Option<SyncBatch> {
        if self.inbound.is_empty() || !self.fanout.allows(mono_ms) {
            return None;
        }
        let delta = Arc::new(self.inbound.flush());
        let n = self.actors as u64;
        self.stats.sync.sent(self.fanout.record(mono_ms), n, n * delta.entry_count() as u64);
        Some(SyncBatch { from: self.index, delta })
    }

    /// When the gateway next has something due (monotonic ms), if ever: exactly the first
    /// instant one of its pacers with something queued allows a send (possibly already past).
    pub fn next_due(&self) -> Option<u64> {
        let fanout = (!self.inbound.is_empty()).then(|| self.fanout.next_at());
        let links = self.links.values().filter(|l| l.connected).filter_map(|l| {
            let owed = if l.pending.is_empty() { l.ack_due()? } else { 0 };
            Some(l.pacer.next_at().max(owed))
        });
        fanout.into_iter().chain(links).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::Timestamp;

    /// This gateway's incarnation in the tests.
    const ME: u64 = 1;

    /// Entries in the deltas of `msgs`, `None` if there are none.
    fn entries(msgs: &[PeerMsg]) -> Option<usize> {
        let deltas: Vec<usize> = msgs
            .iter()
            .filter_map(|m| match m {
                PeerMsg::Delta { entries, .. } => Some(entries.entry_count()),
                _ => None,
            })
            .collect();
        (!deltas.is_empty()).then(|| deltas.iter().sum())
    }

    fn delta(keys: &[&str], wall: u64) -> BytesMap {
        let mut d = BytesMap::new();
        for k in keys {
            d.put(Bytes::copy_from_slice(k.as_bytes()), Bytes::from_static(b"v"), Timestamp::new(wall, 0, 1));
        }
        d
    }

    #[test]
    fn local_writes_go_to_every_peer_once_and_are_paced() {
        use crate::pacer::{BURST, BURST_SPAN_MS};
        let mut g = Gateway::new(2, ME);
        g.connected("a");
        g.connected("b");
        g.on_local(&delta(&["x"], 10));
        assert_eq!(entries(&g.poll_peer("a", 0)).unwrap(), 1, "isolated: at once");
        assert_eq!(entries(&g.poll_peer("b", 0)).unwrap(), 1);
        g.on_local(&delta(&["y"], 11));
        g.on_local(&delta(&["z"], 12));
        g.on_local(&delta(&["y", "z"], 12)); // a duplicate changes nothing and is not re-sent
        for peer in ["a", "b"] {
            assert_eq!(entries(&g.poll_peer(peer, 10)).unwrap(), 2, "start of a burst: at once too");
        }
        for i in 2..BURST as u64 {
            g.on_local(&delta(&[&format!("s{i}")], 20 + i));
            for peer in ["a", "b"] {
                assert_eq!(entries(&g.poll_peer(peer, 10 + i)).unwrap(), 1, "within the burst");
            }
        }
        g.on_local(&delta(&["w1"], 30));
        g.on_local(&delta(&["w2"], 31));
        assert!(g.poll_peer("a", 50).is_empty(), "burst spent: paced");
        assert_eq!(g.next_due(), Some(BURST_SPAN_MS), "exactly when the burst's span has passed");
        assert!(g.poll_peer("a", BURST_SPAN_MS - 1).is_empty());
        assert_eq!(entries(&g.poll_peer("a", BURST_SPAN_MS)).unwrap(), 2);
        assert_eq!(g.next_due(), Some(BURST_SPAN_MS), "b still owes w1, w2");
        assert_eq!(entries(&g.poll_peer("b", 500)).unwrap(), 2);
        assert!(g.poll_peer("a", 500).is_empty());
        assert_eq!(g.next_due(), None);
    }

    #[test]
    fn the_fanout_spends_the_budget_and_keeps_it() {
        use crate::pacer::{BURST, MAX_PER_WINDOW, MAX_WAIT_MS};
        let mut g = Gateway::new(2, ME);
        let mut sent = Vec::new();
        // Remote entries every 5 ms for 3 s: a burst goes out at once, then the budget is spread.
        for t in (0..3_000u64).step_by(5) {
            g.on_remote(&delta(&[&format!("r{t}")], 10 + t));
            if g.poll_fanout(t).is_some() {
                sent.push(t);
            }
            assert!(g.next_due().is_none_or(|at| at <= sent.last().unwrap() + MAX_WAIT_MS));
        }
        assert_eq!(sent[..BURST], (0..BURST as u64).map(|i| 5 * i).collect::<Vec<_>>()[..]);
        assert!(sent.windows(2).all(|w| w[1] - w[0] <= MAX_WAIT_MS));
        assert_eq!(g.stats().sync.max_pair_rate, MAX_PER_WINDOW as u64);
        assert_eq!(g.stats().sync.messages_sent, 2 * sent.len() as u64);
    }

    #[test]
    fn remote_entries_fan_out_to_actors_and_are_not_forwarded_to_other_peers() {
        let mut g = Gateway::new(3, ME);
        g.connected("a");
        g.connected("b");
        let stats = g.on_remote(&delta(&["r1", "r2"], 10));
        assert_eq!(stats.changed, 2);
        assert!(g.poll_peer("b", 0).is_empty(), "remote entries are not re-forwarded");
        let batch = g.poll_fanout(0).unwrap();
        assert_eq!((batch.from, batch.delta.entry_count()), (3, 2));
        // Already known: nothing to fan out.
        assert_eq!(g.on_remote(&delta(&["r1"], 10)).redundant, 1);
        assert!(g.poll_fanout(1_000).is_none());
    }

    #[test]
    fn a_disconnected_peer_keeps_its_queue() {
        let mut g = Gateway::new(1, ME);
        g.expect("late");
        g.on_local(&delta(&["a", "b"], 10));
        assert!(g.poll_peer("late", 0).is_empty(), "not connected yet");
        g.connected("late");
        assert_eq!(g.stats().peers_connected, 1);
        assert_eq!(entries(&g.poll_peer("late", 0)).unwrap(), 2);
        g.disconnected("late");
        g.disconnected("late");
        assert_eq!(g.stats().peers_connected, 0);
        g.on_local(&delta(&["c"], 11));
        g.connected("late");
        assert_eq!(entries(&g.poll_peer("late", 1_000)).unwrap(), 3, "c, and a and b: never acknowledged");
    }

    /// The one field of a message that says what it acknowledges.
    fn ack_of(msg: &PeerMsg) -> Option<Ack> {
        match msg {
            PeerMsg::Delta { ack, .. } | PeerMsg::Ack(ack) => Some(*ack),
            _ => None,
        }
    }

    /// A gateway connected to peer "p", incarnation `P`, which said hello.
    const P: u64 = 7;

    fn with_peer() -> Gateway {
        let mut g = Gateway::new(1, ME);
        g.connected("p");
        g.on_hello("p", P);
        g
    }

    #[test]
    fn a_batch_sent_and_not_acked_is_sent_again_after_a_reconnect() {
        let mut g = with_peer();
        g.on_local(&delta(&["x", "y"], 10));
        let first = g.poll_peer("p", 0);
        assert!(matches!(first[..], [PeerMsg::Delta { seq: 1, .. }]), "{first:?}");
        assert_eq!(g.unacked_for("p"), 1);
        // The connection dies with the delta in it; nothing is owed while it is down.
        g.disconnected("p");
        assert_eq!(g.pending_for("p"), 2);
        g.on_local(&delta(&["x"], 11)); // a newer x: only the newest is re-sent
        g.connected("p");
        let again = g.poll_peer("p", 1_000);
        let [PeerMsg::Delta { seq: 2, entries: e, .. }] = &again[..] else { panic!("{again:?}") };
        assert_eq!(e.entry_count(), 2);
        assert_eq!(e.get_entry(&b"x"[..]).map(|e| e.ts.wall_ms), Some(11));
        // A new connection that replaces a live one: the same.
        g.connected("p");
        assert_eq!(entries(&g.poll_peer("p", 2_000)), Some(2));
        assert_eq!(g.unacked_for("p"), 1, "the re-sent batch is the one unacknowledged");
    }

    #[test]
    fn an_acked_batch_is_not_sent_again() {
        let mut g = with_peer();
        g.on_local(&delta(&["a"], 10));
        assert_eq!(entries(&g.poll_peer("p", 0)), Some(1)); // seq 1
        g.on_local(&delta(&["b"], 11));
        assert_eq!(entries(&g.poll_peer("p", 1)), Some(1)); // seq 2
        g.on_local(&delta(&["c"], 12));
        assert_eq!(entries(&g.poll_peer("p", 2)), Some(1)); // seq 3
        // Standalone, then piggybacked on the peer's delta; cumulative.
        g.on_ack("p", Ack { incarnation: ME, seq: 1 });
        assert_eq!(g.unacked_for("p"), 2);
        g.on_peer_delta("p", 1, Ack { incarnation: ME, seq: 2 }, &delta(&["r"], 5), 3);
        assert_eq!(g.unacked_for("p"), 1);
        // An ack meant for another run of this process acknowledges nothing of ours.
        g.on_ack("p", Ack { incarnation: ME + 1, seq: 3 });
        assert_eq!(g.unacked_for("p"), 1);
        g.disconnected("p");
        g.connected("p");
        assert_eq!(g.pending_for("p"), 1, "only c, never acknowledged");
        g.on_ack("p", Ack { incarnation: ME, seq: 3 }); // late: c is already queued again
        let msgs = g.poll_peer("p", 1_000);
        let [PeerMsg::Delta { seq: 4, ack, entries: e }] = &msgs[..] else { panic!("{msgs:?}") };
        assert_eq!(e.entries().map(|(k, _)| &k[..]).collect::<Vec<_>>(), [&b"c"[..]]);
        assert_eq!(*ack, Ack { incarnation: P, seq: 1 }, "the peer's delta, acknowledged on ours");
        g.on_ack("p", Ack { incarnation: ME, seq: 4 });
        g.disconnected("p");
        g.connected("p");
        assert_eq!(g.pending_for("p"), 0);
        assert!(g.poll_peer("p", 2_000).is_empty(), "everything acknowledged both ways");
        assert_eq!(g.stats().sync.messages_sent, 4);
    }

    #[test]
    fn acks_ride_on_deltas() {
        let mut g = with_peer();
        g.on_peer_delta("p", 1, Ack::default(), &delta(&["r1"], 5), 0);
        g.on_peer_delta("p", 2, Ack::default(), &delta(&["r2"], 6), 10);
        assert!(g.poll_peer("p", 20).is_empty(), "an ack alone waits for a delta to ride on");
        assert!(g.poll_fanout(20).is_some());
        assert_eq!(g.next_due(), Some(ACK_DELAY_MS), "…for ACK_DELAY_MS from the first owed");
        g.on_local(&delta(&["w"], 20));
        let msgs = g.poll_peer("p", 30);
        assert_eq!(msgs.len(), 1, "one message: the delta, carrying the ack");
        assert_eq!(ack_of(&msgs[0]), Some(Ack { incarnation: P, seq: 2 }));
        assert!(matches!(msgs[0], PeerMsg::Delta { seq: 1, .. }));
        assert_eq!(g.next_due(), None, "nothing owed: no standalone ack follows");
        assert!(g.poll_peer("p", 10_000).is_empty());
        assert_eq!(g.stats().sync.messages_sent, 1 + 1, "the delta, and the fan-out to the actor");
    }

    #[test]
    fn a_standalone_ack_goes_through_the_pacer() {
        use crate::pacer::{MAX_PER_WINDOW, RATE_WINDOW_MS};
        let mut g = with_peer();
        // Nothing else to send: the ack goes alone, ACK_DELAY_MS after it became owed.
        g.on_peer_delta("p", 1, Ack::default(), &delta(&["r0"], 5), 0);
        assert!(g.poll_peer("p", ACK_DELAY_MS - 1).is_empty());
        assert_eq!(g.poll_peer("p", ACK_DELAY_MS), [PeerMsg::Ack(Ack { incarnation: P, seq: 1 })]);
        // The pacer is spent by deltas: an owed ack waits for it too, and then rides along.
        let mut t = 10_000;
        let mut sends = Vec::new();
        while sends.len() < MAX_PER_WINDOW {
            g.on_local(&delta(&[&format!("w{t}")], t));
            if !g.poll_peer("p", t).is_empty() {
                sends.push(t);
            }
            t += 1;
        }
        g.on_local(&delta(&["late"], t));
        g.on_peer_delta("p", 2, Ack::default(), &delta(&["r1"], 6), t);
        assert!(g.poll_fanout(t).is_some());
        let due = g.next_due().unwrap();
        assert!(due >= sends[0] + RATE_WINDOW_MS, "a full window: nothing before the first send leaves it");
        assert!(g.poll_peer("p", due - 1).is_empty());
        assert_eq!(ack_of(&g.poll_peer("p", due)[0]), Some(Ack { incarnation: P, seq: 2 }));
        // Deltas from the peer every 10 ms for 3 s, nothing to send back: only paced,
        // delayed standalone acks, which never break the budget, and the last one covers all.
        let start = due + RATE_WINDOW_MS;
        let mut acks = 0;
        let mut last = None;
        for (i, t) in (start..start + 3_000).enumerate() {
            if i % 10 == 0 {
                g.on_peer_delta("p", 3 + i as u64 / 10, Ack::default(), &delta(&[&format!("r{t}")], t), t);
            }
            for m in g.poll_peer("p", t) {
                acks += 1;
                last = ack_of(&m);
            }
        }
        let t = start + 3_000 + ACK_DELAY_MS;
        for m in g.poll_peer("p", t) {
            acks += 1;
            last = ack_of(&m);
        }
        assert_eq!(last, Some(Ack { incarnation: P, seq: 3 + 299 }));
        assert!((3 * 1_000 / ACK_DELAY_MS as usize..=4 * 4).contains(&acks), "{acks} acks in 3 s");
        assert!(g.stats().sync.max_pair_rate <= MAX_PER_WINDOW as u64);
    }

    #[test]
    fn a_new_incarnation_resets_the_sequence_state() {
        let mut g = with_peer();
        g.on_peer_delta("p", 41, Ack::default(), &delta(&["r"], 5), 0);
        g.on_local(&delta(&["x"], 10));
        assert_eq!(ack_of(&g.poll_peer("p", 0)[0]), Some(Ack { incarnation: P, seq: 41 }));
        // A reconnect of the same process changes nothing.
        g.disconnected("p");
        g.connected("p");
        g.on_hello("p", P);
        g.on_peer_delta("p", 42, Ack::default(), &delta(&["r"], 6), 1_000);
        g.on_local(&delta(&["y"], 11));
        let msgs = g.poll_peer("p", 1_000);
        assert_eq!(ack_of(&msgs[0]), Some(Ack { incarnation: P, seq: 42 }));
        assert_eq!(entries(&msgs), Some(2), "x again (never acknowledged), y");
        // The peer restarted: it knows nothing we sent, and numbers from 1 again. Its first
        // delta may carry an ack for our seqs as its predecessor knew them, for us under
        // another incarnation: ignored.
        g.connected("p");
        g.on_hello("p", P + 1);
        assert_eq!(g.pending_for("p"), 2, "x and y queued again for the new process");
        g.on_peer_delta("p", 1, Ack { incarnation: ME + 5, seq: 99 }, &delta(&["s"], 7), 2_000);
        assert_eq!(g.pending_for("p"), 2);
        let msgs = g.poll_peer("p", 2_000);
        assert_eq!(
            ack_of(&msgs[0]),
            Some(Ack { incarnation: P + 1, seq: 1 }),
            "seq 1 of the new process is news, not old"
        );
        assert!(matches!(msgs[0], PeerMsg::Delta { seq: 3, .. }), "our numbers go on: {msgs:?}");
        g.on_ack("p", Ack { incarnation: ME, seq: 3 });
        assert_eq!(g.unacked_for("p"), 0);
    }

    #[test]
    fn unacked_batches_are_bounded_by_merging_the_oldest() {
        let mut g = with_peer();
        for i in 0..(3 * MAX_UNACKED as u64) {
            // Every batch rewrites "hot" and adds one key of its own.
            g.on_local(&delta(&["hot", &format!("k{i:03}")], 10 + i));
            assert_eq!(entries(&g.poll_peer("p", 1_000 * i)), Some(2));
            assert!(g.unacked_for("p") <= MAX_UNACKED);
        }
        assert_eq!(g.unacked_for("p"), MAX_UNACKED);
        // The oldest holds seqs 1 to 2 * MAX_UNACKED + 1 and is acknowledged with the last.
        g.on_ack("p", Ack { incarnation: ME, seq: 2 * MAX_UNACKED as u64 });
        assert_eq!(g.unacked_for("p"), MAX_UNACKED);
        g.on_ack("p", Ack { incarnation: ME, seq: 2 * MAX_UNACKED as u64 + 1 });
        assert_eq!(g.unacked_for("p"), MAX_UNACKED - 1);
        g.disconnected("p");
        assert_eq!(g.pending_for("p"), 1 + MAX_UNACKED - 1, "hot once, and the keys not acknowledged");
    }

    /// Two gateways with a simulated connection between them (one-way delay, in order) that
    /// dies at random with whatever is in flight, and comes back a while later: after the
    /// last heal both hold every write, and nothing is left unacknowledged.
    #[test]
    fn two_gateways_over_a_connection_that_keeps_dying_end_identical() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        const DELAY_MS: u64 = 30;
        for seed in 0..8 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut gws = [Gateway::new(1, 11), Gateway::new(1, 22)];
            let names = ["a", "b"];
            // In flight from gateway i to the other: (arrival, message), in order.
            let mut wire: [VecDeque<(u64, PeerMsg)>; 2] = [VecDeque::new(), VecDeque::new()];
            let mut truth = BytesMap::new();
            let mut up = false;
            let mut down_until = 0;
            let end_writes = 20_000;
            for t in 0..end_writes + 5_000 {
                if !up && t >= down_until {
                    // A new connection: each side's Hello is the first frame on it.
                    up = true;
                    for i in 0..2 {
                        gws[i].connected(names[1 - i]);
                        let hello = PeerMsg::Hello {
                            version: crate::peer::PROTOCOL_VERSION,
                            peer: String::new(),
                            incarnation: gws[i].incarnation(),
                        };
                        wire[i].push_back((t + DELAY_MS, hello));
                    }
                } else if up && t < end_writes && rng.random_bool(0.001) {
                    // It dies: what is in flight is lost.
                    up = false;
                    down_until = t + rng.random_range(0..2_000);
                    for i in 0..2 {
                        wire[i].clear();
                        gws[i].disconnected(names[1 - i]);
                    }
                }
                if t < end_writes && rng.random_bool(0.05) {
                    let i = rng.random_range(0..2);
                    let mut d = BytesMap::new();
                    let key = Bytes::from(format!("k{}", rng.random_range(0..300)));
                    d.put(key, Bytes::from(format!("{t}")), Timestamp::new(t, 0, i as u64 + 1));
                    truth.merge(&d);
                    gws[i].on_local(&d);
                }
                for i in 0..2 {
                    let from = names[i];
                    while wire[i].front().is_some_and(|(at, _)| *at <= t) {
                        let (_, msg) = wire[i].pop_front().expect("checked");
                        let g = &mut gws[1 - i];
                        match msg {
                            PeerMsg::Hello { incarnation, .. } => g.on_hello(from, incarnation),
                            PeerMsg::Delta { seq, ack, entries } => {
                                g.on_peer_delta(from, seq, ack, &entries, t);
                            }
                            PeerMsg::Ack(ack) => g.on_ack(from, ack),
                            other => panic!("not sent here: {other:?}"),
                        }
                    }
                    if up {
                        for msg in gws[i].poll_peer(names[1 - i], t) {
                            wire[i].push_back((t + DELAY_MS, msg));
                        }
                    }
                    let _ = gws[i].poll_fanout(t);
                }
            }
            assert!(up, "seed {seed}: the last connection stays up");
            for (i, g) in gws.iter().enumerate() {
                let wrong = truth.entries().filter(|(k, e)| g.replica().get_entry(*k) != Some(*e)).count();
                assert!(
                    g.replica() == &truth,
                    "seed {seed}: gateway {i} misses {wrong} of the newest writes"
                );
                assert_eq!(g.unacked_for(names[1 - i]), 0, "seed {seed}: gateway {i}");
            }
            for g in &gws {
                assert!(g.stats().sync.max_pair_rate <= crate::pacer::MAX_PER_WINDOW as u64);
            }
        }
    }

    fn chunk(range: std::ops::Range<u32>, wall: u64) -> BytesMap {
        let mut d = BytesMap::new();
        for i in range {
            d.put(Bytes::from(format!("k{i:04}")), Bytes::from_static(b"v"), Timestamp::new(wall, 0, 1));
        }
        d
    }

    #[test]
    fn fresh_snapshot_chunks_reach_the_actors_as_one_paced_batch_when_the_snapshot_ends() {
        let mut g = Gateway::new(2, ME);
        g.connected("a");
        // A delta that arrived before the snapshot, and one during it, inside a later chunk's
        // range: that chunk is merged entry by entry, the others are held whole.
        g.on_remote(&delta(&["k0150"], 50));
        assert_eq!(g.poll_fanout(0).unwrap().delta.entry_count(), 1);
        assert_eq!(g.on_snapshot_chunk(SnapshotPiece::new(chunk(0..100, 10)), false, 10).changed, 100);
        assert!(g.poll_fanout(1_000).is_none(), "held back");
        assert_eq!(
            g.on_snapshot_chunk(SnapshotPiece::new(chunk(100..200, 10)), false, 20).changed,
            99,
            "k0150 is newer"
        );
        g.on_remote(&delta(&["new"], 60));
        assert_eq!(g.on_snapshot_chunk(SnapshotPiece::new(chunk(200..300, 10)), true, 30).changed, 100);
        let batch = g.poll_fanout(1_000).unwrap();
        // Everything that changed the gateway, once: the held chunks and the recorded entries.
        assert_eq!(batch.delta.entry_count(), 300);
        assert!(batch.delta.get(&b"new"[..]).is_some());
        assert!(
            batch.delta.get_entry(&b"k0150"[..]).is_none(),
            "already fanned out; the chunk's older one lost"
        );
        assert_eq!(g.replica().get_entry(&b"k0150"[..]).map(|e| e.ts.wall_ms), Some(50));
        assert!(g.poll_fanout(2_000).is_none());
        assert_eq!(g.replica().entry_count(), 301);
        assert_eq!(g.stats().sync.entries_received, 1 + 300 + 1);
        assert_eq!(g.stats().sync.entries_redundant, 1);
        assert_eq!(g.stats().sync.entries_sent, 2 * (1 + 300));
        assert_eq!(g.stats().sync.max_pair_rate, 1, "one batch per second per actor");
    }

    #[test]
    fn held_snapshot_entries_are_not_kept_from_the_actors_by_a_stalled_transfer() {
        let mut g = Gateway::new(1, ME);
        g.on_snapshot_chunk(SnapshotPiece::new(chunk(0..10, 10)), false, 100);
        assert_eq!(g.held_due(), Some(100 + SNAPSHOT_STALL_MS));
        g.poll_held(100 + SNAPSHOT_STALL_MS - 1);
        assert!(g.poll_fanout(0).is_none());
        g.poll_held(100 + SNAPSHOT_STALL_MS);
        assert_eq!(g.held_due(), None);
        assert_eq!(g.poll_fanout(0).unwrap().delta.entry_count(), 10);
        // A sender that goes away: the caller releases what arrived.
        g.on_snapshot_chunk(SnapshotPiece::new(chunk(10..20, 10)), false, 2_000);
        g.release_held();
        assert_eq!(g.poll_fanout(2_000).unwrap().delta.entry_count(), 10);
        // A second snapshot of the same state changes nothing and sends nothing.
        assert_eq!(g.on_snapshot_chunk(SnapshotPiece::new(chunk(0..20, 10)), true, 3_000).redundant, 20);
        assert!(g.poll_fanout(4_000).is_none());
    }

    #[test]
    fn the_final_flush_sends_everything_owed_regardless_of_pacing() {
        use crate::pacer::BURST;
        let mut g = with_peer();
        for i in 0..BURST as u64 {
            g.on_local(&delta(&[&format!("b{i}")], 10 + i));
            assert!(!g.poll_peer("p", i).is_empty());
        }
        g.on_local(&delta(&["last"], 20));
        g.on_peer_delta("p", 1, Ack::default(), &delta(&["r"], 5), 5);
        assert!(g.poll_peer("p", 5).is_empty(), "the pacer's burst is spent");
        let msgs = g.flush_peer("p", 5);
        assert_eq!(entries(&msgs), Some(1));
        assert_eq!(ack_of(&msgs[0]), Some(Ack { incarnation: P, seq: 1 }), "the owed ack rides along");
        assert!(g.flush_peer("p", 5).is_empty(), "nothing owed any more");
        g.on_peer_delta("p", 2, Ack::default(), &delta(&["r2"], 6), 6);
        assert_eq!(
            g.flush_peer("p", 6),
            [PeerMsg::Ack(Ack { incarnation: P, seq: 2 })],
            "before ACK_DELAY_MS"
        );
        g.disconnected("p");
        g.on_local(&delta(&["after"], 30));
        assert!(g.flush_peer("p", 7).is_empty(), "not connected");
    }

    #[test]
    fn split_respects_the_size_limit() {
        use crate::snapshot::split;
        let mut d = BytesMap::new();
        for i in 0..100u32 {
            d.put(Bytes::from(format!("k{i:03}")), Bytes::from(vec![0u8; 100]), Timestamp::new(1, 0, 1));
        }
        let pieces = split(d.clone(), 1_000);
        assert!(pieces.len() >= 10);
        assert!(pieces.iter().all(|p| p.entry_count() <= 8));
        let mut joined = BytesMap::new();
        for p in pieces {
            joined.merge_owned(p);
        }
        assert_eq!(joined, d);
    }
}
