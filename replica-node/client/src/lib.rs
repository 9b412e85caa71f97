//! Blocking client library for the store.
//!
//! A [`Client`] speaks RESP to the query actors of one or more servers. It asks its [`Router`]
//! for an address before every query, keeps a small pool of idle connections per address, and
//! when a connection fails (refused, reset, timed out) it retries the query on the router's next
//! address, up to [`Router::len`] attempts. It is `Send + Sync` and cheap to clone: any number of
//! threads may run queries on it at once, each on its own pooled connection.
//!
//! ```no_run
//! use replica_client::{Client, RoundRobin};
//!
//! # fn main() -> Result<(), replica_client::ClientError> {
//! let servers = ["127.0.0.1:6001".parse().unwrap(), "127.0.0.1:6002".parse().unwrap()];
//! let client = Client::new(RoundRobin::new(servers)?);
//! client.put("player:ada", "42 coins")?;
//! assert_eq!(client.get("player:ada")?.as_deref(), Some(&b"42 coins"[..]));
//! for (key, value) in client.list("player:")? {
//!     println!("{key:?} = {value:?}");
//! }
//! assert!(client.delete("player:ada")?);
//! # Ok(())
//! # }
//! ```
//!
//! Retried queries may run twice when the first attempt reached the server but its reply was
//! lost. `put` is harmless to repeat; a repeated `delete` reports `false` for a key the first
//! attempt deleted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use resp::{self, ProtocolError, Value, ValueParser};

/// Default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for a reply (and for sending a request).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of idle connections kept per address.
pub const DEFAULT_MAX_IDLE: usize = 32;
/// Default time a [`RoundRobin`] avoids an address after a connection failure.
pub const DEFAULT_HOLD_OFF: Duration = Duration::from_secs(1);

/// Size of each connection's read scratch buffer: the most one read takes from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// A query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the command (`-ERR ...`). Not retried: another server would refuse it
    /// too.
    #[error("server error: {0}")]
    Server(String),
    /// No attempt got a reply: every address tried failed to connect or lost the connection.
    #[error("no server answered; tried {}", describe_attempts(.attempts))]
    Unavailable {
        /// Each address tried, in order, with its failure.
        attempts: Vec<(SocketAddr, io::Error)>,
    },
    /// The server's reply violates the protocol.
    #[error("protocol error from {addr}: {source}")]
    Protocol {
        /// The server that sent it.
        addr: SocketAddr,
        /// What was wrong.
        source: ProtocolError,
    },
    /// A well-formed reply of the wrong shape for the command.
    #[error("unexpected reply to {command}: {reply}")]
    UnexpectedReply {
        /// The command sent.
        command: &'static str,
        /// The reply, abbreviated.
        reply: String,
    },
    /// A router was given no addresses.
    #[error("no server addresses given")]
    NoServers,
    /// [`Client::command`] was called without arguments.
    #[error("empty command")]
    EmptyCommand,
}

fn describe_attempts(attempts: &[(SocketAddr, io::Error)]) -> String {
    let parts: Vec<String> = attempts.iter().map(|(addr, e)| format!("{addr} ({e})")).collect();
    parts.join(", ")
}

impl ClientError {
    /// Whether the error means no server could be reached (as opposed to a refused or
    /// misunderstood command).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Routers.

/// Chooses the server address for each query.
///
/// The client calls [`next`](Router::next) before every query and before every retry, and
/// [`failed`](Router::failed) when an address did not answer. Implementations must be cheap and
/// thread-safe: many threads query at once.
pub trait Router: Send + Sync + fmt::Debug {
    /// The address for the next query.
    fn next(&self) -> SocketAddr;

    /// How many distinct addresses the router yields: a query makes at most this many attempts
    /// before reporting [`ClientError::Unavailable`].
    fn len(&self) -> usize;

