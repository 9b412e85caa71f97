//! Clocks and tombstones (design 4.9): how well the servers measure each other's clocks, and
//! what a delete-heavy workload costs in memory with tombstone collection.
//!
//! Part 1, offsets: three servers whose clocks are off by known amounts (`clock_skew_ms`, the
//! test hook behind the hidden `--test-clock-skew-ms`), first linked directly on loopback, then
//! through 50 ms relays (round-trip compensation at work). Each server's `INFO
//! clock_offset_max_ms` beside the true largest offset to its peers.
//!
//! Part 2, memory: two servers (2 actors each, `--tombstone-grace 2s`); `--rounds` rounds of
//! inserting `--keys` new keys (16-byte keys, 100-byte values: each round its own keys, as
//! sessions or events would be) and deleting them all. After each
//! round: tombstones held and the process's RSS (both servers run in this process); then the
//! wait until every tombstone is collected, and the RSS after it. A collected tombstone's key
//! is remembered for `GHOST_TTL_MS` (120 s), and the allocator keeps freed memory for reuse, so
//! the default 8 rounds (about 25 s each) run past both: from about round 5 on, RSS is flat.
//! The anchor is the same workload with collection held back (a grace longer than the run):
//! memory that only grows.
//!
//! ```text
//! cargo run --release -p benches --bin clocks_tombstones
//! ```

use std::time::Duration;

use benches::churn::{Churn, churn, info, mib};
use benches::harness::{command_line, load_average};
use clap::Parser;
use replica_node::client::Client;
use replica_node::testkit::Cluster;

#[derive(Debug, Parser)]
#[command(
    about = "Measure clock offset accuracy and the memory of a delete-heavy workload with tombstone collection"
)]
struct Args {
    /// Keys inserted and deleted per round.
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Rounds of insert-all, delete-all (at most 9).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=9))]
    rounds: u8,
}

/// Part 1: every server's measured largest offset beside the true one.
fn offsets(delay: Option<Duration>) -> anyhow::Result<()> {
    let skews = [0i64, 150, -100];
    let mut c = match delay {
        Some(d) => Cluster::with_delay("clock-offsets", d),
        None => Cluster::new("clock-offsets"),
    };
    for skew in skews {
        c.next_clock_skew_ms = skew;
        c.add(1);
    }
    anyhow::ensure!(c.try_wait_connected(Duration::from_secs(20)), "servers did not connect");
    let links = delay.map_or("loopback".to_string(), |d| format!("{} ms relays", d.as_millis()));
    // Measurements repeat every few seconds: let a few happen.
    std::thread::sleep(Duration::from_secs(8));
    for (i, skew) in skews.iter().enumerate() {
        let truth = skews.iter().map(|o| (o - skew).abs()).max().unwrap_or(0);
        let measured = info(&c.client(i), "clock_offset_max_ms")?;
        println!(
            "| {links} | server {i} (clock {skew:+} ms) | {truth} | {measured} | {} |",
            (measured - truth).abs()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("# clocks_tombstones ({}; load {})", command_line("clocks_tombstones"), load_average());
    println!();
    println!("| links | server | true largest offset (ms) | clock_offset_max_ms | error (ms) |");
    println!("|---|---|---|---|---|");
    offsets(None)?;
    offsets(Some(Duration::from_millis(50)))?;
    println!();
    println!(
        "{} keys of 16 bytes with 100-byte values per round, on 2 servers of 2 actors (RSS of the process holding both)",
        args.keys
    );
    println!();
    println!("| run | moment | tombstones (server 0) | RSS MiB |");
    println!("|---|---|---|---|");
    let workload = Churn { keys: args.keys, rounds: args.rounds };
    let rss = |c: &Client| info(c, "used_memory_rss").map(mib);
    churn(workload, Duration::from_secs(2), &rss)?;
    churn(workload, Duration::from_secs(3_600), &rss)?;
    Ok(())
}
