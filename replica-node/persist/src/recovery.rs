//! Recovery: from the files of a data directory to the map they hold. Pure: the caller hands in
//! the file names and a function that returns a file's bytes (the file layer reads the disk,
//! the deterministic simulation its in-memory disk of synced bytes); what to repair on disk
//! comes back as [`Repair`] actions for the caller to carry out.
//!
//! Recovery = the newest valid snapshot + every log record after it:
//! 1. The snapshots are tried newest first. One is usable only if the log segments from the
//!    first one it does not cover onwards are all present (no gap); a damaged snapshot is
//!    skipped for an older usable one, and stops recovery if there is none.
//! 2. The segments from there on are replayed in order. Only the last may end in a torn tail;
//!    any other failure is damage, reported with the file and byte offset.

use std::collections::BTreeMap;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};

use crate::codec::{Payload, RecordEntry, decode_payload};
use crate::error::RecoverError;
use crate::layout::{FileKind, SEGMENT_HEADER, SNAPSHOT_HEADER, check_segment_header, check_snapshot_header};
use crate::scan::{ScanEnd, scan_records};

/// A log segment as recovery left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's sequence number.
    pub seq: u64,
    /// Its length once repaired (torn bytes cut).
    pub len: u64,
}

/// The snapshot recovery started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The first segment it does not cover.
    pub covers: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Entries in it.
    pub entries: u64,
}

/// A change recovery asks of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The segment ends in a torn tail from `at` on: keep a copy of those bytes beside it, then
    /// cut it there (or remove it, if not even its header is whole).
    CutTorn {
        /// The segment's file name.
        file: String,
        /// Offset of the first torn byte.
        at: u64,
        /// What was wrong there.
        why: &'static str,
    },
    /// A file no longer needed (a segment or snapshot covered by a newer snapshot, a temporary
    /// file of an interrupted write): remove it.
    Remove {
        /// The file name.
        file: String,
    },
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every entry of the snapshot and the log, merged.
    pub map: BytesMap,
    /// The snapshot it started from, if any.
    pub snapshot: Option<SnapshotInfo>,
    /// The segments replayed, in order.
    pub segments: Vec<SegmentInfo>,
    /// The sequence number for the next segment.
    pub next_segment: u64,
    /// The newest timestamp of any entry read (even one that lost to another).
    pub newest: Timestamp,
    /// Log entries replayed (not counting the snapshot's).
    pub log_entries: u64,
    /// What to change on disk before writing.
    pub repairs: Vec<Repair>,
    /// Snapshots skipped as damaged (an older one was used): file and reason, for the logs.
    pub skipped: Vec<String>,
}

/// The sequence number of the first segment a fresh directory writes.
pub const FIRST_SEGMENT: u64 = 1;

