//! One client connection as a bytes-in, bytes-out object, in the shape of a rustls
//! `Connection`: the driver hands it the bytes it read ([`ClientConn::read_from`] or
//! [`ClientConn::feed`]), lets it run the commands they hold ([`ClientConn::process`]), and
//! writes out what it produced ([`ClientConn::write_to`]); [`ClientConn::wants_read`],
//! [`ClientConn::wants_write`] and [`ClientConn::is_finished`] say what it is waiting for. It
//! owns no socket and reads no clock, so a test or a simulation can drive a client session with
//! plain byte slices.
//!
//! Bounds, so that no client can make the node hold unbounded memory for it or monopolise its
//! actor: commands run only while the unsent replies are below [`OUTPUT_WATERMARK`] (a client
//! that pipelines without reading stops being read); unsent replies never exceed the client
//! output limit (a reply that would pass it is dropped and the connection must be closed, see
//! [`ClientConn::output_over_limit`]); at most [`MAX_BUFFERED`] request bytes wait in the read
//! buffer; and [`ClientConn::process`] runs at most a given number of commands per call, so
//! the driver can serve every connection in turn.
//!
//! Admission, before a connection gets an object at all: [`Refusal`] says why one is turned
//! away and what it is told.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use replica_core::Now;
use resp::RequestParser;

use crate::command::{self, ActorState, Flow, Password, ReplyBuf, Session};

/// Commands run only while fewer unsent reply bytes than this wait: past it, the client must
/// read before it is served again.
pub const OUTPUT_WATERMARK: usize = 1024 * 1024;

/// Most received bytes that wait unparsed: a whole largest request plus one read.
pub const MAX_BUFFERED: usize = resp::MAX_REQUEST + 64 * 1024;

/// A client connection's protocol state; see the [module documentation](self).
#[derive(Debug)]
pub struct ClientConn {
    /// Received bytes not yet parsed into commands.
    rbuf: BytesMut,
    parser: RequestParser,
    session: Session,
    out: ReplyBuf,
    /// No further command will run: QUIT, a protocol error, end of input after the last whole
    /// command, or the node stopping. The connection closes once its replies are out.
    closing: bool,
    /// The client closed its side; the commands it sent before still run.
    eof: bool,
    /// The last [`ClientConn::process`] stopped early (budget or output) and complete commands
    /// may still wait in the read buffer.
    stalled: bool,
    /// Monotonic ms of the last byte read or written, for the idle timeout.
    last_active_ms: u64,
}

/// What one [`ClientConn::read_from`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStatus {
    /// Bytes read.
    pub bytes: usize,
    /// The source has nothing more for now (it would block, or it ended): a readiness event
    /// will say when it has. False when reading stopped at the byte budget or a full buffer.
    pub drained: bool,
}

impl ClientConn {
    /// A new connection, with session id `id`, whose unsent replies may not exceed
    /// `output_limit` bytes.
    #[cfg(test)]
    pub fn new(id: u64, output_limit: usize, now_ms: u64) -> Self {
        Self::with_session(Session::new(id), output_limit, now_ms)
    }

    /// A new connection with `session` (one listed in the node's clients).
    pub fn with_session(session: Session, output_limit: usize, now_ms: u64) -> Self {
        ClientConn {
            rbuf: BytesMut::new(),
            parser: RequestParser::new(),
            session,
            out: ReplyBuf::new(output_limit),
            closing: false,
            eof: false,
            stalled: false,
            last_active_ms: now_ms,
        }
    }

