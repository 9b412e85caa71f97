//! Commands about the connection and the command set: `PING`, `ECHO`, `QUIT`, `HELLO`, `AUTH`,
//! `SELECT`, `RESET`, `COMMAND`, `CONFIG`; and the [`Password`] that `AUTH` checks.

use std::fmt;
use std::sync::Arc;

use resp::Protocol;

use super::{COMMANDS, Ctx, Flow, KeyArgs, Spec, VERSION, lookup, printable};

/// Redis's words for a refused password, which clients recognise.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The one user name this server knows (Redis's default user).
const DEFAULT_USER: &[u8] = b"default";

/// The password clients must give. Its `Debug` never shows it, and [`Password::matches`]
/// compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Arc<[u8]>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// A password; it must not be empty (an empty password would let everyone in while
    /// looking like protection).
    pub fn new(secret: &[u8]) -> Result<Password, &'static str> {
        if secret.is_empty() {
            return Err("the password is empty");
        }
        Ok(Password(secret.into()))
    }

    /// Whether `given` is the password. Every byte of `given` is compared (against the secret
    /// repeated), so the time taken depends on the length of the attempt only: never on where
    /// it first differs from the secret, nor on the secret.
    pub fn matches(&self, given: &[u8]) -> bool {
        let secret = &self.0[..];
        let mut diff = u64::from(given.len() != secret.len());
        for (i, &b) in given.iter().enumerate() {
            diff |= u64::from(b ^ secret[i % secret.len()]);
        }
        std::hint::black_box(diff) == 0
    }
}

pub(super) fn ping(c: &mut Ctx<'_>) {
    match c.args.get(1) {
        Some(msg) => c.out.bulk(msg),
        None => resp::simple(c.out.raw(), "PONG"),
    }
}

pub(super) fn echo(c: &mut Ctx<'_>) {
    c.out.bulk(&c.args[1]);
}

pub(super) fn quit(c: &mut Ctx<'_>) {
    c.ok();
    c.flow = Flow::Close;
}

/// Checks a user name and password as `AUTH` and `HELLO ... AUTH` give them; marks the session
/// authenticated or replies with the error. Without a password on the node, the default user
/// takes any password (as Redis's `nopass` default user does).
fn authenticate(c: &mut Ctx<'_>, user: &[u8], pass: &[u8]) -> bool {
    let ok = user == DEFAULT_USER && c.actor.password.as_ref().is_none_or(|p| p.matches(pass));
    if ok {
        c.session.authenticated = true;
    } else {
        c.error(WRONGPASS);
    }
    ok
}

pub(super) fn auth(c: &mut Ctx<'_>) {
    let (user, pass) = match c.args {
        [_, pass] => {
            if c.actor.password.is_none() {
                return c.error(
                    "ERR AUTH <password> called without any password configured for the default user. \
                     Are you sure your configuration is correct?",
                );
            }
            (DEFAULT_USER, pass)
        }
        [_, user, pass] => (&user[..], pass),
        _ => unreachable!("the table allows AUTH 2 or 3 arguments"),
    };
    if authenticate(c, user, pass) {
        c.ok();
    }
}

pub(super) fn hello(c: &mut Ctx<'_>) {
    let mut proto = c.session.proto;
    let mut name = None;
    let mut credentials = None;
    if let Some(v) = c.args.get(1) {
        proto = match &v[..] {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ => return c.error("NOPROTO unsupported protocol version"),
        };
    }
    let mut rest = c.args.iter().skip(2);
    while let Some(opt) = rest.next() {
        if opt.eq_ignore_ascii_case(b"AUTH") {
            match rest.next().zip(rest.next()) {
                Some(pair) => credentials = Some(pair),
                None => return c.error("ERR syntax error in HELLO option 'AUTH'"),
            }
        } else if opt.eq_ignore_ascii_case(b"SETNAME") {
            match rest.next() {
                Some(n) => name = Some(n.clone()),
                None => return c.error("ERR syntax error in HELLO option 'SETNAME'"),
            }
        } else {
            return c.error(&format!("ERR syntax error in HELLO option '{}'", printable(opt, 32)));
        }
    }
    if let Some((user, pass)) = credentials {
        if !authenticate(c, user, pass) {
            return;
        }
    } else if c.actor.password.is_some() && !c.session.authenticated {
        return c.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        );
    }
    c.session.set_proto(proto);
    if name.is_some() {
        c.session.set_name(name);
    }
    c.map_header(7);
    let out = c.out.raw();
    resp::bulk(out, b"server");
    resp::bulk(out, b"replica-node");
    resp::bulk(out, b"version");
    resp::bulk(out, VERSION.as_bytes());
    resp::bulk(out, b"proto");
    resp::integer(out, if proto == Protocol::Resp3 { 3 } else { 2 });
    resp::bulk(out, b"id");
    resp::integer(out, c.session.id as i64);
    resp::bulk(out, b"mode");
    resp::bulk(out, b"standalone");
    resp::bulk(out, b"role");
    resp::bulk(out, b"master");
    resp::bulk(out, b"modules");
    resp::array_header(out, 0);
}

