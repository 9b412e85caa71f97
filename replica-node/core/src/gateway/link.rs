//! One remote server as the gateway sees it: its phase (down, greeting, live) and the delta
//! stream to it, which outlives connections.

use std::collections::VecDeque;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer};

use super::clock::PeerClock;
use super::repair::Repair;
use super::{ConnId, SnapshotWalk};
use crate::pacer::Pacer;
use crate::peer::{Ack, CHUNK_BYTES, Fingerprint, PeerMsg};
use crate::snapshot::split;
use crate::stats::SyncStats;

/// How long an acknowledgement may wait for a delta to ride on before it goes out alone. Acks
/// share their link's pacer (and so its 10-per-second budget) with deltas; waiting this long
/// lets one standalone ack cover every delta of a burst and keeps a one-way stream of deltas
/// to at most 4 acks per second back, while a sender holds at most this much (plus a round
/// trip) of acknowledged-later deltas.
pub const ACK_DELAY_MS: u64 = 250;

/// How often, at most, a gateway tells a peer its digest root when no delta carries it: the
/// peer compares it with its own to notice divergence (see [`super::repair`]).
pub const ROOT_INTERVAL_MS: u64 = 1_000;

/// The most unacknowledged deltas kept per remote server before the oldest two are merged.
///
/// The bound on memory when a peer stays connected but never acknowledges: at most this many
/// maps, the oldest of which absorbs everything beyond the bound newest-per-key, so it holds
/// at most one entry per key ever sent (no more than the replica) and the others one batch
/// each. Keys and values are shared `Bytes` with the replica: what is held is tree nodes and
/// reference counts, not copies of the data. Merging loses nothing a re-send needs: an older
/// entry for a key is superseded by the newer one anyway.
pub const MAX_UNACKED: usize = 64;

/// The most entries kept for a remote server that is not connected. Beyond it the queue is
/// dropped and the link marked for repair when it comes back: a dead peer must not make every
/// write cost memory for ever, and digest repair recovers what was dropped (every dropped entry
/// is still in the replica, and tombstones are kept until every server has them).
pub const MAX_PENDING_WHILE_DOWN: usize = 65_536;

/// The most pieces of one flush (see [`PeerMsg::Delta`]'s `more`) a receiver holds before
/// merging them anyway: 64 MiB of entries at [`CHUNK_BYTES`] a piece. A flush that large is a
/// backlog (after a partition), not one batch of writes; a peer that never ends its flush must
/// not make this node hold its deltas without bound.
pub const MAX_HELD_PIECES: usize = 64;

/// The phase of a link: the per-connection state lives in the phase that has a connection.
#[derive(Debug)]
pub(crate) enum Phase {
    /// No connection.
    Down(Down),
    /// A connection is up and our `Hello` sent; the peer's has not arrived.
    Greeting(Greeting),
    /// Both `Hello`s exchanged: deltas, acks, snapshots and repair flow.
    Live(Box<Live>),
}

#[derive(Debug)]
pub(crate) struct Down {
    /// Since when (monotonic ms): when the link went down, or when the member became known.
    pub since: u64,
}

#[derive(Debug)]
pub(crate) struct Greeting {
    pub conn: ConnId,
    pub dialed: bool,
}

#[derive(Debug)]
pub(crate) struct Live {
    pub conn: ConnId,
    pub dialed: bool,
    /// Digest comparison and repair rounds with this peer.
    pub repair: Repair,
    /// A snapshot this peer asked for, streaming (at most one at a time).
    pub outgoing: Option<SnapshotWalk>,
    /// When the membership is next told to this peer unprompted (monotonic ms).
    pub gossip_at: u64,
    /// What we know of the peer's clock.
    pub clock: PeerClock,
}

impl Phase {
    /// The connection, if there is one.
    pub(crate) fn conn(&self) -> Option<ConnId> {
        match self {
            Phase::Down(_) => None,
            Phase::Greeting(g) => Some(g.conn),
            Phase::Live(l) => Some(l.conn),
        }
    }

    pub(crate) fn dialed(&self) -> Option<bool> {
        match self {
            Phase::Down(_) => None,
            Phase::Greeting(g) => Some(g.dialed),
            Phase::Live(l) => Some(l.dialed),
        }
    }

