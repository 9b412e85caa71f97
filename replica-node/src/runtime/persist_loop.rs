//! The persistence actor's driver: one thread that appends every write the node learns to the
//! log of its data directory ([`replica_persist::DataDir`]), group-commits it, and starts
//! compactions on a helper thread.
//!
//! It receives what a local peer receives: every query actor's client writes and the gateway's
//! fan-out of remote writes. Query actors do not send it their paced deltas: each sends, at
//! the end of every round of its loop, the writes of that round ([`Replica::take_durable`],
//! already encoded), because the pacer may hold a delta for up to 125 ms.
//!
//! # Why an acknowledged write survives a `kill -9` 100 ms later
//!
//! A write is acknowledged in the round of its actor's loop that executed it, and sent here at
//! the end of that round (a round handles what one poll returned: well under a millisecond,
//! and an actor that takes [`DURABLE_BATCH`] writes in one round hands them on before the round
//! ends). This thread takes its mail at least every [`TICK`] while writes keep coming (at once
//! when they start again after a pause) and in the same round hands it to the OS with `write`
//! ([`DataDir::write_out`]): from then on a killed process cannot lose it, only a power loss
//! can. `fsync` runs on a thread of its own (`log-sync`), so however slow a sync is, it never
//! holds back the `write` of what arrives meanwhile. So a `kill -9` loses at most the writes of
//! the last round and of the last few milliseconds, far inside the 100 ms of the contract.
//!
//! Against a power loss: [`COMMIT_DELAY_MS`] after the first byte not yet synced, a sync of
//! everything written is started, and the next one as soon as it returns if more waits (a few
//! ms on this project's disks): every write is on disk within about 25 ms + two syncs of being
//! acknowledged, and a sync starts at least every 25 ms while anything waits for one.
//!
//! # When the disk refuses
//!
//! A full, over-quota or read-only disk makes the node refuse client writes with `-MISCONF`
//! (see [`NodeStats::misconf`]) from the first failed `write` or sync, i.e. within the same
//! window: writes acknowledged before that stay in memory here and are written first when the
//! disk works again (retried every [`RETRY_MS`]); then writes are accepted again. Any other
//! error (an IO error of the device) ends this thread with an error, which stops the node
//! (fail fast): the data directory recovers what was synced, and peers refill the rest.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use replica_persist::{CompactError, DataDir, LogError, SnapshotInfo, SyncDone, SyncRequest};

#[cfg(doc)]
use super::query_loop::DURABLE_BATCH;
#[cfg(doc)]
use replica_core::Replica;

use super::mailbox::{Empty, Mailbox, Wake};
use super::{ActorMsg, Clock};
use crate::stats::NodeStats;

/// How long after the first unsynced byte the log is synced. Small enough that a write is
/// durable well within the contract's 100 ms; large enough to group the writes of thousands
/// of clients into one sync.
pub const COMMIT_DELAY_MS: u64 = 25;

/// How often a refusing disk is tried again.
pub const RETRY_MS: u64 = 1_000;

/// While writes keep coming, the thread sleeps this long between rounds instead of being woken
/// for each message: the actors then send without a wake-up (a system call each), and every
/// round takes what a few milliseconds brought.
const TICK: Duration = Duration::from_millis(2);

/// At most this many bytes are taken from the mailboxes before they are written out: under a
/// load the actors produce faster than one round here takes, the mailboxes are never empty,
/// and draining them whole would hold every write back from the OS until the load stops.
const MAX_DRAIN: usize = 4 << 20;

/// While the disk refuses, remote writes (which nobody can refuse) are kept for it only up to
/// this many bytes; beyond, they are dropped from the log (counted and logged), and repair
/// brings them back after a restart.
const MAX_BACKLOG: usize = 256 << 20;

