//! One connection to a server: connect with timeouts, send a request, read its reply.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use resp::{Value, ValueParser};

use crate::error::Failure;

/// Size of each connection's read scratch buffer: the most one read takes from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// How long a connection may take to open, and each read or write of a query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

/// One connection to a server.
pub(crate) struct Conn {
    stream: TcpStream,
    /// Received bytes not yet parsed into a reply.
    buf: BytesMut,
    parser: ValueParser,
    /// Where reads land before they are appended to `buf`. Zeroed once here rather than on
    /// every read, which would cost more than a small reply's copy.
    scratch: Box<[u8]>,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr, timeouts: Timeouts) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeouts.connect).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", timeouts.connect),
                )
            } else {
                e
            }
        })?;
        // Requests are small and each waits for its reply: never hold them back (Nagle).
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeouts.read))?;
        stream.set_write_timeout(Some(timeouts.read))?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            parser: ValueParser::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Sends `request` and reads its reply.
    pub(crate) fn round_trip(&mut self, request: &[u8], timeout: Duration) -> Result<Value, Failure> {
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

    /// Whether the connection can serve another query: no bytes of a reply are left over
    /// (they would be taken for the next query's reply).
    pub(crate) fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.parser.is_mid_reply()
    }
}
