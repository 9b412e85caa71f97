//! Client commands: parse the arguments, apply them to the replica, write the reply.
//!
//! Every command is answered by exactly one reply written into the connection's output buffer;
//! nothing here does IO, so the whole command set is testable without sockets.

use std::fmt::Write as _;
use std::ops::Bound;

use bytes::Bytes;
use replica_core::{MAX_KEY, MAX_VALUE, Now, Replica};
use resp::Protocol;

use crate::stats::NodeStats;

mod cluster;
mod cursors;
#[cfg(test)]
mod tests;

pub use cursors::Cursors;

/// Per-connection state that commands may read or change.
#[derive(Debug)]
pub struct Session {
    /// Connection id, unique per actor (for `CLIENT ID`).
    pub id: u64,
    /// Reply protocol chosen with `HELLO`.
    pub proto: Protocol,
    /// Name set with `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
}

impl Session {
    /// A fresh RESP2 session.
    pub fn new(id: u64) -> Self {
        Session { id, proto: Protocol::Resp2, name: None }
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

/// What one query actor's commands act on: its replica, its `SCAN` cursors and the node facts
/// it reports.
#[derive(Debug)]
pub struct ActorState {
    /// The actor's replica state machine.
    pub replica: Replica,
    /// The `SCAN` cursors this actor handed out.
    pub cursors: Cursors,
    /// Node facts for `INFO` and `HELLO`.
    pub info: NodeInfo,
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
    /// Where operators' requests to the gateway go (`CLUSTER FORGET`); `None` without one.
    pub admin: Option<crate::runtime::mailbox::Address<crate::runtime::AdminMsg>>,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Executes one command and appends its reply to `out`.
pub fn execute(
    actor: &mut ActorState,
    session: &mut Session,
    args: &[Bytes],
    now: Now,
    out: &mut Vec<u8>,
) -> Flow {
    let ActorState { replica, cursors, info } = actor;
    NodeStats::add(&info.stats.commands_processed, 1);
    let Some(name) = args.first() else {
        resp::error(out, "ERR empty command");
        return Flow::Continue;
    };
    let cmd = Cmd { args, out, proto: session.proto };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if (is("SET") || is("DEL") || is("UNLINK"))
        && let Some(reason) = info.stats.misconf()
    {
        // The disk refuses the log: a write acknowledged now could be lost (design 4.3).
        resp::error(out, &format!("MISCONF {reason}"));
        return Flow::Continue;
    }
    if is("GET") {
        cmd.run(2, 2, "get", |c| get(c, replica));
    } else if is("SET") {
        cmd.run(3, usize::MAX, "set", |c| set(c, replica, now));
    } else if is("DEL") || is("UNLINK") {
        cmd.run(2, usize::MAX, "del", |c| del(c, replica, now));
    } else if is("LIST") {
        cmd.run(1, 2, "list", |c| list(c, replica));
    } else if is("MGET") {
        cmd.run(2, usize::MAX, "mget", |c| mget(c, replica));
    } else if is("EXISTS") {
        cmd.run(2, usize::MAX, "exists", |c| exists(c, replica));
    } else if is("KEYS") {
        cmd.run(2, 2, "keys", |c| keys(c, replica));
    } else if is("SCAN") {
        cmd.run(2, usize::MAX, "scan", |c| scan(c, replica, cursors));
    } else if is("DBSIZE") {
        cmd.run(1, 1, "dbsize", |c| resp::integer(c.out, replica.map().len() as i64));
    } else if is("PING") {
        cmd.run(1, 2, "ping", ping);
    } else if is("ECHO") {
        cmd.run(2, 2, "echo", |c| resp::bulk(c.out, &c.args[1]));
    } else if is("QUIT") {
        resp::simple(out, "OK");
        return Flow::Close;
    } else if is("HELLO") {
        hello(cmd, info, session);
    } else if is("INFO") {
        cmd.run(1, usize::MAX, "info", |c| info_cmd(c, replica, info, now));
    } else if is("COMMAND") {
        command(cmd);
    } else if is("CLIENT") {
        cmd.run(2, usize::MAX, "client", |c| client(c, session));
    } else if is("AUTH") {
        cmd.run(2, 3, "auth", |c| {
            resp::error(
                c.out,
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            )
        });
    } else if is("SELECT") {
        cmd.run(2, 2, "select", |c| {
            if &c.args[1][..] == b"0" {
                resp::simple(c.out, "OK")
            } else {
                resp::error(c.out, "ERR DB index is out of range (this store has one keyspace, 0)")
            }
        });
    } else if is("CONFIG") {
        cmd.run(2, usize::MAX, "config", config);
    } else if is("CLUSTER") {
        cmd.run(2, 3, "cluster", |c| cluster::cluster(c, info, now));
    } else {
        let mut msg = format!("ERR unknown command '{}', with args beginning with:", printable(name, 64));
        for a in args.iter().skip(1).take(8) {
            let _ = write!(msg, " '{}'", printable(a, 64));
        }
        resp::error(out, &msg);
    }
    Flow::Continue
}

/// A command being executed: its arguments and where its reply goes.
struct Cmd<'a> {
    args: &'a [Bytes],
    out: &'a mut Vec<u8>,
    proto: Protocol,
}

impl<'a> Cmd<'a> {
    /// Checks the argument count (command name included); replies with an error otherwise.
    fn arity(self, min: usize, max: usize, name: &str) -> Option<Cmd<'a>> {
        if (min..=max).contains(&self.args.len()) {
            Some(self)
        } else {
            resp::error(self.out, &format!("ERR wrong number of arguments for '{name}' command"));
            None
        }
    }

    /// Runs `f` if the argument count is right.
    fn run(self, min: usize, max: usize, name: &str, f: impl FnOnce(Cmd<'a>)) {
        if let Some(c) = self.arity(min, max, name) {
            f(c);
        }
    }

    fn null(&mut self) {
        resp::null(self.out, self.proto);
    }
}

/// A short, printable rendering of client bytes for error messages.
fn printable(b: &[u8], max: usize) -> String {
    let s: String = b.iter().take(max).flat_map(|&c| std::ascii::escape_default(c)).map(char::from).collect();
    if b.len() > max { format!("{s}...") } else { s }
}

fn key_ok(out: &mut Vec<u8>, key: &[u8]) -> bool {
    if key.len() > MAX_KEY {
        resp::error(out, &format!("ERR key too large: {} bytes (the limit is {MAX_KEY})", key.len()));
        return false;
    }
    true
}

fn get(mut c: Cmd<'_>, replica: &Replica) {
    match replica.map().get(&c.args[1][..]) {
        Some(v) => resp::bulk(c.out, v),
        None => c.null(),
    }
}

fn set(c: Cmd<'_>, replica: &mut Replica, now: Now) {
    let (key, value) = (&c.args[1], &c.args[2]);
    if c.args.len() > 3 {
        resp::error(c.out, "ERR syntax error: SET takes only a key and a value (no options)");
        return;
    }
    if !key_ok(c.out, key) {
        return;
    }
    if value.len() > MAX_VALUE {
        resp::error(c.out, &format!("ERR value too large: {} bytes (the limit is {MAX_VALUE})", value.len()));
        return;
    }
    // Copy out of the connection's read buffer: a slice of it would pin the whole buffer for
    // as long as the value is stored.
    replica.write(Bytes::copy_from_slice(key), Some(Bytes::copy_from_slice(value)), now);
    resp::simple(c.out, "OK");
}

fn del(c: Cmd<'_>, replica: &mut Replica, now: Now) {
    let keys = &c.args[1..];
    if let Some(k) = keys.iter().find(|k| k.len() > MAX_KEY) {
        key_ok(c.out, k);
        return;
    }
    let mut existed = 0;
    for k in keys {
        existed += i64::from(replica.delete(Bytes::copy_from_slice(k), now));
    }
    resp::integer(c.out, existed);
}

fn list(c: Cmd<'_>, replica: &Replica) {
    let prefix = c.args.get(1).map_or(&b""[..], |p| &p[..]);
    let pairs: Vec<_> = replica.map().scan_prefix(prefix).collect();
    resp::array_header(c.out, pairs.len() * 2);
    for (k, v) in pairs {
        resp::bulk(c.out, k);
        resp::bulk(c.out, v);
    }
}

fn mget(mut c: Cmd<'_>, replica: &Replica) {
    resp::array_header(c.out, c.args.len() - 1);
    for k in &c.args[1..] {
        match replica.map().get(&k[..]) {
            Some(v) => resp::bulk(c.out, v),
            None => c.null(),
        }
    }
}

fn exists(c: Cmd<'_>, replica: &Replica) {
    let n = c.args[1..].iter().filter(|k| replica.map().contains_key(&k[..])).count();
    resp::integer(c.out, n as i64);
}

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

fn keys(c: Cmd<'_>, replica: &Replica) {
    let pattern = match Pattern::parse(&c.args[1]) {
        Ok(p) => p,
        Err(e) => return resp::error(c.out, e),
    };
    let found: Vec<&Bytes> = match &pattern {
        Pattern::Prefix(p) => replica.map().scan_prefix(p).map(|(k, _)| k).collect(),
        Pattern::Exact(k) => replica
            .map()
            .range::<[u8], _>((Bound::Included(&k[..]), Bound::Included(&k[..])))
            .filter(|(_, e)| !e.is_tombstone())
            .map(|(k, _)| k)
            .collect(),
    };
    resp::array_header(c.out, found.len());
    for k in found {
        resp::bulk(c.out, k);
    }
}

/// Most keys one `SCAN` call examines, whatever `COUNT` says, to bound one reply's cost.
const MAX_SCAN_COUNT: usize = 100_000;

fn scan(c: Cmd<'_>, replica: &Replica, cursors: &mut Cursors) {
    let cursor = match std::str::from_utf8(&c.args[1]).ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) => n,
        None => return resp::error(c.out, "ERR invalid cursor"),
    };
    let mut pattern = Pattern::Prefix(Vec::new());
    let mut count = 10usize;
    let mut opts = c.args[2..].chunks(2);
    for opt in opts.by_ref() {
        let [name, value] = opt else {
            return resp::error(c.out, "ERR syntax error");
        };
        if name.eq_ignore_ascii_case(b"MATCH") {
            match Pattern::parse(value) {
                Ok(p) => pattern = p,
                Err(e) => return resp::error(c.out, e),
            }
        } else if name.eq_ignore_ascii_case(b"COUNT") {
            match std::str::from_utf8(value).ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(n) if n > 0 => count = n.min(MAX_SCAN_COUNT),
                _ => return resp::error(c.out, "ERR value is out of range, must be positive"),
            }
        } else if name.eq_ignore_ascii_case(b"TYPE") {
            if !value.eq_ignore_ascii_case(b"string") {
                // Every value is a string: any other type matches nothing.
                resp::array_header(c.out, 2);
                resp::bulk(c.out, b"0");
                resp::array_header(c.out, 0);
                return;
            }
        } else {
            return resp::error(c.out, "ERR syntax error");
        }
    }
    let resume = if cursor == 0 {
        None
    } else {
        match cursors.resume_point(cursor) {
            Some(k) => Some(k),
            None => return resp::error(c.out, "ERR invalid cursor (unknown or expired on this server)"),
        }
    };
    let start: Bound<&[u8]> = match &resume {
        Some(k) if &k[..] >= pattern.start() => Bound::Excluded(&k[..]),
        _ => Bound::Included(pattern.start()),
    };
    let prefix = pattern.start().to_vec();
    let mut found = Vec::new();
    let mut last = None;
    let mut more = false;
    for (examined, (k, e)) in replica.map().range::<[u8], _>((start, Bound::Unbounded)).enumerate() {
        if !k.starts_with(&prefix) {
            break;
        }
        if examined == count {
            more = true;
            break;
        }
        last = Some(k.clone());
        if e.value.is_some() && pattern.matches(k) {
            found.push(k.clone());
        }
    }
    let next = match (more, last) {
        (true, Some(k)) => cursors.save(k),
        _ => 0,
    };
    resp::array_header(c.out, 2);
    resp::bulk(c.out, next.to_string().as_bytes());
    resp::array_header(c.out, found.len());
    for k in found {
        resp::bulk(c.out, &k);
    }
}

