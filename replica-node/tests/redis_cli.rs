//! Standard Redis tooling works against any actor port: `redis-cli` (Debian's `redis-tools`).

mod common;

use std::process::Command;

use common::*;

fn redis_cli(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed (apt-get install redis-tools; .ci/run does this)");
    assert!(out.status.success(), "redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn redis_cli_drives_every_actor() {
    let node = start_node(2);
    let addrs = node.description().client_addrs();
    assert_eq!(redis_cli(addrs[0], &["PING"]), "PONG\n");
    assert_eq!(redis_cli(addrs[0], &["SET", "user:1", "ada"]), "OK\n");
    assert_eq!(redis_cli(addrs[0], &["SET", "user:2", "grace"]), "OK\n");
    assert_eq!(redis_cli(addrs[0], &["SET", "other", "x"]), "OK\n");
    assert_eq!(redis_cli(addrs[0], &["GET", "user:1"]), "ada\n");
    assert_eq!(redis_cli(addrs[0], &["GET", "missing"]), "\n");
    assert_eq!(redis_cli(addrs[0], &["MGET", "user:1", "nope", "user:2"]), "ada\n\ngrace\n");
    assert_eq!(redis_cli(addrs[0], &["EXISTS", "user:1", "user:1", "nope"]), "2\n");
    assert_eq!(redis_cli(addrs[0], &["DBSIZE"]), "3\n");
    assert_eq!(redis_cli(addrs[0], &["ECHO", "hi"]), "hi\n");
    // The write reaches the other actor in the background.
    let seen = eventually(std::time::Duration::from_millis(500), || {
        redis_cli(addrs[1], &["LIST", "user:"]) == "user:1\nada\nuser:2\ngrace\n"
    });
    assert!(seen.is_some(), "LIST on actor 1: {}", redis_cli(addrs[1], &["LIST", "user:"]));
    assert_eq!(redis_cli(addrs[1], &["KEYS", "user:*"]), "user:1\nuser:2\n");
    assert!(redis_cli(addrs[1], &["KEYS", "u?er"]).contains("ERR only prefix patterns"));
    // redis-cli's own SCAN loop.
    let scanned: Vec<String> =
        redis_cli(addrs[1], &["--scan", "--pattern", "user:*"]).lines().map(String::from).collect();
    assert_eq!(scanned, ["user:1", "user:2"]);
    // Following cursors one key at a time reaches the end.
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    for _ in 0..10 {
        let out = redis_cli(addrs[1], &["SCAN", &cursor, "MATCH", "user:*", "COUNT", "1"]);
        let mut lines = out.lines();
        cursor = lines.next().unwrap().to_string();
        keys.extend(lines.map(String::from));
        if cursor == "0" {
            break;
        }
    }
    assert_eq!((cursor.as_str(), keys), ("0", vec!["user:1".to_string(), "user:2".to_string()]));
    assert_eq!(redis_cli(addrs[1], &["DEL", "user:1", "nope"]), "1\n");
    assert_eq!(redis_cli(addrs[1], &["GET", "user:1"]), "\n");
    // A delete is a write: even a key this actor never saw gets a tombstone, which beats any
    // older write of it still on its way from elsewhere.
    let info = redis_cli(addrs[1], &["INFO", "sync"]);
    for field in [
        "actor:1",
        "node:",
        "keys:2",
        "tombstones:2",
        "sync_max_pair_rate:",
        "sync_messages_sent:",
        "sync_entries_sent:",
        "sync_entries_received:",
        "sync_entries_redundant:",
        "remote_bytes_sent:",
        "remote_bytes_received:",
        "peers_connected:",
    ] {
        assert!(info.contains(field), "INFO sync lacks {field}: {info}");
    }
    // RESP3 after HELLO 3.
    let hello = redis_cli(addrs[0], &["-3", "HELLO", "3"]);
    assert!(hello.contains("proto") && hello.contains('3'), "{hello}");
    assert_eq!(redis_cli(addrs[0], &["-3", "GET", "user:2"]), "grace\n");
    // On the wire, a RESP3 session gets RESP3 nulls and maps.
    let mut raw = Raw::connect(addrs[0]);
    assert!(raw.roundtrip(b"HELLO 3\r\n").starts_with("%7\r\n"));
    assert_eq!(raw.roundtrip(b"GET missing\r\n"), "_\r\n");
}
