//! Anti-entropy repair between two gateways (design 4.2).
//!
//! Each gateway keeps a [`Digest`] of its replica and tells its peers its root: every delta and
//! ack carries it, and a changed root is told at most every [`super::link::ROOT_INTERVAL_MS`]
//! when nothing else goes out. While two roots agree nothing more happens: repair costs
//! nothing while replicas agree. When they have differed for [`REPAIR_AFTER_MS`] (longer than
//! a sync round, so writes in flight are not mistaken for divergence), the peer with the
//! smaller node id starts a round:
//!
//! 1. initiator → `RepairGroups`: its [`GROUPS`] group digests;
//! 2. responder → `RepairBuckets`: its digests of the buckets of every group that differs,
//!    for buckets that have not changed for [`QUIET_MS`];
//! 3. the initiator picks the buckets that differ and are quiet on both sides (a bucket still
//!    changing is most likely receiving writes in flight, which are not divergence; it is
//!    looked at again in a later round) and both sides stream their entries of those buckets
//!    to each other (`RepairEntries`, in bounded chunks on the low-priority stream, the first
//!    naming the buckets), then merge what they receive. The round ends when each side has
//!    sent and received its last chunk.
//!
//! A round that repaired nothing (every difference was still changing) doubles the wait before
//! the next, up to [`MAX_ROUND_INTERVAL_MS`], so a write load that keeps roots apart costs one
//! small round now and then; a round that repaired something resets it. A link that dropped
//! entries while its peer was unreachable repairs as soon as roots differ. At most one round
//! runs per link, and at most one `RepairGroups` or `RepairBuckets` goes each way per
//! [`MIN_ROUND_INTERVAL_MS`].
//!
//! Finding a bucket's entries walks the replica (the map is ordered by key, not by bucket):
//! it happens only in rounds, which happen only when replicas differ.

use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::BytesMap;

use crate::digest::{BUCKETS, BUCKETS_PER_GROUP, Digest, GROUPS};
use crate::peer::{BucketDigest, Fingerprint, PeerMsg, RepairEntriesRef};
use crate::snapshot::{entry_size, take_chunk};

/// How long two roots must differ before a round starts.
pub const REPAIR_AFTER_MS: u64 = 2_000;
/// A bucket that changed more recently than this is left to a later round.
pub const QUIET_MS: u64 = 2_000;
/// The shortest wait between two rounds on one link.
pub const MIN_ROUND_INTERVAL_MS: u64 = 1_000;
/// The longest wait between two rounds on one link while roots differ.
pub const MAX_ROUND_INTERVAL_MS: u64 = 30_000;
/// A round that has not finished after this long is abandoned (a message lost with a
/// connection, a peer that stopped answering).
pub const ROUND_TIMEOUT_MS: u64 = 30_000;

/// The repair state of one live link.
#[derive(Debug)]
pub(crate) struct Repair {
    /// Whether this side starts rounds (it has the smaller node id).
    initiator: bool,
    /// The peer's latest root.
    peer_root: Option<u128>,
    /// Since when (monotonic ms) the roots have differed.
    mismatch_since: Option<u64>,
    next_round_at: u64,
    interval: u64,
    /// Start a round as soon as the roots differ (entries were dropped for this peer).
    force: bool,
    round: Round,
    /// Rounds this side started (their numbers).
    started: u64,
    /// Our entries of the current round's buckets, streaming.
    walk: Option<RepairWalk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Idle,
    /// Initiator: groups sent, waiting for the responder's buckets.
    AwaitBuckets {
        round: u64,
        since: u64,
    },
    /// Responder: buckets sent, waiting for the initiator's entries (which name the buckets).
    AwaitEntries {
        round: u64,
        since: u64,
    },
    /// Both: entries streaming both ways.
    Exchanging {
        round: u64,
        since: u64,
        got_last: bool,
        repaired: bool,
    },
}

