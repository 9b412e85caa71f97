//! The gateway machine driven event by event. Whole clusters under faults are the business of
//! the simulation (`crate::sim`, `tests/sim_cluster.rs`); these tests pin single rules.

use super::*;
use crate::peer::{Ack, Fingerprint, Hello, MAX_MEMBERS, MemberInfo, PROTOCOL_VERSION};
use lww_crdt::Timestamp;

const EPOCH: u64 = 1_700_000_000_000;
/// This gateway's incarnation.
const ME: u64 = 1;
/// The peers' incarnation.
const P: u64 = 7;

fn at(t: u64) -> Now {
    Now { wall_ms: EPOCH + t, mono_ms: t }
}

fn config(node: &str, joins: &[(&str, &str)]) -> GatewayConfig {
    GatewayConfig {
        node: node.into(),
        advertised: format!("{node}:6000"),
        actors: 2,
        incarnation: ME,
        started_ms: EPOCH + 100,
        digest_key: *b"gateway-test-key",
        joins: joins.iter().map(|(n, a)| JoinTarget { node: (*n).into(), addr: (*a).into() }).collect(),
        redial_newer_ms: Some(DEFAULT_REDIAL_NEWER_MS),
        pending_limit: MAX_PENDING_WHILE_DOWN,
        max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
        tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
    }
}

/// A gateway named "m" (smaller than the peers "p", "q", "r" used below) holding `data`.
fn gateway_with(data: BytesMap) -> Gateway {
    Gateway::new(config("m", &[]), data, at(0))
}

fn gateway() -> Gateway {
    gateway_with(BytesMap::new())
}

fn hello(node: &str, incarnation: u64, started: u64, entries: u64) -> PeerMsg {
    PeerMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        peer: format!("{node}:6000"),
        incarnation,
        started_ms: EPOCH + started,
        root: Fingerprint::default(),
        entries,
    })
}

fn drain(g: &mut Gateway, t: u64) -> Vec<Transmit> {
    std::iter::from_fn(|| g.poll_transmit(at(t))).collect()
}

