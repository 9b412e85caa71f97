//! Test and benchmark support (feature `testkit`): a cluster of in-process servers on loopback.
//!
//! Servers of a [`Cluster`] share a cluster CA in a temporary directory; each new server joins
//! every server started before it, and with a link configuration each joining pair talks
//! through its own [`net_quic::LinkEmulator`] (which the joining server dials in place of the
//! older server's peer address, as design 4.4 allows). Not part of the server's API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use net_quic::{LinkConfig, LinkEmulator};

use crate::stats::NodeStats;
use crate::{Node, NodeConfig};
use replica_client::{Client, Fixed, RoundRobin};
/// The temporary directory type of the cluster's CA (and of benches that need one): an existing,
/// empty directory, removed on drop.
pub use tempfile::TempDir;

/// Servers of one cluster on loopback, optionally with a link emulator on every link.
///
/// Dropping it stops the servers (all at once: each waits up to a second for its peers to
/// acknowledge the close), then the relays, then removes the directory.
#[derive(Debug)]
pub struct Cluster {
    /// The servers, in start order.
    pub nodes: Vec<Node>,
    /// The relays, one per joining pair, in join order.
    pub relays: Vec<LinkEmulator>,
    /// The link every new pair gets (`None`: direct).
    pub link: Option<LinkConfig>,
    /// The cluster CA's directory (created empty; the first server writes the CA into it).
    pub dir: TempDir,
    /// The peer idle timeout of every server started from now on (see
    /// [`NodeConfig::peer_idle_timeout`]).
    pub peer_idle_timeout: Duration,
}

impl Cluster {
    /// An empty cluster whose servers talk directly.
    pub fn new(tag: &str) -> Cluster {
        Cluster::with_link(tag, None)
    }

    /// An empty cluster whose links delay every packet by `delay` one way.
    pub fn with_delay(tag: &str, delay: Duration) -> Cluster {
        Cluster::with_link(tag, Some(LinkConfig { delay, ..LinkConfig::default() }))
    }

    /// An empty cluster whose links (if any) behave as `link` says.
    pub fn with_link(tag: &str, link: Option<LinkConfig>) -> Cluster {
        Cluster {
            nodes: Vec::new(),
            relays: Vec::new(),
            link,
            dir: temp_dir(tag),
            peer_idle_timeout: NodeConfig::default().peer_idle_timeout,
        }
    }

    /// Starts a server of `actors` actors that joins every server started before it.
    pub fn add(&mut self, actors: usize) -> &Node {
        let mut join = Vec::new();
        for n in &self.nodes {
            let mut d = n.description().clone();
            if let Some(link) = &self.link {
                let target = d.peer_addr().expect("a node's own description resolves");
                let relay = LinkEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), target, *link)
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
            cluster_dir: Some(self.dir.path().to_owned()),
            join,
            progress: false,
            peer_idle_timeout: self.peer_idle_timeout,
            ..NodeConfig::default()
        };
        self.nodes.push(Node::start(&config).expect("node starts"));
        self.nodes.last().expect("just pushed")
    }

    /// Waits until every server reports a connection to every other; false on timeout.
    pub fn try_wait_connected(&self, deadline: Duration) -> bool {
        let want = self.nodes.len() as u64 - 1;
        eventually(deadline, || self.nodes.iter().all(|n| NodeStats::get(&n.stats().peers_connected) == want))
            .is_some()
    }

    /// Like [`Cluster::try_wait_connected`], but panics on timeout.
    pub fn wait_connected(&self, deadline: Duration) {
        assert!(self.try_wait_connected(deadline), "servers did not all connect within {deadline:?}");
    }

    /// The client addresses of server `i`, one per actor.
    pub fn addrs(&self, i: usize) -> Vec<SocketAddr> {
        self.nodes[i].description().client_addrs()
    }

    /// One client per actor of every server, server by server.
    pub fn clients(&self) -> Vec<Vec<Client>> {
        self.nodes.iter().map(clients).collect()
    }

    /// A client of server `i` that rotates over its actors (as `cmud --server …` does).
    pub fn client(&self, i: usize) -> Client {
        Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_secs(5))
            .build(RoundRobin::new(self.addrs(i)).expect("a server has actors"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for node in self.nodes.drain(..) {
                s.spawn(move || node.shutdown());
            }
        });
    }
}

/// One client per actor of `node`, in actor order, each pinned to its actor's port.
pub fn clients(node: &Node) -> Vec<Client> {
    node.description().client_addrs().into_iter().map(|a| Client::new(Fixed(a))).collect()
}

/// A fresh, empty directory under the system temp dir whose name carries `tag`, removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("replica-node-{tag}-")).tempdir().expect("temporary directory")
}

/// Polls `check` every 2 ms until it returns true or `deadline` passes; returns the time it
/// took.
pub fn eventually(deadline: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    eventually_every(deadline, Duration::from_millis(2), check)
}

/// Polls `check` every `every` until it returns true or `deadline` passes; returns the time it
/// took. A coarser `every` than [`eventually`]'s keeps an expensive check from loading the
/// servers it measures.
pub fn eventually_every(
    deadline: Duration,
    every: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Faults a test injects into a node ([`NodeConfig::faults`]): a failing disk under its data
/// directory, a panic in one of its actors. Shared: set them while the node runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The data directory's disk: [`replica_persist::Fault::Full`] makes the log refuse
    /// writes, [`replica_persist::Fault::Device`] fail for good.
    pub disk: replica_persist::Faults,
    /// Set to `i + 1` to make query actor `i` panic at its next round.
    pub panic_actor: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Faults {
    /// Whether actor `index` is to panic now.
    pub(crate) fn actor_panics(&self, index: usize) -> bool {
        self.panic_actor.load(std::sync::atomic::Ordering::Relaxed) == index + 1
    }
}
