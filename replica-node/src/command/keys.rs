//! Commands on single keys: `GET`, `SET`, `DEL`/`UNLINK`, `MGET`, `EXISTS`, `DBSIZE`.

use bytes::Bytes;
use replica_core::MAX_VALUE;

use super::{Ctx, key_ok};

pub(super) fn get(c: &mut Ctx<'_>) {
    match c.actor.replica.map().get(&c.args[1][..]) {
        Some(v) => c.out.value(v),
        None => c.null(),
    }
}

pub(super) fn set(c: &mut Ctx<'_>) {
    let (key, value) = (&c.args[1], &c.args[2]);
    if c.args.len() > 3 {
        return c.error("ERR syntax error: SET takes only a key and a value (no options)");
    }
    if !key_ok(c, key) {
        return;
    }
    if value.len() > MAX_VALUE {
        return c.error(&format!("ERR value too large: {} bytes (the limit is {MAX_VALUE})", value.len()));
    }
    // Copy out of the connection's read buffer: a slice of it would pin the whole buffer for
    // as long as the value is stored.
    c.actor.replica.write(Bytes::copy_from_slice(key), Some(Bytes::copy_from_slice(value)), c.now);
    c.ok();
}

pub(super) fn del(c: &mut Ctx<'_>) {
    let keys = &c.args[1..];
    if let Some(k) = keys.iter().find(|k| k.len() > replica_core::MAX_KEY) {
        key_ok(c, k);
        return;
    }
    let mut existed = 0;
    for k in keys {
        existed += i64::from(c.actor.replica.delete(Bytes::copy_from_slice(k), c.now));
    }
    c.integer(existed);
}

/// Values are shared with the store, not copied (see [`super::ReplyBuf`]); past the client
/// output limit the buffer stops taking them and the connection is closed.
pub(super) fn mget(c: &mut Ctx<'_>) {
    c.array_header(c.args.len() - 1);
    for k in &c.args[1..] {
        if c.out.over_limit() {
            return;
        }
        match c.actor.replica.map().get(&k[..]) {
            Some(v) => c.out.value(v),
            None => resp::null(c.out.raw(), c.session.proto),
        }
    }
}

pub(super) fn exists(c: &mut Ctx<'_>) {
    let n = c.args[1..].iter().filter(|k| c.replica().map().contains_key(&k[..])).count();
    c.integer(n as i64);
}

pub(super) fn dbsize(c: &mut Ctx<'_>) {
    let n = c.replica().map().len();
    c.integer(n as i64);
}

#[cfg(test)]
mod tests {
    use replica_core::{MAX_KEY, MAX_VALUE};

    use super::super::Flow;
    use super::super::testutil::*;

    #[test]
    fn get_set_del_mget_exists_dbsize() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["GET", "k"]), Value::Nil);
        assert_eq!(h.run(&["set", "k", "v1"]), ok());
        assert_eq!(h.run(&["SET", "k", "v2"]), ok());
        assert_eq!(h.run(&["get", "k"]), bulk("v2"));
        assert_eq!(h.run(&["SET", "j", "w"]), ok());
        assert_eq!(h.run(&["MGET", "k", "nope", "j"]), Value::Array(vec![bulk("v2"), Value::Nil, bulk("w")]));
        assert_eq!(h.run(&["EXISTS", "k", "k", "nope", "j"]), Value::Integer(3), "duplicates count");
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(2));
        assert_eq!(h.run(&["DEL", "k", "nope", "k"]), Value::Integer(1), "only keys that existed count");
        assert_eq!(h.run(&["UNLINK", "j"]), Value::Integer(1));
        assert_eq!(h.run(&["GET", "k"]), Value::Nil);
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0));
        err_starting(&h.run(&["SET", "k", "v", "EX", "5"]), "ERR syntax error");
        assert_eq!(h.run(&["GET", "k"]), Value::Nil, "a refused SET writes nothing");
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