fn ping(c: Cmd<'_>) {
    match c.args.get(1) {
        Some(msg) => resp::bulk(c.out, msg),
        None => resp::simple(c.out, "PONG"),
    }
}

fn hello(c: Cmd<'_>, info: &NodeInfo, session: &mut Session) {
    let mut proto = session.proto;
    let mut name = None;
    if let Some(v) = c.args.get(1) {
        proto = match &v[..] {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ => return resp::error(c.out, "NOPROTO unsupported protocol version"),
        };
    }
    let mut rest = c.args.iter().skip(2);
    while let Some(opt) = rest.next() {
        if opt.eq_ignore_ascii_case(b"AUTH") {
            if rest.next().zip(rest.next()).is_none() {
                return resp::error(c.out, "ERR syntax error in HELLO option 'AUTH'");
            }
            return resp::error(c.out, "WRONGPASS this server has no users or passwords");
        } else if opt.eq_ignore_ascii_case(b"SETNAME") {
            match rest.next() {
                Some(n) => name = Some(n.clone()),
                None => return resp::error(c.out, "ERR syntax error in HELLO option 'SETNAME'"),
            }
        } else {
            return resp::error(c.out, &format!("ERR syntax error in HELLO option '{}'", printable(opt, 32)));
        }
    }
    session.proto = proto;
    if name.is_some() {
        session.name = name;
    }
    let out = c.out;
    resp::map_header(out, 7, proto);
    resp::bulk(out, b"server");
    resp::bulk(out, b"replica-node");
    resp::bulk(out, b"version");
    resp::bulk(out, VERSION.as_bytes());
    resp::bulk(out, b"proto");
    resp::integer(out, if proto == Protocol::Resp3 { 3 } else { 2 });
    resp::bulk(out, b"id");
    resp::integer(out, session.id as i64);
    resp::bulk(out, b"mode");
    resp::bulk(out, b"standalone");
    resp::bulk(out, b"role");
    resp::bulk(out, b"master");
    resp::bulk(out, b"modules");
    resp::array_header(out, 0);
    let _ = info;
}

