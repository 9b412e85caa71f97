//! RESP2/RESP3 codec: request parsing and reply encoding for the server, reply parsing and
//! command encoding for clients.
//!
//! Pure: no IO, no clocks, no threads (`clippy.toml` bans them). Every decoder takes the
//! connection's read buffer, consumes what it decodes and returns `Ok(None)` when it needs more
//! bytes; no input can make it panic, allocate beyond the limits below, or recurse without bound.
//!
//! The crate, by side of the connection:
//! - server side, `request`: [`RequestParser`] reads the commands a client sends: multibulk
//!   (`*N\r\n$len\r\n...`, what `redis-cli`, `redis-benchmark` and every client library send,
//!   pipelined or not) and inline commands (`PING\r\n`, space-separated with optional quotes, as
//!   typed into telnet; [`split_inline`] splits such a line). It keeps resumable state, so a
//!   large request arriving in many small reads costs linear time, and its arguments are slices
//!   of the read buffer (no copy).
//! - server side, `reply`: [`simple`], [`error`], [`integer`], [`bulk`], [`null`],
//!   [`array_header`], [`map_header`] append replies to an output buffer without allocating, in
//!   the connection's [`Protocol`].
//! - client side, `value`: [`ValueParser`] / [`parse_value`] read replies into a [`Value`] (all
//!   RESP2 and RESP3 types; attributes are read and dropped); [`encode_command`] writes a
//!   request.
//! - both: [`ProtocolError`] (`error`), and the line and length scanning both parsers share
//!   (`scan`).
//! - `harness` (feature `harness`): the fuzz targets' checks, also run as unit tests.
//!
//! Limits: a request is at most [`MAX_REQUEST`] bytes, with at most [`MAX_ARGS`] arguments; an
//! inline request line is at most [`MAX_INLINE`] bytes. Key and value limits are the store's, checked
//! by its commands, so that an oversized value gets an error reply while the connection stays
//! usable.

mod error;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod reply;
mod request;
mod scan;
#[cfg(test)]
mod testutil;
mod value;

pub use error::ProtocolError;
pub use reply::{Protocol, array_header, bulk, error, integer, map_header, null, null_array, simple};
pub use request::{RequestParser, split_inline};
pub use value::{Value, ValueParser, encode_command, parse_value};

/// Largest request (all of its bytes, framing included). A request beyond this cannot be
/// buffered, so the stream cannot be resynchronised: the parser fails.
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Most arguments in one request. Each argument costs a `Bytes` handle (32 bytes) even when
/// empty, so this bounds the memory a tiny-argument request can pin.
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline request line, in bytes (`\n` excluded), as in Redis.
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest single bulk string, in requests and replies.
pub const MAX_BULK: usize = MAX_REQUEST;
/// Default bound on one reply, in bytes, for [`ValueParser`]. Replies may be much larger than
/// requests (`LIST ""` returns the whole store), so this is generous; it only stops a broken
/// server from making a client buffer forever.
pub const MAX_REPLY: usize = 1024 * 1024 * 1024;
/// Deepest nesting of aggregates in a reply.
pub const MAX_DEPTH: usize = 64;
/// Longest simple line in a reply (`+`, `-`, `:`, `,`, `(`, `#`, `_`).
pub const MAX_LINE: usize = 64 * 1024;
