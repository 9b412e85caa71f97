//! Deadlines in the LWW entry: every replica agrees on when a key expires, an expiry racing a
//! write resolves by timestamp, and the tombstone an expired entry turns into wins over it and
//! keeps every older write out, whichever replicas turn it and in whatever order they meet.

#[macro_use]
mod common;

use bytes::Bytes;
use common::{KEYS, consistent, key, map, merged};
use lww_crdt::{BytesMap, Entry, Hlc, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// `m` with every entry expired at `now_ms` turned into its tombstone, as a replica's sweep
/// does.
fn expire(m: &BytesMap, now_ms: u64) -> BytesMap {
    let mut out = m.clone();
    for (k, e) in m.entries() {
        if e.is_expired_at(now_ms) {
            out.apply(k.clone(), e.expired());
        }
    }
    out
}

/// Writes as clocks issue them: each with its own timestamp (a write's index is its wall
/// time), a value or a tombstone, and for a value maybe a deadline between 0 and 40.
fn writes() -> impl Strategy<Value = Vec<(Bytes, Entry<Bytes>)>> {
    vec((key(), any::<bool>(), prop::option::of(0u64..40), 0u64..3), 0..16).prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, (k, live, deadline, replica))| {
                let ts = Timestamp::new(i as u64, 0, replica);
                let e = match (live, deadline) {
                    (false, _) => Entry::tombstone(ts),
                    (true, None) => Entry::live(Bytes::from(format!("v{i}")), ts),
                    (true, Some(d)) => Entry::expiring(Bytes::from(format!("v{i}")), ts, d),
                };
                (k, e)
            })
            .collect()
    })
}

/// The writes spread over three replicas.
fn spread(ws: &[(Bytes, Entry<Bytes>)], at: &[Index]) -> [BytesMap; 3] {
    let mut rs: [BytesMap; 3] = Default::default();
    for ((k, e), i) in ws.iter().zip(at.iter().cycle()) {
        rs[i.index(3)].apply(k.clone(), e.clone());
    }
    rs
}

proptest! {
    #![proptest_config(config!("expiry"))]

    /// Merge stays associative, commutative and idempotent with deadlines in the entries and
    /// expired entries turned into tombstones (the generators draw ties on every field).
    #[test]
    fn merge_is_aci_with_deadlines_and_expiries(a in map(), b in map(), c in map(), now in 0u64..4) {
        let (a, b) = (expire(&a, now), b);
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&a, &a), a.clone());
        consistent(&merged(&merged(&a, &b), &c))?;
    }

    /// Turning expired entries into tombstones only moves a map up the order (the tombstone
    /// wins over the entry it replaces), and doing it twice changes nothing more.
    #[test]
    fn an_expiry_only_moves_up(m in map(), now in 0u64..4) {
        let e = expire(&m, now);
        prop_assert_eq!(merged(&m, &e), e.clone());
        prop_assert_eq!(expire(&e, now), e.clone());
        consistent(&e)?;
    }

    /// Each replica may turn its expired entries into tombstones whenever it notices them, or
    /// not yet: whatever each did, merging gives what expiring the merged state gives. So
    /// replicas that expire on their own, at their own pace, converge.
    #[test]
    fn expiring_commutes_with_merging(
        ws in writes(),
        at in vec(any::<Index>(), 1..8),
        noticed in vec(any::<bool>(), 3),
        now in 0u64..40,
    ) {
        let rs = spread(&ws, &at);
        let union = rs.iter().fold(BytesMap::new(), |acc, r| merged(&acc, r));
        let each: Vec<BytesMap> =
            rs.iter().zip(&noticed).map(|(r, &n)| if n { expire(r, now) } else { r.clone() }).collect();
        let together = each.iter().fold(BytesMap::new(), |acc, r| merged(&acc, r));
        prop_assert_eq!(expire(&together, now), expire(&union, now));
        // Everyone reads the same keys at `now`, expired or not.
        for k in KEYS {
            let live = |m: &BytesMap| m.get_entry(k).and_then(|e| e.value_at(now)).cloned();
            prop_assert_eq!(live(&together), live(&union));
        }
    }

    /// The tombstone of an expired entry keeps every older write of the key out: a late write
    /// never brings back a value that expired after it.
    #[test]
    fn an_expired_key_never_comes_back_with_an_older_write(ws in writes(), late in writes(), now in 0u64..40) {
        let m: BytesMap = ws.iter().cloned().collect();
        let mut e = expire(&m, now);
        for (k, w) in late {
            // Older than whatever the key holds.
            let Some(held) = e.get_entry(&k[..]).cloned() else { continue };
            if w.ts < held.ts {
                prop_assert!(!e.apply(k.clone(), w));
                prop_assert_eq!(e.get_entry(&k[..]), Some(&held));
            }
        }
    }

    /// An EXPIRE (the value written again with a deadline) racing a SET (a new value without
    /// one) on two replicas: every replica ends with the write of the later timestamp, whatever
    /// the delivery order, and reads the key alike at any time.
    #[test]
    fn an_expire_racing_a_set_resolves_by_timestamp_everywhere(
        expire_at in 1_000u64..1_010,
        set_at in 1_000u64..1_010,
        ttl in 1u64..20,
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
    ) {
        let (mut a, mut b, mut c) = (Hlc::new(1), Hlc::new(2), Hlc::new(3));
        let base = Entry::live(Bytes::from("v0"), c.now(900));
        let k = Bytes::from("k");
        let mut replicas: Vec<BytesMap> = (0..3).map(|_| std::iter::once((k.clone(), base.clone())).collect()).collect();
        // Replica 0 takes `EXPIRE k ttl`, replica 1 `SET k v1`, concurrently.
        let exp_ts = a.now(expire_at);
        let expire_write = Entry::expiring(Bytes::from("v0"), exp_ts, exp_ts.wall_ms + ttl);
        let set_write = Entry::live(Bytes::from("v1"), b.now(set_at));
        let deltas: Vec<BytesMap> = vec![
            std::iter::once((k.clone(), expire_write.clone())).collect(),
            std::iter::once((k.clone(), set_write.clone())).collect(),
        ];
        replicas[0].apply(k.clone(), expire_write.clone());
        replicas[1].apply(k.clone(), set_write.clone());
        // Each delta reaches each replica, in a shuffled order, one of them twice.
        for &step in &order {
            let d = &deltas[step % 2];
            for r in replicas.iter_mut() {
                r.merge(d);
            }
        }
        let winner = if expire_write.ts > set_write.ts { &expire_write } else { &set_write };
        for r in &replicas {
            prop_assert_eq!(r, &replicas[0]);
            prop_assert_eq!(r.get_entry(&b"k"[..]), Some(winner));
        }
        let deadline = exp_ts.wall_ms + ttl;
        for t in [deadline - 1, deadline, deadline + 1] {
            let live = replicas[2].get_entry(&b"k"[..]).unwrap().is_live_at(t);
            prop_assert_eq!(live, winner.ts == set_write.ts || t < deadline);
        }
    }
}

