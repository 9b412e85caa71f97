//! Remote visibility: two servers of two actors each, joined through a link emulator that adds
//! a one-way delay (250 ms and 200 ms by default); a Put on one server, then how long until
//! every actor of the other server returns it. Prints a markdown table of percentiles against
//! the design's targets at 250 ms (p50 ≤ 260 ms, p99 ≤ 400 ms; requirement 2 000 ms).
//!
//! ```text
//! cargo run --release -p benches --bin remote_visibility                 # 250 and 200 ms, 200 writes each
//! cargo run --release -p benches --bin remote_visibility -- --delay-ms 250 --samples 500
//! cargo run --release -p benches --bin remote_visibility -- --delay-ms 250 --join-keys 1000000
//! ```
//!
//! With `--join-keys N` each delay is measured twice: idle, and while the second server joins
//! a first one holding N keys (its snapshot streams through the same link and connection as
//! the deltas; the probe starts as soon as the servers are connected).
//!
//! Each delay gets a fresh two-server cluster on loopback (in-process nodes, the second joining
//! the first through a `net_quic::LinkEmulator`). Each write goes to a random actor of either
//! server and is polled on both actors of the other (see `benches::visibility`). The anchor is
//! the link's one-way delay: the table shows what the store adds to it. About 15 s per delay at
//! 200 writes.

use std::time::Duration;

use benches::harness::{self, Cluster, clients, load_average, ms, us, verdict};
use benches::visibility::{self, Options, Route, median, ms_or_lost};
use clap::Parser;
use net_quic::LinkConfig;

/// Design section 7: remote visibility targets (at 250 ms one way) and requirement.
const TARGET_P50: Duration = Duration::from_millis(260);
const TARGET_P99: Duration = Duration::from_millis(400);
const REQUIREMENT: Duration = Duration::from_millis(2_000);

#[derive(Debug, Parser)]
#[command(
    about = "Put on one server, time until every actor of another server (behind a delayed link) has it"
)]
struct Args {
    /// One-way delays of the emulated link, one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "250,200")]
    delay_ms: Vec<u64>,
    /// Actors per server.
    #[arg(long, default_value_t = 2)]
    actors: usize,
    /// Writes measured per delay.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Seed of the write schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A write not visible everywhere after this many ms is counted as lost.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Also measure while the second server joins a first one holding this many keys
    /// (16-byte keys, 100-byte values): the snapshot streams through the same link, on the
    /// same connection as the deltas. 0: idle only.
    #[arg(long, default_value_t = 0)]
    join_keys: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.actors >= 1, "--actors: at least 1");
    let load_before = load_average();
    let options =
        Options { samples: args.samples, seed: args.seed, timeout: Duration::from_millis(args.timeout_ms) };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let pairs = (args.join_keys > 0).then(|| benches::data::pairs(args.join_keys, 7));
    let phases: &[bool] = if pairs.is_some() { &[false, true] } else { &[false] };
    for (&delay_ms, &joining) in args.delay_ms.iter().flat_map(|d| phases.iter().map(move |j| (d, j))) {
        let delay = Duration::from_millis(delay_ms);
        let mut cluster = Cluster::with_link("remote-vis", Some(LinkConfig::with_delay(delay)));
        let a = cluster.add(args.actors);
        if joining && let Some(pairs) = &pairs {
            eprintln!("remote_visibility: loading {} keys into the first server ...", pairs.len());
            benches::load::load(&a.description().client_addrs(), pairs)?;
        }
        let joined = std::time::Instant::now();
        cluster.add(args.actors);
        anyhow::ensure!(cluster.try_wait_connected(Duration::from_secs(30)), "the servers did not connect");

        let all: Vec<_> = cluster.nodes.iter().flat_map(clients).collect();
        let n = args.actors;
        // Actors 0..n are server A's, n..2n server B's; a write on one server is watched on the other.
        let routes: Vec<Route> = (0..2 * n)
            .map(|w| {
                let other = if w < n { n..2 * n } else { 0..n };
                Route { writer: w, observers: other.collect() }
            })
            .collect();
        eprintln!("remote_visibility: {delay_ms} ms one way, {} writes ...", args.samples);
        let measure_start = joined.elapsed();
        // While B loads the snapshot its `loading` flag is up: note when it comes down.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (report, join_done) = std::thread::scope(|sc| {
            let b_stats = cluster.nodes[1].stats();
            let stop = &stop;
            let watch = sc.spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                harness::eventually_every(Duration::from_secs(600), Duration::from_millis(5), || {
                    replica_node::NodeStats::get(&b_stats.loading) == 0 || stop.load(Relaxed)
                });
                (replica_node::NodeStats::get(&b_stats.loading) == 0).then(|| joined.elapsed())
            });
            let report = visibility::measure(&all, &routes, &options);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (report, watch.join().expect("watcher does not panic"))
        });
        let report = report?;
        let link = cluster.relays[0].stats();
        drop(cluster);
        let acks: Vec<Duration> = report.samples.iter().map(|s| s.ack).collect();
        notes.push(format!(
            "{delay_ms} ms: {:.1} s; Put round trip median {}; MGET poll round trip median {}; \
             relay forwarded {} packets, {:.0} kB",
            report.elapsed.as_secs_f64(),
            us(median(&acks)),
            us(median(&report.polls)),
            link.packets_forwarded,
            link.bytes_forwarded as f64 / 1e3
        ));
        if joining {
            notes.push(format!(
                "{delay_ms} ms, during the join: {} keys; the probe started {:.2} s after B started; B's snapshot \
                 was complete {}",
                args.join_keys,
                measure_start.as_secs_f64(),
                join_done.map_or("not within the probe".into(), |d| format!("{:.2} s after B started", d.as_secs_f64()))
            ));
        }
        let setup = if joining {
            format!("{delay_ms} ms one way, during a join of {} keys", args.join_keys)
        } else {
            format!("{delay_ms} ms one way")
        };
        for (i, (label, summary)) in visibility::rows(&setup, &report).into_iter().enumerate() {
            rows.push((label, summary, delay, i == 0 && delay_ms == 250 && !joining));
        }
    }

    println!(
        "| setup | writes | p50 ms | p90 ms | p99 ms | max ms | lost | p50 − delay ms | p50 ≤ {} ms | p99 ≤ {} ms | max ≤ {} ms (requirement) |",
        TARGET_P50.as_millis(),
        TARGET_P99.as_millis(),
        REQUIREMENT.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|");
    for (label, summary, delay, judged) in rows {
        let Some(s) = summary else {
            println!("| {label} | 0 | | | | | | | | | |");
            continue;
        };
        let judge = |ok: bool| if judged { verdict(ok) } else { "" };
        let excess = if s.p50 == Duration::MAX { "lost".into() } else { ms(s.p50.saturating_sub(delay)) };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {excess} | {} | {} | {} |",
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
        "2 servers × {} actors in one process, the second joined to the first through a LinkEmulator (delay \
         only, both directions); Put on a random actor of either server, MGET-polled back to back on every \
         actor of the other server by one thread; latency from sending the Put until the last actor returned \
         it; writes 20–300 ms apart, half of them in bursts of 2–8 writes 1–5 ms apart; seed {}; lost = not \
         visible within {} ms. Targets are judged at 250 ms only.",
        args.actors, args.seed, args.timeout_ms
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
    println!("`{}`", harness::command_line("remote_visibility"));
    Ok(())
}
