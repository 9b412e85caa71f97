//! Server commands: `TIME`, `ROLE`, `MEMORY USAGE`.

use super::{Ctx, help_reply, parse_int, unknown_subcommand};

pub(super) fn time(c: &mut Ctx<'_>) {
    // The clock the replica stamps writes with (moved up when this server's is behind its
    // peers'), at millisecond precision.
    let ms = c.now.wall_ms;
    c.array_header(2);
    c.out.bulk((ms / 1000).to_string().as_bytes());
    c.out.bulk(((ms % 1000) * 1000).to_string().as_bytes());
}

/// `ROLE`: every server of the cluster takes writes, so each is a master with no replicas in
/// Redis's sense (its peers are masters too, listed by `CLUSTER NODES`).
pub(super) fn role(c: &mut Ctx<'_>) {
    c.array_header(3);
    c.out.bulk(b"master");
    c.integer(0);
    c.array_header(0);
}

/// Bytes an entry costs beyond its key and value: its place in the tree (node slot, inline key
/// head), its timestamp and the buffer headers. An estimate, as Redis's own is.
pub const ENTRY_OVERHEAD: usize = 96;

/// The approximate memory of one key: its key and value bytes, plus [`ENTRY_OVERHEAD`]. Every
/// actor holds a replica, but keys and values are shared between them; this is one replica's
/// share.
pub fn usage(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

pub(super) fn memory(c: &mut Ctx<'_>) {
    let args = c.args;
    let sub = &args[1];
    if sub.eq_ignore_ascii_case(b"USAGE") && args.len() >= 3 {
        // `SAMPLES n` only matters for aggregate types in Redis; accepted and ignored.
        match &args[3..] {
            [] => {}
            [opt, n] if opt.eq_ignore_ascii_case(b"SAMPLES") => {
                if parse_int(c, n).is_none() {
                    return;
                }
            }
            _ => return c.error("ERR syntax error"),
        }
        let key = &args[2];
        match c.live(key).and_then(|e| e.value.as_ref()) {
            Some(v) => {
                let n = usage(key, v);
                c.integer(n as i64);
            }
            None => c.null(),
        }
    } else if sub.eq_ignore_ascii_case(b"HELP") {
        let lines = [
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return the approximate memory usage in bytes of the key and its value.",
            "(INFO memory reports the process's figures.)",
        ];
        help_reply(c, &lines);
    } else {
        unknown_subcommand(c, "MEMORY", sub);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::ENTRY_OVERHEAD;

    #[test]
    fn time_role_memory() {
        let mut h = Harness::new();
        let time = array(h.run(&["TIME"]));
        assert_eq!(time.len(), 2);
        let Value::Bulk(secs) = &time[0] else { panic!() };
        assert_eq!(&secs[..], b"1700000000", "the harness clock");
        assert_eq!(
            h.run(&["ROLE"]),
            Value::Array(vec![bulk("master"), Value::Integer(0), Value::Array(vec![])])
        );
        h.run(&["SET", "key", "value"]);
        assert_eq!(h.run(&["MEMORY", "USAGE", "key"]), Value::Integer((3 + 5 + ENTRY_OVERHEAD) as i64));
        assert_eq!(
            h.run(&["memory", "usage", "key", "SAMPLES", "0"]),
            Value::Integer((8 + ENTRY_OVERHEAD) as i64)
        );
        assert_eq!(h.run(&["MEMORY", "USAGE", "nope"]), Value::Nil);
        err_starting(&h.run(&["MEMORY", "USAGE", "key", "BOGUS"]), "ERR syntax error");
        err_starting(&h.run(&["MEMORY", "STATS"]), "ERR unknown subcommand");
        assert_eq!(array(h.run(&["MEMORY", "HELP"])).len(), 4);
    }
}
