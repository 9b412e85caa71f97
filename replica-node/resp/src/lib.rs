//! RESP2/RESP3 codec: request parsing and reply encoding for the server, reply parsing and
//! command encoding for clients.
//!
//! Pure: no IO, no clocks, no threads. Every decoder takes the connection's read buffer, consumes
//! what it decodes and returns `Ok(None)` when it needs more bytes; no input can make it panic,
//! allocate beyond the limits below, or recurse without bound.
//!
//! - [`RequestParser`] reads the commands a client sends: multibulk (`*N\r\n$len\r\n...`, what
//!   `redis-cli`, `redis-benchmark` and every client library send, pipelined or not) and inline
//!   commands (`PING\r\n`, space-separated with optional quotes, as typed into telnet). It keeps
//!   resumable state, so a large request arriving in many small reads costs linear time, and its
//!   arguments are slices of the read buffer (no copy).
//! - [`simple`], [`error`], [`integer`], [`bulk`], [`null`], [`array_header`], [`map_header`]
//!   append replies to an output buffer without allocating.
//! - [`ValueParser`] / [`parse_value`] read replies into a [`Value`] (all RESP2 and RESP3
//!   types; attributes are read and dropped); [`encode_command`] writes a request.
//!
//! Limits: a request is at most [`MAX_REQUEST`] bytes, with at most [`MAX_ARGS`] arguments; an
//! inline request line is at most [`MAX_INLINE`] bytes. Key and value limits are the store's, checked
//! by its commands, so that an oversized value gets an error reply while the connection stays
//! usable.

use std::mem;

use bytes::{Buf, Bytes, BytesMut};

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

/// The longest valid length line is a type byte, `-9223372036854775808` (20 bytes) and CRLF;
/// anything longer cannot be a number, so it is refused without waiting for the rest.
const MAX_NUMBER_LINE: usize = 20;
/// Bulk arguments from this size on get their whole body reserved in the read buffer at once,
/// so the reader does not grow it (and copy it) read by read.
const BIG_ARG: usize = 32 * 1024;

/// The stream violates the protocol and cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length or count field is not a decimal integer.
    #[error("invalid {0}: not a decimal integer")]
    NotANumber(&'static str),
    /// A length or count field is negative where that means nothing.
    #[error("invalid {what}: {value}")]
    Negative {
        /// The field.
        what: &'static str,
        /// What it held.
        value: i64,
    },
    /// Something is larger than this module's limits allow.
    #[error("{what} too large: {len} bytes (the limit is {max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes, as announced or as buffered so far.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A request or an aggregate announces more elements than this module's limits allow.
    #[error("too many {what}: {count} (the limit is {max})")]
    TooMany {
        /// What there were too many of.
        what: &'static str,
        /// How many were announced.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A line or a bulk string is not followed by CRLF.
    #[error("expected CRLF after {0}")]
    MissingCrlf(&'static str),
    /// An unexpected byte where a type marker belongs.
    #[error("expected {expected}, got {}", show_byte(*.got))]
    Unexpected {
        /// What the parser expected.
        expected: &'static str,
        /// The byte it found.
        got: u8,
    },
    /// An inline request with an unterminated quote, or a closing quote not followed by a space.
    #[error("unbalanced quotes in inline request")]
    UnbalancedQuotes,
    /// A reply nested deeper than [`MAX_DEPTH`].
    #[error("reply nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A RESP3 scalar (boolean, double, big number, null, verbatim string) is malformed.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

fn show_byte(b: u8) -> String {
    format!("'{}'", std::ascii::escape_default(b))
}

fn too_large(what: &'static str, len: impl TryInto<u64>, max: usize) -> ProtocolError {
    ProtocolError::TooLarge { what, len: len.try_into().unwrap_or(u64::MAX), max: max as u64 }
}

fn too_many(what: &'static str, count: impl TryInto<u64>, max: usize) -> ProtocolError {
    ProtocolError::TooMany { what, count: count.try_into().unwrap_or(u64::MAX), max: max as u64 }
}

// ---------------------------------------------------------------------------------------------
// Scanning helpers shared by both parsers.

/// Finds the line that starts at `buf[0]` (its type byte) and holds at most `max` bytes after
/// the type byte. Returns the index of its `\r` once the line and its `\r\n` are buffered.
///
/// The verdict depends only on the bytes it looks at, so feeding the same stream in different
/// chunks yields the same results.
fn find_line(buf: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) => match buf.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(cr)),
            Some(_) => Err(ProtocolError::MissingCrlf(what)),
        },
        None if buf.len() >= max + 2 => Err(too_large(what, buf.len(), max)),
        None => Ok(None),
    }
}

/// Parses an optionally negative decimal integer (no `+`, no spaces); `None` if it is not one
/// or overflows `i64`.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Accumulate negatively: the negative range is one larger, so i64::MIN parses.
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg { Some(n) } else { n.checked_neg() }
}

