//! The file layer: a thin wrapper that moves bytes between the pure parts and the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lww_crdt::{BytesMap, Timestamp};

use crate::codec::{self, BatchEncoder};
use crate::error::{CompactError, LogError, OpenError};
use crate::faults::Faults;
use crate::layout::{self, FileKind, LOCK_FILE, META_FILE, SEGMENT_HEADER};
use crate::meta::Meta;
use crate::recovery::{self, Recovered, Repair, SegmentInfo, SnapshotInfo};
use crate::snapshot::Compaction;

/// Sizes that shape the directory.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A segment that reaches this size is sealed and a new one started.
    pub segment_bytes: u64,
    /// Sealed segments are compacted into a new snapshot once they hold at least this many
    /// bytes and at least half the size of the current snapshot (which bounds the bytes
    /// rewritten per byte logged to 3).
    pub compact_min_bytes: u64,
    /// ...or once there are this many of them (every start seals one).
    pub compact_max_segments: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_bytes: 64 << 20, compact_min_bytes: 64 << 20, compact_max_segments: 16 }
    }
}

/// An open data directory: its lock, identity, log and snapshots.
///
/// Appending ([`DataDir::push`], [`DataDir::push_map`]) only buffers; [`DataDir::write_out`]
/// hands the buffered records to the OS (enough to survive the process being killed) and
/// [`DataDir::commit`] also syncs them to the disk (enough to survive a power loss). Until a
/// commit succeeds, every byte since the last one stays in memory, and a failed write or sync
/// is redone from there: after a failed `fsync` the page cache cannot be trusted to still hold
/// the data.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    dir: File,
    _lock: File,
    meta: Meta,
    opts: Options,
    faults: Faults,
    /// The segment being appended to.
    seq: u64,
    file: File,
    /// Bytes of the segment known to be on disk (synced).
    durable: u64,
    /// Records appended since the last sync; the first `written` are in the file (not synced).
    tail: Vec<u8>,
    written: usize,
    /// A write or sync failed: the file's bytes after `durable` are rewritten before more.
    broken: bool,
    encoder: BatchEncoder,
    snapshot: Option<SnapshotInfo>,
    sealed: Vec<SegmentInfo>,
    compacting: bool,
    snapshots_written: u64,
    /// A [`SyncRequest`] is out: the file must not be cut or replaced until it is back.
    syncing: bool,
}

/// A sync of the log taken off the appending thread ([`DataDir::sync_request`]), so that
/// handing new records to the OS never waits behind a slow `fsync`. Run it on any thread and
/// give the outcome back to [`DataDir::sync_done`].
#[derive(Debug)]
pub struct SyncRequest {
    file: File,
    seq: u64,
    upto: u64,
    faults: Faults,
}

impl SyncRequest {
    /// Syncs the segment's data (`fdatasync`).
    pub fn run(self) -> SyncDone {
        let result = self.faults.check("syncing the log").and_then(|()| self.file.sync_data());
        SyncDone { seq: self.seq, upto: self.upto, result }
    }
}

/// The outcome of a [`SyncRequest`].
#[derive(Debug)]
pub struct SyncDone {
    seq: u64,
    upto: u64,
    result: io::Result<()>,
}

/// A data directory just opened, and what it held.
#[derive(Debug)]
pub struct Opened {
    /// The directory, ready to append.
    pub dir: DataDir,
    /// The state recovered from it.
    pub recovered: Recovered,
    /// Whether the directory was new (empty or absent): the node id was just made.
    pub created: bool,
}

fn io_err(dir: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let dir = dir.to_owned();
    let what = what.into();
    move |source| OpenError::Io { dir, what, source }
}

impl DataDir {
    /// Opens (creating it if needed) the data directory at `path`: takes its lock, reads or
    /// writes its identity (`new_node` makes the id of a new directory), recovers its state,
    /// repairs a torn tail, and starts a new log segment.
    pub fn open(path: &Path, opts: Options, new_node: impl FnOnce() -> String) -> Result<Opened, OpenError> {
        Self::open_with(path, opts, Faults::default(), new_node)
    }

    /// [`DataDir::open`] with fault injection (tests).
    #[cfg(any(test, feature = "harness"))]
    pub fn open_faulty(
        path: &Path,
        opts: Options,
        faults: Faults,
        new_node: impl FnOnce() -> String,
    ) -> Result<Opened, OpenError> {
        Self::open_with(path, opts, faults, new_node)
    }

