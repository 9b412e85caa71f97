//! `--data-dir`: recovery on restart (in process and as a real process killed with SIGKILL),
//! a refusing disk (`-MISCONF`), fail fast when a thread dies, the lock, clean signals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use replica_node::client::{Client, ClientError, Fixed};
use replica_node::testkit::{Faults, eventually};
use replica_node::{Description, Node, NodeConfig};
use replica_persist::Fault;

mod common;
use common::{NodeProcess, free_port_block, info_field};

fn config(dir: &Path, actors: usize) -> NodeConfig {
    NodeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        actors,
        data_dir: Some(dir.to_owned()),
        ..NodeConfig::default()
    }
}

fn clients(node: &Node) -> Vec<Client> {
    node.description().client_addrs().into_iter().map(|a| Client::new(Fixed(a))).collect()
}

#[test]
fn a_restarted_node_serves_everything_on_every_actor_with_the_same_id_whatever_its_actor_count() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&config(dir.path(), 2)).unwrap();
    let id = node.description().node.clone();
    let cs = clients(&node);
    for i in 0..500 {
        cs[i % 2].put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    for i in (0..500).step_by(7) {
        cs[0].delete(format!("k{i}")).unwrap();
    }
    assert!(info_field(&cs[0], "log_bytes") > 0);
    node.shutdown();
    for actors in [2, 3, 1] {
        let node = Node::start(&config(dir.path(), actors)).unwrap();
        assert_eq!(node.description().node, id, "the id survives the restart");
        for c in clients(&node) {
            for i in 0..500 {
                let expected = (i % 7 != 0).then(|| format!("v{i}").into_bytes());
                assert_eq!(
                    c.get(format!("k{i}")).unwrap().map(|v| v.to_vec()),
                    expected,
                    "k{i}, {actors} actors"
                );
            }
            assert_eq!(info_field(&c, "recovered_entries"), 500);
            assert!(info_field(&c, "last_fsync_ms_ago") < 60_000);
        }
        // A write after recovery wins over the recovered value, on every actor.
        clients(&node)[0].put("k1", "after").unwrap();
        let last = clients(&node).pop().unwrap();
        assert!(
            eventually(Duration::from_secs(2), || last.get("k1").unwrap().as_deref() == Some(&b"after"[..]))
                .is_some()
        );
        clients(&node)[0].put("k1", "v1").unwrap();
        node.shutdown();
    }
}

#[test]
fn a_second_node_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(&config(dir.path(), 1)).unwrap();
    let err = Node::start(&config(dir.path(), 1)).unwrap_err();
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(first);
}

/// A full disk: writes get `-MISCONF` at once (reads go on); once the disk works again writes
/// are accepted, and every write acknowledged before or after is recovered.
#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let node = Node::start(&NodeConfig { faults: faults.clone(), ..config(dir.path(), 2) }).unwrap();
    let cs = clients(&node);
    cs[0].put("before", "1").unwrap();
    faults.disk.set(Fault::Full);
    // The fault is noticed at the next write to the log, at most one commit window later.
    let refused = eventually(Duration::from_secs(2), || match cs[1].put("probe", "x") {
        Err(ClientError::Server(msg)) => {
            assert!(msg.starts_with("MISCONF "), "{msg}");
            true
        }
        Ok(()) => false,
        Err(e) => panic!("{e}"),
    });
    assert!(refused.is_some_and(|t| t < Duration::from_millis(500)), "{refused:?}");
    assert!(matches!(cs[0].delete("before"), Err(ClientError::Server(m)) if m.starts_with("MISCONF")));
    assert_eq!(cs[0].get("before").unwrap().as_deref(), Some(&b"1"[..]), "reads go on");
    assert_eq!(info_field(&cs[0], "misconf"), 1);
    faults.disk.set(Fault::Off);
    let accepted = eventually(Duration::from_secs(3), || cs[1].put("after", "2").is_ok());
    assert!(accepted.is_some(), "writes are accepted again once the log can be written");
    assert_eq!(info_field(&cs[0], "misconf"), 0);
    node.shutdown();
    let node = Node::start(&config(dir.path(), 2)).unwrap();
    for c in clients(&node) {
        assert_eq!(c.get("before").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(c.get("after").unwrap().as_deref(), Some(&b"2"[..]));
    }
}

#[test]
fn a_node_whose_disk_fails_for_good_or_whose_actor_dies_reports_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let node = Node::start(&NodeConfig { faults: faults.clone(), ..config(dir.path(), 2) }).unwrap();
    clients(&node)[0].put("k", "v").unwrap();
    faults.disk.set(Fault::Device);
    let _ = clients(&node)[0].put("k2", "v");
    let why = node
        .failed()
        .recv_timeout(Duration::from_secs(2))
        .expect("the persistence actor's death is reported");
    assert!(why.starts_with("persist:") && why.contains("cannot be written"), "{why}");
    drop(node);

    let node = Node::start(&NodeConfig { faults: faults.clone(), ..replica_node_config(2) }).unwrap();
    faults.panic_actor.store(2, Ordering::Relaxed);
    let _ = clients(&node)[1].get("wake it");
    let why = node.failed().recv_timeout(Duration::from_secs(2)).expect("the actor's death is reported");
    assert!(why.starts_with("actor-1:") && why.contains("panicked"), "{why}");
}

