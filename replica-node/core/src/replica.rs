//! The replica state machine of one query actor.
//!
//! Pure in the sans-IO sense: it owns a full [`BytesMap`] replica and its clock, takes time as
//! an argument ([`Now`]) and returns what to send; the per-core loop in `replica-node` does
//! the sockets, the mailboxes and the clock reads. That keeps the sync rules (pacing, no
//! re-forwarding, budgets) testable with virtual time. When a delta may go out is the
//! [`Pacer`]'s decision: it spends the budget of 10 messages per second per recipient, so an
//! isolated write and the first writes of a burst go out at once, and nothing waits longer than
//! [`crate::pacer::MAX_WAIT_MS`].

use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, DeltaBuffer, Entry, Hlc, MergeStats, Record, ReplicaId, Shared, Timestamp};

use crate::pacer::Pacer;
use crate::stats::SyncStats;

/// How far ahead of this node's clock a merged timestamp may pull the replica's clock by
/// default ([`Replica::with_max_clock_offset`]); the gateway refuses entries stamped further
/// ahead than that (design 4.9).
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// A write that lost: the key holds an entry stamped later than this replica's clock can
/// reach (a write from a server whose clock is ahead, by less than the bound). The write
/// changes nothing, so the client must be told rather than answered `+OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// The timestamp the write got.
    pub ts: Timestamp,
    /// The entry it lost to.
    pub newer: Timestamp,
}

/// A reading of the two clocks the state machine needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock milliseconds since the Unix epoch, for write timestamps.
    pub wall_ms: u64,
    /// Monotonic milliseconds since an arbitrary origin, for pacing.
    pub mono_ms: u64,
}

/// A delta on its way from one actor to others; immutable and shared by all recipients.
#[derive(Clone, Debug)]
pub struct SyncBatch {
    /// Index of the sending actor on its node.
    pub from: usize,
    /// The entries.
    pub delta: Arc<BytesMap>,
}

/// The state of one query actor: a full replica, its clock and what it owes its peers.
#[derive(Debug)]
pub struct Replica {
    index: usize,
    map: BytesMap,
    clock: Hlc,
    /// Writes accepted from this actor's clients since the last flush.
    pending: DeltaBuffer<Bytes, Bytes>,
    /// Every recipient gets every delta at the same instant, so one pacer (and one rate
    /// window) stands for each of them.
    pacer: Pacer,
    recipients: usize,
    stats: SyncStats,
    /// Merges whose newest timestamp was too far ahead for the clock to follow.
    future_timestamps_ignored: u64,
    /// How far ahead of the wall clock a merged timestamp may pull the clock.
    max_ahead_ms: u64,
    /// With persistence: every client write that changed the replica since the driver last
    /// took them, unpaced (see [`Replica::take_durable`]).
    durable: Vec<Shared<Record<Bytes, Bytes>>>,
    keep_durable: bool,
    /// Where the sweep for expired entries resumes: after this key (`None`: from the start).
    sweep_after: Option<Bytes>,
    /// Expired entries this replica turned into tombstones.
    expired: u64,
}

impl Replica {
    /// Actor `index` of its node, stamping writes as `replica` (unique in the cluster), with
    /// `recipients` sync destinations (the other local actors and the gateway).
    pub fn new(index: usize, replica: ReplicaId, recipients: usize) -> Self {
        Replica {
            index,
            map: BytesMap::new(),
            clock: Hlc::new(replica),
            pending: DeltaBuffer::new(),
            pacer: Pacer::default(),
            recipients,
            stats: SyncStats::default(),
            future_timestamps_ignored: 0,
            max_ahead_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
            durable: Vec::new(),
            keep_durable: false,
            sweep_after: None,
            expired: 0,
        }
    }

    /// The same replica, letting merged timestamps pull its clock at most `ms` ahead of the
    /// wall clock (the node's `--max-clock-offset`).
    pub fn with_max_clock_offset(mut self, ms: u64) -> Self {
        self.max_ahead_ms = ms;
        self
    }

