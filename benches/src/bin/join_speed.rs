//! Join speed: server A holds 1 000 000 keys (16-byte keys, 100-byte values); server B joins
//! it (loopback, no delay) and the time until every actor of B has every key gives the state
//! transfer rate in MB/s of key + value payload. The anchor, measured in the same run, is the
//! loopback QUIC bulk rate of one Bulk stream (`benches::bulk`, the approach of net-quic's
//! `bulk_rate` test); the target is a ratio ≥ 50 % (design section 7).
//!
//! ```text
//! cargo run --release -p benches --bin join_speed                    # 1M keys, 3 joins, ~40 s
//! cargo run --release -p benches --bin join_speed -- --keys 200000   # a quick look
//! ```
//!
//! A is loaded with pipelined `SET`s over one raw TCP connection per actor, and counts as
//! loaded when every actor's `DBSIZE` is complete, its gateway has merged every write, and the
//! process has gone idle. Then fresh servers B join A one after the other (`--joins`, default
//! 3; each leaves before the next starts) and the median join is compared with the bulk rate,
//! measured before and after the joins in both endpoint shapes (best of 3 each). During a join
//! a thread per actor of B polls `DBSIZE` (an actor busy merging answers only when done, so
//! each has its own poller), and the main thread samples B's counters every 5 ms, which gives
//! a timeline: connected, first snapshot chunk merged, last snapshot byte, gateway merged
//! everything, each actor complete.
//!
//! To profile a join alone: `--skip-bulk --joins 1 --pause-before-join-ms 3000` and
//! `perf record -g -p PID` with the printed process id (see benches/README.md).

use std::time::{Duration, Instant};

use benches::bulk::{self, Bulk, Shape};
use benches::data::{self, KEY_LEN, VALUE_LEN};
use benches::harness::{self, Cluster, clients, load_average, verdict};
use benches::load::load;
use clap::Parser;
use replica_node::Node;
use replica_node::NodeStats;
use replica_node::client::Client;
use resp::Value;

/// Design section 7: join rate relative to the loopback QUIC bulk rate.
const TARGET_RATIO: f64 = 0.5;

