//! Identity and membership on real sockets (design 4.7): servers restarted without their data
//! (the first one and a later one), a join cut short by a failed link, a partial `--join` list,
//! `CLUSTER FORGET`, joins naming the server itself, and the real binary killed and restarted.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use replica_node::client::{Client, Fixed, RoundRobin};
use replica_node::{NodeConfig, NodeStats};
use resp::Value;

/// The requirement: a server restarted without its data is refilled and takes part again
/// within 10 s (loopback, 50 ms links).
const REFILL: Duration = Duration::from_secs(10);

fn stat(node: &replica_node::Node, f: impl Fn(&NodeStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    NodeStats::get(f(node.stats()))
}

/// A command's reply as text, or the server's error.
fn raw(client: &Client, args: &[&str]) -> Result<String, String> {
    match client.command(args) {
        Ok(Value::Simple(s)) => Ok(s),
        Ok(Value::Bulk(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `CLUSTER NODES` as node id → (state, peer address).
fn cluster_nodes(client: &Client) -> BTreeMap<String, (String, String)> {
    let text = raw(client, &["CLUSTER", "NODES"]).expect("CLUSTER NODES answers");
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "id peer state last-contact: {l:?}");
            (f[0].to_owned(), (f[2].to_owned(), f[1].to_owned()))
        })
        .collect()
}

/// Waits until every actor of every server holds exactly `want` keys under `prefix`.
fn all_hold(c: &Cluster, prefix: &str, want: usize, deadline: Duration) -> Option<Duration> {
    let cs = c.clients();
    eventually_every(deadline, Duration::from_millis(20), || {
        cs.iter().flatten().all(|cl| cl.list(prefix).is_ok_and(|m| m.len() == want))
    })
}

fn restart_refills_and_rejoins(restarted: usize) {
    let mut c = Cluster::with_delay("restart", Duration::from_millis(50));
    c.add(2);
    c.add(2);
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    let writer = (restarted + 1) % 3;
    let cl = c.client(writer);
    for i in 0..300 {
        cl.put(format!("old:{i:03}"), "x".repeat(100)).unwrap();
    }
    assert!(all_hold(&c, "old:", 300, Duration::from_secs(5)).is_some());
    let old_id = c.nodes[restarted].description().node.clone();
    let start = Instant::now();
    let new_id = c.restart(restarted).description().node.clone();
    assert_ne!(new_id, old_id, "without a data directory a restarted server is a new server");
    // Refilled, connected to everyone, and its new writes reach the others.
    let filled = all_hold(&c, "old:", 300, REFILL);
    assert!(filled.is_some(), "the restarted server was not refilled within {REFILL:?}");
    assert!(
        c.try_wait_connected(REFILL.saturating_sub(start.elapsed())),
        "not reconnected within {REFILL:?}"
    );
    c.client(restarted).put("new", "from the restarted server").unwrap();
    assert!(all_hold(&c, "new", 1, REFILL.saturating_sub(start.elapsed())).is_some());
    eprintln!("server {restarted} restarted, refilled and rejoined in {:?}", start.elapsed());
    assert!(start.elapsed() <= REFILL);
    let loading = stat(&c.nodes[restarted], |s| &s.loading);
    assert_eq!(loading, 0, "loading ends with the refill");
    // Every server shows the old id as replaced, and it holds nothing back.
    for i in 0..3 {
        let seen = eventually(Duration::from_secs(2), || {
            let nodes = cluster_nodes(&c.client(i));
            nodes.get(&old_id).is_some_and(|(s, _)| s == "replaced")
                && nodes
                    .get(&new_id)
                    .is_some_and(|(s, _)| s == if i == restarted { "self" } else { "connected" })
        });
        assert!(seen.is_some(), "server {i}: {:?}", cluster_nodes(&c.client(i)));
    }
}

#[test]
fn the_first_server_restarted_without_its_data_is_refilled_and_rejoins() {
    restart_refills_and_rejoins(0);
}

#[test]
fn a_later_server_restarted_without_its_data_is_refilled_and_rejoins() {
    restart_refills_and_rejoins(1);
}

#[test]
fn a_join_cut_short_by_a_failed_link_resumes_until_complete() {
    // A short idle timeout, so the cut kills the connection within the test.
    let mut c = Cluster::with_delay("cut-join", Duration::from_millis(20));
    c.peer_idle_timeout = Duration::from_millis(1_500);
    c.add(2);
    let cl = c.client(0);
    let keys = 20_000;
    for i in 0..keys {
        cl.put(format!("k{i:05}"), "v".repeat(1_000)).unwrap();
    }
    // Cut the link as soon as the first chunks have arrived.
    let joiner = c.add(1);
    let stats = joiner.stats();
    let started = eventually(Duration::from_secs(10), || NodeStats::get(&stats.fill_received) > 0);
    assert!(started.is_some(), "the snapshot did not start");
    c.relays[0].cut();
    let got = NodeStats::get(&c.nodes[1].stats().fill_received);
    assert!(got < keys, "the transfer ended before the cut ({got} of {keys}); nothing was tested");
    assert_eq!(info_field(&c.client(1), "loading"), 1, "loading while the snapshot is incomplete");
    // The connection dies; the joiner serves meanwhile and says it is loading.
    let died = eventually(Duration::from_secs(5), || stat(&c.nodes[1], |s| &s.peers_connected) == 0);
    assert!(died.is_some());
    assert_eq!(info_field(&c.client(1), "loading"), 1);
    c.relays[0].heal();
    assert!(all_hold(&c, "k", keys as usize, Duration::from_secs(30)).is_some(), "the join never completed");
    assert_eq!(info_field(&c.client(1), "loading"), 0);
    // It resumed where it stopped rather than starting over.
    let received = stat(&c.nodes[1], |s| &s.fill_received);
    assert!(received <= keys + 2_000, "{received} snapshot entries for {keys} keys");
}

#[test]
fn writes_dropped_for_an_unreachable_server_reach_it_through_repair() {
    let mut c = Cluster::with_delay("repair", Duration::from_millis(20));
    c.peer_idle_timeout = Duration::from_millis(1_500);
    c.peer_pending_limit = 100;
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(10));
    c.relays[0].cut();
    let apart =
        eventually(Duration::from_secs(5), || (0..2).all(|i| stat(&c.nodes[i], |s| &s.peers_connected) == 0));
    assert!(apart.is_some(), "the cut did not end the connection");
    // More writes than a server keeps for an unreachable peer: dropped, left to repair.
    let (a, b) = (c.client(0), c.client(1));
    for i in 0..500 {
        a.put(format!("r:a{i:03}"), "x").unwrap();
    }
    for i in 0..50 {
        b.put(format!("r:b{i:03}"), "y").unwrap();
    }
    let before: u64 = (0..2).map(|i| stat(&c.nodes[i], |s| &s.repair_entries_received)).sum();
    assert_eq!(before, 0);
    c.relays[0].heal();
    let healed = all_hold(&c, "r:", 550, Duration::from_secs(30));
    assert!(healed.is_some(), "repair did not bring the servers together");
    eprintln!("repaired {healed:?} after the heal");
    let received = stat(&c.nodes[1], |s| &s.repair_entries_received);
    assert!(received >= 400, "server 1 got {received} entries through repair");
    let rounds: u64 = (0..2).map(|i| stat(&c.nodes[i], |s| &s.repair_rounds)).sum();
    assert!(rounds >= 1);
    // In sync, repair goes quiet.
    std::thread::sleep(Duration::from_secs(3));
    let settled: u64 = (0..2).map(|i| stat(&c.nodes[i], |s| &s.repair_rounds)).sum();
    std::thread::sleep(Duration::from_secs(5));
    let later: u64 = (0..2).map(|i| stat(&c.nodes[i], |s| &s.repair_rounds)).sum();
    assert_eq!(settled, later, "no rounds while replicas agree");
}

#[test]
fn an_advertised_host_is_what_others_dial() {
    let dir = temp_dir("advertise");
    let first = replica_node::Node::start(&NodeConfig {
        port: 0,
        actors: 1,
        advertise: Some("localhost".into()),
        cluster_dir: Some(dir.path().to_owned()),
        ..NodeConfig::default()
    })
    .unwrap();
    let d = first.description().clone();
    assert!(d.peer.starts_with("localhost:") && d.clients[0].starts_with("localhost:"), "{d:?}");
    let second = replica_node::Node::start(&NodeConfig {
        port: 0,
        actors: 1,
        cluster_dir: Some(dir.path().to_owned()),
        join: vec![d],
        ..NodeConfig::default()
    })
    .unwrap();
    let ok = eventually(Duration::from_secs(10), || NodeStats::get(&second.stats().peers_connected) == 1);
    assert!(ok.is_some(), "the joiner could not reach the advertised host");
}

#[test]
fn a_server_joined_through_one_member_connects_to_all_of_them() {
    let mut c = Cluster::new("partial");
    c.add(1);
    c.add(1);
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    // Told only of server 1.
    c.add_joining(1, &[1]);
    c.wait_connected(Duration::from_secs(10));
    c.client(3).put("from-the-last", "x").unwrap();
    c.client(0).put("from-the-first", "x").unwrap();
    for i in 0..4 {
        let cl = c.client(i);
        let both = eventually(Duration::from_secs(5), || cl.list("from-").is_ok_and(|m| m.len() == 2));
        assert!(both.is_some(), "server {i} lacks a write");
        assert_eq!(cluster_nodes(&cl).len(), 4);
    }
    // One snapshot, not one per server.
    let sent: u64 = (0..3).map(|i| stat(&c.nodes[i], |s| &s.remote_bytes_sent)).sum();
    assert!(sent < 1_000_000, "{sent} bytes");
}

#[test]
fn cluster_forget_removes_a_dead_server_everywhere() {
    let mut c = Cluster::new("forget");
    c.add(1);
    c.add(1);
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    let gone = c.nodes[2].description().node.clone();
    c.nodes.remove(2).shutdown();
    let (a, b) = (c.client(0), c.client(1));
    let down = eventually(Duration::from_secs(5), || {
        cluster_nodes(&a).get(&gone).is_some_and(|(s, _)| s == "disconnected")
    });
    assert!(down.is_some(), "{:?}", cluster_nodes(&a));
    assert!(raw(&a, &["CLUSTER", "FORGET", "123456"]).unwrap_err().contains("unknown node"));
    let me = c.nodes[0].description().node.clone();
    assert!(raw(&a, &["CLUSTER", "FORGET", &me]).unwrap_err().contains("forget myself"));
    assert_eq!(raw(&a, &["CLUSTER", "FORGET", &gone]).unwrap(), "OK");
    // Both servers drop it: the one asked, and the other through the membership it hears.
    for cl in [&a, &b] {
        let forgotten = eventually(Duration::from_secs(5), || !cluster_nodes(cl).contains_key(&gone));
        assert!(forgotten.is_some(), "{:?}", cluster_nodes(cl));
    }
    // And nothing more is queued for it.
    a.put("after", "x").unwrap();
    assert!(eventually(Duration::from_secs(2), || b.get("after").unwrap().is_some()).is_some());
}

#[test]
fn a_join_naming_the_server_itself_or_repeated_is_ignored() {
    let mut c = Cluster::new("self-join");
    c.add(1);
    let first = c.nodes[0].description().clone();
    // The second server is told of the first twice.
    let config = NodeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        actors: 1,
        cluster_dir: Some(c.dir.path().to_owned()),
        join: vec![first.clone(), first.clone()],
        ..NodeConfig::default()
    };
    let second = replica_node::Node::start(&config).expect("a repeated --join is not an error");
    let cl = Client::new(Fixed(second.description().client_addrs()[0]));
    assert!(eventually(Duration::from_secs(5), || cluster_nodes(&cl).len() == 2).is_some());
    // The first restarted at its address with a --join naming that very address.
    let mut config = c.configs[0].clone();
    config.join = vec![first];
    c.nodes.remove(0).shutdown();
    let again = replica_node::Node::start(&config).expect("a --join naming this server is not an error");
    let cl = Client::new(Fixed(again.description().client_addrs()[0]));
    // It does not dial itself; the second server finds it and it joins the cluster.
    let joined = eventually(Duration::from_secs(10), || {
        cluster_nodes(&cl).values().filter(|(s, _)| s == "connected").count() == 1
    });
    assert!(joined.is_some(), "{:?}", cluster_nodes(&cl));
    second.shutdown();
    again.shutdown();
}

