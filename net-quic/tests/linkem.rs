//! QUIC through the link emulator: wide-area delay, loss, duplication and reordering,
//! partitions, and a peer restart noticed at once thanks to a stable endpoint secret.

mod common;

use std::time::{Duration, Instant};

use common::*;
use net_quic::{
    Backoff, EndpointOptions, FrameReceiver, FrameSender, LinkConfig, LinkEmulator, PeerConnection,
    PeerEndpoint, StreamClass,
};

const LIMIT: Duration = Duration::from_secs(15);

fn relay_to(target: &PeerEndpoint, config: LinkConfig) -> LinkEmulator {
    LinkEmulator::start(loopback(), target.local_addr().unwrap(), config).unwrap()
}

/// Opens a control stream each way and exchanges one message, so both streams exist.
async fn control_streams(
    ab: &PeerConnection,
    ba: &PeerConnection,
) -> ((FrameSender<Msg>, FrameReceiver<Msg>), (FrameSender<Msg>, FrameReceiver<Msg>)) {
    let mut a_tx = ab.open_stream::<Msg>(StreamClass::Control).await.unwrap();
    let mut b_tx = ba.open_stream::<Msg>(StreamClass::Control).await.unwrap();
    a_tx.send(&Msg::Ping(0)).await.unwrap();
    b_tx.send(&Msg::Pong(0)).await.unwrap();
    let mut a_rx = ab.accept_stream::<Msg>().await.unwrap();
    let mut b_rx = ba.accept_stream::<Msg>().await.unwrap();
    assert_eq!(b_rx.recv().await.unwrap(), Some(Msg::Ping(0)));
    assert_eq!(a_rx.recv().await.unwrap(), Some(Msg::Pong(0)));
    ((a_tx, a_rx), (b_tx, b_rx))
}

#[tokio::test]
async fn round_trip_at_200ms_one_way_takes_400_to_600ms() {
    let (_dir, cluster) = cluster("linkem-rtt");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    let relay = relay_to(&b, LinkConfig::with_delay(Duration::from_millis(200)));
    within(LIMIT, async {
        let (ab, ba) = connect_pair_via(&a, &b, relay.local_addr()).await;
        let ((mut a_tx, mut a_rx), (mut b_tx, mut b_rx)) = control_streams(&ab, &ba).await;
        for i in 1..=3 {
            let start = Instant::now();
            a_tx.send(&Msg::Ping(i)).await.unwrap();
            assert_eq!(b_rx.recv().await.unwrap(), Some(Msg::Ping(i)));
            b_tx.send(&Msg::Pong(i)).await.unwrap();
            assert_eq!(a_rx.recv().await.unwrap(), Some(Msg::Pong(i)));
            let rtt = start.elapsed();
            assert!(rtt >= Duration::from_millis(400), "round trip {rtt:?}");
            assert!(rtt < Duration::from_millis(600), "round trip {rtt:?}");
        }
        assert!(ab.rtt() >= Duration::from_millis(390), "quinn's estimate {:?}", ab.rtt());
    })
    .await;
}

#[tokio::test]
async fn messages_arrive_through_5_percent_loss() {
    let (_dir, cluster) = cluster("linkem-loss");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    let config = LinkConfig { delay: Duration::from_millis(5), loss: 0.05, seed: 3, ..Default::default() };
    let relay = relay_to(&b, config);
    within(LIMIT, async {
        let (ab, ba) = connect_pair_via(&a, &b, relay.local_addr()).await;
        let ((mut a_tx, mut a_rx), (mut b_tx, mut b_rx)) = control_streams(&ab, &ba).await;
        let chunk = Msg::Chunk { index: 1, data: Blob(vec![7; 200_000]) };
        let send = async {
            for seq in 0..300 {
                a_tx.send(&delta(seq)).await.unwrap();
                b_tx.send(&delta(seq)).await.unwrap();
            }
            a_tx.send(&chunk).await.unwrap();
        };
        let receive = async {
            for seq in 0..300 {
                assert_eq!(b_rx.recv().await.unwrap(), Some(delta(seq)));
                assert_eq!(a_rx.recv().await.unwrap(), Some(delta(seq)));
            }
            assert_eq!(b_rx.recv().await.unwrap().as_ref(), Some(&chunk));
        };
        tokio::join!(send, receive);
    })
    .await;
    assert!(relay.stats().packets_dropped > 0, "{:?}", relay.stats());
}

