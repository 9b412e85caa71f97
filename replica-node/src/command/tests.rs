//! Every command against a real replica, through [`execute`], with the reply parsed back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use replica_core::{MAX_KEY, MAX_VALUE, Now, Replica};
use resp::{Protocol, Value};

use super::{ActorState, Cursors, Flow, NodeInfo, Session, cursors::MAX_CURSORS, execute};
use crate::stats::NodeStats;

struct Harness {
    actor: ActorState,
    session: Session,
    ms: u64,
}

impl Harness {
    fn new() -> Self {
        let info = NodeInfo {
            node: "n1".into(),
            actors: 2,
            client_addr: "127.0.0.1:6001".into(),
            peer_addr: "127.0.0.1:6000".into(),
            started_mono_ms: 0,
            stats: Arc::new(NodeStats::default()),
            admin: None,
        };
        let actor = ActorState { replica: Replica::new(0, 7, 1), cursors: Cursors::default(), info };
        Harness { actor, session: Session::new(42), ms: 0 }
    }

    /// Runs one command; returns its one reply and what the connection does next.
    fn run_flow(&mut self, args: &[&[u8]]) -> (Value, Flow) {
        self.ms += 1;
        let now = Now { wall_ms: 1_700_000_000_000 + self.ms, mono_ms: self.ms };
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let mut out = Vec::new();
        let flow = execute(&mut self.actor, &mut self.session, &args, now, &mut out);
        let mut buf = BytesMut::from(&out[..]);
        let value = resp::parse_value(&mut buf).expect("a valid reply").expect("a complete reply");
        assert!(buf.is_empty(), "exactly one reply, {} bytes left", buf.len());
        (value, flow)
    }

    fn run(&mut self, args: &[&str]) -> Value {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.run_flow(&args).0
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

fn err_starting(v: &Value, prefix: &str) {
    match v {
        Value::Error(e) => assert!(e.starts_with(prefix), "error {e:?} does not start with {prefix:?}"),
        other => panic!("expected an error starting with {prefix:?}, got {other:?}"),
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

#[test]
fn get_set_del_mget_exists_dbsize() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET", "k"]), Value::Nil);
    assert_eq!(h.run(&["set", "k", "v1"]), ok());
    assert_eq!(h.run(&["SET", "k", "v2"]), ok());
    assert_eq!(h.run(&["get", "k"]), bulk("v2"));
    assert_eq!(h.run(&["SET", "j", "w"]), ok());
    assert_eq!(h.run(&["MGET", "k", "nope", "j"]), Value::Array(vec![bulk("v2"), Value::Nil, bulk("w")]));
    assert_eq!(h.run(&["EXISTS", "k", "k", "nope", "j"]), Value::Integer(3), "duplicates count");
    assert_eq!(h.run(&["DBSIZE"]), Value::Integer(2));
    assert_eq!(h.run(&["DEL", "k", "nope", "k"]), Value::Integer(1), "only keys that existed count");
    assert_eq!(h.run(&["UNLINK", "j"]), Value::Integer(1));
    assert_eq!(h.run(&["GET", "k"]), Value::Nil);
    assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
    err_starting(&h.run(&["SET", "k", "v", "EX", "5"]), "ERR syntax error");
    assert_eq!(h.run(&["GET", "k"]), Value::Nil, "a refused SET writes nothing");
}

#[test]
fn oversized_keys_and_values_are_refused_and_write_nothing() {
    let mut h = Harness::new();
    let big_key = vec![b'k'; MAX_KEY + 1];
    let big_value = vec![b'v'; MAX_VALUE + 1];
    let (reply, flow) = h.run_flow(&[b"SET", &big_key, b"v"]);
    err_starting(&reply, "ERR key too large");
    assert_eq!(flow, Flow::Continue, "the connection stays usable");
    err_starting(&h.run_flow(&[b"SET", b"k", &big_value]).0, "ERR value too large");
    assert_eq!(h.run_flow(&[b"GET", &big_key]).0, Value::Nil, "nothing can be stored under it");
    err_starting(&h.run_flow(&[b"DEL", b"a", &big_key]).0, "ERR key too large");
    assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
    let max_key = vec![b'k'; MAX_KEY];
    assert_eq!(h.run_flow(&[b"SET", &max_key, b"v"]).0, ok(), "the limit itself is allowed");
}

#[test]
fn wrong_arity_and_unknown_commands() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["GET"]), Value::Error("ERR wrong number of arguments for 'get' command".into()));
    assert_eq!(
        h.run(&["GET", "a", "b"]),
        Value::Error("ERR wrong number of arguments for 'get' command".into())
    );
    err_starting(&h.run(&["SET", "a"]), "ERR wrong number of arguments for 'set' command");
    err_starting(&h.run(&["FLUSHALL"]), "ERR unknown command 'FLUSHALL', with args beginning with:");
    assert_eq!(h.run_flow(&[]).0, Value::Error("ERR empty command".into()));
}

