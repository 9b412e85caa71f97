//! Client commands: parse the arguments, apply them to the replica, write the reply.
//!
//! [`COMMANDS`] is the one place that names every command: its arity, its flags, its help text
//! and its handler. Dispatch looks commands up there, and so do `COMMAND`, `COMMAND COUNT`,
//! `COMMAND INFO` and `COMMAND DOCS`, so what the server says it understands is what it runs.
//! [`refused::REFUSED`] names the Redis commands this store deliberately does not run, each with the
//! reason its error gives. The handlers live in files by family: [`strings`] (GET SET MSET
//! GETDEL SETEX GETEX ...), [`keys`] (DEL EXISTS TYPE RANDOMKEY FLUSHALL ...), [`expiry`]
//! (EXPIRE TTL PERSIST ...), [`listing`] (LIST KEYS SCAN),
//! [`transaction`] (MULTI EXEC DISCARD WATCH UNWATCH), [`connection`] (PING ECHO QUIT HELLO
//! AUTH SELECT RESET COMMAND CONFIG), [`client`] (CLIENT and the node's list of connections),
//! [`server`] (TIME ROLE MEMORY), [`info`] (INFO) and [`cluster`] (CLUSTER NODES, MYID,
//! FORGET).
//!
//! Every command is answered by exactly one reply written into the connection's [`ReplyBuf`];
//! nothing here does IO, so the whole command set is testable without sockets.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{Entry, Timestamp};
use replica_core::replica::Lost;
use replica_core::{MAX_KEY, MAX_VALUE, Now, Replica};
use resp::Protocol;

use crate::runtime::ActorMsg;
use crate::runtime::mailbox::Address;
use crate::stats::NodeStats;

mod client;
mod cluster;
mod connection;
mod cursors;
mod expiry;
mod info;
mod keys;
mod listing;
mod refused;
mod reply;
mod server;
mod strings;
mod table;
#[cfg(test)]
pub(crate) mod testutil;
mod transaction;

pub use client::{ClientRecord, ClientRegistry};
pub use connection::Password;
pub use cursors::ScanCursors;
pub use reply::ReplyBuf;
use table::find;
pub use table::{COMMANDS, Flag, KeyArgs, Spec, lookup};
use transaction::{Transaction, Watched};

/// The server version `HELLO` and `INFO` report.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Per-connection state that commands may read or change.
#[derive(Debug)]
pub struct Session {
    /// Connection id, unique on the node (for `CLIENT ID`, `CLIENT KILL ID`).
    pub id: u64,
    /// Reply protocol chosen with `HELLO`.
    pub proto: Protocol,
    /// Name set with `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Whether the client gave the password (`AUTH`, `HELLO ... AUTH`). Consulted only when
    /// the node has one.
    pub authenticated: bool,
    /// The commands queued since `MULTI`, while a transaction is open.
    pub multi: Option<Transaction>,
    /// The keys `WATCH`ed for the next `EXEC`.
    pub watched: Watched,
    /// The connection's entry in the node's list of clients (`CLIENT LIST`), if it has one.
    pub record: Option<Arc<ClientRecord>>,
}

impl Session {
    /// A fresh RESP2 session that has not authenticated.
    pub fn new(id: u64) -> Self {
        Session {
            id,
            proto: Protocol::Resp2,
            name: None,
            authenticated: false,
            multi: None,
            watched: Watched::default(),
            record: None,
        }
    }

    /// A fresh session listed in the node's clients as `record`.
    pub fn listed(record: Arc<ClientRecord>) -> Self {
        let mut s = Session::new(record.id);
        s.record = Some(record);
        s
    }

