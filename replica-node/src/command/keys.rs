//! Commands on keys whatever their value: `DEL`/`UNLINK`, `EXISTS`/`TOUCH`, `TYPE`,
//! `RENAME`/`RENAMENX`, `COPY`, `RANDOMKEY`, `DBSIZE`, `FLUSHALL`/`FLUSHDB`.

use std::ops::Bound;

use bytes::Bytes;
use replica_core::MAX_KEY;

use super::{Ctx, key_ok};

pub(super) fn del(c: &mut Ctx<'_>) {
    let keys = c.args;
    if let Some(k) = keys[1..].iter().find(|k| k.len() > MAX_KEY) {
        key_ok(c, k);
        return;
    }
    let mut existed = 0;
    let mut lost = 0;
    for k in &keys[1..] {
        let was = c.exists(k);
        // A delete is a write even of a key this replica never saw: its tombstone beats any
        // older write of the key still on its way from elsewhere.
        match c.write(k, None) {
            Ok(_) => existed += i64::from(was),
            Err(_) => lost += 1,
        }
    }
    if lost > 0 {
        return c.error(&format!(
            "CLOCKSKEW {lost} of the keys hold writes stamped ahead of this server's clock and were not deleted"
        ));
    }
    c.integer(existed);
}

pub(super) fn exists(c: &mut Ctx<'_>) {
    let n = c.args[1..].iter().filter(|k| c.exists(k)).count();
    c.integer(n as i64);
}

pub(super) fn type_(c: &mut Ctx<'_>) {
    let kind = if c.exists(&c.args[1]) { "string" } else { "none" };
    resp::simple(c.out.raw(), kind);
}

/// `RENAME` and `RENAMENX`: a write of the value under the new name and a delete of the old
/// one, in the same delta. Like every read-then-write here, it reads this replica: a write of
/// the old key on another server that has not arrived yet is not carried over.
pub(super) fn rename(c: &mut Ctx<'_>) {
    let args = c.args;
    let (from, to) = (&args[1], &args[2]);
    let nx = args[0].eq_ignore_ascii_case(b"RENAMENX");
    if !key_ok(c, from) || !key_ok(c, to) {
        return;
    }
    let Some((value, deadline)) = c.live(from).map(|e| (e.value.clone(), e.deadline())) else {
        return c.error("ERR no such key");
    };
    if from == to {
        return if nx { c.integer(0) } else { c.ok() };
    }
    if nx && c.exists(to) {
        return c.integer(0);
    }
    // The deadline moves with the value, as in Redis.
    if let Err(lost) = c.write_until(to, value, deadline).and_then(|_| c.write(from, None)) {
        return c.lost(lost);
    }
    if nx { c.integer(1) } else { c.ok() }
}

/// `COPY source destination [DB 0] [REPLACE]`.
pub(super) fn copy(c: &mut Ctx<'_>) {
    let args = c.args;
    let (from, to) = (&args[1], &args[2]);
    let mut replace = false;
    let mut opts = args[3..].iter();
    while let Some(opt) = opts.next() {
        if opt.eq_ignore_ascii_case(b"REPLACE") {
            replace = true;
        } else if opt.eq_ignore_ascii_case(b"DB") {
            match opts.next() {
                Some(db) if &db[..] == b"0" => {}
                Some(_) => return c.error("ERR DB index is out of range (this store has one keyspace, 0)"),
                None => return c.error("ERR syntax error"),
            }
        } else {
            return c.error("ERR syntax error");
        }
    }
    if !key_ok(c, from) || !key_ok(c, to) {
        return;
    }
    let Some((value, deadline)) = c.live(from).map(|e| (e.value.clone(), e.deadline())) else {
        return c.integer(0);
    };
    if from == to || (!replace && c.exists(to)) {
        return c.integer(0);
    }
    match c.write_until(to, value, deadline) {
        Ok(_) => c.integer(1),
        Err(lost) => c.lost(lost),
    }
}

pub(super) fn dbsize(c: &mut Ctx<'_>) {
    let n = c.replica().map().len();
    c.integer(n as i64);
}

/// Most entries `RANDOMKEY` steps over (tombstones) from the point it picked before it
/// wraps to the start; bounds its cost in a map full of tombstones.
const RANDOM_WALK: usize = 1024;

/// Picks a point between the first and the last key (by their first 8 bytes) and returns the
/// first live key at or after it: O(log n), never a scan of the whole map. Keys after a wide
/// gap in the key space come up more often than others: random, not uniform.
pub(super) fn randomkey(c: &mut Ctx<'_>) {
    let now = c.now.wall_ms;
    let map = c.actor.replica.map();
    if map.is_empty() {
        return c.null();
    }
    let head = |k: &Bytes| {
        let mut b = [0u8; 8];
        let n = k.len().min(8);
        b[..n].copy_from_slice(&k[..n]);
        u64::from_be_bytes(b)
    };
    let (Some((first, _)), Some((last, _))) = (map.entries().next(), map.entries().next_back()) else {
        return c.null();
    };
    let (lo, hi) = (head(first), head(last));
    let r = next_random(&mut c.actor.rng);
    let point = if hi > lo { lo + r % (hi - lo + 1) } else { lo };
    let point = point.to_be_bytes();
    let map = c.actor.replica.map();
    let found = map
        .range::<[u8], _>((Bound::Included(&point[..]), Bound::Unbounded))
        .take(RANDOM_WALK)
        .find(|(_, e)| e.is_live_at(now))
        .or_else(|| map.entries().find(|(_, e)| e.is_live_at(now)))
        .map(|(k, _)| k.clone());
    match found {
        Some(k) => c.out.value(&k),
        None => c.null(),
    }
}

