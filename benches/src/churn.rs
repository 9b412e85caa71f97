//! The delete-heavy workload of `clocks_tombstones` and `tombstone_heap`: rounds of inserting
//! new keys on every actor of two servers and deleting them all, with the tombstones held and
//! the memory after each step.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use replica_node::client::Client;
use replica_node::testkit::Cluster;

/// The workload: `keys` new keys per round (16-byte keys, 100-byte values), `rounds` rounds.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub keys: usize,
    pub rounds: u8,
}

/// One `INFO` figure of the actor behind `client`, as a number.
pub fn info(client: &Client, field: &str) -> anyhow::Result<i64> {
    let fields = client.info_fields()?;
    fields.get(field).with_context(|| format!("INFO has no {field}"))?.parse().context("a number")
}

/// Bytes in MiB, rounded.
pub fn mib(bytes: i64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
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

/// Runs the workload on two servers of 2 actors with `grace` as their tombstone grace (a grace
/// of a minute or more: never collected), printing one table row per step with the tombstones
/// of server 0 and what `memory` says (the process's memory, as the caller measures it).
pub fn churn(
    args: Churn,
    grace: Duration,
    memory: &dyn Fn(&Client) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut c = Cluster::new("tombstone-churn");
    c.tombstone_grace = grace;
    c.add(2);
    c.add(2);
    anyhow::ensure!(c.try_wait_connected(Duration::from_secs(20)), "servers did not connect");
    let addrs: Vec<SocketAddr> = (0..2).flat_map(|i| c.addrs(i)).collect();
    let probe = c.client(0);
    let collects = grace < Duration::from_secs(60);
    let label = if collects { format!("grace {} s", grace.as_secs()) } else { "never collected".into() };
    // One table row: the moment, server 0's tombstones and the memory.
    let row = |moment: &str| -> anyhow::Result<()> {
        println!("| {label} | {moment} | {} | {} |", info(&probe, "tombstones")?, memory(&probe)?);
        Ok(())
    };
    row("start")?;
    let value = [b'v'; 100];
    for round in 1..=usize::from(args.rounds) {
        on_every_actor(&addrs, round, args.keys, |k| resp(&[b"SET", k, &value]))?;
        row(&format!("round {round}: inserted"))?;
        on_every_actor(&addrs, round, args.keys, |k| resp(&[b"DEL", k]))?;
        // Every server has every delete before the next round.
        until_zero(&c, "keys", Duration::from_secs(60), "deletes did not spread")?;
        row(&format!("round {round}: deleted"))?;
        if collects {
            let waited =
                until_zero(&c, "tombstones", Duration::from_secs(120), "tombstones were not collected")?;
            row(&format!("round {round}: collected after {:.1} s", waited.as_secs_f64()))?;
        }
    }
    Ok(())
}

/// Waits until `field` of `INFO` is 0 on both servers of `c`; returns how long that took, or
/// fails with `why` after `within`.
fn until_zero(c: &Cluster, field: &str, within: Duration, why: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while (0..2).any(|i| info(&c.client(i), field).map_or(true, |n| n > 0)) {
        anyhow::ensure!(t0.elapsed() < within, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t0.elapsed())
}