/// Recovers the state held by the files `names`, reading each through `read`.
///
/// `read` returns a file's bytes, or `None` if it cannot (the caller keeps the IO error).
pub fn recover<'n, E>(
    names: impl IntoIterator<Item = &'n str>,
    mut read: impl FnMut(&str) -> Result<Vec<u8>, E>,
) -> Result<Recovered, RecoverError<E>> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let mut out = Recovered::default();
    for name in names {
        match FileKind::of(name) {
            FileKind::Snapshot(covers) => snapshots.push(covers),
            FileKind::Segment(seq) => segments.push(seq),
            FileKind::Temporary => out.repairs.push(Repair::Remove { file: name.to_owned() }),
            FileKind::Other => {}
        }
    }
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    segments.sort_unstable();

    // The newest usable snapshot that is valid.
    let mut chosen: Option<u64> = None;
    let mut first_damage = None;
    for &covers in &snapshots {
        if !contiguous_from(&segments, covers) {
            continue;
        }
        let file = FileKind::Snapshot(covers).name();
        let bytes = read(&file).map_err(|source| RecoverError::Read { file: file.clone(), source })?;
        match load_snapshot(covers, &bytes) {
            Ok((map, entries, newest)) => {
                out.map = map;
                out.newest = newest;
                out.snapshot = Some(SnapshotInfo { covers, len: bytes.len() as u64, entries });
                chosen = Some(covers);
                break;
            }
            Err((offset, why)) => {
                out.skipped.push(format!("{file} at byte {offset}: {why}"));
                first_damage.get_or_insert((file, offset, why));
            }
        }
    }
    if chosen.is_none()
        && let Some((file, offset, why)) = first_damage
    {
        return Err(RecoverError::Damaged { file, offset, why });
    }
    let from = chosen.unwrap_or(FIRST_SEGMENT);
    if chosen.is_none() && !contiguous_from(&segments, FIRST_SEGMENT) {
        let file = match snapshots.first() {
            Some(&newest) => FileKind::Snapshot(newest).name(),
            None => FileKind::Segment(segments[0]).name(),
        };
        return Err(RecoverError::Missing {
            file,
            why: format!(
                "the log starts at segment {} but no snapshot covers the segments before it",
                segments.first().copied().unwrap_or(FIRST_SEGMENT)
            ),
        });
    }
    // What the chosen snapshot covers is no longer needed, nor are older snapshots.
    for &seq in segments.iter().filter(|&&s| s < from) {
        out.repairs.push(Repair::Remove { file: FileKind::Segment(seq).name() });
    }
    for &covers in snapshots.iter().filter(|&&c| chosen.is_some_and(|chosen| c < chosen)) {
        out.repairs.push(Repair::Remove { file: FileKind::Snapshot(covers).name() });
    }

    let live: Vec<u64> = segments.iter().copied().filter(|&s| s >= from).collect();
    for (i, &seq) in live.iter().enumerate() {
        let file = FileKind::Segment(seq).name();
        let bytes = read(&file).map_err(|source| RecoverError::Read { file: file.clone(), source })?;
        let last = i + 1 == live.len();
        let len = replay_segment(&mut out, &file, seq, &bytes, last)?;
        out.segments.push(SegmentInfo { seq, len });
    }
    out.next_segment = live.last().map_or(from, |&s| s + 1);
    Ok(out)
}

/// Whether `segments` (sorted) hold every sequence number from `from` to their largest.
fn contiguous_from(segments: &[u64], from: u64) -> bool {
    let live = segments.iter().filter(|&&s| s >= from);
    live.enumerate().all(|(i, &s)| s == from + i as u64)
}

/// Replays one segment into `out.map`; returns its length once repaired.
fn replay_segment<E>(
    out: &mut Recovered,
    file: &str,
    seq: u64,
    bytes: &[u8],
    last: bool,
) -> Result<u64, RecoverError<E>> {
    let damaged = |offset: usize, why: String| RecoverError::Damaged {
        file: file.to_owned(),
        offset: offset as u64,
        why,
    };
    if bytes.len() < SEGMENT_HEADER {
        if !last {
            return Err(damaged(0, "the segment ends inside its header".into()));
        }
        // Created, then the node stopped before its header was durable.
        out.repairs.push(Repair::CutTorn {
            file: file.to_owned(),
            at: 0,
            why: "the file ends inside its header",
        });
        return Ok(0);
    }
    check_segment_header(bytes, seq).map_err(|why| damaged(0, why.into()))?;
    let scan = scan_records(bytes, SEGMENT_HEADER);
    let mut len = bytes.len();
    match scan.end {
        ScanEnd::Clean => {}
        ScanEnd::Torn { at, why } if last => {
            out.repairs.push(Repair::CutTorn { file: file.to_owned(), at: at as u64, why });
            len = at;
        }
        ScanEnd::Torn { at, why } => {
            return Err(damaged(at, format!("{why}, in a segment that is not the last")));
        }
        ScanEnd::Damaged { at, why } => return Err(damaged(at, format!("{why}, and valid records follow"))),
    }
    for range in scan.records {
        let at = range.start - crate::codec::HEADER;
        let entries = match decode_payload(&bytes[range]) {
            Ok(Payload::Entries(entries)) => entries,
            Ok(Payload::SnapshotEnd { .. }) => {
                return Err(damaged(at, "a snapshot record inside the log".into()));
            }
            Err(e) => {
                return Err(damaged(at, format!("record passes its checksum but does not decode: {e}")));
            }
        };
        out.log_entries += entries.len() as u64;
        for e in entries {
            out.newest = out.newest.max(e.ts);
            out.map.apply(Bytes::copy_from_slice(e.key), owned_entry(&e));
        }
    }
    Ok(len as u64)
}

