//! Two endpoints in one process on loopback: framed exchange on both stream classes, mutual
//! authentication by the cluster CA, bad frames, graceful close.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use net_quic::{Backoff, CloseReason, ConnectError, EndpointOptions, FrameError, StreamClass};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exchange_on_control_and_bulk_streams_both_ways() {
    let (_dir, cluster) = cluster("exchange");
    let a = endpoint(&cluster, "aa01");
    let b = endpoint(&cluster, "bb02");
    within(LIMIT, async {
        let (ab, ba) = connect_pair(&a, &b).await;

        // Each side opens one stream per class and sends on it.
        let mut senders = Vec::new();
        for (conn, from) in [(&ab, 1_000u64), (&ba, 2_000u64)] {
            let mut control = conn.open_stream::<Msg>(StreamClass::Control).await.unwrap();
            let mut bulk = conn.open_stream::<Msg>(StreamClass::Bulk).await.unwrap();
            for i in 0..50 {
                control.send(&delta(from + i)).await.unwrap();
            }
            let batch: Vec<Msg> = (0..50).map(|i| delta(from + 50 + i)).collect();
            control.send_batch(&batch).await.unwrap();
            for index in 0..4 {
                let chunk = Msg::Chunk { index, data: Blob(vec![index as u8; 300_000]) };
                bulk.send(&chunk).await.unwrap();
            }
            assert_eq!(control.frames_sent(), 100);
            senders.push((control, bulk));
        }

        // Receivers stay alive until the senders have finished: dropping a receive stream
        // early tells the sender it was stopped.
        let mut receivers = Vec::new();
        for (conn, from) in [(&ba, 1_000u64), (&ab, 2_000u64)] {
            let mut control_seen = 0;
            let mut bulk_seen = 0;
            for _ in 0..2 {
                receivers.push(conn.accept_stream::<Msg>().await.unwrap());
                let rx = receivers.last_mut().unwrap();
                match rx.class() {
                    StreamClass::Control => {
                        for i in 0..100 {
                            assert_eq!(rx.recv().await.unwrap(), Some(delta(from + i)));
                        }
                        control_seen += 1;
                    }
                    StreamClass::Bulk => {
                        for index in 0..4 {
                            let Some(Msg::Chunk { index: got, data }) = rx.recv().await.unwrap() else {
                                panic!("expected a chunk");
                            };
                            assert_eq!(got, index);
                            assert!(data.0.iter().all(|&b| b == index as u8));
                        }
                        assert!(rx.bytes_received() > 1_200_000);
                        bulk_seen += 1;
                    }
                }
            }
            assert_eq!((control_seen, bulk_seen), (1, 1));
        }

        // Counters agree on both ends: payload bytes, no headers.
        for (control, bulk) in senders {
            assert!(control.bytes_sent() > 100 * 20 && control.bytes_sent() < 100 * 40);
            assert!(bulk.bytes_sent() > 4 * 300_000 && bulk.bytes_sent() < 4 * 300_100);
            control.finish_and_wait().await.unwrap();
            bulk.finish_and_wait().await.unwrap();
        }
        for mut rx in receivers {
            assert_eq!(rx.recv().await.unwrap(), None, "clean end of stream");
        }
    })
    .await;
}

/// A client whose certificate was signed by another CA but which trusts ours (so only the
/// server's check can stop it), claiming a legitimate node's name.
fn foreign_client_config(
    trusted_ca: &rustls_pki_types::CertificateDer<'static>,
    claimed_node: &str,
) -> quinn::ClientConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cmud-kv cluster CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{claimed_node}.cmud-kv.internal")]).unwrap();
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted_ca.clone()).unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    tls.alpn_protocols = vec![net_quic::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()))
}

#[tokio::test]
async fn foreign_client_is_refused_by_the_server() {
    let (_dir, cluster) = cluster("foreign-client");
    let server = endpoint(&cluster, "5e4e");
    let server_addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let config = foreign_client_config(cluster.ca_cert_der(), "c1c1");

    within(LIMIT, async {
        let attempt = async {
            let connecting = client.connect_with(config, server_addr, "5e4e.cmud-kv.internal").unwrap();
            let connection = match connecting.await {
                Ok(connection) => connection,
                Err(e) => return e.to_string(),
            };
            // TLS 1.3: the client may finish before the server rejects its certificate. It
            // must not get anything through: the stream dies with the connection.
            if let Ok(mut stream) = connection.open_uni().await {
                let _ = stream.write_all(&[StreamClass::Control.tag(), 0, 0, 0, 1, 0xc0]).await;
                let _ = stream.finish();
            }
            connection.closed().await.to_string()
        };
        let (client_result, accepted) = tokio::join!(attempt, server.accept());
        let accepted = accepted.expect("endpoint open");
        assert!(matches!(accepted, Err(ConnectError::Handshake(_))), "server must refuse: {accepted:?}");
        assert!(client_result.contains("certificate"), "{client_result}");
    })
    .await;
}

