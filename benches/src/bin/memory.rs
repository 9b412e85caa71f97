//! Memory: RSS of a server holding 1 000 000 keys (16-byte keys, 100-byte values) against
//! redis-server holding the same keys, measured in the same run (design section 7: a 2-actor
//! node ≤ 1.5× redis-server's RSS; each extra actor adds ≤ 40 % of redis-server's per-key
//! cost).
//!
//! ```text
//! cargo build --release -p replica-node --bin replica-node
//! cargo run --release -p benches --bin memory                        # 1M keys; 1, 2, 4 actors
//! cargo run --release -p benches --bin memory -- --keys 200000 --actors 2
//! ```
//!
//! Each server is a separate process (`redis-server --save '' --appendonly no`, and the
//! `replica-node` binary next to this one), loaded with pipelined `SET`s (one connection per
//! actor, the keys split evenly; one connection for redis-server) in random key order. A node
//! counts as loaded when every actor's `DBSIZE` is complete and the process has gone idle (its
//! gateway has merged every write and the delta buffers are freed); then its RSS is read from
//! `/proc/PID/status`. "Per key" is (RSS loaded − RSS empty) / keys.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use benches::data::{self, KEY_LEN, VALUE_LEN};
use benches::harness::{self, load_average, temp_dir, verdict};
use benches::load::{load, rss_bytes, wait_idle};
use clap::Parser;
use replica_node::client::{Client, Fixed};
use resp::Value;

/// Design section 7: a 2-actor node's RSS against redis-server's.
const TARGET_TWO_ACTORS: f64 = 1.5;
/// Design section 7: what each actor beyond the first adds per key, against redis-server's
/// per-key cost.
const TARGET_EXTRA_ACTOR: f64 = 0.4;

#[derive(Debug, Parser)]
#[command(about = "RSS of replica-node holding many keys, against redis-server holding the same keys")]
struct Args {
    /// Keys loaded into every server.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Actor counts of the nodes measured, one node each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    actors: Vec<usize>,
    /// Seed of the keys and values.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Give up on a load after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// One server measured.
#[derive(Debug)]
struct Measured {
    name: String,
    empty: u64,
    loaded: u64,
    load_time: Duration,
}

impl Measured {
    fn per_key(&self, keys: usize) -> f64 {
        self.loaded.saturating_sub(self.empty) as f64 / keys as f64
    }
}

/// Kills the child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.keys > 0 && args.actors.iter().all(|&a| a > 0),
        "--keys and --actors must be positive"
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let load_before = load_average();
    let node_bin = std::env::current_exe()?.with_file_name("replica-node");
    anyhow::ensure!(
        node_bin.exists(),
        "{} is missing: cargo build --release -p replica-node --bin replica-node",
        node_bin.display()
    );
    eprintln!("memory: generating {} keys ...", args.keys);
    let pairs = data::pairs(args.keys, args.seed);

    let mut rows = Vec::new();
    eprintln!("memory: redis-server ...");
    rows.push(measure_redis(&pairs, timeout)?);
    for &actors in &args.actors {
        eprintln!("memory: replica-node, {actors} actors ...");
        rows.push(measure_node(&node_bin, actors, &pairs, timeout)?);
    }