    pub(crate) fn live(&self) -> Option<&Live> {
        match self {
            Phase::Live(l) => Some(l),
            _ => None,
        }
    }

    pub(crate) fn live_mut(&mut self) -> Option<&mut Live> {
        match self {
            Phase::Live(l) => Some(l),
            _ => None,
        }
    }
}

/// The stream of deltas to one remote server and the acknowledgements both ways. It survives
/// connections: what was not acknowledged on one goes out again on the next.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    /// Entries owed to this server (newest per key).
    pub pending: DeltaBuffer<Bytes, Bytes>,
    pub pacer: Pacer,
    /// The sequence number of the last delta sent to this server. It only grows, across
    /// reconnects and the peer's restarts: the peer tells runs of this process apart by the
    /// incarnation in our `Hello`, not by the numbers.
    sent_seq: u64,
    /// Deltas sent and not yet acknowledged, oldest first, by sequence number; folded back
    /// into `pending` when a connection goes down or is replaced. At most [`MAX_UNACKED`].
    unacked: VecDeque<(u64, BytesMap)>,
    /// The peer's incarnation, from its latest `Hello`.
    pub peer_incarnation: Option<u64>,
    /// The highest sequence number merged from that incarnation of the peer.
    received: u64,
    /// Since when (monotonic ms) an ack has been owed, if one is.
    ack_owed_since: Option<u64>,
    /// The digest root last told to the peer, and when.
    root_sent: Option<u128>,
    root_sent_at: u64,
    /// Entries were dropped while the peer was unreachable: repair when it is back.
    pub lost: bool,
    /// Pieces of a flush from the peer whose last piece has not arrived, in order; merged
    /// with it (or when the connection they came on ends: good data is never dropped).
    held: Vec<BytesMap>,
}

impl Deltas {
    /// Queues every unacknowledged delta for sending again. The peer may have merged some of
    /// them; a duplicate changes nothing there. Entries the replica has since replaced are not
    /// sent again: this node never sends an entry older than its own, so an old value cannot
    /// come back after every server has collected the tombstone that replaced it.
    pub fn requeue_unacked(&mut self, replica: &BytesMap) {
        for (_, batch) in self.unacked.drain(..) {
            for rec in batch.into_records() {
                if replica.get_entry(&rec.key) == Some(&rec.entry) {
                    self.pending.record_shared(rec);
                }
            }
        }
    }

    /// Entries queued for the peer.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Deltas sent and not acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// The link is down and holds more than `limit` entries: drops them (and the
    /// unacknowledged deltas) and remembers to repair.
    pub fn bound_while_down(&mut self, limit: usize) {
        if self.pending.len() + self.unacked.iter().map(|(_, b)| b.entry_count()).sum::<usize>() > limit {
            self.pending = DeltaBuffer::new();
            self.unacked.clear();
            self.lost = true;
        }
    }

    /// The peer announced incarnation `incarnation` (its `Hello`). A new one after another is
    /// a restarted process: it has merged nothing we sent its predecessor (so what is
    /// unacknowledged is sent again) and numbers its deltas afresh.
    pub fn on_hello(&mut self, incarnation: u64, replica: &BytesMap) {
        if self.peer_incarnation.is_some_and(|known| known != incarnation) {
            self.requeue_unacked(replica);
            self.received = 0;
            self.ack_owed_since = None;
        }
        self.peer_incarnation = Some(incarnation);
    }

    /// Notes that the peer was told our `root` at `mono_ms` (in a `Hello`, a delta or an ack).
    pub fn root_told(&mut self, root: u128, mono_ms: u64) {
        self.root_sent = Some(root);
        self.root_sent_at = mono_ms;
    }

    /// An ack from the peer: the deltas it covers are dropped. An ack for another incarnation
    /// of this process (sent before the peer saw our `Hello`) says nothing about ours.
    pub fn on_ack(&mut self, ack: Ack, incarnation: u64) {
        // An ack for a delta never sent is bogus: honouring it would drop deltas the peer may
        // not have, which a connection that dies could then lose.
        if ack.incarnation != incarnation || ack.seq > self.sent_seq {
            return;
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
            self.unacked.pop_front();
        }
    }

