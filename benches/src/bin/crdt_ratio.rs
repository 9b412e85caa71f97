//! Times each `LwwMap` operation and its plain-collection baselines directly (`Instant`, best
//! of 5, setup and drops outside the timed section) and prints a markdown table of nanoseconds
//! per entry and the ratio to `HashMap`, the anchor of the design's target "CRDT delta merge
//! ≤ 1.5× a plain hash-map insert of the same entries".
//!
//! ```text
//! cargo run --release -p benches --bin crdt_ratio            # warm caches (as criterion)
//! cargo run --release -p benches --bin crdt_ratio -- --cold  # caches flushed before each run
//! ```
//!
//! The workloads are those of `benches/crdt.rs` (same `benches::data`, same seed). Each
//! workload runs on its own, once untimed and then `RUNS` times back to back: interleaving the
//! structures' runs was tried first and left every run with caches full of the previous
//! structure's data, which made the `HashMap` look 2–3× slower than criterion measures it.
//! `--cold` makes that condition explicit and equal for all instead: before each timed run it
//! sweeps a buffer far larger than the L2 cache, as when a delta reaches a replica that has
//! not been touched for a while.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::ops::Bound;
use std::time::{Duration, Instant};

use benches::data;
use bytes::Bytes;
use lww_crdt::BytesMap;

const SEED: u64 = 0xC0FFEE;
const RUNS: usize = 5;
/// Merge rows must stay within this factor of the `HashMap` insert (design, section 7).
const MERGE_TARGET: f64 = 1.5;
/// Size of the buffer `--cold` sweeps: several times any L2 cache (4 MiB per core here).
const EVICT_BYTES: usize = 64 << 20;

/// The state of the caches when a timed run starts.
struct Caches {
    /// `Some` in `--cold` mode: swept before every timed run.
    evict: Option<Vec<u8>>,
}

impl Caches {
    fn cold(&self) -> bool {
        self.evict.is_some()
    }

    /// In `--cold` mode, writes one byte per cache line of the eviction buffer.
    fn prepare(&mut self) {
        if let Some(buf) = &mut self.evict {
            for i in (0..buf.len()).step_by(64) {
                buf[i] = buf[i].wrapping_add(1);
            }
            black_box(buf);
        }
    }
}

/// One timed workload: each call builds the input (untimed), prepares the caches (untimed),
/// does one row's worth of work `repeat` times in a row (timed; repeated only for work too
/// short to time once), drops the input (untimed) and returns the time of one repetition.
type Work<'a> = Box<dyn FnMut(&mut Caches) -> Duration + 'a>;

fn work<'a, I>(setup: impl FnMut() -> I + 'a, routine: impl FnMut(&mut I) -> usize + 'a) -> Work<'a> {
    work_repeated(1, setup, routine)
}

fn work_repeated<'a, I>(
    repeat: u32,
    mut setup: impl FnMut() -> I + 'a,
    mut routine: impl FnMut(&mut I) -> usize + 'a,
) -> Work<'a> {
    Box::new(move |caches| {
        let mut input = setup();
        caches.prepare();
        let start = Instant::now();
        for _ in 0..repeat {
            black_box(routine(&mut input));
        }
        let elapsed = start.elapsed();
        drop(input);
        elapsed / repeat
    })
}

/// Best-of-`RUNS` time of each workload, each after one untimed warm-up run.
fn best_of(works: &mut [Work<'_>], caches: &mut Caches) -> Vec<Duration> {
    works
        .iter_mut()
        .map(|w| {
            w(caches);
            (0..RUNS).map(|_| w(caches)).min().expect("RUNS > 0")
        })
        .collect()
}

struct Row {
    operation: String,
    entries: usize,
    lww: Duration,
    hash: Duration,
    btree: Option<Duration>,
    is_merge: bool,
}

impl Row {
    fn ns(&self, d: Duration) -> f64 {
        d.as_nanos() as f64 / self.entries as f64
    }
}

/// Measures `lww`, `hash` and optionally `btree` doing the same `entries` entries of work.
fn row<'a>(
    caches: &mut Caches,
    operation: &str,
    entries: usize,
    is_merge: bool,
    lww: Work<'a>,
    hash: Work<'a>,
    btree: Option<Work<'a>>,
) -> Row {
    let mut works = vec![lww, hash];
    works.extend(btree);
    let t = best_of(&mut works, caches);
    eprintln!("measured {operation}");
    Row { operation: operation.into(), entries, lww: t[0], hash: t[1], btree: t.get(2).copied(), is_merge }
}

