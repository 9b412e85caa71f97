//! The checks of the `log_record` fuzz target, here so that they also run as ordinary tests on
//! stable Rust (`tests/recovery.rs`).

use std::collections::BTreeMap;

use crate::codec::{BatchEncoder, Payload, decode_payload};
use crate::layout::{FileKind, segment_header, snapshot_header};
use crate::recovery::recover_in_memory;
use crate::scan::{ScanEnd, scan_records};

/// Feeds arbitrary bytes to every decoder of the log: as a payload, as a run of records, and
/// as the body of a log segment and of a snapshot in a directory being recovered. Panics (the
/// fuzzer's crash) if any of them panics or if a decoded batch does not re-encode to itself.
pub fn check_log_bytes(data: &[u8]) {
    check_payload(data);
    let scan = scan_records(data, 0);
    let mut at = 0;
    for r in &scan.records {
        assert!(r.start >= at && r.end <= data.len(), "records in order and in bounds");
        at = r.end;
        check_payload(&data[r.clone()]);
    }
    if let ScanEnd::Torn { at: t, .. } | ScanEnd::Damaged { at: t, .. } = scan.end {
        assert_eq!(t, at, "the scan stops right after the last valid record");
    }
    for file in [FileKind::Segment(1), FileKind::Snapshot(1)] {
        let mut bytes = match file {
            FileKind::Segment(n) => segment_header(n).to_vec(),
            _ => snapshot_header(1).to_vec(),
        };
        bytes.extend_from_slice(data);
        let files = BTreeMap::from([(file.name(), bytes)]);
        if let Ok(r) = recover_in_memory(&files) {
            assert!(r.map.entry_count() as u64 <= r.log_entries + r.snapshot.map_or(0, |s| s.entries));
        }
    }
}

fn check_payload(payload: &[u8]) {
    if let Ok(Payload::Entries(entries)) = decode_payload(payload) {
        let mut enc = BatchEncoder::new();
        for e in &entries {
            enc.push(e.key, e.value, e.ts);
        }
        let again = enc.take_payload().unwrap_or_default();
        let decoded = decode_payload(&again);
        if entries.is_empty() {
            assert!(again.is_empty(), "an empty batch encodes to nothing");
        } else {
            assert_eq!(decoded, Ok(Payload::Entries(entries)), "a decoded batch re-encodes to itself");
        }
    }
}