    /// Whether the router has no addresses (never true for the routers provided).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports that `addr` failed to connect or lost its connection. A router may avoid it for
    /// a while; by default nothing happens.
    fn failed(&self, addr: SocketAddr) {
        let _ = addr;
    }
}

impl<R: Router + ?Sized> Router for Arc<R> {
    fn next(&self) -> SocketAddr {
        (**self).next()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn failed(&self, addr: SocketAddr) {
        (**self).failed(addr)
    }
}

impl<R: Router + ?Sized> Router for Box<R> {
    fn next(&self) -> SocketAddr {
        (**self).next()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn failed(&self, addr: SocketAddr) {
        (**self).failed(addr)
    }
}

/// Always the same address.
///
/// ```
/// use replica_client::{Client, Fixed};
/// let client = Client::new(Fixed("127.0.0.1:6001".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed(pub SocketAddr);

impl Router for Fixed {
    fn next(&self) -> SocketAddr {
        self.0
    }
    fn len(&self) -> usize {
        1
    }
}

/// Each query goes to the next address in turn; an address that failed is skipped for a
/// hold-off period (default [`DEFAULT_HOLD_OFF`]) unless every address failed, so a dead server
/// costs one failed attempt per hold-off rather than one per query.
///
/// ```
/// use replica_client::{RoundRobin, Router};
/// let a = "127.0.0.1:6001".parse().unwrap();
/// let b = "127.0.0.1:6002".parse().unwrap();
/// let router = RoundRobin::new([a, b]).unwrap();
/// assert_eq!((router.next(), router.next(), router.next()), (a, b, a));
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    addrs: Vec<SocketAddr>,
    cursor: AtomicUsize,
    /// Per address, until when (ms since `epoch`; 0 = never failed) queries avoid it.
    avoid_until: Vec<AtomicU64>,
    epoch: Instant,
    hold_off: Duration,
}

impl RoundRobin {
    /// A router over `addrs` (duplicates removed, order kept); fails if there are none.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Self, ClientError> {
        let mut unique: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        if unique.is_empty() {
            return Err(ClientError::NoServers);
        }
        Ok(RoundRobin {
            avoid_until: unique.iter().map(|_| AtomicU64::new(0)).collect(),
            addrs: unique,
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
            hold_off: DEFAULT_HOLD_OFF,
        })
    }

    /// Sets how long an address that failed is skipped (zero: never skipped).
    pub fn hold_off(mut self, hold_off: Duration) -> Self {
        self.hold_off = hold_off;
        self
    }

    /// The addresses, in turn order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Milliseconds since `epoch`, plus one so that 0 means "never".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

impl Router for RoundRobin {
    fn next(&self) -> SocketAddr {
        let n = self.addrs.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .find(|&k| self.avoid_until[k].load(Ordering::Relaxed) <= now)
            .map_or(self.addrs[start % n], |k| self.addrs[k])
    }

    fn len(&self) -> usize {
        self.addrs.len()
    }

