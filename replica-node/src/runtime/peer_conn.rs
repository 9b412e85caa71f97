//! The tasks of one peer connection: they only move frames between the network and the gateway
//! loop, which owns every decision.
//!
//! - a writer for the high-priority stream (deltas, acks, control), fed by an unbounded
//!   channel and writing whatever is queued in one batch;
//! - a writer for the low-priority stream (snapshot chunks, repair entries), fed by a bounded
//!   channel of frames the gateway loop encodes from its replica, so bulk data never queues up
//!   as a second copy of the replica;
//! - a reader per stream the peer opens: control frames are decoded at once; bulk frames are
//!   decoded on the blocking pool, so a joining server decodes the next snapshot chunk while
//!   its gateway merges this one;
//! - a watcher that reports when the connection ends.
//!
//! Both streams are opened on first use; the peer sees a stream at its first frame.

use std::sync::Arc;

use net_quic::{EncodedFrames, PeerConnection, StreamClass};
use tokio::sync::{Notify, mpsc};

use replica_core::gateway::{ConnId, SnapshotPiece};
use replica_core::peer::PeerMsg;

use crate::stats::NodeStats;

/// Encoded bulk frames queued ahead of a connection's low-priority writer: enough to keep the
/// stream busy while the gateway encodes the next, few enough that bulk data never sits in
/// memory as a second copy of the replica.
pub(crate) const BULK_AHEAD: usize = 2;

/// What connection tasks tell the gateway loop.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A connection is up (dialled to `dialed`, or accepted).
    Up { conn: PeerConnection, dialed: Option<String> },
    /// A message arrived.
    Msg { conn: ConnId, msg: PeerMsg },
    /// A snapshot chunk arrived, prepared for the gateway where it was decoded.
    Chunk { conn: ConnId, id: u64, piece: SnapshotPiece, total: u64, last: bool },
    /// The connection ended.
    Down { conn: ConnId, why: String },
}

/// The gateway loop's handle on one connection's tasks. Dropping it lets the writers finish
/// their streams.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub conn: PeerConnection,
    control: mpsc::UnboundedSender<PeerMsg>,
    pub bulk: mpsc::Sender<EncodedFrames>,
    /// Ends once everything sent on the control stream is written and acknowledged (or the
    /// connection failed).
    pub control_writer: tokio::task::JoinHandle<()>,
}

impl ConnHandle {
    /// Queues `msg` on the high-priority stream. A connection going down drops it: its `Down`
    /// event follows, and the gateway sends what was not acknowledged again on the next one.
    pub fn send(&self, msg: PeerMsg) {
        let _ = self.control.send(msg);
    }
}

/// The id the gateway knows a connection by.
pub(crate) fn conn_id(conn: &PeerConnection) -> ConnId {
    conn.stable_id() as ConnId
}

/// Starts the tasks of `conn`; `room` is signalled whenever its bulk writer takes a frame.
pub(crate) fn spawn(
    conn: PeerConnection,
    events: mpsc::UnboundedSender<ConnEvent>,
    stats: Arc<NodeStats>,
    room: Arc<Notify>,
) -> ConnHandle {
    let id = conn_id(&conn);
    let (control, control_rx) = mpsc::unbounded_channel();
    let (bulk, bulk_rx) = mpsc::channel(BULK_AHEAD);
    let control_writer = tokio::spawn(write_control(conn.clone(), control_rx, stats.clone()));
    tokio::spawn(write_bulk(conn.clone(), bulk_rx, stats.clone(), room));
    tokio::spawn(read_streams(conn.clone(), events.clone(), stats));
    {
        let conn = conn.clone();
        tokio::spawn(async move {
            let why = conn.closed().await;
            let _ = events.send(ConnEvent::Down { conn: id, why: why.to_string() });
        });
    }
    ConnHandle { conn, control, bulk, control_writer }
}

