//! Model-checking harness shared by the fuzz targets and the tests (feature `harness`).
//!
//! [`run`] decodes arbitrary bytes into a schedule of operations on three replicas (writes,
//! some with a deadline, deletes, sweeps that turn expired entries into tombstones, clock
//! movements, message sends, deliveries in any order, duplicates and drops),
//! then delivers every message ever sent (a dropped message counts as resent later) and checks
//! the outcome against a trivial model: a `BTreeMap` to which every write is applied in
//! timestamp order, read at the end of the schedule (a value past its deadline is absent). Any difference is returned as an error, which the fuzz target turns into a
//! crash and the tests into a failure.

use std::collections::BTreeMap;

use crate::{DeltaBuffer, Entry, Hlc, LwwMap, Timestamp};

/// Keys and values are small so that schedules collide on keys often.
type Map = LwwMap<u8, u16>;

const REPLICAS: usize = 3;

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Replica `at` writes `value` under `key`, expiring `ttl` ms later if `ttl` is not 0.
    Put {
        /// The replica.
        at: usize,
        /// The key.
        key: u8,
        /// The value.
        value: u16,
        /// Milliseconds until the value expires (0: never).
        ttl: u8,
    },
    /// Replica `at` deletes `key`.
    Delete {
        /// The replica.
        at: usize,
        /// The key.
        key: u8,
    },
    /// Replica `at` reads `key` (its clock observes the entry, as a client read would).
    Read {
        /// The replica.
        at: usize,
        /// The key.
        key: u8,
    },
    /// Replica `at` turns the entries whose deadline has passed by its clock into tombstones,
    /// and records them for sending (a node's sweep).
    Sweep {
        /// The replica.
        at: usize,
    },
    /// Virtual time moves on by `ms`.
    Advance {
        /// Milliseconds.
        ms: u8,
    },
    /// Replica `at`'s wall clock jumps back by `ms` (its HLC must stay monotonic).
    StepBack {
        /// The replica.
        at: usize,
        /// Milliseconds.
        ms: u8,
    },
    /// Replica `at` flushes its delta buffer to both other replicas.
    Send {
        /// The replica.
        at: usize,
    },
    /// The in-flight message at `index` (modulo the number in flight) is delivered.
    Deliver {
        /// Which message, modulo the number in flight.
        index: u8,
    },
    /// The in-flight message at `index` is delivered but stays in flight (a duplicate).
    Duplicate {
        /// Which message, modulo the number in flight.
        index: u8,
    },
    /// The in-flight message at `index` is lost (it is resent at the end).
    Drop {
        /// Which message, modulo the number in flight.
        index: u8,
    },
}

impl Op {
    /// Decodes a schedule from arbitrary bytes; every byte string is a valid schedule.
    pub fn decode_all(data: &[u8]) -> Vec<Op> {
        data.chunks(3)
            .map(|c| {
                let (a, b, c) = (c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0));
                let at = usize::from(a >> 4) % REPLICAS;
                match a % 9 {
                    // One put in four expires, 8 to 56 ms later.
                    0 | 1 => Op::Put {
                        at,
                        key: b % 8,
                        value: u16::from(c),
                        ttl: if b % 32 >= 24 { b / 32 * 8 + 8 } else { 0 },
                    },
                    2 => Op::Delete { at, key: b % 8 },
                    3 => Op::Read { at, key: b % 8 },
                    4 => Op::Advance { ms: b },
                    5 => Op::StepBack { at, ms: b },
                    6 => Op::Send { at },
                    7 => match b % 3 {
                        0 => Op::Deliver { index: c },
                        1 => Op::Duplicate { index: c },
                        _ => Op::Drop { index: c },
                    },
                    _ if c % 4 == 3 => Op::Sweep { at },
                    _ => Op::Deliver { index: b },
                }
            })
            .collect()
    }
}

struct Replica {
    map: Map,
    clock: Hlc,
    buffer: DeltaBuffer<u8, u16>,
    /// Offset of this replica's wall clock from virtual time (clock skew, steps back).
    skew: i64,
}