#[test]
fn list_and_keys_by_prefix() {
    let mut h = Harness::new();
    for k in ["a:2", "a:1", "b:1", "a"] {
        h.run(&["SET", k, &format!("v{k}")]);
    }
    assert_eq!(
        h.run(&["LIST", "a:"]),
        Value::Array(vec![bulk("a:1"), bulk("va:1"), bulk("a:2"), bulk("va:2")]),
        "sorted by key, flat pairs"
    );
    assert_eq!(array(h.run(&["LIST"])).len(), 8, "no prefix lists everything");
    assert_eq!(array(h.run(&["LIST", ""])).len(), 8);
    let mut keys = array(h.run(&["KEYS", "a*"]));
    keys.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(keys, vec![bulk("a"), bulk("a:1"), bulk("a:2")]);
    assert_eq!(h.run(&["KEYS", "b:1"]), Value::Array(vec![bulk("b:1")]), "a literal key");
    assert_eq!(h.run(&["KEYS", "zz"]), Value::Array(vec![]));
    err_starting(&h.run(&["KEYS", "a*b"]), "ERR only prefix patterns");
    err_starting(&h.run(&["KEYS", "a?"]), "ERR only prefix patterns");
}

/// Pages a SCAN to the end; returns the keys seen and the number of calls.
fn scan_all(h: &mut Harness, extra: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let reply = array(h.run(&args));
        calls += 1;
        let [Value::Bulk(next), Value::Array(keys)] = &reply[..] else { panic!("bad SCAN reply {reply:?}") };
        for k in keys {
            let Value::Bulk(k) = k else { panic!("key {k:?}") };
            seen.push(String::from_utf8(k.to_vec()).unwrap());
        }
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            return (seen, calls);
        }
        assert!(calls < 10_000, "SCAN does not end");
    }
}

#[test]
fn scan_pages_through_every_key_once() {
    let mut h = Harness::new();
    for i in 0..300 {
        h.run(&["SET", &format!("user:{i:03}"), "x"]);
        h.run(&["SET", &format!("item:{i:03}"), "y"]);
    }
    let (all, calls) = scan_all(&mut h, &["COUNT", "50"]);
    assert_eq!(all.len(), 600);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 600, "no key twice");
    assert!(calls >= 600 / 50, "COUNT bounds a page: {calls} calls");

    let (users, _) = scan_all(&mut h, &["MATCH", "user:*", "COUNT", "7"]);
    assert_eq!(users.len(), 300);
    assert!(users.iter().all(|k| k.starts_with("user:")));
    let (default_count, calls) = scan_all(&mut h, &[]);
    assert_eq!(default_count.len(), 600);
    assert!(calls > 1, "the default COUNT pages too");
    err_starting(&h.run(&["SCAN", "0", "MATCH", "u*r"]), "ERR only prefix patterns");
    err_starting(&h.run(&["SCAN", "0", "COUNT", "0"]), "ERR value is out of range");
    err_starting(&h.run(&["SCAN", "0", "COUNT"]), "ERR syntax error");
    err_starting(&h.run(&["SCAN", "0", "BOGUS", "1"]), "ERR syntax error");
    err_starting(&h.run(&["SCAN", "abc"]), "ERR invalid cursor");
}

#[test]
fn scan_cursors_expire_oldest_first_and_unknown_ones_are_refused() {
    let mut h = Harness::new();
    for i in 0..10 {
        h.run(&["SET", &format!("k{i}"), "v"]);
    }
    let first = array(h.run(&["SCAN", "0", "COUNT", "1"]));
    let Value::Bulk(old) = &first[0] else { panic!() };
    let old = String::from_utf8(old.to_vec()).unwrap();
    assert_ne!(old, "0");
    // The old cursor still works while fewer than MAX_CURSORS newer ones exist.
    assert_eq!(array(h.run(&["SCAN", &old, "COUNT", "1"])).len(), 2);
    for _ in 0..MAX_CURSORS {
        h.run(&["SCAN", "0", "COUNT", "1"]);
    }
    assert_eq!(
        h.run(&["SCAN", &old, "COUNT", "1"]),
        Value::Error("ERR invalid cursor (unknown or expired on this server)".into())
    );
    err_starting(&h.run(&["SCAN", "999999999"]), "ERR invalid cursor (unknown or expired");
}

