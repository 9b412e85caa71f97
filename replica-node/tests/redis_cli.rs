//! Standard Redis tooling works against any actor port: `redis-cli` (Debian's `redis-tools`).

mod common;

use std::process::Command;

use common::*;
use replica_node::client::parse_info;

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
    let seen =
        eventually(std::time::Duration::from_millis(500), || redis_cli(addrs[1], &["GET", "other"]) == "x\n");
    assert!(seen.is_some(), "other never reached actor 1");
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
    let info = parse_info(&redis_cli(addrs[1], &["INFO", "sync"]));
    let names: Vec<&str> = info.keys().map(String::as_str).collect();
    let mut want = [
        "actor",
        "node",
        "keys",
        "tombstones",
        "sync_max_pair_rate",
        "sync_messages_sent",
        "sync_entries_sent",
        "sync_entries_received",
        "sync_entries_redundant",
        "remote_bytes_sent",
        "remote_bytes_received",
        "peers_connected",
        "loading",
        "repair_rounds",
        "repair_entries_sent",
        "repair_entries_received",
    ];
    want.sort_unstable();
    let missing: Vec<&&str> = want.iter().filter(|w| !names.contains(w)).collect();
    assert!(missing.is_empty(), "INFO sync lacks {missing:?}: {names:?}");
    let figure =
        |name: &str| -> u64 { info[name].parse().unwrap_or_else(|_| panic!("{name}: {}", info[name])) };
    assert_eq!(info["actor"], "1", "INFO answers for the actor behind the port");
    assert_eq!(info["node"], node.description().node);
    // user:2 and other live on; user:1 and nope are tombstones.
    assert_eq!((figure("keys"), figure("tombstones")), (2, 2), "{info:?}");
    // The three writes of actor 0 reached actor 1 in at least one message.
    assert!(figure("sync_entries_sent") >= 3, "{info:?}");
    assert!(figure("sync_entries_received") >= 3, "{info:?}");
    assert!(figure("sync_entries_redundant") <= figure("sync_entries_received"), "{info:?}");
    assert!((1..=figure("sync_entries_sent")).contains(&figure("sync_messages_sent")), "{info:?}");
    assert!(figure("sync_max_pair_rate") >= 1, "{info:?}");
    // A server alone has no peers, exchanges nothing remotely, repairs nothing and loads
    // nothing.
    assert_eq!(
        (figure("peers_connected"), figure("remote_bytes_sent"), figure("remote_bytes_received")),
        (0, 0, 0),
        "{info:?}"
    );
    assert_eq!((figure("loading"), figure("repair_rounds"), figure("repair_entries_received")), (0, 0, 0));
    // The server section of every port names the same node, its own actor and address.
    for (i, addr) in addrs.iter().enumerate() {
        let server = parse_info(&redis_cli(*addr, &["INFO", "server"]));
        assert_eq!(server["node"], node.description().node);
        assert_eq!(server["actor"], i.to_string());
        assert_eq!(server["actors"], "2");
        assert_eq!(server["client_addr"], addr.to_string());
    }
    // RESP3 after HELLO 3: redis-cli prints the map one `field value` line per entry.
    let hello = redis_cli(addrs[0], &["-3", "HELLO", "3"]);
    let fields: std::collections::BTreeMap<&str, &str> =
        hello.lines().filter_map(|line| line.split_once(' ')).collect();
    assert_eq!(fields.get("proto"), Some(&"3"), "{hello}");
    assert_eq!(fields.get("server"), Some(&"replica-node"), "{hello}");
    assert_eq!(redis_cli(addrs[0], &["-3", "GET", "user:2"]), "grace\n");
    // On the wire, a RESP3 session gets RESP3 nulls and maps.
    let mut raw = Raw::connect(addrs[0]);
    let hello = raw.roundtrip(b"HELLO 3\r\n");
    assert!(hello.starts_with("%7\r\n$6\r\nserver\r\n$12\r\nreplica-node\r\n"), "{hello}");
    assert!(hello.contains("\r\n$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(raw.roundtrip(b"GET missing\r\n"), "_\r\n");
}
