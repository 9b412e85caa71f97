//! Replies, the server side: the [`Protocol`] of a connection and the encoders that append a
//! reply to its output buffer without allocating.

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
pub(crate) fn put_header(out: &mut Vec<u8>, marker: u8, n: u64) {
    out.push(marker);
    put_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// A line reply; CR and LF (which would end it early and desynchronise the client) become
/// spaces.
pub(crate) fn put_line(out: &mut Vec<u8>, marker: u8, s: &str) {
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

/// Appends a null array: `*-1` in RESP2 (what `EXEC` answers when a watched key changed),
/// `_` in RESP3.
pub fn null_array(out: &mut Vec<u8>, proto: Protocol) {
    out.extend_from_slice(match proto {
        Protocol::Resp2 => b"*-1\r\n",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        null_array(&mut out, Protocol::Resp2);
        null_array(&mut out, Protocol::Resp3);
        array_header(&mut out, 12);
        map_header(&mut out, 3, Protocol::Resp2);
        map_header(&mut out, 3, Protocol::Resp3);
        let expected = "+OK\r\n-ERR bad  thing\r\n:0\r\n:-42\r\n\
                        :-9223372036854775808\r\n:9223372036854775807\r\n$0\r\n\r\n$5\r\nhello\r\n\
                        $-1\r\n_\r\n*-1\r\n_\r\n*12\r\n*6\r\n%3\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
