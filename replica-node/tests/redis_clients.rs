//! The commands Redis users and tools reach for first, through real clients: `redis-cli`
//! (its commands and its `--stat`, `--bigkeys`, `--memkeys` and `--scan` modes) and redis-py
//! (`scripts/test` installs both).

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use replica_node::client::parse_info;

fn redis_cli_with(addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (scripts/test installs redis-tools)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    redis_cli_with(addr, args, None)
}

#[test]
fn everyday_commands_through_redis_cli() {
    let node = start_node(2);
    let a = node.description().client_addrs();
    let (p, q) = (a[0], a[1]);
    assert_eq!(redis_cli(p, &["MSET", "user:1", "ada", "user:2", "grace"]), "OK\n");
    assert_eq!(redis_cli(p, &["TYPE", "user:1"]), "string\n");
    assert_eq!(redis_cli(p, &["TYPE", "nope"]), "none\n");
    assert_eq!(redis_cli(p, &["SETNX", "user:1", "x"]), "0\n");
    assert_eq!(redis_cli(p, &["SETNX", "user:3", "alan"]), "1\n");
    assert_eq!(redis_cli(p, &["STRLEN", "user:2"]), "5\n");
    assert_eq!(redis_cli(p, &["GETSET", "user:3", "turing"]), "alan\n");
    assert_eq!(redis_cli(p, &["GETRANGE", "user:3", "0", "2"]), "tur\n");
    assert_eq!(redis_cli(p, &["GETDEL", "user:3"]), "turing\n");
    assert_eq!(redis_cli(p, &["EXISTS", "user:3"]), "0\n");
    assert_eq!(redis_cli(p, &["RENAME", "user:2", "user:9"]), "OK\n");
    assert_eq!(redis_cli(p, &["COPY", "user:9", "user:2"]), "1\n");
    assert_eq!(redis_cli(p, &["ROLE"]), "master\n0\n\n");
    let time = redis_cli(p, &["TIME"]);
    let secs: u64 = time.lines().next().unwrap().parse().unwrap();
    assert!(secs > 1_700_000_000, "{time}");
    let usage: u64 = redis_cli(p, &["MEMORY", "USAGE", "user:1"]).trim().parse().unwrap();
    assert!((10..1000).contains(&usage), "{usage}");
    let random = redis_cli(p, &["RANDOMKEY"]);
    assert!(random.starts_with("user:"), "{random}");
    // The table and what COMMAND reports agree.
    let count: usize = redis_cli(p, &["COMMAND", "COUNT"]).trim().parse().unwrap();
    assert_eq!(redis_cli(p, &["COMMAND", "LIST"]).lines().count(), count);
    let docs = redis_cli(p, &["COMMAND", "DOCS", "getdel"]);
    assert!(docs.contains("Returns a key's value and deletes it."), "{docs}");
    // Refused commands say why.
    let incr = redis_cli(p, &["INCR", "n"]);
    assert!(incr.starts_with("ERR INCR is not supported: counters cannot be merged"), "{incr}");
    assert!(redis_cli(p, &["LPUSH", "l", "x"]).starts_with("ERR LPUSH is not supported"));
    // Transactions: redis-cli sends one command per line of its input, on one connection.
    let tx = redis_cli_with(p, &[], Some("MULTI\nSET t 1\nGET t\nSET u 2\nEXEC\n"));
    assert_eq!(tx, "OK\nQUEUED\nQUEUED\nQUEUED\nOK\n1\nOK\n");
    let doomed = redis_cli_with(p, &[], Some("MULTI\nSET t 9\nGET\nEXEC\nGET t\n"));
    assert!(doomed.contains("EXECABORT Transaction discarded because of previous errors."), "{doomed}");
    assert!(doomed.ends_with("1\n"), "nothing of it ran: {doomed}");
    // Everything reaches the other actor; then FLUSHALL on one empties both.
    let synced = eventually(Duration::from_secs(2), || redis_cli(q, &["DBSIZE"]) == "5\n");
    assert!(synced.is_some(), "actor 1 holds {}", redis_cli(q, &["DBSIZE"]));
    assert_eq!(redis_cli(q, &["FLUSHALL"]), "OK\n");
    let flushed = eventually(Duration::from_secs(2), || redis_cli(p, &["DBSIZE"]) == "0\n");
    assert!(flushed.is_some(), "the tombstones reach actor 0");
    let keyspace = parse_info(&redis_cli(p, &["INFO", "keyspace"]));
    assert_eq!(keyspace["db0"], "keys=0,expires=0,avg_ttl=0,tombstones=6");
}