/// A xorshift64* step: cheap, and plenty for picking keys.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// `FLUSHALL` and `FLUSHDB`: a tombstone for every live key of this replica, written like any
/// delete, so they reach every server and beat every older write. A key written elsewhere that
/// this replica has not received yet is not deleted (a flush is a delete of what it sees).
pub(super) fn flushall(c: &mut Ctx<'_>) {
    if let Some(mode) = c.args.get(1)
        && !(mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC"))
    {
        return c.error("ERR syntax error");
    }
    let now = c.now.wall_ms;
    let keys: Vec<Bytes> =
        c.replica().map().entries().filter(|(_, e)| e.is_live_at(now)).map(|(k, _)| k.clone()).collect();
    let mut lost = 0;
    for k in keys {
        if c.actor.replica.write(k, None, c.now).is_err() {
            lost += 1;
        }
    }
    if lost > 0 {
        return c.error(&format!(
            "CLOCKSKEW {lost} keys hold writes stamped ahead of this server's clock and were not deleted"
        ));
    }
    c.ok();
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn del_exists_touch_dbsize_type() {
        let mut h = Harness::new();
        h.run(&["SET", "k", "v"]);
        h.run(&["SET", "j", "w"]);
        assert_eq!(h.run(&["EXISTS", "k", "k", "nope", "j"]), Value::Integer(3), "duplicates count");
        assert_eq!(h.run(&["TOUCH", "k", "nope"]), Value::Integer(1));
        assert_eq!(h.run(&["TYPE", "k"]), Value::Simple("string".into()));
        assert_eq!(h.run(&["TYPE", "nope"]), Value::Simple("none".into()));
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(2));
        assert_eq!(h.run(&["DEL", "k", "nope", "k"]), Value::Integer(1), "only keys that existed count");
        assert_eq!(h.run(&["UNLINK", "j"]), Value::Integer(1));
        assert_eq!(h.run(&["GET", "k"]), Value::Nil);
        assert_eq!(h.run(&["TYPE", "k"]), Value::Simple("none".into()));
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
        assert_eq!(h.actor.replica.map().tombstones(), 3, "even the key never seen has a tombstone");
    }

    #[test]
    fn rename_renamenx_copy() {
        let mut h = Harness::new();
        err_starting(&h.run(&["RENAME", "a", "b"]), "ERR no such key");
        h.run(&["SET", "a", "1"]);
        assert_eq!(h.run(&["RENAME", "a", "b"]), ok());
        assert_eq!(h.run(&["MGET", "a", "b"]), Value::Array(vec![Value::Nil, bulk("1")]));
        assert_eq!(h.run(&["RENAME", "b", "b"]), ok());
        h.run(&["SET", "c", "3"]);
        assert_eq!(h.run(&["RENAMENX", "b", "c"]), Value::Integer(0));
        assert_eq!(h.run(&["RENAMENX", "b", "d"]), Value::Integer(1));
        assert_eq!(h.run(&["COPY", "d", "c"]), Value::Integer(0), "c exists");
        assert_eq!(h.run(&["COPY", "d", "c", "REPLACE"]), Value::Integer(1));
        assert_eq!(h.run(&["COPY", "d", "e", "DB", "0"]), Value::Integer(1));
        assert_eq!(h.run(&["COPY", "nope", "f"]), Value::Integer(0));
        err_starting(&h.run(&["COPY", "d", "f", "DB", "1"]), "ERR DB index is out of range");
        err_starting(&h.run(&["COPY", "d", "f", "BOGUS"]), "ERR syntax error");
        assert_eq!(h.run(&["MGET", "c", "d", "e"]), Value::Array(vec![bulk("1"), bulk("1"), bulk("1")]));
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(3));
    }

    #[test]
    fn randomkey_finds_live_keys_only() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["RANDOMKEY"]), Value::Nil);
        for i in 0..50 {
            h.run(&["SET", &format!("key:{i:02}"), "v"]);
        }
        for i in 0..50 {
            if i % 10 != 0 {
                h.run(&["DEL", &format!("key:{i:02}")]);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let Value::Bulk(k) = h.run(&["RANDOMKEY"]) else { panic!("a key") };
            let k = String::from_utf8(k.to_vec()).unwrap();
            assert!(k.ends_with('0'), "{k} was deleted");
            seen.insert(k);
        }
        assert!(seen.len() >= 2, "not always the same key: {seen:?}");
        h.run(&["FLUSHALL"]);
        assert_eq!(h.run(&["RANDOMKEY"]), Value::Nil, "only tombstones left");
    }

    #[test]
    fn flushall_leaves_a_tombstone_for_every_key_and_sends_them() {
        let mut h = Harness::new();
        for i in 0..20 {
            h.run(&["SET", &format!("k{i}"), "v"]);
        }
        let _ = h.actor.replica.poll_sync_final(h.now());
        assert_eq!(h.run(&["FLUSHDB", "ASYNC"]), ok());
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
        assert_eq!(h.actor.replica.map().tombstones(), 20);
        let batch = h.actor.replica.poll_sync_final(h.now()).expect("the tombstones go out");
        assert_eq!(batch.delta.tombstones(), 20);
        assert_eq!(h.run(&["FLUSHALL"]), ok(), "an empty store flushes too");
        err_starting(&h.run(&["FLUSHALL", "LATER"]), "ERR syntax error");
    }
}
