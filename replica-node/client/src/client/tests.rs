//! The client against fake servers on loopback.

use std::net::TcpListener;
use std::thread;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use resp::RequestParser;

use super::*;
use crate::{Fixed, RoundRobin};

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<RoundRobin>();
    assert_send_sync::<ClientError>();
};

/// How a fake server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// A tiny store: GET, SET, DEL, LIST, PING, INFO; `FAIL` gets an error reply.
    Store,
    /// The store, but each connection is closed after one reply.
    OneShot,
    /// Reads requests, never answers.
    Silent,
    /// Answers every request with these bytes.
    Canned(&'static [u8]),
    /// The store, behind a password: `NOAUTH` until `AUTH` gives it.
    Guarded(&'static str),
}

struct Fake {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

/// A fake server on a free loopback port; its threads end with the test process.
fn fake(mode: Mode) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let store = Arc::new(Mutex::new(BTreeMap::<Bytes, Bytes>::new()));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let store = store.clone();
            thread::spawn(move || serve(stream, mode, &store));
        }
    });
    Fake { addr, accepted }
}

fn serve(mut stream: TcpStream, mode: Mode, store: &Mutex<BTreeMap<Bytes, Bytes>>) {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut authenticated = false;
    loop {
        let Ok(n) = stream.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(args)) = parser.parse(&mut buf) {
            let mut out = Vec::new();
            match mode {
                Mode::Silent => continue,
                Mode::Canned(bytes) => out.extend_from_slice(bytes),
                Mode::Guarded(password) if !authenticated => match &args[..] {
                    [auth, user, given]
                        if auth.eq_ignore_ascii_case(b"AUTH")
                            && user == "default"
                            && given == password.as_bytes() =>
                    {
                        authenticated = true;
                        resp::simple(&mut out, "OK");
                    }
                    [auth, ..] if auth.eq_ignore_ascii_case(b"AUTH") => {
                        resp::error(&mut out, "WRONGPASS invalid username-password pair or user is disabled.")
                    }
                    _ => resp::error(&mut out, "NOAUTH Authentication required."),
                },
                Mode::Guarded(_) => {
                    let mut map = store.lock().unwrap_or_else(PoisonError::into_inner);
                    execute(&args, &mut map, &mut out);
                }
                Mode::Store | Mode::OneShot => {
                    let mut map = store.lock().unwrap_or_else(PoisonError::into_inner);
                    execute(&args, &mut map, &mut out);
                }
            }
            if stream.write_all(&out).is_err() || matches!(mode, Mode::OneShot) {
                return;
            }
        }
    }
}

fn execute(args: &[Bytes], map: &mut BTreeMap<Bytes, Bytes>, out: &mut Vec<u8>) {
    let name = args[0].to_ascii_uppercase();
    match (&name[..], &args[1..]) {
        (b"GET", [k]) => match map.get(k) {
            Some(v) => resp::bulk(out, v),
            None => resp::null(out, resp::Protocol::Resp2),
        },
        (b"SET", [k, v]) => {
            map.insert(k.clone(), v.clone());
            resp::simple(out, "OK");
        }
        (b"DEL", keys) => {
            let n = keys.iter().filter(|k| map.remove(*k).is_some()).count();
            resp::integer(out, n as i64);
        }
        (b"LIST", [prefix]) => {
            let pairs: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
            resp::array_header(out, pairs.len() * 2);
            for (k, v) in pairs {
                resp::bulk(out, k);
                resp::bulk(out, v);
            }
        }
        (b"PING", []) => resp::simple(out, "PONG"),
        (b"INFO", []) => resp::bulk(out, b"# Sync\r\nactor:0\r\nnode:fake\r\nkeys:3\r\n"),
        _ => resp::error(out, "ERR unknown command or wrong number of arguments"),
    }
}

/// An address nothing listens on: connecting is refused.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

#[test]
fn get_put_delete_list() {
    let server = fake(Mode::Store);
    let client = Client::new(Fixed(server.addr));
    assert_eq!(client.get("a").unwrap(), None);
    client.put("a", "1").unwrap();
    client.put("b/x", b"\x00\r\n").unwrap();
    client.put("b/y", "3").unwrap();
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get(b"b/x").unwrap().as_deref(), Some(&b"\x00\r\n"[..]));
    let listed = client.list("b/").unwrap();
    let keys: Vec<&[u8]> = listed.keys().map(|k| &k[..]).collect();
    assert_eq!(keys, vec![&b"b/x"[..], b"b/y"]);
    assert_eq!(client.list("").unwrap().len(), 3);
    assert!(client.delete("a").unwrap());
    assert!(!client.delete("a").unwrap());
    assert_eq!(client.get("a").unwrap(), None);
    client.ping().unwrap();
    assert_eq!(client.info_fields().unwrap()["node"], "fake");
    assert_eq!(client.command(&["get", "b/y"]).unwrap(), Value::Bulk("3".into()));
    assert!(matches!(client.command::<&str>(&[]), Err(ClientError::EmptyCommand)));
    // All of it on one pooled connection.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn fails_over_to_the_next_address() {
    let live = fake(Mode::Store);
    let dead = dead_addr();
    let client = Client::new(RoundRobin::new([dead, live.addr]).unwrap());
    for i in 0..10 {
        client.put(format!("k{i}"), "v").unwrap();
    }
    assert_eq!(client.list("k").unwrap().len(), 10);
}

