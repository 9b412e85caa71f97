//! What the command tests share: an actor with a real replica, driven through [`execute`], with
//! each reply parsed back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use replica_core::{Now, Replica};
pub use resp::{Protocol, Value};

use super::{ActorState, ClientRegistry, Flow, NodeInfo, Password, ReplyBuf, ScanCursors, Session, execute};
use crate::stats::NodeStats;

/// The resident memory a harness reports for `INFO`.
pub const FAKE_RSS: u64 = 12_345_678;

pub struct Harness {
    pub actor: ActorState,
    pub session: Session,
    pub ms: u64,
}

impl Harness {
    pub fn new() -> Self {
        let info = NodeInfo {
            node: "n1".into(),
            actors: 2,
            client_addr: "127.0.0.1:6001".into(),
            peer_addr: "127.0.0.1:6000".into(),
            started_mono_ms: 0,
            stats: Arc::new(NodeStats::default()),
            maxclients: 10_000,
            rss: || FAKE_RSS,
            admin: None,
            clients: Arc::new(ClientRegistry::default()),
            actor_mail: Vec::new(),
            scan_cursors: Arc::new(ScanCursors::default()),
            data_dir: false,
        };
        let record = info.clients.register(0, "127.0.0.1:40000".into(), "127.0.0.1:6001".into(), 0);
        let actor = ActorState::new(Replica::new(0, 7, 1), info, None);
        Harness { actor, session: Session::listed(record), ms: 0 }
    }

    /// The time of the next command.
    pub fn now(&self) -> Now {
        Now { wall_ms: 1_700_000_000_000 + self.ms + 1, mono_ms: self.ms + 1 }
    }

    /// A harness whose node requires `password`.
    pub fn with_password(password: &str) -> Self {
        let mut h = Harness::new();
        h.actor.password = Some(Password::new(password.as_bytes()).expect("a valid password"));
        h
    }

    /// Runs one command; returns its reply bytes and what the connection does next.
    pub fn run_raw(&mut self, args: &[&[u8]], limit: usize) -> (ReplyBuf, Flow) {
        let now = self.now();
        self.ms += 1;
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let mut out = ReplyBuf::new(limit);
        let flow = execute(&mut self.actor, &mut self.session, &args, now, &mut out);
        (out, flow)
    }

    /// Runs one command; returns its one reply and what the connection does next.
    pub fn run_flow(&mut self, args: &[&[u8]]) -> (Value, Flow) {
        let (mut out, flow) = self.run_raw(args, usize::MAX);
        let mut buf = BytesMut::from(&out.take_all()[..]);
        let value = resp::parse_value(&mut buf).expect("a valid reply").expect("a complete reply");
        assert!(buf.is_empty(), "exactly one reply, {} bytes left", buf.len());
        (value, flow)
    }

    pub fn run(&mut self, args: &[&str]) -> Value {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.run_flow(&args).0
    }
}

pub fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

pub fn ok() -> Value {
    Value::Simple("OK".into())
}

pub fn err_starting(v: &Value, prefix: &str) {
    match v {
        Value::Error(e) => assert!(e.starts_with(prefix), "error {e:?} does not start with {prefix:?}"),
        other => panic!("expected an error starting with {prefix:?}, got {other:?}"),
    }
}

pub fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}