impl Repair {
    /// Repair state for a new live link; `initiator` if our node id is the smaller.
    pub fn new(initiator: bool, peer_root: u128, force: bool) -> Self {
        Repair {
            initiator,
            peer_root: Some(peer_root),
            mismatch_since: None,
            next_round_at: 0,
            interval: MIN_ROUND_INTERVAL_MS,
            force,
            round: Round::Idle,
            started: 0,
            walk: None,
        }
    }

    /// The peer told its root.
    pub fn on_root(&mut self, root: Fingerprint) {
        self.peer_root = Some(root.into());
    }

    /// Compares roots at `now`.
    pub fn check(&mut self, root: u128, now: u64) {
        if self.peer_root == Some(root) {
            self.mismatch_since = None;
        } else {
            self.mismatch_since.get_or_insert(now);
        }
    }

    /// When this link next has repair work to do by the clock (monotonic ms), if ever.
    pub fn next_due(&self) -> Option<u64> {
        match self.round {
            Round::Idle => {
                let since = self.mismatch_since.filter(|_| self.initiator)?;
                let after = if self.force { since } else { since + REPAIR_AFTER_MS };
                Some(after.max(self.next_round_at))
            }
            Round::AwaitBuckets { since, .. }
            | Round::AwaitEntries { since, .. }
            | Round::Exchanging { since, .. } => Some(since + ROUND_TIMEOUT_MS),
        }
    }

    /// Starts a round or abandons a stale one, as the clock says; returns the message that
    /// starts a round (the caller counts it).
    pub fn on_time(&mut self, digest: &Digest, now: u64) -> Option<PeerMsg> {
        if self.next_due().is_none_or(|at| now < at) {
            return None;
        }
        if self.round != Round::Idle {
            // Timed out.
            self.finish(false, now);
            return None;
        }
        self.started += 1;
        let round = self.started;
        self.round = Round::AwaitBuckets { round, since: now };
        let groups = digest.groups().into_iter().map(Fingerprint::from).collect();
        Some(PeerMsg::RepairGroups { round, groups })
    }

    /// Responder: the initiator's group digests. Returns our digests of the quiet buckets of
    /// every group that differs.
    pub fn on_groups(&mut self, round: u64, groups: &[Fingerprint], digest: &Digest, now: u64) -> PeerMsg {
        let mut buckets = Vec::new();
        if groups.len() == GROUPS {
            for (g, theirs) in groups.iter().enumerate() {
                if u128::from(*theirs) == digest.group(g) {
                    continue;
                }
                for b in g * BUCKETS_PER_GROUP..(g + 1) * BUCKETS_PER_GROUP {
                    if digest.is_quiet(b, now, QUIET_MS) {
                        buckets.push(BucketDigest { index: b as u16, digest: digest.bucket(b).into() });
                    }
                }
            }
        }
        self.walk = None;
        self.round = Round::AwaitEntries { round, since: now };
        PeerMsg::RepairBuckets { round, buckets }
    }

    /// Initiator: the responder's bucket digests. Picks the buckets to exchange and starts
    /// streaming ours (an empty list still sends one last, empty chunk: it ends the round on
    /// the other side).
    pub fn on_buckets(&mut self, round: u64, buckets: &[BucketDigest], digest: &Digest, now: u64) {
        if !matches!(self.round, Round::AwaitBuckets { round: r, .. } if r == round) {
            return;
        }
        let mut differ: Vec<u16> = buckets
            .iter()
            .filter(|b| usize::from(b.index) < BUCKETS)
            .filter(|b| u128::from(b.digest) != digest.bucket(usize::from(b.index)))
            .filter(|b| digest.is_quiet(usize::from(b.index), now, QUIET_MS))
            .map(|b| b.index)
            .collect();
        differ.sort_unstable();
        differ.dedup();
        let repaired = !differ.is_empty();
        self.walk = Some(RepairWalk::new(round, differ));
        self.round = Round::Exchanging { round, since: now, got_last: false, repaired };
    }

