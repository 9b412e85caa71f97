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
//!    looked at again in a later round) and sends a 64-bit fingerprint of each of its entries
//!    in them (`RepairSummary`);
//! 4. the responder sends its entries in those buckets whose fingerprint the initiator lacks
//!    (`RepairEntries`) and asks for the entries whose fingerprints it lacks itself
//!    (`RepairWant`);
//! 5. the initiator sends those (`RepairEntries`).
//!
//! So only entries that differ travel, whatever the size of their buckets; summaries, wants and
//! entries go in bounded chunks on the low-priority stream. The round ends when each side has
//! sent and received its last chunk. A round that repaired nothing (every difference was still
//! changing) doubles the wait before the next, up to [`MAX_ROUND_INTERVAL_MS`], so a write load
//! that keeps roots apart costs one small round now and then; a round that repaired something
//! resets it. A link that dropped entries while its peer was unreachable repairs as soon as
//! roots differ. At most one round runs per link, and at most one `RepairGroups` or
//! `RepairBuckets` goes each way per [`MIN_ROUND_INTERVAL_MS`].
//!
//! Finding a bucket's entries walks the replica (the map is ordered by key, not by bucket):
//! it happens only in rounds, which happen only when replicas differ.

use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};

use crate::digest::{BUCKETS, BUCKETS_PER_GROUP, Digest, GROUPS};
use crate::peer::{BucketDigest, BulkRef, Fingerprint, PeerMsg, RepairEntriesRef};
use crate::snapshot::entry_size;

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
/// Fingerprints per summary or want chunk (8 bytes each).
const FINGERPRINTS_PER_CHUNK: usize = 64 * 1024;
/// The most fingerprints a round takes from a peer (128 MiB of them): a summary or want list
/// beyond it abandons the round, so no peer can make a gateway hold without bound.
const MAX_FINGERPRINTS: usize = 16 << 20;

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
    /// Rounds this side started (their numbers).
    started: u64,
    round: Option<Round>,
}

/// A round under way, on either side.
#[derive(Debug)]
struct Round {
    id: u64,
    since: u64,
    stage: Stage,
    /// The buckets exchanged (empty until known).
    buckets: Buckets,
    /// Our outgoing fingerprints (initiator) or wants (responder), and where they stand.
    fingerprints_out: Option<Walk>,
    wants_out: Vec<u64>,
    wants_sent: Option<usize>,
    /// Fingerprints received: the initiator's summary (responder) or the responder's wants
    /// (initiator), sorted once complete.
    fingerprints_in: Vec<u64>,
    /// Our entries being sent, once we know which.
    entries_out: Option<Walk>,
    /// Whether the peer's last entries chunk arrived.
    got_last_entries: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Initiator: groups sent, waiting for the responder's buckets.
    AwaitBuckets,
    /// Initiator: summary going out, waiting for the responder's wants and entries.
    Summarising,
    /// Responder: buckets sent, summary coming in.
    AwaitSummary,
    /// Responder: wants and entries going out, waiting for the initiator's entries.
    Answering,
}

/// A set of buckets: the list (sent on the wire) and a bit per bucket (for lookups).
#[derive(Debug, Default)]
struct Buckets {
    list: Vec<u16>,
    member: Vec<u64>,
}

impl Buckets {
    fn new(mut list: Vec<u16>) -> Self {
        list.retain(|&b| usize::from(b) < BUCKETS);
        list.sort_unstable();
        list.dedup();
        let mut member = vec![0u64; BUCKETS / 64];
        for &b in &list {
            member[usize::from(b) / 64] |= 1 << (b % 64);
        }
        Buckets { list, member }
    }

    fn contains(&self, bucket: usize) -> bool {
        self.member.get(bucket / 64).is_some_and(|w| w & (1 << (bucket % 64)) != 0)
    }
}

/// A walk over the replica in key order, chunk by chunk, borrowing the live replica between
/// chunks (an entry changed behind the walk goes to the peer as a delta anyway).
#[derive(Debug, Default)]
struct Walk {
    after: Option<Bytes>,
    done: bool,
}