#[tokio::test]
async fn duplication_and_reordering_are_invisible() {
    let (_dir, cluster) = cluster("linkem-dup");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    let config = LinkConfig {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        duplicate: 0.1,
        reorder: 0.1,
        seed: 9,
        ..Default::default()
    };
    let relay = relay_to(&b, config);
    within(LIMIT, async {
        let (ab, ba) = connect_pair_via(&a, &b, relay.local_addr()).await;
        let ((mut a_tx, _a_rx), (_b_tx, mut b_rx)) = control_streams(&ab, &ba).await;
        let send = async {
            for seq in 0..500 {
                a_tx.send(&delta(seq)).await.unwrap();
            }
        };
        let receive = async {
            for seq in 0..500 {
                assert_eq!(b_rx.recv().await.unwrap(), Some(delta(seq)));
            }
        };
        tokio::join!(send, receive);
    })
    .await;
    let stats = relay.stats();
    assert!(stats.packets_duplicated > 0 && stats.packets_reordered > 0, "{stats:?}");
}

#[tokio::test]
async fn cut_stops_traffic_and_heal_resumes_the_connection() {
    let (_dir, cluster) = cluster("linkem-cut");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    let relay = relay_to(&b, LinkConfig::with_delay(Duration::from_millis(10)));
    within(LIMIT, async {
        let (ab, ba) = connect_pair_via(&a, &b, relay.local_addr()).await;
        let ((mut a_tx, _a_rx), (_b_tx, mut b_rx)) = control_streams(&ab, &ba).await;

        relay.cut();
        // Let a packet that was being released at the moment of the cut be counted.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let forwarded = relay.stats().packets_forwarded;
        for seq in 0..10 {
            a_tx.send(&delta(seq)).await.unwrap();
        }
        let during_cut = tokio::time::timeout(Duration::from_millis(1_500), b_rx.recv()).await;
        assert!(during_cut.is_err(), "nothing crosses a cut link");
        assert_eq!(relay.stats().packets_forwarded, forwarded);
        assert!(relay.stats().packets_dropped > 0);

        relay.heal();
        let healed = Instant::now();
        for seq in 0..10 {
            assert_eq!(b_rx.recv().await.unwrap(), Some(delta(seq)));
        }
        // QUIC's probe timeout has backed off during the cut; it retransmits within ~2 s.
        assert!(healed.elapsed() < Duration::from_secs(4), "{:?}", healed.elapsed());
        assert!(!ab.is_closed() && !ba.is_closed());
    })
    .await;
}

/// A peer that restarts behind a partition (its close never arrives) with the same endpoint
/// secret answers the first packet of the old connection with a stateless reset: the old
/// connection fails at once instead of at the 15 s idle timeout, and a reconnection with
/// backoff reaches the new process.
#[tokio::test]
async fn restarted_peer_is_noticed_at_once_and_reconnected() {
    let (_dir, cluster) = cluster("linkem-restart");
    let a = endpoint(&cluster, "a1");
    let b_options = EndpointOptions { secret: Some(cluster.endpoint_secret("b")), ..Default::default() };
    let b = endpoint_with(&cluster, "b2", &b_options);
    let b_addr = b.local_addr().unwrap();
    let relay = relay_to(&b, LinkConfig::with_delay(Duration::from_millis(5)));
    within(LIMIT, async {
        let (ab, ba) = connect_pair_via(&a, &b, relay.local_addr()).await;
        let ((mut a_tx, _a_rx), b_streams) = control_streams(&ab, &ba).await;

        // "Crash" b: its close is lost in the partition; wait until its socket is released.
        relay.cut();
        drop((ba, b_streams));
        b.close(net_quic::CloseReason::Shutdown);
        b.wait_idle().await;
        drop(b);
        let b2_identity = cluster.mint_node("b2").unwrap();
        let b2 = loop {
            match PeerEndpoint::bind(b_addr, &b2_identity, &b_options) {
                Ok(endpoint) => break endpoint,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        relay.heal();

        let start = Instant::now();
        let _ = a_tx.send(&Msg::Ping(1)).await;
        let reason = ab.closed().await;
        assert!(reason.reset, "{reason}");
        assert!(start.elapsed() < Duration::from_secs(2), "noticed after {:?}", start.elapsed());

        let mut backoff = Backoff::with_seed(4);
        let (dialled, accepted) = tokio::join!(
            a.connect_with_backoff(
                relay.local_addr(),
                Some("b2"),
                &mut backoff,
                std::future::pending(),
                |_| {}
            ),
            b2.accept()
        );
        let dialled = dialled.unwrap();
        let accepted = accepted.unwrap().unwrap();
        control_streams(&dialled, &accepted).await;
    })
    .await;
}
