//! Two (or more) servers of one cluster on loopback, for the game's cross-server tests.
//!
//! A trimmed copy of `replica-node/tests/common` (the tests of one crate cannot import another
//! crate's test helpers): every server joins every server started before it, through a link
//! emulator that delays each packet when a delay is set.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replica_node::client::{Client, RoundRobin};
use replica_node::stats::NodeStats;
use replica_node::{Node, NodeConfig};

/// The requirement of the store (design 4.2): a write is visible on every other server within
/// 2 s.
pub const REMOTE_VISIBILITY: Duration = Duration::from_secs(2);

/// What the game may take on top of that to converge (a few reads and writes per command).
pub const GAME_CONVERGENCE: Duration = Duration::from_secs(5);

/// Wall-clock milliseconds, as the binary passes them to the game.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Polls `check` until it returns true or `deadline` passes; returns the time it took.
pub fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A cluster directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "cmud-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Servers of one cluster on loopback, optionally with a link emulator on every link.
///
/// Dropping it stops the servers (all at once), then their relays, then removes the directory.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub relays: Vec<net_quic::LinkEmulator>,
    pub link: Option<net_quic::LinkConfig>,
    pub dir: TempDir,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        Cluster { nodes: Vec::new(), relays: Vec::new(), link: None, dir: TempDir::new(tag) }
    }

    /// Every link gets `delay` one way (a relay per joining pair).
    pub fn with_delay(tag: &str, delay: Duration) -> Cluster {
        let mut c = Cluster::new(tag);
        c.link = Some(net_quic::LinkConfig { delay, ..net_quic::LinkConfig::default() });
        c
    }

    /// Starts a server of `actors` actors that joins every server started before it.
    pub fn add(&mut self, actors: usize) -> &Node {
        let mut join = Vec::new();
        for n in &self.nodes {
            let mut d = n.description().clone();
            if let Some(link) = &self.link {
                let relay = net_quic::LinkEmulator::start(
                    "127.0.0.1:0".parse().unwrap(),
                    d.peer_addr().unwrap(),
                    *link,
                )
                .expect("relay starts");
                d.peer = relay.local_addr().to_string();
                self.relays.push(relay);
            }
            join.push(d);
        }
        let config = NodeConfig {
            host: "127.0.0.1".into(),
            port: 0,
            actors,
            cluster_dir: Some(self.dir.0.clone()),
            join,
            progress: false,
        };
        self.nodes.push(Node::start(&config).expect("node starts"));
        self.nodes.last().unwrap()
    }

    /// Waits until every server reports a connection to every other.
    pub fn wait_connected(&self, deadline: Duration) {
        let want = self.nodes.len() as u64 - 1;
        let ok = eventually(deadline, || {
            self.nodes.iter().all(|n| NodeStats::get(&n.stats().peers_connected) == want)
        });
        assert!(ok.is_some(), "servers did not all connect within {deadline:?}");
    }

    /// The client addresses of server `i`, one per actor.
    pub fn addrs(&self, i: usize) -> Vec<SocketAddr> {
        self.nodes[i].description().client_addrs()
    }

    /// A client of server `i` that rotates over its actors, as `cmud --server …` does.
    pub fn client(&self, i: usize) -> Client {
        Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_secs(5))
            .build(RoundRobin::new(self.addrs(i)).expect("a server has actors"))
    }
}

impl Drop for Cluster {
    /// Stops the servers at once rather than one by one: each waits up to a second for its
    /// peers to acknowledge the close.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for node in self.nodes.drain(..) {
                s.spawn(move || node.shutdown());
            }
        });
    }
}

/// Two servers, the second joined to the first over a link of `delay` one way, connected.
pub fn two_servers(tag: &str, actors: usize, delay: Duration) -> Cluster {
    let mut c = Cluster::with_delay(tag, delay);
    c.add(actors);
    c.add(actors);
    c.wait_connected(Duration::from_secs(10));
    c
}
