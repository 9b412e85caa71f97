//! Commands over key ranges: `LIST`, `KEYS`, `SCAN`, and the key patterns they accept.

use std::ops::Bound;

use bytes::Bytes;
use lww_crdt::BytesMap;

use super::Ctx;
use super::cursors::{self, Resume};

/// A key pattern this store can serve: a literal prefix followed by `*`, or an exact key.
#[derive(Debug, PartialEq, Eq)]
enum Pattern {
    Prefix(Vec<u8>),
    Exact(Vec<u8>),
}

impl Pattern {
    /// Parses a Redis glob; only `prefix*` and literal keys are supported (with `\` escapes).
    fn parse(glob: &[u8]) -> Result<Pattern, &'static str> {
        let mut lit = Vec::with_capacity(glob.len());
        let mut i = 0;
        while i < glob.len() {
            match glob[i] {
                b'\\' if i + 1 < glob.len() => {
                    lit.push(glob[i + 1]);
                    i += 2;
                    continue;
                }
                b'*' if i + 1 == glob.len() => return Ok(Pattern::Prefix(lit)),
                b'*' | b'?' | b'[' => {
                    return Err("ERR only prefix patterns ('prefix*') and literal keys are supported");
                }
                c => lit.push(c),
            }
            i += 1;
        }
        Ok(Pattern::Exact(lit))
    }

    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Pattern::Prefix(p) => key.starts_with(p),
            Pattern::Exact(k) => key == &k[..],
        }
    }

    /// Where matching keys start in key order.
    fn start(&self) -> &[u8] {
        match self {
            Pattern::Prefix(p) | Pattern::Exact(p) => p,
        }
    }
}

/// The pairs under `prefix` that hold a value at `now_ms` (no tombstone, no value past its
/// deadline), in key order: `O(log n)` plus the entries under the prefix.
fn live_prefix<'a>(
    map: &'a BytesMap,
    prefix: &'a [u8],
    now_ms: u64,
) -> impl Iterator<Item = (&'a Bytes, &'a Bytes)> {
    map.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
        .filter_map(move |(k, e)| e.value_at(now_ms).map(|v| (k, v)))
}

pub(super) fn list(c: &mut Ctx<'_>) {
    let prefix = c.args.get(1).map_or(&b""[..], |p| &p[..]);
    let now = c.now.wall_ms;
    let map = c.actor.replica.map();
    // Counted first: the array header comes before the pairs. The count costs a second walk of
    // the range, which is what the reply costs anyway.
    let n = live_prefix(map, prefix, now).count();
    resp::array_header(c.out.raw(), n * 2);
    for (k, v) in live_prefix(map, prefix, now) {
        if c.out.over_limit() {
            return;
        }
        c.out.value(k);
        c.out.value(v);
    }
}

pub(super) fn keys(c: &mut Ctx<'_>) {
    let pattern = match Pattern::parse(&c.args[1]) {
        Ok(p) => p,
        Err(e) => return c.error(e),
    };
    let now = c.now.wall_ms;
    let map = c.actor.replica.map();
    let found: Vec<&Bytes> = match &pattern {
        Pattern::Prefix(p) => live_prefix(map, p, now).map(|(k, _)| k).collect(),
        Pattern::Exact(k) => map
            .range::<[u8], _>((Bound::Included(&k[..]), Bound::Included(&k[..])))
            .filter(|(_, e)| e.is_live_at(now))
            .map(|(k, _)| k)
            .collect(),
    };
    resp::array_header(c.out.raw(), found.len());
    for k in found {
        if c.out.over_limit() {
            return;
        }
        c.out.value(k);
    }
}

