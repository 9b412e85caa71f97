//! Snapshots on disk: writing one crash-safely (temporary file, fsync, rename, fsync of the
//! directory), reading one back a record at a time, and compaction (the old snapshot and the
//! sealed log segments become a new snapshot; then the files it replaces are removed).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use lww_crdt::BytesMap;

use crate::codec::{self, BatchEncoder, HEADER, Payload, RecordEntry};
use crate::compact::LogRun;
use crate::error::CompactError;
use crate::layout::{self, FileKind, SEGMENT_HEADER, SNAPSHOT_HEADER};
use crate::recovery::{SegmentInfo, SnapshotInfo};
use crate::scan::{ScanEnd, scan_records};

/// Writes a snapshot: entries in strictly increasing key order, then [`SnapshotWriter::finish`]
/// makes it durable under its final name.
#[derive(Debug)]
pub struct SnapshotWriter {
    path: PathBuf,
    covers: u64,
    tmp: PathBuf,
    out: BufWriter<File>,
    encoder: BatchEncoder,
    record: Vec<u8>,
    count: u64,
    len: u64,
}

impl SnapshotWriter {
    /// Starts the snapshot of the directory `path` that covers the segments below `covers`,
    /// in a temporary file.
    pub fn create(path: &Path, covers: u64) -> io::Result<SnapshotWriter> {
        let tmp = path.join(format!("{}.tmp", FileKind::Snapshot(covers).name()));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(&layout::snapshot_header(covers))?;
        Ok(SnapshotWriter {
            path: path.to_owned(),
            covers,
            tmp,
            out,
            encoder: BatchEncoder::new(),
            record: Vec::new(),
            count: 0,
            len: SNAPSHOT_HEADER as u64,
        })
    }

    /// Appends one entry (keys must come strictly increasing).
    pub fn push(&mut self, e: &RecordEntry<'_>) -> io::Result<()> {
        self.encoder.push(e.key, e.value, e.ts);
        self.count += 1;
        if self.encoder.is_full() { self.flush_batch() } else { Ok(()) }
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        self.record.clear();
        self.encoder.take_record(&mut self.record);
        self.len += self.record.len() as u64;
        self.out.write_all(&self.record)
    }

    /// Ends the snapshot: its last record, a sync, the rename to its final name and a sync of
    /// the directory. Only then does it exist for recovery.
    pub fn finish(mut self) -> io::Result<SnapshotInfo> {
        self.flush_batch()?;
        self.record.clear();
        codec::push_record(&mut self.record, &codec::snapshot_end_payload(self.count, self.covers));
        self.len += self.record.len() as u64;
        self.out.write_all(&self.record)?;
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, self.path.join(FileKind::Snapshot(self.covers).name()))?;
        File::open(&self.path)?.sync_all()?;
        Ok(SnapshotInfo { covers: self.covers, len: self.len, entries: self.count })
    }
}

/// Writes a snapshot of `map` covering the segments below `covers` into the directory at
/// `path`, crash-safely (temporary file, sync, rename, sync of the directory).
pub fn write_snapshot(path: &Path, covers: u64, map: &BytesMap) -> io::Result<SnapshotInfo> {
    let mut w = SnapshotWriter::create(path, covers)?;
    for (k, e) in map.entries() {
        w.push(&RecordEntry { key: k, ts: e.ts, value: e.value.as_deref() })?;
    }
    w.finish()
}

/// A compaction: the old snapshot (if any) and the sealed segments below `covers` become a
/// new snapshot; then the files it replaces are removed.
#[derive(Debug, Clone)]
pub struct Compaction {
    pub(crate) path: PathBuf,
    pub(crate) old: Option<SnapshotInfo>,
    pub(crate) segments: Vec<SegmentInfo>,
    pub(crate) covers: u64,
}

impl Compaction {
    /// The first segment the new snapshot will not cover.
    pub fn covers(&self) -> u64 {
        self.covers
    }

