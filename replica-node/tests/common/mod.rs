//! Helpers shared by the integration tests: an in-process node, raw connections, and the
//! testkit's clusters, clients and polling.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use replica_node::client::Client;
use replica_node::{Description, Node, NodeConfig};

/// Starts a node on loopback with OS-chosen ports.
pub fn start_node(actors: usize) -> Node {
    let config = NodeConfig { host: "127.0.0.1".into(), port: 0, actors, ..NodeConfig::default() };
    Node::start(&config).expect("node starts")
}

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// Reads one `name:value` figure from the `INFO` output of the actor behind `client`.
pub fn info_field(client: &Client, name: &str) -> u64 {
    let fields = client.info_fields().expect("INFO answers");
    let value = fields.get(name).unwrap_or_else(|| panic!("INFO has no {name}: {fields:?}"));
    value.parse().unwrap_or_else(|_| panic!("{name} is not a number: {value}"))
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

/// `replica-node` as a process of its own (so its memory and exit status are its own); killed
/// when dropped (a failed assertion must not leave it running, holding its ports).
pub struct NodeProcess {
    pub child: Child,
    pub desc: Description,
    /// Everything it logged so far (stderr is drained, so that logging never blocks it).
    pub log: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Runs `cmd`, a `replica-node` command line, and waits for its readiness line.
    pub fn spawn(mut cmd: Command) -> NodeProcess {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let desc = Description::parse(line.trim()).unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("{line:?}: {e}; its log: {}", log.lock().unwrap())
        });
        NodeProcess { child, desc, log }
    }

    /// `replica-node` with `args`.
    pub fn start(args: &[&str]) -> NodeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replica-node"));
        cmd.args(args);
        NodeProcess::spawn(cmd)
    }
}

/// A port `p` such that `p` (UDP, for the peer endpoint) and `p ..= p + n` (TCP: the peer port
/// and `n` client ports) look free, picked at random so that tests running at once rarely
/// collide.
pub fn free_port_block(n: u16) -> u16 {
    use rand::{Rng, SeedableRng};
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(std::process::id()));
    for _ in 0..1_000 {
        let base = rng.random_range(20_000..60_000);
        let ok = (0..=n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
            && std::net::UdpSocket::bind(("127.0.0.1", base)).is_ok();
        if ok {
            return base;
        }
    }
    panic!("no free ports");
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)]
pub use replica_node::testkit::{Cluster, clients, eventually, eventually_every, temp_dir};