/// Commands this server understands, for `COMMAND COUNT`.
const COMMANDS: &[&str] = &[
    "get", "set", "del", "unlink", "list", "mget", "exists", "keys", "scan", "dbsize", "ping", "echo",
    "quit", "hello", "info", "command", "client", "auth", "select", "config", "cluster",
];

fn command(c: Cmd<'_>) {
    match c.args.get(1) {
        Some(sub) if sub.eq_ignore_ascii_case(b"COUNT") => resp::integer(c.out, COMMANDS.len() as i64),
        // Clients ask for documentation and key specs to offer hints; we have none to give,
        // and an empty answer is what they handle best.
        Some(sub) if sub.eq_ignore_ascii_case(b"DOCS") => resp::map_header(c.out, 0, c.proto),
        _ => resp::array_header(c.out, 0),
    }
}

fn client(c: Cmd<'_>, session: &mut Session) {
    let sub = &c.args[1];
    let is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
    if is("SETNAME") && c.args.len() == 3 {
        if c.args[2].iter().any(|&b| b == b' ' || b == b'\n') {
            return resp::error(
                c.out,
                "ERR Client names cannot contain spaces, newlines or special characters.",
            );
        }
        session.name = Some(c.args[2].clone()).filter(|n| !n.is_empty());
        resp::simple(c.out, "OK");
    } else if is("GETNAME") {
        match &session.name {
            Some(n) => resp::bulk(c.out, n),
            None => resp::null(c.out, c.proto),
        }
    } else if is("ID") {
        resp::integer(c.out, session.id as i64);
    } else if is("SETINFO") || is("NO-EVICT") || is("NO-TOUCH") {
        resp::simple(c.out, "OK");
    } else if is("INFO") {
        let name = session.name.as_deref().map(|n| printable(n, 64)).unwrap_or_default();
        resp::bulk(
            c.out,
            format!("id={} name={} resp={}\n", session.id, name, session.proto as u8).as_bytes(),
        );
    } else {
        resp::error(c.out, &format!("ERR unknown subcommand '{}' for 'client'", printable(sub, 32)));
    }
}