#[derive(Debug, Parser)]
#[command(about = "Time a server joining another that holds many keys, against the loopback QUIC bulk rate")]
struct Args {
    /// Keys on server A.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Actors per server.
    #[arg(long, default_value_t = 2)]
    actors: usize,
    /// Seed of the keys and values.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Give up on the load or the join after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Skip the bulk-rate anchor (for profiling the join alone).
    #[arg(long)]
    skip_bulk: bool,
    /// Fresh servers B joining A, one after the other; the median join is compared.
    #[arg(long, default_value_t = 3)]
    joins: usize,
    /// Skip the Redis anchor (a replica's full sync of the same keys).
    #[arg(long)]
    skip_redis: bool,
    /// Print the process id and wait this long before B joins, to attach a profiler to the
    /// join alone (`perf record -g -p PID`).
    #[arg(long, default_value_t = 0)]
    pause_before_join_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.actors >= 1 && args.keys >= 1, "--actors and --keys must be positive");
    let timeout = Duration::from_secs(args.timeout_secs);
    let load_before = load_average();
    let n = args.keys as i64;
    let payload = (args.keys * (KEY_LEN + VALUE_LEN)) as f64;

    eprintln!("join_speed: generating {} keys ...", args.keys);
    let pairs = data::pairs(args.keys, args.seed);
    let mut cluster = Cluster::new("join");
    let a = cluster.add(args.actors);
    eprintln!("join_speed: loading A ...");
    let load_time = load(&a.description().client_addrs(), &pairs)?;
    let a_clients = clients(a);
    let settle = Instant::now();
    // Every write reaches the other actors and the gateway: `actors` merges per key.
    let merged_everywhere = harness::eventually_every(timeout, Duration::from_millis(20), || {
        NodeStats::get(&a.stats().sync_entries_received) >= (args.actors * args.keys) as u64
            && a_clients.iter().all(|c| dbsize(c).ok() == Some(n))
    });
    anyhow::ensure!(merged_everywhere.is_some(), "server A did not settle within {timeout:?}");
    let settle_time = settle.elapsed();
    // Merged is not idle: the last deltas are still being freed. The join starts from a quiet A.
    let idle_time = wait_idle(timeout);

    let mut bulks = Vec::new();
    if !args.skip_bulk {
        eprintln!("join_speed: bulk rate before the join ...");
        bulks.push(("before the join", best_bulk(Shape::OneThread)?));
        bulks.push(("before the join", best_bulk(Shape::TwoThreads)?));
        wait_idle(timeout);
    }

    if args.pause_before_join_ms > 0 {
        eprintln!("join_speed: pid {}; B joins in {} ms", std::process::id(), args.pause_before_join_ms);
        std::thread::sleep(Duration::from_millis(args.pause_before_join_ms));
    }
    anyhow::ensure!(args.joins >= 1, "--joins: at least 1");
    let mut joins = Vec::new();
    for i in 0..args.joins {
        eprintln!("join_speed: B joins ({} of {}) ...", i + 1, args.joins);
        joins.push(join_once(&mut cluster, args.actors, n, timeout)?);
        // B leaves; the next B joins the same A from scratch.
        drop(cluster.nodes.pop());
        wait_idle(timeout);
    }
    drop(a_clients);
    drop(cluster);

    let mut redis = Vec::new();
    if !args.skip_redis {
        for sync in [RedisSync::Diskless, RedisSync::Disk] {
            eprintln!("join_speed: redis-server replica, {} full sync ...", sync.name());
            let mut times = Vec::new();
            for _ in 0..args.joins {
                times.push(redis_full_sync(&pairs, sync, timeout)?);
            }
            times.sort_unstable();
            redis.push((sync, harness::quantile(&times, 0.5), times));
        }
    }
    drop(pairs);

    if !args.skip_bulk {
        eprintln!("join_speed: bulk rate after the joins ...");
        wait_idle(timeout);
        bulks.push(("after the joins", best_bulk(Shape::OneThread)?));
        bulks.push(("after the joins", best_bulk(Shape::TwoThreads)?));
    }

    let mb_s = |bytes: f64, t: Duration| bytes / 1e6 / t.as_secs_f64();
    println!(
        "Load: {} keys by pipelined SET over {} connections in {:.2} s ({:.0} keys/s, {:.1} MB/s); A settled \
         (all actors and gateway merged) {:.2} s later, idle {:.2} s after that.",
        args.keys,
        args.actors,
        load_time.as_secs_f64(),
        args.keys as f64 / load_time.as_secs_f64(),
        mb_s(payload, load_time),
        settle_time.as_secs_f64(),
        idle_time.as_secs_f64()
    );
    println!();
    let at = |d: Option<Duration>| d.map_or("—".into(), |d| format!("{:.2}", d.as_secs_f64()));
    println!(
        "| join | B connected s | first chunk merged by B's gateway s | last snapshot byte at B s | B's gateway \
         merged every key (≈) s | each actor of B complete s | **every actor complete s** | **MB/s** |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, j) in joins.iter().enumerate() {
        let actors: Vec<String> = j.complete.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | **{:.2}** | **{:.1}** |",
            i + 1,
            at(j.counters.connected),
            at(j.counters.first_chunk),
            at(j.counters.last_byte),
            at(j.counters.gateway),
            actors.join(", "),
            j.done.as_secs_f64(),
            mb_s(payload, j.done)
        );
    }
    let mut times: Vec<Duration> = joins.iter().map(|j| j.done).collect();
    times.sort_unstable();
    let median = harness::quantile(&times, 0.5);
    let join_rate = mb_s(payload, median);
    println!("| median | | | | | | **{:.2}** | **{join_rate:.1}** |", median.as_secs_f64());
    println!();
    let first_rate = mb_s(payload, joins[0].done);
    println!(
        "| anchor | time s | MB/s | join 1 / anchor | median join / anchor | target ≥ {:.0} % |",
        TARGET_RATIO * 100.0
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (when, b) in &bulks {
        let (first, ratio) = (first_rate / b.mb_per_s(), join_rate / b.mb_per_s());
        println!(
            "| QUIC bulk rate, {}, {when} (best of {BULK_RUNS}) | {:.2} | {:.1} | {:.1} % | {:.1} % | {} |",
            shape_name(b.shape),
            b.elapsed.as_secs_f64(),
            b.mb_per_s(),
            first * 100.0,
            ratio * 100.0,
            verdict(first.max(ratio) >= TARGET_RATIO)
        );
    }
    if !redis.is_empty() {
        println!();
        println!(
            "| anchor (same keys, same run) | runs s | median s | MB/s | anchor / median join (target ≥ {REDIS_TARGET:.0}× for diskless) |"
        );
        println!("|---|---|---:|---:|---:|");
        for (sync, median_redis, times) in &redis {
            let runs: Vec<String> = times.iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect();
            let speedup = median_redis.as_secs_f64() / median.as_secs_f64();
            let target = match sync {
                RedisSync::Diskless => format!(" ({})", verdict(speedup >= REDIS_TARGET)),
                RedisSync::Disk => String::new(),
            };
            println!(
                "| redis-server replica (`--replicaof`), {} | {} | {:.2} | {:.1} | {speedup:.2}×{target} |",
                sync.describe(),
                runs.join(", "),
                median_redis.as_secs_f64(),
                mb_s(payload, *median_redis)
            );
        }
    }
    println!();
    println!(
        "{} keys of {KEY_LEN} B with values of {VALUE_LEN} B (seed {}); in-process servers of {} actors on \
         loopback; each join is a fresh B joining the same A directly (no relay); times from starting B. \
         MB = 10^6 bytes; join rates count key + value payload only ({:.1} MB); B received {:.1} MB of frame \
         payload per join (keys, values, timestamps, framing). Bulk: {} frames of {} B on one Bulk stream.",
        args.keys,
        args.seed,
        args.actors,
        payload / 1e6,
        joins.iter().map(|j| j.wire_bytes).max().unwrap_or(0) as f64 / 1e6,
        bulks.first().map_or(0, |(_, b)| b.frames),
        bulks.first().map_or(0, |(_, b)| b.frame),
    );
    println!(
        "{} cores; 1/5/15-min load average {load_before} before, {} after.",
        harness::cores(),
        load_average()
    );
    println!();
    println!("`{}`", harness::command_line("join_speed"));
    Ok(())
}