    /// The protocol version as clients name it (2 or 3).
    pub fn resp_version(&self) -> u8 {
        match self.proto {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// Send the replies written so far, then close (QUIT, CLIENT KILL of itself).
    Close,
}

/// Counters an actor keeps for `INFO` without touching shared memory on every command; the
/// query loop publishes them to the node's [`NodeStats`] once per round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands executed.
    pub commands: u64,
    /// Reads of a key that found a value.
    pub hits: u64,
    /// Reads of a key that found none.
    pub misses: u64,
}

/// What one query actor's commands act on: its replica, the node facts it reports and the
/// password clients must give.
#[derive(Debug)]
pub struct ActorState {
    /// The actor's replica state machine.
    pub replica: Replica,
    /// Node facts for `INFO` and `HELLO`.
    pub info: NodeInfo,
    /// The password every client must give before any other command (`None`: no password).
    pub password: Option<Password>,
    /// This actor's counters.
    pub counters: Counters,
    /// The counters as last published to [`NodeInfo::stats`].
    pub published: Counters,
    /// State for picking random keys (`RANDOMKEY`): a xorshift generator seeded per actor.
    pub rng: u64,
}

impl ActorState {
    /// The state of an actor serving `replica`.
    pub fn new(replica: Replica, info: NodeInfo, password: Option<Password>) -> Self {
        let rng = 0x9E37_79B9_7F4A_7C15 ^ (replica.index() as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ActorState {
            replica,
            info,
            password,
            counters: Counters::default(),
            published: Counters::default(),
            rng,
        }
    }

    /// Adds what the counters gained since the last call to the node's figures.
    pub fn publish_counters(&mut self) {
        let (now, before) = (self.counters, self.published);
        if now == before {
            return;
        }
        let stats = &self.info.stats;
        NodeStats::add(&stats.commands_processed, now.commands - before.commands);
        NodeStats::add(&stats.keyspace_hits, now.hits - before.hits);
        NodeStats::add(&stats.keyspace_misses, now.misses - before.misses);
        self.published = now;
    }

    /// A node-wide figure: what the node has published plus what this actor has not yet.
    fn node_figure(&self, published: &std::sync::atomic::AtomicU64, pick: fn(&Counters) -> u64) -> u64 {
        NodeStats::get(published) + pick(&self.counters) - pick(&self.published)
    }
}

/// Facts about the node that `INFO` and `HELLO` report and the replica does not know.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's unique id.
    pub node: String,
    /// Number of query actors on the node.
    pub actors: usize,
    /// Client address of this actor.
    pub client_addr: String,
    /// Peer (QUIC) address of the node.
    pub peer_addr: String,
    /// Monotonic ms at which the node started, for `uptime_in_seconds`.
    pub started_mono_ms: u64,
    /// The whole-node counters, as the drivers publish them.
    pub stats: Arc<NodeStats>,
    /// Most client connections the node accepts (`--maxclients`), for `INFO clients`.
    pub maxclients: usize,
    /// Reads the process's resident memory in bytes (`used_memory_rss`). A function rather than
    /// a read here, so the command set stays free of IO.
    pub rss: fn() -> u64,
    /// Where operators' requests to the gateway go (`CLUSTER FORGET`); `None` without one.
    pub admin: Option<Address<crate::runtime::AdminMsg>>,
    /// Every client connection of the node (`CLIENT LIST`, `CLIENT KILL`).
    pub clients: Arc<ClientRegistry>,
    /// The mailboxes of the node's query actors, by index (`CLIENT KILL` of a connection on
    /// another actor); empty in tests without a runtime.
    pub actor_mail: Vec<Address<ActorMsg>>,
    /// The `SCAN` cursors that could not carry their resume point (see [`cursors`]), shared by
    /// every actor of the node.
    pub scan_cursors: Arc<ScanCursors>,
    /// Whether the node keeps a data directory (`INFO persistence`).
    pub data_dir: bool,
}

/// A command being executed: its arguments, the connection and actor it runs on, where its
/// reply goes.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The arguments, the command name first.
    pub args: &'a [Bytes],
    /// Where the reply goes.
    pub out: &'a mut ReplyBuf,
    /// The connection's session.
    pub session: &'a mut Session,
    /// The actor's state.
    pub actor: &'a mut ActorState,
    /// The time of the request.
    pub now: Now,
    /// What the connection does afterwards.
    pub flow: Flow,
}

