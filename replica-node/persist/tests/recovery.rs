//! Recovery against crashes and damage: the log cut at every byte offset of its last records,
//! bits flipped anywhere, snapshots interrupted at every step, a second opener, a failing disk.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};
use replica_persist::{
    DataDir, Fault, Faults, FileKind, LogError, OpenError, Options, RecoverError, recover_in_memory,
};

fn ts(i: u64) -> Timestamp {
    Timestamp::new(1_765_000_000_000 + i, (i % 3) as u32, 0x1234_0000 + i % 2)
}

/// A write: key, value (`None` deletes), timestamp.
type Write = (Vec<u8>, Option<Vec<u8>>, Timestamp);

/// `n` writes over `keys` keys, some deletes.
fn writes(n: u64, keys: u64) -> Vec<Write> {
    (0..n)
        .map(|i| {
            let key = format!("key:{:012}", (i * 7) % keys).into_bytes();
            let value =
                (i % 5 != 4).then(|| format!("value {i} {}", "x".repeat((i % 40) as usize)).into_bytes());
            (key, value, ts(i))
        })
        .collect()
}

fn model(ws: &[Write]) -> BytesMap {
    let mut m = BytesMap::new();
    for (k, v, t) in ws {
        m.apply(Bytes::from(k.clone()), Entry { ts: *t, value: v.clone().map(Bytes::from), expires: None });
    }
    m
}

fn open(path: &Path) -> replica_persist::Opened {
    DataDir::open(path, Options::default(), || "node-test".into()).expect("opens")
}

fn read_dir(path: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap()))
        .collect()
}

/// Writes `batches`, one commit each, into a fresh directory; returns the segment's name and
/// its length after each commit.
fn write_batches(path: &Path, batches: &[&[Write]]) -> (String, Vec<usize>) {
    let mut opened = open(path);
    let mut ends = Vec::new();
    for batch in batches {
        for (k, v, t) in *batch {
            opened.dir.push(k, v.as_deref(), *t);
        }
        opened.dir.commit().unwrap();
        ends.push(opened.dir.log_bytes() as usize);
    }
    (FileKind::Segment(1).name(), ends)
}

#[test]
fn round_trip_across_reopens_and_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(3_000, 500);
    let opts =
        Options { segment_bytes: 16 << 10, compact_min_bytes: u64::MAX, compact_max_segments: usize::MAX };
    for (round, chunk) in ws.chunks(700).enumerate() {
        let mut opened = DataDir::open(tmp.path(), opts, || "n".into()).unwrap();
        assert_eq!(opened.created, round == 0);
        assert_eq!(opened.recovered.map, model(&ws[..round * 700]));
        for (i, (k, v, t)) in chunk.iter().enumerate() {
            opened.dir.push(k, v.as_deref(), *t);
            if i % 50 == 49 {
                opened.dir.commit().unwrap();
            }
        }
        opened.dir.commit().unwrap();
    }
    let opened = DataDir::open(tmp.path(), opts, || unreachable!()).unwrap();
    assert_eq!(opened.recovered.map, model(&ws));
    assert!(opened.recovered.segments.len() > 5, "rotated: {:?}", opened.recovered.segments);
    assert_eq!(opened.recovered.newest, ws.iter().map(|w| w.2).max().unwrap());
}

