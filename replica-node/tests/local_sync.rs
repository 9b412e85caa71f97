//! One server, several query actors: visibility, pacing budgets, traffic, last-writer-wins.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The requirement (design 4.2): a Put on one actor is visible on every other within 500 ms.
const VISIBILITY: Duration = Duration::from_millis(500);

#[test]
fn a_put_is_visible_to_get_and_list_on_every_other_actor() {
    let node = start_node(4);
    let cs = clients(&node);
    for (i, writer) in cs.iter().enumerate() {
        let key = format!("vis:{i}");
        writer.put(b(&key), b("hello")).unwrap();
        for (j, reader) in cs.iter().enumerate() {
            let seen = eventually(VISIBILITY, || {
                reader.get(b(&key)).unwrap() == Some(b("hello"))
                    && reader.list(b("vis:")).unwrap().get(&b(&key)) == Some(&b("hello"))
            });
            assert!(seen.is_some(), "write on actor {i} not visible on actor {j} within {VISIBILITY:?}");
        }
    }
    // Deletes sync like puts.
    cs[0].delete(b("vis:0")).unwrap();
    for (j, reader) in cs.iter().enumerate() {
        let gone = eventually(VISIBILITY, || reader.get(b("vis:0")).unwrap().is_none());
        assert!(gone.is_some(), "delete not visible on actor {j}");
        assert_eq!(reader.list(b("vis:")).unwrap().len(), 3);
    }
}

#[test]
fn pair_rate_stays_within_ten_per_second_under_constant_writes() {
    let node = start_node(4);
    let cs = clients(&node);
    thread::scope(|s| {
        for (i, c) in cs.iter().enumerate() {
            s.spawn(move || {
                let start = Instant::now();
                for n in 0..300u32 {
                    c.put(b(format!("rate:{i}:{n}")), b("v")).unwrap();
                    // One write every 10 ms, on a schedule (not drifting with the write time).
                    let next = start + Duration::from_millis(10 * u64::from(n + 1));
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
        }
    });
    for c in &cs {
        let all = eventually(VISIBILITY, || c.list(b("rate:")).unwrap().len() == 1_200);
        assert!(all.is_some(), "every actor ends with every key");
    }
    let rate = info_field(&cs[0], "sync_max_pair_rate");
    assert!(rate <= 10, "an actor sent {rate} messages to one recipient within one second");
    assert!(rate >= 5, "writes every 10 ms should keep the pacer busy (rate {rate})");
    // Batching: far fewer messages than writes.
    let messages = info_field(&cs[0], "sync_messages_sent");
    assert!(messages < 4 * 3 * 50, "{messages} messages for 1 200 writes: not batched");
}

#[test]
fn sync_traffic_does_not_grow_with_the_store() {
    let node = start_node(2);
    let cs = clients(&node);
    let round = |tag: &str| {
        let before = info_field(&cs[0], "sync_entries_sent");
        for i in 0..50 {
            cs[0].put(b(format!("round:{tag}:{i}")), b("v")).unwrap();
        }
        assert!(
            eventually(VISIBILITY, || cs[1].list(b(format!("round:{tag}:"))).unwrap().len() == 50).is_some()
        );
        info_field(&cs[0], "sync_entries_sent") - before
    };
    let first = round("a");
    for i in 0..1_000 {
        cs[1].put(b(format!("bulk:{i:04}")), b("x".repeat(100))).unwrap();
    }
    assert!(eventually(VISIBILITY, || cs[0].list(b("bulk:")).unwrap().len() == 1_000).is_some());
    let second = round("b");
    assert!(first >= 50, "the first round sent its entries ({first})");
    assert!(second <= 2 * first, "after 1 000 extra keys a round sent {second} entries, before {first}");
}

#[test]
fn last_writer_wins_across_actors() {
    let node = start_node(3);
    let cs = clients(&node);
    let settle = |key: &str, want: &str| {
        for (j, c) in cs.iter().enumerate() {
            let ok = eventually(VISIBILITY, || c.get(b(key)).unwrap() == Some(b(want)));
            assert!(ok.is_some(), "actor {j} did not settle on {want:?} for {key}: {:?}", c.get(b(key)));
        }
    };
    // Concurrent writes 10 ms apart on two actors: the later one wins everywhere.
    for round in 0..5 {
        let key = format!("lww:{round}");
        cs[0].put(b(&key), b("first")).unwrap();
        thread::sleep(Duration::from_millis(10));
        cs[1].put(b(&key), b("second")).unwrap();
        settle(&key, "second");
    }
    // A re-Put of the same value gets a fresh timestamp and beats a write made in between.
    cs[0].put(b("re"), b("same")).unwrap();
    settle("re", "same");
    cs[1].put(b("re"), b("between")).unwrap();
    settle("re", "between");
    thread::sleep(Duration::from_millis(10));
    cs[0].put(b("re"), b("same")).unwrap();
    settle("re", "same");
    // A later write on a third actor wins over both.
    thread::sleep(Duration::from_millis(10));
    cs[2].put(b("re"), b("third")).unwrap();
    settle("re", "third");
}

#[test]
fn stress_random_operations_leave_identical_maps() {
    let node = start_node(4);
    let cs = clients(&node);
    let written: Vec<Vec<String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|worker| {
                let c = &cs[worker % 4];
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5eed + worker as u64);
                    let mut keys = Vec::new();
                    for op in 0..100 {
                        let key = format!("stress:{:02}", rng.random_range(0..40));
                        match rng.random_range(0..3) {
                            0 => {
                                c.put(b(&key), b(format!("w{worker}-{op}"))).unwrap();
                                keys.push(key);
                            }
                            1 => {
                                c.get(b(&key)).unwrap();
                            }
                            _ => {
                                let listed = c.list(b("stress:")).unwrap();
                                assert!(listed.keys().all(|k| k.starts_with(b"stress:")));
                            }
                        }
                    }
                    keys
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut expected_keys: Vec<String> = written.into_iter().flatten().collect();
    expected_keys.sort();
    expected_keys.dedup();
    let reference = || cs[0].list(b("stress:")).unwrap();
    let converged = eventually(VISIBILITY, || {
        let r = reference();
        cs.iter().all(|c| c.list(b("stress:")).unwrap() == r)
    });
    assert!(converged.is_some(), "actors did not converge");
    let map: BTreeMap<_, _> = reference();
    let keys: Vec<String> = map.keys().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
    assert_eq!(keys, expected_keys, "exactly the keys ever put");
}
