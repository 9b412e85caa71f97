//! Client commands: parse the arguments, apply them to the replica, write the reply.
//!
//! [`COMMANDS`] is the one place that names every command: its arity, its flags, its help text
//! and its handler. Dispatch looks commands up there, and so do `COMMAND`, `COMMAND COUNT`,
//! `COMMAND INFO` and `COMMAND DOCS`, so what the server says it understands is what it runs.
//! The handlers live in files by family: [`keys`] (GET SET DEL MGET EXISTS DBSIZE), [`listing`]
//! (LIST KEYS SCAN), [`connection`] (PING ECHO QUIT HELLO CLIENT AUTH SELECT COMMAND CONFIG),
//! [`info`] (INFO) and [`cluster`] (CLUSTER NODES, MYID, FORGET).
//!
//! Every command is answered by exactly one reply written into the connection's [`ReplyBuf`];
//! nothing here does IO, so the whole command set is testable without sockets.

use std::fmt::Write as _;

use bytes::Bytes;
use replica_core::{MAX_KEY, Now, Replica};
use resp::Protocol;

use crate::stats::NodeStats;

mod cluster;
mod connection;
mod cursors;
mod info;
mod keys;
mod listing;
mod reply;
#[cfg(test)]
pub(crate) mod testutil;

pub use connection::Password;
pub use cursors::Cursors;
pub use reply::ReplyBuf;

/// The server version `HELLO` and `INFO` report.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Per-connection state that commands may read or change.
#[derive(Debug)]
pub struct Session {
    /// Connection id, unique per actor (for `CLIENT ID`).
    pub id: u64,
    /// Reply protocol chosen with `HELLO`.
    pub proto: Protocol,
    /// Name set with `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Whether the client gave the password (`AUTH`, `HELLO ... AUTH`). Consulted only when
    /// the node has one.
    pub authenticated: bool,
}

impl Session {
    /// A fresh RESP2 session that has not authenticated.
    pub fn new(id: u64) -> Self {
        Session { id, proto: Protocol::Resp2, name: None, authenticated: false }
    }
}

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// Send the replies written so far, then close (QUIT).
    Close,
}

/// What one query actor's commands act on: its replica, its `SCAN` cursors, the node facts it
/// reports and the password clients must give.
#[derive(Debug)]
pub struct ActorState {
    /// The actor's replica state machine.
    pub replica: Replica,
    /// The `SCAN` cursors this actor handed out.
    pub cursors: Cursors,
    /// Node facts for `INFO` and `HELLO`.
    pub info: NodeInfo,
    /// The password every client must give before any other command (`None`: no password).
    pub password: Option<Password>,
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
    pub stats: std::sync::Arc<NodeStats>,
    /// Most client connections the node accepts (`--maxclients`), for `INFO clients`.
    pub maxclients: usize,
    /// Reads the process's resident memory in bytes (`used_memory_rss`). A function rather than
    /// a read here, so the command set stays free of IO.
    pub rss: fn() -> u64,
    /// Where operators' requests to the gateway go (`CLUSTER FORGET`); `None` without one.
    pub admin: Option<crate::runtime::mailbox::Address<crate::runtime::AdminMsg>>,
}

/// What a command promises, as `COMMAND` reports it (Redis's flag names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// Changes the store.
    Write,
    /// Only reads.
    ReadOnly,
    /// Constant time (or close): never stalls the actor.
    Fast,
    /// Allowed before `AUTH` when the node has a password.
    NoAuth,
    /// Allowed while a snapshot is still loading.
    Loading,
    /// Allowed when the replica may be behind its peers.
    Stale,
}

impl Flag {
    /// The name `COMMAND` reports.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Write => "write",
            Flag::ReadOnly => "readonly",
            Flag::Fast => "fast",
            Flag::NoAuth => "no_auth",
            Flag::Loading => "loading",
            Flag::Stale => "stale",
        }
    }
}

/// Which arguments are keys, for `COMMAND INFO` (first key, last key, step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyArgs {
    /// No key argument.
    None,
    /// The first argument only.
    First,
    /// Every argument.
    All,
}