#[tokio::test]
async fn foreign_server_is_refused_by_the_client() {
    let (_dir1, ours) = cluster("foreign-server-1");
    let (_dir2, foreign) = cluster("foreign-server-2");
    let client = endpoint(&ours, "c0c0");
    let server = endpoint(&foreign, "f00d");
    within(LIMIT, async {
        let (dialled, accepted) =
            tokio::join!(client.connect(server.local_addr().unwrap(), Some("f00d")), server.accept());
        let err = dialled.unwrap_err();
        assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(accepted.expect("endpoint open").is_err(), "foreign server got no connection");
    })
    .await;
}

#[tokio::test]
async fn wrong_expected_node_id_fails() {
    let (_dir, cluster) = cluster("wrong-id");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    within(LIMIT, async {
        let (dialled, accepted) = tokio::join!(a.connect(b.local_addr().unwrap(), Some("b3")), b.accept());
        let err = dialled.unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        assert!(accepted.expect("endpoint open").is_err());

        let invalid = a.connect(b.local_addr().unwrap(), Some("B2")).await.unwrap_err();
        assert!(matches!(invalid, ConnectError::InvalidNodeId(_)), "{invalid}");
    })
    .await;
}

#[tokio::test]
async fn dialling_an_address_takes_whichever_node_of_the_cluster_answers_there() {
    let (_dir2, foreign) = cluster("any-node-foreign");
    let (_dir, ours) = cluster("any-node");
    let a = endpoint(&ours, "a1");
    let b = endpoint(&ours, "b2");
    let stranger = endpoint(&foreign, "c3");
    within(LIMIT, async {
        let (dialled, accepted) = tokio::join!(a.connect(b.local_addr().unwrap(), None), b.accept());
        assert_eq!(dialled.unwrap().peer_node_id(), "b2", "known by its certificate");
        assert_eq!(accepted.unwrap().unwrap().peer_node_id(), "a1");
        // A server of another cluster is refused all the same.
        let (dialled, accepted) =
            tokio::join!(a.connect(stranger.local_addr().unwrap(), None), stranger.accept());
        let err = dialled.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(accepted.expect("endpoint open").is_err());
    })
    .await;
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let (_dir, cluster) = cluster("oversized");
    let server_options = EndpointOptions { max_frame: 64 * 1024, ..EndpointOptions::default() };
    let server = endpoint_with(&cluster, "5e", &server_options);
    let bad = endpoint(&cluster, "bad0");
    let good = endpoint(&cluster, "900d");
    within(LIMIT, async {
        let (bad_conn, server_bad) = connect_pair(&bad, &server).await;
        let (good_conn, server_good) = connect_pair(&good, &server).await;

        let mut tx = bad_conn.open_stream::<Msg>(StreamClass::Bulk).await.unwrap();
        tx.set_max_frame(1024 * 1024);
        tx.send(&Msg::Chunk { index: 0, data: Blob(vec![1; 100_000]) }).await.unwrap();
        let mut rx = server_bad.accept_stream::<Msg>().await.unwrap();
        let err = rx.recv().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, max: 65_536 } if len > 100_000), "{err}");
        assert!(err.is_protocol_violation());
        server_bad.close(CloseReason::Protocol);
        let reason = bad_conn.closed().await;
        assert_eq!(reason.reason, Some(CloseReason::Protocol), "{reason}");

        // The other connection is untouched.
        let mut tx = good_conn.open_stream::<Msg>(StreamClass::Control).await.unwrap();
        tx.send(&Msg::Ping(7)).await.unwrap();
        let mut rx = server_good.accept_stream::<Msg>().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(Msg::Ping(7)));
        let mut back = server_good.open_stream::<Msg>(StreamClass::Control).await.unwrap();
        back.send(&Msg::Pong(7)).await.unwrap();
        let mut rx = good_conn.accept_stream::<Msg>().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(Msg::Pong(7)));
        assert!(!server_good.is_closed());

        // A sender refuses to send over its own limit, and sends nothing.
        let mut small = good_conn.open_stream::<Msg>(StreamClass::Bulk).await.unwrap();
        let refused = small.send(&Msg::Chunk { index: 1, data: Blob(vec![0; 5_000_000]) }).await;
        assert!(matches!(refused, Err(FrameError::TooLarge { .. })));
        assert_eq!(small.bytes_sent(), 0);
    })
    .await;
}

