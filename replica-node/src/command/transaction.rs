//! Transactions as Redis clients use them: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
//!
//! After `MULTI`, commands are checked (a known name, the arity, authentication) and queued;
//! `EXEC` runs them one after the other in one call on the actor's thread, so no other
//! client's command runs in between, and their writes enter the replica's delta buffer
//! together: the buffer is flushed only between rounds of the actor's loop, never inside a
//! command, so the writes of one `EXEC` leave in one delta and every other actor and server
//! merges them at once. A queued command that was refused makes `EXEC` fail with `EXECABORT`
//! and run nothing; a command that fails while running (a wrong argument) gets its error in
//! `EXEC`'s array and the others still run, as in Redis.
//!
//! `WATCH key` makes the next `EXEC` run nothing (and answer a null array) if the key changed
//! *on this replica* since: a client's write, or a write of another server merged here. A
//! write made elsewhere that has not arrived yet is not seen: like every condition in this
//! store, `WATCH` is checked on the local replica, not cluster-wide.

use bytes::Bytes;
use lww_crdt::{BytesMap, Timestamp};

use super::{ActorState, Ctx, Flag, Flow, Mode, ReplyBuf, Session, check, dispatch, lookup, write_refusal};

/// Most bytes of arguments one transaction may queue: a client cannot make the node hold more
/// than this for it between `MULTI` and `EXEC`.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of keys one connection may watch.
pub const MAX_WATCHED_BYTES: usize = 16 * 1024 * 1024;

/// The commands queued since `MULTI`.
#[derive(Debug, Default)]
pub struct Transaction {
    queued: Vec<Vec<Bytes>>,
    bytes: usize,
    /// A command was refused while queueing: `EXEC` will run nothing.
    failed: bool,
}

impl Transaction {
    /// How many commands are queued.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.queued.len()
    }
}

/// The keys a connection watches, each with the state it had when watched.
#[derive(Debug, Default)]
pub struct Watched {
    keys: Vec<(Bytes, Stamp)>,
    bytes: usize,
}

/// What identifies the state of a key on the replica: the timestamp of its entry (a value or a
/// tombstone), which every write and every merge that changes the key replaces, and whether it
/// holds a value (so a key that expires between `WATCH` and `EXEC` counts as changed, as in
/// Redis).
type Stamp = (Option<Timestamp>, bool);

impl Watched {
    /// Whether no key is watched.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a watched key changed on `map` since it was watched, at `now_ms`.
    fn changed(&self, map: &BytesMap, now_ms: u64) -> bool {
        self.keys.iter().any(|(k, s)| stamp(map, k, now_ms) != *s)
    }
}

/// The [`Stamp`] of `key` at `now_ms`.
fn stamp(map: &BytesMap, key: &[u8], now_ms: u64) -> Stamp {
    let e = map.get_entry(key);
    (e.map(|e| e.ts), e.is_some_and(|e| e.is_live_at(now_ms)))
}

