//! Several servers on loopback, joined in start order, most of them behind a link emulator
//! that delays every packet: remote visibility, no broadcast, budgets, last-writer-wins,
//! joins, security, connections that die under load.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica_node::NodeStats;
use replica_node::client::Client;

/// The requirement (design 4.2): a Put is visible on every other server within 2 s.
const REMOTE_VISIBILITY: Duration = Duration::from_millis(2_000);

fn stat(node: &replica_node::Node, f: impl Fn(&NodeStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    NodeStats::get(f(node.stats()))
}

fn all_clients(c: &[Vec<Client>]) -> impl Iterator<Item = &Client> {
    c.iter().flatten()
}

/// Waits until every actor of every server holds the same map under `prefix`, of `want` keys.
fn converge(cs: &[Vec<Client>], prefix: &str, want: usize, deadline: Duration) {
    let maps = || all_clients(cs).map(|c| c.list(prefix).unwrap()).collect::<Vec<_>>();
    let ok = eventually(deadline, || {
        let m = maps();
        m.iter().all(|x| x.len() == want && *x == m[0])
    });
    if ok.is_none() {
        let sizes: Vec<usize> = maps().iter().map(|m| m.len()).collect();
        panic!(
            "actors did not converge on {want} keys under {prefix:?} within {deadline:?}: sizes {sizes:?}"
        );
    }
}

#[test]
fn remote_writes_are_visible_everywhere_within_two_seconds_at_250_ms() {
    let mut c = Cluster::with_delay("vis", Duration::from_millis(250));
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(10));
    let cs = c.clients();
    let mut worst = Duration::ZERO;
    for round in 0..8 {
        let (from, actor) = (round % 2, round / 2 % 2);
        let key = format!("vis:{round}");
        let start = Instant::now();
        cs[from][actor].put(&key, "v").unwrap();
        for reader in &cs[1 - from] {
            let seen = eventually(REMOTE_VISIBILITY, || reader.get(&key).unwrap().is_some());
            assert!(seen.is_some(), "{key} not visible on server {} within {REMOTE_VISIBILITY:?}", 1 - from);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(250), "faster than the link allows: {took:?}");
        worst = worst.max(took);
        thread::sleep(Duration::from_millis(150));
    }
    eprintln!("worst remote visibility at 250 ms one way: {worst:?}");
}

/// Writes `n` keys of 100 bytes on server `from` (spread over its actors) and waits until
/// every server has them; returns each server's `remote_bytes_received` growth.
fn bytes_received_for_writes(actors: &[usize], from: usize, n: usize) -> Vec<u64> {
    let mut c = Cluster::new("bcast");
    for &a in actors {
        c.add(a);
    }
    c.wait_connected(Duration::from_secs(5));
    let cs = c.clients();
    let before: Vec<u64> = c.nodes.iter().map(|n| stat(n, |s| &s.remote_bytes_received)).collect();
    for i in 0..n {
        cs[from][i % cs[from].len()].put(format!("b:{i:04}"), "x".repeat(100)).unwrap();
    }
    converge(&cs, "b:", n, REMOTE_VISIBILITY);
    c.nodes.iter().zip(before).map(|(n, b)| stat(n, |s| &s.remote_bytes_received) - b).collect()
}

#[test]
fn a_put_crosses_to_each_remote_server_once_however_many_actors() {
    for (actors, from) in [([1, 1, 4], 0), ([4, 1, 4], 0)] {
        let got = bytes_received_for_writes(&actors, from, 300);
        let (one, four) = (got[1], got[2]);
        assert!(one >= 300 * 100, "{actors:?}: the 1-actor server received only {one} bytes");
        assert!(
            four <= 2 * one,
            "{actors:?}: the 4-actor server received {four} bytes, the 1-actor one {one}"
        );
    }
}

