//! Clocks and tombstones on real sockets (design 4.9): a server whose clock is far ahead
//! refuses writes and one far behind moves its clock up, so no write of a skewed server beats
//! a later one; entries from the future are refused; deletes are forgotten once every server
//! has them, so a delete/re-insert workload stays flat; the real binary with a skewed clock.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use replica_node::NodeStats;
use replica_node::client::Client;

fn stat(node: &replica_node::Node, f: impl Fn(&NodeStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    NodeStats::get(f(node.stats()))
}

/// Waits until every server has measured every other's clock (the first probes go out when a
/// link comes up).
fn measured(c: &Cluster, min_offset_ms: u64) {
    let ok = eventually(Duration::from_secs(10), || {
        c.nodes.iter().all(|n| stat(n, |s| &s.clock_offset_max_ms) >= min_offset_ms)
    });
    assert!(
        ok.is_some(),
        "clocks not measured: {:?}",
        c.nodes.iter().map(|n| stat(n, |s| &s.clock_offset_max_ms)).collect::<Vec<_>>()
    );
}

#[test]
fn a_server_far_ahead_refuses_writes_and_one_far_behind_moves_its_clock_up() {
    let mut c = Cluster::new("skew");
    c.add(1);
    c.add(1);
    c.next_clock_skew_ms = 5_000;
    c.add(1);
    c.next_clock_skew_ms = -3_000;
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    measured(&c, 2_500);
    let (a, ahead, behind) = (c.client(0), c.client(2), c.client(3));
    // The one ahead refuses writes and says why; it still serves reads.
    let refused = eventually(Duration::from_secs(5), || {
        ahead
            .put("k", "from the server ahead")
            .is_err_and(|e| e.to_string().contains("CLOCKSKEW clock ahead of the cluster by"))
    });
    assert!(refused.is_some(), "{:?}", ahead.put("k", "x"));
    assert_eq!(info_field(&ahead, "clock_refusing_writes"), 1);
    // The one behind moved its clock up by about 3 s: a write it takes after one taken on a
    // correct server wins everywhere, instead of being stamped 3 s in the past and lost.
    assert!(
        eventually(Duration::from_secs(5), || info_field(&behind, "clock_correction_ms") >= 2_500).is_some()
    );
    assert_eq!(info_field(&behind, "clock_refusing_writes"), 0);
    a.put("k", "first, on a correct clock").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    behind.put("k", "later, on the clock behind").unwrap();
    for i in 0..4 {
        let cl = c.client(i);
        let won = eventually(Duration::from_secs(5), || {
            cl.get("k").unwrap().is_some_and(|v| v.as_ref() == b"later, on the clock behind")
        });
        assert!(won.is_some(), "server {i}: {:?}", cl.get("k"));
    }
    assert!(info_field(&ahead, "keys") >= 1, "reads go on");
    assert!(info_field(&a, "clock_offset_max_ms") >= 4_500);
}

#[test]
fn entries_stamped_beyond_the_bound_are_refused_until_they_are_not() {
    // Two servers, one 3 s ahead, with a bound of 500 ms: each refuses writes (neither can tell
    // which clock is wrong). The ahead one's state reaches the other only through repair once
    // its timestamps are no longer in the future.
    let mut c = Cluster::new("future");
    c.add(1);
    c.next_clock_skew_ms = 3_000;
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    measured(&c, 2_500);
    for i in 0..2 {
        let cl = c.client(i);
        let refused = eventually(Duration::from_secs(5), || {
            cl.put("x", "y").is_err_and(|e| e.to_string().contains("CLOCKSKEW"))
        });
        assert!(refused.is_some(), "server {i} takes writes with a peer 3 s apart and nobody to tell");
    }
}

#[test]
fn a_delete_and_reinsert_workload_stays_flat() {
    let mut c = Cluster::new("tombstones");
    c.tombstone_grace = Duration::from_secs(1);
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(10));
    let cs = c.clients();
    let mut most = 0;
    for round in 0..5 {
        for i in 0..200 {
            let cl = &cs[i % 2][i % 2];
            cl.put(format!("churn:{i:03}"), format!("{round}")).unwrap();
            cl.delete(format!("churn:{i:03}")).unwrap();
        }
        most = most.max(cs.iter().flatten().map(|cl| info_field(cl, "tombstones")).max().unwrap_or(0));
    }
    assert!(most >= 100, "the workload leaves tombstones behind ({most}); nothing was tested");
    // Once every server has them and they are older than the grace, they go: everywhere.
    let flat = eventually_every(Duration::from_secs(60), Duration::from_millis(200), || {
        cs.iter().flatten().all(|cl| info_field(cl, "tombstones") == 0 && info_field(cl, "keys") == 0)
    });
    assert!(
        flat.is_some(),
        "tombstones left: {:?}",
        cs.iter().flatten().map(|cl| info_field(cl, "tombstones")).collect::<Vec<_>>()
    );
    let collected: u64 = c.nodes.iter().map(|n| stat(n, |s| &s.tombstones_collected)).sum();
    assert!(collected >= 2 * 200, "{collected}");
    // And no deleted key came back.
    for cl in cs.iter().flatten() {
        assert!(cl.list("churn:").unwrap().is_empty());
    }
}

