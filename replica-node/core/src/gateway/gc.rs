//! Tombstone collection (design 4.9): a tombstone older than the grace is collected once every
//! active member is connected, shares this server's view of the membership, and has been seen to
//! agree with this replica on the tombstone's bucket durably (heard from again at least
//! [`DURABLE_AFTER_MS`] after the agreement). Collected tombstones are announced to the peers
//! and remembered as ghosts for [`GHOST_TTL_MS`], so that no peer hands one back meanwhile.

use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::Timestamp;

use crate::digest::{BUCKETS, BUCKETS_PER_GROUP};
use crate::peer::{CHUNK_BYTES, PeerMsg};
use crate::replica::Now;

use super::{DURABLE_AFTER_MS, GHOST_TTL_MS, Gateway, Member, Transmit};

impl Member {
    /// The latest moment its replica agreed with ours in bucket `b` that is confirmed durable:
    /// the member was heard from, in the same run, [`DURABLE_AFTER_MS`] after it (0: none).
    pub(super) fn durable_agreement(&self, b: usize) -> u64 {
        let heard = self.last_contact.map_or(0, |c| c.saturating_sub(DURABLE_AFTER_MS));
        let bucket = self.agreed.get(b).copied().filter(|&t| t <= heard).unwrap_or(0);
        bucket.max(self.root_durable_at(heard))
    }

    /// The latest confirmed moment of whole agreement, given the member was heard from after
    /// `heard` + [`DURABLE_AFTER_MS`].
    pub(super) fn root_durable_at(&self, heard: u64) -> u64 {
        // Any moment of a stretch counts: the latest one heard from after.
        let confirmed = |stretch: Option<(u64, u64)>| match stretch {
            Some((since, until)) if since <= heard => until.min(heard),
            _ => 0,
        };
        self.root_durable.max(confirmed(self.root_agreeing)).max(confirmed(self.root_ended))
    }

    /// Roots compared at `now`: equal or not.
    pub(super) fn root_check(&mut self, equal: bool, now: u64) {
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
    pub(super) fn agree(&mut self, mask: u64, buckets: &[u16], now: u64) {
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
}

impl Gateway {
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
    pub(super) fn collect_tombstones(&mut self, now: Now) {
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
    pub(super) fn remove_tombstones(&mut self, tombstones: Vec<(Bytes, Timestamp)>, now: Now) {
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
}

/// `tombstones` in pieces of at most about [`CHUNK_BYTES`] of keys.
pub(super) fn collected_pieces(tombstones: &[(Bytes, Timestamp)]) -> Vec<Vec<(Bytes, Timestamp)>> {
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