#[test]
fn client_list_kill_and_info_cover_the_whole_node() {
    let node = start_node(2);
    let a = node.description().client_addrs();
    let mut raw = Raw::connect(a[1]);
    assert_eq!(raw.roundtrip(b"CLIENT SETNAME watcher\r\n"), "+OK\r\n");
    let id: u64 = raw.roundtrip(b"CLIENT ID\r\n").trim_start_matches(':').trim().parse().unwrap();
    // CLIENT LIST on actor 0 shows the connection of actor 1.
    let list = redis_cli(a[0], &["CLIENT", "LIST"]);
    let line = list.lines().find(|l| l.starts_with(&format!("id={id} "))).unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains(" name=watcher ") && line.contains(" actor=1") && line.contains(" resp=2 "),
        "{line}"
    );
    assert!(list.lines().count() >= 2, "{list}");
    // CLIENT INFO says resp=2, or resp=3 after HELLO 3.
    assert!(redis_cli(a[0], &["CLIENT", "INFO"]).contains(" resp=2 "));
    let resp3 = redis_cli_with(a[0], &["-3"], Some("HELLO 3\nCLIENT INFO\n"));
    assert!(resp3.contains(" resp=3 "), "{resp3}");
    // CLIENT KILL on actor 0 closes the connection on actor 1.
    assert_eq!(redis_cli(a[0], &["CLIENT", "KILL", "ID", &id.to_string()]), "1\n");
    let (_, closed) = raw.read_some(1);
    assert!(closed, "the killed connection was closed");
    let gone =
        eventually(Duration::from_secs(2), || !redis_cli(a[0], &["CLIENT", "LIST"]).contains("watcher"));
    assert!(gone.is_some());
    let received: u64 =
        parse_info(&redis_cli(a[0], &["INFO", "stats"]))["total_connections_received"].parse().unwrap();
    assert!(received >= 5, "{received}");
}

#[test]
fn scan_cursors_work_on_every_actor_and_redis_cli_tools_work() {
    let node = start_node(2);
    let a = node.description().client_addrs();
    // Keys that differ in their first bytes and keys that share long prefixes.
    let mut pairs = Vec::new();
    for i in 0..150 {
        pairs.push(format!("{i:03}"));
        pairs.push("v".repeat(i % 7 + 1));
        pairs.push(format!("cmud/v1/player/p{i:03}"));
        pairs.push("w".repeat(100 + i));
    }
    let args: Vec<&str> = std::iter::once("MSET").chain(pairs.iter().map(String::as_str)).collect();
    assert_eq!(redis_cli(a[0], &args), "OK\n");
    assert!(eventually(Duration::from_secs(2), || redis_cli(a[1], &["DBSIZE"]) == "300\n").is_some());
    // A scan whose every call goes to the other actor than the last.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    for call in 0..1000 {
        let out = redis_cli(a[call % 2], &["SCAN", &cursor, "COUNT", "9"]);
        let mut lines = out.lines();
        cursor = lines.next().unwrap().to_string();
        seen.extend(lines.map(String::from));
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "the scan ends");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 300, "every key");
    assert_eq!(redis_cli(a[1], &["--scan", "--pattern", "cmud/v1/*"]).lines().count(), 150);
    // --bigkeys (SCAN, TYPE, STRLEN) and --memkeys (MEMORY USAGE).
    let big = redis_cli(a[0], &["--bigkeys"]);
    assert!(big.contains("Biggest string found '\"cmud/v1/player/p149\"' has 249 bytes"), "{big}");
    assert!(big.contains("300 strings with"), "{big}");
    let mem = redis_cli(a[1], &["--memkeys"]);
    assert!(mem.contains("Biggest string found '\"cmud/v1/player/p149\"' has"), "{mem}");
    assert!(mem.contains("300 strings with"), "{mem}");
    // --stat reads INFO every interval: keys, memory, clients, requests, connections.
    let mut stat = Command::new("stdbuf")
        .args(["-oL", "redis-cli", "-h", &a[0].ip().to_string(), "-p", &a[0].port().to_string()])
        .args(["--stat", "-i", "0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("stdbuf (coreutils) and redis-cli");
    std::thread::sleep(Duration::from_millis(700));
    let _ = stat.kill();
    let out = String::from_utf8(stat.wait_with_output().unwrap().stdout).unwrap();
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.len() >= 5)
        .collect();
    assert!(!rows.is_empty(), "{out}");
    let row = &rows[0];
    assert_eq!(row[0], "300", "keys: {out}");
    assert!(row[1].ends_with('M') || row[1].ends_with('K') || row[1].ends_with('G'), "memory: {out}");
    assert!(row[2].parse::<u64>().unwrap() >= 1, "clients: {out}");
    assert_eq!(row[3], "0", "blocked: {out}");
    assert!(row[4].parse::<u64>().unwrap() > 300, "requests: {out}");
}

