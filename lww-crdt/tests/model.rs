//! Model-based tests (style items 8 and 11): random operations on three replicas with random
//! delivery — reordered, duplicated, dropped and resent — compared after full delivery with a
//! plain `BTreeMap` to which every write is applied in timestamp order. The replicas, network
//! and model live in `lww_crdt::harness::run_ops` (shared with the fuzz target); this file
//! generates the schedules. A second part checks the clock under skew between replicas.

#![cfg(feature = "harness")]

#[macro_use]
mod common;

use bytes::Bytes;
use common::b;
use lww_crdt::harness::{Op, run, run_ops};
use lww_crdt::{BytesMap, Hlc, LwwMap, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let at = || 0usize..3;
    // Eight keys and four values: replicas overwrite each other's keys all the time.
    let key = || 0u8..8;
    let ms = || prop_oneof![3 => 0u8..3, 1 => any::<u8>()];
    prop_oneof![
        3 => (at(), key(), 0u16..4).prop_map(|(at, key, value)| Op::Put { at, key, value, ttl: 0 }),
        1 => (at(), key(), 0u16..4, 1u8..40).prop_map(|(at, key, value, ttl)| Op::Put { at, key, value, ttl }),
        1 => at().prop_map(|at| Op::Sweep { at }),
        2 => (at(), key()).prop_map(|(at, key)| Op::Delete { at, key }),
        1 => (at(), key()).prop_map(|(at, key)| Op::Read { at, key }),
        2 => ms().prop_map(|ms| Op::Advance { ms }),
        1 => (at(), ms()).prop_map(|(at, ms)| Op::StepBack { at, ms }),
        3 => at().prop_map(|at| Op::Send { at }),
        3 => any::<u8>().prop_map(|index| Op::Deliver { index }),
        1 => any::<u8>().prop_map(|index| Op::Duplicate { index }),
        1 => any::<u8>().prop_map(|index| Op::Drop { index }),
    ]
}

/// One replica of the skew tests: a map, its clock, and how far its wall clock is off.
struct Replica {
    map: BytesMap,
    clock: Hlc,
    skew_ms: i64,
}

impl Replica {
    fn new(id: u64, skew_ms: i64) -> Self {
        Replica { map: LwwMap::new(), clock: Hlc::new(id), skew_ms }
    }

    fn wall(&self, true_ms: u64) -> u64 {
        true_ms.saturating_add_signed(self.skew_ms)
    }

    /// A client write at true time `true_ms`; returns its timestamp.
    fn put(&mut self, true_ms: u64, key: &str, value: &str) -> Timestamp {
        let t = self.clock.now(self.wall(true_ms));
        assert!(self.map.put(b(key), b(value), t), "a fresh local write must win locally");
        t
    }

    /// Receives another replica's state, as a delta or a snapshot, and observes it.
    fn receive(&mut self, state: &BytesMap) {
        let stats = self.map.merge(state);
        self.clock.observe(stats.newest);
    }

    /// A client read: the clock observes the entry read (read-modify-write needs it).
    fn read(&mut self, key: &str) -> Option<Bytes> {
        let e = self.map.get_entry(key.as_bytes())?;
        self.clock.observe(e.ts);
        e.value.clone()
    }
}

