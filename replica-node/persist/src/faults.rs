//! Fault injection for the file layer's tests: make the log's writes and syncs fail as a full
//! or read-only disk would. Without the `harness` feature this is an empty type whose check
//! always passes.

#[cfg(any(test, feature = "harness"))]
mod hook {
    use std::io;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// A switch shared between a test and a data directory: while set, every write, sync and
    /// new segment of the log fails with the chosen error.
    #[derive(Clone, Debug, Default)]
    pub struct Faults(Arc<AtomicU8>);

    const OFF: u8 = 0;
    const FULL: u8 = 1;
    const READ_ONLY: u8 = 2;
    const DEVICE: u8 = 3;

    /// What the disk does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// Works.
        Off,
        /// Out of space (`ENOSPC`).
        Full,
        /// Read-only (`EROFS`).
        ReadOnly,
        /// A device error (`EIO`).
        Device,
    }

    impl Faults {
        /// Sets what the disk does from now on.
        pub fn set(&self, fault: Fault) {
            let v = match fault {
                Fault::Off => OFF,
                Fault::Full => FULL,
                Fault::ReadOnly => READ_ONLY,
                Fault::Device => DEVICE,
            };
            self.0.store(v, Ordering::SeqCst);
        }

        pub(crate) fn check(&self, _what: &str) -> io::Result<()> {
            match self.0.load(Ordering::SeqCst) {
                FULL => Err(io::Error::from(io::ErrorKind::StorageFull)),
                READ_ONLY => Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem)),
                DEVICE => Err(io::Error::other("injected device error")),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(any(test, feature = "harness"))]
pub use hook::{Fault, Faults};

/// Without the `harness` feature: no faults.
#[cfg(not(any(test, feature = "harness")))]
#[derive(Clone, Debug, Default)]
pub struct Faults;

#[cfg(not(any(test, feature = "harness")))]
impl Faults {
    #[inline]
    pub(crate) fn check(&self, _what: &str) -> std::io::Result<()> {
        Ok(())
    }
}