/// Messages in `out` sent on `conn`.
fn sent(out: &[Transmit], conn: ConnId) -> Vec<PeerMsg> {
    out.iter()
        .filter_map(|t| match t {
            Transmit::Send { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// Connects `peer` on `conn` (accepted, not dialled) and delivers its Hello; returns what the
/// gateway did.
fn connect(g: &mut Gateway, conn: ConnId, peer: &str, t: u64) -> Vec<Transmit> {
    g.handle(Event::Connected { conn, peer: peer.into(), dialed: None }, at(t));
    g.handle(Event::Message { conn, msg: hello(peer, P, 200, 0) }, at(t));
    drain(g, t)
}

fn delta(keys: &[&str], wall: u64) -> Arc<BytesMap> {
    let mut d = BytesMap::new();
    for k in keys {
        d.put(Bytes::copy_from_slice(k.as_bytes()), Bytes::from_static(b"v"), Timestamp::new(wall, 0, 1));
    }
    Arc::new(d)
}

fn local(g: &mut Gateway, keys: &[&str], wall: u64, t: u64) {
    g.handle(Event::Local(delta(keys, wall)), at(t));
}

fn peer_delta(g: &mut Gateway, conn: ConnId, seq: u64, keys: &[&str], t: u64) {
    let msg = PeerMsg::Delta {
        seq,
        ack: Ack::default(),
        root: Fingerprint::default(),
        more: false,
        entries: (*delta(keys, 5)).clone(),
    };
    g.handle(Event::Message { conn, msg }, at(t));
}

/// Entries in the deltas of `msgs`, `None` if there are none.
fn entries(msgs: &[PeerMsg]) -> Option<usize> {
    let deltas: Vec<usize> = msgs
        .iter()
        .filter_map(|m| match m {
            PeerMsg::Delta { entries, .. } => Some(entries.entry_count()),
            _ => None,
        })
        .collect();
    (!deltas.is_empty()).then(|| deltas.iter().sum())
}

fn ack_of(msg: &PeerMsg) -> Option<Ack> {
    match msg {
        PeerMsg::Delta { ack, .. } | PeerMsg::Ack { ack, .. } => Some(*ack),
        _ => None,
    }
}

fn deltas_and_acks(msgs: Vec<PeerMsg>) -> Vec<PeerMsg> {
    msgs.into_iter().filter(|m| matches!(m, PeerMsg::Delta { .. } | PeerMsg::Ack { .. })).collect()
}

#[test]
fn local_writes_go_to_every_peer_once_and_are_paced() {
    use crate::pacer::{BURST, BURST_SPAN_MS};
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    connect(&mut g, 2, "q", 0);
    local(&mut g, &["x"], 10, 0);
    let out = drain(&mut g, 0);
    assert_eq!(entries(&sent(&out, 1)), Some(1), "isolated: at once");
    assert_eq!(entries(&sent(&out, 2)), Some(1));
    local(&mut g, &["y"], 11, 10);
    local(&mut g, &["z"], 12, 10);
    local(&mut g, &["y", "z"], 12, 10); // a duplicate changes nothing and is not re-sent
    let out = drain(&mut g, 10);
    assert_eq!((entries(&sent(&out, 1)), entries(&sent(&out, 2))), (Some(2), Some(2)), "burst start");
    for i in 2..BURST as u64 {
        local(&mut g, &[&format!("s{i}")], 20 + i, 10 + i);
        let out = drain(&mut g, 10 + i);
        assert_eq!(entries(&sent(&out, 1)), Some(1), "within the burst");
    }
    local(&mut g, &["w1"], 30, 50);
    local(&mut g, &["w2"], 31, 50);
    assert_eq!(entries(&sent(&drain(&mut g, 50), 1)), None, "burst spent: paced");
    assert_eq!(g.poll_timeout(), Some(BURST_SPAN_MS), "exactly when the burst's span has passed");
    assert_eq!(entries(&sent(&drain(&mut g, BURST_SPAN_MS - 1), 1)), None);
    let out = drain(&mut g, BURST_SPAN_MS);
    assert_eq!((entries(&sent(&out, 1)), entries(&sent(&out, 2))), (Some(2), Some(2)));
}

#[test]
fn acks_ride_on_deltas_and_go_alone_only_after_the_ack_delay() {
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    peer_delta(&mut g, 1, 1, &["r1"], 0);
    peer_delta(&mut g, 1, 2, &["r2"], 10);
    let out = drain(&mut g, 20);
    assert!(deltas_and_acks(sent(&out, 1)).is_empty(), "an ack alone waits for a delta to ride on");
    assert!(out.iter().any(|t| matches!(t, Transmit::FanOut(b) if b.delta.entry_count() == 2)));
    local(&mut g, &["w"], 20, 30);
    let msgs = deltas_and_acks(sent(&drain(&mut g, 30), 1));
    assert_eq!(msgs.len(), 1, "one message: the delta, carrying the ack");
    assert_eq!(ack_of(&msgs[0]), Some(Ack { incarnation: P, seq: 2 }));
    // Nothing more owed: no standalone ack follows, however long we wait.
    assert!(deltas_and_acks(sent(&drain(&mut g, 10_000), 1)).is_empty());
    peer_delta(&mut g, 1, 3, &["r3"], 20_000);
    assert!(deltas_and_acks(sent(&drain(&mut g, 20_000 + ACK_DELAY_MS - 1), 1)).is_empty());
    let msgs = deltas_and_acks(sent(&drain(&mut g, 20_000 + ACK_DELAY_MS), 1));
    assert!(matches!(msgs[..], [PeerMsg::Ack { ack: Ack { incarnation: P, seq: 3 }, .. }]), "{msgs:?}");
}

#[test]
fn acks_for_a_one_way_stream_of_deltas_are_few_and_within_the_budget() {
    use crate::pacer::MAX_PER_WINDOW;
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    // Deltas from the peer every 10 ms for 3 s, nothing to send back.
    let mut acks = Vec::new();
    for t in 0..3_000 + ACK_DELAY_MS {
        if t < 3_000 && t % 10 == 0 {
            peer_delta(&mut g, 1, 1 + t / 10, &[&format!("r{t}")], t);
        }
        acks.extend(deltas_and_acks(sent(&drain(&mut g, t), 1)).iter().filter_map(ack_of));
    }
    assert_eq!(acks.last(), Some(&Ack { incarnation: P, seq: 300 }), "the last covers all");
    assert!((3 * 1_000 / ACK_DELAY_MS as usize..=4 * 4).contains(&acks.len()), "{} acks in 3 s", acks.len());
    assert!(g.stats().sync.max_pair_rate <= MAX_PER_WINDOW as u64);
}

#[test]
fn the_final_flush_sends_everything_owed_regardless_of_pacing() {
    use crate::pacer::BURST;
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    for i in 0..BURST as u64 {
        local(&mut g, &[&format!("b{i}")], 10 + i, i);
        drain(&mut g, i);
    }
    local(&mut g, &["last"], 20, 5);
    peer_delta(&mut g, 1, 1, &["r"], 5);
    assert_eq!(entries(&sent(&drain(&mut g, 5), 1)), None, "the pacer's burst is spent");
    let msgs = sent(&g.flush_all(at(5)), 1);
    assert_eq!(entries(&msgs), Some(1));
    assert_eq!(ack_of(&msgs[0]), Some(Ack { incarnation: P, seq: 1 }), "the owed ack rides along");
    assert!(g.flush_all(at(5)).is_empty(), "nothing owed any more");
}

#[test]
fn snapshot_chunks_reach_the_actors_as_one_batch_when_the_snapshot_ends_or_stalls() {
    let mut g = Gateway::new(config("z", &[("p", "p:6000")]), BytesMap::new(), at(0));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(0));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 10, 300) }, at(0));
    drain(&mut g, 0);
    let chunk = |range: std::ops::Range<u32>| {
        let mut d = BytesMap::new();
        for i in range {
            d.put(Bytes::from(format!("k{i:04}")), Bytes::from_static(b"v"), Timestamp::new(1, 0, 9));
        }
        SnapshotPiece::new(d)
    };
    // A delta inside a later chunk's range arrives first: that chunk is merged entry by entry.
    peer_delta(&mut g, 1, 1, &["k0150"], 0);
    assert!(drain(&mut g, 0).iter().any(|t| matches!(t, Transmit::FanOut(b) if b.delta.entry_count() == 1)));
    g.handle(Event::Chunk { conn: 1, id: 1, piece: chunk(0..100), total: 300, last: false }, at(10));
    assert!(!drain(&mut g, 500).iter().any(|t| matches!(t, Transmit::FanOut(_))), "held back");
    g.handle(Event::Chunk { conn: 1, id: 1, piece: chunk(100..200), total: 300, last: false }, at(600));
    let fanned: usize = drain(&mut g, 600)
        .iter()
        .map(|t| match t {
            Transmit::FanOut(b) => b.delta.entry_count(),
            _ => 0,
        })
        .sum();
    assert!(fanned <= 100, "the overlapping chunk's news may go at once: {fanned}");
    // Then the transfer stalls: after SNAPSHOT_STALL_MS the held entries go anyway.
    assert!(!drain(&mut g, 600 + SNAPSHOT_STALL_MS - 1).iter().any(|t| matches!(t, Transmit::FanOut(_))));
    let out = drain(&mut g, 600 + SNAPSHOT_STALL_MS);
    assert!(out.iter().any(|t| matches!(t, Transmit::FanOut(b) if b.delta.entry_count() == 100)), "{out:?}");
    assert_eq!(g.replica().entry_count(), 200);
}

