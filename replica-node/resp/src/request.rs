//! Requests, the server side: [`RequestParser`] (multibulk and inline) and [`split_inline`].

use std::mem;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{too_large, too_many};
use crate::scan::length_line;
use crate::{MAX_ARGS, MAX_BULK, MAX_INLINE, MAX_REQUEST, ProtocolError};

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
                    // Nothing is reserved for the announced length: a header costs the sender
                    // a few bytes, and 16 MiB reserved per connection on its word would let a
                    // thousand idle connections pin 16 GiB. The buffer grows as the bytes
                    // arrive (doubling, so a large argument is still copied O(1) times).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cmd, encode, parse_all};

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
    fn an_announced_length_reserves_nothing_before_the_bytes_arrive() {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16000000\r\nxy"[..]);
        let before = buf.capacity();
        assert_eq!(parser.parse(&mut buf), Ok(None));
        assert!(buf.capacity() <= before, "reserved {} bytes on a header's word", buf.capacity());
        // As the value arrives the buffer grows with it, never far beyond what arrived.
        let mut sent = 2;
        while sent < 16_000_000 {
            let n = (16_000_000 - sent).min(1 << 20);
            buf.extend_from_slice(&vec![b'x'; n]);
            sent += n;
            assert!(buf.capacity() <= 2 * buf.len() + 64, "{} for {} bytes", buf.capacity(), buf.len());
            assert_eq!(parser.parse(&mut buf), Ok(None));
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap()[2].len(), 16_000_000);
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
        // Nothing of a request is left in the parser: the next bytes start a new one (a parser
        // still inside a multibulk request would want a `$` here).
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(parser.parse(&mut buf), Ok(Some(cmd(&["PING"]))));
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
    fn request_counts_and_lengths_are_bounded() {
        let mut buf = BytesMut::from(&b"*2000000\r\n"[..]);
        let err = RequestParser::new().parse(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "too many arguments: 2000000 (the limit is 1048576)");
        let mut buf = BytesMut::from(&b"*1\r\n$123456789012345678901234567890"[..]);
        let err = RequestParser::new().parse(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "invalid bulk length: not a decimal integer");
    }
}
