//! Scanning helpers shared by both parsers: lines, decimal integers, length lines.
//!
//! Each verdict depends only on the bytes looked at, so feeding the same stream in different
//! chunks yields the same results.

use crate::ProtocolError;
use crate::error::too_large;

/// The longest valid length line is a type byte, `-9223372036854775808` (20 bytes) and CRLF;
/// anything longer cannot be a number, so it is refused without waiting for the rest.
const MAX_NUMBER_LINE: usize = 20;

/// Finds the line that starts at `buf[0]` (its type byte) and holds at most `max` bytes after
/// the type byte. Returns the index of its `\r` once the line and its `\r\n` are buffered.
pub(crate) fn find_line(buf: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, ProtocolError> {
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
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
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
pub(crate) fn length_line(buf: &[u8], what: &'static str) -> Result<Option<(i64, usize)>, ProtocolError> {
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