#[test]
fn unacknowledged_deltas_are_sent_again_on_the_next_connection_and_not_after_an_ack() {
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    local(&mut g, &["a", "b"], 10, 0);
    assert_eq!(entries(&sent(&drain(&mut g, 0), 1)), Some(2));
    assert_eq!(g.unacked_for("p"), 1);
    // The connection dies with the delta in it: the next one carries it again.
    g.handle(Event::Disconnected { conn: 1 }, at(100));
    assert_eq!(g.pending_for("p"), 2);
    let out = connect(&mut g, 2, "p", 5_000);
    assert_eq!(entries(&sent(&out, 2)), Some(2));
    // Acknowledged: nothing to resend after the next drop.
    let ack = Ack { incarnation: ME, seq: 2 };
    g.handle(Event::Message { conn: 2, msg: PeerMsg::Ack { ack, root: Fingerprint::default() } }, at(5_100));
    assert_eq!(g.unacked_for("p"), 0);
    g.handle(Event::Disconnected { conn: 2 }, at(5_200));
    assert_eq!(g.pending_for("p"), 0);
}

#[test]
fn a_new_incarnation_resets_the_sequence_state_and_resends_everything_unacknowledged() {
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    peer_delta(&mut g, 1, 41, &["r"], 0);
    local(&mut g, &["x"], 10, 0);
    assert_eq!(
        ack_of(&deltas_and_acks(sent(&drain(&mut g, 0), 1))[0]),
        Some(Ack { incarnation: P, seq: 41 })
    );
    // The peer restarted (same id, new incarnation): a new connection replaces the old one
    // even though the old one still looks alive.
    g.handle(Event::Connected { conn: 2, peer: "p".into(), dialed: None }, at(1_000));
    g.handle(Event::Message { conn: 2, msg: hello("p", P + 1, 900, 3) }, at(1_000));
    let out = drain(&mut g, 1_000);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 1, why: CloseWhy::Replaced })));
    let msgs = deltas_and_acks(sent(&out, 2));
    assert_eq!(entries(&msgs), Some(1), "x again, never acknowledged by the new process");
    // Its acks for our earlier numbers under another incarnation of ours say nothing.
    let msg = PeerMsg::Delta {
        seq: 1,
        ack: Ack { incarnation: ME + 5, seq: 99 },
        root: Fingerprint::default(),
        more: false,
        entries: BytesMap::new(),
    };
    g.handle(Event::Message { conn: 2, msg }, at(1_100));
    assert_eq!(g.unacked_for("p"), 1);
    local(&mut g, &["y"], 11, 1_200);
    let msgs = deltas_and_acks(sent(&drain(&mut g, 1_200), 2));
    assert_eq!(
        ack_of(&msgs[0]),
        Some(Ack { incarnation: P + 1, seq: 1 }),
        "seq 1 of the new process is news"
    );
}

#[test]
fn an_ack_for_a_delta_never_sent_is_ignored() {
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    local(&mut g, &["a"], 10, 0);
    drain(&mut g, 0);
    assert_eq!(g.unacked_for("p"), 1);
    let bogus = Ack { incarnation: ME, seq: 1_000 };
    g.handle(
        Event::Message { conn: 1, msg: PeerMsg::Ack { ack: bogus, root: Fingerprint::default() } },
        at(10),
    );
    assert_eq!(g.unacked_for("p"), 1, "kept for a resend");
    g.handle(Event::Disconnected { conn: 1 }, at(20));
    assert_eq!(g.pending_for("p"), 1);
}