fn owned_entry(e: &RecordEntry<'_>) -> Entry<Bytes> {
    e.to_entry()
}

/// Decodes a whole snapshot file: its map, entry count and newest timestamp, or the offset and
/// reason it is invalid. A snapshot is valid only whole: a header naming the same segment as
/// its file name, records that all pass their checks, keys strictly increasing, and a last
/// record that ends it with the right count.
pub fn load_snapshot(covers: u64, bytes: &[u8]) -> Result<(BytesMap, u64, Timestamp), (u64, String)> {
    if bytes.len() < SNAPSHOT_HEADER {
        return Err((0, "the file ends inside its header".into()));
    }
    check_snapshot_header(bytes, covers).map_err(|why| (0, why.into()))?;
    let scan = scan_records(bytes, SNAPSHOT_HEADER);
    if let ScanEnd::Torn { at, why } | ScanEnd::Damaged { at, why } = scan.end {
        return Err((at as u64, why.into()));
    }
    let mut failure: Option<(u64, String)> = None;
    let mut count = 0u64;
    let mut newest = Timestamp::ZERO;
    let mut ended: Option<usize> = None;
    let mut prev: Option<&[u8]> = None;
    let records = scan.records;
    let entries = records.iter().flat_map(|range| {
        let at = range.start - crate::codec::HEADER;
        let decoded = if ended.is_some() {
            Err("a record after the end of the snapshot".to_string())
        } else {
            match decode_payload(&bytes[range.clone()]) {
                Ok(Payload::Entries(entries)) => Ok(entries),
                Ok(Payload::SnapshotEnd { count: n, covers: c }) => {
                    ended = Some(at);
                    if n != count || c != covers {
                        Err(format!(
                            "the end record says {n} entries covering {c}, found {count} covering {covers}"
                        ))
                    } else {
                        Ok(Vec::new())
                    }
                }
                Err(e) => Err(format!("record passes its checksum but does not decode: {e}")),
            }
        };
        match decoded {
            Ok(entries) => {
                count += entries.len() as u64;
                entries.into_iter().map(move |e| Ok((at, e))).collect::<Vec<_>>()
            }
            Err(why) => vec![Err((at as u64, why))],
        }
    });
    let map: BytesMap = entries
        .map_while(|item| match item {
            Ok((at, e)) => {
                if prev.is_some_and(|p| p >= e.key) {
                    failure.get_or_insert((at as u64, "keys out of order".into()));
                    return None;
                }
                prev = Some(e.key);
                newest = newest.max(e.ts);
                Some((Bytes::copy_from_slice(e.key), owned_entry(&e)))
            }
            Err(f) => {
                failure.get_or_insert(f);
                None
            }
        })
        .collect();
    if let Some(f) = failure {
        return Err(f);
    }
    if ended.is_none() {
        return Err((bytes.len() as u64, "the snapshot has no end record".into()));
    }
    Ok((map, count, newest))
}

/// Recovers from an in-memory directory: file name → bytes (the simulation's disk).
pub fn recover_in_memory(
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Recovered, RecoverError<std::convert::Infallible>> {
    recover(files.keys().map(String::as_str), |name| Ok(files.get(name).cloned().unwrap_or_default()))
}
