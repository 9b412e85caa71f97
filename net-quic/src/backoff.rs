//! Exponential backoff with jitter for reconnecting to a peer. Pure: it computes delays, the
//! caller sleeps (see [`PeerEndpoint::connect_with_backoff`](crate::PeerEndpoint)).

use std::time::Duration;

use crate::rng::SplitMix64;

/// Delays between reconnection attempts: `initial`, doubling up to `max`, each drawn uniformly
/// from the upper half of the nominal delay (`[d/2, d]`) so that nodes which lost a peer at the
/// same moment do not redial in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// The default schedule: 100 ms doubling to 5 s.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
    /// The default cap.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(5);

    /// A backoff from `initial` doubling to `max`, with jitter drawn from `seed`. Give each
    /// node a different seed (for example a hash of its node id).
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        let max = max.max(initial);
        Backoff { initial, max, next: initial, rng: SplitMix64::new(seed) }
    }

    /// The default schedule (100 ms to 5 s) with the given jitter seed.
    pub fn with_seed(seed: u64) -> Self {
        Backoff::new(Self::DEFAULT_INITIAL, Self::DEFAULT_MAX, seed)
    }

    /// The delay before the next attempt; doubles the nominal delay for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (nominal * 2).min(self.max);
        let half = nominal / 2;
        half + half.mul_f64(self.rng.next_f64())
    }

    /// Back to the initial delay, after a connection succeeded.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::with_seed(1);
        let nominal = [100u64, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
        for ms in nominal {
            let d = b.next_delay();
            let nominal = Duration::from_millis(ms);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn seeds_differ_and_reproduce() {
        let seq = |seed| {
            let mut b = Backoff::with_seed(seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(seq(5), seq(5));
        assert_ne!(seq(5), seq(6));
    }
}
