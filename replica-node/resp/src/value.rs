//! Replies, the client side: [`Value`], the incremental [`ValueParser`] (and the one-shot
//! [`parse_value`]), and [`encode_command`] for requests.
//!
//! A reply is read in two passes over the same bytes: [`ValueParser::scan`] checks, resumably,
//! that a whole well-formed reply is buffered; [`build`] then decodes it in one go. Both read
//! each element's front through [`head`], the one place that knows what a type byte announces.

use std::mem;

use bytes::{Bytes, BytesMut};

use crate::error::{too_large, too_many};
use crate::reply::{put_header, put_line};
use crate::scan::{find_line, length_line, parse_i64};
use crate::{
    MAX_BULK, MAX_DEPTH, MAX_LINE, MAX_REPLY, Protocol, ProtocolError, array_header, bulk, error, integer,
    map_header, null, simple,
};

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
            let Some(head) = head(rest)? else {
                return Ok(None);
            };
            let used = match head {
                Head::Line { line, cr } => {
                    // Simple strings and errors are any bytes; the rest are checked now.
                    if !matches!(line, Line::Simple | Line::Error) {
                        scalar(line, &rest[1..cr])?;
                    }
                    self.count_element();
                    cr + 2
                }
                Head::Nil { len } => {
                    self.count_element();
                    len
                }
                Head::Blob { blob, len, hdr } => {
                    if len > MAX_BULK as u64 {
                        return Err(too_large("bulk string", len, MAX_BULK));
                    }
                    let n = len as usize;
                    if self.pos + hdr + n + 2 > self.max_len {
                        return Err(too_large("reply", self.pos + hdr + n + 2, self.max_len));
                    }
                    if rest.len() < hdr + n + 2 {
                        return Ok(None);
                    }
                    if &rest[hdr + n..hdr + n + 2] != b"\r\n" {
                        return Err(ProtocolError::MissingCrlf("bulk string"));
                    }
                    if blob == Blob::Verbatim && (n < 4 || rest[hdr + 3] != b':') {
                        return Err(ProtocolError::Invalid("verbatim string"));
                    }
                    self.count_element();
                    hdr + n + 2
                }
                Head::Aggregate { aggregate, count, hdr } => {
                    let items = aggregate.elements(count);
                    // Every element takes at least 3 bytes (`_\r\n`).
                    if items.saturating_mul(3) > self.max_len as u64 {
                        return Err(too_many("aggregate elements", items, self.max_len / 3));
                    }
                    if self.stack.len() > MAX_DEPTH {
                        return Err(ProtocolError::TooDeep);
                    }
                    // An attribute is not an element: the value it describes follows it.
                    if aggregate != Aggregate::Attribute {
                        self.count_element();
                    }
                    self.stack.push(items);
                    hdr
                }
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

/// A one-line reply, by its type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// `+`
    Simple,
    /// `-`
    Error,
    /// `:`
    Integer,
    /// `_`
    Null,
    /// `#`
    Boolean,
    /// `,`
    Double,
    /// `(`
    BigNumber,
}

/// A length-prefixed string reply, by its type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blob {
    /// `$` (`$-1` is the RESP2 null)
    Bulk,
    /// `!`
    Error,
    /// `=`: a three-letter format, `:`, then the text.
    Verbatim,
}

/// An aggregate reply, by its type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aggregate {
    /// `*` (`*-1` is the RESP2 null)
    Array,
    /// `~`
    Set,
    /// `>`
    Push,
    /// `%`: pairs.
    Map,
    /// `|`: pairs describing the value that follows; not an element itself.
    Attribute,
}

impl Aggregate {
    /// How many values an aggregate announcing `count` holds.
    fn elements(self, count: u64) -> u64 {
        // `count` came from an i64, so doubling it fits.
        if self.is_pairs() { 2 * count } else { count }
    }

    fn is_pairs(self) -> bool {
        matches!(self, Aggregate::Map | Aggregate::Attribute)
    }
}

/// What a type byte announces: the one dispatch on it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Line(Line),
    Blob(Blob),
    Aggregate(Aggregate),
}

impl Kind {
    fn of(ty: u8) -> Result<Kind, ProtocolError> {
        Ok(match ty {
            b'+' => Kind::Line(Line::Simple),
            b'-' => Kind::Line(Line::Error),
            b':' => Kind::Line(Line::Integer),
            b'_' => Kind::Line(Line::Null),
            b'#' => Kind::Line(Line::Boolean),
            b',' => Kind::Line(Line::Double),
            b'(' => Kind::Line(Line::BigNumber),
            b'$' => Kind::Blob(Blob::Bulk),
            b'!' => Kind::Blob(Blob::Error),
            b'=' => Kind::Blob(Blob::Verbatim),
            b'*' => Kind::Aggregate(Aggregate::Array),
            b'~' => Kind::Aggregate(Aggregate::Set),
            b'>' => Kind::Aggregate(Aggregate::Push),
            b'%' => Kind::Aggregate(Aggregate::Map),
            b'|' => Kind::Aggregate(Aggregate::Attribute),
            other => return Err(ProtocolError::Unexpected { expected: "a reply type byte", got: other }),
        })
    }
}