    fn open_with(
        path: &Path,
        opts: Options,
        faults: Faults,
        new_node: impl FnOnce() -> String,
    ) -> Result<Opened, OpenError> {
        fs::create_dir_all(path).map_err(io_err(path, "cannot create it"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io_err(path, "cannot open its LOCK file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { dir: path.to_owned() }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(path, "cannot lock its LOCK file")(e)),
        }
        // For operators: which process holds it. Not needed for the lock itself.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));
        let dir = File::open(path).map_err(io_err(path, "cannot open it"))?;

        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err(path, "cannot list it"))? {
            let entry = entry.map_err(io_err(path, "cannot list it"))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        let has_data =
            names.iter().any(|n| matches!(FileKind::of(n), FileKind::Segment(_) | FileKind::Snapshot(_)));
        let (meta, created) = if names.iter().any(|n| n == META_FILE) {
            let bytes = fs::read(path.join(META_FILE)).map_err(io_err(path, "cannot read meta"))?;
            let meta = Meta::decode(&bytes).map_err(|why| OpenError::Meta { dir: path.to_owned(), why })?;
            (meta, false)
        } else if has_data {
            return Err(OpenError::Meta {
                dir: path.to_owned(),
                why: "it holds log files but no meta file".into(),
            });
        } else {
            let meta = Meta::new(new_node());
            write_atomically(path, &dir, META_FILE, &meta.encode())
                .map_err(io_err(path, "cannot write meta"))?;
            (meta, true)
        };

        let recovered = recovery::recover(names.iter().map(String::as_str), |name| fs::read(path.join(name)))
            .map_err(|source| OpenError::Recover { dir: path.to_owned(), source })?;
        for skipped in &recovered.skipped {
            tracing::warn!(dir = %path.display(), "skipping a damaged snapshot for an older one: {skipped}");
        }
        for repair in &recovered.repairs {
            apply_repair(path, repair).map_err(io_err(path, format!("cannot repair it ({repair:?})")))?;
        }
        if !recovered.repairs.is_empty() {
            dir.sync_all().map_err(io_err(path, "cannot sync it"))?;
        }

        let seq = recovered.next_segment;
        let file = create_segment(path, &dir, seq).map_err(io_err(path, "cannot start a log segment"))?;
        let data = DataDir {
            path: path.to_owned(),
            dir,
            _lock: lock,
            meta,
            opts,
            faults,
            seq,
            file,
            durable: SEGMENT_HEADER as u64,
            tail: Vec::new(),
            written: 0,
            broken: false,
            encoder: BatchEncoder::new(),
            snapshot: recovered.snapshot.clone(),
            sealed: recovered.segments.clone(),
            compacting: false,
            snapshots_written: 0,
            syncing: false,
        };
        Ok(Opened { dir: data, recovered, created })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node id stored in the directory.
    pub fn node(&self) -> &str {
        &self.meta.node
    }

    /// Buffers one entry. It becomes part of a record at the next [`DataDir::end_batch`] (or
    /// when the batch reaches [`codec::TARGET_PAYLOAD`]).
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>, ts: Timestamp) {
        self.encoder.push(key, value, ts);
        if self.encoder.is_full() {
            self.end_batch();
        }
    }

    /// Buffers every entry of `map`, tombstones included.
    pub fn push_map(&mut self, map: &BytesMap) {
        for (k, e) in map.entries() {
            self.push(k, e.value.as_deref(), e.ts);
        }
    }

    /// Appends a record holding `payload`, an entries payload encoded elsewhere (by a
    /// [`BatchEncoder`], e.g. on the thread that took the writes). Empty payloads are skipped.
    pub fn append_payload(&mut self, payload: &[u8]) {
        self.end_batch();
        if !payload.is_empty() && payload.len() <= codec::MAX_PAYLOAD {
            codec::push_record(&mut self.tail, payload);
        } else if !payload.is_empty() {
            // The encoders cut batches at TARGET_PAYLOAD; one entry is at most 8 MiB + 64 KiB.
            tracing::error!(bytes = payload.len(), "a batch too large for one record was not logged");
        }
    }

    /// Closes the current batch into a record. Records are the unit of recovery: a torn tail
    /// loses the last record whole, never part of one.
    pub fn end_batch(&mut self) {
        self.encoder.take_record(&mut self.tail);
    }

    /// Bytes appended and not synced yet.
    pub fn unsynced(&self) -> usize {
        self.tail.len() + self.encoder.size() * usize::from(!self.encoder.is_empty())
    }

    /// Hands every complete record to the OS (no sync): from then on they survive the
    /// process being killed, not a power loss.
    pub fn write_out(&mut self) -> Result<(), LogError> {
        self.end_batch();
        if self.broken {
            if self.syncing {
                // Cutting the file under a sync in flight would make its outcome meaningless.
                return Err(LogError::from_io("rewriting the log", io::Error::other("a sync is in flight")));
            }
            // Whatever the failed attempt left after the durable bytes is written again.
            self.faults
                .check("truncating the log")
                .map_err(|e| LogError::from_io("truncating the log", e))?;
            self.file.set_len(self.durable).map_err(|e| LogError::from_io("truncating the log", e))?;
            self.written = 0;
            self.broken = false;
        }
        while self.written < self.tail.len() {
            let at = self.durable + self.written as u64;
            let result = self
                .faults
                .check("writing the log")
                .and_then(|()| self.file.write_at(&self.tail[self.written..], at));
            match result {
                Ok(0) => {
                    self.broken = true;
                    return Err(LogError::from_io("writing the log", io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(LogError::from_io("writing the log", e));
                }
            }
        }
        Ok(())
    }

    /// A sync of everything written out so far, to run on another thread while appending and
    /// writing out go on; `None` if nothing written out waits for one, one is already out, or
    /// the log must be rewritten first (then [`DataDir::commit`]).
    pub fn sync_request(&mut self) -> Option<SyncRequest> {
        if self.syncing || self.broken || self.written == 0 {
            return None;
        }
        let file = self.file.try_clone().ok()?;
        self.syncing = true;
        Some(SyncRequest {
            file,
            seq: self.seq,
            upto: self.durable + self.written as u64,
            faults: self.faults.clone(),
        })
    }

    /// Takes the outcome of a [`SyncRequest`]: on success the bytes it covered are durable and
    /// leave memory; on failure they are written again by the next [`DataDir::commit`].
    pub fn sync_done(&mut self, done: SyncDone) -> Result<(), LogError> {
        self.syncing = false;
        match done.result {
            Ok(()) => {
                let n = done.upto.saturating_sub(self.durable) as usize;
                // The segment cannot have changed while the sync was out (no rotation, no
                // rewrite); the check only guards the bookkeeping.
                if done.seq == self.seq && n <= self.written {
                    self.tail.drain(..n);
                    self.written -= n;
                    self.durable = done.upto;
                }
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(LogError::from_io("syncing the log", e))
            }
        }
    }

    /// Whether a [`SyncRequest`] is out.
    pub fn syncing(&self) -> bool {
        self.syncing
    }

    /// Whether the segment is full: the next [`DataDir::commit`] seals it.
    pub fn rotation_due(&self) -> bool {
        self.durable + self.tail.len() as u64 >= self.opts.segment_bytes
    }

    /// Writes out and syncs everything appended; then seals the segment if it is full. On an
    /// error nothing appended is lost: it stays in memory for the next attempt.
    ///
    /// # Panics
    ///
    /// If a [`SyncRequest`] is out (wait for it and call [`DataDir::sync_done`] first).
    pub fn commit(&mut self) -> Result<(), LogError> {
        assert!(!self.syncing, "commit while a sync request is out");
        self.write_out()?;
        if !self.tail.is_empty() {
            if let Err(e) = self.faults.check("syncing the log").and_then(|()| self.file.sync_data()) {
                self.broken = true;
                return Err(LogError::from_io("syncing the log", e));
            }
            self.durable += self.tail.len() as u64;
            self.tail.clear();
            if self.tail.capacity() > 16 << 20 {
                // A burst (a join's snapshot, a backlog after a refusing disk) left a large
                // buffer: do not keep it for the usual few milliseconds of writes.
                self.tail.shrink_to(1 << 20);
            }
            self.written = 0;
        }
        if self.durable >= self.opts.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Seals the current segment (it is synced) and starts the next.
    fn rotate(&mut self) -> Result<(), LogError> {
        let next = self.seq + 1;
        self.faults
            .check("starting a log segment")
            .map_err(|e| LogError::from_io("starting a log segment", e))?;
        let file = create_segment(&self.path, &self.dir, next)
            .map_err(|e| LogError::from_io("starting a log segment", e))?;
        self.sealed.push(SegmentInfo { seq: self.seq, len: self.durable });
        self.seq = next;
        self.file = file;
        self.durable = SEGMENT_HEADER as u64;
        Ok(())
    }

    /// Bytes of log on disk: sealed segments and the current one.
    pub fn log_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.len).sum::<u64>() + self.durable + self.written as u64
    }

    /// Snapshots this process has written.
    pub fn snapshots_written(&self) -> u64 {
        self.snapshots_written
    }

    /// A compaction to run, if one is due and none is running: the current snapshot and the
    /// sealed segments become a new snapshot. Run it anywhere ([`Compaction::run`], e.g. on
    /// another thread) while appending goes on, then report with [`DataDir::compaction_done`].
    pub fn compaction(&mut self) -> Option<Compaction> {
        if self.compacting || self.sealed.is_empty() {
            return None;
        }
        let sealed: u64 = self.sealed.iter().map(|s| s.len).sum();
        let snapshot = self.snapshot.as_ref().map_or(0, |s| s.len);
        let due = (sealed >= self.opts.compact_min_bytes && sealed >= snapshot / 2)
            || self.sealed.len() >= self.opts.compact_max_segments;
        if !due {
            return None;
        }
        Some(self.compaction_now())
    }

    /// A compaction of every sealed segment, due or not (tests, benchmarks). `None` if one is
    /// running or nothing is sealed.
    pub fn force_compaction(&mut self) -> Option<Compaction> {
        (!self.compacting && !self.sealed.is_empty()).then(|| self.compaction_now())
    }

    fn compaction_now(&mut self) -> Compaction {
        self.compacting = true;
        Compaction {
            path: self.path.clone(),
            old: self.snapshot.clone(),
            segments: self.sealed.clone(),
            // Every sealed segment is below the current one.
            covers: self.seq,
        }
    }

    /// Takes the outcome of a [`Compaction`].
    pub fn compaction_done(&mut self, result: &Result<SnapshotInfo, CompactError>) {
        self.compacting = false;
        if let Ok(info) = result {
            self.sealed.retain(|s| s.seq >= info.covers);
            self.snapshot = Some(info.clone());
            self.snapshots_written += 1;
        }
    }

    /// Seals the current segment now if it holds anything (tests, benchmarks: so that a
    /// compaction can cover it).
    pub fn seal(&mut self) -> Result<(), LogError> {
        self.commit()?;
        if self.durable > SEGMENT_HEADER as u64 { self.rotate() } else { Ok(()) }
    }
}

/// Creates (or recreates, after a failed attempt) segment `seq` with its header, durably.
fn create_segment(path: &Path, dir: &File, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path.join(FileKind::Segment(seq).name()))?;
    file.write_all_at(&layout::segment_header(seq), 0)?;
    file.sync_all()?;
    dir.sync_all()?;
    Ok(file)
}

/// Writes `name` so that after a crash it holds either its old contents or `bytes`: a
/// temporary file, synced, renamed over it, and the directory synced.
fn write_atomically(path: &Path, dir: &File, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path.join(name))?;
    dir.sync_all()
}

fn apply_repair(path: &Path, repair: &Repair) -> io::Result<()> {
    match repair {
        Repair::Remove { file } => match fs::remove_file(path.join(file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Repair::CutTorn { file, at, why } => {
            let target = path.join(file);
            let bytes = fs::read(&target)?;
            let cut = &bytes[(*at as usize).min(bytes.len())..];
            let mut kept = None;
            if !cut.is_empty() {
                let copy = (1..)
                    .map(|n| path.join(format!("{file}.torn-{n}")))
                    .find(|p| !p.exists())
                    .unwrap_or_else(|| path.join(format!("{file}.torn")));
                let mut f = File::create(&copy)?;
                f.write_all(cut)?;
                f.sync_all()?;
                kept = Some(copy);
            }
            tracing::warn!(
                file = %target.display(),
                offset = at,
                bytes = cut.len(),
                kept = ?kept,
                "the log ends in a torn record ({why}): cutting it off (a crash while writing explains this)"
            );
            if (*at as usize) < SEGMENT_HEADER {
                fs::remove_file(&target)
            } else {
                let f = OpenOptions::new().write(true).open(&target)?;
                f.set_len(*at)?;
                f.sync_all()
            }
        }
    }
}