/// Cuts the segment at every byte offset from the start of the third-to-last commit to the end:
/// recovery loads exactly the commits that are whole before the cut, cuts the rest off, keeps a
/// copy of it, and the directory then opens cleanly with the same state.
#[test]
fn a_log_cut_at_every_byte_offset_of_its_last_records_loses_no_committed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(40, 15);
    let batches: Vec<&[Write]> = ws.chunks(5).collect();
    let (seg, ends) = write_batches(tmp.path(), &batches);
    let files = read_dir(tmp.path());
    let full = files[&seg].clone();
    assert_eq!(full.len(), *ends.last().unwrap());
    let from = ends[ends.len() - 4];
    for cut in from..=full.len() {
        let mut cut_files = files.clone();
        cut_files.insert(seg.clone(), full[..cut].to_vec());
        let r = recover_in_memory(&cut_files).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(r.map, model(&ws[..whole * 5]), "cut at {cut}");
        let torn = ends.contains(&cut).then_some(()).is_none();
        assert_eq!(
            r.repairs.iter().any(|x| matches!(x, replica_persist::Repair::CutTorn { .. })),
            torn,
            "cut at {cut}"
        );
    }
    // The file layer on a sample of cuts: the torn bytes are kept beside the segment and the
    // directory reopens without any repair.
    for cut in [from + 1, from + 13, ends[ends.len() - 2] + 7, full.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), if *name == seg { &full[..cut] } else { &bytes[..] }).unwrap();
        }
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let opened = open(dir.path());
        assert_eq!(opened.recovered.map, model(&ws[..whole * 5]));
        drop(opened);
        let boundary = ends[whole - 1];
        assert_eq!(fs::read(dir.path().join(format!("{seg}.torn-1"))).unwrap(), &full[boundary..cut]);
        assert_eq!(fs::metadata(dir.path().join(&seg)).unwrap().len() as usize, boundary);
        let again = open(dir.path());
        assert!(again.recovered.repairs.is_empty(), "{:?}", again.recovered.repairs);
        assert_eq!(again.recovered.map, model(&ws[..whole * 5]));
    }
}

/// Flips every bit of a log segment: recovery either stops with an error naming the segment
/// and the damaged record's offset, or (for the last record, which a torn write explains) cuts
/// that record off. It never loads a damaged record and never drops a record before it.
#[test]
fn a_bit_flip_anywhere_in_the_log_is_refused_or_cut_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(12, 6);
    let batches: Vec<&[Write]> = ws.chunks(3).collect();
    let (seg, ends) = write_batches(tmp.path(), &batches);
    let files = read_dir(tmp.path());
    let full = files[&seg].clone();
    let starts: Vec<usize> = std::iter::once(16).chain(ends[..ends.len() - 1].iter().copied()).collect();
    for bit in 0..full.len() * 8 {
        let mut bad = files.clone();
        bad.get_mut(&seg).unwrap()[bit / 8] ^= 1 << (bit % 8);
        let byte = bit / 8;
        match recover_in_memory(&bad) {
            Ok(r) => {
                let record = starts.iter().rposition(|&s| s <= byte).expect("not in the header");
                assert_eq!(record, batches.len() - 1, "bit {bit}: only the last record may be cut");
                assert_eq!(r.map, model(&ws[..record * 3]), "bit {bit}");
            }
            Err(RecoverError::Damaged { file, offset, why }) => {
                assert_eq!(file, seg, "bit {bit}");
                let expected =
                    if byte < 16 { 0 } else { starts[starts.iter().rposition(|&s| s <= byte).unwrap()] };
                assert_eq!(offset as usize, expected, "bit {bit}: {why}");
            }
            Err(e) => panic!("bit {bit}: {e}"),
        }
    }
}

/// Writes a log, compacts it into a snapshot, and flips every bit of the snapshot: with no
/// older snapshot to fall back on, recovery stops with an error naming the snapshot.
#[test]
fn a_bit_flip_anywhere_in_a_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(30, 10);
    let mut opened = open(tmp.path());
    for (k, v, t) in &ws {
        opened.dir.push(k, v.as_deref(), *t);
    }
    opened.dir.seal().unwrap();
    let job = opened.dir.force_compaction().unwrap();
    let done = job.run();
    opened.dir.compaction_done(&done);
    let snap = done.unwrap();
    drop(opened);
    let files = read_dir(tmp.path());
    let name = FileKind::Snapshot(snap.covers).name();
    assert_eq!(recover_in_memory(&files).unwrap().map, model(&ws));
    assert!(!files.contains_key(&FileKind::Segment(1).name()), "the compacted segment is gone");
    for bit in 0..files[&name].len() * 8 {
        let mut bad = files.clone();
        bad.get_mut(&name).unwrap()[bit / 8] ^= 1 << (bit % 8);
        match recover_in_memory(&bad) {
            Err(RecoverError::Damaged { file, .. }) => assert_eq!(file, name, "bit {bit}"),
            other => panic!("bit {bit}: {other:?}"),
        }
    }
    let err = {
        fs::write(tmp.path().join(&name), b"cmkvsnp1garbage!").unwrap();
        DataDir::open(tmp.path(), Options::default(), || unreachable!()).unwrap_err()
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains("byte") && msg.contains("Moving the data directory away"),
        "{msg}"
    );
}

