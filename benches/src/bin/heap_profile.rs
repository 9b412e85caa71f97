//! Where a node's heap goes: an in-process node of `--actors` actors is loaded with `--keys`
//! keys (16-byte keys, 100-byte values) under the dhat heap profiler, and once every actor
//! holds every key and the node is idle, the live heap is broken down by the function that
//! allocated it.
//!
//! ```text
//! cargo run --release -p benches --features dhat-heap --bin heap_profile -- --keys 200000
//! ```
//!
//! Prints the live bytes and blocks per allocation site group (the record, the key and value
//! buffers, each map's chunks and index, everything else) and writes `dhat-heap.json`
//! (viewable with dhat's viewer). The profiler slows allocation down several times, so the
//! load takes longer than usual; the bytes are exact (requested sizes, without the
//! allocator's rounding, which `memory` sees in RSS).

use std::collections::BTreeMap;
use std::time::Duration;

use benches::data;
use benches::harness::{self, Cluster, clients};
use benches::load::{load, wait_idle};
use clap::Parser;
use replica_node::client::Client;
use resp::Value;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Debug, Parser)]
#[command(about = "Live heap of a loaded node, by allocation site (dhat)")]
struct Args {
    /// Keys loaded.
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Actors of the node.
    #[arg(long, default_value_t = 2)]
    actors: usize,
    /// Seed of the keys and values.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn dbsize(c: &Client) -> Option<i64> {
    match c.command(&["DBSIZE"]).ok()? {
        Value::Integer(n) => Some(n),
        _ => None,
    }
}

/// Which part of the store an allocation stack belongs to: the first rule any of its frames
/// matches.
fn classify(frames: &[&str]) -> &'static str {
    const RULES: [(&str, &str); 7] = [
        ("ArcInner<lww_crdt::map::Record", "records (Arc counts, key and value handles, timestamp)"),
        ("copy_from_slice (bytes", "key and value buffers (copied out of the request)"),
        ("Node<lww_crdt::tree::Sep", "map indexes (B-tree nodes over the chunks)"),
        ("tree::Slot", "map chunks (16-byte slots)"),
        ("shallow_clone", "shared headers of key buffers (chunk separators)"),
        ("promotable", "shared headers of key buffers (chunk separators)"),
        ("quinn", "QUIC endpoint buffers"),
    ];
    RULES.iter().find(|(pat, _)| frames.iter().any(|f| f.contains(pat))).map_or("other", |(_, name)| name)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let profiler = dhat::Profiler::builder().trim_backtraces(Some(40)).build();
    let pairs = data::pairs(args.keys, args.seed);
    let mut cluster = Cluster::new("heap");
    let node = cluster.add(args.actors);
    let cs = clients(node);
    load(&node.description().client_addrs(), &pairs)?;
    drop(pairs);
    let n = args.keys as i64;
    harness::eventually_every(Duration::from_secs(600), Duration::from_millis(50), || {
        cs.iter().all(|c| dbsize(c) == Some(n))
    })
    .ok_or_else(|| anyhow::anyhow!("the actors did not get every key"))?;
    wait_idle(std::process::id(), Duration::from_secs(60));
    drop(profiler); // writes dhat-heap.json with the live heap as its "end" figures

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("dhat-heap.json")?)?;
    let frames: Vec<&str> =
        json["ftbl"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
    let mut groups: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for pp in json["pps"].as_array().into_iter().flatten() {
        let (eb, ebk) = (pp["eb"].as_u64().unwrap_or(0), pp["ebk"].as_u64().unwrap_or(0));
        if eb == 0 {
            continue;
        }
        let fs: Vec<&str> = pp["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| frames.get(i.as_u64()? as usize).copied())
            .collect();
        let g = groups.entry(classify(&fs)).or_default();
        g.0 += eb;
        g.1 += ebk;
    }
    println!("| allocated by | live MB | blocks | bytes per key | bytes per block |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by_key(|(_, (b, _))| std::cmp::Reverse(*b));
    for (name, (bytes, blocks)) in &rows {
        println!(
            "| {name} | {:.1} | {blocks} | {:.1} | {:.0} |",
            *bytes as f64 / 1e6,
            *bytes as f64 / args.keys as f64,
            *bytes as f64 / (*blocks).max(1) as f64
        );
    }
    let (live, blocks) = rows.iter().fold((0, 0), |(b, k), (_, (eb, ebk))| (b + eb, k + ebk));
    println!("| all | {:.1} | {blocks} | {:.1} | |", live as f64 / 1e6, live as f64 / args.keys as f64);
    println!();
    println!(
        "{} keys, {} actors and the gateway (one in-process node), once every actor holds every key and the \
         process is idle; requested sizes, before the allocator rounds them up.",
        args.keys, args.actors
    );
    println!(
        "`cargo run --release -p benches --features dhat-heap --bin heap_profile -- --keys {} --actors {}`",
        args.keys, args.actors
    );
    drop(cs);
    drop(cluster);
    Ok(())
}
