//! `replica-node`: one server of the replicated key-value store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use replica_node::{Description, MAX_ACTORS, Node, NodeConfig, default_actors};

/// A replica server of the geo-replicated CRDT key-value store.
///
/// Every query actor (one thread per core by default) holds a full replica and serves Redis
/// clients (RESP) on its own TCP port: actor i listens on PORT + 1 + i. Writes are answered at
/// once and reach the other actors in the background; replicas converge by last-writer-wins.
///
/// Servers form a cluster by joining: start the first one alone, then each next one with
/// --join and the description of any server already in the cluster (servers tell each other
/// about the rest). Servers sync over QUIC with mutual TLS (certificates from the cluster CA in
/// --cluster-dir, which all servers must share). A server restarted without its data rejoins
/// as a new server at the same address and is refilled by the others; CLUSTER NODES (on any
/// client port) lists the cluster, CLUSTER FORGET removes a server gone for good.
///
/// When every port listens, the node prints one line on stdout: its description, a JSON
/// object {"node": ID, "peer": "HOST:PORT", "clients": ["HOST:PORT", ...]}. Logs go to
/// stderr (set RUST_LOG, e.g. RUST_LOG=debug, for more). SIGINT or SIGTERM stops it cleanly.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on (and advertise, unless --advertise says otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Host to write into the description, where other servers and clients reach this one
    /// (for a server bound to 0.0.0.0 or behind NAT) [default: the --host address].
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Peer (QUIC, UDP) port; query actor i serves clients on TCP PORT + 1 + i.
    #[arg(long, default_value_t = 6000)]
    port: u16,
    /// Number of query actors (threads) [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_ACTORS as i64))]
    actors: Option<u32>,
    /// Join an existing cluster through one of its servers: its description line (as it
    /// printed it) or @FILE holding it. Repeat for more servers to try; one is enough, the
    /// others are learned from it.
    #[arg(long, value_name = "DESC", value_parser = parse_description)]
    join: Vec<Description>,
    /// Directory of the cluster certificate authority (`ca.pem`, `ca.key`), created on first
    /// start. Every server of a cluster uses the same CA; a peer whose certificate it did not
    /// sign is refused.
    #[arg(long, default_value = "./cluster")]
    cluster_dir: PathBuf,
    /// Keep the node's state and identity in DIR (created if absent): a log of every write,
    /// synced within about 25 ms, and snapshots. A restart with the same DIR recovers every
    /// write acknowledged at least 100 ms before a crash and prints the same node id. Without
    /// it the node is memory-only and relies on its peers after a restart.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn parse_description(arg: &str) -> Result<Description, String> {
    Description::parse(arg)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = NodeConfig {
        host: args.host,
        advertise: args.advertise,
        port: args.port,
        actors: args.actors.map_or_else(default_actors, |n| n as usize),
        cluster_dir: Some(args.cluster_dir),
        join: args.join,
        progress: std::io::stderr().is_terminal(),
        data_dir: args.data_dir,
        ..NodeConfig::default()
    };
    #[cfg(feature = "testkit")]
    let config = test_faults(config);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        eprintln!("replica-node: cannot install the signal handler: {e}");
        return ExitCode::from(2);
    }
    let node = match Node::start(&config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("replica-node: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", node.description().to_line());
    // The readiness line must reach whoever waits for it even when stdout is a pipe.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    crossbeam_channel::select! {
        recv(stop_rx) -> _ => {}
        recv(node.failed()) -> why => {
            // Fail fast (design 8): a node missing an actor, its gateway or its log must not
            // go on serving. No clean shutdown: what it would wait for may be what died.
            let why = why.unwrap_or_else(|_| "a thread died".into());
            eprintln!("replica-node: {why}; exiting so that a supervisor restarts the node");
            std::process::exit(1);
        }
    }
    tracing::info!("stopping");
    node.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Test builds only: `REPLICA_NODE_TEST_FAULT=disk-error` or `actor-panic` injects that fault
/// 300 ms after start (the fail-fast tests of the real binary).
#[cfg(feature = "testkit")]
fn test_faults(config: NodeConfig) -> NodeConfig {
    let Ok(fault) = std::env::var("REPLICA_NODE_TEST_FAULT") else { return config };
    let faults = config.faults.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        match fault.as_str() {
            "disk-error" => faults.disk.set(replica_persist::Fault::Device),
            "disk-full" => faults.disk.set(replica_persist::Fault::Full),
            "actor-panic" => faults.panic_actor.store(1, std::sync::atomic::Ordering::Relaxed),
            other => eprintln!("unknown REPLICA_NODE_TEST_FAULT {other:?}"),
        }
    });
    config
}
