//! Errors, one enum per operation family.

use std::io;
use std::path::PathBuf;

/// What every error about a damaged directory tells the operator to do.
pub const MOVE_AWAY: &str = "Moving the data directory away lets the node start empty and rejoin its cluster, whose \
                             peers refill it";

/// Why recovery could not rebuild the state of a directory.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError<E> {
    /// A file fails its checks where a crash cannot explain it.
    #[error("{file} is damaged at byte {offset}: {why}. {MOVE_AWAY}")]
    Damaged {
        /// The file name (relative to the directory).
        file: String,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong there.
        why: String,
    },
    /// A file that must exist does not.
    #[error("{file}: {why}. {MOVE_AWAY}")]
    Missing {
        /// The file that points to the missing one.
        file: String,
        /// What is missing.
        why: String,
    },
    /// A file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file name.
        file: String,
        /// The reader's error.
        source: E,
    },
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error("data directory {} is in use by another process (it holds {}/LOCK)", .dir.display(), .dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The metadata file is damaged or missing.
    #[error("data directory {}: {why}. {MOVE_AWAY}", .dir.display())]
    Meta {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The files do not recover.
    #[error("data directory {}: {source}", .dir.display())]
    Recover {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: RecoverError<io::Error>,
    },
    /// The file system refused an operation.
    #[error("data directory {}: {what}: {source}", .dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Why the log could not be written or synced. The bytes appended stay in memory and are
/// written again by the next successful [`crate::DataDir::commit`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The disk refuses writes: it is full, over quota or read-only. Retrying later may work.
    #[error("{what}: {source}")]
    Refused {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Any other failure (an IO error of the device, a vanished directory): nothing says that
    /// retrying will help.
    #[error("{what}: {source}")]
    Failed {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl LogError {
    /// Sorts an OS error: full, over quota and read-only disks are [`LogError::Refused`].
    pub fn from_io(what: &'static str, source: io::Error) -> LogError {
        use io::ErrorKind as K;
        match source.kind() {
            K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::FileTooLarge => {
                LogError::Refused { what, source }
            }
            _ => LogError::Failed { what, source },
        }
    }

    /// Whether the disk refused (full, read-only) rather than failed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, LogError::Refused { .. })
    }
}

/// Why a compaction did not produce a snapshot. Nothing was removed: the directory still
/// recovers to the same state.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// An input file is damaged (it was whole when written): recovery will report it too.
    #[error("{file} is damaged at byte {offset}: {why}")]
    Damaged {
        /// The file name.
        file: String,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The file system refused an operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}