    let keys = args.keys;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let redis = &rows[0];
    let (redis_rss, redis_key) = (redis.loaded as f64, redis.per_key(keys));
    let one = args.actors.iter().position(|&a| a == 1).map(|i| &rows[i + 1]);
    println!(
        "| server | RSS empty MiB | RSS loaded MiB | bytes per key | RSS / redis-server | per key / redis-server | load s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.2}× | {:.2}× | {:.2} |",
            r.name,
            mib(r.empty),
            mib(r.loaded),
            r.per_key(keys),
            r.loaded as f64 / redis_rss,
            r.per_key(keys) / redis_key,
            r.load_time.as_secs_f64()
        );
    }
    println!();
    println!("| target | figure | anchor (redis-server, same run) | verdict |");
    println!("|---|---:|---:|---|");
    if let Some(i) = args.actors.iter().position(|&a| a == 2) {
        let ratio = rows[i + 1].loaded as f64 / redis_rss;
        println!(
            "| 2-actor node RSS ≤ {TARGET_TWO_ACTORS}× redis-server | {:.1} MiB ({ratio:.2}×) | {:.1} MiB | {} |",
            mib(rows[i + 1].loaded),
            mib(redis.loaded),
            verdict(ratio <= TARGET_TWO_ACTORS)
        );
    }
    if let Some(one) = one {
        for (&actors, r) in args.actors.iter().zip(&rows[1..]) {
            if actors <= 1 {
                continue;
            }
            let extra = (r.loaded as f64 - one.loaded as f64) / (actors - 1) as f64 / keys as f64;
            println!(
                "| each extra actor ≤ {:.0} % of redis-server's per-key cost (1 → {actors} actors) | {extra:.0} B/key ({:.0} %) | {redis_key:.0} B/key | {} |",
                TARGET_EXTRA_ACTOR * 100.0,
                extra / redis_key * 100.0,
                verdict(extra <= TARGET_EXTRA_ACTOR * redis_key)
            );
        }
    }
    println!();
    println!(
        "{keys} keys of {KEY_LEN} B with values of {VALUE_LEN} B (seed {}), loaded in random order by pipelined SET; \
         each server a separate process; RSS from /proc/PID/status once the process is idle; per key = (loaded − empty) / keys.",
        args.seed
    );
    println!(
        "{} cores; 1/5/15-min load average {load_before} before, {} after.",
        harness::cores(),
        load_average()
    );
    println!();
    println!("`{}`", harness::command_line("memory"));
    Ok(())
}

/// A base port with `base..=base + span` free for TCP and UDP.
fn free_base(span: u16) -> anyhow::Result<u16> {
    let mut seed = data::SplitMix64::new(harness::unique());
    for _ in 0..200 {
        let base = 20_000 + (seed.below(20_000) as u16);
        let free = (base..=base + span).all(|p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free port range")
}

fn dbsize(c: &Client) -> anyhow::Result<i64> {
    match c.command(&["DBSIZE"])? {
        Value::Integer(n) => Ok(n),
        other => anyhow::bail!("DBSIZE answered {other:?}"),
    }
}

fn wait_ready(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
    let c = Client::new(Fixed(addr));
    harness::eventually_every(timeout, Duration::from_millis(20), || c.command(&["PING"]).is_ok())
        .with_context(|| format!("{addr} did not answer PING"))?;
    Ok(c)
}

fn measure_redis(pairs: &[(bytes::Bytes, bytes::Bytes)], timeout: Duration) -> anyhow::Result<Measured> {
    let port = free_base(0)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--logfile", ""])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (apt-get install redis-server)")?;
    let guard = Guard(child);
    let pid = guard.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let c = wait_ready(addr, Duration::from_secs(10))?;
    wait_idle(pid, timeout);
    let empty = rss_bytes(pid)?;
    let load_time = load(&[addr], pairs)?;
    anyhow::ensure!(dbsize(&c)? == pairs.len() as i64, "redis-server lost keys");
    wait_idle(pid, timeout);
    let loaded = rss_bytes(pid)?;
    Ok(Measured { name: "redis-server".into(), empty, loaded, load_time })
}

fn measure_node(
    bin: &std::path::Path,
    actors: usize,
    pairs: &[(bytes::Bytes, bytes::Bytes)],
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let dir = temp_dir("memory");
    let port = free_base(actors as u16)?;
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--actors", &actors.to_string(), "--cluster-dir"])
        .arg(dir.path().join("cluster"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut guard = Guard(child);
    let pid = guard.0.id();
    let stdout = guard.0.stdout.take().context("node stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading the node's description")?;
    anyhow::ensure!(line.contains("\"clients\""), "unexpected description line: {line:?}");
    let addrs: Vec<SocketAddr> = (0..actors).map(|i| ([127, 0, 0, 1], port + 1 + i as u16).into()).collect();
    let clients =
        addrs.iter().map(|&a| wait_ready(a, Duration::from_secs(10))).collect::<anyhow::Result<Vec<_>>>()?;
    wait_idle(pid, timeout);
    let empty = rss_bytes(pid)?;
    let start = Instant::now();
    load(&addrs, pairs)?;
    let n = pairs.len() as i64;
    harness::eventually_every(timeout, Duration::from_millis(50), || {
        clients.iter().all(|c| dbsize(c).ok() == Some(n))
    })
    .context("the node's actors did not get every key")?;
    let load_time = start.elapsed();
    wait_idle(pid, timeout);
    let loaded = rss_bytes(pid)?;
    Ok(Measured {
        name: format!("replica-node, {actors} actor{}", if actors == 1 { "" } else { "s" }),
        empty,
        loaded,
        load_time,
    })
}