#[test]
fn unacked_batches_are_bounded_by_merging_the_oldest() {
    let mut g = gateway();
    connect(&mut g, 1, "p", 0);
    for i in 0..(3 * MAX_UNACKED as u64) {
        // Every batch rewrites "hot" and adds one key of its own.
        local(&mut g, &["hot", &format!("k{i:03}")], 10 + i, 1_000 * i);
        assert_eq!(entries(&sent(&drain(&mut g, 1_000 * i), 1)), Some(2));
        assert!(g.unacked_for("p") <= MAX_UNACKED);
    }
    assert_eq!(g.unacked_for("p"), MAX_UNACKED);
    g.handle(Event::Disconnected { conn: 1 }, at(1_000_000));
    assert_eq!(g.pending_for("p"), 1 + 3 * MAX_UNACKED, "hot once, and every key");
}

#[test]
fn a_member_unreachable_for_long_costs_bounded_memory_and_is_repaired_when_back() {
    let mut g = Gateway::new(config("m", &[("p", "p:6000")]), BytesMap::new(), at(0));
    let keys: Vec<String> = (0..MAX_PENDING_WHILE_DOWN + 1).map(|i| format!("k{i:06}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    local(&mut g, &refs, 10, 0);
    assert_eq!(g.pending_for("p"), 0, "dropped beyond the bound");
    local(&mut g, &["later"], 11, 1);
    assert_eq!(g.pending_for("p"), 0, "and nothing more is queued until it is back");
    let out = drain(&mut g, 0);
    assert!(out.iter().any(|t| matches!(t, Transmit::Notice(Notice::Dropped { .. }))));
    // When it is back, repair starts as soon as roots differ, without waiting.
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(10_000));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 0, 0) }, at(10_000));
    let out = drain(&mut g, 10_000);
    assert!(sent(&out, 1).iter().any(|m| matches!(m, PeerMsg::RepairGroups { .. })), "{out:?}");
}

#[test]
fn a_hello_claiming_another_id_or_speaking_another_version_is_refused() {
    let mut g = gateway();
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: None }, at(0));
    g.handle(Event::Message { conn: 1, msg: hello("q", P, 0, 0) }, at(0));
    let out = drain(&mut g, 0);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 1, why: CloseWhy::Protocol })));
    assert!(out.iter().any(|t| matches!(t, Transmit::Notice(Notice::WrongClaim { peer, claimed })
        if peer == "p" && claimed == "q")));
    assert_eq!(g.stats().peers_connected, 0);
    g.handle(Event::Connected { conn: 2, peer: "p".into(), dialed: None }, at(0));
    let PeerMsg::Hello(mut h) = hello("p", P, 0, 0) else { unreachable!() };
    h.version = PROTOCOL_VERSION + 1;
    g.handle(Event::Message { conn: 2, msg: PeerMsg::Hello(h) }, at(0));
    let out = drain(&mut g, 0);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 2, why: CloseWhy::Protocol })));
}

#[test]
fn a_connection_whose_peer_never_says_hello_is_closed() {
    let mut g = gateway();
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: None }, at(0));
    drain(&mut g, 0);
    assert_eq!(g.poll_timeout(), Some(HELLO_TIMEOUT_MS));
    let out = drain(&mut g, HELLO_TIMEOUT_MS);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 1, why: CloseWhy::Protocol })));
    assert!(g.members().iter().all(|m| m.node != "p"), "nothing kept of it");
}

#[test]
fn a_dial_that_reaches_this_node_is_closed_and_not_repeated() {
    let mut g = Gateway::new(config("m", &[("old", "m:6000")]), BytesMap::new(), at(0));
    let out = drain(&mut g, 0);
    assert!(out.iter().any(|t| matches!(t, Transmit::Dial { addr } if addr == "m:6000")));
    g.handle(Event::Connected { conn: 1, peer: "m".into(), dialed: Some("m:6000".into()) }, at(10));
    let out = drain(&mut g, 10);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 1, why: CloseWhy::Loop })));
    // Whoever was expected there is gone: this node has its address.
    let view = g.members();
    assert_eq!(view.iter().find(|v| v.node == "old").map(|v| v.status), Some(MemberStatus::Replaced));
    assert!(drain(&mut g, 100_000).iter().all(|t| !matches!(t, Transmit::Dial { .. })));
}

#[test]
fn of_two_connections_to_one_peer_both_sides_keep_the_one_the_smaller_id_dialled() {
    // "m" < "p": m keeps what m dialled, p keeps what m dialled too, whatever arrives first.
    for dialed_first in [true, false] {
        let mut m = gateway();
        let mut p = Gateway::new(config("p", &[]), BytesMap::new(), at(0));
        let (by_m, by_p) = (1, 2);
        let order = if dialed_first { [by_m, by_p] } else { [by_p, by_m] };
        for conn in order {
            let m_dialed = (conn == by_m).then(|| "p:6000".to_string());
            let p_dialed = (conn == by_p).then(|| "m:6000".to_string());
            m.handle(Event::Connected { conn, peer: "p".into(), dialed: m_dialed }, at(0));
            p.handle(Event::Connected { conn, peer: "m".into(), dialed: p_dialed }, at(0));
        }
        for conn in order {
            m.handle(Event::Message { conn, msg: hello("p", P, 200, 0) }, at(1));
            p.handle(Event::Message { conn, msg: hello("m", ME, 100, 0) }, at(1));
        }
        for (g, name) in [(&mut m, "m"), (&mut p, "p")] {
            let out = drain(g, 1);
            let closed: Vec<ConnId> = out
                .iter()
                .filter_map(|t| match t {
                    Transmit::Close { conn, why: CloseWhy::Replaced } => Some(*conn),
                    _ => None,
                })
                .collect();
            assert_eq!(closed, vec![by_p], "{name}, dialled first: {dialed_first}");
        }
    }
}

