//! File names and file headers of a data directory. Pure.

/// Bytes of a log segment's header: [`SEGMENT_MAGIC`] and the segment's sequence number (LE).
pub const SEGMENT_HEADER: usize = 16;
/// Bytes of a snapshot's header: [`SNAPSHOT_MAGIC`] and the segment it covers up to (LE).
pub const SNAPSHOT_HEADER: usize = 16;
/// The first 8 bytes of every log segment (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"cmkvlog1";
/// The first 8 bytes of every snapshot (format version 1).
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"cmkvsnp1";

/// The lock file's name.
pub const LOCK_FILE: &str = "LOCK";
/// The metadata file's name.
pub const META_FILE: &str = "meta";

/// What a file of the directory is, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `log-<seq, 16 hex digits>.log`: a log segment.
    Segment(u64),
    /// `snap-<covers, 16 hex digits>.snap`: a snapshot of every segment below `covers`.
    Snapshot(u64),
    /// `*.tmp`: a file being written when the node stopped; never read.
    Temporary,
    /// Anything else (the lock, the metadata, kept torn tails, files of other programs).
    Other,
}

impl FileKind {
    /// Classifies a file name.
    pub fn of(name: &str) -> FileKind {
        let hex = |s: &str| (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten();
        if name.ends_with(".tmp") {
            FileKind::Temporary
        } else if let Some(seq) = name.strip_prefix("log-").and_then(|s| s.strip_suffix(".log")).and_then(hex)
        {
            FileKind::Segment(seq)
        } else if let Some(c) = name.strip_prefix("snap-").and_then(|s| s.strip_suffix(".snap")).and_then(hex)
        {
            FileKind::Snapshot(c)
        } else {
            FileKind::Other
        }
    }

    /// The file name of a segment or snapshot (empty for the other kinds).
    pub fn name(&self) -> String {
        match self {
            FileKind::Segment(seq) => format!("log-{seq:016x}.log"),
            FileKind::Snapshot(covers) => format!("snap-{covers:016x}.snap"),
            FileKind::Temporary | FileKind::Other => String::new(),
        }
    }
}

/// The header of segment `seq`.
pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER] {
    header(SEGMENT_MAGIC, seq)
}

/// The header of a snapshot covering the segments below `covers`.
pub fn snapshot_header(covers: u64) -> [u8; SNAPSHOT_HEADER] {
    header(SNAPSHOT_MAGIC, covers)
}

fn header(magic: &[u8; 8], n: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&n.to_le_bytes());
    h
}

/// Checks that `bytes` start with the header of segment `seq`.
pub fn check_segment_header(bytes: &[u8], seq: u64) -> Result<(), &'static str> {
    check(bytes, SEGMENT_MAGIC, seq, "not a log segment (bad magic)", "the header names another segment")
}

/// Checks that `bytes` start with the header of a snapshot covering below `covers`.
pub fn check_snapshot_header(bytes: &[u8], covers: u64) -> Result<(), &'static str> {
    check(bytes, SNAPSHOT_MAGIC, covers, "not a snapshot (bad magic)", "the header names another segment")
}

fn check(
    bytes: &[u8],
    magic: &[u8; 8],
    n: u64,
    bad_magic: &'static str,
    bad_n: &'static str,
) -> Result<(), &'static str> {
    match bytes.get(..16) {
        None => Err("the file ends inside its header"),
        Some(h) if &h[..8] != magic => Err(bad_magic),
        Some(h) if h[8..] != n.to_le_bytes() => Err(bad_n),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_other() {
        for kind in [FileKind::Segment(1), FileKind::Segment(u64::MAX), FileKind::Snapshot(0x2a)] {
            assert_eq!(FileKind::of(&kind.name()), kind);
        }
        assert_eq!(FileKind::of("snap-000000000000002a.snap.tmp"), FileKind::Temporary);
        for other in
            ["LOCK", "meta", "log-1.log", "log-000000000000000g.log", "log-0000000000000001.log.torn-1"]
        {
            assert_eq!(FileKind::of(other), FileKind::Other, "{other}");
        }
    }
}