async fn write_control(
    conn: PeerConnection,
    mut rx: mpsc::UnboundedReceiver<PeerMsg>,
    stats: Arc<NodeStats>,
) {
    let peer = conn.peer_node_id().to_owned();
    let Some(first) = rx.recv().await else { return };
    let mut sender = match conn.open_stream::<PeerMsg>(StreamClass::Control).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, "cannot open the control stream: {e}");
            return;
        }
    };
    let mut next = Some(first);
    while let Some(msg) = next {
        // Send everything already queued in one write.
        let mut batch = vec![msg];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        match sender.send_batch(batch.iter()).await {
            Ok(n) => NodeStats::add(&stats.remote_bytes_sent, n as u64),
            Err(e) => {
                tracing::debug!(%peer, "control stream write failed: {e}");
                return;
            }
        }
        next = rx.recv().await;
    }
    // The loop dropped its sender: the node is stopping or the connection was replaced.
    let _ = sender.finish_and_wait().await;
}

async fn write_bulk(
    conn: PeerConnection,
    mut rx: mpsc::Receiver<EncodedFrames>,
    stats: Arc<NodeStats>,
    room: Arc<Notify>,
) {
    let peer = conn.peer_node_id().to_owned();
    let Some(first) = rx.recv().await else { return };
    room.notify_one();
    let mut sender = match conn.open_stream::<PeerMsg>(StreamClass::Bulk).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "cannot open the bulk stream: {e}");
            return;
        }
    };
    let mut next = Some(first);
    while let Some(frames) = next {
        match sender.send_encoded(frames).await {
            Ok(n) => NodeStats::add(&stats.remote_bytes_sent, n as u64),
            Err(e) => {
                tracing::debug!(%peer, "bulk stream write failed: {e}");
                return;
            }
        }
        next = rx.recv().await;
        room.notify_one();
    }
    let _ = sender.finish_and_wait().await;
}

async fn read_streams(conn: PeerConnection, events: mpsc::UnboundedSender<ConnEvent>, stats: Arc<NodeStats>) {
    let peer = conn.peer_node_id().to_owned();
    let id = conn_id(&conn);
    loop {
        let receiver = match conn.accept_stream::<PeerMsg>().await {
            Ok(r) => r,
            Err(e) => {
                if e.is_protocol_violation() {
                    tracing::warn!(%peer, "bad stream from peer, disconnecting: {e}");
                    conn.close(net_quic::CloseReason::Protocol);
                }
                return;
            }
        };
        tokio::spawn(read_stream(conn.clone(), id, receiver, events.clone(), stats.clone()));
    }
}

async fn read_stream(
    conn: PeerConnection,
    id: ConnId,
    mut receiver: net_quic::FrameReceiver<PeerMsg>,
    events: mpsc::UnboundedSender<ConnEvent>,
    stats: Arc<NodeStats>,
) {
    let peer = conn.peer_node_id().to_owned();
    let bulk = receiver.class() == StreamClass::Bulk;
    let mut seen = 0;
    loop {
        let payload = match receiver.recv_payload().await {
            Ok(Some(payload)) => payload,
            Ok(None) => return,
            Err(e) => {
                if e.is_protocol_violation() {
                    tracing::warn!(%peer, "malformed frame from peer, disconnecting: {e}");
                    conn.close(net_quic::CloseReason::Protocol);
                }
                return;
            }
        };
        let total = receiver.bytes_received();
        NodeStats::add(&stats.remote_bytes_received, total - seen);
        seen = total;
        let decoded = if bulk {
            let decode = move || net_quic::decode_frame::<PeerMsg>(&payload).map(|msg| inbound(id, msg));
            match tokio::task::spawn_blocking(decode).await {
                Ok(decoded) => decoded,
                // Only when the runtime shuts down (decoding never panics).
                Err(_) => return,
            }
        } else {
            net_quic::decode_frame::<PeerMsg>(&payload).map(|msg| ConnEvent::Msg { conn: id, msg })
        };
        match decoded {
            Ok(event) => {
                if events.send(event).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(%peer, "undecodable frame from peer, disconnecting: {e}");
                conn.close(net_quic::CloseReason::Protocol);
                return;
            }
        }
    }
}

/// The event for a message from a bulk stream. A snapshot chunk also gets its second copy here
/// (see [`SnapshotPiece`]), on the decoding thread rather than the gateway's.
fn inbound(conn: ConnId, msg: PeerMsg) -> ConnEvent {
    match msg {
        PeerMsg::SnapshotChunk { id, entries, total, last } => {
            ConnEvent::Chunk { conn, id, piece: SnapshotPiece::new(entries), total, last }
        }
        msg => ConnEvent::Msg { conn, msg },
    }
}