/// Damage before the tail stops the open with an error that names the file and the offset and
/// says what to do.
#[test]
fn damage_before_the_tail_stops_the_open_with_a_useful_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(9, 9);
    let batches: Vec<&[Write]> = ws.chunks(3).collect();
    let (seg, ends) = write_batches(tmp.path(), &batches);
    let path = tmp.path().join(&seg);
    let mut bytes = fs::read(&path).unwrap();
    bytes[ends[0] + 20] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let err = DataDir::open(tmp.path(), Options::default(), || unreachable!()).unwrap_err();
    assert!(matches!(err, OpenError::Recover { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&seg) && msg.contains(&format!("byte {}", ends[0])), "{msg}");
    assert!(msg.contains("rejoin"), "{msg}");
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let first = open(tmp.path());
    let err = DataDir::open(tmp.path(), Options::default(), || "other".into()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(first);
    assert_eq!(open(tmp.path()).dir.node(), "node-test", "free again once the first is gone");
}

#[test]
fn damaged_or_missing_meta_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let meta = tmp.path().join("meta");
    let mut bytes = fs::read(&meta).unwrap();
    bytes[30] ^= 1;
    fs::write(&meta, &bytes).unwrap();
    let err = DataDir::open(tmp.path(), Options::default(), || unreachable!()).unwrap_err();
    assert!(matches!(err, OpenError::Meta { .. }) && err.to_string().contains("checksum"), "{err}");
    fs::remove_file(&meta).unwrap();
    let err = DataDir::open(tmp.path(), Options::default(), || unreachable!()).unwrap_err();
    assert!(err.to_string().contains("no meta"), "{err}");
}

/// A snapshot written by compaction, interrupted after each of its steps: temporary file
/// partly written, written but not renamed, renamed but the replaced files not removed, all
/// removed. Each state recovers the same map; leftovers are cleaned up.
#[test]
fn a_snapshot_interrupted_at_each_step_recovers_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(400, 120);
    let opts =
        Options { segment_bytes: 4 << 10, compact_min_bytes: u64::MAX, compact_max_segments: usize::MAX };
    let mut opened = DataDir::open(tmp.path(), opts, || "n".into()).unwrap();
    for (k, v, t) in &ws[..200] {
        opened.dir.push(k, v.as_deref(), *t);
        opened.dir.commit().unwrap();
    }
    // A first snapshot, so the second compaction merges an old snapshot too.
    let first = opened.dir.force_compaction().unwrap().run();
    opened.dir.compaction_done(&first);
    for (k, v, t) in &ws[200..] {
        opened.dir.push(k, v.as_deref(), *t);
        opened.dir.commit().unwrap();
    }
    opened.dir.seal().unwrap();
    let before = read_dir(tmp.path());
    let job = opened.dir.force_compaction().unwrap();
    let done = job.run();
    opened.dir.compaction_done(&done);
    let info = done.unwrap();
    drop(opened);
    let after = read_dir(tmp.path());
    let expected = model(&ws);
    let new_name = FileKind::Snapshot(info.covers).name();
    let new_snap = after[&new_name].clone();

    let mut states: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    for len in [0, 10, 16, 100, new_snap.len() / 2, new_snap.len() - 1, new_snap.len()] {
        let mut s = before.clone();
        s.insert(format!("{new_name}.tmp"), new_snap[..len].to_vec());
        states.push((format!("temporary file of {len} bytes, not renamed"), s));
    }
    let mut renamed = before.clone();
    renamed.insert(new_name.clone(), new_snap.clone());
    states.push(("renamed, nothing removed".into(), renamed.clone()));
    let old_snap = before.keys().find(|n| matches!(FileKind::of(n), FileKind::Snapshot(_))).unwrap().clone();
    let mut half = renamed.clone();
    half.remove(&old_snap);
    states.push(("renamed, old snapshot removed, segments not".into(), half));
    states.push(("done".into(), after.clone()));
    for (what, files) in states {
        let r = recover_in_memory(&files).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.map, expected, "{what}");
        // And through the file layer, which removes the leftovers.
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let opened = DataDir::open(dir.path(), opts, || unreachable!()).unwrap();
        assert_eq!(opened.recovered.map, expected, "{what}");
        drop(opened);
        let left = read_dir(dir.path());
        assert!(!left.keys().any(|n| n.ends_with(".tmp")), "{what}: {:?}", left.keys());
        let snaps = left.keys().filter(|n| matches!(FileKind::of(n), FileKind::Snapshot(_))).count();
        assert_eq!(snaps, 1, "{what}: {:?}", left.keys());
    }
}