#[test]
fn ping_echo_quit() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["PING"]), Value::Simple("PONG".into()));
    assert_eq!(h.run(&["PING", "hi"]), bulk("hi"));
    assert_eq!(h.run(&["ECHO", "x y"]), bulk("x y"));
    let (reply, flow) = h.run_flow(&[b"QUIT"]);
    assert_eq!((reply, flow), (ok(), Flow::Close));
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> &'a Value {
    map.iter().find(|(k, _)| *k == bulk(key)).map(|(_, v)| v).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn hello_switches_the_protocol_and_sets_the_name() {
    let mut h = Harness::new();
    // RESP2: a flat array of pairs.
    let flat = array(h.run(&["HELLO"]));
    assert_eq!(flat.len(), 14);
    assert_eq!(flat[4], bulk("proto"));
    assert_eq!(flat[5], Value::Integer(2));
    assert_eq!(flat[7], Value::Integer(42), "the connection id");
    let Value::Map(m) = h.run(&["HELLO", "3", "SETNAME", "ada"]) else { panic!("RESP3 answers a map") };
    assert_eq!(map_get(&m, "proto"), &Value::Integer(3));
    assert_eq!(map_get(&m, "server"), &bulk("replica-node"));
    assert_eq!(h.session.proto, Protocol::Resp3);
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("ada"));
    assert_eq!(h.run(&["GET", "missing"]), Value::Nil, "RESP3 null");
    assert_eq!(h.run(&["HELLO", "4"]), Value::Error("NOPROTO unsupported protocol version".into()));
    assert_eq!(h.session.proto, Protocol::Resp3, "a refused HELLO changes nothing");
    err_starting(&h.run(&["HELLO", "3", "BOGUS"]), "ERR syntax error in HELLO option 'BOGUS'");
    err_starting(&h.run(&["HELLO", "3", "AUTH", "default"]), "ERR syntax error in HELLO option 'AUTH'");
    let flat = array(h.run(&["HELLO", "2"]));
    assert_eq!(flat[5], Value::Integer(2));
    assert_eq!(h.session.proto, Protocol::Resp2);
}

#[test]
fn client_subcommands() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["CLIENT", "ID"]), Value::Integer(42));
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), Value::Nil);
    assert_eq!(h.run(&["client", "setname", "worker-1"]), ok());
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("worker-1"));
    err_starting(&h.run(&["CLIENT", "SETNAME", "two words"]), "ERR Client names cannot contain spaces");
    assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("worker-1"), "a refused name changes nothing");
    assert_eq!(h.run(&["CLIENT", "SETINFO", "lib-name", "redis-py"]), ok());
    let Value::Bulk(info) = h.run(&["CLIENT", "INFO"]) else { panic!("CLIENT INFO is a bulk string") };
    let info = String::from_utf8(info.to_vec()).unwrap();
    assert!(info.starts_with("id=42 name=worker-1 "), "{info}");
    err_starting(&h.run(&["CLIENT", "KILL"]), "ERR unknown subcommand 'KILL' for 'client'");
    err_starting(&h.run(&["CLIENT"]), "ERR wrong number of arguments for 'client' command");
}

#[test]
fn select_auth_config_command() {
    let mut h = Harness::new();
    assert_eq!(h.run(&["SELECT", "0"]), ok());
    err_starting(&h.run(&["SELECT", "1"]), "ERR DB index is out of range");
    err_starting(&h.run(&["AUTH", "secret"]), "ERR AUTH <password> called without any password configured");
    let pairs = array(h.run(&["CONFIG", "GET", "save"]));
    assert_eq!(pairs, vec![bulk("save"), bulk("")]);
    let pairs = array(h.run(&["CONFIG", "GET", "*"]));
    assert_eq!(pairs, vec![bulk("save"), bulk(""), bulk("appendonly"), bulk("no")]);
    assert_eq!(h.run(&["CONFIG", "GET", "maxmemory"]), Value::Array(vec![]));
    err_starting(&h.run(&["CONFIG", "SET", "save", ""]), "ERR CONFIG: only CONFIG GET is supported");
    let Value::Integer(n) = h.run(&["COMMAND", "COUNT"]) else { panic!() };
    assert_eq!(n, 21);
    assert_eq!(h.run(&["COMMAND", "DOCS"]), Value::Array(vec![]), "an empty map in RESP2");
    assert_eq!(h.run(&["COMMAND"]), Value::Array(vec![]));
}

/// The value of `field` in an INFO reply.
fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .to_string()
}

#[test]
fn info_reports_this_actor_and_the_node() {
    let mut h = Harness::new();
    h.run(&["SET", "a", "1"]);
    h.run(&["SET", "b", "2"]);
    h.run(&["DEL", "b"]);
    let Value::Bulk(text) = h.run(&["INFO"]) else { panic!() };
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert_eq!(info_field(&text, "node"), "n1");
    assert_eq!(info_field(&text, "actor"), "0");
    assert_eq!(info_field(&text, "keys"), "1");
    assert_eq!(info_field(&text, "tombstones"), "1");
    // Four commands ran before this INFO, which counts itself too.
    assert_eq!(info_field(&text, "total_commands_processed"), "4");
    for field in [
        "sync_max_pair_rate",
        "sync_messages_sent",
        "sync_entries_sent",
        "sync_entries_received",
        "sync_entries_redundant",
        "remote_bytes_sent",
        "remote_bytes_received",
        "peers_connected",
    ] {
        assert_eq!(info_field(&text, field), "0", "{field} before any sync");
    }
    let Value::Bulk(sync) = h.run(&["INFO", "sync"]) else { panic!() };
    let sync = String::from_utf8(sync.to_vec()).unwrap();
    assert_eq!(info_field(&sync, "keys"), "1");
    assert!(!sync.contains("total_commands_processed"), "only the section asked for: {sync}");
}