/// Most keys one `SCAN` call examines, whatever `COUNT` says, to bound one reply's cost.
const MAX_SCAN_COUNT: usize = 100_000;

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]`. A page examines `COUNT` entries
/// (tombstones included), then up to as many more looking for a place where an inline cursor
/// can resume exactly (see [`super::cursors`]); without one it saves its resume point in the
/// node's table.
pub(super) fn scan(c: &mut Ctx<'_>) {
    let cursor = match std::str::from_utf8(&c.args[1]).ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) => n,
        None => return c.error("ERR invalid cursor"),
    };
    let mut pattern = Pattern::Prefix(Vec::new());
    let mut count = 10usize;
    for opt in c.args[2..].chunks(2) {
        let [name, value] = opt else {
            return c.error("ERR syntax error");
        };
        if name.eq_ignore_ascii_case(b"MATCH") {
            match Pattern::parse(value) {
                Ok(p) => pattern = p,
                Err(e) => return c.error(e),
            }
        } else if name.eq_ignore_ascii_case(b"COUNT") {
            match std::str::from_utf8(value).ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(n) if n > 0 => count = n.min(MAX_SCAN_COUNT),
                _ => return c.error("ERR value is out of range, must be positive"),
            }
        } else if name.eq_ignore_ascii_case(b"TYPE") {
            if !value.eq_ignore_ascii_case(b"string") {
                // Every value is a string: any other type matches nothing.
                c.array_header(2);
                c.out.bulk(b"0");
                c.array_header(0);
                return;
            }
        } else {
            return c.error("ERR syntax error");
        }
    }
    let prefix = pattern.start().to_vec();
    let resume = match cursors::decode(cursor, &prefix, &c.actor.info.scan_cursors) {
        Ok(r) => r,
        Err(e) => return c.error(e),
    };
    let start: Bound<&[u8]> = match &resume {
        Resume::From(k) if k[..] >= prefix[..] => Bound::Included(&k[..]),
        Resume::After(k) if k[..] >= prefix[..] => Bound::Excluded(&k[..]),
        _ => Bound::Included(&prefix[..]),
    };
    let now = c.now.wall_ms;
    let mut found = Vec::new();
    let mut last: Option<&Bytes> = None;
    let mut next = 0;
    let map = c.actor.replica.map();
    for (examined, (k, e)) in map.range::<[u8], _>((start, Bound::Unbounded)).enumerate() {
        if !k.starts_with(&prefix) {
            break;
        }
        if examined >= count
            && let Some(prev) = last
        {
            if cursors::window(&prefix, k) != cursors::window(&prefix, prev) {
                next = cursors::inline(&prefix, k);
                break;
            }
            if examined >= 2 * count {
                next = c.actor.info.scan_cursors.save(prev.clone());
                break;
            }
        }
        last = Some(k);
        if e.is_live_at(now) && pattern.matches(k) {
            found.push(k.clone());
        }
    }
    c.array_header(2);
    c.out.bulk(next.to_string().as_bytes());
    c.array_header(found.len());
    for k in &found {
        c.out.value(k);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::Pattern;

    #[test]
    fn list_and_keys_by_prefix() {
        let mut h = Harness::new();
        for k in ["a:2", "a:1", "b:1", "a"] {
            h.run(&["SET", k, &format!("v{k}")]);
        }
        assert_eq!(
            h.run(&["LIST", "a:"]),
            Value::Array(vec![bulk("a:1"), bulk("va:1"), bulk("a:2"), bulk("va:2")]),
            "sorted by key, flat pairs"
        );
        assert_eq!(array(h.run(&["LIST"])).len(), 8, "no prefix lists everything");
        assert_eq!(array(h.run(&["LIST", ""])).len(), 8);
        let mut keys = array(h.run(&["KEYS", "a*"]));
        keys.sort_by_key(|v| format!("{v:?}"));
        assert_eq!(keys, vec![bulk("a"), bulk("a:1"), bulk("a:2")]);
        assert_eq!(h.run(&["KEYS", "b:1"]), Value::Array(vec![bulk("b:1")]), "a literal key");
        assert_eq!(h.run(&["KEYS", "zz"]), Value::Array(vec![]));
        err_starting(&h.run(&["KEYS", "a*b"]), "ERR only prefix patterns");
        err_starting(&h.run(&["KEYS", "a?"]), "ERR only prefix patterns");
    }

    #[test]
    fn patterns_are_prefixes_or_literals_with_escapes() {
        assert_eq!(Pattern::parse(b"user:*"), Ok(Pattern::Prefix(b"user:".to_vec())));
        assert_eq!(Pattern::parse(b"*"), Ok(Pattern::Prefix(Vec::new())));
        assert_eq!(Pattern::parse(br"a\*b"), Ok(Pattern::Exact(b"a*b".to_vec())));
        assert_eq!(Pattern::parse(br"a\*"), Ok(Pattern::Exact(b"a*".to_vec())));
        assert!(Pattern::parse(b"a[bc]").is_err());
        assert!(Pattern::parse(b"*a").is_err());
        assert!(Pattern::parse(b"a*").unwrap().matches(b"abc"));
        assert!(!Pattern::parse(b"a").unwrap().matches(b"abc"));
    }

    /// Pages a SCAN to the end; returns the keys seen and the number of calls.
    fn scan_all(h: &mut Harness, extra: &[&str]) -> (Vec<String>, usize) {
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        let mut calls = 0;
        loop {
            let mut args = vec!["SCAN", cursor.as_str()];
            args.extend_from_slice(extra);
            let reply = array(h.run(&args));
            calls += 1;
            let [Value::Bulk(next), Value::Array(keys)] = &reply[..] else {
                panic!("bad SCAN reply {reply:?}")
            };
            for k in keys {
                let Value::Bulk(k) = k else { panic!("key {k:?}") };
                seen.push(String::from_utf8(k.to_vec()).unwrap());
            }
            cursor = String::from_utf8(next.to_vec()).unwrap();
            if cursor == "0" {
                return (seen, calls);
            }
            assert!(calls < 10_000, "SCAN does not end");
        }
    }

    #[test]
    fn scan_pages_through_every_key_once() {
        let mut h = Harness::new();
        for i in 0..300 {
            h.run(&["SET", &format!("user:{i:03}"), "x"]);
            h.run(&["SET", &format!("item:{i:03}"), "y"]);
        }
        let (all, calls) = scan_all(&mut h, &["COUNT", "50"]);
        assert_eq!(all.len(), 600);
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 600, "no key twice");
        assert!(calls >= 600 / 100, "COUNT bounds a page (to twice its value): {calls} calls");

        let (users, _) = scan_all(&mut h, &["MATCH", "user:*", "COUNT", "7"]);
        assert_eq!(users.len(), 300);
        assert!(users.iter().all(|k| k.starts_with("user:")));
        let (default_count, calls) = scan_all(&mut h, &[]);
        assert_eq!(default_count.len(), 600);
        assert!(calls > 1, "the default COUNT pages too");
        assert_eq!(scan_all(&mut h, &["TYPE", "string", "MATCH", "item:1*"]).0.len(), 100);
        assert_eq!(scan_all(&mut h, &["TYPE", "hash"]), (vec![], 1), "every value is a string");
        err_starting(&h.run(&["SCAN", "0", "MATCH", "u*r"]), "ERR only prefix patterns");
        err_starting(&h.run(&["SCAN", "0", "COUNT", "0"]), "ERR value is out of range");
        err_starting(&h.run(&["SCAN", "0", "COUNT"]), "ERR syntax error");
        err_starting(&h.run(&["SCAN", "0", "BOGUS", "1"]), "ERR syntax error");
        err_starting(&h.run(&["SCAN", "abc"]), "ERR invalid cursor");
    }

    #[test]
    fn scan_cursors_work_on_any_actor_of_the_node() {
        // Two actors of one node: the same replica contents, the same node-wide table.
        let mut a = Harness::new();
        let mut b = Harness::new();
        b.actor.info.scan_cursors = a.actor.info.scan_cursors.clone();
        // Keys that differ early (inline cursors) and keys sharing long prefixes (saved ones).
        for i in 0..200 {
            for h in [&mut a, &mut b] {
                h.run(&["SET", &format!("{i:03}"), "x"]);
                h.run(&["SET", &format!("shared:prefix:{i:03}"), "y"]);
            }
        }
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        let (mut inline, mut saved) = (0, 0);
        for call in 0.. {
            let h = if call % 2 == 0 { &mut a } else { &mut b };
            let reply = array(h.run(&["SCAN", &cursor, "COUNT", "7"]));
            let [Value::Bulk(next), Value::Array(keys)] = &reply[..] else { panic!("{reply:?}") };
            seen.extend(keys.iter().map(|k| format!("{k:?}")));
            cursor = String::from_utf8(next.to_vec()).unwrap();
            match cursor.parse::<u64>().unwrap() {
                0 => break,
                n if n >> 63 == 1 => saved += 1,
                _ => inline += 1,
            }
            assert!(call < 1000);
        }
        assert_eq!(seen.len(), 400, "every key once");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 400);
        assert!(inline > 10 && saved > 10, "{inline} inline, {saved} saved");
        // An inline cursor needs no table: it works on a node that never issued it.
        let mut fresh = Harness::new();
        for i in 0..200 {
            fresh.run(&["SET", &format!("{i:03}"), "x"]);
        }
        let page = array(a.run(&["SCAN", "0", "COUNT", "50"]));
        let Value::Bulk(next) = &page[0] else { panic!() };
        let next = String::from_utf8(next.to_vec()).unwrap();
        let rest = array(fresh.run(&["SCAN", &next, "COUNT", "1000"]));
        assert_eq!(array(rest[1].clone()).len(), 150, "the rest of the keys, none twice");
        err_starting(
            &fresh.run(&["SCAN", &next, "MATCH", "shared:*"]),
            "ERR invalid cursor: it was not issued",
        );
        err_starting(&h_saved_unknown(), "ERR invalid cursor: unknown or expired");
    }

    fn h_saved_unknown() -> Value {
        Harness::new().run(&["SCAN", &((1u64 << 63) | 12345).to_string()])
    }
}