/// A write as the model sees it.
struct Write {
    ts: Timestamp,
    key: u8,
    value: Option<u16>,
    /// The deadline of the value, if it expires.
    deadline: Option<u64>,
}

/// Runs a schedule decoded from `data` and checks convergence against the model.
pub fn run(data: &[u8]) -> Result<(), String> {
    run_ops(&Op::decode_all(data))
}

/// Runs a schedule and checks that, after full delivery, all replicas are identical and equal
/// to the model.
pub fn run_ops(ops: &[Op]) -> Result<(), String> {
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| Replica {
            map: Map::new(),
            clock: Hlc::new(i as u64 + 1),
            buffer: DeltaBuffer::new(),
            skew: 0,
        })
        .collect();
    let mut now: u64 = 1_000;
    let mut writes: Vec<Write> = Vec::new();
    let mut in_flight: Vec<(usize, Map)> = Vec::new();
    let mut sent: Vec<(usize, Map)> = Vec::new();

    let deliver = |replicas: &mut Vec<Replica>, to: usize, delta: &Map| -> Result<(), String> {
        let r = &mut replicas[to];
        let before = r.map.clone();
        let stats = r.map.merge(delta);
        r.clock.observe(stats.newest);
        if stats.total() != delta.entry_count() {
            return Err(format!("merge counted {} of {} entries", stats.total(), delta.entry_count()));
        }
        let mut twice = r.map.clone();
        if twice.merge(delta).changed != 0 || twice != r.map {
            return Err("merge is not idempotent".into());
        }
        // Commutativity on live state: delta ⊔ before == before ⊔ delta.
        let mut other_way = delta.clone();
        other_way.merge(&before);
        if other_way != r.map {
            return Err("merge is not commutative".into());
        }
        check_invariants(&r.map)
    };

    for op in ops {
        match *op {
            Op::Put { at, key, value, ttl } => {
                local_write(&mut replicas[at], now, key, Some(value), u64::from(ttl), &mut writes)?
            }
            Op::Delete { at, key } => local_write(&mut replicas[at], now, key, None, 0, &mut writes)?,
            Op::Sweep { at } => {
                let r = &mut replicas[at];
                let local = now.saturating_add_signed(r.skew);
                let expired: Vec<(u8, Entry<u16>)> = r
                    .map
                    .entries()
                    .filter(|(_, e)| e.is_expired_at(local))
                    .map(|(k, e)| (*k, e.expired()))
                    .collect();
                for (k, tomb) in expired {
                    if !r.map.apply(k, tomb.clone()) {
                        return Err(format!("the tombstone of an expired entry lost: {k} {tomb:?}"));
                    }
                    r.buffer.record(k, tomb);
                }
                check_invariants(&r.map)?;
            }
            Op::Read { at, key } => {
                let r = &mut replicas[at];
                if let Some(e) = r.map.get_entry(&key) {
                    r.clock.observe(e.ts);
                }
            }
            Op::Advance { ms } => now += u64::from(ms),
            Op::StepBack { at, ms } => replicas[at].skew -= i64::from(ms),
            Op::Send { at } => {
                let delta = replicas[at].buffer.flush();
                if delta.entry_count() > 0 {
                    for to in (0..REPLICAS).filter(|&to| to != at) {
                        in_flight.push((to, delta.clone()));
                        sent.push((to, delta.clone()));
                    }
                }
            }
            Op::Deliver { index } | Op::Duplicate { index } | Op::Drop { index } => {
                if in_flight.is_empty() {
                    continue;
                }
                let i = usize::from(index) % in_flight.len();
                match op {
                    Op::Deliver { .. } => {
                        let (to, delta) = in_flight.swap_remove(i);
                        deliver(&mut replicas, to, &delta)?;
                    }
                    Op::Duplicate { .. } => {
                        let (to, delta) = in_flight[i].clone();
                        deliver(&mut replicas, to, &delta)?;
                    }
                    _ => {
                        in_flight.swap_remove(i);
                    }
                }
            }
        }
    }

    // Full delivery: flush every buffer, then deliver every message ever sent (dropped ones
    // are resent; already delivered ones arrive again, which must change nothing).
    for (at, r) in replicas.iter_mut().enumerate() {
        let delta = r.buffer.flush();
        for to in (0..REPLICAS).filter(|&to| to != at) {
            sent.push((to, delta.clone()));
        }
    }
    for (to, delta) in sent.iter().rev() {
        deliver(&mut replicas, *to, delta)?;
    }

    // The model: every write applied to a plain BTreeMap in timestamp order.
    writes.sort_by_key(|w| w.ts);
    for pair in writes.windows(2) {
        if pair[0].ts == pair[1].ts {
            return Err(format!("two writes share timestamp {}", pair[0].ts));
        }
    }
    let mut model = BTreeMap::new();
    for w in &writes {
        match w.value {
            Some(v) => model.insert(w.key, (v, w.deadline)),
            None => model.remove(&w.key),
        };
    }
    // Read at the end: a value whose deadline has passed by virtual time is gone. (A sweep
    // runs on a replica's own clock, which is never ahead of virtual time here.)
    let model: BTreeMap<u8, u16> =
        model.into_iter().filter(|(_, (_, d))| d.is_none_or(|d| now < d)).map(|(k, (v, _))| (k, v)).collect();

    for (i, r) in replicas.iter().enumerate() {
        if r.map != replicas[0].map {
            return Err(format!("replica {i} differs from replica 0: {:?} vs {:?}", r.map, replicas[0].map));
        }
        let live: BTreeMap<u8, u16> =
            r.map.entries().filter_map(|(k, e)| e.value_at(now).map(|v| (*k, *v))).collect();
        if live != model {
            return Err(format!("replica {i} holds {live:?}, the model {model:?}"));
        }
    }
    Ok(())
}

