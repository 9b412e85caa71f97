//! Helpers shared by the unit tests of several modules.

use bytes::{Bytes, BytesMut};

use crate::{ProtocolError, RequestParser, encode_command};

/// Every command in `data`, parsed from one buffer.
pub(crate) fn parse_all(data: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Some(args) = parser.parse(&mut buf)? {
        out.push(args);
    }
    Ok(out)
}

/// A command from string arguments.
pub(crate) fn cmd(args: &[&str]) -> Vec<Bytes> {
    args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
}

/// `commands` as a multibulk pipeline.
pub(crate) fn encode(commands: &[Vec<Bytes>]) -> Vec<u8> {
    let mut out = Vec::new();
    commands.iter().for_each(|c| encode_command(&mut out, c));
    out
}