/// Design section 7 (issue 15): a join at least this many times faster than a Redis replica's
/// diskless full sync of the same keys.
const REDIS_TARGET: f64 = 3.0;

/// How the Redis master hands its data to a new replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RedisSync {
    /// `repl-diskless-sync yes`, `repl-diskless-sync-delay 0` on the master, and
    /// `repl-diskless-load on-empty-db` on the replica: the RDB streams from memory to memory.
    Diskless,
    /// `repl-diskless-sync no`: the master writes an RDB file, then sends it; the replica
    /// stores it and loads it.
    Disk,
}

impl RedisSync {
    fn name(self) -> &'static str {
        match self {
            RedisSync::Diskless => "diskless",
            RedisSync::Disk => "disk",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RedisSync::Diskless => {
                "diskless (`repl-diskless-sync-delay 0`, `repl-diskless-load on-empty-db`)"
            }
            RedisSync::Disk => "disk (`repl-diskless-sync no`)",
        }
    }
}

/// Kills a child process when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback TCP port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Kill> {
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--logfile", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(["--dir".to_string(), dir.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = std::process::Command::new("redis-server")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting redis-server (apt-get install redis-server): {e}"))?;
    Ok(Kill(child))
}

/// A master holding `pairs`, then a fresh replica of it: the time from starting the replica
/// until it answers `DBSIZE` with every key (during the sync it answers `-LOADING` or less).
fn redis_full_sync(
    pairs: &[(bytes::Bytes, bytes::Bytes)],
    sync: RedisSync,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    use replica_node::client::Fixed;
    let dir = harness::temp_dir("redis-sync");
    let (master_port, replica_port) = (free_port()?, free_port()?);
    let master_opts: &[&str] = match sync {
        RedisSync::Diskless => &["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"],
        RedisSync::Disk => &["--repl-diskless-sync", "no"],
    };
    let master_dir = dir.path().join("master");
    let replica_dir = dir.path().join("replica");
    std::fs::create_dir_all(&master_dir)?;
    std::fs::create_dir_all(&replica_dir)?;
    let _master = redis(master_port, &master_dir, master_opts)?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], master_port).into();
    let master = Client::new(Fixed(addr));
    harness::eventually_every(Duration::from_secs(10), Duration::from_millis(10), || {
        master.command(&["PING"]).is_ok()
    })
    .ok_or_else(|| anyhow::anyhow!("redis master did not start"))?;
    load(&[addr], pairs)?;
    let n = pairs.len() as i64;
    anyhow::ensure!(dbsize(&master)? == n, "redis master lost keys");
    let replica_opts: Vec<String> = {
        let mut o = vec!["--replicaof".to_string(), "127.0.0.1".to_string(), master_port.to_string()];
        if sync == RedisSync::Diskless {
            o.extend(["--repl-diskless-load".to_string(), "on-empty-db".to_string()]);
        }
        o
    };
    let refs: Vec<&str> = replica_opts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let _replica = redis(replica_port, &replica_dir, &refs)?;
    let replica = Client::new(Fixed(([127, 0, 0, 1], replica_port).into()));
    harness::eventually_every(timeout, Duration::from_millis(5), || dbsize(&replica).ok() == Some(n))
        .ok_or_else(|| anyhow::anyhow!("the redis replica did not get every key within {timeout:?}"))?;
    Ok(t0.elapsed())
}

