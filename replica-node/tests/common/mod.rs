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

// Only the multi-server tests use it.
#[cfg(feature = "testkit")]
#[allow(unused_imports)]
pub use replica_node::testkit::Cluster;
