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
//! wait until every tombstone is collected, and the RSS after it. The anchor is the same
//! workload with collection held back (a grace longer than the run): memory that only grows.
//!
//! ```text
//! cargo run --release -p benches --bin clocks_tombstones
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
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
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=9))]
    rounds: u8,
}

fn info(client: &Client, field: &str) -> anyhow::Result<i64> {
    let fields = client.info_fields()?;
    fields.get(field).with_context(|| format!("INFO has no {field}"))?.parse().context("a number")
}

fn mib(bytes: i64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
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

/// Sends `commands` (already encoded) down one connection, pipelined, and reads one reply line
/// per command (every command here answers with a single line).
fn pipeline(addr: SocketAddr, commands: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    for batch in commands.chunks(500) {
        let bytes: Vec<u8> = batch.concat();
        stream.write_all(&bytes)?;
        for _ in batch {
            line.clear();
            reader.read_line(&mut line)?;
            anyhow::ensure!(!line.starts_with('-'), "error reply: {line}");
        }
    }
    Ok(())
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs the workload on every actor of every server at once, one connection each.
fn on_every_actor(
    addrs: &[SocketAddr],
    round: usize,
    keys: usize,
    make: impl Fn(&[u8]) -> Vec<u8> + Sync,
) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(a, addr)| {
                let make = &make;
                s.spawn(move || {
                    let commands: Vec<Vec<u8>> = (a..keys)
                        .step_by(addrs.len())
                        .map(|i| make(format!("r{round}:{i:013}").as_bytes()))
                        .collect();
                    pipeline(*addr, &commands)
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("no panic"))
    })
}

/// Part 2 for one grace; returns the RSS at the end.
fn churn(args: &Args, grace: Duration) -> anyhow::Result<()> {
    let mut c = Cluster::new("tombstone-churn");
    c.tombstone_grace = grace;
    c.add(2);
    c.add(2);
    anyhow::ensure!(c.try_wait_connected(Duration::from_secs(20)), "servers did not connect");
    let addrs: Vec<SocketAddr> = (0..2).flat_map(|i| c.addrs(i)).collect();
    let probe = c.client(0);
    let collects = grace < Duration::from_secs(60);
    let label = if collects { format!("grace {} s", grace.as_secs()) } else { "never collected".into() };
    println!(
        "| {label} | start | {} | {} |",
        info(&probe, "tombstones")?,
        mib(info(&probe, "used_memory_rss")?)
    );
    let value = [b'v'; 100];
    for round in 1..=usize::from(args.rounds) {
        on_every_actor(&addrs, round, args.keys, |k| resp(&[b"SET", k, &value]))?;
        let inserted = info(&probe, "used_memory_rss")?;
        on_every_actor(&addrs, round, args.keys, |k| resp(&[b"DEL", k]))?;
        // Every server has every delete before the next round.
        let t0 = Instant::now();
        while (0..2).any(|i| info(&c.client(i), "keys").map_or(true, |k| k > 0)) {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "deletes did not spread");
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "| {label} | round {round}: inserted / deleted | {} | {} / {} |",
            info(&probe, "tombstones")?,
            mib(inserted),
            mib(info(&probe, "used_memory_rss")?)
        );
        if collects {
            let t0 = Instant::now();
            while (0..2).any(|i| info(&c.client(i), "tombstones").map_or(true, |t| t > 0)) {
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "tombstones were not collected");
                std::thread::sleep(Duration::from_millis(100));
            }
            println!(
                "| {label} | round {round}: collected after {:.1} s | 0 | {} |",
                t0.elapsed().as_secs_f64(),
                mib(info(&probe, "used_memory_rss")?)
            );
        }
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
    churn(&args, Duration::from_secs(2))?;
    churn(&args, Duration::from_secs(3_600))?;
    Ok(())
}
