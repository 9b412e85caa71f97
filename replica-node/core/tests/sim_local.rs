//! Deterministic simulation of one node's actors with virtual time: random client writes,
//! mailbox delivery with random delays, and the sync rules checked exactly — every write
//! visible everywhere within the pacer's wait bound plus delivery delay, at most ten messages
//! per ordered pair in any one-second window, identical replicas at the end. Every seed
//! reproduces.

use std::collections::BTreeMap;

use bytes::Bytes;
use lww_crdt::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica_core::pacer::MAX_WAIT_MS;
use replica_core::replica::{Now, Replica, SyncBatch};

const ACTORS: usize = 4;
const MAX_DELAY_MS: u64 = 5;

struct InFlight {
    at: u64,
    to: usize,
    batch: SyncBatch,
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut actors: Vec<Replica> = (0..ACTORS).map(|i| Replica::new(i, i as u64 + 1, ACTORS - 1)).collect();
    let mut flight: Vec<InFlight> = Vec::new();
    let mut sends: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
    // (time written, key, timestamp): checked for visibility once due.
    let mut pending_checks: Vec<(u64, Bytes, Timestamp)> = Vec::new();
    let wall0 = 1_700_000_000_000;
    let end = 5_000;
    for t in 0..end + 500 {
        let now = Now { wall_ms: wall0 + t, mono_ms: t };
        // Clients: bursts and idle stretches, deletes too.
        if t < end {
            for (a, actor) in actors.iter_mut().enumerate() {
                if rng.random_ratio(1, 8) {
                    let key = Bytes::from(format!("k{}", rng.random_range(0..50)));
                    let value = (!rng.random_ratio(1, 10)).then(|| Bytes::from(format!("{a}:{t}")));
                    let ts = actor.write(key.clone(), value, now).expect("one clock: every write wins");
                    pending_checks.push((t, key, ts));
                }
            }
        }
        // Deliveries due now, in random order among themselves but FIFO per pair.
        let (due, rest): (Vec<_>, Vec<_>) = flight.drain(..).partition(|m| m.at <= t);
        flight = rest;
        for m in due {
            actors[m.to].on_sync(&m.batch, now);
        }
        // Each actor sends when its pacer allows.
        for (a, actor) in actors.iter_mut().enumerate() {
            if let Some(batch) = actor.poll_sync(now) {
                // FIFO per pair: a message never overtakes an earlier one to the same recipient.
                for to in (0..ACTORS).filter(|&to| to != a) {
                    let last = flight.iter().filter(|m| m.to == to && m.batch.from == a).map(|m| m.at).max();
                    let at = (t + rng.random_range(0..=MAX_DELAY_MS)).max(last.unwrap_or(0));
                    flight.push(InFlight { at, to, batch: batch.clone() });
                    sends.entry((a, to)).or_default().push(t);
                }
            }
        }
        // A write is visible everywhere once pacing and delivery allow, unless overwritten.
        let deadline = MAX_WAIT_MS + MAX_DELAY_MS + 1;
        pending_checks.retain(|(written, key, ts)| {
            if t < written + deadline {
                return true;
            }
            for r in &actors {
                // The write itself, or something newer that replaced it.
                let seen = r.map().get_entry(&key[..]).map(|e| e.ts);
                assert!(
                    seen.is_some_and(|s| s >= *ts),
                    "seed {seed}: {key:?} written at {written} not visible on actor {} at {t}",
                    r.index()
                );
            }
            false
        });
    }
    for ((from, to), times) in &sends {
        for (i, start) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|&&u| u < start + 1_000).count();
            assert!(n <= 10, "seed {seed}: {from}->{to} sent {n} messages in the second after {start}");
        }
    }
    for r in &actors[1..] {
        assert_eq!(r.map(), actors[0].map(), "seed {seed}: replicas differ");
    }
    assert!(actors.iter().all(|a| a.stats().max_pair_rate <= 10));
}

#[test]
fn simulated_actors_converge_within_budget() {
    for seed in 0..20 {
        run(seed);
    }
}
