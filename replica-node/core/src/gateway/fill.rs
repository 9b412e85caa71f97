//! Filling a server that started empty: one snapshot, from one peer, resumed until complete.
//!
//! A server that starts without data asks the first live peer that holds any for a snapshot
//! (a join, or a refill after a restart without data): one snapshot, not one per server. If
//! the transfer is cut short (the connection dies, or nothing arrives for
//! [`FILL_RETRY_MS`]), it asks again, from the first live peer that holds data, for the keys
//! after the last one it received. A server that meets only empty peers has joined an empty
//! cluster and needs nothing. Everything else (writes during the transfer, entries a peer
//! missed) comes as deltas and through repair.

use bytes::Bytes;

use super::ConnId;

/// A snapshot transfer from which nothing has arrived for this long is asked for again.
pub const FILL_RETRY_MS: u64 = 5_000;

/// Where the fill stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Nothing to fill (the server started with data, or has been filled, or met an empty
    /// cluster).
    Idle,
    /// A snapshot is wanted: the keys after `after` (all if `None`).
    Wanted { after: Option<Bytes> },
    /// A snapshot is on its way.
    Receiving { peer: String, conn: ConnId, id: u64, after: Option<Bytes>, last_at: u64 },
}

/// The fill and its progress.
#[derive(Debug)]
pub(crate) struct Filling {
    pub state: Fill,
    /// Requests made so far (their ids).
    requests: u64,
    /// Entries received so far, across resumed transfers.
    pub received: u64,
    /// Entries the sender held when its transfer started.
    pub total: u64,
}

impl Filling {
    /// A fill for a server that started empty (`wanted`) or with data.
    pub fn new(wanted: bool) -> Self {
        let state = if wanted { Fill::Wanted { after: None } } else { Fill::Idle };
        Filling { state, requests: 0, received: 0, total: 0 }
    }

    /// Whether a snapshot is wanted and not being received.
    pub fn wanted(&self) -> bool {
        matches!(self.state, Fill::Wanted { .. })
    }

    /// Starts a request to `peer` over `conn`; returns its id and where it starts.
    pub fn request(&mut self, peer: &str, conn: ConnId, now: u64) -> Option<(u64, Option<Bytes>)> {
        let Fill::Wanted { after } = &self.state else { return None };
        let after = after.clone();
        self.requests += 1;
        let id = self.requests;
        self.state = Fill::Receiving { peer: peer.to_owned(), conn, id, after: after.clone(), last_at: now };
        Some((id, after))
    }

    /// The peer met had no data: if a snapshot was wanted, there is nothing to fill.
    pub fn met_empty_peer(&mut self) {
        if self.wanted() {
            self.state = Fill::Idle;
        }
    }

    /// Whether chunks on `conn` with `id` belong to the transfer under way.
    pub fn is_current(&self, conn: ConnId, id: u64) -> bool {
        matches!(&self.state, Fill::Receiving { conn: c, id: i, .. } if *c == conn && *i == id)
    }

    /// A chunk of the current transfer arrived: `n` entries up to `last_key`, of `total`.
    /// Returns whether the fill is complete.
    pub fn on_chunk(&mut self, n: u64, last_key: Option<Bytes>, total: u64, last: bool, now: u64) -> bool {
        self.received += n;
        self.total = self.total.max(total).max(self.received);
        if last {
            self.state = Fill::Idle;
            return true;
        }
        if let Fill::Receiving { after, last_at, .. } = &mut self.state {
            if last_key.is_some() {
                *after = last_key;
            }
            *last_at = now;
        }
        false
    }

    /// The connection of the transfer went away (or it stalled): ask again.
    pub fn interrupted(&mut self) {
        if let Fill::Receiving { after, .. } = &self.state {
            self.state = Fill::Wanted { after: after.clone() };
        }
    }

    /// Whether the transfer under way uses `conn`.
    pub fn uses(&self, conn: ConnId) -> bool {
        matches!(&self.state, Fill::Receiving { conn: c, .. } if *c == conn)
    }

    /// When the transfer under way counts as stalled (monotonic ms).
    pub fn stall_at(&self) -> Option<u64> {
        match &self.state {
            Fill::Receiving { last_at, .. } => Some(last_at + FILL_RETRY_MS),
            _ => None,
        }
    }
}