#[test]
fn the_newer_server_dials_and_a_newer_one_that_stays_away_is_dialled_too() {
    // Joins are dialled at once (they are older by definition).
    let mut g = Gateway::new(config("m", &[("p", "relay:1")]), BytesMap::new(), at(0));
    let out = drain(&mut g, 0);
    assert!(out.iter().any(|t| matches!(t, Transmit::Dial { addr } if addr == "relay:1")));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("relay:1".into()) }, at(10));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 50, 0) }, at(10));
    // q joined after us: it dials us.
    g.handle(Event::Connected { conn: 2, peer: "q".into(), dialed: None }, at(20));
    g.handle(Event::Message { conn: 2, msg: hello("q", P, 900, 0) }, at(20));
    drain(&mut g, 20);
    g.handle(Event::Disconnected { conn: 1 }, at(1_000));
    g.handle(Event::Disconnected { conn: 2 }, at(1_000));
    let out = drain(&mut g, 1_000);
    let dials: Vec<&str> = out
        .iter()
        .filter_map(|t| match t {
            Transmit::Dial { addr } => Some(addr.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(dials, vec!["relay:1"], "the older one is redialled at once, at the address we know");
    assert_eq!(g.poll_timeout(), Some(1_000 + DEFAULT_REDIAL_NEWER_MS));
    let out = drain(&mut g, 1_000 + DEFAULT_REDIAL_NEWER_MS);
    assert!(out.iter().any(|t| matches!(t, Transmit::Dial { addr } if addr == "q:6000")), "{out:?}");
}

#[test]
fn a_new_id_at_a_members_address_replaces_it_and_holds_nothing_back() {
    let mut g = Gateway::new(config("m", &[("p", "relay:1")]), BytesMap::new(), at(0));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("relay:1".into()) }, at(10));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 50, 0) }, at(10));
    g.handle(Event::Disconnected { conn: 1 }, at(1_000));
    local(&mut g, &["x"], 10, 1_100);
    assert_eq!(g.pending_for("p"), 1);
    // The redial reaches a new process with a new id: p restarted without its data.
    g.handle(Event::Connected { conn: 2, peer: "p2".into(), dialed: Some("relay:1".into()) }, at(2_000));
    g.handle(Event::Message { conn: 2, msg: hello("p2", P + 1, 1_900, 0) }, at(2_000));
    let out = drain(&mut g, 2_000);
    assert!(
        out.iter().any(
            |t| matches!(t, Transmit::Notice(Notice::Replaced { old, new }) if old == "p" && new == "p2")
        )
    );
    assert_eq!(g.pending_for("p"), 0, "nothing kept for the old id");
    let view = g.members();
    let status = |n: &str| view.iter().find(|v| v.node == n).map(|v| v.status);
    assert_eq!(status("p"), Some(MemberStatus::Replaced));
    assert_eq!(status("p2"), Some(MemberStatus::Connected));
    assert_eq!(status("m"), Some(MemberStatus::Myself));
    // The others learn it.
    let members = sent(&out, 2).into_iter().find_map(|m| match m {
        PeerMsg::Members(list) => Some(list),
        _ => None,
    });
    assert!(members.is_some_and(|l| l.iter().any(|i| i.node == "p" && i.state == MemberState::Replaced)));
}

#[test]
fn membership_spreads_so_a_partial_join_list_finds_everyone() {
    let mut g = Gateway::new(config("z", &[("p", "p:6000")]), BytesMap::new(), at(0));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(10));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 50, 0) }, at(10));
    drain(&mut g, 10);
    let list = vec![
        MemberInfo {
            node: "q".into(),
            peer: "q:6000".into(),
            started_ms: EPOCH + 60,
            state: MemberState::Active,
        },
        MemberInfo {
            node: "gone".into(),
            peer: "g:6000".into(),
            started_ms: EPOCH,
            state: MemberState::Forgotten,
        },
        MemberInfo { node: "bad id!".into(), peer: "x:1".into(), started_ms: 0, state: MemberState::Active },
    ];
    g.handle(Event::Message { conn: 1, msg: PeerMsg::Members(list) }, at(20));
    let out = drain(&mut g, 20);
    let dials: Vec<&str> = out
        .iter()
        .filter_map(|t| match t {
            Transmit::Dial { addr } => Some(addr.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(dials, vec!["q:6000"]);
    // A forgotten node that calls is refused.
    g.handle(Event::Connected { conn: 2, peer: "gone".into(), dialed: None }, at(30));
    let out = drain(&mut g, 30);
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { conn: 2, why: CloseWhy::Refused })));
    // Too long a list is a protocol violation.
    let list =
        vec![
            MemberInfo { node: "q".into(), peer: "q:6000".into(), started_ms: 0, state: MemberState::Active };
            MAX_MEMBERS + 1
        ];
    g.handle(Event::Message { conn: 1, msg: PeerMsg::Members(list) }, at(40));
    assert!(
        drain(&mut g, 40).iter().any(|t| matches!(t, Transmit::Close { conn: 1, why: CloseWhy::Protocol }))
    );
}

