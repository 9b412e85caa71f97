//! The gateway state machine: the node's one link to the other servers.
//!
//! Pure, like [`crate::replica`]: it takes deltas and time in and says what to send. The QUIC
//! driver around it is [`crate::remote`].
//!
//! - Local actors send the gateway the deltas of their clients' writes (paced like any
//!   recipient). The gateway merges them into its own full replica and queues the entries that
//!   changed it for every known remote server, so each Put crosses to each remote server once,
//!   however many actors either side has.
//! - Each remote server has its own [`Pacer`]: at most 10 batches in any second, sent as soon
//!   as that budget allows. An isolated write and the first few batches after a quiet spell go
//!   out at once; under sustained load each batch carries what accumulated since the last, and
//!   nothing waits longer than [`crate::pacer::MAX_WAIT_MS`].
//! - Batches from remote servers are merged into the gateway's replica; the entries that
//!   changed it are fanned out once to every local actor, paced by one more [`Pacer`], so
//!   remote traffic never breaks the per-pair budget however many servers send at once.
//! - A joining server gets a snapshot of the gateway's replica, streamed from the replica itself
//!   ([`crate::snapshot`]). Every entry the gateway had when the joiner asked is in it (in that
//!   version or a newer one); every entry after that goes out as a delta; so nothing written
//!   during a join is lost.
//! - On the joining side, snapshot chunks that bring keys new to the gateway are held back from
//!   the fan-out until the snapshot ends, then go to the actors as one batch: a large batch
//!   into a small replica is cheap to merge, many small ones into a large replica are not.
//! - A remote server that is disconnected keeps its queue: it gets what it missed (newest entry
//!   per key) when it reconnects.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, MergeStats};

use crate::pacer::Pacer;
use crate::replica::SyncBatch;
use crate::stats::NodeStats;

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

/// What the gateway knows about one remote server.
#[derive(Debug, Default)]
struct Link {
    connected: bool,
    /// Entries owed to this server (newest per key).
    pending: DeltaBuffer<Bytes, Bytes>,
    pacer: Pacer,
}

/// The gateway of one node.
#[derive(Debug)]
pub struct Gateway {
    /// The gateway's index among the node's sync participants (after the query actors).
    index: usize,
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
    stats: Arc<NodeStats>,
}

impl Gateway {
    /// A gateway for a node of `actors` query actors.
    pub fn new(actors: usize, stats: Arc<NodeStats>) -> Self {
        Gateway {
            index: actors,
            replica: BytesMap::new(),
            links: BTreeMap::new(),
            inbound: DeltaBuffer::new(),
            held: BytesMap::new(),
            held_at: None,
            fanout: Pacer::default(),
            actors,
            stats,
        }
    }

    /// The gateway's replica: everything the node has sent to or received from other servers.
    pub fn replica(&self) -> &BytesMap {
        &self.replica
    }

    /// Remote servers known (connected or not).
    pub fn peers(&self) -> impl Iterator<Item = (&str, bool)> {
        self.links.iter().map(|(k, l)| (k.as_str(), l.connected))
    }

    /// Entries queued for `peer`.
    pub fn pending_for(&self, peer: &str) -> usize {
        self.links.get(peer).map_or(0, |l| l.pending.len())
    }