/// Compaction rewrites the state, tombstones included, in fewer bytes than the log it replaces.
#[test]
fn compaction_keeps_the_state_and_shrinks_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = writes(5_000, 200);
    let opts = Options { segment_bytes: 16 << 10, compact_min_bytes: 32 << 10, compact_max_segments: 100 };
    let mut opened = DataDir::open(tmp.path(), opts, || "n".into()).unwrap();
    let mut compactions = 0;
    for chunk in ws.chunks(10) {
        for (k, v, t) in chunk {
            opened.dir.push(k, v.as_deref(), *t);
        }
        opened.dir.commit().unwrap();
        if let Some(job) = opened.dir.compaction() {
            let done = job.run();
            opened.dir.compaction_done(&done);
            done.unwrap();
            compactions += 1;
        }
    }
    assert!(compactions >= 2, "{compactions}");
    assert_eq!(opened.dir.snapshots_written(), compactions);
    let log_bytes = opened.dir.log_bytes();
    drop(opened);
    let files = read_dir(tmp.path());
    let total: usize = files.values().map(Vec::len).sum();
    assert!(total < 600 << 10, "{total} bytes on disk, {log_bytes} of log");
    let r = recover_in_memory(&files).unwrap();
    assert_eq!(r.map, model(&ws));
    assert!(r.map.tombstones() > 0);
}

/// A full or read-only disk refuses commits, which keep every appended byte; once the disk
/// works again the next commit writes them all, and recovery finds them.
#[test]
fn a_refusing_disk_loses_nothing_appended_and_recovers_when_it_works_again() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let opts = Options { segment_bytes: 2 << 10, ..Options::default() };
    let mut opened = DataDir::open_faulty(tmp.path(), opts, faults.clone(), || "n".into()).unwrap();
    let ws = writes(300, 300);
    for (i, (k, v, t)) in ws.iter().enumerate() {
        opened.dir.push(k, v.as_deref(), *t);
        match i {
            100 => faults.set(Fault::Full),
            150 => faults.set(Fault::ReadOnly),
            200 => faults.set(Fault::Off),
            _ => {}
        }
        let result = opened.dir.commit();
        if (100..200).contains(&i) {
            assert!(
                matches!(result, Err(ref e @ LogError::Refused { .. }) if e.is_refusal()),
                "{i}: {result:?}"
            );
        } else {
            result.unwrap();
        }
    }
    faults.set(Fault::Device);
    opened.dir.push(b"late", Some(b"v"), ts(1_000));
    let err = opened.dir.commit().unwrap_err();
    assert!(!err.is_refusal(), "{err}");
    faults.set(Fault::Off);
    opened.dir.commit().unwrap();
    drop(opened);
    let r = recover_in_memory(&read_dir(tmp.path())).unwrap();
    let mut expected = model(&ws);
    expected.put(Bytes::from_static(b"late"), Bytes::from_static(b"v"), ts(1_000));
    assert_eq!(r.map, expected);
}