#[test]
fn names_every_address_when_none_answers() {
    let (a, b) = (dead_addr(), dead_addr());
    let client = Client::new(RoundRobin::new([a, b]).unwrap());
    let err = client.get("k").unwrap_err();
    let text = err.to_string();
    assert!(err.is_unavailable(), "{text}");
    assert!(text.contains(&a.to_string()) && text.contains(&b.to_string()), "{text}");
    let ClientError::Unavailable { attempts } = err else { unreachable!() };
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].1.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn server_errors_are_not_retried() {
    let (a, b) = (fake(Mode::Store), fake(Mode::Store));
    let client = Client::new(RoundRobin::new([a.addr, b.addr]).unwrap());
    let err = client.command(&["FAIL"]).unwrap_err();
    assert!(matches!(&err, ClientError::Server(msg) if msg.starts_with("ERR unknown")), "{err}");
    let total = a.accepted.load(Ordering::SeqCst) + b.accepted.load(Ordering::SeqCst);
    assert_eq!(total, 1);
}

#[test]
fn protocol_errors_and_wrong_shapes_are_reported() {
    let garbage = fake(Mode::Canned(b"?what\r\n"));
    let err = Client::new(Fixed(garbage.addr)).get("k").unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    let wrong = fake(Mode::Canned(b":1\r\n"));
    let client = Client::new(Fixed(wrong.addr));
    let err = client.get("k").unwrap_err();
    assert!(matches!(err, ClientError::UnexpectedReply { command: "GET", .. }), "{err}");
    // The connection stays usable after a well-formed reply of the wrong shape.
    assert!(client.delete("k").unwrap());
    let odd = fake(Mode::Canned(b"*1\r\n$1\r\nk\r\n"));
    assert!(Client::new(Fixed(odd.addr)).list("").is_err());
}

#[test]
fn a_closed_idle_connection_is_replaced() {
    let server = fake(Mode::OneShot);
    let client = Client::new(Fixed(server.addr));
    for i in 0..5 {
        client.put("k", i.to_string()).unwrap();
    }
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"4"[..]));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 6);
}

#[test]
fn a_silent_server_times_out() {
    let server = fake(Mode::Silent);
    let client = Client::builder().read_timeout(Duration::from_millis(200)).build(Fixed(server.addr));
    let started = Instant::now();
    let err = client.get("k").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let ClientError::Unavailable { attempts } = &err else { panic!("{err}") };
    assert_eq!(attempts[0].1.kind(), io::ErrorKind::TimedOut, "{err}");
}

#[test]
fn concurrent_queries_from_eight_threads() {
    let server = fake(Mode::Store);
    let client = Client::new(Fixed(server.addr));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    let key = format!("t{t}/{i}");
                    client.put(&key, format!("{t}-{i}")).unwrap();
                    assert_eq!(client.get(&key).unwrap(), Some(Bytes::from(format!("{t}-{i}"))));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    assert_eq!(client.list("t").unwrap().len(), 1600);
    assert!(server.accepted.load(Ordering::SeqCst) <= 8);
}

#[derive(Debug)]
struct Counting {
    inner: Fixed,
    calls: AtomicUsize,
}

impl Router for Counting {
    fn next(&self) -> SocketAddr {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.next()
    }
    fn len(&self) -> usize {
        1
    }
}

#[test]
fn the_router_is_asked_before_every_query() {
    let server = fake(Mode::Store);
    let router = Arc::new(Counting { inner: Fixed(server.addr), calls: AtomicUsize::new(0) });
    let client = Client::new(router.clone());
    for _ in 0..7 {
        client.get("k").unwrap();
    }
    assert_eq!(router.calls.load(Ordering::SeqCst), 7);
}

#[test]
fn info_lines_parse() {
    let fields = parse_info("# Server\r\nnode:n1\r\n\r\n# Sync\r\nsync_messages_sent:17\r\nbad line\r\n");
    assert_eq!(fields.len(), 2);
    assert_eq!(fields["sync_messages_sent"], "17");
}

#[test]
fn a_password_authenticates_each_new_connection_once() {
    let server = fake(Mode::Guarded("pw"));
    let without = Client::new(Fixed(server.addr));
    let err = without.get("k").unwrap_err();
    assert!(matches!(&err, ClientError::Server(m) if m.starts_with("NOAUTH")), "{err}");
    let client = Client::builder().password("pw").build(Fixed(server.addr));
    client.put("k", "v").unwrap();
    assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert_eq!(accepted, 2, "one connection each, the pooled one reused without a second AUTH");
    assert!(!format!("{:?}", Client::builder().password("pw")).contains("pw"), "Debug hides it");
    // A wrong password is the server's error, not retried on the next address.
    let other = fake(Mode::Guarded("pw"));
    let wrong = Client::builder().password("nope").build(RoundRobin::new([server.addr, other.addr]).unwrap());
    let err = wrong.get("k").unwrap_err();
    assert!(matches!(&err, ClientError::Server(m) if m.starts_with("WRONGPASS")), "{err}");
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);
}