impl Ctx<'_> {
    fn error(&mut self, msg: &str) {
        resp::error(self.out.raw(), msg);
    }

    fn ok(&mut self) {
        resp::simple(self.out.raw(), "OK");
    }

    fn null(&mut self) {
        resp::null(self.out.raw(), self.session.proto);
    }

    fn integer(&mut self, n: i64) {
        resp::integer(self.out.raw(), n);
    }

    fn array_header(&mut self, n: usize) {
        resp::array_header(self.out.raw(), n);
    }

    fn map_header(&mut self, n: usize) {
        resp::map_header(self.out.raw(), n, self.session.proto);
    }

    fn replica(&self) -> &Replica {
        &self.actor.replica
    }

    /// The entry of `key` if it holds a value now: not a tombstone, not past its deadline.
    fn live(&self, key: &[u8]) -> Option<&Entry<Bytes>> {
        let now = self.now.wall_ms;
        self.actor.replica.map().get_entry(key).filter(|e| e.is_live_at(now))
    }

    /// Whether `key` holds a value now.
    fn exists(&self, key: &[u8]) -> bool {
        self.live(key).is_some()
    }

    /// The live value of `key` on this replica, counted as a keyspace hit or miss.
    fn read(&mut self, key: &[u8]) -> Option<Bytes> {
        let found = self.live(key).and_then(|e| e.value.clone());
        match found {
            Some(_) => self.actor.counters.hits += 1,
            None => self.actor.counters.misses += 1,
        }
        found
    }

    /// A client write through the replica, the same path for every write command: `Some`
    /// puts, `None` deletes. The value is copied out of the connection's read buffer (a slice
    /// of it would pin the whole buffer for as long as the value is stored).
    fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<Timestamp, Lost> {
        self.write_until(key, value.map(Bytes::copy_from_slice), None)
    }

    /// A client write of a value that expires at `deadline` (wall-clock ms; `None`: never),
    /// through the same path as every write. The value is a stored value (shared) or one the
    /// caller copied out of the read buffer.
    fn write_until(
        &mut self,
        key: &[u8],
        value: Option<Bytes>,
        deadline: Option<u64>,
    ) -> Result<Timestamp, Lost> {
        let key = Bytes::copy_from_slice(key);
        self.actor.replica.write_until(key, value, deadline, self.now)
    }

    /// Replies to a write that lost to an entry stamped ahead of this server's clock.
    fn lost(&mut self, lost: Lost) {
        self.error(&format!(
            "CLOCKSKEW the key holds a write stamped {} ms ahead of this server's clock; this write was not applied",
            lost.newer.wall_ms.saturating_sub(self.now.wall_ms)
        ));
    }
}

/// Whether a command runs on its own or as part of an `EXEC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sent by the client.
    Direct,
    /// Queued in a transaction and run by `EXEC`, which made the checks that apply to the
    /// transaction as a whole (the disk, the clock) once, before its first command.
    InExec,
}

/// Executes one command and appends its reply to `out`.
pub fn execute(
    actor: &mut ActorState,
    session: &mut Session,
    args: &[Bytes],
    now: Now,
    out: &mut ReplyBuf,
) -> Flow {
    actor.counters.commands += 1;
    let Some(name) = args.first() else {
        resp::error(out.raw(), "ERR empty command");
        return Flow::Continue;
    };
    if session.multi.is_some() && !transaction::runs_inside_multi(name) {
        transaction::queue(actor, session, args, out);
        return Flow::Continue;
    }
    dispatch(actor, session, args, now, out, Mode::Direct)
}

/// Looks a command up, checks it may run, and runs it.
fn dispatch(
    actor: &mut ActorState,
    session: &mut Session,
    args: &[Bytes],
    now: Now,
    out: &mut ReplyBuf,
    mode: Mode,
) -> Flow {
    let (index, spec) = match check(actor, session, args) {
        Ok(found) => found,
        Err(msg) => {
            resp::error(out.raw(), &msg);
            return Flow::Continue;
        }
    };
    if mode == Mode::Direct
        && spec.has(Flag::Write)
        && let Some(why) = write_refusal(actor)
    {
        resp::error(out.raw(), &why);
        return Flow::Continue;
    }
    if let Some(record) = &session.record {
        record.touch(now.mono_ms, index);
    }
    let mut ctx = Ctx { args, out, session, actor, now, flow: Flow::Continue };
    (spec.run)(&mut ctx);
    ctx.flow
}

/// What `dispatch` checks before a command runs (and `MULTI` before it queues one), in
/// Redis's order: an unknown command and a wrong arity are reported before a missing
/// password.
fn check(actor: &ActorState, session: &Session, args: &[Bytes]) -> Result<(usize, &'static Spec), String> {
    let name = &args[0];
    let Some((index, spec)) = find(name) else {
        if let Some(why) = refused::reason(name) {
            return Err(why);
        }
        let mut msg = format!("ERR unknown command '{}', with args beginning with:", printable(name, 64));
        for a in args.iter().skip(1).take(8) {
            let _ = write!(msg, " '{}'", printable(a, 64));
        }
        return Err(msg);
    };
    if !(spec.min_args..=spec.max_args).contains(&args.len()) {
        return Err(format!("ERR wrong number of arguments for '{}' command", spec.name));
    }
    if actor.password.is_some() && !session.authenticated && !spec.has(Flag::NoAuth) {
        return Err("NOAUTH Authentication required.".into());
    }
    Ok((index, spec))
}

