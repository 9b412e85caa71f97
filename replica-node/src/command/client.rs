//! `CLIENT` and the node's list of client connections.
//!
//! Each connection is listed in the node's [`ClientRegistry`] from its accept to its close, so
//! `CLIENT LIST` on any actor shows every connection of the node. The registry is touched
//! (under its lock) only when a connection opens or closes; what changes per command (the last
//! command, when it ran) lives in the connection's own [`ClientRecord`] in atomics, which only
//! its actor writes. `CLIENT KILL` of a connection on another actor is a message to that
//! actor, which closes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use resp::Protocol;

use super::{COMMANDS, Ctx, Flow, Session, help_reply, printable, unknown_subcommand};
use crate::runtime::ActorMsg;

/// Every client connection of a node.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    /// Connections accepted since the node started (`INFO total_connections_received`).
    received: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<ClientRecord>>>,
}

impl ClientRegistry {
    /// Lists a new connection of actor `actor`, from `addr` to `laddr`, and returns its
    /// record (its id is unique on the node, counting from 1).
    pub fn register(&self, actor: usize, addr: String, laddr: String, now_ms: u64) -> Arc<ClientRecord> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.received.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(ClientRecord {
            id,
            actor,
            addr,
            laddr,
            created_mono_ms: now_ms,
            last_mono_ms: AtomicU64::new(now_ms),
            last_cmd: AtomicUsize::new(0),
            meta: Mutex::new(Meta::default()),
        });
        self.lock().insert(id, record.clone());
        record
    }

    /// Removes a closed connection.
    pub fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Connections accepted since the node started.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The open connections, by id.
    pub fn open(&self) -> Vec<Arc<ClientRecord>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClientRecord>>> {
        // The map stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open connection, as `CLIENT LIST` shows it.
#[derive(Debug)]
pub struct ClientRecord {
    /// The connection id (`CLIENT ID`).
    pub id: u64,
    /// The actor serving it.
    pub actor: usize,
    /// The client's address.
    pub addr: String,
    /// The actor's address it connected to.
    pub laddr: String,
    /// When it was accepted (monotonic ms).
    pub created_mono_ms: u64,
    last_mono_ms: AtomicU64,
    /// The last command's index in [`COMMANDS`], plus one (0: none yet).
    last_cmd: AtomicUsize,
    meta: Mutex<Meta>,
}

/// What a client says about itself.
#[derive(Debug, Default, Clone)]
struct Meta {
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    resp3: bool,
}

impl ClientRecord {
    /// Notes a command about to run (only the connection's own actor calls this).
    pub fn touch(&self, now_ms: u64, command: usize) {
        self.last_mono_ms.store(now_ms, Ordering::Relaxed);
        self.last_cmd.store(command + 1, Ordering::Relaxed);
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One `CLIENT LIST` line (without the newline), in Redis's field order where the fields
    /// apply.
    fn line(&self, now_ms: u64, multi: Option<usize>) -> String {
        let meta = self.meta().clone();
        let text = |b: &Option<Bytes>| b.as_deref().map(|n| printable(n, 64)).unwrap_or_default();
        let cmd = match self.last_cmd.load(Ordering::Relaxed) {
            0 => "NULL",
            i => COMMANDS.get(i - 1).map_or("NULL", |s| s.name),
        };
        let mut line = String::new();
        let _ = write!(
            line,
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 \
             multi={} watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 \
             tot-mem=0 events=r cmd={cmd} user=default redir=-1 resp={} lib-name={} lib-ver={} actor={}",
            self.id,
            self.addr,
            self.laddr,
            text(&meta.name),
            now_ms.saturating_sub(self.created_mono_ms) / 1000,
            now_ms.saturating_sub(self.last_mono_ms.load(Ordering::Relaxed)) / 1000,
            if multi.is_some() { "x" } else { "N" },
            multi.map_or(-1, |n| n as i64),
            if meta.resp3 { 3 } else { 2 },
            text(&meta.lib_name),
            text(&meta.lib_ver),
            self.actor,
        );
        line
    }
}

impl Session {
    /// Names the connection (`CLIENT SETNAME`, `HELLO ... SETNAME`; `None` clears it).
    pub fn set_name(&mut self, name: Option<Bytes>) {
        if let Some(r) = &self.record {
            r.meta().name = name.clone();
        }
        self.name = name;
    }

    /// Switches the reply protocol (`HELLO`, `RESET`).
    pub fn set_proto(&mut self, proto: Protocol) {
        if let Some(r) = &self.record {
            r.meta().resp3 = proto == Protocol::Resp3;
        }
        self.proto = proto;
    }

    /// This connection's `CLIENT LIST` line; also for a session not in a registry.
    fn line(&self, now_ms: u64) -> String {
        let multi = self.multi.as_ref().map(|t| t.len());
        match &self.record {
            Some(r) => r.line(now_ms, multi),
            None => {
                let name = self.name.as_deref().map(|n| printable(n, 64)).unwrap_or_default();
                format!("id={} addr=? laddr=? name={name} resp={}", self.id, self.resp_version())
            }
        }
    }
}

/// Names a client name may not contain (Redis's rule: it shows in `CLIENT LIST` lines).
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| b > b' ' && b <= b'~')
}