/// A client write on replica `r` at virtual time `now`, expiring `ttl` ms later (0: never).
fn local_write(
    r: &mut Replica,
    now: u64,
    key: u8,
    value: Option<u16>,
    ttl: u64,
    writes: &mut Vec<Write>,
) -> Result<(), String> {
    let ts = r.clock.now(now.saturating_add_signed(r.skew));
    if let Some(prev) = r.map.get_entry(&key)
        && ts <= prev.ts
    {
        return Err(format!("clock issued {ts}, not above the stored {}", prev.ts));
    }
    // The deadline on the writer's clock, as a client's TTL is.
    let deadline = (ttl > 0 && value.is_some()).then(|| ts.wall_ms + ttl);
    let entry = Entry { ts, value, expires: deadline.and_then(std::num::NonZeroU64::new) };
    if !r.map.apply(key, entry.clone()) {
        return Err(format!("a fresh local write at {ts} lost"));
    }
    r.buffer.record(key, entry);
    writes.push(Write { ts, key, value, deadline });
    Ok(())
}

/// Checks the bookkeeping of a map: counts agree with the entries.
pub fn check_invariants<K: Ord, V: Ord>(map: &LwwMap<K, V>) -> Result<(), String> {
    let tombstones = map.entries().filter(|(_, e)| e.is_tombstone()).count();
    let expiring = map.entries().filter(|(_, e)| e.is_expiring()).count();
    let live = map.iter().count();
    if tombstones != map.tombstones()
        || live != map.len()
        || live + tombstones != map.entry_count()
        || expiring != map.expiring()
    {
        return Err(format!(
            "counts disagree: {} live / {} tombstones / {} expiring reported, {live} / {tombstones} / \
             {expiring} present",
            map.len(),
            map.tombstones(),
            map.expiring()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_trivial_schedules_converge() {
        run(&[]).unwrap();
        run(&[0, 1, 2]).unwrap();
    }

    #[test]
    fn every_short_schedule_converges() {
        // Exhaustive over a small alphabet: every pair and triple of interesting bytes.
        let alphabet = [0u8, 0x11, 0x22, 2, 0x13, 4, 0x15, 6, 0x16, 7, 0x17, 8];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let data = [a, 1, 9, b, 2, 3, c, 1, 5, 6, 0, 0, 0x16, 0, 0];
                    run(&data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
                }
            }
        }
    }
}
