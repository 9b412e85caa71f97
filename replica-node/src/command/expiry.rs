//! Expiry: `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`, `TTL`, `PTTL`, `EXPIRETIME`,
//! `PEXPIRETIME`, `PERSIST`, and the deadline options that `SET`, `SETEX`, `PSETEX` and `GETEX`
//! share.
//!
//! A deadline is part of the key's LWW entry: an absolute wall-clock time written with the
//! value, so every replica agrees on when the key expires. Setting or removing a deadline
//! writes the value again with a new timestamp; it resolves against other writes of the key
//! by timestamp like any write (an `EXPIRE` on one server racing a `SET` on another: the later
//! one wins everywhere). A key past its deadline reads as absent on every actor; actor 0 of
//! each node then turns it into a tombstone, which every server collects like any delete, so
//! an older write of the key never comes back.

use super::{Ctx, parse_int};

/// A deadline option as a command names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    /// `EX seconds`: relative, in seconds.
    Seconds,
    /// `PX milliseconds`: relative, in milliseconds.
    Millis,
    /// `EXAT unix-seconds`: absolute, in seconds.
    AtSeconds,
    /// `PXAT unix-milliseconds`: absolute, in milliseconds.
    AtMillis,
}

impl Unit {
    /// The option called `name`, if it is one.
    pub(super) fn parse(name: &[u8]) -> Option<Unit> {
        [("EX", Unit::Seconds), ("PX", Unit::Millis), ("EXAT", Unit::AtSeconds), ("PXAT", Unit::AtMillis)]
            .into_iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
            .map(|(_, u)| u)
    }

    /// The deadline (wall-clock ms) that `n` of this unit names at `now_ms`; `None` when it
    /// overflows.
    fn deadline(self, n: i64, now_ms: u64) -> Option<i64> {
        let now = i64::try_from(now_ms).ok()?;
        match self {
            Unit::Seconds => n.checked_mul(1000)?.checked_add(now),
            Unit::Millis => n.checked_add(now),
            Unit::AtSeconds => n.checked_mul(1000),
            Unit::AtMillis => Some(n),
        }
    }
}

/// A deadline an option gives, checked as Redis checks it for `SET`-like commands: the amount
/// must be positive and the deadline must not overflow. `Ok(d)` may lie in the past (an
/// `EXAT` before now), which deletes the key.
pub(super) fn option_deadline(c: &mut Ctx<'_>, unit: Unit, arg: &[u8], command: &str) -> Option<i64> {
    let n = parse_int(c, arg)?;
    match unit.deadline(n, c.now.wall_ms).filter(|_| n > 0) {
        Some(d) => Some(d),
        None => {
            c.error(&format!("ERR invalid expire time in '{command}' command"));
            None
        }
    }
}