#[test]
fn forgetting_a_member_closes_it_stops_dialling_and_tells_the_others() {
    let mut g = Gateway::new(config("z", &[("p", "p:6000")]), BytesMap::new(), at(0));
    connect(&mut g, 1, "q", 0);
    drain(&mut g, 0);
    assert!(!g.forget("nobody"));
    g.handle(Event::Forget("p".into()), at(10));
    let out = drain(&mut g, 10);
    assert!(out.iter().any(|t| matches!(t, Transmit::StopDial { addr } if addr == "p:6000")));
    let told = sent(&out, 1).into_iter().any(|m| {
        matches!(m, PeerMsg::Members(l) if l.iter().any(|i| i.node == "p" && i.state == MemberState::Forgotten))
    });
    assert!(told);
    assert!(g.members().iter().all(|v| v.node != "p"), "CLUSTER NODES no longer lists it");
    local(&mut g, &["x"], 10, 20);
    assert_eq!(g.pending_for("p"), 0, "nothing queued for it");
}

#[test]
fn a_server_that_started_empty_pulls_one_snapshot_and_resumes_it_after_a_failure() {
    let mut g = Gateway::new(config("z", &[("p", "p:6000"), ("q", "q:6000")]), BytesMap::new(), at(0));
    assert!(g.loading());
    // An empty peer is no source; one with data is.
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(0));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 10, 100) }, at(0));
    g.handle(Event::Connected { conn: 2, peer: "q".into(), dialed: Some("q:6000".into()) }, at(0));
    g.handle(Event::Message { conn: 2, msg: hello("q", P, 20, 100) }, at(0));
    let out = drain(&mut g, 0);
    let requests: Vec<(ConnId, PeerMsg)> = [1, 2]
        .into_iter()
        .flat_map(|c| sent(&out, c).into_iter().map(move |m| (c, m)))
        .filter(|(_, m)| matches!(m, PeerMsg::SnapshotRequest { .. }))
        .collect();
    assert!(
        matches!(&requests[..], [(1, PeerMsg::SnapshotRequest { id: 1, after: None })]),
        "one snapshot, from the first peer: {requests:?}"
    );
    let chunk = |range: std::ops::Range<u32>| {
        let mut d = BytesMap::new();
        for i in range {
            d.put(Bytes::from(format!("k{i:04}")), Bytes::from_static(b"v"), Timestamp::new(1, 0, 9));
        }
        SnapshotPiece::new(d)
    };
    g.handle(Event::Chunk { conn: 1, id: 1, piece: chunk(0..50), total: 100, last: false }, at(10));
    assert!(g.loading());
    // The connection dies mid-transfer: what arrived goes to the actors, and the rest is asked
    // of the other peer.
    g.handle(Event::Disconnected { conn: 1 }, at(20));
    let out = drain(&mut g, 20);
    assert!(out.iter().any(|t| matches!(t, Transmit::FanOut(b) if b.delta.entry_count() == 50)));
    let after = sent(&out, 2).into_iter().find_map(|m| match m {
        PeerMsg::SnapshotRequest { id, after } => Some((id, after)),
        _ => None,
    });
    assert_eq!(after, Some((2, Some(Bytes::from_static(b"k0049")))));
    assert!(g.loading());
    // A late chunk of the first transfer is merged but changes nothing in the fill.
    g.handle(Event::Chunk { conn: 2, id: 1, piece: chunk(90..91), total: 100, last: true }, at(30));
    assert!(g.loading());
    g.handle(Event::Chunk { conn: 2, id: 2, piece: chunk(50..100), total: 100, last: true }, at(40));
    assert!(!g.loading());
    assert_eq!(g.replica().entry_count(), 100);
    assert_eq!(g.stats().fill_received, 100);
}

#[test]
fn a_stalled_snapshot_is_asked_for_again_and_an_empty_peer_ends_the_need() {
    let mut g = Gateway::new(config("z", &[("p", "p:6000")]), BytesMap::new(), at(0));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(0));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 10, 5) }, at(0));
    drain(&mut g, 0);
    let out = drain(&mut g, FILL_RETRY_MS);
    assert!(sent(&out, 1).iter().any(|m| matches!(m, PeerMsg::SnapshotRequest { id: 2, .. })), "{out:?}");
    // A server that meets only empty peers joined an empty cluster.
    let mut g = Gateway::new(config("z", &[("p", "p:6000")]), BytesMap::new(), at(0));
    g.handle(Event::Connected { conn: 1, peer: "p".into(), dialed: Some("p:6000".into()) }, at(0));
    g.handle(Event::Message { conn: 1, msg: hello("p", P, 10, 0) }, at(0));
    assert!(!g.loading());
    assert!(sent(&drain(&mut g, 0), 1).iter().all(|m| !matches!(m, PeerMsg::SnapshotRequest { .. })));
}

