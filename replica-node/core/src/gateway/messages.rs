//! What the gateway does with deltas (local and remote), with every message a peer sends, and
//! with the chunks of a snapshot it asked for.

use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::{BytesMap, MergeStats, Shared, Timestamp};

use crate::peer::{Hello, PROTOCOL_VERSION, PeerMsg};
use crate::replica::Now;
use crate::snapshot::SnapshotWalk;

use super::clock::PeerClock;
use super::link::{Live, Phase};
use super::repair::Repair;
use super::{
    CloseWhy, ConnId, ConnInfo, GOSSIP_INTERVAL_MS, Gateway, NOTICE_EVERY_MS, Notice, SnapshotPiece, Transmit,
};

impl Gateway {
    /// Merges a delta of local writes; entries new to the gateway are queued for every member.
    pub(super) fn on_local(&mut self, delta: &BytesMap, now: Now) -> MergeStats {
        let members = &mut self.members;
        let digest = &mut self.digest;
        // Records are shared, not copied: the gateway's replica and every member's queue hold
        // the record the writing actor made.
        let stats = self.replica.merge_records_with(delta, |rec, old| {
            digest.replace(&rec.key, old, &rec.entry, now.mono_ms);
            // A member whose queue was dropped gets nothing more until it is back: repair then
            // finds everything it missed.
            for m in members.values_mut().filter(|m| m.is_active() && !m.deltas.lost) {
                m.deltas.pending.record_shared(Shared::clone(rec));
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
    pub(super) fn on_remote(&mut self, delta: &BytesMap, now: Now) -> MergeStats {
        let inbound = &mut self.inbound;
        let digest = &mut self.digest;
        let members = &mut self.members;
        let stats = self.replica.merge_records_with(delta, |rec, old| {
            digest.replace(&rec.key, old, &rec.entry, now.mono_ms);
            inbound.record_shared(Shared::clone(rec));
            // A local write still queued for a member and now replaced goes as the newer entry:
            // this node never sends an entry older than its own (see `Deltas::requeue_unacked`).
            for m in members.values_mut() {
                if m.deltas.pending.pending().get_entry(&rec.key).is_some() {
                    m.deltas.pending.record_shared(Shared::clone(rec));
                }
            }
        });
        self.stats.sync.received(&stats);
        stats
    }

    /// Merges the entries of `delta` from `peer` that [`Gateway::admit`] lets in (every remote
    /// path: deltas, snapshot chunks, repair).
    pub(super) fn merge_from(&mut self, peer: &str, delta: &BytesMap, now: Now) -> MergeStats {
        let admitted = self.admit(peer, delta, now);
        self.on_remote(&admitted, now)
    }

    /// The entries of `delta` from `peer` that are not stamped more than the bound ahead of
    /// this node's clock (its wall clock, moved up as its peers' clocks say): entries from
    /// the future are refused, counted and reported (design 4.9), so a peer with a clock far
    /// ahead cannot stamp writes that beat every later one. They are not lost: the peer keeps
    /// them, and repair brings them once they are no longer in the future.
    pub(super) fn admit<'d>(
        &mut self,
        peer: &str,
        delta: &'d BytesMap,
        now: Now,
    ) -> std::borrow::Cow<'d, BytesMap> {
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

    pub(super) fn on_message(&mut self, conn: ConnId, msg: PeerMsg, now: Now) {
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
                self.merge_from(&peer, entries, now);
            }
            return;
        }
        match msg {
            PeerMsg::Hello(_) => unreachable!("handled above"),
            PeerMsg::Delta { seq, ack, root, more, entries } => {
                m.deltas.on_ack(ack, self.incarnation);
                if let Some(l) = m.phase.live_mut() {
                    l.repair.on_root(root);
                }
                // All pieces of a flush are merged in this one call, so the actors get them in
                // one fan-out.
                for piece in m.deltas.on_piece(seq, more, entries, now.mono_ms) {
                    self.merge_from(&peer, &piece, now);
                }
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
                self.merge_from(&peer, &entries, now);
                if let Some(m) = self.members.get_mut(&peer)
                    && let Some(l) = m.phase.live_mut()
                {
                    l.repair.on_entries(round, last, now.mono_ms);
                }
            }
        }
    }

    pub(super) fn on_hello(&mut self, conn: ConnId, peer: &str, hello: Hello, now: Now) {
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
        self.replace_at(peer, &hello.peer, hello.started_ms);
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
}

impl Gateway {
    pub(super) fn on_chunk(
        &mut self,
        conn: ConnId,
        id: u64,
        piece: SnapshotPiece,
        total: u64,
        last: bool,
        now: Now,
    ) {
        let Some(peer) = self.conns.get(&conn).map(|c| c.peer.clone()) else { return };
        if !self.fill.is_current(conn, id) {
            // A chunk of a transfer given up on, or on a connection being replaced: still good
            // data.
            self.merge_from(&peer, &piece.entries, now);
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
    /// stalls for [`SNAPSHOT_STALL_MS`](super::SNAPSHOT_STALL_MS)), as one large batch.
    pub(super) fn merge_chunk(&mut self, piece: SnapshotPiece, now: Now) -> MergeStats {
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
    pub(super) fn release_held(&mut self) {
        self.held_at = None;
        // Absorbing merges by value and keeps the larger tree whole (into an empty buffer: no
        // entry is touched).
        self.inbound.absorb(std::mem::take(&mut self.held));
    }

    pub(super) fn request_fill(&mut self, peer: &str, conn: ConnId, now: Now) {
        if let Some((id, after)) = self.fill.request(peer, conn, now.mono_ms) {
            let resumed = after.is_some();
            self.out.push_back(Transmit::Send { conn, msg: PeerMsg::SnapshotRequest { id, after } });
            self.out.push_back(Transmit::Notice(Notice::Filling { peer: peer.to_owned(), resumed }));
        }
    }

    // ---- membership ----
}