    /// Entries of round `round` arrived (the caller merges them); `last` if it was the
    /// sender's last chunk.
    pub fn on_entries(&mut self, round: u64, buckets: &[u16], last: bool, now: u64) {
        match self.round {
            Round::AwaitEntries { round: r, .. } if r == round => {
                let mut list: Vec<u16> =
                    buckets.iter().copied().filter(|&b| usize::from(b) < BUCKETS).collect();
                list.sort_unstable();
                list.dedup();
                let repaired = !list.is_empty();
                self.walk = Some(RepairWalk::new(round, list));
                self.round = Round::Exchanging { round, since: now, got_last: last, repaired };
            }
            Round::Exchanging { round: r, since, repaired, .. } if r == round && last => {
                self.round = Round::Exchanging { round, since, got_last: true, repaired };
            }
            _ => {}
        }
        self.maybe_done(now);
    }

    /// Whether our entries for the current round are still streaming.
    pub fn wants_bulk(&self) -> bool {
        self.walk.as_ref().is_some_and(|w| !w.done)
    }

    /// Hands the next chunk of our entries to `sink`; returns how many entries it held.
    pub fn next_chunk<E>(
        &mut self,
        replica: &BytesMap,
        digest: &Digest,
        max_bytes: usize,
        now: u64,
        sink: impl FnOnce(RepairEntriesRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let Some(walk) = self.walk.as_mut().filter(|w| !w.done) else {
            return Ok(0);
        };
        let n = walk.next_chunk(replica, digest, max_bytes, sink)?;
        self.maybe_done(now);
        Ok(n)
    }

    fn maybe_done(&mut self, now: u64) {
        if let Round::Exchanging { got_last: true, repaired, .. } = self.round
            && self.walk.as_ref().is_none_or(|w| w.done)
        {
            self.finish(repaired, now);
        }
    }

    /// Ends the round: a round that repaired something lets the next come soon; one that found
    /// only buckets still changing (or timed out) waits twice as long as the last.
    fn finish(&mut self, repaired: bool, now: u64) {
        self.round = Round::Idle;
        self.walk = None;
        self.interval = if repaired {
            self.force = false;
            MIN_ROUND_INTERVAL_MS
        } else {
            (self.interval * 2).min(MAX_ROUND_INTERVAL_MS)
        };
        self.next_round_at = now + self.interval;
    }
}

/// A walk over the replica that yields, chunk by chunk, the entries filed in a set of
/// buckets. Like a snapshot walk it borrows the live replica between chunks: an entry changed
/// behind the walk goes to the peer as a delta anyway.
#[derive(Debug)]
struct RepairWalk {
    round: u64,
    buckets: Vec<u16>,
    member: Box<[u64; BUCKETS / 64]>,
    after: Option<Bytes>,
    done: bool,
}

impl RepairWalk {
    fn new(round: u64, buckets: Vec<u16>) -> Self {
        let mut member = Box::new([0u64; BUCKETS / 64]);
        for &b in &buckets {
            member[usize::from(b) / 64] |= 1 << (b % 64);
        }
        RepairWalk { round, buckets, member, after: None, done: false }
    }

    fn contains(&self, bucket: usize) -> bool {
        self.member[bucket / 64] & (1 << (bucket % 64)) != 0
    }

    fn next_chunk<E>(
        &mut self,
        replica: &BytesMap,
        digest: &Digest,
        max_bytes: usize,
        sink: impl FnOnce(RepairEntriesRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let start = match &self.after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let (page, last) = if self.buckets.is_empty() {
            (Vec::new(), true)
        } else {
            let mut range = replica
                .range::<Bytes, _>((start, Bound::Unbounded))
                .filter(|(k, _)| self.contains(digest.bucket_of(k)))
                .peekable();
            let page = take_chunk(&mut range, max_bytes, |(k, e)| entry_size(k, e));
            let last = range.peek().is_none();
            (page, last)
        };
        sink(RepairEntriesRef { round: self.round, buckets: &self.buckets, entries: &page, last })?;
        if let Some((k, _)) = page.last() {
            self.after = Some((*k).clone());
        }
        self.done = last;
        Ok(page.len())
    }
}
