//! The merge algebra checked exhaustively on a small hand-picked sample (style item 8): every
//! triple for associativity, every pair for commutativity, each map for idempotence, with both
//! `merge` and `merge_owned`. The sample is chosen for the awkward cases: ties on timestamps
//! with different values, a value against a tombstone at the same timestamp, versions that
//! differ only in the logical counter or the replica, values with deadlines (against the same
//! value without one, another deadline, and the tombstone an expiry makes), and maps with
//! several keys.

mod common;

use common::{b, consistent, merged, merged_owned, ts};
use lww_crdt::{BytesMap, Entry};

fn sample() -> Vec<(&'static str, BytesMap)> {
    let m = |entries: &[(&str, Option<&str>, lww_crdt::Timestamp)]| -> BytesMap {
        entries.iter().map(|&(k, v, t)| (b(k), Entry { ts: t, value: v.map(b), expires: None })).collect()
    };
    // A value that expires at 50, and the same with another deadline (an EXPIRE racing nothing
    // but itself, or hand-made input).
    let until = |k: &str, v: &str, t, d| -> BytesMap {
        std::iter::once((b(k), Entry::expiring(b(v), t, d))).collect()
    };
    let t1 = ts(10, 0, 1);
    vec![
        ("empty", BytesMap::new()),
        ("k=x@t1", m(&[("k", Some("x"), t1)])),
        ("k=tomb@t1", m(&[("k", None, t1)])),
        ("k=y@t1", m(&[("k", Some("y"), t1)])),
        ("k=empty@t1", m(&[("k", Some(""), t1)])),
        ("k=x@older", m(&[("k", Some("x"), ts(9, 5, 7))])),
        ("k=z@newer", m(&[("k", Some("z"), ts(11, 0, 0))])),
        ("k=tomb@newer", m(&[("k", None, ts(11, 0, 0))])),
        ("k=a@t1+logical", m(&[("k", Some("a"), ts(10, 1, 0))])),
        ("k=a@t1+replica", m(&[("k", Some("a"), ts(10, 0, 2))])),
        ("k=y@t1,j=x@t1", m(&[("k", Some("y"), t1), ("j", Some("x"), t1)])),
        ("k=tomb@t1,j=tomb@newer", m(&[("k", None, t1), ("j", None, ts(11, 0, 0))])),
        ("j=y@older,kk=x@t1", m(&[("j", Some("y"), ts(9, 0, 0)), ("kk", Some("x"), t1)])),
        (
            "k=x@newer,j=x@t1,kk=tomb@t1",
            m(&[("k", Some("x"), ts(11, 0, 0)), ("j", Some("x"), t1), ("kk", None, t1)]),
        ),
        ("k=x@t1 until 50", until("k", "x", t1, 50)),
        ("k=x@t1 until 60", until("k", "x", t1, 60)),
        ("k=y@t1 until 50", until("k", "y", t1, 50)),
        ("k=z@newer until 50", until("k", "z", ts(11, 0, 0), 50)),
    ]
}

/// `a ⊔ b` by both merges, checked to agree and to keep consistent counts.
fn join(a: &BytesMap, b: &BytesMap) -> BytesMap {
    let by_ref = merged(a, b);
    let by_owned = merged_owned(a.clone(), b.clone());
    assert_eq!(by_ref, by_owned, "merge and merge_owned disagree on {a:?} ⊔ {b:?}");
    consistent(&by_ref).unwrap_or_else(|e| panic!("{a:?} ⊔ {b:?}: {e}"));
    by_ref
}

#[test]
fn the_sample_covers_the_awkward_cases() {
    let s = sample();
    assert!(s.len() >= 8);
    let names: Vec<_> = s.iter().map(|(n, _)| *n).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate sample names");
    // Distinct maps, so no pair below is trivially `a ⊔ a`.
    for (i, (_, a)) in s.iter().enumerate() {
        for (_, b) in &s[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn merge_is_associative_on_every_triple() {
    let s = sample();
    for (na, a) in &s {
        for (nb, b) in &s {
            for (nc, c) in &s {
                assert_eq!(
                    join(&join(a, b), c),
                    join(a, &join(b, c)),
                    "({na} ⊔ {nb}) ⊔ {nc} != {na} ⊔ ({nb} ⊔ {nc})"
                );
            }
        }
    }
}

#[test]
fn merge_is_commutative_on_every_pair() {
    let s = sample();
    for (na, a) in &s {
        for (nb, b) in &s {
            assert_eq!(join(a, b), join(b, a), "{na} ⊔ {nb} != {nb} ⊔ {na}");
        }
    }
}

#[test]
fn merge_is_idempotent_on_every_map_and_join() {
    let s = sample();
    for (na, a) in &s {
        assert_eq!(&join(a, a), a, "{na} ⊔ {na} != {na}");
        for (nb, b) in &s {
            // The join is an upper bound of both inputs: merging either again changes nothing.
            let ab = join(a, b);
            let mut again = ab.clone();
            let stats = again.merge(a);
            assert_eq!((stats.changed, &again), (0, &ab), "({na} ⊔ {nb}) ⊔ {na}");
            let stats = again.merge_owned(b.clone());
            assert_eq!((stats.changed, &again), (0, &ab), "({na} ⊔ {nb}) ⊔ {nb}");
        }
    }
}

#[test]
fn ties_resolve_to_the_expected_winner() {
    // Spot checks that pin down the tie-break documented on `Entry`, so that an order that is
    // merely consistent (e.g. a value below a tombstone) would still be caught.
    let s = sample();
    let get = |name: &str| s.iter().find(|(n, _)| *n == name).map(|(_, m)| m.clone()).expect("in sample");
    let k = &b"k"[..];
    assert_eq!(join(&get("k=x@t1"), &get("k=y@t1")).get(k), Some(&b("y")));
    assert_eq!(
        join(&get("k=tomb@t1"), &get("k=empty@t1")).get(k),
        Some(&b("")),
        "a value beats a tombstone at equal time"
    );
    assert_eq!(join(&get("k=z@newer"), &get("k=a@t1+logical")).get(k), Some(&b("z")));
    assert_eq!(
        join(&get("k=a@t1+replica"), &get("k=y@t1")).get(k),
        Some(&b("a")),
        "replica breaks the tie before the value"
    );
    let deleted = join(&get("k=tomb@newer"), &get("k=y@t1,j=x@t1"));
    assert_eq!((deleted.get(k), deleted.len(), deleted.tombstones()), (None, 1, 1));
}
