//! The `kv` binary against a small in-process RESP server: output, exit status, failover and
//! the prompt (fed from a pipe).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use bytes::{Bytes, BytesMut};
use replica_node::resp::{self, Protocol, RequestParser};

type Store = Arc<Mutex<BTreeMap<Bytes, Bytes>>>;

/// A store speaking the commands `kv` uses, on a free loopback port. Its threads end with the
/// test process.
fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let store: Store = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = store.clone();
            thread::spawn(move || serve(stream, &store));
        }
    });
    addr
}

fn serve(mut stream: TcpStream, store: &Store) {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Ok(Some(args)) = parser.parse(&mut buf) {
            let mut map = store.lock().unwrap_or_else(PoisonError::into_inner);
            let name = args[0].to_ascii_uppercase();
            match (&name[..], &args[1..]) {
                (b"GET", [k]) => match map.get(k) {
                    Some(v) => resp::bulk(&mut out, v),
                    None => resp::null(&mut out, Protocol::Resp2),
                },
                (b"SET", [k, v]) => {
                    map.insert(k.clone(), v.clone());
                    resp::simple(&mut out, "OK");
                }
                (b"DEL", keys) => {
                    let n = keys.iter().filter(|k| map.remove(*k).is_some()).count();
                    resp::integer(&mut out, n as i64);
                }
                (b"LIST", [prefix]) => {
                    let pairs: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
                    resp::array_header(&mut out, pairs.len() * 2);
                    for (k, v) in pairs {
                        resp::bulk(&mut out, k);
                        resp::bulk(&mut out, v);
                    }
                }
                _ => resp::error(&mut out, "ERR unknown command"),
            }
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// An address nothing listens on.
fn dead() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port")
}

fn kv(servers: &[SocketAddr], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv"));
    for s in servers {
        cmd.arg("--server").arg(s.to_string());
    }
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kv");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write kv's stdin");
    drop(input);
    child.wait_with_output().expect("wait for kv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn put_get_list_del_and_exit_codes() {
    let s = [server()];
    let out = kv(&s, &["put", "player:ada", "42 coins"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    kv(&s, &["put", "player:bob", "7"], None);
    kv(&s, &["put", "zzz", "last"], None);

    let out = kv(&s, &["get", "player:ada"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "42 coins\n");

    let out = kv(&s, &["list", "player:"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "player:ada\t42 coins\nplayer:bob\t7\n");
    let out = kv(&s, &["list"], None);
    assert_eq!(text(&out.stdout).lines().count(), 3);

    let out = kv(&s, &["del", "player:ada"], None);
    assert_eq!(out.status.code(), Some(0));
    let out = kv(&s, &["del", "player:ada"], None);
    assert_eq!(out.status.code(), Some(1));
    let out = kv(&s, &["get", "player:ada"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("no such key"), "{}", text(&out.stderr));
}

#[test]
fn unreachable_server_and_bad_usage_exit_2() {
    let nobody = dead();
    let out = kv(&[nobody], &["get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&nobody.to_string()), "{}", text(&out.stderr));

    let out = kv(&[], &["--server", "not an address", "get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = kv(&[server()], &["put", "only-a-key"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = kv(&[server()], &["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));

    let out = kv(&[], &["--help"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Exit status"));
}

#[test]
fn fails_over_to_a_live_server() {
    let s = [dead(), server()];
    let out = kv(&s, &["put", "k", "v"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kv(&s, &["get", "k"], None);
    assert_eq!(text(&out.stdout), "v\n");
}

#[test]
fn prompt_reads_commands_and_survives_errors() {
    let s = [server()];
    let script = "put a 1\nput \"b c\" 'two words'\nget a\nget missing\nbogus\nput x\nlist\n\
                  del a\nget a\nhelp\nquit\nget b\n";
    let out = kv(&s, &[], Some(script));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("OK\nOK\n1\n(nil)\n"), "{stdout}");
    assert!(stdout.contains("a\t1\nb c\ttwo words\n(deleted)\n(nil)\n"), "{stdout}");
    assert!(stdout.contains("list [PREFIX]"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown command 'bogus'") && stderr.contains("usage: put KEY VALUE"),
        "{stderr}"
    );
    // Nothing after `quit` ran.
    assert!(stdout.trim_end().ends_with("\\xHH)."), "{stdout}");

    // End of input ends the prompt too.
    let out = kv(&s, &[], Some("get \"b c\"\n"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "two words\n");

    // An unreachable server is reported and the prompt carries on.
    let out = kv(&[dead()], &[], Some("get a\nhelp\n"));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("no server answered"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("commands:"));
}