    /// A piece of a delta from the peer, numbered `seq`, arrived at `mono_ms`; `more` pieces of
    /// the same flush follow. Returns what to merge now, in order: nothing while the flush is
    /// incomplete (and not acknowledged either, so a connection that ends sends it again),
    /// then every piece of it at once.
    pub fn on_piece(&mut self, seq: u64, more: bool, entries: BytesMap, mono_ms: u64) -> Vec<BytesMap> {
        if more && self.held.len() < MAX_HELD_PIECES {
            self.held.push(entries);
            return Vec::new();
        }
        self.on_delta(seq, mono_ms);
        let mut pieces = std::mem::take(&mut self.held);
        pieces.push(entries);
        pieces
    }

    /// The pieces held from a flush that did not end, to be merged now (its connection ended).
    pub fn take_held(&mut self) -> Vec<BytesMap> {
        std::mem::take(&mut self.held)
    }

    /// A delta numbered `seq` arrived at `mono_ms`: an ack is owed for it.
    pub fn on_delta(&mut self, seq: u64, mono_ms: u64) {
        if seq > self.received {
            self.received = seq;
            self.ack_owed_since.get_or_insert(mono_ms);
        }
    }

    /// When an owed ack may go out alone (monotonic ms), if one is owed.
    fn ack_due(&self) -> Option<u64> {
        self.ack_owed_since.map(|t| t.saturating_add(ACK_DELAY_MS))
    }

    /// When our root may be told alone (monotonic ms), if it changed since we last told it.
    fn root_due(&self, root: u128) -> Option<u64> {
        (self.root_sent != Some(root)).then(|| self.root_sent_at.saturating_add(ROOT_INTERVAL_MS))
    }

    /// When [`Deltas::take`] will next have something to send, if ever: the first instant the
    /// pacer allows a send and something is owed (which may already have passed).
    pub fn next_due(&self, root: u128) -> Option<u64> {
        let owed = if self.pending.is_empty() { self.ack_due().or_else(|| self.root_due(root))? } else { 0 };
        Some(self.pacer.next_at().max(owed))
    }

    /// The messages to send now, if something is owed and pacing allows: the entries owed as
    /// deltas (several if they exceed [`CHUNK_BYTES`], each numbered and kept until
    /// acknowledged), each carrying the ack owed and our root; or, with no entries owed, an
    /// ack alone once [`ACK_DELAY_MS`] has passed or our root changed [`ROOT_INTERVAL_MS`]
    /// after we last told it. One pacer send either way. `paced: false` (a stopping node)
    /// sends whatever is owed now, regardless of pacing and delays.
    pub fn take(&mut self, root: u128, mono_ms: u64, paced: bool, stats: &mut SyncStats) -> Vec<PeerMsg> {
        let due = |at: Option<u64>| at.is_some_and(|at| !paced || mono_ms >= at);
        // A changed root alone waits for an owed ack, which it rides with.
        let alone =
            due(self.ack_due()) || (paced && self.ack_owed_since.is_none() && due(self.root_due(root)));
        if (self.pending.is_empty() && !alone) || (paced && !self.pacer.allows(mono_ms)) {
            return Vec::new();
        }
        let ack = Ack { incarnation: self.peer_incarnation.unwrap_or(0), seq: self.received };
        let root_fp = Fingerprint::from(root);
        self.ack_owed_since = None;
        self.root_told(root, mono_ms);
        let mut msgs = Vec::new();
        let mut entries = 0;
        if self.pending.is_empty() {
            msgs.push(PeerMsg::Ack { ack, root: root_fp });
        } else {
            // One sequence number per frame: an ack then covers only frames that arrived. The
            // receiver merges the pieces of one flush together (`more`), so the writes of one
            // batch (a transaction) are never seen in part, wherever the cut falls.
            let pieces = split(self.pending.flush(), CHUNK_BYTES);
            let count = pieces.len();
            for (i, piece) in pieces.into_iter().enumerate() {
                self.sent_seq += 1;
                entries += piece.entry_count();
                let more = i + 1 < count;
                msgs.push(PeerMsg::Delta {
                    seq: self.sent_seq,
                    ack,
                    root: root_fp,
                    more,
                    entries: piece.clone(),
                });
                self.keep_unacked(self.sent_seq, piece);
            }
        }
        stats.sent(self.pacer.record(mono_ms), msgs.len() as u64, entries as u64);
        msgs
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
}
