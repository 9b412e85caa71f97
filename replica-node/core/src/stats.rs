//! Counters a state machine keeps about its own work. The machine owns them; its driver reads
//! them ([`crate::Replica::stats`], [`crate::gateway::Gateway::stats`]) and publishes them where
//! `INFO` can see them. Nothing here is shared between threads.

use lww_crdt::MergeStats;

/// What one machine sent and received in sync messages, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Sync messages sent, counted once per recipient.
    pub messages_sent: u64,
    /// Entries in the sync messages sent, counted once per recipient.
    pub entries_sent: u64,
    /// Entries received in sync messages (deltas, fan-out batches, snapshot chunks).
    pub entries_received: u64,
    /// Received entries that changed nothing (the machine already had them or newer).
    pub entries_redundant: u64,
    /// The most messages sent to one recipient within one second (a maximum, not a sum).
    pub max_pair_rate: u64,
}

impl SyncStats {
    /// One pacer send of `messages` messages holding `entries` entries in all, after which
    /// each recipient has had `rate` messages within the last second.
    pub(crate) fn sent(&mut self, rate: usize, messages: u64, entries: u64) {
        if messages > 0 {
            self.max_pair_rate = self.max_pair_rate.max(rate as u64);
        }
        self.messages_sent += messages;
        self.entries_sent += entries;
    }

    /// A merge of received entries.
    pub(crate) fn received(&mut self, merge: &MergeStats) {
        self.entries_received += merge.total() as u64;
        self.entries_redundant += merge.redundant as u64;
    }
}

/// What the gateway reports about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Its sync messages: deltas to remote servers and fan-out batches to the local actors.
    pub sync: SyncStats,
    /// Remote servers currently connected.
    pub peers_connected: u64,
    /// Repair rounds this gateway started.
    pub repair_rounds: u64,
    /// Entries sent in repair rounds.
    pub repair_entries_sent: u64,
    /// Entries received in repair rounds.
    pub repair_entries_received: u64,
    /// Whether a snapshot this node needs is incomplete.
    pub loading: bool,
    /// Snapshot entries received so far, and the size of the snapshot (for progress).
    pub fill_received: u64,
    /// The number of entries the snapshot's sender held.
    pub fill_total: u64,
}