#[tokio::test]
async fn garbage_on_a_stream_is_a_frame_error() {
    let (_dir, cluster) = cluster("garbage");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    within(LIMIT, async {
        let (ab, ba) = connect_pair(&a, &b).await;
        let raw = ab.quinn_connection();

        // Undecodable payload, then a valid frame: the error does not desynchronise the stream.
        let mut s = raw.open_uni().await.unwrap();
        let mut bytes = vec![StreamClass::Control.tag(), 0, 0, 0, 3, 0xc1, 0xc1, 0xc1];
        net_quic::encode_frame(&Msg::Ping(1), 1024, &mut bytes).unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
        let mut rx = ba.accept_stream::<Msg>().await.unwrap();
        assert!(matches!(rx.recv().await, Err(FrameError::Decode(_))));
        assert_eq!(rx.recv().await.unwrap(), Some(Msg::Ping(1)));
        assert_eq!(rx.recv().await.unwrap(), None);

        // A valid value of the wrong type.
        let mut s = raw.open_uni().await.unwrap();
        let mut bytes = vec![StreamClass::Control.tag()];
        net_quic::encode_frame(&"not a message", 1024, &mut bytes).unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
        let mut rx = ba.accept_stream::<Msg>().await.unwrap();
        assert!(matches!(rx.recv().await, Err(FrameError::Decode(_))));

        // Stream cut inside a frame.
        let mut s = raw.open_uni().await.unwrap();
        s.write_all(&[StreamClass::Bulk.tag(), 0, 0, 0, 10, 1, 2, 3]).await.unwrap();
        s.finish().unwrap();
        let mut rx = ba.accept_stream::<Msg>().await.unwrap();
        assert_eq!(rx.class(), StreamClass::Bulk);
        assert!(matches!(rx.recv().await, Err(FrameError::Truncated)));

        // Unknown class tag, and a stream finished before its tag.
        let mut s = raw.open_uni().await.unwrap();
        s.write_all(&[0x7f, 1, 2, 3]).await.unwrap();
        let err = ba.accept_stream::<Msg>().await.unwrap_err();
        assert!(matches!(err, FrameError::UnknownClass(0x7f)), "{err}");
        let mut s = raw.open_uni().await.unwrap();
        s.finish().unwrap();
        // A stream with no byte at all is invisible until finished; accept sees it then.
        let err = ba.accept_stream::<Msg>().await.unwrap_err();
        assert!(matches!(err, FrameError::MissingTag), "{err}");

        // None of that closed the connection.
        let mut tx = ab.open_stream::<Msg>(StreamClass::Control).await.unwrap();
        tx.send(&Msg::Ping(2)).await.unwrap();
        let mut rx = ba.accept_stream::<Msg>().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(Msg::Ping(2)));
    })
    .await;
}

