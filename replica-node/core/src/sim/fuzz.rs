//! A gateway fed one message from a peer (for the `peer_frame` fuzz target).

use bytes::Bytes;
use lww_crdt::{BytesMap, Timestamp};

use super::EPOCH_MS;
use crate::gateway::{Event, Gateway, GatewayConfig, SnapshotPiece};
use crate::peer::PeerMsg;
use crate::replica::Now;

/// Hands `msg` to a gateway holding some data, from a live peer, then lets it do everything it
/// wants to (for the `peer_frame` fuzz target: nothing a peer sends may panic a gateway).
pub fn feed_gateway(msg: PeerMsg) {
    let mut data = BytesMap::new();
    for i in 0..20u64 {
        data.put(
            Bytes::from(format!("k{i:02}")),
            Bytes::from_static(b"v"),
            Timestamp::new(EPOCH_MS + i, 0, 1),
        );
    }
    let config = GatewayConfig {
        max_clock_offset_ms: crate::gateway::DEFAULT_MAX_CLOCK_OFFSET_MS,
        tombstone_grace_ms: 1_000,
        node: "aa".into(),
        advertised: "10.0.0.1:6000".into(),
        actors: 2,
        incarnation: 1,
        started_ms: EPOCH_MS,
        digest_key: *b"simulation-key!!",
        joins: Vec::new(),
        redial_newer_ms: Some(crate::gateway::DEFAULT_REDIAL_NEWER_MS),
        pending_limit: crate::gateway::MAX_PENDING_WHILE_DOWN,
    };
    let mut now = Now { wall_ms: EPOCH_MS, mono_ms: 0 };
    let mut g = Gateway::new(config, data, now);
    g.handle(Event::Connected { conn: 1, peer: "bb".into(), dialed: None }, now);
    let hello = crate::peer::Hello {
        version: crate::peer::PROTOCOL_VERSION,
        node: "bb".into(),
        peer: "10.0.0.2:6000".into(),
        incarnation: 2,
        started_ms: EPOCH_MS + 10,
        root: crate::peer::Fingerprint::default(),
        entries: 5,
    };
    g.handle(Event::Message { conn: 1, msg: PeerMsg::Hello(hello) }, now);
    let event = match msg {
        PeerMsg::SnapshotChunk { id, entries, total, last } => {
            Event::Chunk { conn: 1, id, piece: SnapshotPiece::new(entries), total, last }
        }
        msg => Event::Message { conn: 1, msg },
    };
    g.handle(event, now);
    for step in 0..50 {
        now.mono_ms = step * 1_000;
        if step == 25 {
            // Bring the peer's agreements to bear on collection.
            g.handle(
                Event::Message {
                    conn: 1,
                    msg: PeerMsg::Ack { ack: crate::peer::Ack::default(), root: g.root().into() },
                },
                now,
            );
        }
        now.wall_ms = EPOCH_MS + now.mono_ms;
        while g.poll_transmit(now).is_some() {}
        while g.wants_bulk(1) {
            if g.poll_bulk(1, now, |_| Ok::<(), ()>(())).is_err() {
                break;
            }
        }
    }
}