/// Why client writes are refused right now, if they are: the disk refuses the log (an
/// acknowledged write could be lost, design 4.3), or this server's clock is too far from its
/// peers' (design 4.9). Reads are still served.
fn write_refusal(actor: &ActorState) -> Option<String> {
    if let Some(reason) = actor.info.stats.misconf() {
        return Some(format!("MISCONF {reason}"));
    }
    actor.info.stats.clock_refusal().map(|why| format!("CLOCKSKEW {why}"))
}

/// A short, printable rendering of client bytes for error messages.
fn printable(b: &[u8], max: usize) -> String {
    let s: String = b.iter().take(max).flat_map(|&c| std::ascii::escape_default(c)).map(char::from).collect();
    if b.len() > max { format!("{s}...") } else { s }
}

/// The reply to `<COMMAND> HELP`: its lines as an array of simple strings.
fn help_reply(c: &mut Ctx<'_>, lines: &[&str]) {
    c.array_header(lines.len());
    for l in lines {
        resp::simple(c.out.raw(), l);
    }
}

/// Redis's error for a subcommand of `command` that does not exist or has the wrong arity.
fn unknown_subcommand(c: &mut Ctx<'_>, command: &str, sub: &[u8]) {
    c.error(&format!(
        "ERR unknown subcommand or wrong number of arguments for '{}|{}'. Try {} HELP.",
        command.to_ascii_lowercase(),
        printable(sub, 32),
        command
    ));
}

/// Whether `key` is within the key limit; replies with an error otherwise.
fn key_ok(c: &mut Ctx<'_>, key: &[u8]) -> bool {
    if key.len() > MAX_KEY {
        c.error(&format!("ERR key too large: {} bytes (the limit is {MAX_KEY})", key.len()));
        return false;
    }
    true
}

/// Whether `value` is within the value limit; replies with an error otherwise.
fn value_ok(c: &mut Ctx<'_>, value: &[u8]) -> bool {
    if value.len() > MAX_VALUE {
        c.error(&format!("ERR value too large: {} bytes (the limit is {MAX_VALUE})", value.len()));
        return false;
    }
    true
}

