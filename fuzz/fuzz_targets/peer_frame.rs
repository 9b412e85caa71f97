//! Decodes arbitrary bytes as a peer frame payload, exactly as a gateway decodes what another
//! server sends it, and hands what decodes to a gateway on a live connection: never a panic;
//! whatever decodes re-encodes and decodes to the same message, and every map it carries is
//! consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica_core::peer::PeerMsg;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = net_quic::decode_frame::<PeerMsg>(data) else {
        return;
    };
    match &msg {
        PeerMsg::Delta { entries: m, .. }
        | PeerMsg::SnapshotChunk { entries: m, .. }
        | PeerMsg::RepairEntries { entries: m, .. } => {
            lww_crdt::harness::check_invariants(m).unwrap();
        }
        _ => {}
    }
    let mut buf = Vec::new();
    net_quic::encode_frame(&msg, usize::MAX, &mut buf).unwrap();
    let again = net_quic::decode_frame::<PeerMsg>(&buf[net_quic::FRAME_HEADER_LEN..]).unwrap();
    assert_eq!(again, msg);
    replica_core::sim::feed_gateway(msg);
});