/// The commands that run at once even inside a transaction (they manage it, or the
/// connection).
pub(super) fn runs_inside_multi(name: &[u8]) -> bool {
    ["exec", "discard", "multi", "watch", "quit", "reset"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Queues a command of an open transaction, or refuses it (and dooms the transaction).
pub(super) fn queue(actor: &ActorState, session: &mut Session, args: &[Bytes], out: &mut ReplyBuf) {
    let checked = check(actor, session, args);
    let Some(tx) = session.multi.as_mut() else { return };
    match checked {
        Err(msg) => {
            tx.failed = true;
            resp::error(out.raw(), &msg);
        }
        Ok(_) => {
            let size: usize = args.iter().map(|a| a.len() + 16).sum();
            if tx.bytes + size > MAX_QUEUED_BYTES {
                // Drop what is queued: EXEC will fail anyway, and the memory is the point.
                *tx = Transaction { failed: true, ..Transaction::default() };
                resp::error(
                    out.raw(),
                    &format!("ERR transaction too large: more than {} MiB queued", MAX_QUEUED_BYTES >> 20),
                );
                return;
            }
            tx.bytes += size;
            // The arguments are slices of the connection's read buffer; copied, they do not
            // pin it while queued.
            tx.queued.push(args.iter().map(|a| Bytes::copy_from_slice(a)).collect());
            resp::simple(out.raw(), "QUEUED");
        }
    }
}

pub(super) fn multi(c: &mut Ctx<'_>) {
    if c.session.multi.is_some() {
        return c.error("ERR MULTI calls can not be nested");
    }
    c.session.multi = Some(Transaction::default());
    c.ok();
}

pub(super) fn discard(c: &mut Ctx<'_>) {
    if c.session.multi.take().is_none() {
        return c.error("ERR DISCARD without MULTI");
    }
    c.session.watched = Watched::default();
    c.ok();
}

pub(super) fn exec(c: &mut Ctx<'_>) {
    let Some(tx) = c.session.multi.take() else {
        return c.error("ERR EXEC without MULTI");
    };
    let watched = std::mem::take(&mut c.session.watched);
    if tx.failed {
        return c.error("EXECABORT Transaction discarded because of previous errors.");
    }
    if watched.changed(c.actor.replica.map(), c.now.wall_ms) {
        return resp::null_array(c.out.raw(), c.session.proto);
    }
    let writes = tx.queued.iter().any(|args| lookup(&args[0]).is_some_and(|s| s.has(Flag::Write)));
    // Checked once for the whole transaction: either every write may run or none does.
    if writes && let Some(why) = write_refusal(c.actor) {
        return c.error(&format!("EXECABORT Transaction discarded because of: {why}"));
    }
    c.array_header(tx.queued.len());
    for args in &tx.queued {
        if dispatch(c.actor, c.session, args, c.now, c.out, Mode::InExec) == Flow::Close {
            c.flow = Flow::Close;
        }
    }
}

pub(super) fn watch(c: &mut Ctx<'_>) {
    if c.session.multi.is_some() {
        return c.error("ERR WATCH inside MULTI is not allowed");
    }
    let args = c.args;
    let added: usize = args[1..].iter().map(|k| k.len() + 16).sum();
    if c.session.watched.bytes + added > MAX_WATCHED_BYTES {
        return c.error(&format!("ERR too many watched keys: more than {} MiB", MAX_WATCHED_BYTES >> 20));
    }
    for k in &args[1..] {
        let s = stamp(c.actor.replica.map(), k, c.now.wall_ms);
        c.session.watched.keys.push((Bytes::copy_from_slice(k), s));
    }
    c.session.watched.bytes += added;
    c.ok();
}

pub(super) fn unwatch(c: &mut Ctx<'_>) {
    c.session.watched = Watched::default();
    c.ok();
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn exec_runs_the_queued_commands_and_answers_each() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["MULTI"]), ok());
        assert_eq!(h.run(&["SET", "a", "1"]), Value::Simple("QUEUED".into()));
        assert_eq!(h.run(&["SET", "b", "2"]), Value::Simple("QUEUED".into()));
        assert_eq!(h.run(&["GET", "a"]), Value::Simple("QUEUED".into()));
        assert_eq!(h.run(&["GETRANGE", "a", "x", "1"]), Value::Simple("QUEUED".into()));
        assert_eq!(h.actor.replica.map().len(), 0, "nothing ran yet");
        let Value::Array(replies) = h.run(&["EXEC"]) else { panic!("EXEC answers an array") };
        assert_eq!(replies[..3], [ok(), ok(), bulk("1")]);
        err_starting(&replies[3], "ERR value is not an integer");
        // Both writes leave in one delta.
        let batch = h.actor.replica.poll_sync_final(h.now()).unwrap();
        assert_eq!(batch.delta.entry_count(), 2);
        err_starting(&h.run(&["EXEC"]), "ERR EXEC without MULTI");
        err_starting(&h.run(&["DISCARD"]), "ERR DISCARD without MULTI");
        assert_eq!(h.run(&["MULTI"]), ok());
        assert_eq!(h.run(&["EXEC"]), Value::Array(vec![]), "an empty transaction");
    }

    #[test]
    fn a_refused_command_dooms_the_transaction() {
        let mut h = Harness::new();
        h.run(&["MULTI"]);
        assert_eq!(h.run(&["SET", "a", "1"]), Value::Simple("QUEUED".into()));
        err_starting(&h.run(&["GET"]), "ERR wrong number of arguments");
        err_starting(&h.run(&["NOSUCH"]), "ERR unknown command");
        err_starting(&h.run(&["MULTI"]), "ERR MULTI calls can not be nested");
        err_starting(&h.run(&["WATCH", "a"]), "ERR WATCH inside MULTI is not allowed");
        assert_eq!(
            h.run(&["EXEC"]),
            Value::Error("EXECABORT Transaction discarded because of previous errors.".into())
        );
        assert_eq!(h.run(&["GET", "a"]), Value::Nil, "nothing ran");
        h.run(&["MULTI"]);
        h.run(&["SET", "a", "1"]);
        assert_eq!(h.run(&["DISCARD"]), ok());
        assert_eq!(h.run(&["GET", "a"]), Value::Nil, "discarded");
        assert!(h.session.multi.is_none());
    }

    #[test]
    fn watch_aborts_exec_when_the_key_changed_on_this_replica() {
        let mut h = Harness::new();
        h.run(&["SET", "k", "1"]);
        assert_eq!(h.run(&["WATCH", "k", "absent"]), ok());
        h.run(&["MULTI"]);
        h.run(&["SET", "k", "2"]);
        assert_eq!(h.run(&["EXEC"]), Value::Array(vec![ok()]), "unchanged: runs");
        // Changed by another client (or a merged write) between WATCH and EXEC: nothing runs.
        h.run(&["WATCH", "k"]);
        h.run(&["SET", "k", "3"]);
        h.run(&["MULTI"]);
        h.run(&["SET", "k", "4"]);
        assert_eq!(h.run(&["EXEC"]), Value::Nil, "a null array");
        assert_eq!(h.run(&["GET", "k"]), bulk("3"));
        // A key that appears counts as a change, so does a delete; UNWATCH forgets.
        h.run(&["WATCH", "new"]);
        h.run(&["SET", "new", "x"]);
        h.run(&["MULTI"]);
        assert_eq!(h.run(&["EXEC"]), Value::Nil);
        h.run(&["WATCH", "new"]);
        h.run(&["SET", "new", "y"]);
        assert_eq!(h.run(&["UNWATCH"]), ok());
        h.run(&["MULTI"]);
        assert_eq!(h.run(&["EXEC"]), Value::Array(vec![]));
        // EXEC forgets the watched keys either way.
        h.run(&["WATCH", "k"]);
        h.run(&["MULTI"]);
        h.run(&["EXEC"]);
        h.run(&["SET", "k", "5"]);
        h.run(&["MULTI"]);
        assert_eq!(h.run(&["EXEC"]), Value::Array(vec![]));
        // RESP3: the null is `_`.
        h.run(&["HELLO", "3"]);
        h.run(&["WATCH", "k"]);
        h.run(&["DEL", "k"]);
        h.run(&["MULTI"]);
        let (mut out, _) = h.run_raw(&[b"EXEC"], usize::MAX);
        assert_eq!(out.take_all(), b"_\r\n");
    }

    #[test]
    fn exec_refuses_every_write_or_none_for_the_disk_and_the_clock() {
        let mut h = Harness::new();
        h.run(&["MULTI"]);
        h.run(&["SET", "a", "1"]);
        h.run(&["GET", "a"]);
        h.actor.info.stats.clock_ahead_ms.store(700, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            h.run(&["EXEC"]),
            Value::Error(
                "EXECABORT Transaction discarded because of: CLOCKSKEW clock ahead of the cluster by 700 ms"
                    .into()
            )
        );
        assert!(h.session.multi.is_none(), "discarded");
        // A read-only transaction still runs.
        h.run(&["MULTI"]);
        h.run(&["GET", "a"]);
        assert_eq!(h.run(&["EXEC"]), Value::Array(vec![Value::Nil]));
    }

    #[test]
    fn queued_bytes_are_bounded() {
        let mut h = Harness::new();
        h.run(&["MULTI"]);
        let value = vec![b'x'; 8 * 1024 * 1024];
        let mut refused = false;
        for _ in 0..10 {
            let (reply, _) = h.run_flow(&[b"SET", b"k", &value]);
            if let Value::Error(e) = reply {
                assert!(e.starts_with("ERR transaction too large"), "{e}");
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert_eq!(h.session.multi.as_ref().map(|t| t.len()), Some(0), "the queue was dropped");
        err_starting(&h.run(&["EXEC"]), "EXECABORT");
    }
}
