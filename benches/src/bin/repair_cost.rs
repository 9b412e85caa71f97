//! Repair cost: what anti-entropy repair sends between servers whose replicas agree, and under
//! a write load that keeps their digests apart for a moment all the time.
//!
//! Three servers (2 actors each) joined through 50 ms relays. Phase 1: quiet for `--secs`:
//! payload bytes between servers (every byte of every frame: deltas, acks, roots, repair) and,
//! from the relays, UDP bytes on the wire (QUIC keep-alives included). Phase 2: `--rate` writes
//! per second on random keys spread over every actor of every server, for `--secs`: repair
//! rounds and repair entries beside the delta traffic. Phase 3: the same servers, with one cut
//! off and then healed after more writes than it may queue for it, to show what repair costs
//! when it has work to do.
//!
//! ```text
//! cargo run --release -p benches --bin repair_cost
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use benches::harness::{Cluster, command_line, load_average};
use clap::Parser;
use replica_node::NodeStats;

#[derive(Debug, Parser)]
#[command(about = "Measure what digest repair costs while replicas agree, under writes, and when it repairs")]
struct Args {
    /// Seconds of each phase.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Writes per second in the write phase, over the whole cluster.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    payload: u64,
    rounds: u64,
    repair_entries: u64,
    messages: u64,
    udp: u64,
}

fn totals(c: &Cluster) -> Totals {
    let g = NodeStats::get;
    let mut t = Totals::default();
    for n in &c.nodes {
        let s = n.stats();
        t.payload += g(&s.remote_bytes_sent);
        t.rounds += g(&s.repair_rounds);
        t.repair_entries += g(&s.repair_entries_received);
        t.messages += g(&s.sync_messages_sent);
    }
    t.udp = c.relays.iter().map(|r| r.stats().bytes_forwarded).sum();
    t
}

fn report(name: &str, links: u64, secs: f64, before: Totals, after: Totals) {
    let per_link = |v: u64| v as f64 / secs / links as f64;
    println!(
        "| {name} | {:.0} | {:.0} | {} | {} |",
        per_link(after.payload - before.payload),
        per_link(after.udp - before.udp),
        after.rounds - before.rounds,
        after.repair_entries - before.repair_entries,
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = load_average();
    let mut c = Cluster::with_delay("repair-cost", Duration::from_millis(50));
    c.peer_pending_limit = 1_000;
    c.peer_idle_timeout = Duration::from_secs(3);
    for _ in 0..3 {
        c.add(2);
    }
    anyhow::ensure!(c.try_wait_connected(Duration::from_secs(20)), "servers did not connect");
    let links = 3;
    let clients: Vec<_> = c.clients().into_iter().flatten().collect();
    // Some data first, so digests are not trivially empty.
    for i in 0..10_000 {
        clients[i % clients.len()].put(format!("seed:{i:05}"), "x".repeat(100))?;
    }
    std::thread::sleep(Duration::from_secs(5));
    println!("| phase | payload bytes/s per link | UDP bytes/s per link | repair rounds | repair entries |");
    println!("|---|---:|---:|---:|---:|");

    let secs = args.secs as f64;
    let before = totals(&c);
    std::thread::sleep(Duration::from_secs(args.secs));
    report("in sync, idle", links, secs, before, totals(&c));

    let before = totals(&c);
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let writers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(w, cl)| {
                let stop = &stop;
                let per_writer = args.rate / clients.len() as u64;
                s.spawn(move || {
                    let mut n = 0u64;
                    let start = Instant::now();
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ w as u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let _ = cl.put(format!("w:{:06}", x % 100_000), "y".repeat(100));
                        n += 1;
                        let due = start + Duration::from_secs_f64(n as f64 / per_writer.max(1) as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(args.secs));
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap_or(0)).sum::<u64>()
    });
    let after = totals(&c);
    report(&format!("{} writes/s on random keys", written / args.secs), links, secs, before, after);

    // Partition every server from the others, write more on one than it may queue for the
    // others, heal, wait for repair.
    c.relays.iter().for_each(|r| r.cut());
    let apart = benches::harness::eventually(Duration::from_secs(20), || {
        c.nodes.iter().all(|n| NodeStats::get(&n.stats().peers_connected) == 0)
    });
    anyhow::ensure!(apart.is_some(), "the cut did not end the connections");
    let before = totals(&c);
    for i in 0..5_000 {
        clients[(i % 2) + 2].put(format!("cut:{i:05}"), "z".repeat(100))?;
    }
    let start = Instant::now();
    c.relays.iter().for_each(|r| r.heal());
    let all = c.clients().into_iter().flatten().collect::<Vec<_>>();
    let ok = benches::harness::eventually_every(Duration::from_secs(120), Duration::from_millis(100), || {
        all.iter().all(|cl| cl.list("cut:").is_ok_and(|m| m.len() == 5_000))
    });
    let after = totals(&c);
    let took = start.elapsed();
    report("5 000 writes repaired after a partition", links, took.as_secs_f64(), before, after);
    println!();
    println!(
        "Repair after the partition: {}; load average before: {load}; `{}`.",
        ok.map_or("never converged".into(), |d| format!("converged {:.1} s after the heal", d.as_secs_f64())),
        command_line("repair_cost")
    );
    Ok(())
}
