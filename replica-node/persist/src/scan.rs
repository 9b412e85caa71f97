//! The recovery scan: which records of a file are whole, and whether what follows them is a
//! torn tail or damage. Pure: a byte slice in, ranges and a verdict out.
//!
//! A crash while the log is being appended can leave the last record incomplete, or (after a
//! power loss) followed by zeros or garbage. That is a *torn tail*: the records before it are
//! intact and were the last ones the node acknowledged as durable, so it is cut off. Anything
//! else that fails a check is *damage*: a record that fails its checksum while valid records
//! follow it was written whole once and changed since (a bad disk, a stray write), and cutting
//! the log there would silently drop every record after it.
//!
//! How a failure at offset `o` is classified:
//! - fewer than [`HEADER`] bytes left: torn (a header cut short);
//! - a header whose own checksum holds, announcing a record that runs past the end: torn (the
//!   length is trustworthy, so this is the last record, cut short);
//! - otherwise (a bad header, or a whole record failing its payload checksum): damage if a valid
//!   record starts anywhere after `o`, torn if none does.
//!
//! A record that fails its checksum and is the very last one is therefore treated as torn, even
//! if the disk flipped one of its bits after it was committed: nothing tells the two apart, and
//! recovery keeps a copy of the cut bytes beside the file.

use std::ops::Range;

use crate::codec::{HEADER, header_len, payload_ok};

/// What ends a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// From `at` on, the bytes are a torn tail.
    Torn {
        /// Offset of the first byte that is not part of a valid record.
        at: usize,
        /// What was wrong there.
        why: &'static str,
    },
    /// The record at `at` is damaged and valid records follow it.
    Damaged {
        /// Offset of the damaged record.
        at: usize,
        /// What was wrong there.
        why: &'static str,
    },
}

/// The result of scanning a file's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The payload of every valid record, in file order, up to the end or the first failure.
    pub records: Vec<Range<usize>>,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// Scans the records of `bytes` from offset `start` (after the file's own header).
pub fn scan_records(bytes: &[u8], start: usize) -> Scan {
    let mut records = Vec::new();
    let mut at = start.min(bytes.len());
    while at < bytes.len() {
        match record_at(bytes, at) {
            Ok(payload) => {
                at = payload.end;
                records.push(payload);
            }
            Err(failure) => return Scan { records, end: classify(bytes, at, failure) },
        }
    }
    Scan { records, end: ScanEnd::Clean }
}

/// Why there is no valid record at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Fewer bytes than a header.
    ShortHeader,
    /// A trustworthy header whose record runs past the end.
    CutShort,
    /// A header whose own checksum fails (or announcing an impossible length).
    BadHeader,
    /// A whole record whose payload fails its checksum.
    BadPayload,
}

/// The payload range of the record at `at`, if a valid record starts there.
fn record_at(bytes: &[u8], at: usize) -> Result<Range<usize>, Failure> {
    let Some(header) = bytes.get(at..at + HEADER) else {
        return Err(Failure::ShortHeader);
    };
    // The slice is exactly HEADER bytes long.
    let header: &[u8; HEADER] = header.try_into().map_err(|_| Failure::ShortHeader)?;
    let len = header_len(header).ok_or(Failure::BadHeader)?;
    let start = at + HEADER;
    let payload = bytes.get(start..start + len).ok_or(Failure::CutShort)?;
    if payload_ok(header, payload) { Ok(start..start + len) } else { Err(Failure::BadPayload) }
}

fn classify(bytes: &[u8], at: usize, failure: Failure) -> ScanEnd {
    match failure {
        Failure::ShortHeader => ScanEnd::Torn { at, why: "the file ends inside a record header" },
        Failure::CutShort => ScanEnd::Torn { at, why: "the last record is cut short" },
        Failure::BadHeader | Failure::BadPayload => {
            let why = if failure == Failure::BadHeader {
                "record header fails its checksum"
            } else {
                "record fails its checksum"
            };
            if valid_record_after(bytes, at + 1) {
                ScanEnd::Damaged { at, why }
            } else {
                ScanEnd::Torn { at, why }
            }
        }
    }
}

/// Whether a valid record starts anywhere at or after `from`. Most offsets fail on the
/// header's 4-byte checksum, so this costs little more than one pass over the bytes.
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(HEADER - 1)).any(|at| record_at(bytes, at).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::push_record;

    fn log(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(out.len());
            push_record(&mut out, p);
        }
        (out, starts)
    }

    #[test]
    fn clean_log_yields_every_record() {
        let (bytes, _) = log(&[b"one", b"two", b"three"]);
        let scan = scan_records(&bytes, 0);
        assert_eq!(scan.end, ScanEnd::Clean);
        let got: Vec<&[u8]> = scan.records.iter().map(|r| &bytes[r.clone()]).collect();
        assert_eq!(got, vec![&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn every_cut_of_the_last_record_is_torn_at_its_start() {
        let (bytes, starts) = log(&[b"one", b"two", b"the last record"]);
        for cut in starts[2] + 1..bytes.len() {
            let scan = scan_records(&bytes[..cut], 0);
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert!(
                matches!(scan.end, ScanEnd::Torn { at, .. } if at == starts[2]),
                "cut at {cut}: {:?}",
                scan.end
            );
        }
        assert_eq!(scan_records(&bytes[..starts[2]], 0).end, ScanEnd::Clean);
    }

    #[test]
    fn zeros_and_garbage_after_the_last_record_are_torn() {
        let (mut bytes, _) = log(&[b"one", b"two"]);
        let end = bytes.len();
        bytes.extend([0u8; 4096]);
        assert_eq!(
            scan_records(&bytes, 0).end,
            ScanEnd::Torn { at: end, why: "record header fails its checksum" }
        );
        bytes.truncate(end);
        bytes.extend((0..300u32).map(|i| (i * 7919 % 251) as u8));
        assert!(matches!(scan_records(&bytes, 0).end, ScanEnd::Torn { at, .. } if at == end));
    }

    #[test]
    fn a_bit_flip_before_the_last_record_is_damage() {
        let (bytes, starts) = log(&[b"one", b"two", b"three"]);
        for bit in 0..starts[2] * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let scan = scan_records(&b, 0);
            let record = starts.iter().rposition(|&s| s <= bit / 8).unwrap();
            assert_eq!(scan.records.len(), record, "bit {bit}");
            assert!(
                matches!(scan.end, ScanEnd::Damaged { at, .. } if at == starts[record]),
                "bit {bit}: {:?}",
                scan.end
            );
        }
    }

    #[test]
    fn a_bit_flip_in_the_last_record_is_torn_there() {
        let (bytes, starts) = log(&[b"one", b"two", b"three"]);
        for bit in starts[2] * 8..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let scan = scan_records(&b, 0);
            assert_eq!(scan.records.len(), 2, "bit {bit}");
            assert!(
                matches!(scan.end, ScanEnd::Torn { at, .. } if at == starts[2]),
                "bit {bit}: {:?}",
                scan.end
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), start in 0usize..600) {
            let scan = scan_records(&bytes, start);
            for r in &scan.records {
                proptest::prop_assert!(r.end <= bytes.len());
            }
        }
    }
}
