//! `SCAN` cursors that every actor of the node understands.
//!
//! Clients treat a cursor as an unsigned 64-bit number (`redis-cli` and go-redis parse it so),
//! which is too small to hold a key. So a cursor carries its resume point itself whenever
//! 7 bytes suffice, and is a ticket to a node-wide table otherwise:
//!
//! - `0`: the start (and, in a reply, the end).
//! - Top bit clear: an **inline** cursor. Bits 56 to 62 hold a check of the `MATCH` prefix it
//!   was issued for (1 to 127, never 0, so an inline cursor is never 0); bits 0 to 55 hold the
//!   7 bytes of the next key that follow the prefix, zero-padded. `SCAN` hands one out only at
//!   a *clean boundary*: where those 7 bytes differ from the previous key's, so seeking to the
//!   prefix and the 7 bytes (trailing zeros dropped) lands exactly on the next key on any
//!   replica, on any actor or server, before or after a restart. A key written meanwhile is
//!   returned if it sorts after that point, as Redis promises for keys added during a scan.
//! - Top bit set: a **saved** cursor, the number of a resume point kept in [`ScanCursors`],
//!   which every actor of the node shares. Used when no clean boundary comes within a page's
//!   look-ahead (many keys sharing their first bytes after the prefix). The table keeps the
//!   newest [`MAX_SAVED`] points (and at most [`MAX_SAVED_BYTES`] of keys); an older cursor is
//!   refused with an error that says so.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// How many saved resume points the node keeps; older ones expire.
pub const MAX_SAVED: usize = 4096;
/// How many bytes of keys the saved resume points may hold together.
pub const MAX_SAVED_BYTES: usize = 16 * 1024 * 1024;
/// Key bytes an inline cursor carries.
pub const INLINE_BYTES: usize = 7;
const SAVED_BIT: u64 = 1 << 63;

/// Where a `SCAN` resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// At the start of the pattern's range.
    Start,
    /// At the first key at or after these bytes (an inline cursor).
    From(Vec<u8>),
    /// At the first key after this one (a saved cursor).
    After(Bytes),
}

/// The 7 bytes of `key` after `prefix`, zero-padded, as a number.
pub fn window(prefix: &[u8], key: &[u8]) -> u64 {
    let rest = key.get(prefix.len()..).unwrap_or_default();
    let mut b = [0u8; 8];
    let n = rest.len().min(INLINE_BYTES);
    b[1..1 + n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(b)
}

/// The check of a `MATCH` prefix an inline cursor carries: 1 to 127.
fn check(prefix: &[u8]) -> u64 {
    // FNV-1a: the same on every server and every version, unlike the standard hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in prefix {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 127 + 1
}

/// The inline cursor that resumes at `next`, for a scan of `prefix`. Only valid at a clean
/// boundary: where `window(prefix, next)` differs from the previous key's.
pub fn inline(prefix: &[u8], next: &[u8]) -> u64 {
    (check(prefix) << 56) | window(prefix, next)
}

/// Where the cursor a client sent resumes a scan of `prefix`.
pub fn decode(cursor: u64, prefix: &[u8], saved: &ScanCursors) -> Result<Resume, &'static str> {
    if cursor == 0 {
        return Ok(Resume::Start);
    }
    if cursor & SAVED_BIT != 0 {
        return saved.get(cursor).map(Resume::After).ok_or(
            "ERR invalid cursor: unknown or expired (this node keeps the newest 4096 of the cursors \
             that cannot carry their position; start the scan again with 0)",
        );
    }
    if cursor >> 56 != check(prefix) {
        return Err("ERR invalid cursor: it was not issued for this MATCH pattern");
    }
    let bytes = (cursor & ((1 << 56) - 1)).to_be_bytes();
    let mut seek = prefix.to_vec();
    seek.extend_from_slice(&bytes[1..]);
    while seek.len() > prefix.len() && seek.last() == Some(&0) {
        seek.pop();
    }
    Ok(Resume::From(seek))
}

/// The node's saved resume points; see the [module documentation](self).
#[derive(Debug, Default)]
pub struct ScanCursors {
    saved: Mutex<Saved>,
}

#[derive(Debug, Default)]
struct Saved {
    /// Cursor and resume key, oldest first.
    points: VecDeque<(u64, Bytes)>,
    bytes: usize,
    next: u64,
}

impl ScanCursors {
    /// Keeps `after` (the last key a page examined) and returns the cursor that resumes after
    /// it.
    pub fn save(&self, after: Bytes) -> u64 {
        let mut s = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.next = (s.next + 1) & !SAVED_BIT;
        let cursor = SAVED_BIT | s.next;
        s.bytes += after.len();
        s.points.push_back((cursor, after));
        while s.points.len() > MAX_SAVED || (s.bytes > MAX_SAVED_BYTES && s.points.len() > 1) {
            if let Some((_, old)) = s.points.pop_front() {
                s.bytes -= old.len();
            }
        }
        cursor
    }

    fn get(&self, cursor: u64) -> Option<Bytes> {
        let s = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.points.iter().rev().find(|(c, _)| *c == cursor).map(|(_, k)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_cursors_seek_to_their_key_and_name_their_prefix() {
        let saved = ScanCursors::default();
        for (prefix, key) in [
            (&b""[..], &b"abc"[..]),
            (b"", b"abcdefg"),
            (b"user:", b"user:42"),
            (b"user:", b"user:\x00\x00x"),
            (b"", b"\xff\xff\xff\xff\xff\xff\xff\xff"),
        ] {
            let c = inline(prefix, key);
            assert_ne!(c, 0);
            assert_eq!(c & SAVED_BIT, 0);
            let Ok(Resume::From(seek)) = decode(c, prefix, &saved) else { panic!("{key:?}") };
            assert!(&seek[..] <= key && key.starts_with(&seek), "{seek:?} {key:?}");
            assert!(seek.starts_with(prefix));
        }
        let Ok(Resume::From(seek)) = decode(inline(b"", b"abcdefghij"), b"", &saved) else { panic!() };
        assert_eq!(seek, b"abcdefg", "7 bytes");
        assert!(decode(inline(b"user:", b"user:1"), b"item:", &saved).is_err(), "another prefix");
        assert_eq!(decode(0, b"x", &saved), Ok(Resume::Start));
    }

    #[test]
    fn saved_cursors_are_shared_and_the_oldest_expire() {
        let saved = ScanCursors::default();
        let first = saved.save(Bytes::from_static(b"k1"));
        assert_ne!(first & SAVED_BIT, 0);
        assert_eq!(decode(first, b"", &saved), Ok(Resume::After(Bytes::from_static(b"k1"))));
        for i in 0..MAX_SAVED {
            saved.save(Bytes::from(format!("k{i}")));
        }
        assert!(decode(first, b"", &saved).is_err());
        let big = saved.save(Bytes::from(vec![b'x'; MAX_SAVED_BYTES]));
        assert!(decode(big, b"", &saved).is_ok(), "the newest stays even alone past the byte bound");
        assert_eq!(saved.saved.lock().unwrap().points.len(), 1);
    }
}
