//! The live heap of the delete-heavy workload of `clocks_tombstones` (see `benches::churn`):
//! with dhat as the allocator, every step reports the bytes allocated and not freed (what the
//! store really holds, without what the allocator keeps for reuse) beside the RSS. Shows that
//! with tombstone collection the heap is flat once collected keys are no longer remembered
//! (`GHOST_TTL_MS`), where RSS, holding the allocator's free lists, creeps on.
//!
//! ```text
//! cargo run --release -p benches --features dhat-heap --bin tombstone_heap -- --keys 200000 --rounds 8
//! ```
//!
//! The profiler slows allocation down several times; the figures are exact (requested sizes).

use std::time::Duration;

use benches::churn::{Churn, churn, info, mib};
use benches::harness::{command_line, load_average};
use clap::Parser;
use replica_node::client::Client;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Debug, Parser)]
#[command(about = "Live heap (dhat) and RSS of a delete-heavy workload with tombstone collection")]
struct Args {
    /// Keys inserted and deleted per round.
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Rounds of insert-all, delete-all (at most 9).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=9))]
    rounds: u8,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _profiler = dhat::Profiler::builder().testing().build();
    let command = command_line("tombstone_heap").replace("-p benches", "-p benches --features dhat-heap");
    println!("# tombstone_heap ({command}; load {})", load_average());
    println!();
    println!(
        "{} keys of 16 bytes with 100-byte values per round, on 2 servers of 2 actors, tombstone grace 2 s \
         (the process holding both: live heap / RSS)",
        args.keys
    );
    println!();
    println!("| run | moment | tombstones (server 0) | heap / RSS MiB |");
    println!("|---|---|---|---|");
    let memory = |c: &Client| -> anyhow::Result<String> {
        let heap = dhat::HeapStats::get().curr_bytes as i64;
        Ok(format!("{} / {}", mib(heap), mib(info(c, "used_memory_rss")?)))
    };
    churn(Churn { keys: args.keys, rounds: args.rounds }, Duration::from_secs(2), &memory)
}
