//! The metadata file: the node's identity and room for more. Pure encoding and decoding.
//!
//! A short text file, so an operator can read it:
//!
//! ```text
//! cmud-kv data directory
//! format=1
//! node=3f2a9c01d4e7
//! crc32c=1a2b3c4d
//! ```
//!
//! The last line checksums every byte before it. Fields this version does not know are kept
//! and written back, so a later version can add fields without breaking an older one.

use std::collections::BTreeMap;

const TITLE: &str = "cmud-kv data directory";
const FORMAT: &str = "1";

/// The contents of the metadata file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The node's id, printed in its description and carried in its certificate.
    pub node: String,
    /// Fields this version does not use, kept as they were.
    pub extra: BTreeMap<String, String>,
}

impl Meta {
    /// Metadata for a new directory.
    pub fn new(node: String) -> Meta {
        Meta { node, extra: BTreeMap::new() }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = format!("{TITLE}\nformat={FORMAT}\nnode={}\n", self.node);
        for (k, v) in &self.extra {
            body.push_str(&format!("{k}={v}\n"));
        }
        let crc = crc32c::crc32c(body.as_bytes());
        body.push_str(&format!("crc32c={crc:08x}\n"));
        body.into_bytes()
    }

    /// Parses the file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Meta, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "meta is not text".to_string())?;
        let body_end = text.rfind("crc32c=").ok_or("meta has no checksum line")?;
        let (body, crc_line) = text.split_at(body_end);
        let crc = crc_line.trim_end().strip_prefix("crc32c=").and_then(|h| u32::from_str_radix(h, 16).ok());
        if crc != Some(crc32c::crc32c(body.as_bytes())) {
            return Err("meta fails its checksum".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(TITLE) {
            return Err("meta does not start with its title line".into());
        }
        let mut fields = BTreeMap::new();
        for line in lines {
            let (k, v) =
                line.split_once('=').ok_or_else(|| format!("meta line {line:?} is not key=value"))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        match fields.remove("format").as_deref() {
            Some(FORMAT) => {}
            other => return Err(format!("meta format {other:?} is not {FORMAT}")),
        }
        let node = fields.remove("node").filter(|n| !n.is_empty()).ok_or("meta names no node")?;
        Ok(Meta { node, extra: fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_fields() {
        let mut m = Meta::new("3f2a9c01d4e7".into());
        m.extra.insert("later".into(), "x".into());
        assert_eq!(Meta::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let bytes = Meta::new("abc".into()).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(Meta::decode(&b).is_err(), "byte {i}");
        }
        assert!(Meta::decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
