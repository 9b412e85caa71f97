//! The node's clocks and its one source of random ids.

use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use replica_core::Now;

/// The clocks of a node: wall time for timestamps, monotonic time for pacing.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    /// Added to the system's wall clock: a server with a wrong clock, for tests.
    skew_ms: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Instant::now(), skew_ms: 0 }
    }
}

impl Clock {
    /// Clocks whose wall clock reads `skew_ms` off the system's (for tests of clock skew).
    pub fn with_skew(skew_ms: i64) -> Self {
        Clock { skew_ms, ..Clock::default() }
    }

    /// Reads both clocks.
    pub fn now(&self) -> Now {
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Now {
            wall_ms: wall_ms.saturating_add_signed(self.skew_ms),
            mono_ms: self.origin.elapsed().as_millis() as u64,
        }
    }
}

/// 64 random bits for ids, from the standard library's per-process random hash keys mixed with
/// the time and process id (no extra dependency, and ids only need to be unique).
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
