//! Limits under attack (design 4.8): fairness under a pipelining flood, and memory under the
//! `MGET` attack. Prints a markdown table against the design's targets.
//!
//! ```text
//! cargo run --release -p benches --bin flood_fairness
//! cargo run --release -p benches --bin flood_fairness -- --pings 2000 --writes 200
//! ```
//!
//! Fairness: a 2-actor node on loopback; one connection pipelines `SET`s to actor 0 without
//! pause (`replica_node::testkit::Flood`). Measured, without and then with the flood: the round
//! trip of a `PING` another client sends to actor 0 (target p99 ≤ 50 ms), and how long a write
//! on actor 1 takes to be visible on actor 0 and a write on actor 0 to be visible on actor 1
//! (target p99 ≤ 500 ms). The flood's own throughput is reported beside.
//!
//! Memory: `SET big` (8 MiB), then a client sends `MGET` naming `big` 4 096 times (a 32 GiB
//! reply) and reads nothing. Reported: the node's RSS before and after (`INFO
//! used_memory_rss`), and whether the client was disconnected at the output limit (default
//! 256 MiB; the RSS must not rise by more than that).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use benches::harness::{self, clients, eventually, load_average, ms, quantile, verdict};
use clap::Parser;
use replica_node::client::{Client, parse_info};
use replica_node::testkit::Flood;
use replica_node::{DEFAULT_OUTPUT_LIMIT, Node, NodeConfig};

const PING_P99: Duration = Duration::from_millis(50);
const VISIBILITY_P99: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(about = "PING latency and visibility under a pipelining flood; RSS under the MGET attack")]
struct Args {
    /// PINGs measured per phase.
    #[arg(long, default_value_t = 1000)]
    pings: usize,
    /// Writes measured per direction and phase.
    #[arg(long, default_value_t = 100)]
    writes: usize,
}

/// The round trip of one inline `PING` on `conn`.
fn ping(conn: &mut TcpStream) -> anyhow::Result<Duration> {
    let t = Instant::now();
    conn.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    conn.read_exact(&mut reply)?;
    anyhow::ensure!(&reply == b"+PONG\r\n", "unexpected reply {reply:?}");
    Ok(t.elapsed())
}

/// Round trips of `n` PINGs 2 ms apart, sorted.
fn pings(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        rtts.push(ping(&mut conn)?);
        std::thread::sleep(Duration::from_millis(2));
    }
    rtts.sort();
    Ok(rtts)
}

/// Times from sending a write on `writer` until `reader` returns it, sorted; lost writes (not
/// seen within 10 s) count as `Duration::MAX`.
fn visibility(writer: &Client, reader: &Client, n: usize, tag: &str) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("vis:{tag}:{}:{i}", harness::unique());
        let t = Instant::now();
        writer.put(&key, "x")?;
        let seen = eventually(Duration::from_secs(10), || matches!(reader.get(&key), Ok(Some(_))));
        times.push(seen.map_or(Duration::MAX, |_| t.elapsed()));
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort();
    Ok(times)
}

fn row(label: &str, sorted: &[Duration], target: Duration) {
    let lost = sorted.iter().filter(|d| **d == Duration::MAX).count();
    let show = |d: Duration| if d == Duration::MAX { "lost".to_string() } else { ms(d) };
    let p99 = quantile(sorted, 0.99);
    println!(
        "| {label} | {} | {} | {} | {} | {} | {lost} | {} |",
        sorted.len(),
        show(quantile(sorted, 0.5)),
        show(quantile(sorted, 0.9)),
        show(p99),
        show(sorted[sorted.len() - 1]),
        verdict(p99 <= target),
    );
}