    /// A remote server connected (or reconnected). A server seen for the first time owes
    /// nothing from before: it pulls a snapshot for that.
    pub fn connected(&mut self, peer: &str) {
        let link = self.links.entry(peer.to_owned()).or_default();
        if !link.connected {
            link.connected = true;
            self.stats.peers_connected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A remote server is known but not connected yet (a `--join` target); entries are queued
    /// for it from now on.
    pub fn expect(&mut self, peer: &str) {
        self.links.entry(peer.to_owned()).or_default();
    }

    /// The connection to `peer` is gone; entries queue until it comes back.
    pub fn disconnected(&mut self, peer: &str) {
        if let Some(link) = self.links.get_mut(peer)
            && link.connected
        {
            link.connected = false;
            self.stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
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
        NodeStats::add(&self.stats.sync_entries_received, stats.total() as u64);
        NodeStats::add(&self.stats.sync_entries_redundant, stats.redundant as u64);
        stats
    }

    /// Merges entries from a remote server (a delta or a snapshot chunk); entries new to the
    /// node are queued for the local actors. They are not sent on to other servers: every
    /// server sends its own writes to every other.
    pub fn on_remote(&mut self, delta: &BytesMap) -> MergeStats {
        let inbound = &mut self.inbound;
        let stats = self.replica.merge_with(delta, |k, e| inbound.record(k.clone(), e.clone()));
        NodeStats::add(&self.stats.sync_entries_received, stats.total() as u64);
        NodeStats::add(&self.stats.sync_entries_redundant, stats.redundant as u64);
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
            NodeStats::add(&self.stats.sync_entries_received, stats.total() as u64);
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
        let mut held = std::mem::take(&mut self.held);
        if held.entry_count() == 0 {
            return;
        }
        // Merge the smaller into the larger, and hand the larger over whole: absorbing into an
        // empty buffer adopts the map without touching its entries.
        if held.entry_count() >= self.inbound.len() {
            held.merge_owned(self.inbound.flush());
            self.inbound.absorb(held);
        } else {
            self.inbound.absorb(held);
        }
    }

    /// The batch to send `peer` now, if it is connected, owed something, and pacing allows.
    pub fn poll_peer(&mut self, peer: &str, mono_ms: u64) -> Option<BytesMap> {
        let link = self.links.get_mut(peer)?;
        if !link.connected || link.pending.is_empty() || !link.pacer.allows(mono_ms) {
            return None;
        }
        let delta = link.pending.flush();
        let rate = link.pacer.record(mono_ms) as u64;
        self.stats.sync_max_pair_rate.fetch_max(rate, Ordering::Relaxed);
        NodeStats::add(&self.stats.sync_messages_sent, 1);
        NodeStats::add(&self.stats.sync_entries_sent, delta.entry_count() as u64);
        Some(delta)
    }

    /// The batch to fan out to every local actor now, if any and pacing allows.
    pub fn poll_fanout(&mut self, mono_ms: u64) -> Option<SyncBatch> {
        if self.inbound.is_empty() || !self.fanout.allows(mono_ms) {
            return None;
        }
        let delta = Arc::new(self.inbound.flush());
        let rate = self.fanout.record(mono_ms) as u64;
        let n = self.actors as u64;
        if n > 0 {
            self.stats.sync_max_pair_rate.fetch_max(rate, Ordering::Relaxed);
        }
        NodeStats::add(&self.stats.sync_messages_sent, n);
        NodeStats::add(&self.stats.sync_entries_sent, n * delta.entry_count() as u64);
        Some(SyncBatch { from: self.index, delta })
    }

    /// When the gateway next has something due (monotonic ms), if ever: exactly the first
    /// instant one of its pacers with something queued allows a send (possibly already past).
    pub fn next_due(&self) -> Option<u64> {
        let fanout = (!self.inbound.is_empty()).then(|| self.fanout.next_at());
        let links =
            self.links.values().filter(|l| l.connected && !l.pending.is_empty()).map(|l| l.pacer.next_at());
        fanout.into_iter().chain(links).min()
    }
}

/// Splits `delta` into pieces of about `max_bytes` of keys and values each (an entry larger than
/// that travels alone), so no frame exceeds the transport's limit.
pub fn split(delta: BytesMap, max_bytes: usize) -> Vec<BytesMap> {
    let mut pieces = Vec::new();
    let mut current = BytesMap::new();
    let mut size = 0;
    for (k, e) in delta.into_entries() {
        let entry_size = crate::snapshot::entry_size(&k, &e);
        if size + entry_size > max_bytes && current.entry_count() > 0 {
            pieces.push(std::mem::take(&mut current));
            size = 0;
        }
        size += entry_size;
        current.apply(k, e);
    }
    if current.entry_count() > 0 {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use lww_crdt::Timestamp;

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
        let mut g = Gateway::new(2, Arc::default());
        g.connected("a");
        g.connected("b");
        g.on_local(&delta(&["x"], 10));
        assert_eq!(g.poll_peer("a", 0).unwrap().entry_count(), 1, "isolated: at once");
        assert_eq!(g.poll_peer("b", 0).unwrap().entry_count(), 1);
        g.on_local(&delta(&["y"], 11));
        g.on_local(&delta(&["z"], 12));
        g.on_local(&delta(&["y", "z"], 12)); // a duplicate changes nothing and is not re-sent
        for peer in ["a", "b"] {
            assert_eq!(g.poll_peer(peer, 10).unwrap().entry_count(), 2, "start of a burst: at once too");
        }
        for i in 2..BURST as u64 {
            g.on_local(&delta(&[&format!("s{i}")], 20 + i));
            for peer in ["a", "b"] {
                assert_eq!(g.poll_peer(peer, 10 + i).unwrap().entry_count(), 1, "within the burst");
            }
        }
        g.on_local(&delta(&["w1"], 30));
        g.on_local(&delta(&["w2"], 31));
        assert!(g.poll_peer("a", 50).is_none(), "burst spent: paced");
        assert_eq!(g.next_due(), Some(BURST_SPAN_MS), "exactly when the burst's span has passed");
        assert!(g.poll_peer("a", BURST_SPAN_MS - 1).is_none());
        assert_eq!(g.poll_peer("a", BURST_SPAN_MS).unwrap().entry_count(), 2);
        assert_eq!(g.next_due(), Some(BURST_SPAN_MS), "b still owes w1, w2");
        assert_eq!(g.poll_peer("b", 500).unwrap().entry_count(), 2);
        assert!(g.poll_peer("a", 500).is_none());
        assert_eq!(g.next_due(), None);
    }

    #[test]
    fn the_fanout_spends_the_budget_and_keeps_it() {
        use crate::pacer::{BURST, MAX_PER_WINDOW, MAX_WAIT_MS};
        let stats = Arc::new(NodeStats::default());
        let mut g = Gateway::new(2, stats.clone());
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
        assert_eq!(NodeStats::get(&stats.sync_max_pair_rate), MAX_PER_WINDOW as u64);
        assert_eq!(NodeStats::get(&stats.sync_messages_sent), 2 * sent.len() as u64);
    }

    #[test]
    fn remote_entries_fan_out_to_actors_and_are_not_forwarded_to_other_peers() {
        let mut g = Gateway::new(3, Arc::default());
        g.connected("a");
        g.connected("b");
        let stats = g.on_remote(&delta(&["r1", "r2"], 10));
        assert_eq!(stats.changed, 2);
        assert!(g.poll_peer("b", 0).is_none(), "remote entries are not re-forwarded");
        let batch = g.poll_fanout(0).unwrap();
        assert_eq!((batch.from, batch.delta.entry_count()), (3, 2));
        // Already known: nothing to fan out.
        assert_eq!(g.on_remote(&delta(&["r1"], 10)).redundant, 1);
        assert!(g.poll_fanout(1_000).is_none());
    }

    #[test]
    fn a_disconnected_peer_keeps_its_queue() {
        let stats = Arc::new(NodeStats::default());
        let mut g = Gateway::new(1, stats.clone());
        g.expect("late");
        g.on_local(&delta(&["a", "b"], 10));
        assert!(g.poll_peer("late", 0).is_none(), "not connected yet");
        g.connected("late");
        assert_eq!(NodeStats::get(&stats.peers_connected), 1);
        assert_eq!(g.poll_peer("late", 0).unwrap().entry_count(), 2);
        g.disconnected("late");
        g.disconnected("late");
        assert_eq!(NodeStats::get(&stats.peers_connected), 0);
        g.on_local(&delta(&["c"], 11));
        g.connected("late");
        assert_eq!(g.poll_peer("late", 1_000).unwrap().entry_count(), 1);
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
        let stats = Arc::new(NodeStats::default());
        let mut g = Gateway::new(2, stats.clone());
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
        assert_eq!(NodeStats::get(&stats.sync_entries_received), 1 + 300 + 1);
        assert_eq!(NodeStats::get(&stats.sync_entries_redundant), 1);
        assert_eq!(NodeStats::get(&stats.sync_entries_sent), 2 * (1 + 300));
        assert_eq!(NodeStats::get(&stats.sync_max_pair_rate), 1, "one batch per second per actor");
    }

    #[test]
    fn held_snapshot_entries_are_not_kept_from_the_actors_by_a_stalled_transfer() {
        let mut g = Gateway::new(1, Arc::default());
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
    fn split_respects_the_size_limit() {
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
