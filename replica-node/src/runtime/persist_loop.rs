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
//! the end of that round (a round handles what one poll returned: well under a millisecond
//! unless a client floods its actor). This thread wakes on the message and, in the same
//! wake-up, hands it to the OS with `write` ([`DataDir::write_out`]): from then on a killed
//! process cannot lose it, only a power loss can. So a `kill -9` loses at most the writes of
//! the last round and of the wake-up in progress, a few milliseconds' worth, far inside the
//! 100 ms of the contract. Against a power loss, [`COMMIT_DELAY_MS`] after the first byte not
//! yet synced the log is synced (`fdatasync`, a few ms on this project's disks): every write
//! is on disk within about 25 ms + one sync + one round of being acknowledged, and a sync
//! happens at least every 50 ms while anything is waiting for one.
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
use replica_persist::{CompactError, DataDir, LogError, SnapshotInfo};

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
}

/// Runs the persistence actor until both its mailboxes are closed (every actor and the
/// gateway have stopped) and everything received is synced. An error is unrecoverable.
pub(crate) fn run(start: PersistStart) -> Result<(), String> {
    let PersistStart { dir, writes, fanout, doorbell, ring, clock, stats } = start;
    stats.persist_enabled.store(true, Ordering::Relaxed);
    let mut p = Persist {
        dir,
        stats,
        unsynced_since: None,
        retry_at: None,
        compaction: None,
        ring,
        dropped_remote: 0,
    };
    p.stats.persist_last_fsync_mono_ms.store(clock.now().mono_ms, Ordering::Relaxed);
    p.publish();
    loop {
        let now = clock.now().mono_ms;
        let due = [p.unsynced_since.map(|t| t + COMMIT_DELAY_MS), p.retry_at].into_iter().flatten().min();
        // A closed mailbox rings nothing: the node rings when it is done with us, and the
        // timeout is a safety net.
        let wait = due.map_or(Duration::from_secs(1), |at| Duration::from_millis(at.saturating_sub(now)));
        let _ = doorbell.recv_timeout(wait);

        writes.begin_drain();
        fanout.begin_drain();
        let mut flushes = Vec::new();
        let writes_closed = loop {
            match writes.try_recv() {
                Ok(PersistMsg::Batch(payload)) => p.dir.append_payload(&payload),
                Ok(PersistMsg::Flush(reply)) => flushes.push(reply),
                Err(why) => break why == Empty::Closed,
            }
        };
        let fanout_closed = loop {
            match fanout.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    if p.retry_at.is_some() && p.dir.unsynced() > MAX_BACKLOG {
                        p.drop_remote(batch.delta.entry_count());
                    } else {
                        p.dir.push_map(&batch.delta);
                        p.dir.end_batch();
                    }
                }
                Err(why) => break why == Empty::Closed,
            }
        };
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
        let commit_due = p.unsynced_since.is_some_and(|t| now >= t + COMMIT_DELAY_MS);
        let retry_due = p.retry_at.is_some_and(|t| now >= t);
        if commit_due || retry_due || !flushes.is_empty() || closed {
            p.commit(now)?;
        }
        let flushed = if p.retry_at.is_none() { Ok(()) } else { Err(p.stats.misconf().unwrap_or_default()) };
        for reply in flushes {
            let _ = reply.send(flushed.clone());
        }
        p.poll_compaction();
        p.publish();
        if closed {
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