/// Mail the persistence actor accepts from the query actors and the node.
#[derive(Debug)]
pub(crate) enum PersistMsg {
    /// An encoded batch of client writes (a `replica_persist::codec` entries payload).
    Batch(Vec<u8>),
    /// Sync everything received so far, then answer (the node's shutdown).
    Flush(Sender<Result<(), String>>),
}

/// Wakes the persistence thread: it sleeps on a channel with a timeout.
#[derive(Debug)]
pub(crate) struct Doorbell(pub Sender<()>);

impl Wake for Doorbell {
    fn wake(&self) {
        // Full: a ring is already pending, which is all a ring says.
        let _ = self.0.try_send(());
    }
}

/// Everything the persistence thread starts with.
#[derive(Debug)]
pub(crate) struct PersistStart {
    pub dir: DataDir,
    pub writes: Mailbox<PersistMsg>,
    pub fanout: Mailbox<ActorMsg>,
    pub doorbell: Receiver<()>,
    pub ring: Sender<()>,
    pub clock: Clock,
    pub stats: Arc<NodeStats>,
}

struct Persist {
    dir: DataDir,
    stats: Arc<NodeStats>,
    /// Since when (monotonic ms) something appended waits for a sync.
    unsynced_since: Option<u64>,
    /// While the disk refuses: when to try again.
    retry_at: Option<u64>,
    /// The running compaction's outcome, when it ends.
    compaction: Option<Receiver<Result<SnapshotInfo, CompactError>>>,
    ring: Sender<()>,
    dropped_remote: u64,
    /// To the sync thread, and its answers.
    syncs: Sender<SyncRequest>,
    synced: Receiver<SyncDone>,
    /// Since when (monotonic ms) a sync is out, if one is.
    sync_out: Option<u64>,
}