    fn failed(&self, addr: SocketAddr) {
        let hold_off = u64::try_from(self.hold_off.as_millis()).unwrap_or(u64::MAX / 2);
        let until = self.now_ms().saturating_add(hold_off);
        for (k, a) in self.addrs.iter().enumerate() {
            if *a == addr {
                self.avoid_until[k].store(until, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

/// Settings for a [`Client`].
///
/// ```
/// use std::time::Duration;
/// use replica_client::{Client, Fixed};
///
/// let client = Client::builder()
///     .connect_timeout(Duration::from_millis(500))
///     .read_timeout(Duration::from_secs(3))
///     .build(Fixed("127.0.0.1:6001".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    connect_timeout: Duration,
    read_timeout: Duration,
    max_idle_per_addr: usize,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_idle_per_addr: DEFAULT_MAX_IDLE,
        }
    }
}

impl ClientBuilder {
    /// Time allowed to open a connection (default 2 s). Zero is taken as 1 ms.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Time allowed for each read of a reply and each write of a request (default 10 s).
    /// Zero is taken as 1 ms.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Idle connections kept per address for later queries (default 32); more are closed.
    pub fn max_idle_per_addr(mut self, n: usize) -> Self {
        self.max_idle_per_addr = n;
        self
    }

    /// A client that routes its queries with `router`.
    pub fn build(self, router: impl Router + 'static) -> Client {
        Client {
            inner: Arc::new(Inner {
                router: Box::new(router),
                config: self,
                pool: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// A connection-pooling client; see the [module documentation](self).
///
/// Cloning is cheap and shares the router and the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    router: Box<dyn Router>,
    config: ClientBuilder,
    /// Idle connections per address. Taken out for a query and put back after a clean reply,
    /// so the lock is held only around the take and the return, never during IO.
    pool: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("router", &self.inner.router)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Failure {
    /// The connection failed: try elsewhere.
    Io(io::Error),
    /// The server spoke nonsense: give up.
    Protocol(ProtocolError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl Client {
    /// A client with default settings that routes its queries with `router`.
    pub fn new(router: impl Router + 'static) -> Client {
        ClientBuilder::default().build(router)
    }

    /// Settings for a client: timeouts and pool size.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The router this client asks before every query.
    pub fn router(&self) -> &dyn Router {
        &*self.inner.router
    }

    /// The value of `key`, or `None` if it is absent (never written, or deleted).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, ClientError> {
        match self.command(&[&b"GET"[..], key.as_ref()])? {
            Value::Bulk(value) => Ok(Some(value)),
            Value::Nil => Ok(None),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// Stores `value` under `key`. The server answers once its own replica has the write;
    /// other replicas get it in the background.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), ClientError> {
        match self.command(&[&b"SET"[..], key.as_ref(), value.as_ref()])? {
            Value::Simple(s) if s == "OK" => Ok(()),
            other => Err(unexpected("SET", &other)),
        }
    }

    /// Deletes `key`; returns whether it existed on the server that took the delete.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        match self.command(&[&b"DEL"[..], key.as_ref()])? {
            Value::Integer(n) => Ok(n > 0),
            other => Err(unexpected("DEL", &other)),
        }
    }

    /// Every live pair whose key starts with `prefix` (`""`: all of them), sorted by key.
    pub fn list(&self, prefix: impl AsRef<[u8]>) -> Result<BTreeMap<Bytes, Bytes>, ClientError> {
        let reply = self.command(&[&b"LIST"[..], prefix.as_ref()])?;
        let Value::Array(items) = reply else {
            return Err(unexpected("LIST", &reply));
        };
        if items.len() % 2 != 0 {
            return Err(ClientError::UnexpectedReply {
                command: "LIST",
                reply: format!("an array of {} elements (odd)", items.len()),
            });
        }
        let mut pairs = BTreeMap::new();
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            match (k, v) {
                (Value::Bulk(k), Value::Bulk(v)) => {
                    pairs.insert(k, v);
                }
                (k, v) => return Err(unexpected("LIST", &Value::Array(vec![k, v]))),
            }
        }
        Ok(pairs)
    }

    /// Checks that a server answers.
    pub fn ping(&self) -> Result<(), ClientError> {
        match self.command(&[b"PING"])? {
            Value::Simple(s) if s == "PONG" => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    /// The text of `INFO` from the next server: `name:value` lines under `# Section` headings.
    pub fn info(&self) -> Result<String, ClientError> {
        match self.command(&[b"INFO"])? {
            Value::Bulk(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
            Value::Verbatim { text, .. } => Ok(String::from_utf8_lossy(&text).into_owned()),
            other => Err(unexpected("INFO", &other)),
        }
    }

    /// The `name:value` fields of `INFO` from the next server.
    pub fn info_fields(&self) -> Result<BTreeMap<String, String>, ClientError> {
        Ok(parse_info(&self.info()?))
    }

    /// Sends any command and returns its reply. An error reply (`-ERR ...`) is returned as
    /// [`ClientError::Server`]; errors nested inside an aggregate stay [`Value::Error`]s.
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Value, ClientError> {
        if args.is_empty() {
            // A server ignores an empty request, so no reply would ever come.
            return Err(ClientError::EmptyCommand);
        }
        let mut request = Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        resp::encode_command(&mut request, args);
        let router = &self.inner.router;
        let mut attempts = Vec::new();
        for _ in 0..router.len().max(1) {
            let addr = router.next();
            match self.query(addr, &request) {
                Ok(Value::Error(msg)) => return Err(ClientError::Server(msg)),
                Ok(value) => return Ok(value),
                Err(Failure::Protocol(source)) => return Err(ClientError::Protocol { addr, source }),
                Err(Failure::Io(e)) => {
                    tracing::debug!(%addr, "query failed: {e}");
                    router.failed(addr);
                    attempts.push((addr, e));
                }
            }
        }
        Err(ClientError::Unavailable { attempts })
    }

    /// One attempt at `addr`: on a pooled connection if there is one, else on a new one.
    fn query(&self, addr: SocketAddr, request: &[u8]) -> Result<Value, Failure> {
        let config = &self.inner.config;
        if let Some(mut conn) = self.take(addr) {
            match conn.round_trip(request, config.read_timeout) {
                Ok(value) => {
                    self.give_back(addr, conn);
                    return Ok(value);
                }
                // An idle connection the server has closed (restart, idle timeout) fails at
                // once, before the request can have run: retry on a new connection. A timeout
                // is not such a sign (the request may be running), so it is not retried here.
                Err(Failure::Io(e)) if is_stale(&e) => self.forget(addr),
                Err(other) => return Err(other),
            }
        }
        let mut conn = Conn::connect(addr, config)?;
        let value = conn.round_trip(request, config.read_timeout)?;
        self.give_back(addr, conn);
        Ok(value)
    }

    fn pool(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<Conn>>> {
        // A panic elsewhere while holding the lock leaves the pool consistent (a map of idle
        // connections), so a poisoned lock is still usable.
        self.inner.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        self.pool().get_mut(&addr)?.pop()
    }

    fn give_back(&self, addr: SocketAddr, conn: Conn) {
        // Leftover bytes would be taken for the next query's reply.
        if !conn.buf.is_empty() || conn.parser.is_mid_reply() {
            return;
        }
        let mut pool = self.pool();
        let idle = pool.entry(addr).or_default();
        if idle.len() < self.inner.config.max_idle_per_addr {
            idle.push(conn);
        }
    }

    /// Drops the idle connections to `addr`: when one turned out dead, the others are likely
    /// dead too.
    fn forget(&self, addr: SocketAddr) {
        let dead = self.pool().remove(&addr);
        drop(dead);
    }
}

fn is_stale(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected)
}

fn unexpected(command: &'static str, reply: &Value) -> ClientError {
    let mut text = format!("{reply:?}");
    if text.len() > 200 {
        let cut = (0..=200).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    ClientError::UnexpectedReply { command, reply: text }
}

/// The `name:value` lines of an `INFO` reply; headings and blank lines are skipped.
///
/// ```
/// let fields = replica_client::parse_info("# Sync\r\nactor:0\r\nkeys:12\r\n");
/// assert_eq!(fields["keys"], "12");
/// ```
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// One connection to a server.
struct Conn {
    stream: TcpStream,
    /// Received bytes not yet parsed into a reply.
    buf: BytesMut,
    parser: ValueParser,
    /// Where reads land before they are appended to `buf`. Zeroed once here rather than on
    /// every read, which would cost more than a small reply's copy.
    scratch: Box<[u8]>,
}

impl Conn {
    fn connect(addr: SocketAddr, config: &ClientBuilder) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, config.connect_timeout).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", config.connect_timeout),
                )
            } else {
                e
            }
        })?;
        // Requests are small and each waits for its reply: never hold them back (Nagle).
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.read_timeout))?;
        stream.set_write_timeout(Some(config.read_timeout))?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            parser: ValueParser::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Sends `request` and reads its reply.
    fn round_trip(&mut self, request: &[u8], timeout: Duration) -> Result<Value, Failure> {
        let timed_out = |e: io::Error, what: &str| {
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out after {timeout:?}"))
            } else {
                e
            }
        };
        self.stream.write_all(request).map_err(|e| timed_out(e, "sending the request"))?;
        loop {
            if let Some(value) = self.parser.parse(&mut self.buf).map_err(Failure::Protocol)? {
                return Ok(value);
            }
            match self.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )));
                }
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(timed_out(e, "waiting for the reply"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;
    use resp::RequestParser;

    const _: () = {
        const fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<RoundRobin>();
        assert_send_sync::<ClientError>();
    };

    /// How a fake server answers.
    #[derive(Clone, Copy)]
    enum Mode {
        /// A tiny store: GET, SET, DEL, LIST, PING, INFO; `FAIL` gets an error reply.
        Store,
        /// The store, but each connection is closed after one reply.
        OneShot,
        /// Reads requests, never answers.
        Silent,
        /// Answers every request with these bytes.
        Canned(&'static [u8]),
    }

    struct Fake {
        addr: SocketAddr,
        /// Connections accepted so far.
        accepted: Arc<AtomicUsize>,
    }

    /// A fake server on a free loopback port; its threads end with the test process.
    fn fake(mode: Mode) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let store = Arc::new(Mutex::new(BTreeMap::<Bytes, Bytes>::new()));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let store = store.clone();
                thread::spawn(move || serve(stream, mode, &store));
            }
        });
        Fake { addr, accepted }
    }