/// Parses the length line at the front of `buf` (`<type><decimal>\r\n`): the value and the
/// bytes the line takes, or `None` if the line is not complete yet.
fn length_line(buf: &[u8], what: &'static str) -> Result<Option<(i64, usize)>, ProtocolError> {
    // A line too long to hold a number is reported as not a number, as Redis does.
    let line = find_line(buf, MAX_NUMBER_LINE, what).map_err(|e| {
        if let ProtocolError::TooLarge { .. } = e { ProtocolError::NotANumber(what) } else { e }
    })?;
    let Some(cr) = line else {
        return Ok(None);
    };
    match parse_i64(&buf[1..cr]) {
        Some(n) => Ok(Some((n, cr + 2))),
        None => Err(ProtocolError::NotANumber(what)),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (server side).

/// Incremental parser of client requests, one per connection.
///
/// Feed it the connection's read buffer after every read; each call consumes and returns at most
/// one command. Bytes of a request that is not complete yet may be consumed into the parser's
/// state, so always pass the same buffer (appending to it between calls). Arguments are slices
/// of that buffer.
///
/// ```
/// use bytes::BytesMut;
/// use resp::RequestParser;
///
/// let mut parser = RequestParser::new();
/// let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
/// assert_eq!(parser.parse(&mut buf), Ok(None)); // incomplete: read more
/// buf.extend_from_slice(b"\nk\r\nPING\r\n");
/// assert_eq!(parser.parse(&mut buf).unwrap().unwrap(), vec!["GET", "k"]);
/// assert_eq!(parser.parse(&mut buf).unwrap().unwrap(), vec!["PING"]); // inline
/// assert_eq!(parser.parse(&mut buf), Ok(None));
/// ```
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Arguments read so far of the current multibulk request.
    args: Vec<Bytes>,
    /// Arguments of the current multibulk request still to read; 0 between requests.
    remaining: usize,
    /// Length of the current bulk argument once its `$len` line has been consumed.
    bulk: Option<usize>,
    /// Bytes of the current request consumed so far.
    consumed: usize,
    /// Bytes at the front of the buffer already searched for the end of an inline line.
    scanned: usize,
}

/// What reading one inline line produced.
enum Inline {
    Command(Vec<Bytes>),
    Empty,
    NeedMore,
}

impl RequestParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes one complete command from `buf` and returns its arguments (never empty), or
    /// `Ok(None)` when `buf` holds no complete command yet. Empty requests (`*0`, blank inline
    /// lines) are skipped, as Redis does.
    ///
    /// An error means the stream cannot be resynchronised: reply with the error and close.
    /// The parser is reset, but the buffer is left where the error was found.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let result = self.parse_inner(buf);
        if result.is_err() {
            *self = Self::default();
        }
        result
    }

    /// Whether part of a request has been consumed into the parser (or scanned, for an inline
    /// line). Together with a non-empty buffer, this tells at the end of a stream whether the
    /// client left a request unfinished.
    pub fn is_mid_request(&self) -> bool {
        self.remaining > 0 || self.scanned > 0
    }

    fn parse_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.remaining == 0 {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline(buf)? {
                        Inline::Command(args) => return Ok(Some(args)),
                        Inline::Empty => continue,
                        Inline::NeedMore => return Ok(None),
                    }
                }
                let Some((n, used)) = length_line(buf, "multibulk length")? else {
                    return Ok(None);
                };
                if n < 0 {
                    return Err(ProtocolError::Negative { what: "multibulk length", value: n });
                }
                if n as u64 > MAX_ARGS as u64 {
                    return Err(too_many("arguments", n, MAX_ARGS));
                }
                buf.advance(used);
                if n == 0 {
                    continue;
                }
                self.remaining = n as usize;
                self.consumed = used;
                // Most commands have 1 to 3 arguments; a huge announced count must not
                // allocate before the arguments arrive.
                self.args = Vec::with_capacity(self.remaining.min(16));
            }
            while self.remaining > 0 {
                let len = match self.bulk {
                    Some(len) => len,
                    None => {
                        let Some(&first) = buf.first() else {
                            return Ok(None);
                        };
                        if first != b'$' {
                            return Err(ProtocolError::Unexpected { expected: "'$'", got: first });
                        }
                        let Some((len, used)) = length_line(buf, "bulk length")? else {
                            return Ok(None);
                        };
                        if len < 0 {
                            return Err(ProtocolError::Negative { what: "bulk length", value: len });
                        }
                        if len as u64 > MAX_BULK as u64 {
                            return Err(too_large("bulk argument", len, MAX_BULK));
                        }
                        let len = len as usize;
                        let total = self.consumed + used + len + 2;
                        if total > MAX_REQUEST {
                            return Err(too_large("request", total, MAX_REQUEST));
                        }
                        buf.advance(used);
                        self.consumed += used;
                        self.bulk = Some(len);
                        len
                    }
                };
                if buf.len() < len + 2 {
                    if len >= BIG_ARG {
                        // Slack for the reader's next read, so it does not reallocate either.
                        buf.reserve(len + 2 - buf.len() + 64 * 1024);
                    }
                    return Ok(None);
                }
                if &buf[len..len + 2] != b"\r\n" {
                    return Err(ProtocolError::MissingCrlf("bulk argument"));
                }
                self.args.push(buf.split_to(len).freeze());
                buf.advance(2);
                self.bulk = None;
                self.consumed += len + 2;
                self.remaining -= 1;
            }
            self.consumed = 0;
            return Ok(Some(mem::take(&mut self.args)));
        }
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Inline, ProtocolError> {
        let window = buf.len().min(MAX_INLINE + 1);
        let from = self.scanned.min(window);
        let Some(at) = buf[from..window].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_INLINE {
                return Err(too_large("inline request", buf.len(), MAX_INLINE));
            }
            self.scanned = window;
            return Ok(Inline::NeedMore);
        };
        self.scanned = 0;
        let line = buf.split_to(from + at + 1).freeze();
        let args = split_line(&line.slice(..from + at))?;
        Ok(if args.is_empty() { Inline::Empty } else { Inline::Command(args) })
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline request line into arguments the way `redis-cli` and Redis do
/// (`sdssplitargs`): words separated by spaces; `"..."` with the escapes `\n \r \t \b \a \\ \"`
/// and `\xHH`; `'...'` with `\'`. A closing quote must be followed by a space or the end.
///
/// ```
/// use resp::split_inline;
///
/// let args = split_inline(br#"put "hello world" 'it\'s' \x41"#).unwrap();
/// assert_eq!(args, vec!["put", "hello world", "it's", "\\x41"]);
/// assert!(split_inline(br#"get "open"#).is_err());
/// ```
pub fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    split_line(&Bytes::copy_from_slice(line))
}

