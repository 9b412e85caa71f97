//! Helpers shared by the integration tests: an in-process node and small polling utilities.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use replica_node::client::{Client, Fixed};
use replica_node::{Node, NodeConfig};

/// Starts a node on loopback with OS-chosen ports.
pub fn start_node(actors: usize) -> Node {
    let config = NodeConfig { host: "127.0.0.1".into(), port: 0, actors, ..NodeConfig::default() };
    Node::start(&config).expect("node starts")
}

/// One client per actor of `node`, in actor order.
pub fn clients(node: &Node) -> Vec<Client> {
    node.description().client_addrs().into_iter().map(|a| Client::new(Fixed(a))).collect()
}

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
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
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads one `name:value` figure from the `INFO sync` output of the actor behind `client`.
pub fn info_field(client: &Client, name: &str) -> u64 {
    let text = client.info().expect("INFO answers");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .unwrap_or_else(|| panic!("INFO has no {name}: {text}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// A raw connection for sending hand-made bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until `want` bytes arrived, the peer closed, or nothing came for a while.
    pub fn read_some(&mut self, want: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < want {
            match self.stream.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
                Err(_) => break,
            }
        }
        (out, false)
    }

    /// Sends `req` and reads the reply line(s).
    pub fn roundtrip(&mut self, req: &[u8]) -> String {
        self.send(req);
        let (out, _) = self.read_some(1);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A cluster directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "replica-node-test-{tag}-{}-{}",
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
pub struct Cluster {
    pub dir: TempDir,
    pub nodes: Vec<Node>,
    pub relays: Vec<net_quic::LinkEmulator>,
    pub link: Option<net_quic::LinkConfig>,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        Cluster { dir: TempDir::new(tag), nodes: Vec::new(), relays: Vec::new(), link: None }
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

    /// One client per actor of every server, server by server.
    pub fn clients(&self) -> Vec<Vec<Client>> {
        self.nodes.iter().map(clients).collect()
    }

    /// Waits until every server reports `n` connected peers.
    pub fn wait_connected(&self, deadline: Duration) {
        let want = self.nodes.len() as u64 - 1;
        let ok = eventually(deadline, || {
            self.nodes.iter().all(|n| replica_node::stats::NodeStats::get(&n.stats().peers_connected) == want)
        });
        assert!(ok.is_some(), "servers did not all connect within {deadline:?}");
    }
}