/// One command's `COMMAND INFO` entry, in Redis 7's shape: name, arity, flags, first key,
/// last key, step, ACL categories, tips, key specs, subcommands.
fn command_info(out: &mut Vec<u8>, spec: &Spec) {
    resp::array_header(out, 10);
    resp::bulk(out, spec.name.as_bytes());
    resp::integer(out, spec.redis_arity());
    resp::array_header(out, spec.flags.len());
    for f in spec.flags {
        resp::simple(out, f.name());
    }
    let (first, last, step) = match spec.keys {
        KeyArgs::None => (0, 0, 0),
        KeyArgs::First => (1, 1, 1),
        KeyArgs::Two => (1, 2, 1),
        KeyArgs::All => (1, -1, 1),
        KeyArgs::Pairs => (1, -1, 2),
    };
    resp::integer(out, first);
    resp::integer(out, last);
    resp::integer(out, step);
    for _ in 0..4 {
        resp::array_header(out, 0);
    }
}

/// One command's `COMMAND DOCS` entry: its name, then a map of summary, since and group.
fn command_docs(out: &mut Vec<u8>, spec: &Spec, proto: Protocol) {
    resp::bulk(out, spec.name.as_bytes());
    resp::map_header(out, 3, proto);
    resp::bulk(out, b"summary");
    resp::bulk(out, spec.summary.as_bytes());
    resp::bulk(out, b"since");
    resp::bulk(out, VERSION.as_bytes());
    resp::bulk(out, b"group");
    resp::bulk(out, spec.group.as_bytes());
}

pub(super) fn command(c: &mut Ctx<'_>) {
    let Some(sub) = c.args.get(1) else {
        c.array_header(COMMANDS.len());
        for spec in COMMANDS {
            command_info(c.out.raw(), spec);
        }
        return;
    };
    let names = &c.args[2..];
    let is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
    if is("COUNT") && names.is_empty() {
        c.integer(COMMANDS.len() as i64);
    } else if is("LIST") && names.is_empty() {
        c.array_header(COMMANDS.len());
        for spec in COMMANDS {
            c.out.bulk(spec.name.as_bytes());
        }
    } else if is("INFO") {
        let specs: Vec<Option<&Spec>> = if names.is_empty() {
            COMMANDS.iter().map(Some).collect()
        } else {
            names.iter().map(|n| lookup(n)).collect()
        };
        c.array_header(specs.len());
        for spec in specs {
            match spec {
                Some(spec) => command_info(c.out.raw(), spec),
                None => c.null(),
            }
        }
    } else if is("DOCS") {
        // Unknown names are left out, as Redis does.
        let specs: Vec<&Spec> = if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names.iter().filter_map(|n| lookup(n)).collect()
        };
        c.map_header(specs.len());
        let proto = c.session.proto;
        for spec in specs {
            command_docs(c.out.raw(), spec, proto);
        }
    } else {
        c.error(&format!("ERR unknown subcommand or wrong number of arguments for '{}'", printable(sub, 32)));
    }
}

/// `RESET`: back to a fresh connection, as Redis does: the transaction and watched keys go,
/// the protocol is RESP2 again, the name is cleared and, on a node with a password, the
/// connection must authenticate again.
pub(super) fn reset(c: &mut Ctx<'_>) {
    c.session.multi = None;
    c.session.watched = Default::default();
    c.session.set_proto(Protocol::Resp2);
    c.session.set_name(None);
    c.session.authenticated = false;
    resp::simple(c.out.raw(), "RESET");
}

pub(super) fn select(c: &mut Ctx<'_>) {
    if &c.args[1][..] == b"0" {
        c.ok();
    } else {
        c.error("ERR DB index is out of range (this store has one keyspace, 0)");
    }
}

