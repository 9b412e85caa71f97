//! A client session driven with byte slices: no socket, no clock.

use std::io::{self, Read, Write};
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use replica_core::Now;
use resp::Value;

use super::{ClientConn, MAX_BUFFERED, OUTPUT_WATERMARK, Refusal};
use crate::command::testutil::Harness;

const LIMIT: usize = 64 * 1024 * 1024;

fn now(ms: u64) -> Now {
    Now { wall_ms: 1_700_000_000_000 + ms, mono_ms: ms }
}

fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::encode_command(&mut out, args);
    out
}

/// Every reply `conn` has ready, parsed.
fn drain(conn: &mut ClientConn) -> Vec<Value> {
    let mut bytes = Vec::new();
    conn.write_to(&mut bytes, 0).expect("a Vec takes everything");
    let mut buf = BytesMut::from(&bytes[..]);
    let mut values = Vec::new();
    while let Some(v) = resp::parse_value(&mut buf).expect("valid replies") {
        values.push(v);
    }
    assert!(buf.is_empty(), "a reply cut short");
    values
}

fn pong() -> Value {
    Value::Simple("PONG".into())
}

#[test]
fn pipelined_requests_in_any_split_get_their_replies_in_order() {
    let mut stream = Vec::new();
    stream.extend(request(&[b"SET", b"k", b"v"]));
    stream.extend(b"PING\r\n");
    stream.extend(request(&[b"GET", b"k"]));
    stream.extend(request(&[b"GET", b"nope"]));
    for split in [1, 2, 3, 7, stream.len()] {
        let mut h = Harness::new();
        let mut conn = ClientConn::new(1, LIMIT, 0);
        let mut replies = Vec::new();
        for chunk in stream.chunks(split) {
            conn.feed(chunk, 0);
            conn.process(&mut h.actor, now(1), usize::MAX);
            replies.extend(drain(&mut conn));
        }
        assert_eq!(
            replies,
            [Value::Simple("OK".into()), pong(), Value::Bulk(Bytes::from_static(b"v")), Value::Nil],
            "split {split}"
        );
        assert!(conn.wants_read() && !conn.wants_write() && !conn.is_finished());
    }
}

#[test]
fn process_runs_at_most_its_budget_and_says_when_work_is_left() {
    let mut h = Harness::new();
    let mut conn = ClientConn::new(1, LIMIT, 0);
    conn.feed(&b"PING\r\n".repeat(25), 0);
    assert_eq!(conn.process(&mut h.actor, now(1), 10), 10);
    assert!(conn.has_buffered_work());
    assert_eq!(conn.process(&mut h.actor, now(1), 10), 10);
    assert_eq!(conn.process(&mut h.actor, now(1), 10), 5);
    assert!(!conn.has_buffered_work(), "the buffer is empty");
    assert_eq!(drain(&mut conn).len(), 25);
}

#[test]
fn a_client_that_does_not_read_stops_being_served_at_the_watermark() {
    let mut h = Harness::new();
    let value = vec![b'v'; 256 * 1024];
    h.run_flow(&[b"SET", b"big", &value]);
    let mut conn = ClientConn::new(1, LIMIT, 0);
    let get = request(&[b"GET", b"big"]);
    conn.feed(&get.repeat(20), 0);
    let ran = conn.process(&mut h.actor, now(1), usize::MAX);
    assert_eq!(ran, OUTPUT_WATERMARK / value.len(), "ran until the unsent replies reached the watermark");
    assert!(conn.pending_output() >= OUTPUT_WATERMARK);
    assert!(!conn.wants_read() && conn.wants_write() && !conn.has_buffered_work());
    // Once the client reads, the rest is served.
    let mut got = drain(&mut conn).len();
    assert!(conn.has_buffered_work() && conn.wants_read());
    while conn.has_buffered_work() {
        conn.process(&mut h.actor, now(2), usize::MAX);
        got += drain(&mut conn).len();
    }
    assert_eq!(got, 20);
}

#[test]
fn a_reply_past_the_output_limit_finishes_the_connection_unbuilt() {
    let mut h = Harness::new();
    let value = vec![b'x'; 1024 * 1024];
    h.run_flow(&[b"SET", b"big", &value]);
    let mut conn = ClientConn::new(1, 4 * 1024 * 1024, 0);
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(std::iter::repeat_n(&b"big"[..], 4096));
    conn.feed(&request(&args), 0);
    conn.feed(b"PING\r\n", 0);
    assert_eq!(conn.process(&mut h.actor, now(1), usize::MAX), 1, "nothing runs after the overflow");
    assert!(conn.output_over_limit() && conn.is_finished());
    assert!(conn.pending_output() <= 4 * 1024 * 1024);
    assert!(!conn.wants_write(), "a refused reply is not sent in part");
    assert!(!conn.has_buffered_work() && !conn.wants_read());
}