/// An integer argument, or an error reply in Redis's words.
fn parse_int(c: &mut Ctx<'_>, arg: &[u8]) -> Option<i64> {
    let n = std::str::from_utf8(arg).ok().and_then(|s| s.parse::<i64>().ok());
    if n.is_none() {
        c.error("ERR value is not an integer or out of range");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn wrong_arity_and_unknown_commands() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["GET"]), Value::Error("ERR wrong number of arguments for 'get' command".into()));
        assert_eq!(
            h.run(&["GET", "a", "b"]),
            Value::Error("ERR wrong number of arguments for 'get' command".into())
        );
        err_starting(&h.run(&["SET", "a"]), "ERR wrong number of arguments for 'set' command");
        err_starting(&h.run(&["NOSUCH", "x"]), "ERR unknown command 'NOSUCH', with args beginning with: 'x'");
        assert_eq!(h.run_flow(&[]).0, Value::Error("ERR empty command".into()));
    }

    #[test]
    fn refused_commands_say_why() {
        let mut h = Harness::new();
        err_starting(&h.run(&["INCR", "n"]), "ERR INCR is not supported: ");
        let Value::Error(e) = h.run(&["incrby", "n", "5"]) else { panic!() };
        assert!(e.contains("last-writer-wins"), "{e}");
        err_starting(&h.run(&["LPUSH", "l", "x"]), "ERR LPUSH is not supported: ");
        assert_eq!(h.run(&["DBSIZE"]), Value::Integer(0), "nothing was written");
        for (name, _) in refused::REFUSED {
            assert!(lookup(name.as_bytes()).is_none(), "{name} is both run and refused");
            err_starting(&h.run(&[name]), &format!("ERR {} is not supported: ", name.to_ascii_uppercase()));
        }
    }

    #[test]
    fn the_table_names_each_command_once_with_a_sane_arity() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(COMMANDS[..i].iter().all(|s| s.name != spec.name), "{} twice", spec.name);
            assert!(spec.min_args >= 1 && spec.min_args <= spec.max_args, "{}", spec.name);
            assert!(!spec.summary.is_empty() && !spec.group.is_empty(), "{}", spec.name);
            assert!(
                !(spec.has(Flag::Write) && spec.has(Flag::ReadOnly)),
                "{} both reads only and writes",
                spec.name
            );
            assert!(std::ptr::eq(lookup(spec.name.to_ascii_uppercase().as_bytes()).unwrap(), spec));
        }
        assert_eq!(lookup(b"GET").unwrap().redis_arity(), 2);
        assert_eq!(lookup(b"mget").unwrap().redis_arity(), -2);
        assert!(lookup(b"incr").is_none());
    }

    /// The README's command list names exactly the commands of the table and of the refused
    /// list: every word in capitals between backticks in its "Commands (RESP)" section that is
    /// a command name, and no command left out.
    #[test]
    fn the_readme_lists_the_table() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("### Commands (RESP)").expect("the README has a command section");
        let section = &readme[start..];
        let end = section[4..].find("\n### ").map_or(section.len(), |i| i + 4);
        let section = &section[..end];
        let mut named = std::collections::BTreeSet::new();
        for code in section.split('`').skip(1).step_by(2) {
            for word in code.split(|c: char| !c.is_ascii_alphanumeric()) {
                if word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase()) {
                    named.insert(word.to_ascii_lowercase());
                }
            }
        }
        for spec in COMMANDS {
            assert!(named.contains(spec.name), "the README does not name {}", spec.name);
        }
        for (name, _) in refused::REFUSED {
            assert!(named.contains(*name), "the README does not name the refused {name}");
        }
    }

    #[test]
    fn without_a_password_every_command_runs_unauthenticated() {
        let mut h = Harness::new();
        assert!(!h.session.authenticated);
        assert_eq!(h.run(&["SET", "k", "v"]), ok());
        assert_eq!(h.run(&["GET", "k"]), bulk("v"));
    }

    #[test]
    fn with_a_password_only_no_auth_commands_run_before_auth() {
        let mut h = Harness::with_password("s3cret");
        let noauth = Value::Error("NOAUTH Authentication required.".into());
        for cmd in
            [&["GET", "k"][..], &["SET", "k", "v"], &["INFO"], &["PING"], &["COMMAND"], &["CLIENT", "ID"]]
        {
            assert_eq!(h.run(cmd), noauth, "{cmd:?}");
        }
        // Redis's order: unknown commands and wrong arity first.
        err_starting(&h.run(&["NOSUCH"]), "ERR unknown command");
        err_starting(&h.run(&["GET"]), "ERR wrong number of arguments");
        let allowed: Vec<&str> = COMMANDS.iter().filter(|s| s.has(Flag::NoAuth)).map(|s| s.name).collect();
        assert_eq!(allowed, ["quit", "hello", "auth", "reset"]);
        assert_eq!(h.run(&["AUTH", "s3cret"]), ok());
        assert_eq!(h.run(&["SET", "k", "v"]), ok());
        assert_eq!(h.run(&["GET", "k"]), bulk("v"));
        assert_eq!(h.actor.replica.map().len(), 1, "nothing was written before AUTH");
    }

    #[test]
    fn writes_are_refused_while_the_disk_or_the_clock_refuses_them() {
        let mut h = Harness::new();
        let stats = h.actor.info.stats.clone();
        stats.persist_refusing.store(true, std::sync::atomic::Ordering::Release);
        *stats.persist_refusal.lock().unwrap() = "disk full".into();
        let writes: &[&[&str]] = &[
            &["SET", "k", "v"],
            &["MSET", "a", "1", "b", "2"],
            &["SETNX", "k", "v"],
            &["GETSET", "k", "v"],
            &["GETDEL", "k"],
            &["DEL", "k"],
            &["FLUSHALL"],
        ];
        for w in writes {
            assert_eq!(h.run(w), Value::Error("MISCONF disk full".into()), "{w:?}");
        }
        assert_eq!(h.run(&["GET", "k"]), Value::Nil, "reads go on");
        stats.persist_refusing.store(false, std::sync::atomic::Ordering::Release);
        stats.clock_ahead_ms.store(900, std::sync::atomic::Ordering::Relaxed);
        for w in writes {
            err_starting(&h.run(w), "CLOCKSKEW clock ahead of the cluster by 900 ms");
        }
        assert_eq!(h.actor.replica.map().entry_count(), 0, "nothing was written");
        stats.clock_ahead_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(h.run(&["SET", "k", "v"]), ok());
    }
}
