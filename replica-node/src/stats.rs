//! Whole-node counters reported by `INFO`.
//!
//! The state machines own their counters ([`replica_core::stats`]); their drivers publish them
//! here after each round of work, and whichever actor serves `INFO` reads them. They are plain
//! relaxed atomics: figures for operators and tests, never used to make decisions, so no
//! ordering between them is promised. The one exception is `clients_connected`, which is also
//! the node-wide count `--maxclients` bounds: [`NodeStats::admit_client`] takes a slot with a
//! compare-and-swap, so the bound holds exactly however many actors accept at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use replica_core::gateway::MemberView;
use replica_core::stats::{GatewayStats, SyncStats};

/// Counters shared by every actor of one node.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Sync messages (deltas) sent by this node's actors, counted once per recipient.
    pub sync_messages_sent: AtomicU64,
    /// Entries in the sync messages sent by this node's actors, counted once per recipient.
    pub sync_entries_sent: AtomicU64,
    /// Entries received in sync messages by this node's actors.
    pub sync_entries_received: AtomicU64,
    /// Received entries that changed nothing (the recipient already had them or newer).
    pub sync_entries_redundant: AtomicU64,
    /// The most messages any actor of this node sent to one recipient within one second.
    pub sync_max_pair_rate: AtomicU64,
    /// Payload bytes sent over peer (server-to-server) connections, join traffic included.
    pub remote_bytes_sent: AtomicU64,
    /// Payload bytes received over peer connections, join traffic included.
    pub remote_bytes_received: AtomicU64,
    /// Remote servers currently connected.
    pub peers_connected: AtomicU64,
    /// Client connections currently open, all actors together.
    pub clients_connected: AtomicU64,
    /// Client commands executed, all actors together (published by each actor once per round).
    pub commands_processed: AtomicU64,
    /// Reads of a key that found a value, all actors together.
    pub keyspace_hits: AtomicU64,
    /// Reads of a key that found none, all actors together.
    pub keyspace_misses: AtomicU64,
    /// Expired entries this node's sweep turned into tombstones.
    pub expired_keys: AtomicU64,
    /// Recent samples of `commands_processed`, for `instantaneous_ops_per_sec`.
    ops_samples: Mutex<VecDeque<(u64, u64)>>,
    /// The node has a data directory (INFO shows the `persistence` section).
    pub persist_enabled: AtomicBool,
    /// Bytes of log segments on disk.
    pub persist_log_bytes: AtomicU64,
    /// When the log was last synced (monotonic ms of the node's clock).
    pub persist_last_fsync_mono_ms: AtomicU64,
    /// Snapshots written by compaction since the node started.
    pub persist_snapshots_written: AtomicU64,
    /// Entries (tombstones included) recovered from the data directory at start.
    pub persist_recovered_entries: AtomicU64,
    /// Set while the disk refuses the log: client writes get `-MISCONF` (reason below).
    pub persist_refusing: AtomicBool,
    /// Why the disk refuses the log, while it does.
    pub persist_refusal: Mutex<String>,
    /// Client connections refused because the node had `--maxclients` open already.
    pub rejected_connections: AtomicU64,
    /// Client connections closed because their unsent replies passed `--client-output-limit`.
    pub client_output_limit_disconnects: AtomicU64,
    /// Repair rounds started by this node.
    pub repair_rounds: AtomicU64,
    /// Entries this node sent in repair rounds.
    pub repair_entries_sent: AtomicU64,
    /// Entries this node received in repair rounds.
    pub repair_entries_received: AtomicU64,
    /// 1 while a snapshot this node needs (a join, a refill) is incomplete.
    pub loading: AtomicU64,
    /// Snapshot entries received so far, and the snapshot's size (for the progress bar).
    pub fill_received: AtomicU64,
    /// The number of entries the snapshot's sender held.
    pub fill_total: AtomicU64,
    /// The largest measured offset to a connected peer's clock, either way (ms).
    pub clock_offset_max_ms: AtomicU64,
    /// How far the actors move the wall clock up when stamping writes: this server's clock is
    /// behind most of its peers' by that much (ms).
    pub clock_correction_ms: AtomicU64,
    /// When not 0, client writes are refused: this server's clock is ahead of most of its
    /// peers' by this much (ms).
    pub clock_ahead_ms: AtomicU64,
    /// When not 0, client writes are refused: this server's clock is behind a peer's by this
    /// much (ms) and too few servers can tell which clock is right.
    pub clock_disputed_ms: AtomicU64,
    /// Entries refused for being stamped too far ahead of this server's clock.
    pub sync_entries_future: AtomicU64,
    /// Tombstones collected.
    pub tombstones_collected: AtomicU64,
    /// The cluster as the gateway sees it, for `CLUSTER NODES`.
    members: Mutex<Arc<Vec<MemberView>>>,
}