/// A command: its name, arity, flags, help text and handler.
#[derive(Debug)]
pub struct Spec {
    /// The name, lower case.
    pub name: &'static str,
    /// Fewest arguments, the command name included.
    pub min_args: usize,
    /// Most arguments, the command name included (`usize::MAX`: no bound).
    pub max_args: usize,
    /// What it promises.
    pub flags: &'static [Flag],
    /// Which arguments are keys.
    pub keys: KeyArgs,
    /// Its group in `COMMAND DOCS` (Redis's group names).
    pub group: &'static str,
    /// One line of help for `COMMAND DOCS`.
    pub summary: &'static str,
    /// Runs it: parses the arguments, applies the command, writes the reply.
    pub run: fn(&mut Ctx<'_>),
}

impl Spec {
    /// The arity in Redis's convention: `n` for exactly `n` arguments, `-n` for at least `n`.
    pub fn redis_arity(&self) -> i64 {
        if self.min_args == self.max_args { self.min_args as i64 } else { -(self.min_args as i64) }
    }

    fn has(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }
}

use Flag::{Fast, Loading, NoAuth, ReadOnly, Stale, Write};

const MANY: usize = usize::MAX;

macro_rules! spec {
    ($name:literal, $min:expr, $max:expr, [$($flag:expr),*], $keys:ident, $group:literal, $summary:literal, $run:path) => {
        Spec {
            name: $name,
            min_args: $min,
            max_args: $max,
            flags: &[$($flag),*],
            keys: KeyArgs::$keys,
            group: $group,
            summary: $summary,
            run: $run,
        }
    };
}

/// Every command the server understands.
pub static COMMANDS: &[Spec] = &[
    spec!("get", 2, 2, [ReadOnly, Fast], First, "string", "Returns the value of a key.", keys::get),
    spec!("set", 3, MANY, [Write], First, "string", "Sets the value of a key.", keys::set),
    spec!("del", 2, MANY, [Write], All, "generic", "Deletes keys (leaves tombstones).", keys::del),
    spec!("unlink", 2, MANY, [Write, Fast], All, "generic", "Deletes keys, as DEL.", keys::del),
    spec!(
        "list",
        1,
        2,
        [ReadOnly],
        None,
        "generic",
        "Returns every live pair under a key prefix, sorted by key, as a flat array.",
        listing::list
    ),
    spec!("mget", 2, MANY, [ReadOnly, Fast], All, "string", "Returns the values of keys.", keys::mget),
    spec!("exists", 2, MANY, [ReadOnly, Fast], All, "generic", "Counts the keys that exist.", keys::exists),
    spec!(
        "keys",
        2,
        2,
        [ReadOnly],
        None,
        "generic",
        "Returns the keys matching a prefix pattern.",
        listing::keys
    ),
    spec!("scan", 2, MANY, [ReadOnly], None, "generic", "Iterates over the keys.", listing::scan),
    spec!("dbsize", 1, 1, [ReadOnly, Fast], None, "server", "Returns the number of keys.", keys::dbsize),
    spec!(
        "ping",
        1,
        2,
        [Fast, Stale, Loading],
        None,
        "connection",
        "Returns the server's liveliness response.",
        connection::ping
    ),
    spec!(
        "echo",
        2,
        2,
        [Fast, Stale, Loading],
        None,
        "connection",
        "Returns the given string.",
        connection::echo
    ),
    spec!(
        "quit",
        1,
        MANY,
        [Fast, NoAuth, Stale, Loading],
        None,
        "connection",
        "Closes the connection.",
        connection::quit
    ),
    spec!(
        "hello",
        1,
        MANY,
        [Fast, NoAuth, Stale, Loading],
        None,
        "connection",
        "Handshakes: protocol version, authentication, client name.",
        connection::hello
    ),
    spec!(
        "info",
        1,
        MANY,
        [Stale, Loading],
        None,
        "server",
        "Returns information and counters about the server.",
        info::info
    ),
    spec!(
        "command",
        1,
        MANY,
        [Stale, Loading],
        None,
        "server",
        "Returns information about commands.",
        connection::command
    ),
    spec!(
        "client",
        2,
        MANY,
        [Stale, Loading],
        None,
        "connection",
        "Connection commands: SETNAME, GETNAME, ID, INFO.",
        connection::client
    ),
    spec!(
        "auth",
        2,
        3,
        [Fast, NoAuth, Stale, Loading],
        None,
        "connection",
        "Authenticates the connection.",
        connection::auth
    ),
    spec!(
        "select",
        2,
        2,
        [Fast, Stale, Loading],
        None,
        "connection",
        "Selects database 0 (the only one).",
        connection::select
    ),
    spec!(
        "config",
        2,
        MANY,
        [Stale, Loading],
        None,
        "server",
        "CONFIG GET: reports a few settings.",
        connection::config
    ),
    spec!(
        "cluster",
        2,
        3,
        [Stale, Loading],
        None,
        "cluster",
        "The servers of the cluster (NODES, MYID) and removing one gone for good (FORGET).",
        cluster::cluster
    ),
];

/// The command called `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| name.eq_ignore_ascii_case(s.name.as_bytes()))
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
}

