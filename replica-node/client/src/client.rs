//! The client: settings, the connection pool, routing and failover.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use resp::Value;

use crate::conn::{Conn, Timeouts};
use crate::error::Failure;
use crate::{ClientError, Router};

/// Default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for a reply (and for sending a request).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of idle connections kept per address.
pub const DEFAULT_MAX_IDLE: usize = 32;

/// Settings for a [`Client`].
///
/// ```
/// use std::time::Duration;
/// use replica_client::{Client, Fixed};
///
/// let client = Client::builder()
///     .connect_timeout(Duration::from_millis(500))
///     .read_timeout(Duration::from_secs(3))
///     .password("correct horse battery staple")
///     .build(Fixed("127.0.0.1:6001".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    connect_timeout: Duration,
    read_timeout: Duration,
    max_idle_per_addr: usize,
    password: Option<Secret>,
}

/// A password, kept out of `Debug` output.
#[derive(Clone)]
struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_idle_per_addr: DEFAULT_MAX_IDLE,
            password: None,
        }
    }
}

impl ClientBuilder {
    fn timeouts(&self) -> Timeouts {
        Timeouts { connect: self.connect_timeout, read: self.read_timeout }
    }

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

    /// The password of servers started with one (`--requirepass-file`): every new connection
    /// authenticates with `AUTH default <password>` before its first query (a server without a
    /// password accepts that too). A refused password is reported as [`ClientError::Server`]
    /// with the server's `WRONGPASS` message.
    pub fn password(mut self, password: impl AsRef<[u8]>) -> Self {
        self.password = Some(Secret(password.as_ref().into()));
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

/// A connection-pooling client; see the [crate documentation](crate).
///
/// Cloning is cheap and shares the router and the pool.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // One actor: each query here reads its own writes (across actors a write takes a few
/// # // milliseconds to arrive).
/// # let config = replica_node::NodeConfig { host: "127.0.0.1".into(), port: 0, actors: 1, ..Default::default() };
/// # let node = replica_node::Node::start(&config)?;
/// use replica_client::{Client, RoundRobin};
///
/// // The client ports of a node's actors (its description line lists them).
/// let servers = node.description().client_addrs();
/// let client = Client::new(RoundRobin::new(servers)?);
/// client.put("player:ada", "42")?;
/// client.put("player:bob", "7")?;
/// assert_eq!(client.get("player:ada")?.as_deref(), Some(&b"42"[..]));
/// assert_eq!(client.list("player:")?.len(), 2);
/// assert!(client.delete("player:bob")?);
/// assert_eq!(client.get("player:bob")?, None);
/// # Ok(())
/// # }
/// ```
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

impl Client {
    /// A client with default settings that routes its queries with `router`.
    pub fn new(router: impl Router + 'static) -> Client {
        ClientBuilder::default().build(router)
    }

    /// Settings for a client: timeouts, pool size, password.
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
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let config = replica_node::NodeConfig { host: "127.0.0.1".into(), port: 0, actors: 1, ..Default::default() };
    /// # let node = replica_node::Node::start(&config)?;
    /// # let client = replica_client::Client::new(replica_client::Fixed(node.description().client_addrs()[0]));
    /// use replica_client::{ClientError, Value};
    ///
    /// client.command(&["MSET", "a", "1", "b", "2"])?;
    /// let Value::Array(values) = client.command(&["MGET", "a", "b"])? else { panic!() };
    /// assert_eq!(values.len(), 2);
    /// let refused = client.command(&["INCR", "a"]);
    /// assert!(matches!(refused, Err(ClientError::Server(msg)) if msg.contains("last-writer-wins")));
    /// # Ok(())
    /// # }
    /// ```
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
                Err(Failure::Refused(msg)) => return Err(ClientError::Server(msg)),
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
        let mut conn = Conn::connect(addr, config.timeouts())?;
        if let Some(Secret(password)) = &config.password {
            let mut auth = Vec::with_capacity(password.len() + 32);
            // The two-argument form names Redis's default user: a server without a password
            // accepts it too, where `AUTH password` alone would be an error there.
            resp::encode_command(&mut auth, &[&b"AUTH"[..], b"default", password]);
            match conn.round_trip(&auth, config.read_timeout)? {
                Value::Simple(ok) if ok == "OK" => {}
                Value::Error(msg) => return Err(Failure::Refused(msg)),
                other => return Err(Failure::Refused(format!("unexpected reply to AUTH: {other:?}"))),
            }
        }
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
        if !conn.is_clean() {
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

#[cfg(test)]
mod tests;
