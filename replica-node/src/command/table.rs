//! The command table: every command the server understands, with its arity, flags, key
//! positions, `COMMAND DOCS` group and summary, and its handler. `COMMAND` reports exactly
//! this table, dispatch looks commands up in it, and a test checks the README names every
//! one.

use super::{Ctx, client, cluster, connection, expiry, info, keys, listing, server, strings, transaction};

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
    /// The first two arguments (`RENAME`-like).
    Two,
    /// Every argument.
    All,
    /// Every other argument, from the first (`MSET key value key value ...`).
    Pairs,
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

    pub(crate) fn has(&self, flag: Flag) -> bool {
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
    // Strings.
    spec!("get", 2, 2, [ReadOnly, Fast], First, "string", "Returns the value of a key.", strings::get),
    spec!(
        "set",
        3,
        MANY,
        [Write],
        First,
        "string",
        "Sets the value of a key: [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL].",
        strings::set
    ),
    spec!("setex", 4, 4, [Write], First, "string", "Sets a value that expires in seconds.", strings::setex),
    spec!(
        "psetex",
        4,
        4,
        [Write],
        First,
        "string",
        "Sets a value that expires in milliseconds.",
        strings::setex
    ),
    spec!(
        "getex",
        2,
        4,
        [Write, Fast],
        First,
        "string",
        "Returns a value and sets its deadline: [EX s|PX ms|EXAT t|PXAT t|PERSIST].",
        strings::getex
    ),
    spec!(
        "setnx",
        3,
        3,
        [Write, Fast],
        First,
        "string",
        "Sets a key only if it has no value on this replica.",
        strings::setnx
    ),
    spec!(
        "getset",
        3,
        3,
        [Write, Fast],
        First,
        "string",
        "Sets a key and returns its previous value.",
        strings::getset
    ),
    spec!(
        "getdel",
        2,
        2,
        [Write, Fast],
        First,
        "string",
        "Returns a key's value and deletes it.",
        strings::getdel
    ),
    spec!("mset", 3, MANY, [Write], Pairs, "string", "Sets several keys at once.", strings::mset),
    spec!(
        "msetnx",
        3,
        MANY,
        [Write],
        Pairs,
        "string",
        "Sets several keys at once, only if none of them has a value on this replica.",
        strings::msetnx
    ),
    spec!("mget", 2, MANY, [ReadOnly, Fast], All, "string", "Returns the values of keys.", strings::mget),
    spec!(
        "strlen",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "string",
        "Returns the length of a value.",
        strings::strlen
    ),
    spec!(
        "getrange",
        4,
        4,
        [ReadOnly],
        First,
        "string",
        "Returns a substring of a value (offsets as in Redis, negative from the end).",
        strings::getrange
    ),
    spec!(
        "substr",
        4,
        4,
        [ReadOnly],
        First,
        "string",
        "Returns a substring of a value, as GETRANGE.",
        strings::getrange
    ),
    // Keys.
    spec!("del", 2, MANY, [Write], All, "generic", "Deletes keys (leaves tombstones).", keys::del),
    spec!("unlink", 2, MANY, [Write, Fast], All, "generic", "Deletes keys, as DEL.", keys::del),
    spec!("exists", 2, MANY, [ReadOnly, Fast], All, "generic", "Counts the keys that exist.", keys::exists),
    spec!(
        "touch",
        2,
        MANY,
        [ReadOnly, Fast],
        All,
        "generic",
        "Counts the keys that exist, as EXISTS.",
        keys::exists
    ),
    spec!(
        "type",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "generic",
        "Returns the type of a key: string or none.",
        keys::type_
    ),
    spec!("rename", 3, 3, [Write], Two, "generic", "Renames a key.", keys::rename),
    spec!(
        "renamenx",
        3,
        3,
        [Write, Fast],
        Two,
        "generic",
        "Renames a key only if the new name has no value on this replica.",
        keys::rename
    ),
    spec!("copy", 3, 6, [Write], Two, "generic", "Copies a key's value to another key.", keys::copy),
    spec!(
        "expire",
        3,
        MANY,
        [Write, Fast],
        First,
        "generic",
        "Sets a key's deadline in seconds from now: [NX|XX|GT|LT].",
        expiry::expire
    ),
    spec!(
        "pexpire",
        3,
        MANY,
        [Write, Fast],
        First,
        "generic",
        "Sets a key's deadline in milliseconds from now: [NX|XX|GT|LT].",
        expiry::expire
    ),
    spec!(
        "expireat",
        3,
        MANY,
        [Write, Fast],
        First,
        "generic",
        "Sets a key's deadline as a Unix time in seconds: [NX|XX|GT|LT].",
        expiry::expire
    ),
    spec!(
        "pexpireat",
        3,
        MANY,
        [Write, Fast],
        First,
        "generic",
        "Sets a key's deadline as a Unix time in milliseconds: [NX|XX|GT|LT].",
        expiry::expire
    ),
    spec!(
        "ttl",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "generic",
        "Returns the seconds a key has left.",
        expiry::ttl
    ),
    spec!(
        "pttl",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "generic",
        "Returns the milliseconds a key has left.",
        expiry::ttl
    ),
    spec!(
        "expiretime",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "generic",
        "Returns a key's deadline as a Unix time in seconds.",
        expiry::ttl
    ),
    spec!(
        "pexpiretime",
        2,
        2,
        [ReadOnly, Fast],
        First,
        "generic",
        "Returns a key's deadline as a Unix time in milliseconds.",
        expiry::ttl
    ),
    spec!("persist", 2, 2, [Write, Fast], First, "generic", "Removes a key's deadline.", expiry::persist),
    spec!("randomkey", 1, 1, [ReadOnly], None, "generic", "Returns a key picked at random.", keys::randomkey),
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
    // Server.
    spec!("dbsize", 1, 1, [ReadOnly, Fast], None, "server", "Returns the number of keys.", keys::dbsize),
    spec!(
        "flushall",
        1,
        2,
        [Write],
        None,
        "server",
        "Deletes every key: a tombstone for each, replicated to every server.",
        keys::flushall
    ),
    spec!(
        "flushdb",
        1,
        2,
        [Write],
        None,
        "server",
        "Deletes every key of the one keyspace, as FLUSHALL.",
        keys::flushall
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
    spec!("time", 1, 1, [Fast, Stale, Loading], None, "server", "Returns the server's time.", server::time),
    spec!(
        "role",
        1,
        1,
        [Fast, Stale, Loading],
        None,
        "server",
        "Returns the replication role: master (every server takes writes).",
        server::role
    ),
    spec!(
        "memory",
        2,
        MANY,
        [ReadOnly],
        None,
        "server",
        "MEMORY USAGE key: the approximate bytes a key takes.",
        server::memory
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
        "config",
        2,
        MANY,
        [Stale, Loading],
        None,
        "server",
        "CONFIG GET: reports a few settings.",
        connection::config
    ),
    // Transactions.
    spec!(
        "multi",
        1,
        1,
        [Fast, Stale, Loading],
        None,
        "transactions",
        "Starts a transaction: later commands are queued until EXEC.",
        transaction::multi
    ),
    spec!(
        "exec",
        1,
        1,
        [Stale, Loading],
        None,
        "transactions",
        "Runs the queued commands at once; their writes leave as one delta.",
        transaction::exec
    ),
    spec!(
        "discard",
        1,
        1,
        [Fast, Stale, Loading],
        None,
        "transactions",
        "Drops the queued commands.",
        transaction::discard
    ),
    spec!(
        "watch",
        2,
        MANY,
        [Fast, Stale, Loading],
        All,
        "transactions",
        "EXEC runs only if these keys do not change on this replica before it.",
        transaction::watch
    ),
    spec!(
        "unwatch",
        1,
        1,
        [Fast, Stale, Loading],
        None,
        "transactions",
        "Forgets the watched keys.",
        transaction::unwatch
    ),
    // Connection.
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
        "client",
        2,
        MANY,
        [Stale, Loading],
        None,
        "connection",
        "Connection commands: LIST, KILL, ID, INFO, SETNAME, GETNAME, SETINFO.",
        client::client
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
        "reset",
        1,
        1,
        [Fast, NoAuth, Stale, Loading],
        None,
        "connection",
        "Resets the connection: transaction, watched keys, protocol, name, authentication.",
        connection::reset
    ),
    // Cluster.
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
    find(name).map(|(_, spec)| spec)
}

/// The command called `name` (any case) and its index in [`COMMANDS`].
pub(super) fn find(name: &[u8]) -> Option<(usize, &'static Spec)> {
    COMMANDS.iter().enumerate().find(|(_, s)| name.eq_ignore_ascii_case(s.name.as_bytes()))
}