#[test]
fn a_server_that_creates_a_new_ca_while_told_to_join_stops_with_an_error() {
    let mut c = Cluster::new("new-ca");
    c.add(1);
    let elsewhere = temp_dir("new-ca-elsewhere");
    let config = NodeConfig {
        port: 0,
        actors: 1,
        cluster_dir: Some(elsewhere.path().to_owned()),
        join: vec![c.nodes[0].description().clone()],
        ..NodeConfig::default()
    };
    let err = replica_node::Node::start(&config).expect_err("it could never be admitted");
    assert!(err.to_string().contains("--join"), "{err}");
}

#[test]
fn the_first_server_killed_and_started_again_with_the_same_command_line_is_refilled() {
    let dir = temp_dir("kill-first");
    let cluster_dir = dir.path().to_string_lossy().into_owned();
    let port = free_port_block(2).to_string();
    let first_args = ["--port", &port, "--actors", "2", "--cluster-dir", &cluster_dir];
    let mut first = NodeProcess::start(&first_args);
    // The second joins the first through a 50 ms relay.
    let relay = net_quic::LinkEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        first.desc.peer_addr().unwrap(),
        net_quic::LinkConfig::with_delay(Duration::from_millis(50)),
    )
    .unwrap();
    let mut via_relay = first.desc.clone();
    via_relay.peer = relay.local_addr().to_string();
    let join = via_relay.to_line();
    let port2 = free_port_block(1).to_string();
    let second = NodeProcess::start(&[
        "--port",
        &port2,
        "--actors",
        "1",
        "--cluster-dir",
        &cluster_dir,
        "--join",
        &join,
    ]);
    let b = Client::new(Fixed(second.desc.client_addrs()[0]));
    for i in 0..100 {
        b.put(format!("k{i:03}"), "v").unwrap();
    }
    let a = Client::new(RoundRobin::new(first.desc.client_addrs()).unwrap());
    assert!(eventually(Duration::from_secs(5), || a.list("k").is_ok_and(|m| m.len() == 100)).is_some());
    // kill -9, and the same command line again.
    let old_id = first.desc.node.clone();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let start = Instant::now();
    first = NodeProcess::start(&first_args);
    assert_ne!(first.desc.node, old_id);
    let clients: Vec<Client> = first.desc.client_addrs().into_iter().map(|a| Client::new(Fixed(a))).collect();
    let refilled = eventually(REFILL, || clients.iter().all(|cl| cl.list("k").is_ok_and(|m| m.len() == 100)));
    assert!(refilled.is_some(), "the restarted first server was not refilled within {REFILL:?}");
    clients[0].put("new", "x").unwrap();
    let reached =
        eventually(REFILL.saturating_sub(start.elapsed()), || b.get("new").is_ok_and(|v| v.is_some()));
    assert!(reached.is_some(), "its new writes do not reach the second server");
    eprintln!("the killed first server was back in the cluster after {:?}", start.elapsed());
    let nodes = cluster_nodes(&b);
    assert_eq!(nodes.get(&old_id).map(|(s, _)| s.as_str()), Some("replaced"), "{nodes:?}");
}

