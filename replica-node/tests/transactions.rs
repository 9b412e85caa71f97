//! `MULTI`/`EXEC` across a cluster: the writes of one transaction are never seen in part, on
//! any actor of any server, even when they are too large for one frame between servers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use resp::{Value, ValueParser};

/// A RESP connection that sends commands in a batch and reads their replies.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    parser: ValueParser,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { stream, buf: BytesMut::new(), parser: ValueParser::new() }
    }

    /// Sends `commands` at once and returns the reply to the last.
    fn batch(&mut self, commands: &[Vec<Vec<u8>>]) -> Value {
        let mut out = Vec::new();
        for c in commands {
            resp::encode_command(&mut out, c);
        }
        self.stream.write_all(&out).unwrap();
        let mut last = None;
        for _ in commands {
            last = Some(loop {
                if let Some(v) = self.parser.parse(&mut self.buf).unwrap() {
                    break v;
                }
                let mut chunk = [0u8; 64 << 10];
                let n = self.stream.read(&mut chunk).expect("the server answers");
                assert!(n > 0, "the server closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            });
        }
        last.unwrap()
    }
}

fn cmd(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// The value written by transaction `i`: 600 KiB, so the two of one transaction (1.2 MiB)
/// cannot go to another server in one frame (1 MiB).
fn value(i: u32) -> Vec<u8> {
    format!("{i:08}").into_bytes().repeat((600 << 10) / 8)
}

/// What an observer reads of both keys in one transaction of its own: their first 8 bytes.
fn observe(conn: &mut Conn) -> (Vec<u8>, Vec<u8>) {
    let reply = conn.batch(&[
        cmd(&[b"MULTI"]),
        cmd(&[b"GETRANGE", b"a-first", b"0", b"7"]),
        cmd(&[b"GETRANGE", b"z-last", b"0", b"7"]),
        cmd(&[b"EXEC"]),
    ]);
    let Value::Array(items) = reply else { panic!("EXEC answers an array: {reply:?}") };
    let bytes = |v: &Value| match v {
        Value::Bulk(b) => b.to_vec(),
        other => panic!("GETRANGE answers a string: {other:?}"),
    };
    (bytes(&items[0]), bytes(&items[1]))
}

#[test]
fn no_actor_of_any_server_sees_part_of_a_transaction() {
    const TRANSACTIONS: u32 = 30;
    let mut cluster = Cluster::new("transactions");
    cluster.add(2);
    cluster.add(2);
    cluster.wait_connected(Duration::from_secs(10));
    let writer_addr = cluster.addrs(0)[0];
    // Every other actor: the writer's second actor, both actors of the other server.
    let observers: Vec<SocketAddr> = [cluster.addrs(0)[1]].into_iter().chain(cluster.addrs(1)).collect();

    let done = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = observers
        .iter()
        .map(|&addr| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                let mut seen = Vec::new();
                let last = format!("{:08}", TRANSACTIONS - 1).into_bytes();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (a, z) = observe(&mut conn);
                    assert_eq!(a, z, "{addr} sees part of a transaction");
                    if seen.last() != Some(&a) {
                        seen.push(a.clone());
                    }
                    if (done.load(Ordering::Relaxed) && a == last) || Instant::now() > deadline {
                        return (addr, seen);
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();

    let mut writer = Conn::connect(writer_addr);
    for i in 0..TRANSACTIONS {
        let v = value(i);
        let reply = writer.batch(&[
            cmd(&[b"MULTI"]),
            cmd(&[b"SET", b"a-first", &v]),
            cmd(&[b"SET", b"z-last", &v]),
            cmd(&[b"EXEC"]),
        ]);
        assert_eq!(reply, Value::Array(vec![Value::Simple("OK".into()), Value::Simple("OK".into())]));
        thread::sleep(Duration::from_millis(40));
    }
    done.store(true, Ordering::Relaxed);

    let last = format!("{:08}", TRANSACTIONS - 1).into_bytes();
    for w in watchers {
        let (addr, seen) = w.join().expect("no observer saw part of a transaction");
        assert_eq!(seen.last(), Some(&last), "{addr} ends with the last transaction");
        // The observer watched the values change, not one state only.
        assert!(seen.len() >= 3, "{addr} saw {} states", seen.len());
    }
}