fn split_line(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let s = &line[..];
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < s.len() && is_space(s[i]) {
            i += 1;
        }
        if i == s.len() {
            return Ok(args);
        }
        let start = i;
        while i < s.len() && !is_space(s[i]) && s[i] != b'"' && s[i] != b'\'' {
            i += 1;
        }
        if i == s.len() || is_space(s[i]) {
            // A plain word: a slice of the line, no copy.
            args.push(line.slice(start..i));
            continue;
        }
        let mut tok = s[start..i].to_vec();
        let (mut dquote, mut squote) = (false, false);
        loop {
            let c = s.get(i).copied();
            if dquote {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') => {
                        let hex = s.get(i + 1) == Some(&b'x');
                        let hi = s.get(i + 2).copied().and_then(hex_val);
                        let lo = s.get(i + 3).copied().and_then(hex_val);
                        match (hex, hi, lo, s.get(i + 1)) {
                            (true, Some(hi), Some(lo), _) => {
                                tok.push(hi << 4 | lo);
                                i += 3;
                            }
                            (_, _, _, Some(&e)) => {
                                tok.push(match e {
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    b'b' => 0x08,
                                    b'a' => 0x07,
                                    other => other,
                                });
                                i += 1;
                            }
                            (_, _, _, None) => tok.push(b'\\'),
                        }
                    }
                    Some(b'"') => {
                        if s.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => tok.push(other),
                }
            } else if squote {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if s.get(i + 1) == Some(&b'\'') => {
                        tok.push(b'\'');
                        i += 1;
                    }
                    Some(b'\'') => {
                        if s.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => tok.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if is_space(b) => break,
                    Some(b'"') => dquote = true,
                    Some(b'\'') => squote = true,
                    Some(other) => tok.push(other),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(tok));
    }
}

// ---------------------------------------------------------------------------------------------
// Replies (server side).

/// The reply protocol a connection speaks: RESP2 until the client sends `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2: nulls are `$-1`, maps are flat arrays.
    #[default]
    Resp2,
    /// RESP3: nulls are `_`, maps are `%`.
    Resp3,
}

/// Appends the decimal digits of `n`.
fn put_u64(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&tmp[i..]);
}

fn put_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    put_u64(out, n.unsigned_abs());
}