#[test]
fn quit_and_protocol_errors_close_after_the_replies() {
    let mut h = Harness::new();
    let mut conn = ClientConn::new(1, LIMIT, 0);
    conn.feed(b"PING\r\nQUIT\r\nPING\r\n", 0);
    conn.process(&mut h.actor, now(1), usize::MAX);
    assert!(!conn.is_finished() && conn.wants_write() && !conn.wants_read());
    assert_eq!(drain(&mut conn), [pong(), Value::Simple("OK".into())], "nothing after QUIT runs");
    assert!(conn.is_finished());

    let mut conn = ClientConn::new(2, LIMIT, 0);
    conn.feed(b"PING\r\n*2\r\n$-5\r\n", 0);
    conn.process(&mut h.actor, now(1), usize::MAX);
    let replies = drain(&mut conn);
    assert_eq!(replies[0], pong());
    assert!(matches!(&replies[1], Value::Error(e) if e.starts_with("ERR Protocol error")), "{replies:?}");
    assert!(conn.is_finished());
}

#[test]
fn end_of_input_runs_what_was_sent_and_drops_a_partial_request() {
    let mut h = Harness::new();
    let mut conn = ClientConn::new(1, LIMIT, 0);
    let sent: &[u8] = b"SET a 1\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nb";
    let mut input = sent;
    let mut scratch = [0u8; 16];
    let status = conn.read_from(&mut input, &mut scratch, usize::MAX, 5).unwrap();
    assert_eq!(status, super::ReadStatus { bytes: sent.len(), drained: true }, "a short read drains");
    assert!(conn.wants_read(), "the end is not known yet");
    let status = conn.read_from(&mut input, &mut scratch, usize::MAX, 5).unwrap();
    assert_eq!(status, super::ReadStatus { bytes: 0, drained: true });
    assert!(!conn.wants_read(), "the client closed its side");
    conn.process(&mut h.actor, now(1), usize::MAX);
    assert_eq!(drain(&mut conn), [Value::Simple("OK".into()), pong()]);
    assert!(conn.is_finished());
    assert_eq!(h.actor.replica.map().len(), 1, "the cut SET did not run");
}

/// A socket that has `data` and then would block.
struct Socket {
    data: Vec<u8>,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        Ok(n)
    }
}

#[test]
fn reading_stops_at_its_byte_budget_and_at_would_block() {
    let mut conn = ClientConn::new(1, LIMIT, 0);
    let mut socket = Socket { data: b"PING\r\n".repeat(100) };
    let mut scratch = [0u8; 64];
    let first = conn.read_from(&mut socket, &mut scratch, 128, 7).unwrap();
    assert_eq!(first, super::ReadStatus { bytes: 128, drained: false }, "the budget, in whole reads");
    let rest = conn.read_from(&mut socket, &mut scratch, usize::MAX, 9).unwrap();
    assert_eq!(rest, super::ReadStatus { bytes: 600 - 128, drained: true });
    assert_eq!(conn.idle_ms(9), 0);
    assert_eq!(conn.idle_ms(1009), 1000);
    let mut h = Harness::new();
    assert_eq!(conn.process(&mut h.actor, now(10), usize::MAX), 100);
    // A write counts as activity too.
    conn.write_to(&mut Vec::new(), 2000).unwrap();
    assert_eq!(conn.idle_ms(2500), 500);
}

#[test]
fn the_read_buffer_is_bounded() {
    let mut conn = ClientConn::new(1, LIMIT, 0);
    // A request that never completes fills the buffer to its bound, then reading stops.
    let mut socket = Socket { data: Vec::new() };
    socket.data.extend(b"*1\r\n$16777215\r\n");
    socket.data.resize(MAX_BUFFERED + 1024 * 1024, b'x');
    let mut scratch = vec![0u8; 64 * 1024];
    let status = conn.read_from(&mut socket, &mut scratch, usize::MAX, 0).unwrap();
    assert!(!status.drained && !conn.wants_read());
    assert!(status.bytes <= MAX_BUFFERED + scratch.len());
}

#[test]
fn a_password_is_asked_for_before_anything_else() {
    let mut h = Harness::with_password("pw");
    let mut conn = ClientConn::new(1, LIMIT, 0);
    conn.feed(b"GET k\r\nAUTH pw\r\nGET k\r\n", 0);
    conn.process(&mut h.actor, now(1), usize::MAX);
    assert_eq!(
        drain(&mut conn),
        [Value::Error("NOAUTH Authentication required.".into()), Value::Simple("OK".into()), Value::Nil]
    );
    assert!(conn.session().authenticated);
}