fn replica_node_config(actors: usize) -> NodeConfig {
    NodeConfig { host: "127.0.0.1".into(), port: 0, actors, ..NodeConfig::default() }
}

// ---- the real binary ----

fn start_process(args: &[String], env: Option<(&str, &str)>) -> (NodeProcess, Description) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_replica-node"));
    cmd.args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let node = NodeProcess::spawn(cmd);
    let desc = node.desc.clone();
    (node, desc)
}

fn args(port: u16, actors: usize, data: &Path, cluster: &Path) -> Vec<String> {
    [
        "--port".to_string(),
        port.to_string(),
        "--actors".into(),
        actors.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--cluster-dir".into(),
        cluster.display().to_string(),
    ]
    .to_vec()
}

/// Writes unique keys on every actor port as fast as acknowledgements come, recording when
/// each was acknowledged, until `stop`.
fn write_load(
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Instant>>>,
    round: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    addrs
        .into_iter()
        .enumerate()
        .map(|(a, addr)| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let client = Client::new(Fixed(addr));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("r{round}-a{a}-{i}");
                    match client.put(&key, format!("value of {key}")) {
                        Ok(()) => {
                            acked.lock().unwrap().insert(key, Instant::now());
                        }
                        Err(_) => return, // killed
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

/// Real processes killed with SIGKILL at random points of a write load: after a restart with
/// the same command line (and once with another actor count), every write acknowledged at
/// least 100 ms before the kill is served by every actor, and the node id is the same.
#[test]
fn a_node_killed_at_random_points_of_a_write_load_keeps_every_write_acknowledged_100ms_before() {
    let data = tempfile::tempdir().unwrap();
    let cluster = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let acked: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let mut must_survive: Vec<String> = Vec::new();
    let mut id = None;
    let actors_per_round = [2, 2, 3, 2];
    for (round, &actors) in actors_per_round.iter().enumerate() {
        let port = free_port_block(actors as u16 + 1);
        let (mut child, desc) = start_process(&args(port, actors, data.path(), cluster.path()), None);
        assert_eq!(*id.get_or_insert(desc.node.clone()), desc.node, "round {round}: the same node id");
        // Everything that had to survive the previous kills is served by every actor.
        for addr in desc.client_addrs() {
            let c = Client::new(Fixed(addr));
            for key in &must_survive {
                let got = c.get(key).unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(format!("value of {key}").as_bytes()),
                    "round {round}: {key} at {addr}"
                );
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers = write_load(desc.client_addrs(), stop.clone(), acked.clone(), round);
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        let killed_at = Instant::now();
        child.child.kill().unwrap(); // SIGKILL
        child.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        let acked = acked.lock().unwrap();
        let before = acked.iter().filter(|(_, t)| **t + Duration::from_millis(100) <= killed_at);
        let n0 = must_survive.len();
        must_survive.extend(before.map(|(k, _)| k.clone()).filter(|k| k.starts_with(&format!("r{round}-"))));
        assert!(
            must_survive.len() > n0 + 10,
            "round {round}: the load made writes ({} kept)",
            must_survive.len() - n0
        );
    }
    let port = free_port_block(3);
    let (mut child, desc) = start_process(&args(port, 2, data.path(), cluster.path()), None);
    for addr in desc.client_addrs() {
        let c = Client::new(Fixed(addr));
        for key in &must_survive {
            assert_eq!(c.get(key).unwrap().as_deref(), Some(format!("value of {key}").as_bytes()), "{key}");
        }
    }
    // SIGTERM: a clean exit, and what was written is still there after it.
    Client::new(Fixed(desc.client_addrs()[0])).put("last", "word").unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.child.id().to_string()]).status().unwrap().success());
    assert!(child.child.wait().unwrap().success(), "SIGTERM exits 0");
    let (child, desc) = start_process(&args(port, 1, data.path(), cluster.path()), None);
    assert_eq!(
        Client::new(Fixed(desc.client_addrs()[0])).get("last").unwrap().as_deref(),
        Some(&b"word"[..])
    );
    // A second process on the same directory is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
        .args(args(free_port_block(2), 1, data.path(), cluster.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    drop(child);
}

/// A real process whose disk fails for good, or whose actor panics, exits non-zero at once.
#[test]
fn the_binary_exits_non_zero_at_once_when_its_log_or_an_actor_dies() {
    for fault in ["disk-error", "actor-panic"] {
        let data = tempfile::tempdir().unwrap();
        let cluster = tempfile::tempdir().unwrap();
        let port = free_port_block(3);
        let (mut child, desc) = start_process(
            &args(port, 2, data.path(), cluster.path()),
            Some(("REPLICA_NODE_TEST_FAULT", fault)),
        );
        let client = Client::new(Fixed(desc.client_addrs()[0]));
        let t0 = Instant::now();
        let status = loop {
            let _ = client.put("k", "v");
            if let Some(status) = child.child.try_wait().unwrap() {
                break status;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{fault}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "{fault}");
        let stderr =
            eventually(Duration::from_secs(2), || child.log.lock().unwrap().contains("exiting so that"));
        assert!(stderr.is_some(), "{fault}: {}", child.log.lock().unwrap());
    }
}

/// A server with a data directory, killed with SIGKILL and started again with the same command
/// line, catches up through repair (design 4.3): within 5 s (50 ms links) it holds every write
/// its peer accepted while it was cut off and down, and its peer holds the writes it accepted
/// while its link was cut, just before the kill (nobody else had them: only its disk).
#[test]
fn a_recovered_server_and_its_peer_exchange_what_each_missed_within_5s() {
    const CATCH_UP: Duration = Duration::from_secs(5);
    let data = tempfile::tempdir().unwrap();
    let cluster = tempfile::tempdir().unwrap();
    let port = free_port_block(3);
    let a_args = args(port, 2, data.path(), cluster.path());
    let (mut a, a_desc) = start_process(&a_args, None);
    // The peer joins through a 50 ms relay, which the test cuts. (The older server dials the
    // newer directly only after 5 s without a link: the test's cuts are shorter.)
    let relay = net_quic::LinkEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        a_desc.peer_addr().unwrap(),
        net_quic::LinkConfig::with_delay(Duration::from_millis(50)),
    )
    .unwrap();
    let mut via_relay = a_desc.clone();
    via_relay.peer = relay.local_addr().to_string();
    let b_port = free_port_block(2).to_string();
    let b_args = [
        "--port",
        &b_port,
        "--actors",
        "2",
        "--cluster-dir",
        &cluster.path().display().to_string(),
        "--join",
        &via_relay.to_line(),
    ]
    .map(String::from);
    let (_b, b_desc) = start_process(&b_args, None);
    let on = |desc: &Description| -> Vec<Client> {
        desc.client_addrs().into_iter().map(|addr| Client::new(Fixed(addr))).collect()
    };
    let (a_clients, b_clients) = (on(&a_desc), on(&b_desc));
    let holds_all = |clients: &[Client], expect: &BTreeMap<String, Option<String>>| {
        clients.iter().all(|c| {
            expect
                .iter()
                .all(|(k, v)| c.get(k).is_ok_and(|got| got.as_deref() == v.as_deref().map(str::as_bytes)))
        })
    };
    // Both hold a common past.
    let mut both = BTreeMap::new();
    for i in 0..200 {
        let (k, v) = (format!("old-{i:03}"), format!("v{i}"));
        a_clients[i % 2].put(&k, &v).unwrap();
        both.insert(k, Some(v));
    }
    assert!(eventually(Duration::from_secs(10), || holds_all(&b_clients, &both)).is_some(), "initial sync");

    // The link is cut: each side takes writes the other misses.
    relay.cut();
    let mut only_a = BTreeMap::new();
    for i in 0..100 {
        let (k, v) = (format!("cut-a-{i:03}"), format!("a{i}"));
        a_clients[i % 2].put(&k, &v).unwrap();
        only_a.insert(k, Some(v));
    }
    let mut only_b = BTreeMap::new();
    for i in 0..100 {
        let (k, v) = (format!("cut-b-{i:03}"), format!("b{i}"));
        b_clients[i % 2].put(&k, &v).unwrap();
        only_b.insert(k, Some(v));
    }
    // Past the contract's 100 ms, then kill -9.
    std::thread::sleep(Duration::from_millis(200));
    let a_id = a_desc.node.clone();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // While it is down: new keys, overwrites and deletes of the common past.
    for i in 0..100 {
        let (k, v) = (format!("down-b-{i:03}"), format!("d{i}"));
        b_clients[i % 2].put(&k, &v).unwrap();
        only_b.insert(k, Some(v));
    }
    for i in 0..20 {
        let k = format!("old-{i:03}");
        if i % 2 == 0 {
            b_clients[0].put(&k, "new").unwrap();
            only_b.insert(k, Some("new".into()));
        } else {
            b_clients[1].delete(&k).unwrap();
            only_b.insert(k, None);
        }
    }
    relay.heal();
    let (_a, a_desc) = start_process(&a_args, None);
    let restarted = Instant::now();
    assert_eq!(a_desc.node, a_id, "the same node, from its data directory");
    let a_clients = on(&a_desc);
    // What it recovered is served at once (the description line is printed after recovery).
    assert!(holds_all(&a_clients, &only_a), "its own writes, from its disk");
    let a_caught_up = eventually(CATCH_UP, || holds_all(&a_clients, &only_b));
    let b_caught_up =
        eventually(CATCH_UP.saturating_sub(restarted.elapsed()), || holds_all(&b_clients, &only_a));
    eprintln!(
        "after the restart: the recovered server had its peer's writes after {a_caught_up:?}, the peer had its writes \
         after {:?}",
        b_caught_up.map(|_| restarted.elapsed())
    );
    assert!(a_caught_up.is_some(), "the recovered server lacks its peer's writes after {CATCH_UP:?}");
    assert!(b_caught_up.is_some(), "the peer lacks the recovered server's writes after {CATCH_UP:?}");
}