#[tokio::test]
async fn finish_and_wait_then_close_loses_nothing() {
    let (_dir, cluster) = cluster("graceful");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    within(LIMIT, async {
        let (ab, ba) = connect_pair(&a, &b).await;
        let mut tx = ab.open_stream::<Msg>(StreamClass::Control).await.unwrap();
        let mut bulk = ab.open_stream::<Msg>(StreamClass::Bulk).await.unwrap();
        for seq in 0..2_000 {
            tx.send(&delta(seq)).await.unwrap();
        }
        bulk.send(&Msg::Chunk { index: 9, data: Blob(vec![9; 2_000_000]) }).await.unwrap();
        tx.finish_and_wait().await.unwrap();
        bulk.finish_and_wait().await.unwrap();
        ab.close(CloseReason::Shutdown);
        drop(ab);

        // The receiver only starts reading after the sender has closed.
        let reason = ba.closed().await;
        assert_eq!(reason.reason, Some(CloseReason::Shutdown));
        let mut got = 0;
        for _ in 0..2 {
            let mut rx = ba.accept_stream::<Msg>().await.unwrap();
            while let Some(msg) = rx.recv().await.unwrap() {
                match msg {
                    Msg::Delta { seq, .. } => {
                        assert_eq!(seq, got);
                        got += 1;
                    }
                    Msg::Chunk { data, .. } => assert_eq!(data.0.len(), 2_000_000),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(got, 2_000);
    })
    .await;
}

#[tokio::test]
async fn accept_is_not_blocked_by_a_silent_client() {
    let (_dir, cluster) = cluster("silent");
    let server = endpoint(&cluster, "5e");
    let a = endpoint(&cluster, "a1");
    let server_addr = server.local_addr().unwrap();
    within(LIMIT, async {
        // A client whose first packet reaches the server and nothing after it: a one-shot
        // relay forwards its Initial, then goes quiet, so that handshake stalls.
        let relay = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let silent = quinn::Endpoint::client(loopback()).unwrap();
        let _stalled = silent
            .connect_with(
                foreign_client_config(cluster.ca_cert_der(), "dead"),
                relay.local_addr().unwrap(),
                "5e.cmud-kv.internal",
            )
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) = relay.recv_from(&mut buf).await.unwrap();
        relay.send_to(&buf[..n], server_addr).await.unwrap();
        // Let the server register the stalled handshake first.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let (dialled, accepted) = tokio::join!(a.connect(server_addr, Some("5e")), server.accept());
        dialled.unwrap();
        assert_eq!(accepted.unwrap().unwrap().peer_node_id(), "a1");
    })
    .await;
}

#[tokio::test]
async fn backoff_retries_until_the_peer_appears_and_stops_on_shutdown() {
    let (_dir, cluster) = cluster("backoff");
    let fast = EndpointOptions { connect_timeout: Duration::from_millis(200), ..Default::default() };
    let a = endpoint_with(&cluster, "a1", &fast);
    within(LIMIT, async {
        // Nobody there: shutdown ends the loop.
        let nowhere = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut backoff = Backoff::with_seed(1);
        let start = Instant::now();
        let none = a
            .connect_with_backoff(
                nowhere,
                Some("b2"),
                &mut backoff,
                tokio::time::sleep(Duration::from_millis(300)),
                |_| {},
            )
            .await;
        assert!(none.is_none());
        assert!(start.elapsed() < Duration::from_millis(400));

        // The peer appears at that address while the loop is retrying.
        let b_identity = cluster.mint_node("b2").unwrap();
        let appear = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let b = net_quic::PeerEndpoint::bind(nowhere, &b_identity, &EndpointOptions::default()).unwrap();
            // Initial packets of attempts that timed out may arrive first: those fail.
            let accepted = loop {
                if let Ok(connection) = b.accept().await.unwrap() {
                    break connection;
                }
            };
            (b, accepted)
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200), 2);
        let (dialled, (_b, accepted)) = tokio::join!(
            a.connect_with_backoff(nowhere, Some("b2"), &mut backoff, std::future::pending(), |_| {}),
            appear
        );
        let dialled = dialled.expect("connected");
        assert_eq!(dialled.peer_node_id(), "b2");
        assert_eq!(accepted.peer_node_id(), "a1");
    })
    .await;
}

/// Loopback bulk rate of one Bulk stream: 100 MB in frames of ~1 MiB. Release builds only:
/// `cargo test --release -p net-quic --all-features -- --ignored bulk_rate --nocapture`.
#[tokio::test]
#[ignore = "benchmark; run in release mode"]
async fn bulk_rate() {
    const TOTAL: usize = 100 * 1000 * 1000;
    const FRAME: usize = 1024 * 1024 - 64;
    let (_dir, cluster) = cluster("bulk-rate");
    let a = endpoint(&cluster, "a1");
    let b = endpoint(&cluster, "b2");
    let (ab, ba) = connect_pair(&a, &b).await;
    let frames = TOTAL.div_ceil(FRAME);
    let chunk = Msg::Chunk { index: 0, data: Blob(vec![0x5a; FRAME]) };
    let start = Instant::now();
    let send = async {
        let mut tx = ab.open_stream::<Msg>(StreamClass::Bulk).await.unwrap();
        for _ in 0..frames {
            tx.send(&chunk).await.unwrap();
        }
        tx.finish_and_wait().await.unwrap();
    };
    let recv = async {
        let mut rx = ba.accept_stream::<Msg>().await.unwrap();
        let mut n = 0;
        while let Some(msg) = rx.recv().await.unwrap() {
            assert!(matches!(msg, Msg::Chunk { .. }));
            n += 1;
        }
        (n, rx.bytes_received())
    };
    let ((), (n, bytes)) = tokio::join!(send, recv);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, frames);
    println!(
        "bulk_rate: {:.1} MB in {} frames of {} B over one Bulk stream on loopback: {:.3} s, \
         {:.0} MB/s",
        bytes as f64 / 1e6,
        frames,
        FRAME,
        secs,
        bytes as f64 / 1e6 / secs
    );
}