fn rss(client: &Client) -> anyhow::Result<u64> {
    let fields = parse_info(&client.info()?);
    fields.get("used_memory_rss").context("INFO has no used_memory_rss")?.parse().context("used_memory_rss")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load_before = load_average();
    let node =
        Node::start(&NodeConfig { host: "127.0.0.1".into(), port: 0, actors: 2, ..NodeConfig::default() })?;
    let addrs = node.description().client_addrs();
    let cs = clients(&node);

    eprintln!("flood_fairness: without a flood ...");
    let quiet_pings = pings(addrs[0], args.pings)?;
    let quiet_in = visibility(&cs[1], &cs[0], args.writes, "quiet-in")?;
    let quiet_out = visibility(&cs[0], &cs[1], args.writes, "quiet-out")?;

    eprintln!("flood_fairness: under a flood on actor 0 ...");
    let flood = Flood::start(addrs[0])?;
    anyhow::ensure!(eventually(Duration::from_secs(10), || flood.replies() > 100_000).is_some(), "no flood");
    let (start, started) = (flood.replies(), Instant::now());
    let flood_pings = pings(addrs[0], args.pings)?;
    let flood_in = visibility(&cs[1], &cs[0], args.writes, "flood-in")?;
    let flood_out = visibility(&cs[0], &cs[1], args.writes, "flood-out")?;
    let rate = (flood.replies() - start) as f64 / started.elapsed().as_secs_f64();
    flood.stop();

    eprintln!("flood_fairness: the MGET attack ...");
    let big = vec![b'x'; 8 * 1024 * 1024];
    cs[0].put("big", &big)?;
    let rss_before = rss(&cs[0])?;
    let mut attacker = TcpStream::connect(addrs[0])?;
    let mut request = Vec::new();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"big"[..], 4096));
    resp::encode_command(&mut request, &mget);
    attacker.write_all(&request)?;
    let refused = eventually(Duration::from_secs(30), || {
        parse_info(&cs[0].info().unwrap_or_default())
            .get("client_output_limit_disconnects")
            .map(String::as_str)
            == Some("1")
    });
    let rss_after = rss(&cs[0])?;
    let bystander = ping(&mut TcpStream::connect(addrs[0])?)?;
    node.shutdown();

    println!(
        "| measurement | samples | p50 ms | p90 ms | p99 ms | max ms | lost | p99 ≤ target (PING {} ms, visibility {} ms) |",
        PING_P99.as_millis(),
        VISIBILITY_P99.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    row("PING on actor 0, no flood", &quiet_pings, PING_P99);
    row("PING on actor 0, flood on actor 0", &flood_pings, PING_P99);
    row("write on actor 1 → visible on actor 0, no flood", &quiet_in, VISIBILITY_P99);
    row("write on actor 1 → visible on actor 0 (flooded)", &flood_in, VISIBILITY_P99);
    row("write on actor 0, no flood → visible on actor 1", &quiet_out, VISIBILITY_P99);
    row("write on actor 0 (flooded) → visible on actor 1", &flood_out, VISIBILITY_P99);
    println!();
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "Flood: one connection pipelining SETs (16-byte values, 1 000 keys) to actor 0, served {:.0} SET/s \
         while measured. PINGs 2 ms apart on their own connection; writes 20 ms apart, polled with GET: 50 \
         writes a second is above the sync budget of 10 messages a second per actor pair, so the pacer batches \
         them about 100 ms apart with or without a flood.",
        rate
    );
    println!(
        "MGET attack (one 8 MiB value named 4 096 times, a 32 GiB reply, client reading nothing): {}; RSS {:.0} MiB \
         before, {:.0} MiB after (+{:.1} MiB; limit {} MiB: {}); a PING from another client meanwhile took {} ms.",
        if refused.is_some() { "disconnected at the output limit" } else { "**not disconnected**" },
        rss_before as f64 / MIB,
        rss_after as f64 / MIB,
        (rss_after as f64 - rss_before as f64) / MIB,
        DEFAULT_OUTPUT_LIMIT / (1024 * 1024),
        verdict(rss_after < rss_before + DEFAULT_OUTPUT_LIMIT as u64),
        ms(bystander),
    );
    println!(
        "{} cores; 1/5/15-min load average {load_before} before, {} after.",
        harness::cores(),
        load_average()
    );
    println!();
    println!("`{}`", harness::command_line("flood_fairness"));
    Ok(())
}