/// `<marker><n>\r\n`
fn put_header(out: &mut Vec<u8>, marker: u8, n: u64) {
    out.push(marker);
    put_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// A line reply; CR and LF (which would end it early and desynchronise the client) become
/// spaces.
fn put_line(out: &mut Vec<u8>, marker: u8, s: &str) {
    out.reserve(s.len() + 3);
    out.push(marker);
    if s.bytes().any(|b| b == b'\r' || b == b'\n') {
        out.extend(s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    } else {
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a simple string reply: `+OK\r\n`.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    put_line(out, b'+', s);
}

/// Appends an error reply: `-ERR message\r\n`. The message starts with an upper-case error code
/// (`ERR`, `WRONGTYPE`, `NOPROTO`, ...), as clients expect.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    put_line(out, b'-', msg);
}

/// Appends an integer reply: `:42\r\n`.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    put_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply: `$5\r\nhello\r\n`.
pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() + 16);
    put_header(out, b'$', data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a null reply: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn null(out: &mut Vec<u8>, proto: Protocol) {
    out.extend_from_slice(match proto {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// Appends the header of an array of `n` elements (which the caller appends next).
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    put_header(out, b'*', n as u64);
}

/// Appends the header of a map of `n` pairs (the caller appends key, value, key, value, ...):
/// `%n` in RESP3, a flat array `*2n` in RESP2.
pub fn map_header(out: &mut Vec<u8>, n: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => put_header(out, b'*', 2 * n as u64),
        Protocol::Resp3 => put_header(out, b'%', n as u64),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and replies (client side).

/// Appends a command as a multibulk request, the form every server accepts.
///
/// ```
/// let mut out = Vec::new();
/// resp::encode_command(&mut out, &["GET", "k"]);
/// assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
/// ```
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg.as_ref());
    }
}

/// A reply, RESP2 or RESP3.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+...`: a short status such as `OK`. Invalid UTF-8 is replaced.
    Simple(String),
    /// `-...` or a RESP3 blob error `!...`: the server refused the command.
    Error(String),
    /// `:...`
    Integer(i64),
    /// `$...`: binary-safe bytes.
    Bulk(Bytes),
    /// `$-1`, `*-1` (RESP2) or `_` (RESP3).
    Nil,
    /// `*...`
    Array(Vec<Value>),
    /// `%...` (RESP3): pairs in the order the server sent them.
    Map(Vec<(Value, Value)>),
    /// `~...` (RESP3)
    Set(Vec<Value>),
    /// `>...` (RESP3): out-of-band data the server pushed.
    Push(Vec<Value>),
    /// `#t` / `#f` (RESP3)
    Boolean(bool),
    /// `,...` (RESP3), including `inf`, `-inf` and `nan`.
    Double(f64),
    /// `(...` (RESP3): an integer of any size, as its decimal digits.
    BigNumber(String),
    /// `=...` (RESP3): text with a three-letter format such as `txt` or `mkd`.
    Verbatim {
        /// The format, e.g. `*b"txt"`.
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
}

impl Value {
    /// Appends this value as a reply in `proto`. RESP3-only types are written in RESP2 the way
    /// Redis does (maps and sets as arrays, booleans as 0/1, doubles and big numbers as bulk
    /// strings).
    pub fn encode(&self, out: &mut Vec<u8>, proto: Protocol) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Value::Simple(s) => simple(out, s),
            Value::Error(s) => error(out, s),
            Value::Integer(n) => integer(out, *n),
            Value::Bulk(b) => bulk(out, b),
            Value::Nil => null(out, proto),
            Value::Array(items) => {
                array_header(out, items.len());
                items.iter().for_each(|v| v.encode(out, proto));
            }
            Value::Map(pairs) => {
                map_header(out, pairs.len(), proto);
                for (k, v) in pairs {
                    k.encode(out, proto);
                    v.encode(out, proto);
                }
            }
            Value::Set(items) | Value::Push(items) => {
                let marker = match (self, resp3) {
                    (_, false) => b'*',
                    (Value::Set(_), true) => b'~',
                    _ => b'>',
                };
                put_header(out, marker, items.len() as u64);
                items.iter().for_each(|v| v.encode(out, proto));
            }
            Value::Boolean(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::Boolean(b) => integer(out, i64::from(*b)),
            Value::Double(d) => {
                let text = if d.is_nan() {
                    "nan".to_owned()
                } else if d.is_infinite() {
                    if *d > 0.0 { "inf" } else { "-inf" }.to_owned()
                } else {
                    d.to_string()
                };
                if resp3 { put_line(out, b',', &text) } else { bulk(out, text.as_bytes()) }
            }
            Value::BigNumber(s) if resp3 => put_line(out, b'(', s),
            Value::BigNumber(s) => bulk(out, s.as_bytes()),
            Value::Verbatim { format, text } if resp3 => {
                put_header(out, b'=', text.len() as u64 + 4);
                out.extend_from_slice(format);
                out.push(b':');
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            Value::Verbatim { text, .. } => bulk(out, text),
        }
    }
}

/// Incremental reply parser, one per connection.
///
/// It never consumes a partial reply: it remembers how far it has checked the buffer, so a
/// large reply arriving in many reads is checked once (linear time), then decoded in one pass
/// with bulk strings as slices of the buffer. Pass the same buffer on every call, appending to
/// it in between.
///
/// ```
/// use bytes::BytesMut;
/// use resp::{Value, ValueParser};
///
/// let mut parser = ValueParser::new();
/// let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\n:"[..]);
/// assert_eq!(parser.parse(&mut buf), Ok(None));
/// buf.extend_from_slice(b"7\r\n");
/// let expected = Value::Array(vec![Value::Bulk("a".into()), Value::Integer(7)]);
/// assert_eq!(parser.parse(&mut buf), Ok(Some(expected)));
/// ```
#[derive(Debug)]
pub struct ValueParser {
    max_len: usize,
    /// Bytes at the front of the buffer checked to form complete elements of the pending reply.
    pos: usize,
    /// Elements still expected at each open nesting level (innermost last); empty between
    /// replies.
    stack: Vec<u64>,
}

impl Default for ValueParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses one reply from the front of `buf`, consuming it, or returns `Ok(None)` and leaves
/// `buf` untouched if the reply is not complete. Stateless: prefer a [`ValueParser`] kept per
/// connection when replies may be large and arrive in many reads.
pub fn parse_value(buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
    ValueParser::new().parse(buf)
}

impl ValueParser {
    /// A parser that accepts replies up to [`MAX_REPLY`] bytes.
    pub fn new() -> Self {
        Self::with_max_len(MAX_REPLY)
    }

    /// A parser that accepts replies up to `max_len` bytes.
    pub fn with_max_len(max_len: usize) -> Self {
        ValueParser { max_len, pos: 0, stack: Vec::new() }
    }

    /// Whether part of a reply has been checked (bytes are buffered that do not yet form a
    /// complete reply).
    pub fn is_mid_reply(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Consumes one complete reply from `buf`, or returns `Ok(None)` if it is not complete yet
    /// (the buffer is left as it is). An error means the stream cannot be resynchronised; the
    /// parser is reset.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
        let scanned = self.scan(buf);
        let len = match scanned {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.stack.clear();
                self.pos = 0;
                return Err(e);
            }
        };
        let frame = buf.split_to(len).freeze();
        let mut at = 0;
        build(&frame, &mut at, 0)
    }

    /// Checks the buffer from where the last call stopped; returns the length of the first
    /// reply once it is complete.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.stack.is_empty() || self.pos > buf.len() {
            // A new reply (or a buffer that shrank behind our back: start over).
            self.stack.clear();
            self.stack.push(1);
            self.pos = 0;
        }
        loop {
            while self.stack.last() == Some(&0) {
                self.stack.pop();
            }
            if self.stack.is_empty() {
                return Ok(Some(mem::take(&mut self.pos)));
            }
            let rest = &buf[self.pos..];
            let Some(&ty) = rest.first() else {
                return Ok(None);
            };
            let used = match ty {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                    let Some(cr) = find_line(rest, MAX_LINE, "reply line")? else {
                        return Ok(None);
                    };
                    // Simple strings and errors are any bytes; the rest are checked now.
                    if !matches!(ty, b'+' | b'-') {
                        scalar(ty, &rest[1..cr])?;
                    }
                    self.count_element();
                    cr + 2
                }
                b'$' | b'!' | b'=' => {
                    let Some((n, hdr)) = length_line(rest, "bulk length")? else {
                        return Ok(None);
                    };
                    if n == -1 && ty == b'$' {
                        self.count_element();
                        hdr
                    } else {
                        if n < 0 {
                            return Err(ProtocolError::Negative { what: "bulk length", value: n });
                        }
                        if n as u64 > MAX_BULK as u64 {
                            return Err(too_large("bulk string", n, MAX_BULK));
                        }
                        let n = n as usize;
                        if self.pos + hdr + n + 2 > self.max_len {
                            return Err(too_large("reply", self.pos + hdr + n + 2, self.max_len));
                        }
                        if rest.len() < hdr + n + 2 {
                            return Ok(None);
                        }
                        if &rest[hdr + n..hdr + n + 2] != b"\r\n" {
                            return Err(ProtocolError::MissingCrlf("bulk string"));
                        }
                        if ty == b'=' && (n < 4 || rest[hdr + 3] != b':') {
                            return Err(ProtocolError::Invalid("verbatim string"));
                        }
                        self.count_element();
                        hdr + n + 2
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let Some((n, hdr)) = length_line(rest, "aggregate length")? else {
                        return Ok(None);
                    };
                    if n == -1 && ty == b'*' {
                        self.count_element();
                    } else {
                        if n < 0 {
                            return Err(ProtocolError::Negative { what: "aggregate length", value: n });
                        }
                        let items = if matches!(ty, b'%' | b'|') { 2 * n as u64 } else { n as u64 };
                        // Every element takes at least 3 bytes (`_\r\n`).
                        if items.saturating_mul(3) > self.max_len as u64 {
                            return Err(too_many("aggregate elements", items, self.max_len / 3));
                        }
                        if self.stack.len() > MAX_DEPTH {
                            return Err(ProtocolError::TooDeep);
                        }
                        // An attribute is not an element: the value it describes follows it.
                        if ty != b'|' {
                            self.count_element();
                        }
                        self.stack.push(items);
                    }
                    hdr
                }
                other => return Err(ProtocolError::Unexpected { expected: "a reply type byte", got: other }),
            };
            self.pos += used;
            if self.pos > self.max_len {
                return Err(too_large("reply", self.pos, self.max_len));
            }
        }
    }

    fn count_element(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            *top -= 1;
        }
    }
}

