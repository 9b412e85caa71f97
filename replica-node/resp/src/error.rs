//! The one error of both parsers.

use crate::MAX_DEPTH;

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
    /// Something is larger than this crate's limits allow.
    #[error("{what} too large: {len} bytes (the limit is {max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes, as announced or as buffered so far.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A request or an aggregate announces more elements than this crate's limits allow.
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

pub(crate) fn too_large(what: &'static str, len: impl TryInto<u64>, max: usize) -> ProtocolError {
    ProtocolError::TooLarge { what, len: len.try_into().unwrap_or(u64::MAX), max: max as u64 }
}

pub(crate) fn too_many(what: &'static str, count: impl TryInto<u64>, max: usize) -> ProtocolError {
    ProtocolError::TooMany { what, count: count.try_into().unwrap_or(u64::MAX), max: max as u64 }
}
