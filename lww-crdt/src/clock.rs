//! Hybrid logical clock timestamps.

/// Identifies the replica (query actor) that issued a timestamp. Unique in the cluster.
pub type ReplicaId = u64;

/// A hybrid-logical-clock timestamp: wall-clock milliseconds, a logical counter that orders
/// events within one millisecond (or while the wall clock stalls), and the issuing replica.
///
/// Ordered lexicographically by `(wall_ms, logical, replica)`. Two replicas never issue the same
/// timestamp, so for writes made through an [`Hlc`] the order is total and strict; the replica
/// id breaks ties between writes made in the same millisecond deterministically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, as seen by the issuing clock.
    pub wall_ms: u64,
    /// Counter distinguishing timestamps issued within the same `wall_ms`.
    pub logical: u32,
    /// The replica that issued the timestamp.
    pub replica: ReplicaId,
}

impl Timestamp {
    /// The smallest timestamp; every issued timestamp is greater.
    pub const ZERO: Timestamp = Timestamp { wall_ms: 0, logical: 0, replica: 0 };

    /// A timestamp from its parts.
    pub const fn new(wall_ms: u64, logical: u32, replica: ReplicaId) -> Self {
        Timestamp { wall_ms, logical, replica }
    }

    /// The `(wall_ms, logical)` pair, i.e. the clock reading without the replica tie-break.
    fn time(self) -> (u64, u32) {
        (self.wall_ms, self.logical)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{:x}", self.wall_ms, self.logical, self.replica)
    }
}

/// A hybrid logical clock (Kulkarni et al., 2014) owned by one replica.
///
/// [`Hlc::now`] issues strictly increasing timestamps whatever the wall clock does: when the
/// wall clock is ahead of everything seen, the timestamp follows it with `logical = 0`; when it
/// stalls or steps back, the logical counter advances instead. [`Hlc::observe`] moves the clock
/// past a timestamp received from elsewhere, so a write made after reading a value always
/// carries a greater timestamp than that value (causality is preserved even under clock skew).
///
/// The clock never reads time itself: the caller passes `wall_ms` in.
///
/// ```
/// use lww_crdt::{Hlc, Timestamp};
///
/// let mut clock = Hlc::new(7);
/// let a = clock.now(1_000);
/// let b = clock.now(990); // the wall clock stepped back: the logical counter moves on
/// assert!(b > a);
/// assert_eq!((b.wall_ms, b.logical, b.replica), (1_000, 1, 7));
///
/// // A timestamp from a replica whose clock is ahead: our next write still comes after it.
/// let theirs = Timestamp::new(5_000, 3, 9);
/// clock.observe(theirs);
/// assert!(clock.now(1_001) > theirs);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hlc {
    replica: ReplicaId,
    /// The greatest `(wall_ms, logical)` issued or observed.
    wall_ms: u64,
    logical: u32,
}

impl Hlc {
    /// A clock for `replica` that has issued and observed nothing yet.
    pub const fn new(replica: ReplicaId) -> Self {
        Hlc { replica, wall_ms: 0, logical: 0 }
    }

    /// The replica this clock stamps writes for.
    pub const fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The greatest timestamp issued or observed so far, stamped with this clock's replica.
    pub const fn last(&self) -> Timestamp {
        Timestamp::new(self.wall_ms, self.logical, self.replica)
    }

    /// Issues a timestamp strictly greater than every timestamp this clock issued or observed.
    ///
    /// `wall_ms` is the caller's reading of the wall clock; it may stall or go backwards.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        if wall_ms > self.wall_ms {
            self.wall_ms = wall_ms;
            self.logical = 0;
        } else {
            self.tick();
        }
        self.last()
    }

    /// Moves the clock past `ts`: every later [`Hlc::now`] returns a greater timestamp.
    ///
    /// Observing a timestamp from a clock far ahead drags this clock along (as in every HLC);
    /// callers that do not trust their peers bound the accepted drift before observing.
    pub fn observe(&mut self, ts: Timestamp) {
        if ts.time() > (self.wall_ms, self.logical) {
            self.wall_ms = ts.wall_ms;
            self.logical = ts.logical;
        }
    }

    /// Advances the logical part by one. On the (practically unreachable) overflow of the
    /// counter the clock moves to the next millisecond instead, which keeps it monotonic.
    fn tick(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            None => {
                // u64 milliseconds last 584 million years: only hostile input gets here. At the
                // very end of time the clock stays put rather than wrap below what it issued.
                if let Some(w) = self.wall_ms.checked_add(1) {
                    self.wall_ms = w;
                    self.logical = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_wall_clock_when_it_advances() {
        let mut c = Hlc::new(7);
        assert_eq!(c.now(100), Timestamp::new(100, 0, 7));
        assert_eq!(c.now(105), Timestamp::new(105, 0, 7));
    }

    #[test]
    fn strictly_increasing_when_wall_clock_stalls_or_steps_back() {
        let mut c = Hlc::new(1);
        let a = c.now(100);
        let b = c.now(100);
        let d = c.now(50);
        assert!(a < b && b < d);
        assert_eq!(d, Timestamp::new(100, 2, 1));
        // The wall clock catches up: back to logical 0.
        assert_eq!(c.now(101), Timestamp::new(101, 0, 1));
    }

    #[test]
    fn observe_moves_past_remote_timestamps() {
        let mut c = Hlc::new(1);
        c.now(100);
        let remote = Timestamp::new(500, 3, 2);
        c.observe(remote);
        let next = c.now(200);
        assert!(next > remote);
        assert_eq!(next, Timestamp::new(500, 4, 1));
        // Observing something older changes nothing.
        c.observe(Timestamp::new(10, 0, 9));
        assert!(c.now(200) > next);
    }

    #[test]
    fn write_ten_ms_later_wins_across_replicas() {
        let mut a = Hlc::new(u64::MAX);
        let mut b = Hlc::new(0);
        let first = a.now(1_000);
        let second = b.now(1_010);
        assert!(second > first, "a later write must win even against a higher replica id");
    }

    #[test]
    fn logical_overflow_moves_to_next_millisecond() {
        let mut c = Hlc::new(1);
        c.observe(Timestamp::new(10, u32::MAX, 2));
        let t = c.now(0);
        assert_eq!(t, Timestamp::new(11, 0, 1));
        assert!(t > Timestamp::new(10, u32::MAX, 2));
    }

    #[test]
    fn saturates_instead_of_panicking_at_the_end_of_time() {
        let mut c = Hlc::new(1);
        c.observe(Timestamp::new(u64::MAX, u32::MAX, 2));
        let t = c.now(0);
        assert_eq!(t, Timestamp::new(u64::MAX, u32::MAX, 1), "never below what was observed");
    }
}