proptest! {
    #![proptest_config(config!("model"))]

    #[test]
    fn replicas_converge_to_the_model(ops in vec(op(), 0..200)) {
        if let Err(e) = run_ops(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// The fuzz target's entry point on random bytes: every byte string is a schedule.
    #[test]
    fn random_byte_schedules_converge(data in vec(any::<u8>(), 0..600)) {
        if let Err(e) = run(&data) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// A causal chain of read-modify-writes hopping between three replicas whose wall clocks
    /// are up to 200 ms apart: each write, made after its replica received the previous one,
    /// must carry a greater timestamp and win everywhere, although the writer's wall clock may
    /// be far behind the previous writer's.
    #[test]
    fn a_write_after_observing_wins_under_clock_skew(
        skews in vec(-200i64..200, 3),
        steps in vec((0usize..3, 0u64..30, any::<bool>()), 1..40),
    ) {
        let mut replicas: Vec<Replica> =
            skews.iter().enumerate().map(|(i, &s)| Replica::new(i as u64 + 1, s)).collect();
        let mut now = 10_000u64;
        let mut previous: Option<(usize, Timestamp)> = None;
        for (i, &(at, advance, via_read)) in steps.iter().enumerate() {
            now += advance;
            if let Some((from, prev_ts)) = previous
                && from != at
            {
                let state = replicas[from].map.clone();
                if via_read {
                    // Merge without observing, then read: the read alone must be enough.
                    replicas[at].map.merge(&state);
                    let _ = replicas[at].read("k");
                } else {
                    replicas[at].receive(&state);
                }
                prop_assert!(replicas[at].clock.last() >= Timestamp::new(prev_ts.wall_ms, prev_ts.logical, 0));
            }
            let t = replicas[at].put(now, "k", &i.to_string());
            if let Some((_, prev_ts)) = previous {
                prop_assert!(t > prev_ts, "write {} at {} does not beat {}", i, t, prev_ts);
            }
            previous = Some((at, t));
        }
        // Full exchange in both directions.
        let states: Vec<BytesMap> = replicas.iter().map(|r| r.map.clone()).collect();
        for r in &mut replicas {
            for s in &states {
                r.receive(s);
            }
        }
        let last = (steps.len() - 1).to_string();
        for r in &replicas {
            prop_assert_eq!(r.map.get(&b"k"[..]), Some(&b(&last)));
            prop_assert_eq!(&r.map, &replicas[0].map);
        }
    }

    /// Without any communication, a write 10 ms after another wins on any replica as long as
    /// the wall clocks agree within that margin (design.md §3).
    #[test]
    fn a_write_ten_ms_later_wins_when_clocks_agree_within_ten_ms(
        skews in vec(0i64..10, 2),
        ids in (any::<u64>(), any::<u64>()).prop_filter("distinct replicas", |(a, b)| a != b),
        earlier_burst in 0usize..5,
        start in 0u64..1_000_000,
        gap in 10u64..20,
    ) {
        let mut first = Replica::new(ids.0, skews[0]);
        let mut second = Replica::new(ids.1, skews[1]);
        // The first replica writes a burst within one millisecond (its logical counter runs up).
        let mut t1 = first.put(start, "k", "first");
        for _ in 0..earlier_burst {
            t1 = first.put(start, "k", "first");
        }
        let t2 = second.put(start + gap, "k", "second");
        prop_assert!(t2 > t1, "{} does not beat {}", t2, t1);
        let (s1, s2) = (first.map.clone(), second.map.clone());
        first.receive(&s2);
        second.receive(&s1);
        prop_assert_eq!(first.map.get(&b"k"[..]), Some(&b("second")));
        prop_assert_eq!(&first.map, &second.map);
    }
}

/// A replica 50 ms behind the others: its own clock would stamp a later write below a value it
/// has already received, so only observing that value makes its write win.
#[test]
fn replica_fifty_ms_behind_wins_after_observing() {
    let mut ahead = Replica::new(1, 0);
    let mut behind = Replica::new(2, -50);

    let seen = ahead.put(1_000, "k", "from ahead");
    assert_eq!(seen, Timestamp::new(1_000, 0, 1));

    // 5 ms later the slow replica receives it; 10 ms later a client there overwrites it.
    behind.receive(&ahead.map);
    assert_eq!(behind.read("k"), Some(b("from ahead")));
    let mine = behind.put(1_010, "k", "from behind");
    assert_eq!(behind.wall(1_010), 960, "the slow replica's wall clock reads 960");
    assert!(mine > seen, "{mine} must beat {seen}");
    assert_eq!((mine.wall_ms, mine.replica), (1_000, 2), "the clock runs on the observed wall time");

    // The control: a clock that had not observed the value would stamp the write below it.
    let mut unaware = Hlc::new(2);
    assert!(unaware.now(960) < seen);

    // Both replicas end up with the slow replica's (causally later) write, in either order.
    let (a, b_state) = (ahead.map.clone(), behind.map.clone());
    ahead.receive(&b_state);
    behind.receive(&a);
    assert_eq!(ahead.map.get(&b"k"[..]), Some(&b("from behind")));
    assert_eq!(ahead.map, behind.map);

    // The fast replica's clock now observed the slow replica's write too: its next write wins.
    let next = ahead.put(1_011, "k", "again");
    assert!(next > mine);
}
