//! The on-disk format of a durable replica (`replica-node --data-dir DIR`): a lock, the node's
//! identity, a log of CRC-32C-checked records of LWW entries, snapshots, compaction, and
//! recovery that tells a torn tail from damage.
//!
//! # The data directory
//!
//! ```text
//! DIR/LOCK                        held (flock) by the process using the directory; holds its pid
//! DIR/meta                        the node id (text, with its own CRC-32C; written atomically)
//! DIR/log-<seq>.log               log segments, <seq> 16 hex digits, from 1 up
//! DIR/snap-<covers>.snap          a snapshot of every segment below <covers>
//! DIR/*.tmp                       a file being written when the node stopped (removed at open)
//! DIR/log-<seq>.log.torn-<n>      bytes cut off a torn tail, kept for inspection
//! ```
//!
//! Nothing in it depends on the number of query actors: entries are stored as the LWW map
//! holds them, so a node restarted with another `--actors` reads the same directory.
//!
//! A **segment** is a 16-byte header (`cmkvlog1`, its sequence number) and records; a
//! **snapshot** is a 16-byte header (`cmkvsnp1`, the segment it covers up to), records of
//! entries in strictly increasing key order, and a final record with the entry count. Record
//! framing and payloads: [`codec`]. A segment is sealed (synced, never written again) when it
//! reaches [`Options::segment_bytes`]; every start also begins a new segment.
//!
//! # Writing
//!
//! [`DataDir::push`] buffers entries; [`DataDir::end_batch`] closes a record (the unit that
//! survives a crash whole or not at all); [`DataDir::write_out`] hands records to the OS and
//! [`DataDir::commit`] also syncs them. The caller decides when: the node's persistence actor
//! groups everything received within a few milliseconds into one commit.
//!
//! # Snapshots and compaction
//!
//! A [`Compaction`] merges the current snapshot (streamed) with the sealed segments (sorted in
//! memory) into a new snapshot: written to a temporary file, synced, renamed, and the
//! directory synced; only then are the segments and the old snapshot removed. Compaction works
//! from the files alone, so the persistence side keeps no copy of the map between compactions
//! (the node's actors hold the only one).
//!
//! # Recovery
//!
//! [`recover`] = the newest valid snapshot + every record after it ([`recovery`]). A torn tail
//! (the last record of the last segment cut short or failing its CRC with nothing valid after
//! it) is cut off with a warning and a copy kept beside the segment; any other damage stops
//! [`DataDir::open`] with an error naming the file and byte offset ([`RecoverError`]), saying
//! that moving the directory away lets the node rejoin empty and be refilled by its peers. A
//! record that fails a check is never applied, so no damaged value is ever served.
//!
//! The codec, the scan, recovery and compaction's merge are pure functions over byte slices;
//! [`DataDir`] is the thin layer that reads and writes files. The deterministic simulation
//! recovers with [`recover_in_memory`] from its in-memory disk of synced bytes.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use lww_crdt::Timestamp;
//! use replica_persist::{DataDir, Options};
//!
//! let tmp = tempfile::tempdir()?;
//! let mut opened = DataDir::open(tmp.path(), Options::default(), || "node-a".into())?;
//! assert!(opened.created);
//! opened.dir.push(b"k", Some(b"v"), Timestamp::new(1_700_000_000_000, 0, 1));
//! opened.dir.commit()?;
//! drop(opened);
//!
//! let again = DataDir::open(tmp.path(), Options::default(), || unreachable!())?;
//! assert_eq!(again.dir.node(), "node-a");
//! assert_eq!(again.recovered.map.get(&b"k"[..]), Some(&Bytes::from("v")));
//! # Ok(()) }
//! ```

pub mod codec;
mod compact;
mod dir;
mod error;
mod faults;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod layout;
mod meta;
pub mod recovery;
pub mod scan;
mod snapshot;

pub use compact::LogRun;
pub use dir::{DataDir, Opened, Options, SyncDone, SyncRequest};
pub use error::{CompactError, LogError, MOVE_AWAY, OpenError, RecoverError};
#[cfg(any(test, feature = "harness"))]
pub use faults::Fault;
pub use faults::Faults;
pub use layout::{FileKind, LOCK_FILE, META_FILE, segment_header, snapshot_header};
pub use meta::Meta;
pub use recovery::{Recovered, Repair, SegmentInfo, SnapshotInfo, recover, recover_in_memory};
pub use snapshot::{Compaction, SnapshotWriter, write_snapshot};