/// Bulk transfers per shape and moment; the best is kept (short runs vary by 2× here).
const BULK_RUNS: usize = 3;

fn best_bulk(shape: Shape) -> anyhow::Result<Bulk> {
    let mut best: Option<Bulk> = None;
    for _ in 0..BULK_RUNS {
        let b = bulk::run(shape, bulk::TOTAL, bulk::FRAME)?;
        if best.is_none_or(|x| b.mb_per_s() > x.mb_per_s()) {
            best = Some(b);
        }
    }
    Ok(best.expect("BULK_RUNS > 0"))
}

/// Waits until this process (servers included) uses under 10 % of a core over 250 ms, or
/// `timeout` passes; returns the time waited. Reads utime + stime from `/proc/self/stat`.
fn wait_idle(timeout: Duration) -> Duration {
    fn cpu_ticks() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let mut fields = rest.split_whitespace().skip(11);
        Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
    }
    let start = Instant::now();
    let mut last = cpu_ticks();
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(250));
        let now = cpu_ticks();
        // Clock ticks are 10 ms on Linux: at most 2 ticks in 250 ms is under 10 % of a core.
        match (last, now) {
            (Some(a), Some(b)) if b.saturating_sub(a) <= 2 => break,
            (_, None) => break,
            _ => last = now,
        }
    }
    start.elapsed()
}

fn shape_name(shape: Shape) -> &'static str {
    match shape {
        Shape::OneThread => "both endpoints on one thread (as net-quic's test)",
        Shape::TwoThreads => "one thread per endpoint (as two nodes)",
    }
}