/// Runs the persistence actor until both its mailboxes are closed (every actor and the
/// gateway have stopped) and everything received is synced. An error is unrecoverable.
pub(crate) fn run(start: PersistStart) -> Result<(), String> {
    let PersistStart { dir, writes, fanout, doorbell, ring, clock, stats } = start;
    stats.persist_enabled.store(true, Ordering::Relaxed);
    // Syncs run on their own thread, so that a slow `fsync` never holds back the `write` of
    // what arrives meanwhile (which is what a killed process must not lose).
    let (syncs, requests) = crossbeam_channel::unbounded::<SyncRequest>();
    let (answers, synced) = crossbeam_channel::unbounded();
    let sync_ring = ring.clone();
    std::thread::Builder::new()
        .name("log-sync".into())
        .spawn(move || {
            for request in requests {
                if answers.send(request.run()).is_err() {
                    return;
                }
                let _ = sync_ring.try_send(());
            }
        })
        .map_err(|e| format!("cannot start the log's sync thread: {e}"))?;
    let mut p = Persist {
        dir,
        stats,
        unsynced_since: None,
        retry_at: None,
        compaction: None,
        ring,
        dropped_remote: 0,
        syncs,
        synced,
        sync_out: None,
    };
    p.stats.persist_last_fsync_mono_ms.store(clock.now().mono_ms, Ordering::Relaxed);
    p.publish();
    // Whether mail was left in the mailboxes last round (go on without waiting), and whether
    // the last round found any (sleep a tick rather than wait to be woken).
    let mut more = false;
    let mut busy = false;
    loop {
        let now = clock.now().mono_ms;
        // While a sync is out, its answer rings.
        let sync_due = p.unsynced_since.filter(|_| p.sync_out.is_none()).map(|t| t + COMMIT_DELAY_MS);
        let due = [sync_due, p.retry_at].into_iter().flatten().min();
        // A closed mailbox rings nothing: the node rings when it is done with us, and the
        // timeout is a safety net.
        let wait = due.map_or(Duration::from_secs(1), |at| Duration::from_millis(at.saturating_sub(now)));
        if busy && !more {
            std::thread::sleep(TICK.min(wait));
        } else if !more {
            // Idle: ask to be woken by the next message, unless one came in meanwhile.
            writes.begin_drain();
            fanout.begin_drain();
            if writes.is_empty() && fanout.is_empty() {
                let _ = doorbell.recv_timeout(wait);
            }
        }
        let mut flushes = Vec::new();
        let start = p.dir.unsynced();
        let mut writes_closed = false;
        let mut fanout_closed = false;
        more = false;
        busy = false;
        // Alternate between the mailboxes so neither starves the other, until both are empty
        // or MAX_DRAIN bytes were taken.
        while !(writes_closed && fanout_closed) {
            if p.dir.unsynced().saturating_sub(start) > MAX_DRAIN {
                more = true;
                break;
            }
            let mut got = false;
            match writes.try_recv() {
                Ok(PersistMsg::Batch(payload)) => {
                    p.dir.append_payload(&payload);
                    got = true;
                }
                Ok(PersistMsg::Flush(reply)) => {
                    flushes.push(reply);
                    got = true;
                }
                Err(why) => writes_closed = why == Empty::Closed,
            }
            match fanout.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    got = true;
                    if p.retry_at.is_some() && p.dir.unsynced() > MAX_BACKLOG {
                        p.drop_remote(batch.delta.entry_count());
                    } else {
                        p.dir.push_map(&batch.delta);
                        p.dir.end_batch();
                    }
                }
                // Collected tombstones stay in the log until compaction drops what is
                // superseded; after a restart they are collected again.
                Ok(ActorMsg::Collect(_)) => got = true,
                Ok(ActorMsg::KillClient(_)) => {}
                Err(why) => fanout_closed = why == Empty::Closed,
            }
            if !got {
                break;
            }
            busy = true;
        }
        let closed = writes_closed && fanout_closed;
        let now = clock.now().mono_ms;
        if p.dir.unsynced() > 0 {
            p.unsynced_since.get_or_insert(now);
        }
        if p.retry_at.is_none() {
            match p.dir.write_out() {
                Ok(()) => {}
                Err(e) => p.failed(e, now)?,
            }
        }
        // A sync that came back.
        while let Ok(done) = p.synced.try_recv() {
            p.sync_done(done, now)?;
        }
        let sync_due = p.unsynced_since.is_some_and(|t| now >= t + COMMIT_DELAY_MS);
        let retry_due = p.retry_at.is_some_and(|t| now >= t);
        if retry_due
            || !flushes.is_empty()
            || (closed && !more)
            || (p.retry_at.is_none() && p.dir.rotation_due())
        {
            // Everything, synchronously: a retry rewrites what failed, a flush or the end must
            // answer only once all is durable, a full segment is sealed.
            p.wait_sync(now)?;
            p.commit(now)?;
        } else if sync_due && p.sync_out.is_none() && p.retry_at.is_none() {
            match p.dir.sync_request() {
                Some(request) => {
                    p.sync_out = Some(now);
                    if p.syncs.send(request).is_err() {
                        return Err("the log's sync thread died".into());
                    }
                }
                // Nothing written out to sync (or the file handle could not be cloned).
                None => p.commit(now)?,
            }
        }
        let flushed = if p.retry_at.is_none() { Ok(()) } else { Err(p.stats.misconf().unwrap_or_default()) };
        for reply in flushes {
            let _ = reply.send(flushed.clone());
        }
        p.poll_compaction();
        p.publish();
        if closed && !more {
            if let Some(done) = p.compaction.take() {
                // Let it finish: a compaction cut short leaves only a temporary file behind,
                // but finishing it saves the next start the work.
                if let Ok(result) = done.recv() {
                    p.dir.compaction_done(&result);
                }
            }
            return match p.retry_at {
                None => Ok(()),
                Some(_) => {
                    tracing::error!(
                        "stopping with writes the disk refused: they are lost from this server's disk"
                    );
                    Ok(())
                }
            };
        }
    }
}