    fn serve(mut stream: TcpStream, mode: Mode, store: &Mutex<BTreeMap<Bytes, Bytes>>) {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        loop {
            let Ok(n) = stream.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(args)) = parser.parse(&mut buf) {
                let mut out = Vec::new();
                match mode {
                    Mode::Silent => continue,
                    Mode::Canned(bytes) => out.extend_from_slice(bytes),
                    Mode::Store | Mode::OneShot => {
                        let mut map = store.lock().unwrap_or_else(PoisonError::into_inner);
                        execute(&args, &mut map, &mut out);
                    }
                }
                if stream.write_all(&out).is_err() || matches!(mode, Mode::OneShot) {
                    return;
                }
            }
        }
    }

    fn execute(args: &[Bytes], map: &mut BTreeMap<Bytes, Bytes>, out: &mut Vec<u8>) {
        let name = args[0].to_ascii_uppercase();
        match (&name[..], &args[1..]) {
            (b"GET", [k]) => match map.get(k) {
                Some(v) => resp::bulk(out, v),
                None => resp::null(out, resp::Protocol::Resp2),
            },
            (b"SET", [k, v]) => {
                map.insert(k.clone(), v.clone());
                resp::simple(out, "OK");
            }
            (b"DEL", keys) => {
                let n = keys.iter().filter(|k| map.remove(*k).is_some()).count();
                resp::integer(out, n as i64);
            }
            (b"LIST", [prefix]) => {
                let pairs: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
                resp::array_header(out, pairs.len() * 2);
                for (k, v) in pairs {
                    resp::bulk(out, k);
                    resp::bulk(out, v);
                }
            }
            (b"PING", []) => resp::simple(out, "PONG"),
            (b"INFO", []) => resp::bulk(out, b"# Sync\r\nactor:0\r\nnode:fake\r\nkeys:3\r\n"),
            _ => resp::error(out, "ERR unknown command or wrong number of arguments"),
        }
    }