/// redis-py, as applications use it: its default pipeline (MULTI/EXEC), WATCH, scan_iter,
/// client and server commands.
#[test]
fn redis_py_works() {
    let node = start_node(2);
    let a = node.description().client_addrs();
    let script = format!(
        r#"
import redis, sys, time
r = redis.Redis(host="{host}", port={p})
other = redis.Redis(host="{host}", port={q}, protocol=2)
assert r.ping()
# The default pipeline is a transaction.
pipe = r.pipeline()
pipe.set("a", "1").set("b", "2").get("a").mset({{"c": "3", "d": "4"}})
assert pipe.execute() == [True, True, b"1", True], "pipeline"
# Optimistic locking with WATCH, as the redis-py documentation shows it.
def add_bang(p):
    v = p.get("a")
    p.multi()
    p.set("a", v + b"!")
assert r.transaction(add_bang, "a") == [True]
assert r.get("a") == b"1!"
assert r.setnx("a", "x") is False and r.setnx("e", "5") is True
assert r.getdel("e") == b"5" and r.get("e") is None
assert r.strlen("a") == 2 and r.type("a") == b"string" and r.type("zz") == b"none"
assert r.mget("c", "d", "zz") == [b"3", b"4", None]
assert r.getrange("a", 0, 0) == b"1"
assert r.rename("d", "dd") and r.exists("dd") == 1
assert r.memory_usage("a") > 2
assert isinstance(r.time()[0], int)
assert r.randomkey() in (b"a", b"b", b"c", b"dd")
assert r.client_info()["resp"] in ("2", "3") and other.client_info()["resp"] == "2"
assert r.client_setname("py") and r.client_getname() in ("py", b"py")
assert any(c["name"] == "py" for c in other.client_list())
info = r.info()
for field in ("used_memory", "used_memory_rss", "maxmemory", "connected_clients", "blocked_clients",
              "total_connections_received", "total_commands_processed", "instantaneous_ops_per_sec",
              "keyspace_hits", "keyspace_misses", "role"):
    assert field in info, field
assert info["role"] == "master"
# Expiry, as applications use it.
assert r.set("s", "1", ex=100) and r.ttl("s") == 100 and 99_000 < r.pttl("s") <= 100_000
assert r.set("s", "2", xx=True, keepttl=True) and r.ttl("s") == 100
assert r.set("s", "3", nx=True) is None and r.set("s", "4", get=True) == b"2" and r.ttl("s") == -1
assert r.expire("s", 50) and r.ttl("s") == 50 and r.expire("s", 10, gt=True) is False
assert r.persist("s") and r.ttl("s") == -1 and r.ttl("nope") == -2
assert r.setex("e", 30, "x") and r.ttl("e") == 30 and r.psetex("e", 2500, "y") and r.ttl("e") in (2, 3)
assert r.getex("e", ex=7) == b"y" and r.ttl("e") == 7 and r.getex("e", persist=True) == b"y" and r.ttl("e") == -1
assert r.set("gone", "z", px=100)
time.sleep(0.2)
assert r.get("gone") is None and r.exists("gone") == 0
r.delete("s", "e")
# Every key, across actors, with scan_iter's cursors.
for i in range(100):
    r.set(f"k:{{i:03}}", i)
deadline = time.time() + 2
while other.dbsize() != r.dbsize() and time.time() < deadline:
    time.sleep(0.05)
keys = sorted(other.scan_iter(match="k:*", count=7))
assert len(keys) == 100, len(keys)
try:
    r.incr("n")
    sys.exit("INCR should be refused")
except redis.ResponseError as e:
    assert "last-writer-wins" in str(e), str(e)
assert r.flushall() and r.dbsize() == 0
print("ok")
"#,
        host = a[0].ip(),
        p = a[0].port(),
        q = a[1].port()
    );
    let out = Command::new("python3").args(["-c", &script]).output().expect(
        "python3 with redis-py is installed (scripts/test installs it: python3 -m pip install redis)",
    );
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "redis-py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A deadline travels with its value to every actor of every server; an expired key is gone
/// everywhere and then reclaimed like a delete; an EXPIRE racing a SET on two servers ends the
/// same on every actor.
#[test]
fn expiry_is_replicated_with_the_value_and_reclaimed_on_every_server() {
    let mut cluster = Cluster::new("expiry");
    cluster.tombstone_grace = Duration::from_secs(1);
    cluster.add(2);
    cluster.add(2);
    cluster.wait_connected(Duration::from_secs(10));
    let all: Vec<SocketAddr> = (0..2).flat_map(|i| cluster.addrs(i)).collect();
    let (a, b) = (cluster.addrs(0), cluster.addrs(1));
    let within = Duration::from_secs(5);

    assert_eq!(redis_cli(a[0], &["SET", "k", "v", "EX", "100"]), "OK\n");
    for &addr in &all {
        let ttl = eventually(within, || matches!(redis_cli(addr, &["TTL", "k"]).as_str(), "99\n" | "100\n"));
        assert!(ttl.is_some(), "{addr} has the deadline: {}", redis_cli(addr, &["TTL", "k"]));
    }

    // A short deadline: the value everywhere, then nowhere, then reclaimed.
    assert_eq!(redis_cli(a[1], &["SET", "t", "v", "PX", "600"]), "OK\n");
    assert!(eventually(within, || redis_cli(b[1], &["GET", "t"]) == "v\n").is_some());
    for &addr in &all {
        assert!(eventually(within, || redis_cli(addr, &["EXISTS", "t"]) == "0\n").is_some(), "{addr}");
    }
    for &addr in &all {
        // Swept into a tombstone by each server's actor 0, then collected once both servers
        // hold it and the grace has passed: no key, no tombstone left.
        let reclaimed = eventually_every(Duration::from_secs(60), Duration::from_millis(500), || {
            let ks = parse_info(&redis_cli(addr, &["INFO", "keyspace"]));
            ks.get("db0")
                .is_some_and(|db| db.starts_with("keys=1,expires=1,") && db.ends_with("tombstones=0"))
        });
        assert!(reclaimed.is_some(), "{addr}: {}", redis_cli(addr, &["INFO", "keyspace"]));
    }
    let swept: u64 = (0..2)
        .map(|i| {
            parse_info(&redis_cli(cluster.addrs(i)[0], &["INFO", "stats"]))["expired_keys"]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(swept >= 1, "the sweep counted it");

    // EXPIRE on one server racing SET on the other: whichever is later wins, everywhere.
    assert_eq!(redis_cli(a[0], &["SET", "r", "v0"]), "OK\n");
    assert!(eventually(within, || redis_cli(b[0], &["GET", "r"]) == "v0\n").is_some());
    assert_eq!(redis_cli(a[0], &["EXPIRE", "r", "1000"]), "1\n");
    assert_eq!(redis_cli(b[0], &["SET", "r", "v1"]), "OK\n");
    let agreed = eventually(within, || {
        let states: Vec<String> =
            all.iter().map(|&x| redis_cli(x, &["MGET", "r"]) + &redis_cli(x, &["TTL", "r"])).collect();
        states.iter().all(|s| *s == states[0])
    });
    assert!(agreed.is_some(), "every actor ends the same");
    let end = redis_cli(a[1], &["TTL", "r"]);
    let value = redis_cli(a[1], &["GET", "r"]);
    assert!(
        (value == "v1\n" && end == "-1\n") || (value == "v0\n" && end.trim().parse::<i64>().unwrap() > 990),
        "one of the two writes won whole: {value:?} {end:?}"
    );
}

/// The rest of the table through `redis-cli`: commands the tests above do not reach.
#[test]
fn the_remaining_commands_through_redis_cli() {
    let node = start_node(2);
    let a = node.description().client_addrs()[0];
    let cli = |args: &[&str]| redis_cli(a, args);
    assert_eq!(cli(&["MSETNX", "a", "1", "b", "2"]), "1\n");
    assert_eq!(cli(&["MSETNX", "b", "9", "c", "3"]), "0\n");
    assert_eq!(cli(&["SUBSTR", "a", "0", "0"]), "1\n");
    assert_eq!(cli(&["TOUCH", "a", "b", "c"]), "2\n");
    assert_eq!(cli(&["RENAMENX", "a", "b"]), "0\n");
    assert_eq!(cli(&["RENAMENX", "a", "c"]), "1\n");
    assert_eq!(cli(&["UNLINK", "b", "c"]), "2\n");
    assert_eq!(cli(&["SETEX", "e", "100", "v"]), "OK\n");
    assert_eq!(cli(&["PSETEX", "p", "100000", "v"]), "OK\n");
    assert_eq!(cli(&["GETEX", "p", "PX", "50000"]), "v\n");
    let pttl: i64 = cli(&["PTTL", "p"]).trim().parse().unwrap();
    assert!((49_000..=50_000).contains(&pttl), "{pttl}");
    assert_eq!(cli(&["PEXPIRE", "e", "30000"]), "1\n");
    assert_eq!(cli(&["TTL", "e"]), "30\n");
    let now: u64 = cli(&["TIME"]).lines().next().unwrap().parse().unwrap();
    assert_eq!(cli(&["EXPIREAT", "e", &(now + 500).to_string()]), "1\n");
    assert_eq!(cli(&["EXPIRETIME", "e"]), format!("{}\n", now + 500));
    assert_eq!(cli(&["PEXPIREAT", "e", &((now + 600) * 1000).to_string()]), "1\n");
    assert_eq!(cli(&["PEXPIRETIME", "e"]), format!("{}\n", (now + 600) * 1000));
    assert_eq!(cli(&["PERSIST", "e"]), "1\n");
    assert_eq!(cli(&["TTL", "e"]), "-1\n");
    // WATCH, UNWATCH, DISCARD, RESET and SELECT on one connection.
    let session = redis_cli_with(
        a,
        &[],
        Some(
            "WATCH e\nUNWATCH\nMULTI\nSET e changed\nDISCARD\nGET e\nSELECT 0\nCLIENT SETNAME me\nRESET\nCLIENT GETNAME\n",
        ),
    );
    assert_eq!(session, "OK\nOK\nOK\nQUEUED\nOK\nv\nOK\nOK\nRESET\n\n");
    let config = cli(&["CONFIG", "GET", "save"]);
    assert_eq!(config, "save\n\n");
    assert_eq!(cli(&["FLUSHDB"]), "OK\n");
    assert_eq!(cli(&["DBSIZE"]), "0\n");
}

/// Every command of the table is driven through a real client by these tests or by
/// `redis_cli.rs`: its name appears in one of the two files.
#[test]
fn every_command_of_the_table_is_driven_by_a_real_client() {
    let node = start_node(1);
    let names = redis_cli(node.description().client_addrs()[0], &["COMMAND", "LIST"]);
    let sources =
        [include_str!("redis_clients.rs"), include_str!("redis_cli.rs"), include_str!("client_limits.rs")]
            .concat();
    // Words of the sources, escapes (`\n` in a redis-cli script) taken as spaces.
    let words: std::collections::BTreeSet<String> = sources
        .replace("\\n", " ")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .collect();
    let missing: Vec<&str> = names.lines().filter(|n| !words.contains(*n)).collect();
    assert!(missing.is_empty(), "no test here drives {missing:?} through a client");
}