impl Persist {
    /// Takes the answer of a sync that is out.
    fn sync_done(&mut self, done: SyncDone, now: u64) -> Result<(), String> {
        let started = self.sync_out.take().unwrap_or(now);
        match self.dir.sync_done(done) {
            Ok(()) => {
                self.stats.persist_last_fsync_mono_ms.store(now, Ordering::Relaxed);
                // What was written after the sync started waits since then at most.
                self.unsynced_since = (self.dir.unsynced() > 0).then_some(started);
                Ok(())
            }
            Err(e) => self.failed(e, now),
        }
    }

    /// Waits for the sync that is out, if one is.
    fn wait_sync(&mut self, now: u64) -> Result<(), String> {
        if self.sync_out.is_some() {
            let done = self.synced.recv().map_err(|_| "the log's sync thread died".to_string())?;
            self.sync_done(done, now)?;
        }
        Ok(())
    }

    fn commit(&mut self, now: u64) -> Result<(), String> {
        match self.dir.commit() {
            Ok(()) => {
                self.unsynced_since = None;
                self.stats.persist_last_fsync_mono_ms.store(now, Ordering::Relaxed);
                if self.retry_at.take().is_some() {
                    self.stats.persist_refusing.store(false, Ordering::Release);
                    tracing::warn!(dir = %self.dir.path().display(), "the log can be written again: accepting writes");
                }
                Ok(())
            }
            Err(e) => self.failed(e, now),
        }
    }

    /// A write or sync failed: refuse client writes while the disk refuses, or give up.
    fn failed(&mut self, e: LogError, now: u64) -> Result<(), String> {
        if !e.is_refusal() {
            return Err(format!("the log in {} cannot be written: {e}", self.dir.path().display()));
        }
        if self.retry_at.is_none() {
            let reason = format!(
                "Errors writing to the log in {}: {e}. Writes are refused until it can be written",
                self.dir.path().display()
            );
            tracing::error!("{reason}; reads go on");
            if let Ok(mut r) = self.stats.persist_refusal.lock() {
                *r = reason;
            }
            self.stats.persist_refusing.store(true, Ordering::Release);
        }
        self.retry_at = Some(now + RETRY_MS);
        Ok(())
    }

    fn drop_remote(&mut self, entries: usize) {
        if self.dropped_remote == 0 {
            tracing::warn!(
                "the disk still refuses the log: remote writes are no longer kept for it (repair restores them)"
            );
        }
        self.dropped_remote += entries as u64;
    }

    /// Takes the outcome of a finished compaction; starts one if one is due.
    fn poll_compaction(&mut self) {
        if let Some(rx) = &self.compaction {
            match rx.try_recv() {
                Ok(result) => {
                    if let Err(e) = &result {
                        tracing::error!(dir = %self.dir.path().display(), "compaction failed, the log keeps growing: {e}");
                    }
                    self.dir.compaction_done(&result);
                    self.compaction = None;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    tracing::error!("the compaction thread died");
                    self.dir.compaction_done(&Err(CompactError::Io {
                        what: "compaction thread".into(),
                        source: std::io::Error::other("died"),
                    }));
                    self.compaction = None;
                }
            }
        }
        if self.retry_at.is_some() {
            return;
        }
        if let Some(job) = self.dir.compaction() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let ring = self.ring.clone();
            let spawned = std::thread::Builder::new().name("compaction".into()).spawn(move || {
                let _ = tx.send(job.run());
                let _ = ring.try_send(());
            });
            match spawned {
                Ok(_) => self.compaction = Some(rx),
                Err(e) => {
                    tracing::warn!("cannot start a compaction thread: {e}");
                    self.dir.compaction_done(&Err(CompactError::Io { what: "spawning".into(), source: e }));
                }
            }
        }
    }

    fn publish(&self) {
        self.stats.persist_log_bytes.store(self.dir.log_bytes(), Ordering::Relaxed);
        self.stats.persist_snapshots_written.store(self.dir.snapshots_written(), Ordering::Relaxed);
    }
}
