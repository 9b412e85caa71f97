//! Starting and stopping a whole node: recover its data directory, bind every port, start one
//! thread per query actor, the gateway and the persistence actor, describe the node, shut
//! down cleanly, and report at once when a thread it cannot do without dies.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use replica_persist::{DataDir, Options};

use mio::{Poll, Waker};
use net_quic::{ClusterIdentity, EndpointOptions, PeerEndpoint};

use lww_crdt::{BytesMap, Timestamp};
use replica_core::Replica;
use replica_core::gateway::{Gateway, GatewayConfig, JoinTarget};

use crate::command::{ClientRegistry, NodeInfo, ScanCursors};
use crate::runtime::client_conn::MIN_OUTPUT_LIMIT;
use crate::runtime::gateway_loop::{self, GatewayStart, TokioWake};
use crate::runtime::mailbox::{Address, Mailbox, Notify};
use crate::runtime::persist_loop::{self, Doorbell, PersistMsg, PersistStart};
use crate::runtime::query_loop::{self, ActorStart, WAKER};
use crate::runtime::{ActorMsg, Clock, random_u64, rss_bytes};
use crate::stats::NodeStats;

mod config;
mod desc;

pub use config::{MAX_ACTORS, NodeConfig, StartError, default_actors};
pub use desc::Description;

/// A running node. Dropping it shuts it down.
#[derive(Debug)]
pub struct Node {
    description: Description,
    /// The query actors' stop channel: dropping it (and waking them) stops them.
    stop: Option<crossbeam_channel::Sender<Infallible>>,
    /// Set when the node stops: a thread that ends then is not a failure.
    stopping: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    gateway: Option<JoinHandle<()>>,
    /// Wakes the gateway so it sees its mailbox closed once the actors have exited.
    gateway_mail: Arc<tokio::sync::Notify>,
    /// The persistence actor, with a data directory: its thread, the address the node asks
    /// it to sync through, and its doorbell.
    persist: Option<JoinHandle<()>>,
    persist_control: Option<Address<PersistMsg>>,
    persist_ring: Option<Sender<()>>,
    /// Why a thread the node cannot do without died (see [`Node::failed`]).
    failures: Receiver<String>,
    stats: Arc<NodeStats>,
    /// A private cluster directory, removed when the node is dropped.
    _private_cluster: Option<tempfile::TempDir>,
}