#[test]
fn a_value_expires_at_its_deadline_and_the_tombstone_wins_over_it() {
    let t = Timestamp::new(100, 0, 1);
    let e = Entry::expiring(Bytes::from("v"), t, 150);
    assert_eq!(e.deadline(), Some(150));
    assert!(e.is_live_at(149) && !e.is_live_at(150) && !e.is_live_at(151));
    assert!(!e.is_expired_at(149) && e.is_expired_at(150));
    assert_eq!(e.value_at(149), Some(&Bytes::from("v")));
    assert_eq!(e.value_at(150), None);
    let tomb = e.expired();
    assert_eq!(tomb, Entry::tombstone(t));
    assert!(tomb > e, "the expiry wins over the entry it replaces");
    assert!(Entry::live(Bytes::from("v"), t) > tomb, "a plain value still wins a tie with a tombstone");
    assert!(Entry::<Bytes>::tombstone(Timestamp::new(101, 0, 0)) > Entry::live(Bytes::from("z"), t));
    // A deadline of 0 is none.
    assert_eq!(Entry::expiring(Bytes::from("v"), t, 0), Entry::live(Bytes::from("v"), t));
    let tomb = Entry::<Bytes>::tombstone(t);
    assert!(!tomb.is_live_at(0) && tomb.deadline().is_none());

    let mut m = BytesMap::new();
    m.apply(Bytes::from("k"), e.clone());
    m.apply(Bytes::from("j"), Entry::live(Bytes::from("w"), t));
    assert_eq!((m.len(), m.expiring(), m.tombstones()), (2, 1, 0));
    assert!(m.apply(Bytes::from("k"), e.expired()));
    assert_eq!((m.len(), m.expiring(), m.tombstones()), (1, 0, 1));
    assert!(!m.apply(Bytes::from("k"), e), "the expired entry does not come back");
    assert_eq!(m.collect_tombstones(Timestamp::new(200, 0, 0)), 1, "reclaimed like any tombstone");
    assert_eq!((m.len(), m.expiring(), m.tombstones()), (1, 0, 0));
}