fn config(c: Cmd<'_>) {
    if !c.args[1].eq_ignore_ascii_case(b"GET") {
        return resp::error(c.out, "ERR CONFIG: only CONFIG GET is supported, and nothing is configurable");
    }
    // Benchmarks and clients ask for these to describe the server; answer like a server
    // without RDB snapshots or an append-only file (persistence here is the node's own log).
    let known: &[(&str, &str)] = &[("save", ""), ("appendonly", "no")];
    let mut pairs = Vec::new();
    for p in &c.args[2..] {
        for (k, v) in known {
            if p.eq_ignore_ascii_case(k.as_bytes()) || &p[..] == b"*" {
                pairs.push((*k, *v));
            }
        }
    }
    resp::map_header(c.out, pairs.len(), c.proto);
    for (k, v) in pairs {
        resp::bulk(c.out, k.as_bytes());
        resp::bulk(c.out, v.as_bytes());
    }
}

fn info_cmd(c: Cmd<'_>, replica: &Replica, info: &NodeInfo, now: Now) {
    let wanted: Vec<String> =
        c.args[1..].iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|s| s == "all" || s == "everything" || s == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let stats = &info.stats;
    let g = NodeStats::get;
    let mut text = String::new();
    if want("server") {
        let _ = write!(
            text,
            "# Server\r\nserver:replica-node\r\nversion:{VERSION}\r\nredis_version:7.0.0\r\nnode:{}\r\n\
             actor:{}\r\nactors:{}\r\nclient_addr:{}\r\npeer_addr:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            info.node,
            replica.index(),
            info.actors,
            info.client_addr,
            info.peer_addr,
            now.mono_ms.saturating_sub(info.started_mono_ms) / 1000,
        );
    }
    if want("clients") {
        let _ = write!(text, "# Clients\r\nconnected_clients:{}\r\n\r\n", g(&stats.clients_connected));
    }
    if want("stats") {
        let _ = write!(text, "# Stats\r\ntotal_commands_processed:{}\r\n\r\n", g(&stats.commands_processed));
    }
    if want("keyspace") {
        let _ = write!(
            text,
            "# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0,tombstones={}\r\n\r\n",
            replica.map().len(),
            replica.map().tombstones()
        );
    }
    if want("sync") {
        let _ = write!(
            text,
            "# Sync\r\nactor:{}\r\nnode:{}\r\nkeys:{}\r\ntombstones:{}\r\nsync_max_pair_rate:{}\r\n\
             sync_messages_sent:{}\r\nsync_entries_sent:{}\r\nsync_entries_received:{}\r\n\
             sync_entries_redundant:{}\r\nremote_bytes_sent:{}\r\nremote_bytes_received:{}\r\n\
             peers_connected:{}\r\nloading:{}\r\nrepair_rounds:{}\r\nrepair_entries_sent:{}\r\n\
             repair_entries_received:{}\r\n",
            replica.index(),
            info.node,
            replica.map().len(),
            replica.map().tombstones(),
            g(&stats.sync_max_pair_rate),
            g(&stats.sync_messages_sent),
            g(&stats.sync_entries_sent),
            g(&stats.sync_entries_received),
            g(&stats.sync_entries_redundant),
            g(&stats.remote_bytes_sent),
            g(&stats.remote_bytes_received),
            g(&stats.peers_connected),
            g(&stats.loading),
            g(&stats.repair_rounds),
            g(&stats.repair_entries_sent),
            g(&stats.repair_entries_received),
        );
    }
    if want("persistence") && stats.persist_enabled.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = write!(
            text,
            "\r\n# Persistence\r\nlog_bytes:{}\r\nlast_fsync_ms_ago:{}\r\nsnapshots_written:{}\r\n\
             recovered_entries:{}\r\nmisconf:{}\r\n",
            g(&stats.persist_log_bytes),
            now.mono_ms.saturating_sub(g(&stats.persist_last_fsync_mono_ms)),
            g(&stats.persist_snapshots_written),
            g(&stats.persist_recovered_entries),
            u8::from(stats.persist_refusing.load(std::sync::atomic::Ordering::Relaxed)),
        );
    }
    resp::bulk(c.out, text.as_bytes());
}
