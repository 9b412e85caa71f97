//! Whole-node counters reported by `INFO`.
//!
//! Each counter is written by the actor that does the work and read by whichever actor serves
//! `INFO`. They are plain relaxed atomics: figures for operators and tests, never used to make
//! decisions, so no ordering between them is promised.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Client commands executed, all actors together.
    pub commands_processed: AtomicU64,
}

impl NodeStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one pacer send of `messages` sync messages holding `entries` entries in all,
    /// after which its recipients have had `rate` messages within the last second.
    pub fn sent(&self, rate: usize, messages: u64, entries: u64) {
        if messages > 0 {
            self.sync_max_pair_rate.fetch_max(rate as u64, Ordering::Relaxed);
        }
        Self::add(&self.sync_messages_sent, messages);
        Self::add(&self.sync_entries_sent, entries);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