/// Executes one command and appends its reply to `out`.
pub fn execute(
    actor: &mut ActorState,
    session: &mut Session,
    args: &[Bytes],
    now: Now,
    out: &mut ReplyBuf,
) -> Flow {
    NodeStats::add(&actor.info.stats.commands_processed, 1);
    let Some(name) = args.first() else {
        resp::error(out.raw(), "ERR empty command");
        return Flow::Continue;
    };
    // The order of the checks is Redis's: an unknown command and a wrong arity are reported
    // before a missing password.
    let Some(spec) = lookup(name) else {
        let mut msg = format!("ERR unknown command '{}', with args beginning with:", printable(name, 64));
        for a in args.iter().skip(1).take(8) {
            let _ = write!(msg, " '{}'", printable(a, 64));
        }
        resp::error(out.raw(), &msg);
        return Flow::Continue;
    };
    if !(spec.min_args..=spec.max_args).contains(&args.len()) {
        resp::error(out.raw(), &format!("ERR wrong number of arguments for '{}' command", spec.name));
        return Flow::Continue;
    }
    if actor.password.is_some() && !session.authenticated && !spec.has(Flag::NoAuth) {
        resp::error(out.raw(), "NOAUTH Authentication required.");
        return Flow::Continue;
    }
    if spec.has(Flag::Write)
        && let Some(reason) = actor.info.stats.misconf()
    {
        // The disk refuses the log: a write acknowledged now could be lost (design 4.3).
        resp::error(out.raw(), &format!("MISCONF {reason}"));
        return Flow::Continue;
    }
    let mut ctx = Ctx { args, out, session, actor, now, flow: Flow::Continue };
    (spec.run)(&mut ctx);
    ctx.flow
}

/// A short, printable rendering of client bytes for error messages.
fn printable(b: &[u8], max: usize) -> String {
    let s: String = b.iter().take(max).flat_map(|&c| std::ascii::escape_default(c)).map(char::from).collect();
    if b.len() > max { format!("{s}...") } else { s }
}

/// Whether `key` is within the key limit; replies with an error otherwise.
fn key_ok(c: &mut Ctx<'_>, key: &[u8]) -> bool {
    if key.len() > MAX_KEY {
        c.error(&format!("ERR key too large: {} bytes (the limit is {MAX_KEY})", key.len()));
        return false;
    }
    true
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
        err_starting(&h.run(&["FLUSHALL"]), "ERR unknown command 'FLUSHALL', with args beginning with:");
        assert_eq!(h.run_flow(&[]).0, Value::Error("ERR empty command".into()));
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
        assert!(lookup(b"flushall").is_none());
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
        assert_eq!(allowed, ["quit", "hello", "auth"]);
        assert_eq!(h.run(&["AUTH", "s3cret"]), ok());
        assert_eq!(h.run(&["SET", "k", "v"]), ok());
        assert_eq!(h.run(&["GET", "k"]), bulk("v"));
        assert_eq!(h.actor.replica.map().len(), 1, "nothing was written before AUTH");
    }
}