impl NodeStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Publishes what a machine's sync counters gained since `published` (what this driver
    /// published last), and remembers `now` as published.
    pub(crate) fn publish_sync(&self, published: &mut SyncStats, now: &SyncStats) {
        if now == published {
            return;
        }
        Self::add(&self.sync_messages_sent, now.messages_sent - published.messages_sent);
        Self::add(&self.sync_entries_sent, now.entries_sent - published.entries_sent);
        Self::add(&self.sync_entries_received, now.entries_received - published.entries_received);
        Self::add(&self.sync_entries_redundant, now.entries_redundant - published.entries_redundant);
        self.sync_max_pair_rate.fetch_max(now.max_pair_rate, Ordering::Relaxed);
        *published = *now;
    }

    /// Publishes the gateway's counters (the gateway loop is their only publisher).
    pub(crate) fn publish_gateway(&self, published: &mut GatewayStats, now: &GatewayStats) {
        if now == published {
            return;
        }
        self.publish_sync(&mut published.sync, &now.sync);
        let store = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        store(&self.peers_connected, now.peers_connected);
        store(&self.repair_rounds, now.repair_rounds);
        store(&self.repair_entries_sent, now.repair_entries_sent);
        store(&self.repair_entries_received, now.repair_entries_received);
        store(&self.loading, u64::from(now.loading));
        store(&self.fill_received, now.fill_received);
        store(&self.fill_total, now.fill_total);
        store(&self.clock_offset_max_ms, now.clock.max_offset_ms);
        store(&self.clock_correction_ms, now.clock.correction_ms);
        store(&self.clock_ahead_ms, now.clock.ahead_ms.unwrap_or(0));
        store(&self.clock_disputed_ms, now.clock.disputed_ms.unwrap_or(0));
        store(&self.sync_entries_future, now.entries_future);
        store(&self.tombstones_collected, now.tombstones_collected);
        *published = *now;
    }

    /// Why client writes are refused for this server's clock, if they are (`-CLOCKSKEW`).
    pub fn clock_refusal(&self) -> Option<String> {
        match (Self::get(&self.clock_ahead_ms), Self::get(&self.clock_disputed_ms)) {
            (0, 0) => None,
            (ahead, 0) => Some(format!("clock ahead of the cluster by {ahead} ms")),
            (_, behind) => Some(format!(
                "clock behind a peer by {behind} ms, and too few servers to tell which clock is right"
            )),
        }
    }

    /// Publishes the cluster membership for `CLUSTER NODES`.
    pub(crate) fn publish_members(&self, members: Vec<MemberView>) {
        let mut held = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if **held != members {
            *held = Arc::new(members);
        }
    }

    /// The cluster membership as last published: this node first.
    pub fn members(&self) -> Arc<Vec<MemberView>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Why writes are refused (`-MISCONF <reason>`), if they are: the disk refuses the log.
    pub fn misconf(&self) -> Option<String> {
        if !self.persist_refusing.load(Ordering::Acquire) {
            return None;
        }
        let reason = self.persist_refusal.lock().map(|r| r.clone()).unwrap_or_default();
        Some(reason)
    }

    /// Counts a new client connection unless `max` are open already, in which case it counts
    /// a rejection instead and returns false.
    pub(crate) fn admit_client(&self, max: usize) -> bool {
        let max = max as u64;
        let admitted = self
            .clients_connected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
        if admitted.is_err() {
            Self::add(&self.rejected_connections, 1);
        }
        admitted.is_ok()
    }

    /// Counts a client connection closed (one [`NodeStats::admit_client`] admitted).
    pub(crate) fn client_closed(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Samples the commands processed at `now_ms` (monotonic), at most one sample per
    /// [`OPS_SAMPLE_MS`]; the actors call this after publishing their counters.
    pub(crate) fn sample_ops(&self, now_ms: u64) {
        let count = Self::get(&self.commands_processed);
        let mut samples = self.ops_samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.back().is_some_and(|&(at, _)| now_ms < at + OPS_SAMPLE_MS) {
            return;
        }
        samples.push_back((now_ms, count));
        while samples.len() > OPS_SAMPLES {
            samples.pop_front();
        }
    }

    /// Commands per second lately: from the oldest sample of the last [`OPS_WINDOW_MS`] (or,
    /// when the node was idle that long, from the newest sample) to `count` now.
    pub fn ops_per_sec(&self, now_ms: u64, count: u64) -> u64 {
        let samples = self.ops_samples.lock().unwrap_or_else(PoisonError::into_inner);
        let from = samples
            .iter()
            .find(|&&(at, _)| at + OPS_WINDOW_MS >= now_ms && at < now_ms)
            .or_else(|| samples.back().filter(|&&(at, _)| at < now_ms));
        match from {
            Some(&(at, then)) => count.saturating_sub(then) * 1000 / (now_ms - at),
            None => 0,
        }
    }
}

/// Least time between two samples of the command count.
pub const OPS_SAMPLE_MS: u64 = 100;
/// The span `instantaneous_ops_per_sec` averages over, as Redis's (16 samples of 100 ms).
pub const OPS_WINDOW_MS: u64 = 1600;
const OPS_SAMPLES: usize = 20;

#[cfg(test)]
mod tests {
    use super::NodeStats;

    #[test]
    fn admission_stops_at_the_bound_and_counts_refusals() {
        let stats = NodeStats::default();
        assert!(stats.admit_client(2));
        assert!(stats.admit_client(2));
        assert!(!stats.admit_client(2));
        assert_eq!(NodeStats::get(&stats.rejected_connections), 1);
        assert_eq!(NodeStats::get(&stats.clients_connected), 2);
        stats.client_closed();
        assert!(stats.admit_client(2), "a closed connection frees its slot");
        assert!(!stats.admit_client(0));
    }

    #[test]
    fn ops_per_sec_averages_the_last_samples() {
        let stats = NodeStats::default();
        assert_eq!(stats.ops_per_sec(1_000, 50), 0, "no sample yet");
        for (ms, count) in [(0, 0), (50, 10), (100, 100), (1_000, 1_000), (2_000, 3_000)] {
            NodeStats::add(&stats.commands_processed, count - NodeStats::get(&stats.commands_processed));
            stats.sample_ops(ms);
        }
        assert_eq!(
            stats.ops_per_sec(2_100, 3_100),
            (3_100 - 1_000) * 1000 / 1_100,
            "from the sample at 1000"
        );
        assert_eq!(stats.ops_per_sec(60_000, 3_000), 0, "idle since the last sample");
        assert_eq!(stats.ops_per_sec(12_000, 13_000), 1_000, "idle for long: from the newest sample");
    }
}