    /// An address nothing listens on: connecting is refused.
    fn dead_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.local_addr().expect("local address")
    }

    #[test]
    fn get_put_delete_list() {
        let server = fake(Mode::Store);
        let client = Client::new(Fixed(server.addr));
        assert_eq!(client.get("a").unwrap(), None);
        client.put("a", "1").unwrap();
        client.put("b/x", b"\x00\r\n").unwrap();
        client.put("b/y", "3").unwrap();
        assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(client.get(b"b/x").unwrap().as_deref(), Some(&b"\x00\r\n"[..]));
        let listed = client.list("b/").unwrap();
        let keys: Vec<&[u8]> = listed.keys().map(|k| &k[..]).collect();
        assert_eq!(keys, vec![&b"b/x"[..], b"b/y"]);
        assert_eq!(client.list("").unwrap().len(), 3);
        assert!(client.delete("a").unwrap());
        assert!(!client.delete("a").unwrap());
        assert_eq!(client.get("a").unwrap(), None);
        client.ping().unwrap();
        assert_eq!(client.info_fields().unwrap()["node"], "fake");
        assert_eq!(client.command(&["get", "b/y"]).unwrap(), Value::Bulk("3".into()));
        assert!(matches!(client.command::<&str>(&[]), Err(ClientError::EmptyCommand)));
        // All of it on one pooled connection.
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn fails_over_to_the_next_address() {
        let live = fake(Mode::Store);
        let dead = dead_addr();
        let client = Client::new(RoundRobin::new([dead, live.addr]).unwrap());
        for i in 0..10 {
            client.put(format!("k{i}"), "v").unwrap();
        }
        assert_eq!(client.list("k").unwrap().len(), 10);
    }

    #[test]
    fn names_every_address_when_none_answers() {
        let (a, b) = (dead_addr(), dead_addr());
        let client = Client::new(RoundRobin::new([a, b]).unwrap());
        let err = client.get("k").unwrap_err();
        let text = err.to_string();
        assert!(err.is_unavailable(), "{text}");
        assert!(text.contains(&a.to_string()) && text.contains(&b.to_string()), "{text}");
        let ClientError::Unavailable { attempts } = err else { unreachable!() };
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].1.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn server_errors_are_not_retried() {
        let (a, b) = (fake(Mode::Store), fake(Mode::Store));
        let client = Client::new(RoundRobin::new([a.addr, b.addr]).unwrap());
        let err = client.command(&["FAIL"]).unwrap_err();
        assert!(matches!(&err, ClientError::Server(msg) if msg.starts_with("ERR unknown")), "{err}");
        let total = a.accepted.load(Ordering::SeqCst) + b.accepted.load(Ordering::SeqCst);
        assert_eq!(total, 1);
    }

    #[test]
    fn protocol_errors_and_wrong_shapes_are_reported() {
        let garbage = fake(Mode::Canned(b"?what\r\n"));
        let err = Client::new(Fixed(garbage.addr)).get("k").unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        let wrong = fake(Mode::Canned(b":1\r\n"));
        let client = Client::new(Fixed(wrong.addr));
        let err = client.get("k").unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedReply { command: "GET", .. }), "{err}");
        // The connection stays usable after a well-formed reply of the wrong shape.
        assert!(client.delete("k").unwrap());
        let odd = fake(Mode::Canned(b"*1\r\n$1\r\nk\r\n"));
        assert!(Client::new(Fixed(odd.addr)).list("").is_err());
    }

    #[test]
    fn a_closed_idle_connection_is_replaced() {
        let server = fake(Mode::OneShot);
        let client = Client::new(Fixed(server.addr));
        for i in 0..5 {
            client.put("k", i.to_string()).unwrap();
        }
        assert_eq!(client.get("k").unwrap().as_deref(), Some(&b"4"[..]));
        assert_eq!(server.accepted.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn a_silent_server_times_out() {
        let server = fake(Mode::Silent);
        let client = Client::builder().read_timeout(Duration::from_millis(200)).build(Fixed(server.addr));
        let started = Instant::now();
        let err = client.get("k").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let ClientError::Unavailable { attempts } = &err else { panic!("{err}") };
        assert_eq!(attempts[0].1.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[test]
    fn concurrent_queries_from_eight_threads() {
        let server = fake(Mode::Store);
        let client = Client::new(Fixed(server.addr));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let client = client.clone();
                thread::spawn(move || {
                    for i in 0..200 {
                        let key = format!("t{t}/{i}");
                        client.put(&key, format!("{t}-{i}")).unwrap();
                        assert_eq!(client.get(&key).unwrap(), Some(Bytes::from(format!("{t}-{i}"))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a client thread panicked");
        }
        assert_eq!(client.list("t").unwrap().len(), 1600);
        assert!(server.accepted.load(Ordering::SeqCst) <= 8);
    }

    #[derive(Debug)]
    struct Counting {
        inner: Fixed,
        calls: AtomicUsize,
    }

    impl Router for Counting {
        fn next(&self) -> SocketAddr {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.next()
        }
        fn len(&self) -> usize {
            1
        }
    }

    #[test]
    fn the_router_is_asked_before_every_query() {
        let server = fake(Mode::Store);
        let router = Arc::new(Counting { inner: Fixed(server.addr), calls: AtomicUsize::new(0) });
        let client = Client::new(router.clone());
        for _ in 0..7 {
            client.get("k").unwrap();
        }
        assert_eq!(router.calls.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn round_robin_rotates_and_avoids_failed_addresses() {
        let addrs: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let rr = RoundRobin::new([addrs[0], addrs[1], addrs[1], addrs[2]]).unwrap();
        assert_eq!(rr.len(), 3);
        let seen: Vec<SocketAddr> = (0..6).map(|_| rr.next()).collect();
        assert_eq!(seen, [addrs[0], addrs[1], addrs[2], addrs[0], addrs[1], addrs[2]]);
        rr.failed(addrs[1]);
        assert!((0..6).all(|_| rr.next() != addrs[1]));
        // When every address failed, they are all tried again.
        rr.failed(addrs[0]);
        rr.failed(addrs[2]);
        let all: std::collections::HashSet<_> = (0..6).map(|_| rr.next()).collect();
        assert_eq!(all.len(), 3);
        assert!(matches!(RoundRobin::new([]), Err(ClientError::NoServers)));
        let no_hold = RoundRobin::new(addrs.clone()).unwrap().hold_off(Duration::ZERO);
        no_hold.failed(addrs[0]);
        assert_eq!(no_hold.next(), addrs[0]);
    }

    #[test]
    fn info_lines_parse() {
        let fields = parse_info("# Server\r\nnode:n1\r\n\r\n# Sync\r\nsync_messages_sent:17\r\nbad line\r\n");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields["sync_messages_sent"], "17");
    }
}
