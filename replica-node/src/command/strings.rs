//! Commands on string values: `GET`, `SET`, `SETNX`, `GETSET`, `GETDEL`, `MSET`, `MSETNX`,
//! `MGET`, `STRLEN`, `GETRANGE`.
//!
//! Every value is a string, and every write replaces a whole value (last-writer-wins), so a
//! command that reads before it writes (`SETNX`, `GETSET`, `GETDEL`, `MSETNX`) reads this
//! replica: a condition such as "the key has no value" is checked here, not cluster-wide, and
//! two servers may both find it true at once. The README says so.

use bytes::Bytes;

use super::expiry::{Unit, option_deadline, rewrite};
use super::{Ctx, key_ok, parse_int, value_ok};

pub(super) fn get(c: &mut Ctx<'_>) {
    let args = c.args;
    reply_value(c, &args[1]);
}

/// Replies with the live value of `key` (or a null), counted as a keyspace hit or miss. The
/// value is handed to the reply buffer by reference: no clone of its handle for a small value
/// (the hot path of `GET`), a shared handle for a large one.
fn reply_value(c: &mut Ctx<'_>, key: &[u8]) {
    let now = c.now.wall_ms;
    let found = c.actor.replica.map().get_entry(key).and_then(|e| e.value_at(now));
    match found {
        Some(v) => {
            c.out.value(v);
            c.actor.counters.hits += 1;
        }
        None => {
            resp::null(c.out.raw(), c.session.proto);
            c.actor.counters.misses += 1;
        }
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]`. `NX` and `XX`
/// are checked on this replica. A deadline in the past deletes the key.
pub(super) fn set(c: &mut Ctx<'_>) {
    let args = c.args;
    let (key, value) = (&args[1], &args[2]);
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut deadline: Option<i64> = None;
    let mut opts = args[3..].iter();
    while let Some(opt) = opts.next() {
        let is = |n: &str| opt.eq_ignore_ascii_case(n.as_bytes());
        let has_deadline = deadline.is_some() || keep_ttl;
        if is("NX") && !xx {
            nx = true;
        } else if is("XX") && !nx {
            xx = true;
        } else if is("GET") {
            get = true;
        } else if is("KEEPTTL") && !has_deadline {
            keep_ttl = true;
        } else if let Some(unit) = Unit::parse(opt).filter(|_| !has_deadline) {
            let Some(arg) = opts.next() else { return c.error("ERR syntax error") };
            match option_deadline(c, unit, arg, "set") {
                Some(d) => deadline = Some(d),
                None => return,
            }
        } else {
            return c.error("ERR syntax error");
        }
    }
    if !key_ok(c, key) || !value_ok(c, value) {
        return;
    }
    // Only the options that depend on the key's current entry look it up: a plain SET (the
    // hot path) does not search the map twice.
    let current = if nx || xx || get || keep_ttl { c.live(key).cloned() } else { None };
    if get {
        match &current {
            Some(_) => c.actor.counters.hits += 1,
            None => c.actor.counters.misses += 1,
        }
    }
    let reply_old = |c: &mut Ctx<'_>| match current.as_ref().and_then(|e| e.value.clone()) {
        Some(v) => c.out.value(&v),
        None => c.null(),
    };
    if (nx && current.is_some()) || (xx && current.is_none()) {
        return if get { reply_old(c) } else { c.null() };
    }
    if keep_ttl {
        deadline = current.as_ref().and_then(|e| e.deadline()).map(|d| d as i64);
    }
    let now = c.now.wall_ms as i64;
    let result = match deadline {
        Some(d) if d <= now => c.write_until(key, None, None),
        d => c.write_until(key, Some(Bytes::copy_from_slice(value)), d.map(|d| d as u64)),
    };
    match result {
        Ok(_) if get => reply_old(c),
        Ok(_) => c.ok(),
        Err(lost) => c.lost(lost),
    }
}

/// `SETEX key seconds value` and `PSETEX key milliseconds value`.
pub(super) fn setex(c: &mut Ctx<'_>) {
    let args = c.args;
    let (name, key, value) = (String::from_utf8_lossy(&args[0]).to_ascii_lowercase(), &args[1], &args[3]);
    let unit = if name == "psetex" { Unit::Millis } else { Unit::Seconds };
    let Some(deadline) = option_deadline(c, unit, &args[2], &name) else { return };
    if !key_ok(c, key) || !value_ok(c, value) {
        return;
    }
    match c.write_until(key, Some(Bytes::copy_from_slice(value)), Some(deadline as u64)) {
        Ok(_) => c.ok(),
        Err(lost) => c.lost(lost),
    }
}

/// `GETEX key [EX s|PX ms|EXAT unix-s|PXAT unix-ms|PERSIST]`: the value, and a new deadline (or
/// none) written with it.
pub(super) fn getex(c: &mut Ctx<'_>) {
    let args = c.args;
    let key = &args[1];
    let change: Option<Option<i64>> = match &args[2..] {
        [] => None,
        [opt] if opt.eq_ignore_ascii_case(b"PERSIST") => Some(None),
        [opt, n] => match Unit::parse(opt) {
            Some(unit) => match option_deadline(c, unit, n, "getex") {
                Some(d) => Some(Some(d)),
                None => return,
            },
            None => return c.error("ERR syntax error"),
        },
        _ => return c.error("ERR syntax error"),
    };
    let Some(value) = c.read(key) else { return c.null() };
    if let Some(deadline) = change
        && !rewrite(c, key, deadline)
    {
        return;
    }
    c.out.value(&value);
}

pub(super) fn setnx(c: &mut Ctx<'_>) {
    let (key, value) = (&c.args[1], &c.args[2]);
    if !key_ok(c, key) || !value_ok(c, value) {
        return;
    }
    if c.exists(key) {
        return c.integer(0);
    }
    match c.write(key, Some(value)) {
        Ok(_) => c.integer(1),
        Err(lost) => c.lost(lost),
    }
}

pub(super) fn getset(c: &mut Ctx<'_>) {
    let (key, value) = (&c.args[1], &c.args[2]);
    if !key_ok(c, key) || !value_ok(c, value) {
        return;
    }
    let old = c.read(key);
    match c.write(key, Some(value)) {
        Ok(_) => match old {
            Some(v) => c.out.value(&v),
            None => c.null(),
        },
        Err(lost) => c.lost(lost),
    }
}

pub(super) fn getdel(c: &mut Ctx<'_>) {
    let key = &c.args[1];
    if !key_ok(c, key) {
        return;
    }
    let Some(old) = c.read(key) else {
        // Nothing to delete: no tombstone either (Redis writes nothing for a missing key).
        return c.null();
    };
    match c.write(key, None) {
        Ok(_) => c.out.value(&old),
        Err(lost) => c.lost(lost),
    }
}

/// The key-value pairs of `MSET`/`MSETNX`, checked against the limits; replies with the
/// error and returns `None` when they are not pairs or one is too large.
fn pairs(c: &mut Ctx<'_>) -> Option<Vec<(Bytes, Bytes)>> {
    let rest = &c.args[1..];
    if !rest.len().is_multiple_of(2) {
        let name = String::from_utf8_lossy(&c.args[0]).to_ascii_lowercase();
        c.error(&format!("ERR wrong number of arguments for '{name}' command"));
        return None;
    }
    let pairs: Vec<(Bytes, Bytes)> = rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    for (k, v) in &pairs {
        if !key_ok(c, k) || !value_ok(c, v) {
            return None;
        }
    }
    Some(pairs)
}

/// Writes every pair. They run in one command on the actor's thread, so they leave in the
/// same delta: no replica ever holds some of them without the others.
fn write_pairs(c: &mut Ctx<'_>, pairs: &[(Bytes, Bytes)]) -> bool {
    let mut lost = None;
    for (k, v) in pairs {
        if let Err(l) = c.write(k, Some(v)) {
            lost = Some(l);
        }
    }
    match lost {
        Some(l) => {
            c.lost(l);
            false
        }
        None => true,
    }
}

pub(super) fn mset(c: &mut Ctx<'_>) {
    let Some(pairs) = pairs(c) else { return };
    if write_pairs(c, &pairs) {
        c.ok();
    }
}

pub(super) fn msetnx(c: &mut Ctx<'_>) {
    let Some(pairs) = pairs(c) else { return };
    if pairs.iter().any(|(k, _)| c.exists(k)) {
        return c.integer(0);
    }
    if write_pairs(c, &pairs) {
        c.integer(1);
    }
}

/// Values are shared with the store, not copied (see [`super::ReplyBuf`]); past the client
/// output limit the buffer stops taking them and the connection is closed.
pub(super) fn mget(c: &mut Ctx<'_>) {
    c.array_header(c.args.len() - 1);
    let args = c.args;
    for k in &args[1..] {
        if c.out.over_limit() {
            return;
        }
        reply_value(c, k);
    }
}

pub(super) fn strlen(c: &mut Ctx<'_>) {
    let n = c.live(&c.args[1]).and_then(|e| e.value.as_ref()).map_or(0, Bytes::len);
    c.integer(n as i64);
}

pub(super) fn getrange(c: &mut Ctx<'_>) {
    let args = c.args;
    let Some(start) = parse_int(c, &args[2]) else { return };
    let Some(end) = parse_int(c, &args[3]) else { return };
    let value = c.read(&args[1]).unwrap_or_default();
    match range(value.len(), start, end) {
        Some((from, to)) => c.out.value(&value.slice(from..to)),
        None => c.out.bulk(b""),
    }
}

/// `GETRANGE`'s offsets over a value of `len` bytes, as Redis reads them (negative counts from
/// the end, both inclusive, clamped): the byte range, or `None` when it is empty.
fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    if len == 0 {
        return None;
    }
    let len = len as i64;
    let (mut start, mut end) = (start, end);
    if start < 0 && end < 0 && start > end {
        return None;
    }
    if start < 0 {
        start = (len + start).max(0);
    }
    if end < 0 {
        end = (len + end).max(0);
    }
    end = end.min(len - 1);
    if start > end {
        return None;
    }
    Some((start as usize, end as usize + 1))
}

#[cfg(test)]
mod tests {
    use replica_core::{MAX_KEY, MAX_VALUE};

    use super::super::Flow;
    use super::super::testutil::*;
    use super::range;

    #[test]
    fn get_set_mget() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["GET", "k"]), Value::Nil);
        assert_eq!(h.run(&["set", "k", "v1"]), ok());
        assert_eq!(h.run(&["SET", "k", "v2"]), ok());
        assert_eq!(h.run(&["get", "k"]), bulk("v2"));
        assert_eq!(h.run(&["SET", "j", "w"]), ok());
        assert_eq!(h.run(&["MGET", "k", "nope", "j"]), Value::Array(vec![bulk("v2"), Value::Nil, bulk("w")]));
        assert_eq!((h.actor.counters.hits, h.actor.counters.misses), (3, 2), "keyspace hits and misses");
    }

    #[test]
    fn set_takes_nx_xx_get_and_a_deadline() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["SET", "k", "v", "NX"]), ok());
        assert_eq!(h.run(&["SET", "k", "w", "NX"]), Value::Nil);
        assert_eq!(h.run(&["SET", "k", "w", "XX"]), ok());
        assert_eq!(h.run(&["SET", "nope", "x", "XX"]), Value::Nil);
        assert_eq!(h.run(&["EXISTS", "nope"]), Value::Integer(0));
        assert_eq!(h.run(&["SET", "k", "a", "GET"]), bulk("w"));
        assert_eq!(h.run(&["SET", "new", "b", "NX", "GET"]), Value::Nil, "set: it had no value");
        assert_eq!(h.run(&["SET", "new", "c", "nx", "get"]), bulk("b"), "not set: the old value");
        assert_eq!(h.run(&["GET", "new"]), bulk("b"));
        // Deadlines.
        assert_eq!(h.run(&["SET", "k", "v", "EX", "10"]), ok());
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(10));
        assert_eq!(h.run(&["SET", "k", "v2", "KEEPTTL"]), ok());
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(10));
        assert_eq!(h.run(&["SET", "k", "v3"]), ok());
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(-1), "a plain SET drops the deadline");
        assert_eq!(h.run(&["SET", "k", "v", "PX", "1600"]), ok());
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(2), "1.599 s rounds to 2, as in Redis");
        let at = (1_700_000_000 + 30).to_string();
        assert_eq!(h.run(&["SET", "k", "v", "EXAT", &at]), ok());
        assert_eq!(h.run(&["EXPIRETIME", "k"]), Value::Integer(1_700_000_030));
        assert_eq!(h.run(&["SET", "k", "v", "PXAT", "1700000040000"]), ok());
        assert_eq!(h.run(&["PEXPIRETIME", "k"]), Value::Integer(1_700_000_040_000));
        assert_eq!(h.run(&["SET", "k", "v", "EXAT", "1000"]), ok(), "a deadline in the past");
        assert_eq!(h.run(&["EXISTS", "k"]), Value::Integer(0), "deletes the key");
        for (args, err) in [
            (&["SET", "k", "v", "EX", "0"][..], "ERR invalid expire time in 'set' command"),
            (&["SET", "k", "v", "PX", "-5"], "ERR invalid expire time in 'set' command"),
            (&["SET", "k", "v", "EX", "x"], "ERR value is not an integer or out of range"),
            (&["SET", "k", "v", "EX", &i64::MAX.to_string()], "ERR invalid expire time in 'set' command"),
            (&["SET", "k", "v", "EX", "10", "PX", "10"], "ERR syntax error"),
            (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
            (&["SET", "k", "v", "KEEPTTL", "EX", "1"], "ERR syntax error"),
            (&["SET", "k", "v", "EX"], "ERR syntax error"),
            (&["SET", "k", "v", "LATER"], "ERR syntax error"),
        ] {
            assert_eq!(h.run(args), Value::Error(err.into()), "{args:?}");
        }
        assert_eq!(h.run(&["EXISTS", "k"]), Value::Integer(0), "a refused SET writes nothing");
    }

    #[test]
    fn setex_psetex_getex() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["SETEX", "k", "10", "v"]), ok());
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(10));
        assert_eq!(h.run(&["GET", "k"]), bulk("v"));
        err_starting(&h.run(&["SETEX", "k", "0", "v"]), "ERR invalid expire time in 'setex' command");
        err_starting(&h.run(&["PSETEX", "k", "-1", "v"]), "ERR invalid expire time in 'psetex' command");
        assert_eq!(h.run(&["PSETEX", "k", "1500", "w"]), ok());
        let Value::Integer(pttl) = h.run(&["PTTL", "k"]) else { panic!() };
        assert!((1_490..=1_500).contains(&pttl), "{pttl}");
        assert_eq!(h.run(&["GETEX", "k"]), bulk("w"));
        assert_eq!(h.run(&["GETEX", "k", "PERSIST"]), bulk("w"));
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(-1));
        assert_eq!(h.run(&["GETEX", "k", "EX", "5"]), bulk("w"));
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(5));
        assert_eq!(h.run(&["GETEX", "nope", "EX", "5"]), Value::Nil);
        err_starting(&h.run(&["GETEX", "k", "EX", "0"]), "ERR invalid expire time in 'getex' command");
        err_starting(&h.run(&["GETEX", "k", "SOON", "1"]), "ERR syntax error");
        assert_eq!(h.run(&["GETEX", "k", "PXAT", "1000"]), bulk("w"), "the value, then gone");
        assert_eq!(h.run(&["EXISTS", "k"]), Value::Integer(0));
        // RENAME and COPY carry the deadline.
        h.run(&["SET", "a", "1", "EX", "100"]);
        h.run(&["RENAME", "a", "b"]);
        assert_eq!(h.run(&["TTL", "b"]), Value::Integer(100));
        h.run(&["COPY", "b", "c"]);
        assert_eq!(h.run(&["TTL", "c"]), Value::Integer(100));
    }

    #[test]
    fn setnx_getset_getdel_strlen() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["SETNX", "k", "a"]), Value::Integer(1));
        assert_eq!(h.run(&["SETNX", "k", "b"]), Value::Integer(0));
        assert_eq!(h.run(&["GET", "k"]), bulk("a"));
        assert_eq!(h.run(&["STRLEN", "k"]), Value::Integer(1));
        assert_eq!(h.run(&["STRLEN", "nope"]), Value::Integer(0));
        assert_eq!(h.run(&["GETSET", "k", "bcd"]), bulk("a"));
        assert_eq!(h.run(&["GETSET", "new", "x"]), Value::Nil);
        assert_eq!(h.run(&["STRLEN", "k"]), Value::Integer(3));
        assert_eq!(h.run(&["GETDEL", "k"]), bulk("bcd"));
        assert_eq!(h.run(&["GETDEL", "k"]), Value::Nil);
        assert_eq!(h.run(&["GET", "k"]), Value::Nil);
        assert_eq!(h.actor.replica.map().tombstones(), 1, "one tombstone: the second GETDEL wrote nothing");
        assert_eq!(h.run(&["SETNX", "k", "again"]), Value::Integer(1), "a deleted key has no value");
    }

    #[test]
    fn mset_and_msetnx_write_every_pair_or_none() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["MSET", "a", "1", "b", "2"]), ok());
        assert_eq!(h.run(&["MGET", "a", "b"]), Value::Array(vec![bulk("1"), bulk("2")]));
        err_starting(&h.run(&["MSET", "a", "1", "b"]), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(h.run(&["MSETNX", "c", "3", "a", "9"]), Value::Integer(0), "a exists");
        assert_eq!(h.run(&["GET", "c"]), Value::Nil, "so nothing was written");
        assert_eq!(h.run(&["MSETNX", "c", "3", "d", "4"]), Value::Integer(1));
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(4));
        // The pairs of one command leave in one delta.
        let batch = h.actor.replica.poll_sync_final(h.now()).unwrap();
        assert_eq!(batch.delta.entry_count(), 4);
        let big = vec![b'v'; MAX_VALUE + 1];
        err_starting(&h.run_flow(&[b"MSET", b"x", b"1", b"y", &big]).0, "ERR value too large");
        assert_eq!(h.run(&["GET", "x"]), Value::Nil, "a refused MSET writes nothing");
    }

    #[test]
    fn getrange_reads_offsets_as_redis_does() {
        let mut h = Harness::new();
        h.run(&["SET", "k", "This is a string"]);
        for (start, end, want) in [
            ("0", "3", "This"),
            ("-3", "-1", "ing"),
            ("0", "-1", "This is a string"),
            ("10", "100", "string"),
            ("5", "3", ""),
            ("-1", "-5", ""),
            ("-100", "3", "This"),
        ] {
            assert_eq!(h.run(&["GETRANGE", "k", start, end]), bulk(want), "{start} {end}");
        }
        assert_eq!(h.run(&["GETRANGE", "nope", "0", "-1"]), bulk(""));
        err_starting(&h.run(&["GETRANGE", "k", "a", "1"]), "ERR value is not an integer");
        assert_eq!(range(0, 0, -1), None);
    }

    #[test]
    fn oversized_keys_and_values_are_refused_and_write_nothing() {
        let mut h = Harness::new();
        let big_key = vec![b'k'; MAX_KEY + 1];
        let big_value = vec![b'v'; MAX_VALUE + 1];
        let (reply, flow) = h.run_flow(&[b"SET", &big_key, b"v"]);
        err_starting(&reply, "ERR key too large");
        assert_eq!(flow, Flow::Continue, "the connection stays usable");
        err_starting(&h.run_flow(&[b"SET", b"k", &big_value]).0, "ERR value too large");
        err_starting(&h.run_flow(&[b"SETNX", b"k", &big_value]).0, "ERR value too large");
        err_starting(&h.run_flow(&[b"GETSET", &big_key, b"v"]).0, "ERR key too large");
        assert_eq!(h.run_flow(&[b"GET", &big_key]).0, Value::Nil, "nothing can be stored under it");
        err_starting(&h.run_flow(&[b"DEL", b"a", &big_key]).0, "ERR key too large");
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
        let max_key = vec![b'k'; MAX_KEY];
        assert_eq!(h.run_flow(&[b"SET", &max_key, b"v"]).0, ok(), "the limit itself is allowed");
    }

    #[test]
    fn large_values_are_shared_and_mget_stops_at_the_output_limit() {
        let mut h = Harness::new();
        let value = vec![b'x'; 1024 * 1024];
        assert_eq!(h.run_flow(&[b"SET", b"big", &value]).0, ok());
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(std::iter::repeat_n(&b"big"[..], 4096));
        // Within the limit: the whole reply, each mention a handle to the stored value.
        let (mut out, _) = h.run_raw(&args[..9], 16 * 1024 * 1024);
        assert!(!out.over_limit());
        let bytes = out.take_all();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let Value::Array(items) = resp::parse_value(&mut buf).unwrap().unwrap() else { panic!() };
        assert_eq!(items.len(), 8);
        assert!(items.iter().all(|v| *v == Value::Bulk(value.clone().into())));
        // 4 GiB named in one request: refused at the limit, never built.
        let (out, flow) = h.run_raw(&args, 16 * 1024 * 1024);
        assert!(out.over_limit());
        assert!(out.len() <= 16 * 1024 * 1024, "held {} bytes", out.len());
        assert_eq!(flow, Flow::Continue, "the connection decides what to do with it");
    }
}
