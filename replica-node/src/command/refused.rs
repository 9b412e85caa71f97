//! The Redis commands this store deliberately does not run, and why: each gets an error that
//! says so, rather than "unknown command".
//!
//! Most come down to one fact: the store is one last-writer-wins register per key, replicated
//! multi-master. A write replaces a whole value, and of two concurrent writes to a key on two
//! servers, the later one wins everywhere. A command that changes part of a value from what it
//! reads (a counter, an append, a list push) cannot be merged that way: two servers doing it at
//! once would silently lose one change.

/// Why counters cannot be merged, shared by the `INCR` family.
const COUNTER: &str = "counters cannot be merged by last-writer-wins: two servers incrementing at once \
                       would lose one increment. Keep one key per writer and add them up when reading, \
                       or compute the value and SET it";
const PARTIAL: &str = "it changes part of a value from what it reads, which last-writer-wins cannot merge: \
                       two servers doing it at once would lose one change. Read the value, change it, and \
                       SET it whole";
const TYPES: &str = "every value is a string (one last-writer-wins register per key); lists, hashes, sets, \
                     sorted sets, streams and the like cannot be merged that way. Store each element under a \
                     key of its own (a common prefix lists them: LIST, SCAN MATCH prefix*)";
const PUBSUB: &str = "there is no publish/subscribe; poll a key (or a key prefix) instead";
const SCRIPTS: &str = "there is no scripting; use MULTI/EXEC to run commands together";
const BLOCKING: &str = "there are no blocking commands (nor lists to block on)";
const PERSIST: &str = "the node keeps its own log when started with --data-dir (see INFO persistence); \
                       there are no RDB or AOF files";
const REPLICATION: &str = "every server takes writes (multi-master); add a server to a cluster with \
                           replica-node --join";
const ADMIN: &str = "operate the node from its command line and signals (SIGTERM stops it cleanly)";
const ONE_DB: &str = "this store has one keyspace (database 0)";

/// The refused commands, lower case, with the reason their error gives.
pub static REFUSED: &[(&str, &str)] = &[
    ("incr", COUNTER),
    ("incrby", COUNTER),
    ("incrbyfloat", COUNTER),
    ("decr", COUNTER),
    ("decrby", COUNTER),
    ("append", PARTIAL),
    ("setrange", PARTIAL),
    ("setbit", PARTIAL),
    ("bitfield", PARTIAL),
    ("bitop", PARTIAL),
    ("pfadd", PARTIAL),
    ("pfmerge", PARTIAL),
    ("lpush", TYPES),
    ("rpush", TYPES),
    ("lpop", TYPES),
    ("rpop", TYPES),
    ("lrange", TYPES),
    ("llen", TYPES),
    ("hset", TYPES),
    ("hget", TYPES),
    ("hgetall", TYPES),
    ("hmset", TYPES),
    ("hdel", TYPES),
    ("hincrby", TYPES),
    ("sadd", TYPES),
    ("srem", TYPES),
    ("smembers", TYPES),
    ("zadd", TYPES),
    ("zrange", TYPES),
    ("zincrby", TYPES),
    ("xadd", TYPES),
    ("xread", TYPES),
    ("geoadd", TYPES),
    ("publish", PUBSUB),
    ("subscribe", PUBSUB),
    ("psubscribe", PUBSUB),
    ("ssubscribe", PUBSUB),
    ("eval", SCRIPTS),
    ("evalsha", SCRIPTS),
    ("fcall", SCRIPTS),
    ("function", SCRIPTS),
    ("script", SCRIPTS),
    ("blpop", BLOCKING),
    ("brpop", BLOCKING),
    ("blmove", BLOCKING),
    ("bzpopmin", BLOCKING),
    ("save", PERSIST),
    ("bgsave", PERSIST),
    ("bgrewriteaof", PERSIST),
    ("lastsave", PERSIST),
    ("replicaof", REPLICATION),
    ("slaveof", REPLICATION),
    ("wait", REPLICATION),
    ("shutdown", ADMIN),
    ("debug", ADMIN),
    ("monitor", ADMIN),
    ("acl", ADMIN),
    ("slowlog", ADMIN),
    ("latency", ADMIN),
    ("swapdb", ONE_DB),
    ("move", ONE_DB),
];

/// The error for `name`, if it is a refused command.
pub(super) fn reason(name: &[u8]) -> Option<String> {
    REFUSED
        .iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(n, why)| format!("ERR {} is not supported: {why}", n.to_ascii_uppercase()))
}