impl Node {
    /// Recovers the data directory (if any), binds every port and starts the actors. When this
    /// returns, the node serves clients, every actor holding the recovered state.
    pub fn start(config: &NodeConfig) -> Result<Node, StartError> {
        let (ip, joins) = validate(config)?;
        // The data directory first: it holds the node's id, and a second process on it must be
        // refused before anything is bound.
        // A cluster directory holding a node certificate issued ahead of time (`replica-node
        // issue-cert`) fixes the node's id.
        let issued = match &config.cluster_dir {
            Some(dir) => net_quic::issued_node_id(dir)
                .map_err(|e| StartError::Cluster(format!("{}: {e}", dir.display())))?,
            None => None,
        };
        let mut data = match &config.data_dir {
            Some(path) => Some(open_data_dir(path, config, issued.clone())?),
            None => None,
        };
        let node = match (&data, &issued) {
            (Some(d), Some(id)) if d.dir.node() != id => {
                return Err(StartError::Config(format!(
                    "the data directory belongs to node {}, but the certificate in the cluster \
                     directory is node {id}'s: give each server its own certificate and its own \
                     data directory",
                    d.dir.node()
                )));
            }
            (Some(d), _) => d.dir.node().to_owned(),
            (None, Some(id)) => id.clone(),
            (None, None) => format!("{:012x}", random_u64() >> 16),
        };
        let node_num = node_number(&node).ok_or_else(|| {
            StartError::Config(format!("the data directory names node {node:?}, not 12 hex digits"))
        })?;
        let (recovered, newest): (BytesMap, Timestamp) = match &mut data {
            Some(d) => (std::mem::take(&mut d.recovered.map), d.recovered.newest),
            None => (BytesMap::new(), Timestamp::ZERO),
        };
        let clock = Clock::with_skew(config.clock_skew_ms);
        let (runtime, endpoint, cluster, private_cluster) = bind_peer(config, ip, &node)?;
        if cluster.created() && !joins.is_empty() {
            return Err(StartError::Cluster(format!(
                "{} held no cluster CA, so a new one was created there, but this server was told to \
                 --join others: they would never admit it. Copy the cluster directory of the \
                 servers to join (ca.pem and ca.key) and start again",
                cluster.dir().display()
            )));
        }
        let peer_addr = endpoint.local_addr()?;
        let listeners = bind_clients(config, ip)?;
        let clients: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        let advertised_host = config.advertise.clone().unwrap_or_else(|| ip.to_string());
        let advertise = |a: &SocketAddr| join_host_port(&advertised_host, a.port());

        let description = Description {
            node: node.clone(),
            peer: advertise(&peer_addr),
            clients: clients.iter().map(advertise).collect(),
        };
        let joins = joins
            .into_iter()
            .filter(|j| {
                let me = j.node == node || j.addr == description.peer || j.addr == peer_addr.to_string();
                if me {
                    tracing::warn!(node = %j.node, addr = %j.addr, "ignoring a --join that names this server itself");
                }
                !me
            })
            .collect();

        let stats = Arc::new(NodeStats::default());
        stats.persist_recovered_entries.store(recovered.entry_count() as u64, Ordering::Relaxed);
        let stopping = Arc::new(AtomicBool::new(false));
        let (fail_tx, failures) = crossbeam_channel::unbounded();
        // Nothing is ever sent: the actors stop when the sender is dropped.
        let (stop, stopped) = crossbeam_channel::bounded::<Infallible>(0);
        let now = clock.now();
        let started = now.mono_ms;

        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        let mut addresses: Vec<Address<ActorMsg>> = Vec::new();
        let mut mailboxes = Vec::new();
        for _ in 0..config.actors {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (addr, mailbox) = Mailbox::with_notify(Notify::new(waker.clone()));
            polls.push(poll);
            wakers.push(waker);
            addresses.push(addr);
            mailboxes.push(mailbox);
        }
        let gateway_mail = Arc::new(tokio::sync::Notify::new());
        let gateway_notify = Notify::new(TokioWake(gateway_mail.clone()));
        let (gateway_addr, gateway_mailbox) = Mailbox::with_notify(gateway_notify.clone());
        let (admin_addr, admin_mailbox) = Mailbox::with_notify(gateway_notify);

        // The persistence actor: client writes from the actors (unpaced), remote writes from
        // the gateway's fan-out, as a local peer gets them.
        let mut persist_parts = None;
        if let Some(d) = data {
            let (ring, doorbell) = crossbeam_channel::bounded(1);
            let notify = Notify::new(Doorbell(ring.clone()));
            let (writes_addr, writes) = Mailbox::with_notify(notify.clone());
            let (fanout_addr, fanout) = Mailbox::with_notify(notify);
            let start = PersistStart {
                dir: d.dir,
                writes,
                fanout,
                doorbell,
                ring: ring.clone(),
                clock,
                stats: stats.clone(),
            };
            persist_parts = Some((start, writes_addr, fanout_addr, ring));
        }
        let persist_writes = persist_parts.as_ref().map(|(_, w, _, _)| w.clone());

        let mut copies = copies_of(&recovered, config.actors)?.into_iter();
        let client_registry = Arc::new(ClientRegistry::default());
        let scan_cursors = Arc::new(ScanCursors::default());
        let mut threads = Vec::new();
        for (i, ((listener, poll), mailbox)) in listeners.into_iter().zip(polls).zip(mailboxes).enumerate() {
            let recipients: Vec<_> = addresses
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .chain([gateway_addr.clone()])
                .collect();
            let replica_id = (node_num << 16) | i as u64;
            let mut replica = Replica::new(i, replica_id, recipients.len())
                .with_max_clock_offset(config.max_clock_offset.as_millis() as u64);
            replica.restore(copies.next().unwrap_or_default(), newest, now);
            let start = ActorStart {
                replica,
                listener,
                poll,
                mailbox,
                recipients,
                info: NodeInfo {
                    node: node.clone(),
                    actors: config.actors,
                    client_addr: clients[i].to_string(),
                    peer_addr: description.peer.clone(),
                    started_mono_ms: started,
                    stats: stats.clone(),
                    maxclients: config.clients.maxclients,
                    rss: rss_bytes,
                    admin: Some(admin_addr.clone()),
                    clients: client_registry.clone(),
                    actor_mail: addresses.clone(),
                    scan_cursors: scan_cursors.clone(),
                    data_dir: config.data_dir.is_some(),
                },
                clients: config.clients.clone(),
                stop: stopped.clone(),
                clock,
                persist: persist_writes.clone(),
                #[cfg(feature = "testkit")]
                faults: config.faults.clone(),
            };
            threads.push(spawn_critical(format!("actor-{i}"), &stopping, &fail_tx, move || {
                query_loop::run(start);
                Ok(())
            })?);
        }
        drop(gateway_addr);
        drop(admin_addr);
        drop(persist_writes);
        let mut fanout_to = addresses.clone();
        let mut persist = None;
        let mut persist_control = None;
        let mut persist_ring = None;
        if let Some((start, writes_addr, fanout_addr, ring)) = persist_parts {
            fanout_to.push(fanout_addr);
            persist_control = Some(writes_addr);
            persist_ring = Some(ring);
            persist = Some(spawn_critical("persist".into(), &stopping, &fail_tx, move || {
                persist_loop::run(start)
            })?);
        }
        let gateway_config = GatewayConfig {
            node: node.clone(),
            advertised: description.peer.clone(),
            actors: config.actors,
            // Zero is never an incarnation: an ack names 0 before the peer's `Hello` arrived.
            incarnation: random_u64().max(1),
            started_ms: now.wall_ms,
            digest_key: cluster.shared_key("replica digest")[..16].try_into().expect("16 of 32 bytes"),
            joins,
            redial_newer_ms: config.redial_newer.map(|d| d.as_millis() as u64),
            pending_limit: config.peer_pending_limit,
            max_clock_offset_ms: config.max_clock_offset.as_millis() as u64,
            tombstone_grace_ms: config.tombstone_grace.as_millis() as u64,
        };
        let gateway_start = GatewayStart {
            runtime,
            endpoint: Arc::new(endpoint),
            gateway: Gateway::new(gateway_config, recovered, now),
            mailbox: gateway_mailbox,
            admin: admin_mailbox,
            mail: gateway_mail.clone(),
            actors: fanout_to,
            clock,
            stats: stats.clone(),
            progress: config.progress,
        };
        let gateway = spawn_critical("gateway".into(), &stopping, &fail_tx, move || {
            gateway_loop::run(gateway_start);
            Ok(())
        })?;
        drop(addresses);
        tracing::info!(node = %node, peer = %description.peer, actors = config.actors, "node ready");
        Ok(Node {
            description,
            stop: Some(stop),
            stopping,
            wakers,
            threads,
            gateway: Some(gateway),
            gateway_mail,
            persist,
            persist_control,
            persist_ring,
            failures,
            stats,
            _private_cluster: private_cluster,
        })
    }

