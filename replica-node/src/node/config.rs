//! How to start a node, and why it could not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use net_quic::EndpointOptions;

use super::Description;
use crate::runtime::client_conn::ClientOptions;

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to bind and advertise.
    pub host: String,
    /// The peer (QUIC, UDP) port; query actor `i` serves clients on TCP `port + 1 + i`. With
    /// port 0 every port is chosen by the OS (for tests and embedding).
    pub port: u16,
    /// Number of query actors (threads).
    pub actors: usize,
    /// Directory of the cluster CA (created there on first start). `None`: a private CA in a
    /// temporary directory, removed when the node stops: the node can join nobody and nobody
    /// can join it (for embedding and single-server tests).
    pub cluster_dir: Option<PathBuf>,
    /// Descriptions of the servers to join, in their start order.
    pub join: Vec<Description>,
    /// Show a progress bar on stderr while receiving a snapshot (if stderr is a terminal).
    pub progress: bool,
    /// A peer connection with no packet from the other side for this long is dead (keep-alive
    /// at a third of it keeps quiet links open). Default 15 s; tests of partitions lower it.
    pub peer_idle_timeout: Duration,
    /// The data directory (`--data-dir`): with one the node is durable and keeps its id across
    /// restarts; without, it is memory-only and relies on its peers after a restart.
    pub data_dir: Option<PathBuf>,
    /// Faults to inject (tests only).
    #[cfg(feature = "testkit")]
    pub faults: crate::testkit::Faults,
    /// The client ports' password, protected mode and limits (design 4.8).
    pub clients: ClientOptions,
    /// The host written into the description (`--advertise`): where other servers and clients
    /// reach this one when it binds `0.0.0.0` or sits behind NAT. `None`: the bound address.
    pub advertise: Option<String>,
    /// A server that started after this one is dialled by this one too once it has been
    /// unreachable this long (the newer of two servers normally dials the older). `None`:
    /// never, for tests whose links run through relays that only the newer server's dials
    /// use. Default 5 s.
    pub redial_newer: Option<Duration>,
    /// The most writes queued for a server that cannot be reached; beyond it they are dropped
    /// and digest repair catches that server up when it is back (default
    /// [`replica_core::gateway::MAX_PENDING_WHILE_DOWN`]).
    pub peer_pending_limit: usize,
    /// Entries stamped more than this far ahead of this server's clock are refused, and a
    /// server ahead of most of its peers by more refuses client writes (`--max-clock-offset`,
    /// default 500 ms).
    pub max_clock_offset: Duration,
    /// Tombstones older than this are collected once every server has them
    /// (`--tombstone-grace`, default 10 minutes).
    pub tombstone_grace: Duration,
    /// Added to the system's wall clock: a server with a wrong clock, for tests of clock skew
    /// (`--test-clock-skew-ms`, hidden). 0 in production.
    pub clock_skew_ms: i64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            host: "127.0.0.1".into(),
            port: 6000,
            actors: default_actors(),
            cluster_dir: None,
            join: Vec::new(),
            progress: false,
            peer_idle_timeout: EndpointOptions::default().idle_timeout,
            data_dir: None,
            #[cfg(feature = "testkit")]
            faults: crate::testkit::Faults::default(),
            clients: ClientOptions::default(),
            advertise: None,
            redial_newer: Some(Duration::from_millis(replica_core::gateway::DEFAULT_REDIAL_NEWER_MS)),
            peer_pending_limit: replica_core::gateway::MAX_PENDING_WHILE_DOWN,
            max_clock_offset: Duration::from_millis(replica_core::gateway::DEFAULT_MAX_CLOCK_OFFSET_MS),
            tombstone_grace: Duration::from_millis(replica_core::gateway::DEFAULT_TOMBSTONE_GRACE_MS),
            clock_skew_ms: 0,
        }
    }
}

/// One query actor per core by default.
pub fn default_actors() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most query actors a node runs (the actor index is part of the replica id).
pub const MAX_ACTORS: usize = 1024;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster identity (CA, node certificate) could not be set up.
    #[error("cluster identity: {0}")]
    Cluster(String),
    /// The data directory could not be opened (in use, damaged, unwritable).
    #[error("{0}")]
    DataDir(#[from] replica_persist::OpenError),
    /// Any other OS failure while starting.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}