fn constant_writes(servers: usize) {
    let mut c = Cluster::new("rate");
    for _ in 0..servers {
        c.add(4);
    }
    c.wait_connected(Duration::from_secs(5));
    let cs = c.clients();
    thread::scope(|s| {
        for (si, server) in cs.iter().enumerate() {
            for (ai, client) in server.iter().enumerate() {
                s.spawn(move || {
                    let start = Instant::now();
                    for n in 0..300u64 {
                        client.put(format!("r:{si}:{ai}:{n:03}"), "v").unwrap();
                        let next = start + Duration::from_millis(10 * (n + 1));
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                });
            }
        }
    });
    converge(&cs, "r:", servers * 4 * 300, REMOTE_VISIBILITY);
    for (i, n) in c.nodes.iter().enumerate() {
        let rate = stat(n, |s| &s.sync_max_pair_rate);
        assert!(rate <= 10, "server {i}: {rate} messages to one recipient within one second");
    }
}

#[test]
fn at_most_ten_messages_per_second_per_pair_with_two_servers() {
    constant_writes(2);
}

#[test]
fn at_most_ten_messages_per_second_per_pair_with_four_servers() {
    constant_writes(4);
}

#[test]
fn remote_sync_bytes_do_not_grow_with_the_store() {
    let mut c = Cluster::new("grow");
    c.add(1);
    c.add(1);
    c.wait_connected(Duration::from_secs(5));
    let cs = c.clients();
    let round = |tag: &str| {
        let before = stat(&c.nodes[0], |s| &s.remote_bytes_sent);
        for i in 0..50 {
            cs[0][0].put(format!("g:{tag}:{i:02}"), "v").unwrap();
        }
        let prefix = format!("g:{tag}:");
        assert!(eventually(REMOTE_VISIBILITY, || cs[1][0].list(&prefix).unwrap().len() == 50).is_some());
        thread::sleep(Duration::from_millis(200));
        stat(&c.nodes[0], |s| &s.remote_bytes_sent) - before
    };
    let first = round("a");
    for i in 0..1_000 {
        cs[1][0].put(format!("bulk:{i:04}"), "x".repeat(100)).unwrap();
    }
    assert!(eventually(REMOTE_VISIBILITY, || cs[0][0].list("bulk:").unwrap().len() == 1_000).is_some());
    let second = round("b");
    assert!(first > 0);
    assert!(second <= 2 * first, "after 1 000 extra keys a round sent {second} bytes, before {first}");
}

#[test]
fn last_writer_wins_across_servers() {
    let mut c = Cluster::with_delay("lww", Duration::from_millis(50));
    for _ in 0..4 {
        c.add(1);
    }
    c.wait_connected(Duration::from_secs(10));
    let cs = c.clients();
    let settle = |key: &str, want: &str| {
        for (s, server) in cs.iter().enumerate() {
            let ok = eventually(REMOTE_VISIBILITY, || {
                server[0].get(key).unwrap().as_deref() == Some(want.as_bytes())
            });
            assert!(ok.is_some(), "server {s} did not settle on {want:?} for {key}");
        }
    };
    // Concurrent (the link takes 50 ms) writes 10 ms apart: the later wins everywhere.
    for round in 0..3 {
        let key = format!("c:{round}");
        cs[round][0].put(&key, "earlier").unwrap();
        thread::sleep(Duration::from_millis(10));
        cs[round + 1][0].put(&key, "later").unwrap();
        settle(&key, "later");
    }
    // A re-Put of the same value wins over a write made in between.
    cs[0][0].put("re", "same").unwrap();
    settle("re", "same");
    cs[1][0].put("re", "between").unwrap();
    settle("re", "between");
    cs[0][0].put("re", "same").unwrap();
    settle("re", "same");
    // A later write on a third server wins over both.
    thread::sleep(Duration::from_millis(10));
    cs[2][0].put("re", "third").unwrap();
    settle("re", "third");
}

#[test]
fn a_joining_server_gets_existing_data_and_its_own_writes_reach_the_others() {
    let mut c = Cluster::with_delay("join", Duration::from_millis(200));
    c.add(2);
    let old = clients(&c.nodes[0]);
    for i in 0..1_000 {
        old[i % 2].put(format!("old:{i:04}"), "x".repeat(100)).unwrap();
    }
    old[0].put("contested", "original").unwrap();
    let start = Instant::now();
    c.add(2);
    let new = clients(&c.nodes[1]);
    // While the join is under way: a write on the new server, and concurrent overwrites on
    // both (the new server's is 10 ms later and must win everywhere).
    new[1].put("from-new", "hello").unwrap();
    old[1].put("contested", "old-side").unwrap();
    thread::sleep(Duration::from_millis(10));
    new[0].put("contested", "new-side").unwrap();
    for (a, cl) in new.iter().enumerate() {
        let ok = eventually(Duration::from_secs(2).saturating_sub(start.elapsed()), || {
            cl.list("old:").unwrap().len() == 1_000
        });
        assert!(ok.is_some(), "actor {a} of the new server lacks existing data 2 s after start");
    }
    eprintln!("the new server had all existing data {:?} after it started", start.elapsed());
    for cl in old.iter().chain(&new) {
        assert!(eventually(REMOTE_VISIBILITY, || cl.get("from-new").unwrap().is_some()).is_some());
        let settled = eventually(REMOTE_VISIBILITY, || {
            cl.get("contested").unwrap().as_deref() == Some(&b"new-side"[..])
        });
        assert!(settled.is_some(), "contested = {:?}", cl.get("contested"));
    }
}

/// Puts `PREFIX:00000`, `PREFIX:00001`, … through `client` every 5 ms until `stop`; returns the
/// keys written.
fn write_until(client: &Client, prefix: &str, stop: &AtomicBool) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{prefix}:{n:05}");
        client.put(&key, format!("{n}")).unwrap();
        keys.insert(key);
        n += 1;
        thread::sleep(Duration::from_millis(5));
    }
    keys
}