/// The front of one reply element: its type and its first line.
#[derive(Clone, Copy, Debug)]
enum Head {
    /// A line reply: its content is `rest[1..cr]`, and it takes `cr + 2` bytes.
    Line { line: Line, cr: usize },
    /// `$-1` or `*-1`, the RESP2 null, taking `len` bytes.
    Nil { len: usize },
    /// A string of `len` bytes (then CRLF) after a header of `hdr` bytes.
    Blob { blob: Blob, len: u64, hdr: usize },
    /// An aggregate announcing `count` entries (pairs, for maps and attributes) after a header
    /// of `hdr` bytes.
    Aggregate { aggregate: Aggregate, count: u64, hdr: usize },
}

/// Reads the type byte and the first line of the element at the front of `rest`, or `None` if
/// that line is not complete yet. Lengths and counts are checked to be non-negative (but for
/// the two RESP2 nulls); limits are the caller's.
fn head(rest: &[u8]) -> Result<Option<Head>, ProtocolError> {
    let Some(&ty) = rest.first() else {
        return Ok(None);
    };
    let head = match Kind::of(ty)? {
        Kind::Line(line) => {
            let Some(cr) = find_line(rest, MAX_LINE, "reply line")? else {
                return Ok(None);
            };
            Head::Line { line, cr }
        }
        Kind::Blob(blob) => {
            let Some((n, hdr)) = length_line(rest, "bulk length")? else {
                return Ok(None);
            };
            if n == -1 && blob == Blob::Bulk {
                Head::Nil { len: hdr }
            } else {
                let len = u64::try_from(n)
                    .map_err(|_| ProtocolError::Negative { what: "bulk length", value: n })?;
                Head::Blob { blob, len, hdr }
            }
        }
        Kind::Aggregate(aggregate) => {
            let Some((n, hdr)) = length_line(rest, "aggregate length")? else {
                return Ok(None);
            };
            if n == -1 && aggregate == Aggregate::Array {
                Head::Nil { len: hdr }
            } else {
                let count = u64::try_from(n)
                    .map_err(|_| ProtocolError::Negative { what: "aggregate length", value: n })?;
                Head::Aggregate { aggregate, count, hdr }
            }
        }
    };
    Ok(Some(head))
}

/// Checks the content of a line reply, returning its value.
fn scalar(line: Line, s: &[u8]) -> Result<Value, ProtocolError> {
    Ok(match line {
        Line::Simple => Value::Simple(String::from_utf8_lossy(s).into_owned()),
        Line::Error => Value::Error(String::from_utf8_lossy(s).into_owned()),
        Line::Integer => {
            let digits = s.strip_prefix(b"+").unwrap_or(s);
            Value::Integer(parse_i64(digits).ok_or(ProtocolError::NotANumber("integer"))?)
        }
        Line::Null if s.is_empty() => Value::Nil,
        Line::Null => return Err(ProtocolError::Invalid("null")),
        Line::Boolean => match s {
            b"t" => Value::Boolean(true),
            b"f" => Value::Boolean(false),
            _ => return Err(ProtocolError::Invalid("boolean")),
        },
        Line::Double => {
            let d = std::str::from_utf8(s).ok().and_then(|t| t.parse::<f64>().ok());
            Value::Double(d.ok_or(ProtocolError::Invalid("double"))?)
        }
        Line::BigNumber => {
            let digits = s.strip_prefix(b"-").unwrap_or(s);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ProtocolError::Invalid("big number"));
            }
            Value::BigNumber(String::from_utf8_lossy(s).into_owned())
        }
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
        let Some(head) = head(rest)? else {
            return Ok(None);
        };
        match head {
            Head::Line { line, cr } => {
                let value = scalar(line, &rest[1..cr])?;
                *at += cr + 2;
                return Ok(Some(value));
            }
            Head::Nil { len } => {
                *at += len;
                return Ok(Some(Value::Nil));
            }
            Head::Blob { blob, len, hdr } => {
                let n = usize::try_from(len).map_err(|_| too_large("bulk string", len, MAX_BULK))?;
                let start = *at + hdr;
                if frame.len() < start + n + 2 || (blob == Blob::Verbatim && n < 4) {
                    return Ok(None);
                }
                *at = start + n + 2;
                return Ok(Some(match blob {
                    Blob::Bulk => Value::Bulk(frame.slice(start..start + n)),
                    Blob::Error => {
                        Value::Error(String::from_utf8_lossy(&frame[start..start + n]).into_owned())
                    }
                    Blob::Verbatim => Value::Verbatim {
                        format: [frame[start], frame[start + 1], frame[start + 2]],
                        text: frame.slice(start + 4..start + n),
                    },
                }));
            }
            Head::Aggregate { aggregate, count, hdr } => {
                *at += hdr;
                let n = usize::try_from(count)
                    .map_err(|_| too_many("aggregate elements", count, frame.len() / 3))?;
                // The scan found every element in the frame, so this cannot over-allocate.
                let cap = n.min(frame.len() / 3);
                if aggregate.is_pairs() {
                    let mut pairs = Vec::with_capacity(cap);
                    for _ in 0..n {
                        let (Some(k), Some(v)) = (build(frame, at, depth + 1)?, build(frame, at, depth + 1)?)
                        else {
                            return Ok(None);
                        };
                        pairs.push((k, v));
                    }
                    if aggregate == Aggregate::Map {
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
                return Ok(Some(match aggregate {
                    Aggregate::Array => Value::Array(items),
                    Aggregate::Set => Value::Set(items),
                    _ => Value::Push(items),
                }));
            }
        }
    }
}