    /// Runs the compaction (any thread). Memory: the sealed segments and ~80 bytes per entry
    /// in them; the old snapshot streams a record at a time.
    pub fn run(self) -> Result<SnapshotInfo, CompactError> {
        let io = |what: String| move |source| CompactError::Io { what, source };
        let mut buffers = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let name = FileKind::Segment(s.seq).name();
            let mut bytes = fs::read(self.path.join(&name)).map_err(io(format!("reading {name}")))?;
            // Only the synced part belongs to the segment (a failed write may have left more).
            bytes.truncate(s.len as usize);
            buffers.push((name, bytes));
        }
        let mut entries = Vec::new();
        for (name, bytes) in &buffers {
            let damaged = |offset: usize, why: String| CompactError::Damaged {
                file: name.clone(),
                offset: offset as u64,
                why,
            };
            layout::check_segment_header(bytes, FileKind::of(name).seq())
                .map_err(|w| damaged(0, w.into()))?;
            let scan = scan_records(bytes, SEGMENT_HEADER);
            if let ScanEnd::Torn { at, why } | ScanEnd::Damaged { at, why } = scan.end {
                return Err(damaged(at, why.into()));
            }
            for range in scan.records {
                let at = range.start - HEADER;
                match codec::decode_payload(&bytes[range]) {
                    Ok(Payload::Entries(batch)) => entries.extend(batch),
                    Ok(Payload::SnapshotEnd { .. }) => {
                        return Err(damaged(at, "a snapshot record inside the log".into()));
                    }
                    Err(e) => return Err(damaged(at, e.to_string())),
                }
            }
        }
        let mut run = LogRun::new(entries);
        let mut writer =
            SnapshotWriter::create(&self.path, self.covers).map_err(io("creating the snapshot".into()))?;
        let mut write_error = None;
        let mut emit = |e: &RecordEntry<'_>| {
            if write_error.is_none()
                && let Err(err) = writer.push(e)
            {
                write_error = Some(err);
            }
        };
        if let Some(old) = &self.old {
            let name = FileKind::Snapshot(old.covers).name();
            let mut reader = SnapshotReader::open(&self.path, &name, old.covers)
                .map_err(io(format!("reading {name}")))??;
            let mut prev: Option<Vec<u8>> = None;
            while let Some(payload) = reader.next_payload().map_err(|e| reader.error(e))? {
                match codec::decode_payload(&payload) {
                    Ok(Payload::Entries(batch)) => {
                        let ordered = batch.windows(2).all(|w| w[0].key < w[1].key)
                            && batch.first().is_none_or(|f| prev.as_deref().is_none_or(|p| p < f.key));
                        if !ordered {
                            return Err(reader.damaged("keys out of order".into()));
                        }
                        prev = batch.last().map(|e| e.key.to_vec()).or(prev);
                        reader.count += batch.len() as u64;
                        run.merge_batch(&batch, &mut emit);
                    }
                    Ok(Payload::SnapshotEnd { count, covers }) => {
                        if count != reader.count || covers != old.covers {
                            return Err(reader.damaged("the end record does not match the snapshot".into()));
                        }
                        reader.ended = true;
                    }
                    Err(e) => return Err(reader.damaged(e.to_string())),
                }
            }
            if !reader.ended {
                return Err(reader.damaged("the snapshot has no end record".into()));
            }
        }
        run.finish(&mut emit);
        if let Some(e) = write_error {
            return Err(io("writing the snapshot".into())(e));
        }
        let info = writer.finish().map_err(io("finishing the snapshot".into()))?;
        // The new snapshot is durable: what it replaces can go. A file left behind by a crash
        // here is removed by the next recovery.
        for s in &self.segments {
            let _ = fs::remove_file(self.path.join(FileKind::Segment(s.seq).name()));
        }
        if let Some(old) = &self.old {
            let _ = fs::remove_file(self.path.join(FileKind::Snapshot(old.covers).name()));
        }
        Ok(info)
    }
}

impl FileKind {
    fn seq(&self) -> u64 {
        match self {
            FileKind::Segment(n) | FileKind::Snapshot(n) => *n,
            FileKind::Temporary | FileKind::Other => 0,
        }
    }
}

/// Reads a snapshot's records one at a time.
struct SnapshotReader {
    name: String,
    input: BufReader<File>,
    offset: u64,
    /// Where the record last read starts.
    record: u64,
    count: u64,
    ended: bool,
}

/// Why [`SnapshotReader::next_payload`] stopped.
enum ReadFailure {
    Io(io::Error),
    Damaged(&'static str),
}

impl SnapshotReader {
    fn open(path: &Path, name: &str, covers: u64) -> io::Result<Result<SnapshotReader, CompactError>> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path.join(name))?);
        let mut header = [0u8; SNAPSHOT_HEADER];
        let damaged = |why: &str| CompactError::Damaged { file: name.to_owned(), offset: 0, why: why.into() };
        if let Err(e) = input.read_exact(&mut header) {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(Err(damaged("too short")))
            } else {
                Err(e)
            };
        }
        if let Err(why) = layout::check_snapshot_header(&header, covers) {
            return Ok(Err(damaged(why)));
        }
        Ok(Ok(SnapshotReader {
            name: name.to_owned(),
            input,
            offset: SNAPSHOT_HEADER as u64,
            record: SNAPSHOT_HEADER as u64,
            count: 0,
            ended: false,
        }))
    }

    fn next_payload(&mut self) -> Result<Option<Vec<u8>>, ReadFailure> {
        self.record = self.offset;
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match self.input.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ReadFailure::Damaged("the file ends inside a record header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadFailure::Io(e)),
            }
        }
        if self.ended {
            return Err(ReadFailure::Damaged("a record after the end of the snapshot"));
        }
        let len =
            codec::header_len(&header).ok_or(ReadFailure::Damaged("record header fails its checksum"))?;
        let mut payload = vec![0u8; len];
        self.input.read_exact(&mut payload).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadFailure::Damaged("the last record is cut short"),
            _ => ReadFailure::Io(e),
        })?;
        if !codec::payload_ok(&header, &payload) {
            return Err(ReadFailure::Damaged("record fails its checksum"));
        }
        self.offset += (HEADER + len) as u64;
        Ok(Some(payload))
    }

    fn error(&self, failure: ReadFailure) -> CompactError {
        match failure {
            ReadFailure::Io(source) => CompactError::Io { what: format!("reading {}", self.name), source },
            ReadFailure::Damaged(why) => self.damaged(why.into()),
        }
    }

    fn damaged(&self, why: String) -> CompactError {
        CompactError::Damaged { file: self.name.clone(), offset: self.record, why }
    }
}