#[test]
fn four_servers_joining_while_writes_land_end_identical() {
    let mut c = Cluster::with_delay("chain", Duration::from_millis(200));
    c.add(2);
    let stop = AtomicBool::new(false);
    let written: Vec<BTreeSet<String>> = thread::scope(|s| {
        let mut writers = Vec::new();
        for server in 0..4 {
            if server > 0 {
                thread::sleep(Duration::from_millis(400));
                c.add(2);
            }
            // A writer on every actor of the newest server, from now until the end.
            for actor in clients(&c.nodes[server]) {
                let stop = &stop;
                writers.push(s.spawn(move || {
                    write_until(&actor, &format!("w:{server}:{}", actor.router().next()), stop)
                }));
            }
        }
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: BTreeSet<String> = written.into_iter().flatten().collect();
    let cs = c.clients();
    converge(&cs, "w:", all.len(), Duration::from_secs(5));
    let listed: BTreeSet<String> =
        cs[3][1].list("w:").unwrap().keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
    assert_eq!(listed, all, "exactly the keys written");
}

#[test]
fn stress_two_servers_random_operations_end_identical() {
    let mut c = Cluster::new("stress");
    c.add(4);
    c.add(4);
    c.wait_connected(Duration::from_secs(5));
    let cs = c.clients();
    let written: Vec<Vec<String>> = thread::scope(|s| {
        let mut handles = Vec::new();
        for (si, server) in cs.iter().enumerate() {
            for (ai, client) in server.iter().enumerate() {
                for w in 0..4 {
                    handles.push(s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64((si * 100 + ai * 10 + w) as u64);
                        let mut keys = Vec::new();
                        for op in 0..100 {
                            let key = format!("s:{:02}", rng.random_range(0..60));
                            match rng.random_range(0..3) {
                                0 => {
                                    client.put(&key, format!("{si}{ai}{w}-{op}")).unwrap();
                                    keys.push(key);
                                }
                                1 => drop(client.get(&key).unwrap()),
                                _ => drop(client.list("s:").unwrap()),
                            }
                        }
                        keys
                    }));
                }
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut keys: Vec<String> = written.into_iter().flatten().collect();
    keys.sort();
    keys.dedup();
    converge(&cs, "s:", keys.len(), REMOTE_VISIBILITY);
    let listed: Vec<String> =
        cs[1][3].list("s:").unwrap().keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
    assert_eq!(listed, keys);
}

#[test]
fn a_server_of_another_cluster_cannot_connect_or_exchange_anything() {
    let mut ours = Cluster::new("ours");
    ours.add(1);
    let mut theirs = Cluster::new("theirs");
    theirs.add(1);
    // A server with a foreign CA tries to join ours.
    let config = replica_node::NodeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        actors: 1,
        cluster_dir: Some(theirs.dir.path().to_owned()),
        join: vec![ours.nodes[0].description().clone()],
        progress: false,
        ..replica_node::NodeConfig::default()
    };
    let intruder = replica_node::Node::start(&config).unwrap();
    let planter = &clients(&intruder)[0];
    planter.put("planted", "theirs").unwrap();
    // Meanwhile a legitimate server joins the same way, later: it is admitted, and writes flow
    // both ways. Whatever the intruder's dial (made first) could achieve, it has by now.
    ours.add(1);
    ours.wait_connected(Duration::from_secs(10));
    let cs = ours.clients();
    cs[0][0].put("secret", "ours").unwrap();
    cs[1][0].put("control", "ours").unwrap();
    for c in all_clients(&cs) {
        let both = eventually(REMOTE_VISIBILITY, || {
            c.get("secret").unwrap().is_some() && c.get("control").unwrap().is_some()
        });
        assert!(both.is_some(), "a legitimate write did not cross within {REMOTE_VISIBILITY:?}");
    }
    // For another visibility window, nothing crosses to or from the intruder.
    let leaked = eventually(REMOTE_VISIBILITY, || {
        all_clients(&cs).any(|c| c.get("planted").unwrap().is_some())
            || planter.get("secret").unwrap().is_some()
            || planter.get("control").unwrap().is_some()
            || info_field(planter, "peers_connected") != 0
    });
    assert_eq!(leaked, None, "something crossed between the clusters");
    for c in all_clients(&cs) {
        assert_eq!(info_field(c, "peers_connected"), 1, "each legitimate server has the other, only");
    }
    assert_eq!(info_field(planter, "remote_bytes_received"), 0);
    assert_eq!(info_field(planter, "remote_bytes_sent"), 0);
}

#[test]
fn a_malformed_peer_frame_closes_only_that_connection() {
    let mut c = Cluster::new("badframe");
    c.add(1);
    c.add(1);
    c.wait_connected(Duration::from_secs(5));
    let target = c.nodes[0].description().clone();
    // A peer with a valid certificate of the cluster that sends a frame of the wrong shape.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let closed = rt.block_on(async {
        let cluster = net_quic::ClusterIdentity::load(c.dir.path()).unwrap();
        let me = cluster.mint_node("bad0bad0bad0").unwrap();
        let ep =
            net_quic::PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &me, &Default::default()).unwrap();
        let conn = ep.connect(target.peer_addr().unwrap(), Some(&target.node)).await.unwrap();
        let mut s = conn.open_stream::<String>(net_quic::StreamClass::Control).await.unwrap();
        s.send(&"not a peer message".to_string()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.is_ok()
    });
    assert!(closed, "the server kept a connection that sent garbage");
    // The legitimate link still works both ways.
    let cs = c.clients();
    cs[0][0].put("after", "1").unwrap();
    cs[1][0].put("after2", "2").unwrap();
    converge(&cs, "after", 2, REMOTE_VISIBILITY);
}

#[test]
fn writes_acknowledged_just_before_a_graceful_stop_still_reach_the_other_servers() {
    // A lossy link: the last packets need retransmitting after the stop has begun.
    let link = net_quic::LinkConfig { delay: Duration::from_millis(100), loss: 0.2, ..Default::default() };
    let mut c = Cluster::with_link("stop", Some(link));
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(10));
    let cs = c.clients();
    // A burst, so the last writes are still held by the pacers when the stop begins.
    for i in 0..200 {
        cs[0][i % 2].put(format!("last:{i:03}"), "x".repeat(1_000)).unwrap();
    }
    c.nodes.remove(0).shutdown();
    for (a, cl) in cs[1].iter().enumerate() {
        let ok = eventually(REMOTE_VISIBILITY, || cl.list("last:").unwrap().len() == 200);
        assert!(ok.is_some(), "actor {a} of the surviving server lacks writes made before the stop");
    }
}

