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
//! that pipelines without reading stops being read); at most [`MAX_BUFFERED`] request bytes
//! wait in the read buffer; and [`ClientConn::process`] runs at most a given number of commands
//! per call, so the driver can serve every connection in turn.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use replica_core::Now;
use resp::RequestParser;

use crate::command::{self, ActorState, Flow, ReplyBuf, Session};

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
    /// A new connection, with session id `id`.
    pub fn new(id: u64) -> Self {
        ClientConn {
            rbuf: BytesMut::new(),
            parser: RequestParser::new(),
            session: Session::new(id),
            out: ReplyBuf::new(),
            closing: false,
            eof: false,
            stalled: false,
        }
    }

    /// Takes bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
    }

    /// Notes that the client closed its side: the commands it sent still run, then the
    /// connection closes.
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Reads from `r` through `scratch` (one buffer per actor, so idle connections hold none)
    /// until it would block, ends, `max` bytes arrived, or the connection wants no more.
    /// Errors other than `WouldBlock` are returned: the connection is dead.
    pub fn read_from(&mut self, r: &mut impl Read, scratch: &mut [u8], max: usize) -> io::Result<ReadStatus> {
        let mut bytes = 0;
        while bytes < max && self.wants_read() {
            match r.read(scratch) {
                Ok(0) => {
                    self.feed_eof();
                    return Ok(ReadStatus { bytes, drained: true });
                }
                Ok(n) => {
                    self.feed(&scratch[..n]);
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
            if ran == budget || self.out.len() >= OUTPUT_WATERMARK {
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
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        self.out.write_to(w)
    }

    /// Whether more input is welcome now: the connection is open, its replies are being read,
    /// and its read buffer has room.
    pub fn wants_read(&self) -> bool {
        !self.closing && !self.eof && self.out.len() < OUTPUT_WATERMARK && self.rbuf.len() < MAX_BUFFERED
    }

    /// Whether replies wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether complete commands may be waiting that [`ClientConn::process`] did not get to
    /// (its budget ran out, or the replies were past the watermark and have drained since).
    pub fn has_buffered_work(&self) -> bool {
        self.stalled && !self.closing && self.out.len() < OUTPUT_WATERMARK
    }

    /// Unsent reply bytes.
    #[cfg(test)]
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Whether the connection is done: it is closing and every reply is out.
    pub fn is_finished(&self) -> bool {
        self.closing && self.out.is_empty()
    }

    /// Reads nothing more (the node is stopping): the complete commands already received
    /// still run and their replies still go out, as at the end of input.
    pub fn stop(&mut self) {
        self.eof = true;
    }
}

#[cfg(test)]
mod tests;