#[test]
fn protected_mode_admits_only_loopback_clients_of_a_node_without_password() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    for local in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
        assert_eq!(Refusal::for_peer(true, false, ip(local)), None, "{local}");
    }
    for remote in ["192.0.2.7", "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0"] {
        assert_eq!(Refusal::for_peer(true, false, ip(remote)), Some(Refusal::ProtectedMode), "{remote}");
        assert_eq!(Refusal::for_peer(true, true, ip(remote)), None, "a password lifts it");
        assert_eq!(Refusal::for_peer(false, false, ip(remote)), None, "--protected-mode no lifts it");
    }
    let denied = String::from_utf8(Refusal::ProtectedMode.reply().to_vec()).unwrap();
    assert!(denied.starts_with("-DENIED ") && denied.ends_with("\r\n"));
    assert_eq!(denied.matches("\r\n").count(), 1, "one line");
    assert!(denied.contains("--requirepass-file") && denied.contains("--protected-mode no"));
    assert_eq!(Refusal::MaxClients.reply(), b"-ERR max number of clients reached\r\n");
}

#[test]
fn writes_resume_where_the_socket_stopped_taking_bytes() {
    struct Full {
        got: Vec<u8>,
        room: usize,
    }
    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut h = Harness::new();
    let mut conn = ClientConn::new(1, LIMIT, 0);
    conn.feed(&b"PING\r\n".repeat(10), 0);
    conn.process(&mut h.actor, now(1), usize::MAX);
    let mut sock = Full { got: Vec::new(), room: 12 };
    assert_eq!(conn.write_to(&mut sock, 1).unwrap(), 12);
    assert!(conn.wants_write());
    sock.room = usize::MAX;
    conn.write_to(&mut sock, 1).unwrap();
    assert_eq!(sock.got, b"+PONG\r\n".repeat(10));
    assert!(!conn.wants_write());
}

mod arbitrary_input {
    use proptest::prelude::*;

    use super::*;

    /// Fragments that look like requests, so that random sequences reach deep into the parser
    /// and the commands, not only its first byte.
    fn fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"*2\r\n".to_vec()),
            Just(b"*3\r\n".to_vec()),
            Just(b"$3\r\n".to_vec()),
            Just(b"$1\r\n".to_vec()),
            Just(b"$-1\r\n".to_vec()),
            Just(b"GET\r\n".to_vec()),
            Just(b"SET\r\n".to_vec()),
            Just(b"k\r\n".to_vec()),
            Just(b"PING\r\n".to_vec()),
            Just(b"MGET k k k\r\n".to_vec()),
            Just(b"SCAN 0 COUNT 2\r\n".to_vec()),
            Just(b"HELLO 3\r\n".to_vec()),
            Just(b"AUTH x\r\n".to_vec()),
            Just(b"QUIT\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    /// Feeds `input` in pieces of the sizes in `cuts` (cycled), runs what arrives with a small
    /// budget, then ends the input. Every reply must parse, and nothing may panic.
    fn drive(input: &[u8], cuts: &[usize], password: bool) {
        let mut h = if password { Harness::with_password("pw") } else { Harness::new() };
        let mut conn = ClientConn::new(1, 64 * 1024, 0);
        let mut out = Vec::new();
        let mut rest = input;
        for &cut in cuts.iter().cycle() {
            if rest.is_empty() || conn.is_finished() {
                break;
            }
            let (piece, tail) = rest.split_at(cut.min(rest.len()));
            rest = tail;
            conn.feed(piece, 0);
            while {
                conn.process(&mut h.actor, now(1), 3);
                conn.write_to(&mut out, 0).unwrap();
                conn.has_buffered_work()
            } {}
        }
        conn.feed_eof();
        while !conn.is_finished() {
            conn.process(&mut h.actor, now(2), 3);
            conn.write_to(&mut out, 0).unwrap();
        }
        let mut buf = BytesMut::from(&out[..]);
        while !buf.is_empty() {
            match resp::parse_value(&mut buf) {
                Ok(Some(_)) => {}
                other => panic!("a malformed reply stream: {other:?} at {:?}", String::from_utf8_lossy(&buf)),
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_get_well_formed_replies(
            data in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(1usize..40, 1..8),
            password in any::<bool>(),
        ) {
            drive(&data, &cuts, password);
        }

        #[test]
        fn request_like_garbage_gets_well_formed_replies(
            fragments in prop::collection::vec(fragment(), 0..40),
            cuts in prop::collection::vec(1usize..40, 1..8),
            password in any::<bool>(),
        ) {
            drive(&fragments.concat(), &cuts, password);
        }
    }
}