/// Checks the content of a line reply of type `ty`, returning its value where it has one.
fn scalar(ty: u8, s: &[u8]) -> Result<Value, ProtocolError> {
    Ok(match ty {
        b'+' => Value::Simple(String::from_utf8_lossy(s).into_owned()),
        b'-' => Value::Error(String::from_utf8_lossy(s).into_owned()),
        b':' => {
            let digits = s.strip_prefix(b"+").unwrap_or(s);
            Value::Integer(parse_i64(digits).ok_or(ProtocolError::NotANumber("integer"))?)
        }
        b'_' if s.is_empty() => Value::Nil,
        b'_' => return Err(ProtocolError::Invalid("null")),
        b'#' => match s {
            b"t" => Value::Boolean(true),
            b"f" => Value::Boolean(false),
            _ => return Err(ProtocolError::Invalid("boolean")),
        },
        b',' => {
            let d = std::str::from_utf8(s).ok().and_then(|t| t.parse::<f64>().ok());
            Value::Double(d.ok_or(ProtocolError::Invalid("double"))?)
        }
        b'(' => {
            let digits = s.strip_prefix(b"-").unwrap_or(s);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ProtocolError::Invalid("big number"));
            }
            Value::BigNumber(String::from_utf8_lossy(s).into_owned())
        }
        _ => return Err(ProtocolError::Unexpected { expected: "a reply type byte", got: ty }),
    })
}

/// Decodes the value at `frame[*at..]`, which [`ValueParser::scan`] has checked to be complete
/// and well-formed (errors are still returned, never assumed away). Recursion is bounded by
/// [`MAX_DEPTH`]; attributes are skipped in a loop, so chains of them cannot recurse.
fn build(frame: &Bytes, at: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    if depth > MAX_DEPTH + 1 {
        return Err(ProtocolError::TooDeep);
    }
    loop {
        let rest = &frame[*at..];
        let Some(&ty) = rest.first() else {
            return Ok(None);
        };
        match ty {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                let Some(cr) = find_line(rest, MAX_LINE, "reply line")? else {
                    return Ok(None);
                };
                let value = scalar(ty, &rest[1..cr])?;
                *at += cr + 2;
                return Ok(Some(value));
            }
            b'$' | b'!' | b'=' => {
                let Some((n, hdr)) = length_line(rest, "bulk length")? else {
                    return Ok(None);
                };
                if n == -1 && ty == b'$' {
                    *at += hdr;
                    return Ok(Some(Value::Nil));
                }
                let n = usize::try_from(n)
                    .map_err(|_| ProtocolError::Negative { what: "bulk length", value: n })?;
                let start = *at + hdr;
                if frame.len() < start + n + 2 || (ty == b'=' && n < 4) {
                    return Ok(None);
                }
                *at = start + n + 2;
                return Ok(Some(match ty {
                    b'$' => Value::Bulk(frame.slice(start..start + n)),
                    b'!' => Value::Error(String::from_utf8_lossy(&frame[start..start + n]).into_owned()),
                    _ => Value::Verbatim {
                        format: [frame[start], frame[start + 1], frame[start + 2]],
                        text: frame.slice(start + 4..start + n),
                    },
                }));
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some((n, hdr)) = length_line(rest, "aggregate length")? else {
                    return Ok(None);
                };
                *at += hdr;
                if n == -1 && ty == b'*' {
                    return Ok(Some(Value::Nil));
                }
                let n = usize::try_from(n)
                    .map_err(|_| ProtocolError::Negative { what: "aggregate length", value: n })?;
                // The scan found every element in the frame, so this cannot over-allocate.
                let cap = n.min(frame.len() / 3);
                if matches!(ty, b'%' | b'|') {
                    let mut pairs = Vec::with_capacity(cap);
                    for _ in 0..n {
                        let (Some(k), Some(v)) = (build(frame, at, depth + 1)?, build(frame, at, depth + 1)?)
                        else {
                            return Ok(None);
                        };
                        pairs.push((k, v));
                    }
                    if ty == b'%' {
                        return Ok(Some(Value::Map(pairs)));
                    }
                    // An attribute: dropped; the value it describes follows.
                    continue;
                }
                let mut items = Vec::with_capacity(cap);
                for _ in 0..n {
                    let Some(v) = build(frame, at, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(v);
                }
                return Ok(Some(match ty {
                    b'*' => Value::Array(items),
                    b'~' => Value::Set(items),
                    _ => Value::Push(items),
                }));
            }
            other => return Err(ProtocolError::Unexpected { expected: "a reply type byte", got: other }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz harness.

/// Deterministic chunk sizes derived from the input, so a failing input reproduces exactly.
#[cfg(any(test, feature = "harness"))]
struct Chunks {
    state: u64,
}

#[cfg(any(test, feature = "harness"))]
impl Chunks {
    fn new(data: &[u8]) -> Self {
        // FNV-1a of the input seeds a splitmix64 stream.
        let state = data
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Chunks { state }
    }

    fn next_len(&mut self) -> usize {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bound = [1, 3, 16, 200, 5000][(z % 5) as usize];
        1 + (z >> 8) as usize % bound
    }
}

/// Parses every request in `data`, fed in chunks of the given sizes (`None`: all at once), the
/// way the server does: after each read, parse until the parser needs more. Returns the
/// commands and whether the stream ended in an error.
#[cfg(any(test, feature = "harness"))]
fn requests_in(data: &[u8], mut chunks: Option<Chunks>) -> (Vec<Vec<Bytes>>, bool) {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut fed = 0;
    while fed < data.len() {
        let n = chunks.as_mut().map_or(data.len(), Chunks::next_len).min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty(), "the parser returned an empty command");
                    commands.push(args);
                }
                Ok(None) => break,
                Err(_) => return (commands, true),
            }
        }
    }
    (commands, false)
}