fn dbsize(c: &Client) -> anyhow::Result<i64> {
    match c.command(&["DBSIZE"])? {
        Value::Integer(n) => Ok(n),
        other => anyhow::bail!("DBSIZE answered {other:?}"),
    }
}

/// One join, times from starting B.
#[derive(Debug)]
struct Join {
    counters: Counters,
    /// When each actor of B had every key.
    complete: Vec<Duration>,
    /// When the last one did.
    done: Duration,
    /// Frame payload bytes B received.
    wire_bytes: u64,
}

/// Starts a server B joining every server of `cluster` and waits until each of its actors
/// holds `n` keys.
fn join_once(cluster: &mut Cluster, actors: usize, n: i64, timeout: Duration) -> anyhow::Result<Join> {
    let t0 = Instant::now();
    let b: &Node = cluster.add(actors);
    let b_clients = clients(b);
    let (counters, complete) = std::thread::scope(|s| {
        let pollers: Vec<_> = b_clients
            .iter()
            .map(|c| {
                s.spawn(move || {
                    harness::eventually_every(timeout, Duration::from_millis(5), || dbsize(c).ok() == Some(n))
                        .map(|_| t0.elapsed())
                })
            })
            .collect();
        let counters = watch_counters(b, &b_clients, t0, n, &pollers);
        let complete: Vec<Option<Duration>> =
            pollers.into_iter().map(|p| p.join().expect("poller does not panic")).collect();
        (counters, complete)
    });
    let Some(complete) = complete.iter().copied().collect::<Option<Vec<_>>>() else {
        anyhow::bail!("B did not get every key within {timeout:?}: {complete:?}");
    };
    Ok(Join {
        counters,
        done: complete.iter().copied().max().unwrap_or_default(),
        complete,
        wire_bytes: NodeStats::get(&b.stats().remote_bytes_received),
    })
}

/// When B's counters passed each milestone (from `t0`).
#[derive(Debug, Default)]
struct Counters {
    connected: Option<Duration>,
    first_chunk: Option<Duration>,
    last_byte: Option<Duration>,
    gateway: Option<Duration>,
}

/// Samples B's counters every 5 ms until every poller has finished.
fn watch_counters<T>(
    b: &Node,
    b_clients: &[Client],
    t0: Instant,
    n: i64,
    pollers: &[std::thread::ScopedJoinHandle<'_, T>],
) -> Counters {
    let stats = b.stats();
    let mut c = Counters::default();
    let mut last_bytes = 0;
    let mut sizes = vec![0i64; b_clients.len()];
    let mut last_sizes = Instant::now() - Duration::from_secs(1);
    while !pollers.iter().all(|p| p.is_finished()) {
        let t = t0.elapsed();
        if c.connected.is_none() && NodeStats::get(&stats.peers_connected) > 0 {
            c.connected = Some(t);
        }
        let bytes = NodeStats::get(&stats.remote_bytes_received);
        if c.first_chunk.is_none() && NodeStats::get(&stats.sync_entries_received) > 0 {
            c.first_chunk = Some(t);
        }
        if bytes != last_bytes {
            last_bytes = bytes;
            c.last_byte = Some(t);
        }
        if c.gateway.is_none() {
            // Entries received count the gateway's merges and the actors'; what the actors hold
            // (read first, so the difference errs towards the gateway being done early by at
            // most one fan-out batch) is theirs. DBSIZE may wait for a busy actor: read it at
            // most every 50 ms.
            if last_sizes.elapsed() >= Duration::from_millis(50) {
                for (s, client) in sizes.iter_mut().zip(b_clients) {
                    *s = dbsize(client).unwrap_or(*s);
                }
                last_sizes = Instant::now();
            }
            let received = NodeStats::get(&stats.sync_entries_received) as i64;
            if received - sizes.iter().sum::<i64>() >= n {
                c.gateway = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    c
}