impl Walk {
    /// The next entries after the walk's position that `keep` accepts, up to `max` of them and
    /// about `max_bytes` of keys and values (at least one), and notes whether the walk is over.
    fn next<'a>(
        &mut self,
        replica: &'a BytesMap,
        max: usize,
        max_bytes: usize,
        mut keep: impl FnMut(&Bytes, &Entry<Bytes>) -> bool,
    ) -> Vec<(&'a Bytes, &'a Entry<Bytes>)> {
        let start = match &self.after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut range =
            replica.range::<Bytes, _>((start, Bound::Unbounded)).filter(|(k, e)| keep(k, e)).peekable();
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < max
            && let Some(item) =
                range.next_if(|(k, e)| page.is_empty() || bytes + entry_size(k, e) <= max_bytes)
        {
            bytes += entry_size(item.0, item.1);
            page.push(item);
        }
        self.done = range.peek().is_none();
        if let Some((k, _)) = page.last() {
            self.after = Some((*k).clone());
        }
        page
    }
}

/// The fingerprint of an entry in repair: 64 bits of its digest hash.
fn fingerprint(digest: &Digest, key: &[u8], entry: &Entry<Bytes>) -> u64 {
    digest.entry_hash(key, entry) as u64
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
            started: 0,
            round: None,
        }
    }

    /// The peer told its root.
    pub fn on_root(&mut self, root: Fingerprint) {
        self.peer_root = Some(root.into());
    }

    /// Compares roots at `now`; returns whether they agree (the peer held, when it sent its
    /// root, exactly what we hold now).
    pub fn check(&mut self, root: u128, now: u64) -> bool {
        if self.peer_root == Some(root) {
            self.mismatch_since = None;
            true
        } else {
            self.mismatch_since.get_or_insert(now);
            false
        }
    }

    /// When this link next has repair work to do by the clock (monotonic ms), if ever.
    pub fn next_due(&self) -> Option<u64> {
        match &self.round {
            None => {
                let since = self.mismatch_since.filter(|_| self.initiator)?;
                let after = if self.force { since } else { since + REPAIR_AFTER_MS };
                Some(after.max(self.next_round_at))
            }
            Some(r) => Some(r.since + ROUND_TIMEOUT_MS),
        }
    }

    /// Starts a round or abandons a stale one, as the clock says; returns the message that
    /// starts a round (the caller counts it).
    pub fn on_time(&mut self, digest: &Digest, now: u64) -> Option<PeerMsg> {
        if self.next_due().is_none_or(|at| now < at) {
            return None;
        }
        if self.round.is_some() {
            // Timed out.
            self.finish(false, now);
            return None;
        }
        self.started += 1;
        let id = self.started;
        self.round = Some(Round::new(id, Stage::AwaitBuckets, now));
        let groups = digest.groups().into_iter().map(Fingerprint::from).collect();
        Some(PeerMsg::RepairGroups { round: id, groups })
    }

    /// Responder: the initiator's group digests. Returns our digests of the quiet buckets of
    /// every group that differs, and which groups agree.
    pub fn on_groups(&mut self, round: u64, groups: &[Fingerprint], digest: &Digest, now: u64) -> PeerMsg {
        let mut buckets = Vec::new();
        let mut equal_groups = 0u64;
        if groups.len() == GROUPS {
            for (g, theirs) in groups.iter().enumerate() {
                if u128::from(*theirs) == digest.group(g) {
                    equal_groups |= 1 << g;
                    continue;
                }
                for b in g * BUCKETS_PER_GROUP..(g + 1) * BUCKETS_PER_GROUP {
                    if digest.is_quiet(b, now, QUIET_MS) {
                        buckets.push(BucketDigest { index: b as u16, digest: digest.bucket(b).into() });
                    }
                }
            }
        }
        self.round = Some(Round::new(round, Stage::AwaitSummary, now));
        PeerMsg::RepairBuckets { round, equal_groups, buckets }
    }

    /// Initiator: the responder's bucket digests. Picks the buckets that differ and are quiet on
    /// both sides and starts sending the summary of ours; with none, the round is over. Returns
    /// the buckets found equal on both sides (the responder held what we hold now), and when
    /// the round started: the groups the responder found equal agreed with what we held then.
    pub fn on_buckets(
        &mut self,
        round: u64,
        buckets: &[BucketDigest],
        digest: &Digest,
        now: u64,
    ) -> (Vec<u16>, Option<u64>) {
        let Some(r) = self.round.as_mut().filter(|r| r.id == round && r.stage == Stage::AwaitBuckets) else {
            return (Vec::new(), None);
        };
        let started = Some(r.since);
        let equal: Vec<u16> = buckets
            .iter()
            .filter(|b| {
                usize::from(b.index) < BUCKETS && u128::from(b.digest) == digest.bucket(usize::from(b.index))
            })
            .map(|b| b.index)
            .collect();
        let differ: Vec<u16> = buckets
            .iter()
            .filter(|b| usize::from(b.index) < BUCKETS)
            .filter(|b| u128::from(b.digest) != digest.bucket(usize::from(b.index)))
            .filter(|b| digest.is_quiet(usize::from(b.index), now, QUIET_MS))
            .map(|b| b.index)
            .collect();
        if differ.is_empty() {
            // Only buckets still changing (or nothing at all) differ: try again later.
            self.finish(false, now);
            return (equal, started);
        }
        r.buckets = Buckets::new(differ);
        r.stage = Stage::Summarising;
        r.fingerprints_out = Some(Walk::default());
        (equal, started)
    }

    /// Responder: a chunk of the initiator's summary. With the last one, works out which of our
    /// entries to send and which of its to ask for (one walk over the replica).
    #[allow(clippy::too_many_arguments)]
    pub fn on_summary<'g>(
        &mut self,
        round: u64,
        buckets: &[u16],
        fingerprints: &[u64],
        last: bool,
        replica: &BytesMap,
        digest: &Digest,
        ghosts: impl Iterator<Item = (&'g Bytes, Entry<Bytes>)>,
    ) -> Vec<(Bytes, Timestamp)> {
        let Some(r) = self.round.as_mut().filter(|r| r.id == round && r.stage == Stage::AwaitSummary) else {
            return Vec::new();
        };
        if r.buckets.list.is_empty() {
            r.buckets = Buckets::new(buckets.to_vec());
        }
        if r.fingerprints_in.len() + fingerprints.len() > MAX_FINGERPRINTS {
            self.round = None;
            return Vec::new();
        }
        r.fingerprints_in.extend_from_slice(fingerprints);
        if !last {
            return Vec::new();
        }
        r.fingerprints_in.sort_unstable();
        r.fingerprints_in.dedup();
        // Tombstones collected here lately count as held: asking for them back would undo
        // the collection.
        let ghosts: Vec<(&Bytes, Entry<Bytes>)> = ghosts.collect();
        let mut ours: Vec<u64> = replica
            .entries()
            .chain(ghosts.iter().map(|(k, e)| (*k, e)))
            .filter(|(k, _)| r.buckets.contains(digest.bucket_of(k)))
            .map(|(k, e)| fingerprint(digest, k, e))
            .collect();
        ours.sort_unstable();
        r.wants_out = r.fingerprints_in.iter().copied().filter(|f| ours.binary_search(f).is_err()).collect();
        r.wants_sent = Some(0);
        r.entries_out = Some(Walk::default());
        r.stage = Stage::Answering;
        // The initiator still holds tombstones collected here: it is told it may collect them.
        ghosts
            .into_iter()
            .filter(|(k, e)| {
                r.buckets.contains(digest.bucket_of(k))
                    && r.fingerprints_in.binary_search(&fingerprint(digest, k, e)).is_ok()
            })
            .map(|(k, e)| (k.clone(), e.ts))
            .collect()
    }

    /// Initiator: a chunk of the responder's wants. With the last one, starts sending the
    /// entries asked for.
    pub fn on_want(&mut self, round: u64, fingerprints: &[u64], last: bool) {
        let Some(r) = self.round.as_mut().filter(|r| r.id == round && r.stage == Stage::Summarising) else {
            return;
        };
        if r.fingerprints_in.len() + fingerprints.len() > MAX_FINGERPRINTS {
            self.round = None;
            return;
        }
        r.fingerprints_in.extend_from_slice(fingerprints);
        if last && r.entries_out.is_none() {
            r.fingerprints_in.sort_unstable();
            r.fingerprints_in.dedup();
            r.entries_out = Some(Walk::default());
        }
    }

    /// Entries of round `round` arrived (the caller merges them); `last` if it was the peer's
    /// last chunk.
    pub fn on_entries(&mut self, round: u64, last: bool, now: u64) {
        if let Some(r) = self.round.as_mut().filter(|r| r.id == round) {
            r.got_last_entries |= last;
        }
        self.maybe_done(now);
    }

    /// Whether there is something of ours to send for the current round.
    pub fn wants_bulk(&self) -> bool {
        self.round.as_ref().is_some_and(|r| {
            r.fingerprints_out.as_ref().is_some_and(|w| !w.done)
                || !r.all_wants_sent()
                || r.entries_out.as_ref().is_some_and(|w| !w.done)
        })
    }

    /// Hands our next chunk to `sink` (summary, then wants, then entries); returns how many
    /// entries it held.
    pub fn next_chunk<E>(
        &mut self,
        replica: &BytesMap,
        digest: &Digest,
        max_bytes: usize,
        now: u64,
        sink: impl FnOnce(BulkRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let Some(r) = self.round.as_mut() else { return Ok(0) };
        let id = r.id;
        let n = if let Some(walk) = r.fingerprints_out.as_mut().filter(|w| !w.done) {
            let buckets = &r.buckets;
            let page = walk.next(replica, FINGERPRINTS_PER_CHUNK, usize::MAX, |k, _| {
                buckets.contains(digest.bucket_of(k))
            });
            let fingerprints = page.iter().map(|(k, e)| fingerprint(digest, k, e)).collect();
            let msg = PeerMsg::RepairSummary {
                round: id,
                buckets: buckets.list.clone(),
                fingerprints,
                last: walk.done,
            };
            sink(BulkRef::Msg(&msg))?;
            0
        } else if let Some(sent) = r.wants_sent.filter(|_| !r.all_wants_sent()) {
            let end = (sent + FINGERPRINTS_PER_CHUNK).min(r.wants_out.len());
            let msg = PeerMsg::RepairWant {
                round: id,
                fingerprints: r.wants_out[sent..end].to_vec(),
                last: end == r.wants_out.len(),
            };
            sink(BulkRef::Msg(&msg))?;
            r.wants_sent = Some(end + usize::from(end == r.wants_out.len()));
            0
        } else if let Some(walk) = r.entries_out.as_mut().filter(|w| !w.done) {
            let (buckets, theirs, initiator) =
                (&r.buckets, &r.fingerprints_in, r.stage == Stage::Summarising);
            // The initiator sends what was asked for; the responder what the summary lacked.
            let page = walk.next(replica, usize::MAX, max_bytes, |k, e| {
                buckets.contains(digest.bucket_of(k))
                    && theirs.binary_search(&fingerprint(digest, k, e)).is_ok() == initiator
            });
            sink(BulkRef::Repair(RepairEntriesRef { round: id, entries: &page, last: walk.done }))?;
            page.len()
        } else {
            return Ok(0);
        };
        self.maybe_done(now);
        Ok(n)
    }

    fn maybe_done(&mut self, now: u64) {
        let done = self.round.as_ref().is_some_and(|r| {
            r.got_last_entries
                && r.entries_out.as_ref().is_some_and(|w| w.done)
                && r.fingerprints_out.as_ref().is_none_or(|w| w.done)
                && r.all_wants_sent()
        });
        if done {
            self.finish(true, now);
        }
    }

    /// Ends the round: a round that repaired something lets the next come soon; one that found
    /// only buckets still changing (or timed out) waits twice as long as the last.
    fn finish(&mut self, repaired: bool, now: u64) {
        self.round = None;
        self.interval = if repaired {
            self.force = false;
            MIN_ROUND_INTERVAL_MS
        } else {
            (self.interval * 2).min(MAX_ROUND_INTERVAL_MS)
        };
        self.next_round_at = now + self.interval;
    }
}

impl Round {
    fn new(id: u64, stage: Stage, now: u64) -> Self {
        Round {
            id,
            since: now,
            stage,
            buckets: Buckets::default(),
            fingerprints_out: None,
            wants_out: Vec::new(),
            wants_sent: None,
            fingerprints_in: Vec::new(),
            entries_out: None,
            got_last_entries: false,
        }
    }

    /// Whether every want chunk, the last included, has gone (an empty list still sends one).
    fn all_wants_sent(&self) -> bool {
        self.wants_sent.is_none_or(|n| n > self.wants_out.len())
    }
}