    /// Receives why, if a thread the node cannot do without (a query actor, the gateway, the
    /// persistence actor) dies: a panic, an unrecoverable IO error. The node is then not whole
    /// and must not go on serving (design 8, fail fast): `replica-node` exits non-zero at once
    /// so that a supervisor restarts it, and recovery and its peers restore it.
    pub fn failed(&self) -> &Receiver<String> {
        &self.failures
    }

    /// The node's description (what it prints when ready).
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The whole-node counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Stops the node: every actor finishes the requests it has received, then exits.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Every actor sees its stop channel closed once it wakes.
        drop(self.stop.take());
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The actors have handed the persistence actor their last writes: sync the log before
        // the peer hand-off, which may take seconds.
        if let Some(control) = self.persist_control.take() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if control.send(PersistMsg::Flush(tx)).is_ok() {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Ok(())) => tracing::info!("log synced"),
                    Ok(Err(why)) => tracing::error!("the log could not be synced: {why}"),
                    Err(_) => tracing::error!("the persistence actor did not sync the log in time"),
                }
            }
        }
        // The actors have sent the gateway their last writes and dropped their addresses: its
        // mailbox is closed, which ends it once it looks.
        self.gateway_mail.notify_one();
        if let Some(g) = self.gateway.take() {
            let _ = g.join();
        }
        // Every address of the persistence actor is gone now: it syncs what the gateway fanned
        // out last and ends once it looks.
        if let Some(ring) = self.persist_ring.take() {
            let _ = ring.try_send(());
        }
        if let Some(p) = self.persist.take() {
            let _ = p.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` on a thread named `name`; if it panics, fails, or returns while the node is not
/// stopping, logs why and reports it on `failures` (see [`Node::failed`]).
fn spawn_critical(
    name: String,
    shutdown: &Arc<AtomicBool>,
    failures: &Sender<String>,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let (shutdown, failures) = (shutdown.clone(), failures.clone());
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) if shutdown.load(Ordering::Acquire) => return,
            Ok(Ok(())) => "stopped unexpectedly".to_owned(),
            Ok(Err(e)) => e,
            Err(panic) => match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                (Some(s), _) => format!("panicked: {s}"),
                (_, Some(s)) => format!("panicked: {s}"),
                _ => "panicked".to_owned(),
            },
        };
        tracing::error!(thread = %name, "{why}; the node cannot go on without it");
        let _ = failures.send(format!("{name}: {why}"));
    })
}

/// `n` copies of `map` for the actors (the gateway takes `map` itself), made on as many threads
/// as there are cores: a copy shares every key and value and copies only the tree, but for a
/// million keys that is a tenth of a second each, and the node announces itself only after.
fn copies_of(map: &BytesMap, n: usize) -> Result<Vec<BytesMap>, StartError> {
    if map.entry_count() == 0 {
        return Ok((0..n).map(|_| BytesMap::new()).collect());
    }
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get()).min(n);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || (t..n).step_by(threads).map(|_| map.clone()).collect::<Vec<_>>()))
            .collect();
        let mut copies = Vec::with_capacity(n);
        for w in workers {
            copies.extend(
                w.join().map_err(|_| StartError::Config("copying the recovered state failed".into()))?,
            );
        }
        Ok(copies)
    })
}

/// Opens the data directory and recovers its state, timing it for the logs.
fn open_data_dir(
    path: &Path,
    config: &NodeConfig,
    issued: Option<String>,
) -> Result<replica_persist::Opened, StartError> {
    let t0 = Instant::now();
    let new_id = || issued.unwrap_or_else(|| format!("{:012x}", random_u64() >> 16));
    #[cfg(feature = "testkit")]
    let opened = DataDir::open_faulty(path, Options::default(), config.faults.disk.clone(), new_id)?;
    #[cfg(not(feature = "testkit"))]
    let opened = {
        let _ = config;
        DataDir::open(path, Options::default(), new_id)?
    };
    let r = &opened.recovered;
    tracing::info!(
        dir = %path.display(),
        entries = r.map.entry_count(),
        snapshot_entries = r.snapshot.as_ref().map_or(0, |s| s.entries),
        log_entries = r.log_entries,
        segments = r.segments.len(),
        ms = t0.elapsed().as_millis() as u64,
        new = opened.created,
        "data directory recovered"
    );
    Ok(opened)
}

/// Checks the configuration: the actor count, the host, the join descriptions (a second
/// `--join` for the same server is ignored with a warning).
fn validate(config: &NodeConfig) -> Result<(IpAddr, Vec<JoinTarget>), StartError> {
    if config.actors == 0 || config.actors > MAX_ACTORS {
        return Err(StartError::Config(format!("--actors must be between 1 and {MAX_ACTORS}")));
    }
    if config.clients.maxclients == 0 {
        return Err(StartError::Config("--maxclients must be at least 1".into()));
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&config.max_clock_offset) {
        return Err(StartError::Config(
            "--max-clock-offset must be between 10ms and 1h: clocks are never that close, nor that far apart"
                .into(),
        ));
    }
    if config.tombstone_grace < Duration::from_secs(1) {
        return Err(StartError::Config(
            "--tombstone-grace must be at least 1s (deletes must outlive the time they take to reach every server)"
                .into(),
        ));
    }
    if config.clients.output_limit < MIN_OUTPUT_LIMIT {
        return Err(StartError::Config(format!(
            "--client-output-limit must be at least {} KiB: smaller, ordinary replies would not fit",
            MIN_OUTPUT_LIMIT / 1024
        )));
    }
    if config.port != 0 && usize::from(config.port) + config.actors > usize::from(u16::MAX) {
        return Err(StartError::Config(format!(
            "--port {} leaves no room for {} client ports below 65536",
            config.port, config.actors
        )));
    }
    if let Some(host) = &config.advertise
        && (host.is_empty() || host.contains(char::is_whitespace))
    {
        return Err(StartError::Config(format!("--advertise {host:?} is not a host name or address")));
    }
    let ip = resolve_host(&config.host)?;
    let mut joins: Vec<JoinTarget> = Vec::new();
    for d in &config.join {
        let addr = d.peer_addr().map_err(StartError::Config)?;
        if joins.iter().any(|j| j.node == d.node || j.addr == d.peer) {
            tracing::warn!(node = %d.node, peer = %d.peer, "ignoring a second --join for the same server");
            continue;
        }
        let _ = addr;
        joins.push(JoinTarget { node: d.node.clone(), addr: d.peer.clone() });
    }
    Ok((ip, joins))
}

/// `host:port`, with brackets around an IPv6 address.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The cluster identity and the QUIC endpoint (bound on the gateway's runtime), and the
/// private cluster directory when the configuration names none.
fn bind_peer(
    config: &NodeConfig,
    ip: IpAddr,
    node: &str,
) -> Result<(tokio::runtime::Runtime, PeerEndpoint, ClusterIdentity, Option<tempfile::TempDir>), StartError> {
    let private_cluster = match &config.cluster_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("replica-node-cluster-").tempdir()?),
    };
    let cluster_dir = match (&config.cluster_dir, &private_cluster) {
        (Some(dir), _) => dir.as_path(),
        (None, Some(private)) => private.path(),
        (None, None) => unreachable!("a private cluster directory is made when none is configured"),
    };
    let cluster = ClusterIdentity::load_or_create(cluster_dir)
        .map_err(|e| StartError::Cluster(format!("{}: {e}", cluster_dir.display())))?;
    let identity = cluster.mint_node(node).map_err(|e| StartError::Cluster(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let peer_addr = SocketAddr::new(ip, config.port);
    let options = EndpointOptions {
        max_frame: replica_core::peer::MAX_FRAME,
        // With a fixed address, the same reset keys after a restart let peers notice the
        // restart at once instead of at the idle timeout.
        secret: (config.port != 0).then(|| cluster.endpoint_secret(&peer_addr.to_string())),
        idle_timeout: config.peer_idle_timeout,
        keep_alive: config.peer_idle_timeout / 3,
        ..EndpointOptions::default()
    };
    let endpoint = {
        let _enter = runtime.enter();
        PeerEndpoint::bind(peer_addr, &identity, &options).map_err(|e| match e {
            net_quic::EndpointError::Bind { addr, source } => StartError::Bind { addr, source },
            other => StartError::Cluster(other.to_string()),
        })?
    };
    Ok((runtime, endpoint, cluster, private_cluster))
}

/// One client listener per actor: actor `i` on `port + 1 + i` (all OS-chosen with port 0).
fn bind_clients(config: &NodeConfig, ip: IpAddr) -> Result<Vec<mio::net::TcpListener>, StartError> {
    (0..config.actors)
        .map(|i| {
            // `validate` checked that every port fits below 65536.
            let port = if config.port == 0 { 0 } else { config.port + 1 + i as u16 };
            let addr = SocketAddr::new(ip, port);
            mio::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })
        })
        .collect()
}

fn resolve_host(host: &str) -> Result<IpAddr, StartError> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    (host, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .ok_or_else(|| StartError::Config(format!("cannot resolve --host {host:?}")))
}

/// `replica-node issue-cert`: signs a certificate for node `node` (12 lowercase hex digits; a
/// new random id if `None`) with the CA in `cluster_dir`, which must exist, and writes
/// `ca.pem`, `node.pem` and `node.key` into `out`, for a server to use as its cluster
/// directory without the CA key. Returns the node id.
pub fn issue_cert(cluster_dir: &Path, out: &Path, node: Option<&str>) -> Result<String, StartError> {
    let id = match node {
        Some(id) if node_number(id).is_some() => id.to_owned(),
        Some(id) => {
            return Err(StartError::Config(format!("--node {id:?}: a node id is 12 lowercase hex digits")));
        }
        None => format!("{:012x}", random_u64() >> 16),
    };
    let cluster = ClusterIdentity::load(cluster_dir).map_err(|e| {
        StartError::Cluster(format!(
            "{}: {e} (issue-cert signs with an existing cluster CA: ca.pem and ca.key)",
            cluster_dir.display()
        ))
    })?;
    cluster.issue_node_files(&id, out).map_err(|e| StartError::Cluster(e.to_string()))?;
    Ok(id)
}

/// The number of a node id: 12 lowercase hex digits (48 bits, the replica ids' node part).
fn node_number(id: &str) -> Option<u64> {
    if id.len() != 12 || net_quic::validate_node_id(id).is_err() {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}
