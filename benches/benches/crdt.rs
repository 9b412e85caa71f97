//! `LwwMap` operations beside plain-collection baselines, in the same run.
//!
//! Every group measures the CRDT operation (`lww`) next to the same work on a
//! `HashMap<Bytes, Bytes>` (`hashmap`, the anchor of the design's "merge within 2× of a hash-map
//! insert" target) and a `BTreeMap<Bytes, Bytes>` (`btreemap`, the structure `LwwMap` is built
//! on, which separates the cost of ordering from the cost of the CRDT bookkeeping). Throughput
//! is in entries, so criterion reports time per entry. Data: `benches::data` (16-byte keys,
//! 100-byte values, seeded).
//!
//! `cargo bench -p benches --bench crdt -- --warm-up-time 1 --measurement-time 3`

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Duration;

use benches::data;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use lww_crdt::BytesMap;

const SEED: u64 = 0xC0FFEE;

/// A group with flat sampling and few samples: one iteration takes milliseconds (plus an
/// untimed setup that clones a whole map), and criterion's default linear sampling would run
/// thousands of them whatever `--measurement-time` says.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    g
}

/// `put` of fresh keys into an empty map.
fn put(c: &mut Criterion) {
    const N: usize = 100_000;
    let pairs = data::pairs(N, SEED);
    let mut g = group(c, "put");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function(BenchmarkId::new("lww", N), |b| {
        b.iter_batched(
            BytesMap::new,
            |mut m| {
                for (i, (k, v)) in pairs.iter().enumerate() {
                    m.put(k.clone(), v.clone(), data::new_ts(i));
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function(BenchmarkId::new("hashmap", N), |b| {
        b.iter_batched(
            HashMap::<Bytes, Bytes>::new,
            |mut m| {
                for (k, v) in &pairs {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function(BenchmarkId::new("btreemap", N), |b| {
        b.iter_batched(
            BTreeMap::<Bytes, Bytes>::new,
            |mut m| {
                for (k, v) in &pairs {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// `get` of existing keys (in their own buffers, random order) in a 100k-entry map.
fn get(c: &mut Criterion) {
    const N: usize = 100_000;
    const LOOKUPS: usize = 10_000;
    let pairs = data::pairs(N, SEED);
    let lookups = data::lookups(&pairs, LOOKUPS, SEED ^ 3);
    let (lww, hash, btree) = (data::lww(&pairs, data::old_ts), data::hash(&pairs), data::btree(&pairs));
    let mut g = group(c, "get");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function(BenchmarkId::new("lww", N), |b| {
        b.iter(|| lookups.iter().filter_map(|k| lww.get(&k[..])).map(Bytes::len).sum::<usize>())
    });
    g.bench_function(BenchmarkId::new("hashmap", N), |b| {
        b.iter(|| lookups.iter().filter_map(|k| hash.get(&k[..])).map(Bytes::len).sum::<usize>())
    });
    g.bench_function(BenchmarkId::new("btreemap", N), |b| {
        b.iter(|| lookups.iter().filter_map(|k| btree.get(&k[..])).map(Bytes::len).sum::<usize>())
    });
    g.finish();
}

/// A prefix holding ~100 keys, in a 100k- and a 1M-entry map: `scan_prefix` and a `BTreeMap`
/// range stay flat as the map grows tenfold; the `HashMap` has to filter every entry.
fn scan_prefix(c: &mut Criterion) {
    let mut g = group(c, "scan_prefix");
    for n in [100_000, 1_000_000] {
        let pairs = data::pairs(n, SEED);
        let (prefix, hits) = data::prefix_with_count(&pairs);
        let (lww, hash, btree) = (data::lww(&pairs, data::old_ts), data::hash(&pairs), data::btree(&pairs));
        drop(pairs);
        // Per entry of the result: what a caller pays for each key it gets back.
        g.throughput(Throughput::Elements(hits as u64));
        g.bench_function(BenchmarkId::new("lww", n), |b| {
            b.iter(|| lww.scan_prefix(black_box(&prefix)).map(|(_, v)| v.len()).sum::<usize>())
        });
        g.bench_function(BenchmarkId::new("btreemap_range", n), |b| {
            b.iter(|| {
                btree
                    .range::<[u8], _>((std::ops::Bound::Included(&prefix[..]), std::ops::Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v.len())
                    .sum::<usize>()
            })
        });
        g.bench_function(BenchmarkId::new("hashmap_filter", n), |b| {
            b.iter(|| {
                hash.iter()
                    .filter(|(k, _)| k.starts_with(black_box(&prefix)))
                    .map(|(_, v)| v.len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

/// The sync step: a 10 000-entry delta (half newer writes to held keys, half new keys) merged
/// into a 100 000-entry replica, against inserting the same entries into plain maps of the
/// same size. The replica is cloned outside the timed section.
fn merge_delta_10k(c: &mut Criterion) {
    let s = data::delta_scenario(100_000, 10_000, SEED);
    let replica = data::lww(&s.replica, data::old_ts);
    let delta = data::lww(&s.delta, data::new_ts);
    let (hash, btree) = (data::hash(&s.replica), data::btree(&s.replica));
    let mut g = group(c, "merge_delta_10k");
    g.throughput(Throughput::Elements(s.delta.len() as u64));
    g.bench_function("lww_merge", |b| {
        b.iter_batched(
            || replica.clone(),
            |mut m| {
                black_box(m.merge(&delta));
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("lww_merge_owned", |b| {
        b.iter_batched(
            || (replica.clone(), delta.clone()),
            |(mut m, d)| {
                black_box(m.merge_owned(d));
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("hashmap_insert", |b| {
        b.iter_batched(
            || hash.clone(),
            |mut m| {
                for (k, v) in &s.delta {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("btreemap_insert", |b| {
        b.iter_batched(
            || btree.clone(),
            |mut m| {
                for (k, v) in &s.delta {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Full state merge of 1 000 000 entries (a join or a resync), into an empty replica and into
/// one holding an older version of every key, against `HashMap` inserts of the same entries.
/// One iteration takes a good fraction of a second: 10 samples, at least 5 s.
fn full_merge_1m(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let old = data::pairs(N, SEED);
    let new = data::rewritten(&old, SEED ^ 4);
    let (old_lww, new_lww) = (data::lww(&old, data::old_ts), data::lww(&new, data::new_ts));
    let old_hash = data::hash(&old);
    drop(old);
    let mut g = group(c, "full_merge_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("lww_merge_into_empty", |b| {
        b.iter_batched(
            BytesMap::new,
            |mut m| {
                black_box(m.merge(&new_lww));
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("hashmap_insert_into_empty", |b| {
        b.iter_batched(
            HashMap::<Bytes, Bytes>::new,
            |mut m| {
                for (k, v) in &new {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("lww_merge_into_older", |b| {
        b.iter_batched(
            || old_lww.clone(),
            |mut m| {
                black_box(m.merge(&new_lww));
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("lww_merge_owned_into_older", |b| {
        b.iter_batched(
            || (old_lww.clone(), new_lww.clone()),
            |(mut m, d)| {
                black_box(m.merge_owned(d));
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("hashmap_insert_into_older", |b| {
        b.iter_batched(
            || old_hash.clone(),
            |mut m| {
                for (k, v) in &new {
                    m.insert(k.clone(), v.clone());
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, put, get, scan_prefix, merge_delta_10k, full_merge_1m);
criterion_main!(benches);