pub(super) fn client(c: &mut Ctx<'_>) {
    let args = c.args;
    let sub = &args[1];
    let is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
    if is("SETNAME") && args.len() == 3 {
        if !valid_name(&args[2]) {
            return c.error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        c.session.set_name(Some(args[2].clone()).filter(|n| !n.is_empty()));
        c.ok();
    } else if is("GETNAME") && args.len() == 2 {
        match c.session.name.clone() {
            Some(n) => c.out.bulk(&n),
            None => c.null(),
        }
    } else if is("ID") && args.len() == 2 {
        c.integer(c.session.id as i64);
    } else if is("SETINFO") && args.len() == 4 {
        let (attr, value) = (&args[2], &args[3]);
        if !valid_name(value) && !value.is_empty() {
            return c
                .error("ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.");
        }
        let value = Some(value.clone()).filter(|v| !v.is_empty());
        let Some(record) = c.session.record.clone() else { return c.ok() };
        if attr.eq_ignore_ascii_case(b"LIB-NAME") {
            record.meta().lib_name = value;
        } else if attr.eq_ignore_ascii_case(b"LIB-VER") {
            record.meta().lib_ver = value;
        } else {
            return c.error(&format!("ERR Unrecognized option '{}'", printable(attr, 32)));
        }
        c.ok();
    } else if is("NO-EVICT") || is("NO-TOUCH") {
        c.ok();
    } else if is("INFO") && args.len() == 2 {
        let line = c.session.line(c.now.mono_ms);
        c.out.bulk(format!("{line}\n").as_bytes());
    } else if is("LIST") {
        list(c);
    } else if is("KILL") && args.len() >= 3 {
        kill(c);
    } else if is("HELP") {
        let lines = [
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ID, INFO, LIST [TYPE normal] [ID id ...], GETNAME, SETNAME <name>, SETINFO <attr> <value>,",
            "KILL <ip:port> | KILL [ID id] [ADDR ip:port] [LADDR ip:port] [USER name] [SKIPME yes|no]",
            "    [MAXAGE seconds]: close connections of this node (on any of its actors).",
        ];
        help_reply(c, &lines);
    } else {
        unknown_subcommand(c, "CLIENT", sub);
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`: the node's connections.
fn list(c: &mut Ctx<'_>) {
    let args = c.args;
    let mut ids: Option<Vec<u64>> = None;
    let mut normal = true;
    let mut opts = args[2..].iter();
    while let Some(opt) = opts.next() {
        if opt.eq_ignore_ascii_case(b"TYPE") {
            match opts.next() {
                Some(t) if t.eq_ignore_ascii_case(b"normal") => {}
                Some(t)
                    if ["master", "replica", "slave", "pubsub"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k.as_bytes())) =>
                {
                    normal = false
                }
                _ => return c.error("ERR Unknown client type"),
            }
        } else if opt.eq_ignore_ascii_case(b"ID") {
            let rest: Vec<Option<u64>> =
                opts.by_ref().map(|a| std::str::from_utf8(a).ok().and_then(|s| s.parse().ok())).collect();
            if rest.is_empty() || rest.iter().any(Option::is_none) {
                return c.error("ERR Invalid client ID");
            }
            ids = Some(rest.into_iter().flatten().collect());
        } else {
            return c.error("ERR syntax error");
        }
    }
    let now = c.now.mono_ms;
    let mut text = String::new();
    let records = c.actor.info.clients.open();
    let own_listed = records.iter().any(|r| r.id == c.session.id);
    for r in &records {
        if !normal || ids.as_ref().is_some_and(|ids| !ids.contains(&r.id)) {
            continue;
        }
        let line = if r.id == c.session.id { c.session.line(now) } else { r.line(now, None) };
        text.push_str(&line);
        text.push('\n');
    }
    if !own_listed && normal && ids.as_ref().is_none_or(|ids| ids.contains(&c.session.id)) {
        // A session outside any registry (tests) still lists itself.
        text.push_str(&c.session.line(now));
        text.push('\n');
    }
    c.out.bulk(text.as_bytes());
}

/// `CLIENT KILL addr` (Redis's old form: `+OK` or an error) and `CLIENT KILL <filter> <value>
/// ...` (the number of connections closed).
fn kill(c: &mut Ctx<'_>) {
    let args = c.args;
    let old_form = args.len() == 3;
    let mut id = None;
    let mut addr = None;
    let mut laddr = None;
    let mut maxage = None;
    let mut skipme = true;
    if old_form {
        addr = Some(args[2].clone());
        skipme = false;
    } else {
        for pair in args[2..].chunks(2) {
            let [name, value] = pair else { return c.error("ERR syntax error") };
            let n = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
            let number = std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok());
            if n("ID") {
                match number {
                    Some(v) => id = Some(v),
                    None => return c.error("ERR client-id should be greater than 0"),
                }
            } else if n("ADDR") {
                addr = Some(value.clone());
            } else if n("LADDR") {
                laddr = Some(value.clone());
            } else if n("MAXAGE") {
                match number {
                    Some(v) => maxage = Some(v),
                    None => return c.error("ERR value is not an integer or out of range"),
                }
            } else if n("SKIPME") {
                if value.eq_ignore_ascii_case(b"yes") {
                    skipme = true;
                } else if value.eq_ignore_ascii_case(b"no") {
                    skipme = false;
                } else {
                    return c.error("ERR syntax error");
                }
            } else if n("USER") {
                if &value[..] != b"default" {
                    return c.error(&format!("ERR No such user '{}'", printable(value, 64)));
                }
            } else if n("TYPE") {
                if !value.eq_ignore_ascii_case(b"normal") {
                    // There are no replica, master or pub/sub connections to kill.
                    return c.integer(0);
                }
            } else {
                return c.error("ERR syntax error");
            }
        }
    }
    let now = c.now.mono_ms;
    let mut killed = 0;
    for r in c.actor.info.clients.open() {
        let matches = id.is_none_or(|i| r.id == i)
            && addr.as_ref().is_none_or(|a| r.addr.as_bytes() == &a[..])
            && laddr.as_ref().is_none_or(|a| r.laddr.as_bytes() == &a[..])
            && maxage.is_none_or(|m| now.saturating_sub(r.created_mono_ms) / 1000 >= m);
        if !matches {
            continue;
        }
        if r.id == c.session.id {
            if skipme {
                continue;
            }
            // Closed once this reply is out, as Redis does.
            c.flow = Flow::Close;
        } else if let Some(mail) = c.actor.info.actor_mail.get(r.actor) {
            let _ = mail.send(ActorMsg::KillClient(r.id));
        }
        killed += 1;
    }
    if old_form {
        if killed == 0 { c.error("ERR No such client") } else { c.ok() }
    } else {
        c.integer(killed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Flow, Session};

    #[test]
    fn client_subcommands() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["CLIENT", "ID"]), Value::Integer(h.session.id as i64));
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), Value::Nil);
        assert_eq!(h.run(&["client", "setname", "worker-1"]), ok());
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("worker-1"));
        err_starting(&h.run(&["CLIENT", "SETNAME", "two words"]), "ERR Client names cannot contain spaces");
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("worker-1"), "a refused name changes nothing");
        assert_eq!(h.run(&["CLIENT", "SETINFO", "lib-name", "redis-py"]), ok());
        assert_eq!(h.run(&["CLIENT", "SETINFO", "LIB-VER", "8.2.0"]), ok());
        err_starting(&h.run(&["CLIENT", "SETINFO", "color", "red"]), "ERR Unrecognized option");
        let Value::Bulk(info) = h.run(&["CLIENT", "INFO"]) else { panic!("CLIENT INFO is a bulk string") };
        let info = String::from_utf8(info.to_vec()).unwrap();
        assert!(info.starts_with(&format!("id={} addr=127.0.0.1:40000 ", h.session.id)), "{info}");
        for field in [" name=worker-1 ", " resp=2 ", " lib-name=redis-py ", " lib-ver=8.2.0 ", " cmd=client "]
        {
            assert!(info.contains(field), "{field} in {info}");
        }
        assert!(info.ends_with('\n'));
        h.run(&["HELLO", "3"]);
        let Value::Bulk(info) = h.run(&["CLIENT", "INFO"]) else { panic!() };
        assert!(String::from_utf8_lossy(&info).contains(" resp=3 "), "RESP3 after HELLO 3");
        err_starting(
            &h.run(&["CLIENT", "BOGUS"]),
            "ERR unknown subcommand or wrong number of arguments for 'client|BOGUS'",
        );
        err_starting(&h.run(&["CLIENT"]), "ERR wrong number of arguments for 'client' command");
    }

    #[test]
    fn client_list_shows_every_connection_of_the_node_and_kill_closes_them() {
        let mut h = Harness::new();
        let registry = h.actor.info.clients.clone();
        let other = registry.register(1, "10.0.0.9:5000".into(), "127.0.0.1:6002".into(), 0);
        let third = registry.register(0, "10.0.0.8:5000".into(), "127.0.0.1:6001".into(), 0);
        let Value::Bulk(list) = h.run(&["CLIENT", "LIST"]) else { panic!() };
        let list = String::from_utf8(list.to_vec()).unwrap();
        assert_eq!(list.lines().count(), 3, "{list}");
        assert!(list.contains("addr=10.0.0.9:5000 laddr=127.0.0.1:6002"), "{list}");
        assert!(list.contains(" actor=1"), "{list}");
        let Value::Bulk(one) = h.run(&["CLIENT", "LIST", "ID", &other.id.to_string()]) else { panic!() };
        assert_eq!(String::from_utf8_lossy(&one).lines().count(), 1);
        assert_eq!(h.run(&["CLIENT", "LIST", "TYPE", "pubsub"]), bulk(""));
        // By id (a message to actor 1, which this harness has no mailbox for) and by address.
        assert_eq!(h.run(&["CLIENT", "KILL", "ID", &other.id.to_string()]), Value::Integer(1));
        assert_eq!(h.run(&["CLIENT", "KILL", "10.0.0.8:5000"]), ok());
        err_starting(&h.run(&["CLIENT", "KILL", "10.9.9.9:1"]), "ERR No such client");
        assert_eq!(h.run(&["CLIENT", "KILL", "USER", "default"]), Value::Integer(2), "everyone but me");
        registry.unregister(other.id);
        registry.unregister(third.id);
        // Killing itself: answered, then closed.
        let id = h.session.id.to_string();
        let (reply, flow) = h.run_flow(&[b"CLIENT", b"KILL", b"ID", id.as_bytes(), b"SKIPME", b"no"]);
        assert_eq!((reply, flow), (Value::Integer(1), Flow::Close));
        assert_eq!(registry.received(), 3);
        // A session that is in no registry still lists itself.
        let mut lone = Harness::new();
        lone.session = Session::new(9);
        let Value::Bulk(list) = lone.run(&["CLIENT", "LIST"]) else { panic!() };
        assert!(String::from_utf8_lossy(&list).lines().any(|l| l.starts_with("id=9 ")));
    }
}