/// Torn bytes written by a failed attempt (a partial write before the disk filled up) are
/// replaced by the retry, never left in the middle of the log.
#[test]
fn a_partial_write_before_a_failure_is_overwritten_by_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let mut opened =
        DataDir::open_faulty(tmp.path(), Options::default(), faults.clone(), || "n".into()).unwrap();
    opened.dir.push(b"a", Some(b"1"), ts(1));
    opened.dir.commit().unwrap();
    opened.dir.push(b"b", Some(b"2"), ts(2));
    opened.dir.write_out().unwrap();
    // Garbage after the durable bytes, as a failed write might leave.
    let seg = tmp.path().join(FileKind::Segment(1).name());
    let f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut &f, &[0xAB; 77]).unwrap();
    faults.set(Fault::Full);
    assert!(opened.dir.commit().is_err());
    faults.set(Fault::Off);
    opened.dir.push(b"c", Some(b"3"), ts(3));
    opened.dir.commit().unwrap();
    drop(opened);
    let r = recover_in_memory(&read_dir(tmp.path())).unwrap();
    assert!(r.repairs.is_empty(), "{:?}", r.repairs);
    assert_eq!(r.map.len(), 3);
}

#[test]
fn the_log_record_harness_runs_on_stable() {
    for input in [&b""[..], b"\x01", &[0u8; 64], b"\x0c\x00\x00\x00garbagegarbagegarbage"] {
        replica_persist::harness::check_log_bytes(input);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (seg, _) = write_batches(tmp.path(), &[&writes(10, 5)]);
    let bytes = fs::read(tmp.path().join(seg)).unwrap();
    replica_persist::harness::check_log_bytes(&bytes[16..]);
}

#[derive(Clone, Debug)]
enum Op {
    Push(u8, Option<u8>),
    WriteOut,
    Commit,
    Seal,
    Compact,
    Reopen,
}

fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (0u8..20, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Push(k, v)),
        2 => Just(Op::WriteOut),
        2 => Just(Op::Commit),
        1 => Just(Op::Seal),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Any interleaving of appends, write-outs, commits, seals, compactions and restarts (the
    /// process dropping the directory, as a kill would, with whatever was only buffered lost)
    /// recovers exactly the entries that had been handed to the OS.
    #[test]
    fn recovery_returns_exactly_what_was_written_out(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options { segment_bytes: 256, compact_min_bytes: 512, compact_max_segments: 4 };
        let mut opened = DataDir::open(tmp.path(), opts, || "n".into()).unwrap();
        let (mut written, mut buffered): (Vec<Write>, Vec<Write>) = (Vec::new(), Vec::new());
        let mut clock = 0;
        for op in ops {
            match op {
                Op::Push(k, v) => {
                    clock += 1;
                    let w = (vec![b'k', k], v.map(|v| vec![v; usize::from(v % 7)]), ts(clock));
                    opened.dir.push(&w.0, w.1.as_deref(), w.2);
                    buffered.push(w);
                }
                Op::WriteOut => {
                    opened.dir.write_out().unwrap();
                    written.append(&mut buffered);
                }
                Op::Commit | Op::Seal => {
                    if matches!(op, Op::Seal) { opened.dir.seal().unwrap() } else { opened.dir.commit().unwrap() }
                    written.append(&mut buffered);
                }
                Op::Compact => {
                    if let Some(job) = opened.dir.force_compaction() {
                        let done = job.run();
                        opened.dir.compaction_done(&done);
                        done.unwrap();
                    }
                }
                Op::Reopen => {
                    drop(opened);
                    buffered.clear();
                    opened = DataDir::open(tmp.path(), opts, || unreachable!()).unwrap();
                    proptest::prop_assert_eq!(&opened.recovered.map, &model(&written));
                }
            }
        }
        drop(opened);
        let again = DataDir::open(tmp.path(), opts, || unreachable!()).unwrap();
        proptest::prop_assert_eq!(&again.recovered.map, &model(&written));
    }
}