/// Inserts one by one, as a merge does (`Extend` would let the `HashMap` reserve up front).
fn insert_all<M: Insert>(m: &mut M, pairs: &[(Bytes, Bytes)]) -> usize {
    for (k, v) in pairs {
        m.insert_pair(k.clone(), v.clone());
    }
    pairs.len()
}

trait Insert {
    fn insert_pair(&mut self, k: Bytes, v: Bytes);
}

impl Insert for HashMap<Bytes, Bytes> {
    fn insert_pair(&mut self, k: Bytes, v: Bytes) {
        self.insert(k, v);
    }
}

impl Insert for BTreeMap<Bytes, Bytes> {
    fn insert_pair(&mut self, k: Bytes, v: Bytes) {
        self.insert(k, v);
    }
}

/// The 1-minute load average (Linux), to record how quiet the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".into())
}

fn main() {
    let cold = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--cold") => true,
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: crdt_ratio [--cold]");
            std::process::exit(2);
        }
    };
    let mut caches = Caches { evict: cold.then(|| vec![0u8; EVICT_BYTES]) };
    let c = &mut caches;
    let load_before = load_average();
    let mut rows = Vec::new();

    {
        const N: usize = 100_000;
        let pairs = data::pairs(N, SEED);
        let p = &pairs;
        rows.push(row(
            c,
            "put 100k fresh keys into an empty map",
            N,
            false,
            work(BytesMap::new, |m| {
                for (i, (k, v)) in p.iter().enumerate() {
                    m.put(k.clone(), v.clone(), data::new_ts(i));
                }
                N
            }),
            work(HashMap::<Bytes, Bytes>::new, |m| insert_all(m, p)),
            Some(work(BTreeMap::<Bytes, Bytes>::new, |m| insert_all(m, p))),
        ));

        let lookups = data::lookups(p, N, SEED ^ 3);
        let l = &lookups;
        let (lww, hash, btree) = (data::lww(p, data::old_ts), data::hash(p), data::btree(p));
        let (lww, hash, btree) = (&lww, &hash, &btree);
        rows.push(row(
            c,
            "get (100k-entry map, existing keys)",
            N,
            false,
            work(|| (), |()| l.iter().filter_map(|k| lww.get(&k[..])).map(Bytes::len).sum::<usize>()),
            work(|| (), |()| l.iter().filter_map(|k| hash.get(&k[..])).map(Bytes::len).sum::<usize>()),
            Some(work(|| (), |()| l.iter().filter_map(|k| btree.get(&k[..])).map(Bytes::len).sum::<usize>())),
        ));
    }

    {
        // Per entry of the result. One scan of ~100 entries is too short to time alone: the
        // ordered structures repeat it; the HashMap's full filter is long enough as it is.
        const N: usize = 1_000_000;
        const REPEAT: u32 = 1_000;
        let pairs = data::pairs(N, SEED);
        let (prefix, hits) = data::prefix_with_count(&pairs);
        let (lww, hash, btree) = (data::lww(&pairs, data::old_ts), data::hash(&pairs), data::btree(&pairs));
        drop(pairs);
        let (lww, hash, btree, prefix) = (&lww, &hash, &btree, &prefix);
        rows.push(row(
            c,
            &format!("scan_prefix ({hits} of 1M keys; HashMap filters all)"),
            hits,
            false,
            work_repeated(REPEAT, || (), |()| lww.scan_prefix(black_box(prefix)).count()),
            work(|| (), |()| hash.iter().filter(|(k, _)| k.starts_with(black_box(prefix))).count()),
            Some(work_repeated(
                REPEAT,
                || (),
                |()| {
                    btree
                        .range::<[u8], _>((Bound::Included(&prefix[..]), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .count()
                },
            )),
        ));
    }

    {
        let s = data::delta_scenario(100_000, 10_000, SEED);
        let replica = data::lww(&s.replica, data::old_ts);
        let delta = data::lww(&s.delta, data::new_ts);
        let (hash, btree) = (data::hash(&s.replica), data::btree(&s.replica));
        let (replica, delta, hash, btree, d) = (&replica, &delta, &hash, &btree, &s.delta);
        let n = d.len();
        rows.push(row(
            c,
            "merge 10k delta into 100k replica (`merge`)",
            n,
            true,
            work(|| replica.clone(), |m| m.merge(delta).total()),
            work(|| hash.clone(), |m| insert_all(m, d)),
            Some(work(|| btree.clone(), |m| insert_all(m, d))),
        ));
        rows.push(row(
            c,
            "merge 10k delta into 100k replica (`merge_owned`)",
            n,
            true,
            work(
                || (replica.clone(), Some(delta.clone())),
                |(m, d)| m.merge_owned(d.take().expect("one merge per input")).total(),
            ),
            work(|| hash.clone(), |m| insert_all(m, d)),
            None,
        ));
    }

    {
        const N: usize = 1_000_000;
        let old = data::pairs(N, SEED);
        let new = data::rewritten(&old, SEED ^ 4);
        let (old_lww, new_lww) = (data::lww(&old, data::old_ts), data::lww(&new, data::new_ts));
        let old_hash = data::hash(&old);
        drop(old);
        let (old_lww, new_lww, old_hash, new) = (&old_lww, &new_lww, &old_hash, &new);
        rows.push(row(
            c,
            "full merge 1M into empty replica (`merge`)",
            N,
            true,
            work(BytesMap::new, |m| m.merge(new_lww).total()),
            work(HashMap::<Bytes, Bytes>::new, |m| insert_all(m, new)),
            Some(work(BTreeMap::<Bytes, Bytes>::new, |m| insert_all(m, new))),
        ));
        rows.push(row(
            c,
            "full merge 1M into replica with older versions (`merge`)",
            N,
            true,
            work(|| old_lww.clone(), |m| m.merge(new_lww).total()),
            work(|| old_hash.clone(), |m| insert_all(m, new)),
            None,
        ));
        rows.push(row(
            c,
            "full merge 1M into replica with older versions (`merge_owned`)",
            N,
            true,
            work(
                || (old_lww.clone(), Some(new_lww.clone())),
                |(m, d)| m.merge_owned(d.take().expect("one merge per input")).total(),
            ),
            work(|| old_hash.clone(), |m| insert_all(m, new)),
            None,
        ));
    }

    println!("| operation | lww ns/entry | HashMap ns/entry | ratio lww/HashMap | BTreeMap ns/entry |");
    println!("|---|---:|---:|---:|---:|");
    let mut missed = Vec::new();
    for r in &rows {
        let ratio = r.ns(r.lww) / r.ns(r.hash);
        let verdict = if !r.is_merge {
            ""
        } else if ratio <= MERGE_TARGET {
            " (target ≤ 1.5×: met)"
        } else {
            missed.push(r.operation.as_str());
            " (target ≤ 1.5×: **missed**)"
        };
        let btree = r.btree.map_or("—".to_string(), |b| format!("{:.1}", r.ns(b)));
        // A prefix scan beats the full filter by orders of magnitude: show it as a fraction.
        let ratio = if ratio >= 0.01 { format!("{ratio:.2}×") } else { format!("1/{:.0}×", 1.0 / ratio) };
        println!(
            "| {} | {:.1} | {:.1} | {ratio}{verdict} | {btree} |",
            r.operation,
            r.ns(r.lww),
            r.ns(r.hash)
        );
    }
    println!();
    let mode = if caches.cold() { "cold caches (--cold)" } else { "warm caches" };
    println!("{mode}; best of {RUNS} runs per cell; 16-byte keys, 100-byte values; HashMap = std (SipHash).");
    println!(
        "{} cores; 1-min load average {load_before} before, {} after.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    if !missed.is_empty() {
        println!("merge target missed: {}", missed.join("; "));
    }
}