    /// Starts from state recovered from disk: `map`, whose newest timestamp is `newest`. The
    /// clock moves past it (as far as the wall clock `now` plus the bound allows, as for any
    /// merged timestamp), so every write from now on wins over everything recovered, and
    /// nothing recovered is sent to anyone (every recipient recovers the same state).
    ///
    /// A restart with the wall clock set back (or after the previous run's clock was far
    /// ahead) thus does not stamp new writes in the future: a write to a key recovered with a
    /// timestamp beyond the bound is refused ([`Lost`]) until the clock reaches it, as when a
    /// peer had sent that entry.
    pub fn restore(&mut self, map: BytesMap, newest: Timestamp, now: Now) {
        self.map = map;
        let limit = now.wall_ms.saturating_add(self.max_ahead_ms);
        self.clock.observe(newest.min(Timestamp::new(limit, 0, 0)));
    }

    /// Keeps every client write that changes the replica for [`Replica::take_durable`] as well
    /// as for the paced sync: the persistence actor must not wait for the pacer.
    pub fn keep_durable(&mut self) {
        self.keep_durable = true;
    }

    /// How many writes [`Replica::take_durable`] would return.
    pub fn durable_len(&self) -> usize {
        self.durable.len()
    }

    /// The client writes that changed the replica since the last call, oldest first (none
    /// unless [`Replica::keep_durable`] was called). The driver hands them to the persistence
    /// actor at the end of every round, however the pacer holds the same writes back.
    pub fn take_durable(&mut self) -> std::vec::Drain<'_, Shared<Record<Bytes, Bytes>>> {
        self.durable.drain(..)
    }

    /// This actor's index on its node.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The replica.
    pub fn map(&self) -> &BytesMap {
        &self.map
    }

    /// What this actor sent and received in sync messages.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// A client write: `Some(value)` puts, `None` deletes. Returns the write's timestamp. The
    /// clock is past everything this replica has merged, so the write wins, except over an
    /// entry stamped further ahead of the wall clock than the clock may follow (see
    /// [`Replica::with_max_clock_offset`]): then nothing is applied or sent, and the write is
    /// [`Lost`].
    pub fn write(&mut self, key: Bytes, value: Option<Bytes>, now: Now) -> Result<Timestamp, Lost> {
        self.write_until(key, value, None, now)
    }

    /// A client write whose value expires at `deadline` (wall-clock ms since the Unix epoch;
    /// `None`: never). The deadline is part of the entry, so every replica agrees on it; it is
    /// ignored for a delete. Otherwise as [`Replica::write`].
    pub fn write_until(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        deadline: Option<u64>,
        now: Now,
    ) -> Result<Timestamp, Lost> {
        let ts = self.clock.now(now.wall_ms);
        let expires = deadline.filter(|_| value.is_some()).and_then(std::num::NonZeroU64::new);
        // One record, shared by this replica, the delta buffer, the durable queue and, through
        // the delta, every other actor's replica and the gateway's.
        let rec = Record::shared(key, Entry { ts, value, expires });
        if self.map.apply_record(Shared::clone(&rec)) {
            if self.keep_durable {
                self.durable.push(Shared::clone(&rec));
            }
            self.pending.record_shared(rec);
            Ok(ts)
        } else {
            let newer = self.map.get_entry(&rec.key[..]).map_or(ts, |e| e.ts);
            Err(Lost { ts, newer })
        }
    }

    /// A client delete; returns whether the key had a live value here before.
    pub fn delete(&mut self, key: Bytes, now: Now) -> Result<bool, Lost> {
        let existed = self.map.get_entry(&key[..]).is_some_and(|e| e.is_live_at(now.wall_ms));
        self.write(key, None, now)?;
        Ok(existed)
    }

    /// Merges a delta from a peer. Entries learned this way are not re-forwarded: their
    /// originator sends them to every recipient itself.
    pub fn on_sync(&mut self, batch: &SyncBatch, now: Now) -> MergeStats {
        let stats = self.map.merge(&batch.delta);
        self.observe(stats.newest, now);
        self.stats.received(&stats);
        stats
    }

    /// Looks at up to `budget` entries, resuming where the last call stopped (wrapping around
    /// at the end of the map), and turns those whose deadline has passed at `now` into
    /// tombstones of the same timestamp; returns how many. The tombstones go out with the next
    /// delta like writes (each wins over the entry it replaces wherever it arrives, so every
    /// replica converges whether it swept first or not), and the gateway collects them like
    /// any tombstone: an older write of the key can never come back. Costs nothing while no
    /// entry has a deadline.
    pub fn reclaim_expired(&mut self, now: Now, budget: usize) -> usize {
        if self.map.expiring() == 0 {
            self.sweep_after = None;
            return 0;
        }
        let start = match &self.sweep_after {
            Some(k) => std::ops::Bound::Excluded(&k[..]),
            None => std::ops::Bound::Unbounded,
        };
        let mut examined = 0;
        let mut last = None;
        let mut doomed = Vec::new();
        for (k, e) in self.map.range::<[u8], _>((start, std::ops::Bound::Unbounded)).take(budget) {
            examined += 1;
            last = Some(k);
            if e.is_expired_at(now.wall_ms) {
                doomed.push((k.clone(), e.expired()));
            }
        }
        // A short walk reached the end of the map: the next one starts over.
        self.sweep_after = if examined < budget { None } else { last.cloned() };
        let n = doomed.len();
        for (k, tomb) in doomed {
            if self.map.apply(k.clone(), tomb.clone()) {
                self.pending.record(k, tomb);
            }
        }
        self.expired += n as u64;
        n
    }

    /// Expired entries this replica has turned into tombstones.
    pub fn expired_reclaimed(&self) -> u64 {
        self.expired
    }

    /// Removes tombstones the gateway collected (each only if this replica still holds that very
    /// tombstone; a newer write of the key stays); returns how many.
    pub fn collect(&mut self, tombstones: &[(Bytes, Timestamp)]) -> usize {
        tombstones.iter().filter(|(k, ts)| self.map.remove_tombstone(&k[..], *ts)).count()
    }

    /// Moves the clock past `ts`, but never further than the bound ahead of the wall clock: an
    /// entry stamped by a clock far ahead must not drag every later write of ours ahead too.
    fn observe(&mut self, ts: Timestamp, now: Now) {
        let limit = now.wall_ms.saturating_add(self.max_ahead_ms);
        if ts.wall_ms <= limit {
            self.clock.observe(ts);
        } else {
            self.clock.observe(Timestamp::new(limit, 0, 0));
            self.future_timestamps_ignored += 1;
        }
    }

    /// How many merges brought a timestamp too far ahead for the clock to follow (the driver
    /// logs when this grows).
    pub fn future_timestamps_ignored(&self) -> u64 {
        self.future_timestamps_ignored
    }

    /// The delta to send to every recipient now, if there is one and pacing allows it.
    pub fn poll_sync(&mut self, now: Now) -> Option<SyncBatch> {
        if !self.pacer.allows(now.mono_ms) {
            return None;
        }
        self.poll_sync_final(now)
    }

    /// The pending delta regardless of pacing, if there is one: an actor's last message when it
    /// stops. Counted like any other send.
    pub fn poll_sync_final(&mut self, now: Now) -> Option<SyncBatch> {
        if self.pending.is_empty() {
            return None;
        }
        let delta = Arc::new(self.pending.flush());
        let recipients = self.recipients as u64;
        self.stats.sent(self.pacer.record(now.mono_ms), recipients, recipients * delta.entry_count() as u64);
        Some(SyncBatch { from: self.index, delta })
    }

    /// When [`Replica::poll_sync`] will next have something to send (monotonic ms), if ever:
    /// exactly the first instant the pacer allows a send, which may already have passed.
    pub fn next_sync_at(&self) -> Option<u64> {
        (!self.pending.is_empty()).then(|| self.pacer.next_at())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(ms: u64) -> Now {
        Now { wall_ms: 1_700_000_000_000 + ms, mono_ms: ms }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn an_isolated_write_and_the_start_of_a_burst_go_out_at_once_the_rest_is_batched() {
        use crate::pacer::{BURST, BURST_SPAN_MS};
        let mut r = Replica::new(0, 1, 2);
        r.write(b("a"), Some(b("1")), now(1_000)).unwrap();
        let first = r.poll_sync(now(1_000)).expect("isolated write is sent immediately");
        assert_eq!(first.delta.entry_count(), 1);
        // The next writes of a burst go out one by one, each at once, until the burst is spent.
        for i in 1..BURST as u64 {
            r.write(b(&format!("b{i}")), Some(b("v")), now(1_000 + i)).unwrap();
            assert!(r.next_sync_at().is_some_and(|at| at <= 1_000 + i), "the pacer still allows a send");
            assert_eq!(r.poll_sync(now(1_000 + i)).expect("within the burst").delta.entry_count(), 1);
        }
        for i in 0..50 {
            let t = 1_000 + BURST as u64 + i;
            r.write(b(&format!("k{i}")), Some(b("v")), now(t)).unwrap();
            assert!(r.poll_sync(now(t)).is_none(), "burst spent: paced");
        }
        assert_eq!(r.next_sync_at(), Some(1_000 + BURST_SPAN_MS), "exactly when the burst's span has passed");
        assert!(r.poll_sync(now(1_000 + BURST_SPAN_MS - 1)).is_none());
        let batch = r.poll_sync(now(1_000 + BURST_SPAN_MS)).expect("due then");
        assert_eq!(batch.delta.entry_count(), 50);
        assert!(r.poll_sync(now(5_000)).is_none(), "nothing pending");
        assert_eq!(r.next_sync_at(), None);
    }

    #[test]
    fn entries_learned_from_peers_are_not_reforwarded() {
        let mut a = Replica::new(0, 1, 1);
        let mut c = Replica::new(1, 2, 1);
        a.write(b("k"), Some(b("v")), now(10)).unwrap();
        let batch = a.poll_sync(now(10)).unwrap();
        let stats = c.on_sync(&batch, now(11));
        assert_eq!(stats.changed, 1);
        assert_eq!(c.map().get(&b"k"[..]), Some(&b("v")));
        assert!(c.poll_sync(now(500)).is_none());
    }

    #[test]
    fn a_write_after_a_merge_wins_even_with_a_clock_behind() {
        let mut ahead = Replica::new(0, 1, 1);
        let mut behind = Replica::new(1, 2, 1);
        ahead.write(b("k"), Some(b("future")), now(DEFAULT_MAX_CLOCK_OFFSET_MS)).unwrap();
        let batch = ahead.poll_sync(now(DEFAULT_MAX_CLOCK_OFFSET_MS)).unwrap();
        behind.on_sync(&batch, now(0));
        behind.write(b("k"), Some(b("later")), now(0)).expect("the clock followed the merge");
        let reply = behind.poll_sync(now(0)).unwrap();
        ahead.on_sync(&reply, now(DEFAULT_MAX_CLOCK_OFFSET_MS + 1));
        assert_eq!(ahead.map().get(&b"k"[..]), Some(&b("later")));
    }

    #[test]
    fn a_write_to_a_key_stamped_beyond_the_bound_is_lost_and_says_so() {
        let mut r = Replica::new(0, 1, 1).with_max_clock_offset(100);
        let mut ahead = BytesMap::new();
        ahead.put(b("k"), b("v"), Timestamp::new(now(0).wall_ms + 5_000, 0, 9));
        r.on_sync(&SyncBatch { from: 1, delta: Arc::new(ahead) }, now(0));
        let lost = r.write(b("k"), Some(b("mine")), now(1)).unwrap_err();
        assert_eq!(lost.newer.wall_ms, now(0).wall_ms + 5_000);
        assert_eq!(r.map().get(&b"k"[..]), Some(&b("v")), "nothing applied");
        assert!(r.poll_sync(now(2)).is_none(), "nothing sent");
        // The clock went as far as it may, no further.
        let ts = r.write(b("other"), Some(b("x")), now(2)).unwrap();
        assert_eq!(ts.wall_ms, now(0).wall_ms + 100);
        assert!(r.delete(b("k"), now(3)).is_err_and(|l| l.newer == lost.newer && l.ts > ts));
    }

    #[test]
    fn pair_rate_stays_within_budget_under_constant_load() {
        let mut r = Replica::new(0, 1, 3);
        let mut sent = Vec::new();
        for ms in (0..5_000).step_by(10) {
            r.write(b(&format!("k{ms}")), Some(b("v")), now(ms)).unwrap();
            if r.poll_sync(now(ms)).is_some() {
                sent.push(ms);
            }
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&u| u < t + 1_000).count();
            assert!(in_window <= 10, "{in_window} messages in the second after {t}");
        }
        assert_eq!(r.stats().max_pair_rate, 10);
        assert_eq!(r.stats().messages_sent, 3 * sent.len() as u64);
    }

    #[test]
    fn far_future_timestamps_do_not_drag_the_clock() {
        let mut r = Replica::new(0, 1, 1);
        let mut evil = BytesMap::new();
        evil.put(b("k"), b("v"), Timestamp::new(u64::MAX - 1, 0, 9));
        r.on_sync(&SyncBatch { from: 1, delta: Arc::new(evil) }, now(0));
        assert_eq!(r.map().get(&b"k"[..]), Some(&b("v")), "the entry is kept");
        let ts = r.write(b("other"), Some(b("x")), now(1)).unwrap();
        assert!(ts.wall_ms <= now(0).wall_ms + DEFAULT_MAX_CLOCK_OFFSET_MS, "our clock stayed sane: {ts}");
        assert_eq!(r.future_timestamps_ignored(), 1);
    }

    #[test]
    fn durable_writes_are_kept_unpaced_and_restored_state_is_not_sent() {
        use crate::pacer::BURST;
        let mut r = Replica::new(0, 1, 1);
        let mut recovered = BytesMap::new();
        let newest = Timestamp::new(now(300).wall_ms, 7, 9);
        recovered.put(b("old"), b("v"), newest);
        r.restore(recovered, newest, now(0));
        assert!(r.poll_sync(now(0)).is_none(), "recovered state is not sent");
        let ts = r.write(b("old"), Some(b("new")), now(0)).unwrap();
        assert!(ts > newest, "the clock is past what was recovered");
        assert_eq!(r.take_durable().count(), 0, "nothing kept unless asked");
        r.keep_durable();
        for i in 0..BURST as u64 + 5 {
            r.write(b(&format!("k{i}")), Some(b("v")), now(0)).unwrap();
            r.poll_sync(now(0));
        }
        assert!(r.poll_sync(now(0)).is_none(), "the pacer holds writes back");
        let durable: Vec<_> = r.take_durable().collect();
        assert_eq!(durable.len(), BURST + 5, "every write, unpaced");
        assert_eq!(r.take_durable().count(), 0);
    }

    #[test]
    fn a_restore_does_not_drag_the_clock_beyond_the_bound() {
        // The previous run's clock was 5 s ahead (or this one's was set back).
        let mut r = Replica::new(0, 1, 1);
        let mut recovered = BytesMap::new();
        let ahead = Timestamp::new(now(5_000).wall_ms, 0, 9);
        recovered.put(b("ahead"), b("v"), ahead);
        r.restore(recovered, ahead, now(0));
        let ts = r.write(b("other"), Some(b("v")), now(0)).unwrap();
        assert!(
            ts.wall_ms <= now(DEFAULT_MAX_CLOCK_OFFSET_MS).wall_ms,
            "new writes are not stamped ahead: {ts}"
        );
        let lost = r.write(b("ahead"), Some(b("new")), now(0)).unwrap_err();
        assert_eq!(lost.newer, ahead, "the write would lose to the recovered one: refused");
        assert!(r.write(b("ahead"), Some(b("new")), now(5_001)).unwrap() > ahead, "once the clock is there");
    }

    #[test]
    fn the_final_poll_ignores_pacing() {
        use crate::pacer::BURST;
        let mut r = Replica::new(0, 1, 1);
        for i in 0..BURST as u64 {
            r.write(b(&format!("b{i}")), Some(b("v")), now(0)).unwrap();
            assert!(r.poll_sync(now(0)).is_some());
        }
        r.write(b("last"), Some(b("v")), now(0)).unwrap();
        assert!(r.poll_sync(now(0)).is_none(), "burst spent: paced");
        let last = r.poll_sync_final(now(0)).expect("sent regardless of pacing");
        assert_eq!(last.delta.entry_count(), 1);
        assert!(r.poll_sync_final(now(0)).is_none(), "nothing left");
        assert_eq!(r.stats().messages_sent, BURST as u64 + 1);
    }
}