    /// The session (protocol, name, authentication).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Takes bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64) {
        if !bytes.is_empty() {
            self.rbuf.extend_from_slice(bytes);
            self.last_active_ms = now_ms;
        }
    }

    /// Notes that the client closed its side: the commands it sent still run, then the
    /// connection closes.
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Reads from `r` through `scratch` (one buffer per actor, so idle connections hold none)
    /// until it would block, ends, `max` bytes arrived, or the connection wants no more.
    /// Errors other than `WouldBlock` are returned: the connection is dead.
    pub fn read_from(
        &mut self,
        r: &mut impl Read,
        scratch: &mut [u8],
        max: usize,
        now_ms: u64,
    ) -> io::Result<ReadStatus> {
        let mut bytes = 0;
        while bytes < max && self.wants_read() {
            match r.read(scratch) {
                Ok(0) => {
                    self.feed_eof();
                    return Ok(ReadStatus { bytes, drained: true });
                }
                Ok(n) => {
                    self.feed(&scratch[..n], now_ms);
                    bytes += n;
                    if n < scratch.len() {
                        // A short read emptied the socket; new data brings a new event.
                        return Ok(ReadStatus { bytes, drained: true });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadStatus { bytes, drained: true });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ReadStatus { bytes, drained: false })
    }

    /// Runs at most `budget` of the complete commands received, stopping early when the
    /// connection closes or its unsent replies reach [`OUTPUT_WATERMARK`]. Returns how many
    /// ran.
    pub fn process(&mut self, actor: &mut ActorState, now: Now, budget: usize) -> usize {
        let mut ran = 0;
        self.stalled = false;
        while !self.closing {
            if ran == budget || self.out.len() >= OUTPUT_WATERMARK || self.out.over_limit() {
                self.stalled = true;
                break;
            }
            match self.parser.parse(&mut self.rbuf) {
                Ok(Some(args)) => {
                    ran += 1;
                    if command::execute(actor, &mut self.session, &args, now, &mut self.out) == Flow::Close {
                        self.closing = true;
                    }
                }
                Ok(None) => {
                    // A request cut short by the end of input is dropped, like Redis does.
                    if self.eof {
                        self.closing = true;
                    }
                    break;
                }
                Err(e) => {
                    resp::error(self.out.raw(), &format!("ERR Protocol error: {e}"));
                    self.closing = true;
                }
            }
        }
        ran
    }

    /// Writes as much of the unsent replies as `w` takes (stopping at `WouldBlock`); returns
    /// the bytes written. Other errors are returned: the connection is dead.
    pub fn write_to(&mut self, w: &mut impl Write, now_ms: u64) -> io::Result<usize> {
        let n = self.out.write_to(w)?;
        if n > 0 {
            self.last_active_ms = now_ms;
        }
        Ok(n)
    }

    /// Whether more input is welcome now: the connection is open, its replies are being read,
    /// and its read buffer has room.
    pub fn wants_read(&self) -> bool {
        !self.closing && !self.eof && self.out.len() < OUTPUT_WATERMARK && self.rbuf.len() < MAX_BUFFERED
    }

    /// Whether replies wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() && !self.out.over_limit()
    }

    /// Whether complete commands may be waiting that [`ClientConn::process`] did not get to
    /// (its budget ran out, or the replies were past the watermark and have drained since).
    pub fn has_buffered_work(&self) -> bool {
        self.stalled && !self.closing && self.out.len() < OUTPUT_WATERMARK && !self.out.over_limit()
    }

    /// A reply went past the client output limit: the connection must be closed now, without
    /// its replies (they were never built whole).
    pub fn output_over_limit(&self) -> bool {
        self.out.over_limit()
    }

    /// Unsent reply bytes.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Whether the connection is done: it is closing and every reply is out (or dropped past the
    /// limit).
    pub fn is_finished(&self) -> bool {
        self.out.over_limit() || (self.closing && self.out.is_empty())
    }

    /// Reads nothing more (the node is stopping): the complete commands already received
    /// still run and their replies still go out, as at the end of input.
    pub fn stop(&mut self) {
        self.eof = true;
    }

    /// How long nothing has been read or written, at `now_ms`.
    pub fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_active_ms)
    }
}

/// The limits and protections of a node's client ports (design 4.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The password every client must give first (`--requirepass-file`); `None`: none.
    pub requirepass: Option<Password>,
    /// Protected mode (`--protected-mode`): without a password, only loopback clients are
    /// served.
    pub protected_mode: bool,
    /// Most client connections open at once on the whole node (`--maxclients`).
    pub maxclients: usize,
    /// Most unsent reply bytes one connection may hold (`--client-output-limit`).
    pub output_limit: usize,
    /// Connections idle this long are closed (`--timeout`); `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            requirepass: None,
            protected_mode: true,
            maxclients: DEFAULT_MAXCLIENTS,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            idle_timeout: None,
        }
    }
}

/// Default `--maxclients`, as Redis's.
pub const DEFAULT_MAXCLIENTS: usize = 10_000;
/// Default `--client-output-limit`: 256 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 256 * 1024 * 1024;
/// Smallest `--client-output-limit`: below it, ordinary replies such as `INFO` would not fit.
pub const MIN_OUTPUT_LIMIT: usize = 16 * 1024;

/// Why a new connection is turned away before it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node has `--maxclients` connections open.
    MaxClients,
    /// Protected mode: no password, and the client is not on the loopback interface.
    ProtectedMode,
}

impl Refusal {
    /// What a new connection from `peer` is refused for, if anything, on a node in protected
    /// mode or not (`protected`), with or without a password. The connection count is checked
    /// separately (it needs the node-wide counter).
    pub fn for_peer(protected: bool, has_password: bool, peer: IpAddr) -> Option<Refusal> {
        let local = peer.to_canonical().is_loopback();
        (protected && !has_password && !local).then_some(Refusal::ProtectedMode)
    }

    /// The error the client is sent before its connection is closed (Redis's words, adapted).
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::MaxClients => b"-ERR max number of clients reached\r\n",
            Refusal::ProtectedMode => concat!(
                "-DENIED replica-node is running in protected mode because protected mode is enabled ",
                "and no password is set for the default user. In this mode connections are only ",
                "accepted from the loopback interface. If you want to connect from other computers, ",
                "either 1) restart the node with a password (--requirepass-file FILE, or the ",
                "REPLICA_NODE_REQUIREPASS environment variable) and have clients authenticate ",
                "(redis-cli -a, kv --password), or 2) if the node is not reachable from the internet, ",
                "restart it with '--protected-mode no'. You only need to do one of the above for the ",
                "node to accept connections from the outside.\r\n"
            )
            .as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests;