/// Fuzz entry point for [`RequestParser`]: never panics on any input; feeding the input in
/// chunks gives the same commands and the same verdict as feeding it at once; and the commands
/// parsed from any input, re-encoded, parse back to themselves.
#[cfg(any(test, feature = "harness"))]
pub fn fuzz_request(data: &[u8]) {
    let (whole, whole_err) = requests_in(data, None);
    let (chunked, chunked_err) = requests_in(data, Some(Chunks::new(data)));
    assert_eq!(whole, chunked, "chunked parsing differs");
    assert_eq!(whole_err, chunked_err, "chunked parsing ends differently");
    let mut encoded = Vec::new();
    for args in &whole {
        encode_command(&mut encoded, args);
    }
    let (again, err) = requests_in(&encoded, Some(Chunks::new(&encoded)));
    assert!(!err, "re-encoded commands do not parse");
    assert_eq!(again, whole, "re-encoded commands parse differently");
}

/// Parses every reply in `data` in chunks (`None`: at once); returns them and whether the
/// stream ended in an error.
#[cfg(any(test, feature = "harness"))]
fn values_in(data: &[u8], mut chunks: Option<Chunks>) -> (Vec<Value>, bool) {
    let mut parser = ValueParser::new();
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    let mut fed = 0;
    while fed < data.len() {
        let n = chunks.as_mut().map_or(data.len(), Chunks::next_len).min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(v)) => values.push(v),
                Ok(None) => break,
                Err(_) => return (values, true),
            }
        }
    }
    (values, false)
}

#[cfg(any(test, feature = "harness"))]
fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    values.iter().for_each(|v| v.encode(&mut out, Protocol::Resp3));
    out
}