/// Writes `key` again with its value and `deadline` (`None` removes the deadline; one not after
/// now deletes the key). Returns whether it wrote; on a write lost to the clock it has replied
/// with the error. A key without a value is left alone (false, no reply).
pub(super) fn rewrite(c: &mut Ctx<'_>, key: &[u8], deadline: Option<i64>) -> bool {
    let Some(value) = c.live(key).and_then(|e| e.value.clone()) else { return false };
    let now = c.now.wall_ms as i64;
    let result = match deadline {
        Some(d) if d <= now => c.write_until(key, None, None),
        Some(d) => c.write_until(key, Some(value), Some(d as u64)),
        None => c.write_until(key, Some(value), None),
    };
    match result {
        Ok(_) => true,
        Err(lost) => {
            c.lost(lost);
            false
        }
    }
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` and its siblings `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`:
/// 1 if the deadline was set (or the key deleted, for a deadline not in the future), 0 if the
/// key has no value or a condition failed. Conditions are checked on this replica.
pub(super) fn expire(c: &mut Ctx<'_>) {
    let args = c.args;
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let unit = match name.as_str() {
        "expire" => Unit::Seconds,
        "pexpire" => Unit::Millis,
        "expireat" => Unit::AtSeconds,
        _ => Unit::AtMillis,
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        let is = |n: &str| opt.eq_ignore_ascii_case(n.as_bytes());
        if is("NX") {
            nx = true;
        } else if is("XX") {
            xx = true;
        } else if is("GT") {
            gt = true;
        } else if is("LT") {
            lt = true;
        } else {
            return c.error(&format!("ERR Unsupported option {}", String::from_utf8_lossy(opt)));
        }
    }
    if nx && (xx || gt || lt) {
        return c.error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return c.error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(n) = parse_int(c, &args[2]) else { return };
    let Some(deadline) = unit.deadline(n, c.now.wall_ms) else {
        return c.error(&format!("ERR invalid expire time in '{name}' command"));
    };
    let key = &args[1];
    let Some(current) = c.live(key).map(|e| e.deadline()) else {
        return c.integer(0);
    };
    // No deadline counts as an infinite one for GT and LT, as in Redis.
    let holds = match current {
        None => !xx && !gt,
        Some(cur) => !nx && (!gt || deadline > cur as i64) && (!lt || deadline < cur as i64),
    };
    if !holds {
        return c.integer(0);
    }
    if rewrite(c, key, Some(deadline)) {
        c.integer(1);
    }
}

/// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: -2 for a key without a value, -1 for one
/// without a deadline, else the time left (rounded to the nearest second for `TTL`, as Redis
/// does) or the deadline.
pub(super) fn ttl(c: &mut Ctx<'_>) {
    let name = String::from_utf8_lossy(&c.args[0]).to_ascii_lowercase();
    let now = c.now.wall_ms;
    let reply = match c.live(&c.args[1]).map(|e| e.deadline()) {
        None => -2,
        Some(None) => -1,
        Some(Some(d)) => match name.as_str() {
            "ttl" => ((d - now + 500) / 1000) as i64,
            "pttl" => (d - now) as i64,
            "expiretime" => (d / 1000) as i64,
            _ => d as i64,
        },
    };
    c.integer(reply);
}

/// `PERSIST key`: 1 if the key had a deadline and now has none.
pub(super) fn persist(c: &mut Ctx<'_>) {
    let key = &c.args[1];
    if c.live(key).and_then(|e| e.deadline()).is_none() {
        return c.integer(0);
    }
    if rewrite(c, key, None) {
        c.integer(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    /// Runs `cmd` `ms` milliseconds of the harness clock later.
    fn later(h: &mut Harness, ms: u64, cmd: &[&str]) -> Value {
        h.ms += ms;
        h.run(cmd)
    }

    #[test]
    fn expire_ttl_persist() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(-2));
        assert_eq!(h.run(&["EXPIRE", "k", "10"]), Value::Integer(0), "no key, no deadline");
        h.run(&["SET", "k", "v"]);
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(-1));
        assert_eq!(h.run(&["EXPIRE", "k", "10"]), Value::Integer(1));
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(10));
        let Value::Integer(pttl) = h.run(&["PTTL", "k"]) else { panic!() };
        assert!((9_990..=10_000).contains(&pttl), "{pttl}");
        assert_eq!(h.run(&["GET", "k"]), bulk("v"), "the value is unchanged");
        assert_eq!(h.run(&["PERSIST", "k"]), Value::Integer(1));
        assert_eq!(h.run(&["PERSIST", "k"]), Value::Integer(0));
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(-1));
        // PEXPIRE, then the key is gone at its deadline, on every read.
        assert_eq!(h.run(&["PEXPIRE", "k", "50"]), Value::Integer(1));
        assert_eq!(later(&mut h, 40, &["GET", "k"]), bulk("v"));
        for cmd in [
            &["GET", "k"][..],
            &["MGET", "k"],
            &["EXISTS", "k"],
            &["TYPE", "k"],
            &["STRLEN", "k"],
            &["TTL", "k"],
        ] {
            let reply = later(&mut h, 10, cmd);
            assert!(
                matches!(reply, Value::Nil | Value::Integer(0) | Value::Integer(-2))
                    || reply == Value::Simple("none".into())
                    || reply == Value::Array(vec![Value::Nil]),
                "{cmd:?}: {reply:?}"
            );
        }
        assert_eq!(h.run(&["KEYS", "*"]), Value::Array(vec![]));
        assert_eq!(h.run(&["LIST", ""]), Value::Array(vec![]));
        assert_eq!(h.run(&["SETNX", "k", "again"]), Value::Integer(1), "an expired key has no value");
    }

    #[test]
    fn expire_conditions_and_absolute_deadlines() {
        let mut h = Harness::new();
        h.run(&["SET", "k", "v"]);
        assert_eq!(h.run(&["EXPIRE", "k", "100", "XX"]), Value::Integer(0), "no deadline yet");
        assert_eq!(h.run(&["EXPIRE", "k", "100", "GT"]), Value::Integer(0), "none is infinite");
        assert_eq!(h.run(&["EXPIRE", "k", "100", "LT"]), Value::Integer(1));
        assert_eq!(h.run(&["EXPIRE", "k", "50", "NX"]), Value::Integer(0));
        assert_eq!(h.run(&["EXPIRE", "k", "50", "GT"]), Value::Integer(0));
        assert_eq!(h.run(&["EXPIRE", "k", "200", "GT"]), Value::Integer(1));
        assert_eq!(h.run(&["TTL", "k"]), Value::Integer(200));
        err_starting(&h.run(&["EXPIRE", "k", "5", "NX", "XX"]), "ERR NX and XX, GT or LT");
        err_starting(&h.run(&["EXPIRE", "k", "5", "GT", "LT"]), "ERR GT and LT options");
        err_starting(&h.run(&["EXPIRE", "k", "5", "SOON"]), "ERR Unsupported option SOON");
        err_starting(&h.run(&["EXPIRE", "k", "x"]), "ERR value is not an integer");
        err_starting(&h.run(&["EXPIRE", "k", &i64::MAX.to_string()]), "ERR invalid expire time in 'expire'");
        let now_s = 1_700_000_000u64;
        assert_eq!(h.run(&["EXPIREAT", "k", &(now_s + 60).to_string()]), Value::Integer(1));
        let Value::Integer(t) = h.run(&["EXPIRETIME", "k"]) else { panic!() };
        assert_eq!(t as u64, now_s + 60);
        assert_eq!(h.run(&["PEXPIREAT", "k", &((now_s + 70) * 1000).to_string()]), Value::Integer(1));
        assert_eq!(h.run(&["PEXPIRETIME", "k"]), Value::Integer(((now_s + 70) * 1000) as i64));
        // A deadline not in the future deletes the key (a tombstone), as in Redis.
        assert_eq!(h.run(&["EXPIRE", "k", "-1"]), Value::Integer(1));
        assert_eq!(h.run(&["EXISTS", "k"]), Value::Integer(0));
        assert_eq!(h.actor.replica.map().tombstones(), 1);
        assert_eq!(h.run(&["EXPIRETIME", "k"]), Value::Integer(-2));
    }

    #[test]
    fn an_expired_entry_is_swept_into_a_tombstone_that_goes_out_like_a_write() {
        let mut h = Harness::new();
        h.run(&["SET", "a", "1", "PX", "10"]);
        h.run(&["SET", "b", "2"]);
        let _ = h.actor.replica.poll_sync_final(h.now());
        assert_eq!(h.actor.replica.map().expiring(), 1);
        let info = |h: &mut Harness| {
            let Value::Bulk(text) = h.run(&["INFO", "keyspace"]) else { panic!() };
            String::from_utf8(text.to_vec()).unwrap()
        };
        assert!(info(&mut h).contains("db0:keys=2,expires=1,"), "{}", info(&mut h));
        h.ms += 20;
        assert_eq!(h.actor.replica.reclaim_expired(h.now(), 100), 1);
        assert_eq!(h.actor.replica.map().expiring(), 0);
        assert_eq!(h.actor.replica.map().tombstones(), 1);
        let batch = h.actor.replica.poll_sync_final(h.now()).expect("the tombstone goes out");
        assert_eq!((batch.delta.entry_count(), batch.delta.tombstones()), (1, 1));
        assert!(info(&mut h).contains("db0:keys=1,expires=0,"), "{}", info(&mut h));
    }
}