/// `replica-node issue-cert`: the operator keeps the CA key; a server given only `ca.pem` and
/// its own certificate and key runs as that node, is admitted by the others, keeps its id
/// across restarts, and cannot be confused with another node's data directory.
#[test]
fn a_server_with_an_issued_certificate_joins_without_the_ca_key() {
    let dir = temp_dir("issue-cert");
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("node-b");
    let data = dir.path().join("data-b");
    let issue = |out: &std::path::Path, node: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_replica-node"));
        cmd.args(["issue-cert", "--cluster-dir"]).arg(&ca_dir).arg("--out").arg(out);
        if let Some(id) = node {
            cmd.args(["--node", id]);
        }
        cmd.output().unwrap()
    };
    // No CA yet: issue-cert refuses, and creates none.
    let refused = issue(&out, None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ca.key"), "{refused:?}");
    assert!(!ca_dir.join("ca.key").exists());

    let port = free_port_block(1).to_string();
    let a =
        NodeProcess::start(&["--port", &port, "--actors", "1", "--cluster-dir", ca_dir.to_str().unwrap()]);
    let issued = issue(&out, None);
    assert!(issued.status.success(), "{issued:?}");
    let id = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 12, "{id:?}");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.pem", "node.key", "node.pem"], "no CA key for the server");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("node.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    }
    let again = issue(&out, None);
    assert_eq!(again.status.code(), Some(2), "never overwrites");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"), "{again:?}");
    assert_eq!(issue(&dir.path().join("x"), Some("NOT-HEX")).status.code(), Some(2));

    let join = a.desc.to_line();
    let port_b = free_port_block(1).to_string();
    let b_args = [
        "--port",
        &port_b,
        "--actors",
        "1",
        "--cluster-dir",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--join",
        &join,
    ];
    let mut b = NodeProcess::start(&b_args);
    assert_eq!(b.desc.node, id, "the server runs as the node of its certificate");
    let ca = Client::new(Fixed(a.desc.client_addrs()[0]));
    let cb = Client::new(Fixed(b.desc.client_addrs()[0]));
    ca.put("from-a", "1").unwrap();
    cb.put("from-b", "2").unwrap();
    let both =
        |c: &Client| c.get("from-a").ok().flatten().is_some() && c.get("from-b").ok().flatten().is_some();
    assert!(
        eventually(Duration::from_secs(10), || both(&ca) && both(&cb)).is_some(),
        "{}",
        b.log.lock().unwrap()
    );
    // The same node after a restart.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    b = NodeProcess::start(&b_args);
    assert_eq!(b.desc.node, id);
    drop(b);
    // Another node's certificate with this data directory: a clear error, not a second identity.
    let other = dir.path().join("node-c");
    assert!(issue(&other, Some("00000000000c")).status.success());
    let port_c = free_port_block(1).to_string();
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_replica-node"))
        .args(["--port", &port_c, "--actors", "1", "--cluster-dir", other.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let why = String::from_utf8_lossy(&wrong.stderr);
    assert!(why.contains("belongs to node") && why.contains("00000000000c"), "{why}");
}