#[test]
fn writes_sent_into_a_connection_that_dies_are_sent_again_after_it_is_replaced() {
    // A short idle timeout, so a cut kills the connection within the test; until it is
    // declared dead both gateways go on writing deltas into it, and those never arrive.
    let mut c = Cluster::with_delay("cut", Duration::from_millis(20));
    c.peer_idle_timeout = Duration::from_millis(1_500);
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(10));
    let cs = c.clients();
    let connected = |i: usize| stat(&c.nodes[i], |s| &s.peers_connected);
    let stop = AtomicBool::new(false);
    let written: Vec<BTreeSet<String>> = thread::scope(|s| {
        let mut writers = Vec::new();
        for (server, actors) in cs.iter().enumerate() {
            for (actor, client) in actors.iter().enumerate() {
                let stop = &stop;
                writers.push(s.spawn(move || write_until(client, &format!("cut:{server}:{actor}"), stop)));
            }
        }
        thread::sleep(Duration::from_millis(300));
        c.relays[0].cut();
        let died = eventually(Duration::from_secs(5), || connected(0) == 0 && connected(1) == 0);
        assert!(died.is_some(), "the cut did not end the connection");
        eprintln!("the connection died {died:?} into the cut");
        // Writes queue for the disconnected peer meanwhile.
        thread::sleep(Duration::from_millis(300));
        c.relays[0].heal();
        let back = eventually(Duration::from_secs(10), || connected(0) == 1 && connected(1) == 1);
        assert!(back.is_some(), "the servers did not reconnect after the heal");
        eprintln!("reconnected {back:?} after the heal");
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: BTreeSet<String> = written.into_iter().flatten().collect();
    converge(&cs, "cut:", all.len(), Duration::from_secs(5));
    for (i, cl) in all_clients(&cs).enumerate() {
        let listed: BTreeSet<String> =
            cl.list("cut:").unwrap().keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
        assert_eq!(listed, all, "actor {i}: exactly the keys written");
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let rate = stat(n, |s| &s.sync_max_pair_rate);
        assert!(rate <= 10, "server {i}: {rate} messages to one recipient within one second");
    }
}