pub(super) fn config(c: &mut Ctx<'_>) {
    if !c.args[1].eq_ignore_ascii_case(b"GET") {
        return c.error("ERR CONFIG: only CONFIG GET is supported, and nothing is configurable");
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
    c.map_header(pairs.len());
    for (k, v) in pairs {
        c.out.bulk(k.as_bytes());
        c.out.bulk(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{COMMANDS, Flow};
    use super::Password;

    #[test]
    fn ping_echo_quit() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["PING"]), Value::Simple("PONG".into()));
        assert_eq!(h.run(&["PING", "hi"]), bulk("hi"));
        assert_eq!(h.run(&["ECHO", "x y"]), bulk("x y"));
        let (reply, flow) = h.run_flow(&[b"QUIT"]);
        assert_eq!((reply, flow), (ok(), Flow::Close));
    }

    fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> &'a Value {
        map.iter().find(|(k, _)| *k == bulk(key)).map(|(_, v)| v).unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn hello_switches_the_protocol_and_sets_the_name() {
        let mut h = Harness::new();
        // RESP2: a flat array of pairs.
        let flat = array(h.run(&["HELLO"]));
        assert_eq!(flat.len(), 14);
        assert_eq!(flat[4], bulk("proto"));
        assert_eq!(flat[5], Value::Integer(2));
        assert_eq!(flat[7], Value::Integer(h.session.id as i64), "the connection id");
        let Value::Map(m) = h.run(&["HELLO", "3", "SETNAME", "ada"]) else { panic!("RESP3 answers a map") };
        assert_eq!(map_get(&m, "proto"), &Value::Integer(3));
        assert_eq!(map_get(&m, "server"), &bulk("replica-node"));
        assert_eq!(h.session.proto, Protocol::Resp3);
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("ada"));
        assert_eq!(h.run(&["GET", "missing"]), Value::Nil, "RESP3 null");
        assert_eq!(h.run(&["HELLO", "4"]), Value::Error("NOPROTO unsupported protocol version".into()));
        assert_eq!(h.session.proto, Protocol::Resp3, "a refused HELLO changes nothing");
        err_starting(&h.run(&["HELLO", "3", "BOGUS"]), "ERR syntax error in HELLO option 'BOGUS'");
        err_starting(&h.run(&["HELLO", "3", "AUTH", "default"]), "ERR syntax error in HELLO option 'AUTH'");
        let flat = array(h.run(&["HELLO", "2"]));
        assert_eq!(flat[5], Value::Integer(2));
        assert_eq!(h.session.proto, Protocol::Resp2);
    }

    #[test]
    fn select_auth_config_command() {
        let mut h = Harness::new();
        assert_eq!(h.run(&["SELECT", "0"]), ok());
        err_starting(&h.run(&["SELECT", "1"]), "ERR DB index is out of range");
        err_starting(
            &h.run(&["AUTH", "secret"]),
            "ERR AUTH <password> called without any password configured",
        );
        let pairs = array(h.run(&["CONFIG", "GET", "save"]));
        assert_eq!(pairs, vec![bulk("save"), bulk("")]);
        let pairs = array(h.run(&["CONFIG", "GET", "*"]));
        assert_eq!(pairs, vec![bulk("save"), bulk(""), bulk("appendonly"), bulk("no")]);
        assert_eq!(h.run(&["CONFIG", "GET", "maxmemory"]), Value::Array(vec![]));
        err_starting(&h.run(&["CONFIG", "SET", "save", ""]), "ERR CONFIG: only CONFIG GET is supported");
        let Value::Integer(n) = h.run(&["COMMAND", "COUNT"]) else { panic!() };
        assert_eq!(n, COMMANDS.len() as i64);
    }

    #[test]
    fn command_reports_the_table() {
        let mut h = Harness::new();
        let all = array(h.run(&["COMMAND"]));
        assert_eq!(all.len(), COMMANDS.len());
        let get = array(all[0].clone());
        assert_eq!(get.len(), 10);
        assert_eq!(get[0], bulk("get"));
        assert_eq!(get[1], Value::Integer(2));
        assert_eq!(
            get[2],
            Value::Array(vec![Value::Simple("readonly".into()), Value::Simple("fast".into())])
        );
        assert_eq!(get[3..6], [Value::Integer(1), Value::Integer(1), Value::Integer(1)]);
        let info = array(h.run(&["COMMAND", "INFO", "mget", "nosuch", "AUTH"]));
        assert_eq!(info.len(), 3);
        let mget = array(info[0].clone());
        assert_eq!((&mget[1], &mget[4]), (&Value::Integer(-2), &Value::Integer(-1)));
        assert_eq!(info[1], Value::Nil, "unknown names are nil");
        assert!(
            array(info[2].clone())[2]
                == Value::Array(vec![
                    Value::Simple("fast".into()),
                    Value::Simple("no_auth".into()),
                    Value::Simple("stale".into()),
                    Value::Simple("loading".into()),
                ])
        );
        let names = array(h.run(&["COMMAND", "LIST"]));
        assert_eq!(names.len(), COMMANDS.len());
        assert!(names.contains(&bulk("scan")));
        // DOCS: a map from name to summary, since and group (a flat array in RESP2).
        let docs = array(h.run(&["COMMAND", "DOCS", "set", "nosuch"]));
        assert_eq!(docs.len(), 2, "unknown names are left out");
        assert_eq!(docs[0], bulk("set"));
        let fields = array(docs[1].clone());
        assert_eq!(fields[0..2], [bulk("summary"), bulk(super::super::lookup(b"set").unwrap().summary)]);
        assert_eq!(fields[4..6], [bulk("group"), bulk("string")]);
        h.run(&["HELLO", "3"]);
        let Value::Map(docs) = h.run(&["COMMAND", "DOCS"]) else { panic!("RESP3 DOCS is a map") };
        assert_eq!(docs.len(), COMMANDS.len());
        assert!(matches!(&docs[0].1, Value::Map(m) if m.len() == 3));
        err_starting(&h.run(&["COMMAND", "BOGUS"]), "ERR unknown subcommand");
    }

    #[test]
    fn auth_and_hello_auth_with_a_password() {
        let mut h = Harness::with_password("s3cret");
        let wrongpass = Value::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
        assert_eq!(h.run(&["AUTH", "nope"]), wrongpass);
        assert_eq!(h.run(&["AUTH", "admin", "s3cret"]), wrongpass, "only the default user exists");
        assert_eq!(h.run(&["AUTH", "s3cre"]), wrongpass, "a prefix is not the password");
        assert_eq!(h.run(&["AUTH", "s3cret!"]), wrongpass);
        err_starting(
            &h.run(&["HELLO", "3"]),
            "NOAUTH HELLO must be called with the client already authenticated",
        );
        assert_eq!(h.session.proto, Protocol::Resp2, "a refused HELLO changes nothing");
        assert_eq!(h.run(&["HELLO", "3", "AUTH", "default", "wrong"]), wrongpass);
        assert!(!h.session.authenticated);
        let Value::Map(m) = h.run(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "ada"]) else {
            panic!("RESP3 answers a map")
        };
        assert_eq!(m.len(), 7);
        assert!(h.session.authenticated);
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), bulk("ada"));
        // A later wrong AUTH does not log the connection out (as in Redis).
        assert_eq!(h.run(&["AUTH", "default", "nope"]), wrongpass);
        assert_eq!(h.run(&["PING"]), Value::Simple("PONG".into()));

        let mut h = Harness::with_password("s3cret");
        assert_eq!(h.run(&["AUTH", "default", "s3cret"]), ok());
        assert!(h.session.authenticated);
        // Without a password, the default user takes any password.
        let mut open = Harness::new();
        assert_eq!(open.run(&["AUTH", "default", "anything"]), ok());
        assert_eq!(open.run(&["AUTH", "bob", "anything"]), wrongpass);
        assert!(matches!(open.run(&["HELLO", "3", "AUTH", "default", "x"]), Value::Map(_)));
    }

    #[test]
    fn reset_returns_to_a_fresh_connection() {
        let mut h = Harness::with_password("s3cret");
        h.run(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "ada"]);
        h.run(&["WATCH", "k"]);
        h.run(&["MULTI"]);
        assert_eq!(h.run(&["RESET"]), Value::Simple("RESET".into()));
        assert!(h.session.multi.is_none() && h.session.watched.is_empty());
        assert_eq!(h.session.proto, Protocol::Resp2);
        assert!(!h.session.authenticated);
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), Value::Error("NOAUTH Authentication required.".into()));
        h.run(&["AUTH", "s3cret"]);
        assert_eq!(h.run(&["CLIENT", "GETNAME"]), Value::Nil);
    }

    #[test]
    fn passwords_compare_whole_and_never_show() {
        let p = Password::new(b"correct horse").unwrap();
        assert!(p.matches(b"correct horse"));
        for wrong in
            [&b""[..], b"correct hors", b"correct horse ", b"Correct horse", b"correct horsecorrect horse"]
        {
            assert!(!p.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(Password::new(b"").is_err());
        assert_eq!(format!("{p:?}"), "Password(..)");
    }
}