#[test]
fn a_server_cut_off_holds_collection_back_and_cluster_forget_releases_it() {
    let mut c = Cluster::new("holdback");
    c.tombstone_grace = Duration::from_secs(1);
    c.add(1);
    c.add(1);
    c.add(1);
    c.wait_connected(Duration::from_secs(10));
    let gone = c.nodes[2].description().node.clone();
    c.nodes.remove(2).shutdown();
    let a = c.client(0);
    a.put("held", "x").unwrap();
    a.delete("held").unwrap();
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(info_field(&a, "tombstones"), 1, "a member is down: the delete is kept");
    a.command(&["CLUSTER", "FORGET", &gone]).unwrap();
    let released =
        eventually(Duration::from_secs(30), || (0..2).all(|i| info_field(&c.client(i), "tombstones") == 0));
    assert!(released.is_some(), "forgetting the dead server lets the delete go");
}

#[test]
fn the_binary_with_a_skewed_clock_refuses_writes_and_serves_reads() {
    let dir = temp_dir("bin-skew");
    let cluster_dir = dir.path().to_string_lossy().into_owned();
    let spawn = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replica-node"));
        cmd.args(["--port", "0", "--actors", "1", "--cluster-dir", &cluster_dir]).args(extra);
        NodeProcess::spawn(cmd)
    };
    let a = spawn(&[]);
    let join = a.desc.to_line();
    let b = spawn(&["--join", &join]);
    let ahead = spawn(&["--join", &join, "--test-clock-skew-ms", "8000", "--max-clock-offset", "1s"]);
    let client = Client::new(replica_node::client::Fixed(ahead.desc.client_addrs()[0]));
    // Its clock is measured against its peers' a round trip after it connects (until then it
    // cannot know its clock is off, and a write it took would be stamped 8 s ahead).
    let knows = eventually(Duration::from_secs(10), || info_field(&client, "clock_refusing_writes") == 1);
    assert!(knows.is_some(), "the server 8 s ahead never noticed");
    let err = client.put("k", "v").unwrap_err().to_string();
    assert!(err.contains("CLOCKSKEW clock ahead of the cluster by"), "{err}");
    let on_b = Client::new(replica_node::client::Fixed(b.desc.client_addrs()[0]));
    // It learned of b from a, and connects to it too.
    let meshed = eventually(Duration::from_secs(20), || info_field(&client, "peers_connected") == 2);
    assert!(meshed.is_some(), "the skewed server did not connect to both others");
    on_b.put("k", "from b").unwrap();
    let read = eventually(Duration::from_secs(20), || {
        client.get("k").unwrap().is_some_and(|v| v.as_ref() == b"from b")
    });
    assert!(read.is_some(), "the skewed server still takes the cluster's writes and serves reads");
    assert!(info_field(&on_b, "clock_offset_max_ms") >= 7_000);
    drop((a, b, ahead));
}
