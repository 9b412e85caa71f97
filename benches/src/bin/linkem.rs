//! `linkem`: a UDP relay emulating a wide-area link, to put between two real `replica-node`
//! processes (a command-line wrapper around `net_quic::LinkEmulator`).
//!
//! ```text
//! cargo run --release -p benches --bin linkem -- --target 127.0.0.1:6000 --delay-ms 250
//! ```
//!
//! It binds `--listen` (default `127.0.0.1:0`, a free port), prints that address as one line
//! on stdout, and relays until Ctrl-C (or SIGTERM): packets from any client to `--target`, and
//! the target's replies back to that client, each delayed, dropped, duplicated or reordered as
//! asked, the same in both directions. Counters go to stderr every `--stats-secs` and at exit.
//! A node given the relay's address as the `peer` of another node's description talks to that
//! node through the relay; peers are identified by certificate, so nothing else changes (see
//! benches/README.md for the whole recipe).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use net_quic::{LinkConfig, LinkEmulator, LinkStats};

/// A UDP relay that emulates a wide-area link (delay, jitter, loss, duplication, reordering).
#[derive(Debug, Parser)]
#[command(about, long_about)]
struct Args {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay packets: the `peer` address of a replica-node.
    #[arg(long)]
    target: SocketAddr,
    /// One-way delay added to every packet, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Each packet's delay is drawn uniformly from delay ± jitter (never reordering).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability that a packet is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Probability that a packet is delivered twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate: f64,
    /// Probability that a packet is held back by --reorder-delay-ms, so later ones overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Extra hold of a reordered packet, in milliseconds.
    #[arg(long, default_value_t = 5)]
    reorder_delay_ms: u64,
    /// Seed of the random decisions (the same seed and packets give the same fate).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the counters on stderr this often (0: only at exit).
    #[arg(long, default_value_t = 10)]
    stats_secs: u64,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not a probability in 0..=1")) }
}

fn describe(s: &LinkStats) -> String {
    format!(
        "forwarded {} packets ({} B), dropped {} ({} B), duplicated {}, reordered {}",
        s.packets_forwarded,
        s.bytes_forwarded,
        s.packets_dropped,
        s.bytes_dropped,
        s.packets_duplicated,
        s.packets_reordered
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = LinkConfig {
        delay: Duration::from_millis(args.delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        loss: args.loss,
        duplicate: args.duplicate,
        reorder: args.reorder,
        reorder_delay: Duration::from_millis(args.reorder_delay_ms),
        seed: args.seed,
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let relay = LinkEmulator::start(args.listen, args.target, config)?;
    println!("{}", relay.local_addr());
    eprintln!("linkem: {} -> {} with {config:?}; Ctrl-C stops", relay.local_addr(), args.target);
    let every = if args.stats_secs == 0 { Duration::MAX } else { Duration::from_secs(args.stats_secs) };
    // Ctrl-C (or a dropped handler) ends the wait; a timeout prints the counters.
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
        eprintln!("linkem: {}", describe(&relay.stats()));
    }
    eprintln!("linkem: stopping; {}", describe(&relay.stats()));
    Ok(())
}
