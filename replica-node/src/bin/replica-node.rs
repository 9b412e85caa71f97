//! `replica-node`: one server of the replicated key-value store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use replica_node::node::{MAX_ACTORS, default_actors};
use replica_node::{Node, NodeConfig};

/// A replica server of the geo-replicated CRDT key-value store.
///
/// Every query actor (one thread per core by default) holds a full replica and serves Redis
/// clients (RESP) on its own TCP port: actor i listens on PORT + 1 + i. Writes are answered at
/// once and reach the other actors in the background; replicas converge by last-writer-wins.
///
/// When every port listens, the node prints one line on stdout: its description, a JSON
/// object {"node": ID, "peer": "HOST:PORT", "clients": ["HOST:PORT", ...]}. Logs go to
/// stderr (set RUST_LOG, e.g. RUST_LOG=debug, for more). SIGINT or SIGTERM stops it cleanly.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Peer (QUIC, UDP) port; query actor i serves clients on TCP PORT + 1 + i.
    #[arg(long, default_value_t = 6000)]
    port: u16,
    /// Number of query actors (threads) [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_ACTORS as i64))]
    actors: Option<u32>,
    /// Directory of the cluster certificate authority (`ca.pem`, `ca.key`); server-to-server
    /// sync, which uses it, is not available yet.
    #[arg(long, default_value = "./cluster")]
    cluster_dir: PathBuf,
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
        port: args.port,
        actors: args.actors.map_or_else(default_actors, |n| n as usize),
        cluster_dir: args.cluster_dir,
    };
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
    let _ = stop_rx.recv();
    tracing::info!("stopping");
    node.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