/// Fuzz entry point for [`ValueParser`]: never panics; chunked and whole parsing agree; parsed
/// values re-encoded (RESP3) parse back to the same values.
#[cfg(any(test, feature = "harness"))]
pub fn fuzz_value(data: &[u8]) {
    let (whole, whole_err) = values_in(data, None);
    let (chunked, chunked_err) = values_in(data, Some(Chunks::new(data)));
    // Compared through their encoding: NaN is not equal to itself.
    let encoded = encode_all(&whole);
    assert_eq!(encoded, encode_all(&chunked), "chunked parsing differs");
    assert_eq!(whole_err, chunked_err, "chunked parsing ends differently");
    let (again, err) = values_in(&encoded, Some(Chunks::new(&encoded)));
    assert!(!err, "re-encoded values do not parse");
    assert_eq!(encode_all(&again), encoded, "re-encoded values parse differently");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(data: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(data);
        let mut out = Vec::new();
        while let Some(args) = parser.parse(&mut buf)? {
            out.push(args);
        }
        Ok(out)
    }

    fn cmd(args: &[&str]) -> Vec<Bytes> {
        args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn encode(commands: &[Vec<Bytes>]) -> Vec<u8> {
        let mut out = Vec::new();
        commands.iter().for_each(|c| encode_command(&mut out, c));
        out
    }

    #[test]
    fn multibulk_and_inline() {
        let got =
            parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\n\0x\r\nPING\r\n  get  k \r\n").unwrap();
        assert_eq!(got, vec![cmd(&["SET", "k", "v\r\n\0x"]), cmd(&["PING"]), cmd(&["get", "k"])]);
    }

    #[test]
    fn inline_without_cr_and_with_quotes() {
        let got = parse_all(b"set \"a b\\x41\\n\" 'c\\'d'\nping\n").unwrap();
        assert_eq!(got, vec![cmd(&["set", "a bA\n", "c'd"]), cmd(&["ping"])]);
        assert_eq!(parse_all(b"get x\"y z\"\r\n").unwrap(), vec![cmd(&["get", "xy z"])]);
        assert_eq!(parse_all(b"get \"x\"y\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"get 'x\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split_inline(b"a \"\\q\\\\\" ''").unwrap(), cmd(&["a", "q\\", ""]));
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(parse_all(b"*0\r\n\r\n   \r\n\n*1\r\n$4\r\nPING\r\n").unwrap(), vec![cmd(&["PING"])]);
    }

    #[test]
    fn arguments_are_slices_of_the_buffer() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let args = RequestParser::new().parse(&mut buf).unwrap().unwrap();
        assert_eq!(args[1].as_ptr() as usize, base + 17);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let cases: &[&[u8]] = &[
            b"*-1\r\n",
            b"*x\r\n",
            b"*\r\n",
            b"*1 \r\n",
            b"*99999999999999999999\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$abc\r\n",
            b"*1\r\n$+3\r\nfoo\r\n",
            b"*1\r\n$9223372036854775808\r\n",
            b"*1\r\n$20000000\r\n",
            b"*2000000\r\n",
            b"*1\r\n+foo\r\n",
            b"*1\r\n$3\r\nfooXY",
            b"*1\n$3\r\nfoo\r\n",
            b"*1\r\n$3\rX",
            b"*123456789012345678901234",
        ];
        for case in cases {
            assert!(parse_all(case).is_err(), "{:?} should fail", String::from_utf8_lossy(case));
        }
        assert_eq!(
            parse_all(b"*1\r\n$-1\r\n"),
            Err(ProtocolError::Negative { what: "bulk length", value: -1 })
        );
    }

    #[test]
    fn request_size_is_bounded_before_the_data_arrives() {
        let mut data = b"*3\r\n$3\r\nSET\r\n$8388608\r\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 8 * 1024 * 1024));
        data.extend_from_slice(b"\r\n$8388608\r\n");
        let err = parse_all(&data).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { what: "request", .. }), "{err}");
        // An 8 MiB value alone is fine (the command rejects it if it is over the value limit).
        let mut ok = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n".to_vec();
        ok.extend(std::iter::repeat_n(b'x', 9_000_000));
        ok.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&ok).unwrap()[0][2].len(), 9_000_000);
    }

    #[test]
    fn inline_line_is_bounded() {
        let long = vec![b'a'; MAX_INLINE + 1];
        assert!(matches!(parse_all(&long), Err(ProtocolError::TooLarge { .. })));
        let mut ok = vec![b'a'; MAX_INLINE];
        ok.push(b'\n');
        assert_eq!(parse_all(&ok).unwrap()[0][0].len(), MAX_INLINE);
        let mut over = vec![b'a'; MAX_INLINE + 1];
        over.push(b'\n');
        assert!(parse_all(&over).is_err());
    }

    #[test]
    fn byte_by_byte_is_resumable() {
        let data = b"*2\r\n$4\r\nECHO\r\n$11\r\nhello world\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in data.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(args) = parser.parse(&mut buf).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(got, vec![cmd(&["ECHO", "hello world"]), cmd(&["PING"]), cmd(&["PING"])]);
        assert!(buf.is_empty());
        assert!(!parser.is_mid_request());
    }

    #[test]
    fn large_request_in_small_reads_is_linear() {
        // 2000 arguments of 1 KiB each, in 100-byte reads: each read is parsed once.
        let args: Vec<Bytes> = (0..2000).map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 1024])).collect();
        let data = encode(std::slice::from_ref(&args));
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut calls = 0;
        let mut result = None;
        for chunk in data.chunks(100) {
            buf.extend_from_slice(chunk);
            calls += 1;
            if let Some(args) = parser.parse(&mut buf).unwrap() {
                result = Some(args);
            }
            // The buffer never holds more than the argument being read and one read.
            assert!(buf.len() <= 1024 + 2 + 100);
        }
        assert_eq!(result, Some(args));
        assert_eq!(calls, data.len().div_ceil(100));
    }

    #[test]
    fn pipeline_of_a_thousand() {
        let commands: Vec<Vec<Bytes>> =
            (0..1000).map(|i| cmd(&["SET", &format!("key:{i:06}"), &"v".repeat(i % 200)])).collect();
        let data = encode(&commands);
        assert_eq!(parse_all(&data).unwrap(), commands);
        // In 4 KiB reads, as a server sees it.
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in data.chunks(4096) {
            buf.extend_from_slice(chunk);
            while let Some(args) = parser.parse(&mut buf).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(got, commands);
    }

    #[test]
    fn every_truncation_waits_then_completes() {
        let commands =
            vec![cmd(&["SET", "k", "v"]), cmd(&["GET", "k"]), cmd(&["PING"]), cmd(&["DEL", "a", "", "c"])];
        let mut data = encode(&commands);
        data.extend_from_slice(b"echo 'x y'\r\n");
        let mut all = commands.clone();
        all.push(cmd(&["echo", "x y"]));
        for cut in 0..=data.len() {
            let mut parser = RequestParser::new();
            let mut buf = BytesMut::from(&data[..cut]);
            let mut got = Vec::new();
            while let Some(args) = parser.parse(&mut buf).unwrap() {
                got.push(args);
            }
            assert!(all.starts_with(&got), "cut {cut}");
            buf.extend_from_slice(&data[cut..]);
            while let Some(args) = parser.parse(&mut buf).unwrap() {
                got.push(args);
            }
            assert_eq!(got, all, "cut {cut}");
        }
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR bad\r\nthing");
        integer(&mut out, 0);
        integer(&mut out, -42);
        integer(&mut out, i64::MIN);
        integer(&mut out, i64::MAX);
        bulk(&mut out, b"");
        bulk(&mut out, b"hello");
        null(&mut out, Protocol::Resp2);
        null(&mut out, Protocol::Resp3);
        array_header(&mut out, 12);
        map_header(&mut out, 3, Protocol::Resp2);
        map_header(&mut out, 3, Protocol::Resp3);
        let expected = "+OK\r\n-ERR bad  thing\r\n:0\r\n:-42\r\n\
                        :-9223372036854775808\r\n:9223372036854775807\r\n$0\r\n\r\n$5\r\nhello\r\n\
                        $-1\r\n_\r\n*12\r\n*6\r\n%3\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn replies_of_every_type() {
        let data = b"+OK\r\n-ERR no\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n_\r\n#t\r\n#f\r\n\
                     ,1.5\r\n,inf\r\n,-inf\r\n(12345678901234567890\r\n=8\r\ntxt:abcd\r\n!3\r\nERR\r\n\
                     *2\r\n:1\r\n*0\r\n%1\r\n+k\r\n+v\r\n~1\r\n:1\r\n>1\r\n+p\r\n|1\r\n+ttl\r\n:3\r\n:9\r\n";
        let mut buf = BytesMut::from(&data[..]);
        let mut parser = ValueParser::new();
        let mut got = Vec::new();
        while let Some(v) = parser.parse(&mut buf).unwrap() {
            got.push(v);
        }
        let expected = vec![
            Value::Simple("OK".into()),
            Value::Error("ERR no".into()),
            Value::Integer(-7),
            Value::Bulk("abc".into()),
            Value::Nil,
            Value::Nil,
            Value::Nil,
            Value::Boolean(true),
            Value::Boolean(false),
            Value::Double(1.5),
            Value::Double(f64::INFINITY),
            Value::Double(f64::NEG_INFINITY),
            Value::BigNumber("12345678901234567890".into()),
            Value::Verbatim { format: *b"txt", text: "abcd".into() },
            Value::Error("ERR".into()),
            Value::Array(vec![Value::Integer(1), Value::Array(vec![])]),
            Value::Map(vec![(Value::Simple("k".into()), Value::Simple("v".into()))]),
            Value::Set(vec![Value::Integer(1)]),
            Value::Push(vec![Value::Simple("p".into())]),
            Value::Integer(9),
        ];
        assert_eq!(got, expected);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_replies_are_errors() {
        let cases: &[&[u8]] = &[
            b"?\r\n",
            b":x\r\n",
            b"#x\r\n",
            b",abc\r\n",
            b"(1a\r\n",
            b"_x\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"%-1\r\n",
            b"$3\r\nabcd\r\n",
            b"=3\r\ntxt\r\n",
            b"=5\r\ntxtx1\r\n",
            b"$99999999999\r\n",
            b"*999999999999\r\n",
            b"+a\rb\r\n",
        ];
        for case in cases {
            assert!(
                parse_value(&mut BytesMut::from(&case[..])).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn nesting_is_bounded_and_attribute_chains_do_not_recurse() {
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(parse_value(&mut BytesMut::from(deep.as_bytes())), Err(ProtocolError::TooDeep));
        let ok = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
        assert!(parse_value(&mut BytesMut::from(ok.as_bytes())).unwrap().is_some());
        let chain = "|0\r\n".repeat(200_000) + ":5\r\n";
        assert_eq!(parse_value(&mut BytesMut::from(chain.as_bytes())), Ok(Some(Value::Integer(5))));
    }

    #[test]
    fn partial_reply_leaves_buffer_and_resumes() {
        let mut full = Vec::new();
        Value::Array((0..500).map(|i| Value::Bulk(Bytes::from(format!("value-{i}")))).collect())
            .encode(&mut full, Protocol::Resp2);
        let mut parser = ValueParser::new();
        let mut buf = BytesMut::new();
        let mut result = None;
        for chunk in full.chunks(7) {
            assert!(result.is_none());
            buf.extend_from_slice(chunk);
            result = parser.parse(&mut buf).unwrap();
            if result.is_none() {
                // Nothing is consumed until the reply is complete.
                assert_eq!(buf.len() % 7, 0);
            }
        }
        let Some(Value::Array(items)) = result else {
            panic!("expected an array, got {result:?}");
        };
        assert_eq!(items.len(), 500);
        assert_eq!(items[499], Value::Bulk("value-499".into()));
    }

    #[test]
    fn reply_size_is_bounded() {
        let mut parser = ValueParser::with_max_len(100);
        let mut buf = BytesMut::from(&b"$200\r\n"[..]);
        assert!(matches!(parser.parse(&mut buf), Err(ProtocolError::TooLarge { .. })));
        let mut buf = BytesMut::from(&b"*40\r\n"[..]);
        let err = ValueParser::with_max_len(100).parse(&mut buf);
        assert!(matches!(err, Err(ProtocolError::TooMany { .. })), "{err:?}");
        let mut buf = BytesMut::from(&b"*2000000\r\n"[..]);
        let err = RequestParser::new().parse(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "too many arguments: 2000000 (the limit is 1048576)");
        let mut buf = BytesMut::from(&b"*1\r\n$123456789012345678901234567890"[..]);
        let err = RequestParser::new().parse(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "invalid bulk length: not a decimal integer");
    }

    #[test]
    fn fuzz_regressions() {
        for case in [&b""[..], b"*", b"*1\r\n", b"\n", b"\"", b"*1\r\n$0\r\n\r\n", b"a\"b\"\n", b"*0\r\n"] {
            fuzz_request(case);
            fuzz_value(case);
        }
    }

    fn arb_command() -> impl Strategy<Value = Vec<Bytes>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from), 1..6)
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Simple),
            "ERR [a-z ]{0,20}".prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            prop::collection::vec(any::<u8>(), 0..30).prop_map(|b| Value::Bulk(b.into())),
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            prop::num::f64::NORMAL.prop_map(Value::Double),
            "-?[1-9][0-9]{0,30}".prop_map(Value::BigNumber),
            prop::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| Value::Verbatim { format: *b"txt", text: b.into() }),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Set),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Push),
                prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    /// Fragments that make random input look like the protocol, reaching deeper states than
    /// uniformly random bytes.
    const PIECES: &[&[u8]] = &[
        b"*", b"$", b"\r\n", b"\r", b"\n", b"-1", b"0", b"3", b"abc", b" ", b"\"", b"'", b"\\x4", b"%", b"|",
        b"~", b">", b"=", b"_", b"#t", b",1.5", b"(", b":", b"+", b"!", b"1\r\n", b"2\r\n",
    ];

    proptest! {
        #[test]
        fn commands_round_trip(commands in prop::collection::vec(arb_command(), 0..20)) {
            let data = encode(&commands);
            prop_assert_eq!(parse_all(&data).unwrap(), commands);
            fuzz_request(&data);
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
            fuzz_request(&data);
            fuzz_value(&data);
        }

        #[test]
        fn protocol_like_garbage_never_panics(
            parts in prop::collection::vec(prop::sample::select(PIECES), 0..60)
        ) {
            let data = parts.concat();
            fuzz_request(&data);
            fuzz_value(&data);
        }

        #[test]
        fn mutated_pipelines_never_panic(
            commands in prop::collection::vec(arb_command(), 1..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut data = encode(&commands);
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            fuzz_request(&data);
        }

        #[test]
        fn values_round_trip(values in prop::collection::vec(arb_value(), 0..5)) {
            let data = encode_all(&values);
            let (got, err) = values_in(&data, Some(Chunks::new(&data)));
            prop_assert!(!err);
            prop_assert_eq!(got, values);
            fuzz_value(&data);
        }

        #[test]
        fn truncated_values_wait(value in arb_value(), cut in any::<prop::sample::Index>()) {
            let mut data = Vec::new();
            value.encode(&mut data, Protocol::Resp3);
            let cut = cut.index(data.len());
            let mut parser = ValueParser::new();
            let mut buf = BytesMut::from(&data[..cut]);
            prop_assert_eq!(parser.parse(&mut buf), Ok(None));
            buf.extend_from_slice(&data[cut..]);
            prop_assert_eq!(parser.parse(&mut buf), Ok(Some(value)));
        }
    }
}
