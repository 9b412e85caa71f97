//! Local visibility: a Put on one query actor, then how long until every other actor of the
//! same server returns it. Prints a markdown table of percentiles against the design's targets
//! (p50 ≤ 5 ms, p99 ≤ 110 ms; requirement 500 ms).
//!
//! ```text
//! cargo run --release -p benches --bin local_visibility                  # 2 and 4 actors, 500 writes each
//! cargo run --release -p benches --bin local_visibility -- --actors 2 --samples 200
//! ```
//!
//! One in-process node per actor count, on loopback. Each write goes to a random actor and is
//! polled on all the others (see `benches::visibility` for the probe and the write schedule).
//! About 30 s per actor count at 500 writes.

use std::time::Duration;

use benches::harness::{self, clients, load_average, us, verdict};
use benches::visibility::{self, Options, Route, median, ms_or_lost};
use clap::Parser;
use replica_node::{Node, NodeConfig};

/// Design section 7: local visibility targets and requirement.
const TARGET_P50: Duration = Duration::from_millis(5);
const TARGET_P99: Duration = Duration::from_millis(110);
const REQUIREMENT: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(about = "Put on one actor, time until every other actor of the same server has it")]
struct Args {
    /// Actor counts to measure, one node each.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    actors: Vec<usize>,
    /// Writes measured per node.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Seed of the write schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A write not visible everywhere after this many ms is counted as lost.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load_before = load_average();
    let options =
        Options { samples: args.samples, seed: args.seed, timeout: Duration::from_millis(args.timeout_ms) };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &actors in &args.actors {
        anyhow::ensure!(actors >= 2, "--actors: at least 2 actors, so one can watch another");
        let node = Node::start(&NodeConfig {
            host: "127.0.0.1".into(),
            port: 0,
            actors,
            cluster_dir: None,
            join: Vec::new(),
            progress: false,
            ..NodeConfig::default()
        })?;
        let clients = clients(&node);
        let routes: Vec<Route> = (0..actors)
            .map(|w| Route { writer: w, observers: (0..actors).filter(|&o| o != w).collect() })
            .collect();
        eprintln!("local_visibility: {actors} actors, {} writes ...", args.samples);
        let report = visibility::measure(&clients, &routes, &options)?;
        node.shutdown();
        let acks: Vec<Duration> = report.samples.iter().map(|s| s.ack).collect();
        notes.push(format!(
            "{actors} actors: {:.1} s; Put round trip median {}; MGET poll round trip median {} \
             ({} polls, the probe's resolution)",
            report.elapsed.as_secs_f64(),
            us(median(&acks)),
            us(median(&report.polls)),
            report.polls.len()
        ));
        for (i, (label, summary)) in
            visibility::rows(&format!("{actors} actors"), &report).into_iter().enumerate()
        {
            rows.push((label, summary, i == 0));
        }
    }

    println!(
        "| setup | writes | p50 ms | p90 ms | p99 ms | max ms | lost | p50 ≤ {} ms | p99 ≤ {} ms | max ≤ {} ms (requirement) |",
        TARGET_P50.as_millis(),
        TARGET_P99.as_millis(),
        REQUIREMENT.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|---|");
    for (label, summary, judged) in rows {
        let Some(s) = summary else {
            println!("| {label} | 0 | | | | | | | | |");
            continue;
        };
        let judge = |ok: bool| if judged { verdict(ok) } else { "" };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.n,
            ms_or_lost(s.p50),
            ms_or_lost(s.p90),
            ms_or_lost(s.p99),
            ms_or_lost(s.max),
            s.lost,
            judge(s.p50 <= TARGET_P50),
            judge(s.p99 <= TARGET_P99),
            judge(s.max <= REQUIREMENT),
        );
    }
    println!();
    println!(
        "Put on a random actor, MGET-polled back to back on every other actor of the same node by one thread; \
         latency from sending the Put until the last actor returned it; writes 20–300 ms apart, half of them \
         in bursts of 2–8 writes 1–5 ms apart; seed {}; lost = not visible within {} ms.",
        args.seed, args.timeout_ms
    );
    for n in notes {
        println!("{n}.");
    }
    println!(
        "{} cores; 1/5/15-min load average {load_before} before, {} after.",
        harness::cores(),
        load_average()
    );
    println!();
    println!("`{}`", harness::command_line("local_visibility"));
    Ok(())
}
