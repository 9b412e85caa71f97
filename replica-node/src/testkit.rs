//! Test and benchmark support (feature `testkit`): a cluster of in-process servers on loopback.
//!
//! Servers of a [`Cluster`] share a cluster CA in a temporary directory; each new server joins
//! every server started before it, and with a link configuration each joining pair talks
//! through its own [`net_quic::LinkEmulator`] (which the joining server dials in place of the
//! older server's peer address, as design 4.4 allows). Not part of the server's API.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
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
    /// The configuration each server was started with, in start order (its ports are fixed,
    /// so [`Cluster::restart`] brings it back at the same addresses).
    pub configs: Vec<NodeConfig>,
    /// The most writes queued for an unreachable server, for servers started from now on (see
    /// [`NodeConfig::peer_pending_limit`]).
    pub peer_pending_limit: usize,
    /// The tombstone grace of servers started from now on (see [`NodeConfig::tombstone_grace`]).
    pub tombstone_grace: Duration,
    /// How far off the clock of the next server started is (see [`NodeConfig::clock_skew_ms`]).
    pub next_clock_skew_ms: i64,
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
            configs: Vec::new(),
            peer_pending_limit: NodeConfig::default().peer_pending_limit,
            tombstone_grace: NodeConfig::default().tombstone_grace,
            next_clock_skew_ms: 0,
        }
    }

    /// Starts a server of `actors` actors that joins every server started before it.
    pub fn add(&mut self, actors: usize) -> &Node {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.add_joining(actors, &all)
    }

    /// Starts a server of `actors` actors that is told to join only the servers at `targets`
    /// (indexes in start order); it learns of the others from them.
    pub fn add_joining(&mut self, actors: usize, targets: &[usize]) -> &Node {
        let mut join = Vec::new();
        for &t in targets {
            let mut d = self.nodes[t].description().clone();
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
            // Links run through relays that only the joining server's dials use.
            redial_newer: if self.link.is_some() { None } else { NodeConfig::default().redial_newer },
            peer_pending_limit: self.peer_pending_limit,
            tombstone_grace: self.tombstone_grace,
            clock_skew_ms: std::mem::take(&mut self.next_clock_skew_ms),
            ..NodeConfig::default()
        };
        let (node, config) = start_on_free_ports(config);
        self.nodes.push(node);
        self.configs.push(config);
        self.nodes.last().expect("just pushed")
    }

    /// Stops server `i` and starts it again with the same command line, at the same addresses,
    /// without its data (a new node id, as a real restart without a data directory).
    pub fn restart(&mut self, i: usize) -> &Node {
        self.nodes.remove(i).shutdown();
        self.nodes.insert(i, start_again(&self.configs[i]));
        &self.nodes[i]
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

/// Starts a node on loopback at fixed ports that were free a moment ago (so it can be restarted
/// at the same addresses); returns it and the configuration with the ports it got.
fn start_on_free_ports(mut config: NodeConfig) -> (Node, NodeConfig) {
    for _ in 0..50 {
        config.port = free_base(config.actors);
        match Node::start(&config) {
            Ok(node) => return (node, config),
            // Taken meanwhile by someone else: another range.
            Err(crate::StartError::Bind { .. }) => continue,
            Err(e) => panic!("node does not start: {e}"),
        }
    }
    panic!("no free port range found");
}

/// Starts a node again with the configuration it had (its ports may take a moment to free).
fn start_again(config: &NodeConfig) -> Node {
    let start = Instant::now();
    loop {
        match Node::start(config) {
            Ok(node) => return node,
            Err(crate::StartError::Bind { addr, source }) if start.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%addr, "port still taken: {source}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("node does not start again: {e}"),
        }
    }
}

/// A base port whose UDP port and the `actors` TCP ports after it are free right now.
fn free_base(actors: usize) -> u16 {
    loop {
        let base = 20_000 + (crate::runtime::random_u64() % 40_000) as u16;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", base)).is_ok();
        let tcp = (1..=actors as u16).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if udp && tcp {
            return base;
        }
    }
}

/// A node of `actors` actors on loopback (OS-chosen ports) whose clients must give `password`.
pub fn node_with_password(actors: usize, password: &str) -> Node {
    let requirepass = Some(crate::Password::new(password.as_bytes()).expect("a non-empty password"));
    let config = NodeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        actors,
        clients: crate::ClientOptions { requirepass, ..crate::ClientOptions::default() },
        ..NodeConfig::default()
    };
    Node::start(&config).expect("node starts")
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

/// A client that pipelines `SET`s to one actor without pause, as fast as the server takes
/// them, and reads the replies on another thread: the flood of design 4.8's fairness
/// requirement. Stops (and closes its connection) when dropped or [`Flood::stop`]ped.
#[derive(Debug)]
pub struct Flood {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    /// Connects to `addr` and starts flooding it.
    pub fn start(addr: SocketAddr) -> std::io::Result<Flood> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        // One 64 KiB batch of SETs over 1 000 keys, written again and again.
        let mut batch = Vec::new();
        for i in 0.. {
            if batch.len() >= 64 * 1024 {
                break;
            }
            let key = format!("flood:{:03}", i % 1000);
            resp::encode_command(&mut batch, &[&b"SET"[..], key.as_bytes(), b"0123456789abcdef"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let mut writer = stream.try_clone()?;
        let mut reader = stream.try_clone()?;
        let (stop_w, count) = (stop.clone(), replies.clone());
        let threads =
            vec![
                std::thread::spawn(move || {
                    while !stop_w.load(Ordering::Relaxed) && writer.write_all(&batch).is_ok() {}
                }),
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    // Every reply is `+OK\r\n`: counting bytes counts replies.
                    let mut bytes = 0u64;
                    while let Ok(n @ 1..) = reader.read(&mut buf) {
                        bytes += n as u64;
                        count.store(bytes / 5, Ordering::Relaxed);
                    }
                }),
            ];
        Ok(Flood { stream, stop, replies, threads })
    }

    /// Replies received so far.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Stops flooding; returns the replies received.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.replies()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblocks a writer stuck on a full socket and the reader.
        let _ = self.stream.shutdown(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}