#[test]
fn a_snapshot_request_streams_the_replica_from_the_key_asked_for() {
    let mut data = BytesMap::new();
    for i in 0..10 {
        data.put(Bytes::from(format!("k{i}")), Bytes::from_static(b"v"), Timestamp::new(1, 0, 1));
    }
    let mut g = gateway_with(data);
    connect(&mut g, 1, "p", 0);
    let request = PeerMsg::SnapshotRequest { id: 4, after: Some(Bytes::from_static(b"k4")) };
    g.handle(Event::Message { conn: 1, msg: request }, at(0));
    assert!(g.wants_bulk(1));
    let mut got = Vec::new();
    while g.wants_bulk(1) {
        g.poll_bulk(1, at(0), |b| {
            got.push(b.to_msg());
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    let [PeerMsg::SnapshotChunk { id: 4, entries, total: 10, last: true }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(entries.entry_count(), 5);
}

/// Two gateways wired back to back, delivering every message at once.
fn exchange(a: &mut Gateway, b: &mut Gateway, conn: ConnId, t: u64) {
    for _ in 0..20 {
        let moved = one_way(a, b, conn, t) | one_way(b, a, conn, t);
        if !moved {
            return;
        }
    }
}

/// Delivers what `from` has to send; whether there was anything.
fn one_way(from: &mut Gateway, to: &mut Gateway, conn: ConnId, t: u64) -> bool {
    let mut moved = false;
    {
        {
            let out = drain(from, t);
            let mut bulk = Vec::new();
            while from.wants_bulk(conn) {
                from.poll_bulk(conn, at(t), |m| {
                    bulk.push(m.to_msg());
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            for msg in sent(&out, conn).into_iter().chain(bulk) {
                moved = true;
                to.handle(Event::Message { conn, msg }, at(t));
            }
        }
    }
    moved
}

fn pair(a_data: BytesMap, b_data: BytesMap) -> (Gateway, Gateway) {
    let mut a = Gateway::new(config("a", &[]), a_data, at(0));
    let mut b = Gateway::new(config("b", &[]), b_data, at(0));
    a.handle(Event::Connected { conn: 1, peer: "b".into(), dialed: None }, at(0));
    b.handle(Event::Connected { conn: 1, peer: "a".into(), dialed: Some("a:6000".into()) }, at(0));
    exchange(&mut a, &mut b, 1, 0);
    (a, b)
}

fn data(range: std::ops::Range<u32>, wall: u64) -> BytesMap {
    let mut d = BytesMap::new();
    for i in range {
        d.put(Bytes::from(format!("k{i:04}")), Bytes::from(format!("{wall}")), Timestamp::new(wall, 0, 1));
    }
    d
}

#[test]
fn replicas_that_agree_exchange_no_repair_traffic() {
    let (mut a, mut b) = pair(data(0..500, 1), data(0..500, 1));
    for t in (0..120_000).step_by(500) {
        exchange(&mut a, &mut b, 1, t);
    }
    assert_eq!(a.stats().repair_rounds + b.stats().repair_rounds, 0);
    assert_eq!(a.stats().sync.messages_sent + b.stats().sync.messages_sent, 0, "not even a root");
}

#[test]
fn replicas_that_diverged_converge_through_repair_without_new_writes() {
    // Each has entries the other lacks or holds older, with no delta to carry them.
    let mut a_data = data(0..400, 1);
    a_data.merge(&data(100..110, 5));
    let mut b_data = data(50..450, 1);
    b_data.merge(&data(200..205, 7));
    let (mut a, mut b) = pair(a_data.clone(), b_data.clone());
    let mut truth = a_data;
    truth.merge(&b_data);
    let mut t = 0;
    while a.replica() != &truth || b.replica() != &truth {
        t += 100;
        assert!(t < 60_000, "no convergence after {t} ms");
        exchange(&mut a, &mut b, 1, t);
    }
    assert_eq!(a.root(), b.root());
    // Only the differing keys travel: 115 of them (each side's version of a key both hold
    // goes both ways, the older one redundantly), not the buckets they sit in.
    let repaired = a.stats().repair_entries_received + b.stats().repair_entries_received;
    assert!((50 + 50 + 10 + 5..=50 + 50 + 2 * (10 + 5)).contains(&repaired), "{repaired}");
    assert!(t >= REPAIR_AFTER_MS, "rounds start only after roots differed for a while: {t}");
    assert_eq!(a.stats().repair_rounds, 1, "one round did it (a, the smaller id, started it)");
    // In sync: repair stops.
    let rounds = a.stats().repair_rounds;
    for t in (t..t + 60_000).step_by(500) {
        exchange(&mut a, &mut b, 1, t);
    }
    assert_eq!(a.stats().repair_rounds, rounds);
}

#[test]
fn buckets_still_changing_are_left_to_a_later_round() {
    // a holds an old entry b lacks (quiet), then takes a fresh one whose delta is lost just
    // before the first round: the round repairs the first and leaves the second for later.
    let mut a_data = data(0..100, 1);
    a_data.merge(&data(900..901, 1));
    let (mut a, mut b) = pair(a_data, data(0..100, 1));
    let old_bucket = a.digest.bucket_of(b"k0900");
    let fresh = (1000..2000)
        .map(|i| format!("k{i:04}"))
        .find(|k| a.digest.bucket_of(k.as_bytes()) != old_bucket)
        .expect("some key lands elsewhere");
    for t in (100..1_500).step_by(100) {
        exchange(&mut a, &mut b, 1, t);
    }
    a.handle(Event::Local(delta(&[&fresh], 9)), at(1_500));
    drain(&mut a, 1_500); // the delta is lost on the way
    let mut t = 1_500;
    while b.replica().entry_count() < 101 {
        t += 100;
        assert!(t < 60_000);
        exchange(&mut a, &mut b, 1, t);
    }
    assert!(b.replica().get(&b"k0900"[..]).is_some(), "the quiet bucket first");
    assert!(b.replica().get(fresh.as_bytes()).is_none(), "the fresh one waits");
    assert!(t < 1_500 + QUIET_MS);
    while b.replica().entry_count() < 102 {
        t += 100;
        assert!(t < 60_000);
        exchange(&mut a, &mut b, 1, t);
    }
    assert!(t >= 1_500 + QUIET_MS);
    assert_eq!(a.root(), b.root());
}

/// What `g` fans out to its actors at `t`: the entry counts of its batches.
fn fanned_out(g: &mut Gateway, t: u64) -> Vec<usize> {
    drain(g, t)
        .iter()
        .filter_map(|t| match t {
            Transmit::FanOut(b) => Some(b.delta.entry_count()),
            _ => None,
        })
        .collect()
}

/// A batch of writes larger than one frame: two keys far apart, 600 KiB each.
fn large_batch(wall: u64) -> Arc<BytesMap> {
    let mut d = BytesMap::new();
    for k in ["a-first", "z-last"] {
        d.put(
            Bytes::from_static(k.as_bytes()),
            Bytes::from(vec![b'v'; 600 << 10]),
            Timestamp::new(wall, 0, 1),
        );
    }
    Arc::new(d)
}

#[test]
fn a_batch_split_across_frames_is_merged_and_fanned_out_whole() {
    let (mut a, mut b) = pair(BytesMap::new(), BytesMap::new());
    exchange(&mut a, &mut b, 1, 0);
    a.handle(Event::Local(large_batch(10)), at(1_000));
    let msgs = deltas_and_acks(sent(&drain(&mut a, 1_000), 1));
    let more: Vec<bool> = msgs
        .iter()
        .filter_map(|m| match m {
            PeerMsg::Delta { more, .. } => Some(*more),
            _ => None,
        })
        .collect();
    assert_eq!(more, [true, false], "two frames, the first saying more follow");
    let [first, last] = <[PeerMsg; 2]>::try_from(msgs).unwrap();
    b.handle(Event::Message { conn: 1, msg: first }, at(1_010));
    assert_eq!(b.replica().entry_count(), 0, "the first piece waits for the last");
    assert!(fanned_out(&mut b, 2_000).is_empty(), "nothing reaches the actors in part");
    assert!(
        !deltas_and_acks(sent(&drain(&mut b, 3_000), 1)).iter().any(|m| ack_of(m).is_some_and(|a| a.seq > 0)),
        "an incomplete flush is not acknowledged"
    );
    b.handle(Event::Message { conn: 1, msg: last }, at(3_010));
    assert_eq!(b.replica().entry_count(), 2);
    assert_eq!(fanned_out(&mut b, 4_000), [2], "both writes in one batch");
}

#[test]
fn the_pieces_of_a_flush_cut_by_a_failure_are_kept() {
    let (mut a, mut b) = pair(BytesMap::new(), BytesMap::new());
    a.handle(Event::Local(large_batch(10)), at(1_000));
    let first = deltas_and_acks(sent(&drain(&mut a, 1_000), 1)).swap_remove(0);
    b.handle(Event::Message { conn: 1, msg: first }, at(1_010));
    assert_eq!(b.replica().entry_count(), 0);
    // The connection ends before the last piece: what arrived is good data, merged at once
    // (the sender may never come back).
    b.handle(Event::Disconnected { conn: 1 }, at(1_020));
    assert_eq!(b.replica().entry_count(), 1);
    // A peer that never ends its flush is not held for without bound.
    let (mut a, mut b) = pair(BytesMap::new(), BytesMap::new());
    exchange(&mut a, &mut b, 1, 0);
    for seq in 1..=link::MAX_HELD_PIECES as u64 + 1 {
        let mut d = BytesMap::new();
        d.put(Bytes::from(format!("k{seq:03}")), Bytes::from_static(b"v"), Timestamp::new(5, 0, 1));
        let msg =
            PeerMsg::Delta { seq, ack: Ack::default(), root: Fingerprint::default(), more: true, entries: d };
        b.handle(Event::Message { conn: 1, msg }, at(2_000));
    }
    assert_eq!(b.replica().entry_count(), link::MAX_HELD_PIECES + 1);
}
