//! What the measurement binaries share: in-process servers on loopback (optionally joined
//! through link emulators), polling, percentiles, and the facts every table footer records.
//!
//! The [`Cluster`] follows `replica-node/tests/common/mod.rs`: servers share a cluster CA in a
//! temporary directory, each new server joins every server started before it, and with a link
//! configuration each joining pair talks through its own [`net_quic::LinkEmulator`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use replica_node::client::{Client, Fixed};
use replica_node::stats::NodeStats;
use replica_node::{Node, NodeConfig};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, not yet existing path tagged with `tag`, the process id and a counter.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "benches-{tag}-{}-{}",
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
#[derive(Debug)]
pub struct Cluster {
    /// The servers, in start order. Dropped first, while their links still relay.
    pub nodes: Vec<Node>,
    /// The relays, one per joining pair, in join order.
    pub relays: Vec<net_quic::LinkEmulator>,
    link: Option<net_quic::LinkConfig>,
    // Dropped last: the nodes read their certificates from it.
    dir: TempDir,
}

impl Cluster {
    /// An empty cluster; servers added later talk directly (no relay) unless `link` is given.
    pub fn new(tag: &str, link: Option<net_quic::LinkConfig>) -> Cluster {
        Cluster { nodes: Vec::new(), relays: Vec::new(), link, dir: TempDir::new(tag) }
    }

    /// Starts a server of `actors` actors that joins every server started before it (through
    /// a new relay per pair when the cluster has a link configuration).
    pub fn add(&mut self, actors: usize) -> &Node {
        let mut join = Vec::new();
        for n in &self.nodes {
            let mut d = n.description().clone();
            if let Some(link) = &self.link {
                let target = d.peer_addr().expect("a node's own description resolves");
                let relay = net_quic::LinkEmulator::start(loopback(), target, *link).expect("relay starts");
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
        self.nodes.last().expect("just pushed")
    }

    /// Waits until every server reports a connection to every other; false on timeout.
    pub fn wait_connected(&self, deadline: Duration) -> bool {
        let want = self.nodes.len() as u64 - 1;
        eventually(deadline, Duration::from_millis(5), || {
            self.nodes.iter().all(|n| NodeStats::get(&n.stats().peers_connected) == want)
        })
        .is_some()
    }
}

/// 127.0.0.1 with an OS-chosen port.
pub fn loopback() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, 0).into()
}

/// One client per actor of `node`, in actor order, each pinned to its actor's port.
pub fn clients(node: &Node) -> Vec<Client> {
    node.description().client_addrs().into_iter().map(|a| Client::new(Fixed(a))).collect()
}

/// Polls `check` every `every` until it returns true (the time it took) or `deadline` passes.
pub fn eventually(deadline: Duration, every: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
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

/// The value at quantile `q` (0..=1) of sorted `values`, by nearest rank.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    assert!(!sorted.is_empty(), "quantile of nothing");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals (sub-millisecond values matter for local visibility).
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Microseconds, rounded.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// "met" or a bold "missed", as the README tables mark targets.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The 1-, 5- and 15-minute load averages (Linux), to record how quiet the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The command line that ran this binary, as `cargo run` would be typed.
pub fn command_line(bin: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = format!("cargo run --release -p benches --bin {bin}");
    if !args.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&args.join(" "));
    }
    cmd
}

/// A number unlikely to repeat across runs (time and process id), to keep keys of different
/// runs apart.
pub fn unique() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 48)
}
