//! Measuring the wall clocks of peers (design 4.9).
//!
//! Each live link sends a `ClockProbe` (our wall-clock time `t0`) when it comes up and every
//! [`PROBE_INTERVAL_MS`] after; the peer answers at once with `ClockReply` (`t0` and its own
//! wall-clock time `t1`). With the round trip `rtt` measured on our monotonic clock, the peer's
//! clock is ahead of ours by `t1 - (t0 + rtt / 2)` (NTP's estimate: the reply is assumed to
//! spend half the round trip on the way back). Of the last [`SAMPLES`] samples the one with the
//! shortest round trip is kept, since queueing on either side only ever adds delay, and the
//! error of a sample is at most half its round trip. Decisions (refusing writes, moving the
//! clock up) count only what is sure: the offset less that error, so a slow round trip (a
//! busy peer, a queue on the way) cannot make clocks that agree look skewed.
//!
//! The gateway turns the offsets of its live peers into two decisions (see
//! [`super::Gateway::clock`]): a server ahead of most peers by more than the bound refuses
//! client writes, and a server behind most of at least two peers moves its hybrid clock up to
//! their time. (With a single peer there is no majority: the server ahead refuses writes, the
//! other does not follow a clock that may be the wrong one.)

use std::collections::VecDeque;

/// How often a live link measures its peer's clock.
pub const PROBE_INTERVAL_MS: u64 = 10_000;
/// Samples kept per link.
const SAMPLES: usize = 8;

/// What one link knows of its peer's clock.
#[derive(Debug, Default)]
pub(crate) struct PeerClock {
    /// `(round trip ms, offset ms)`, newest last.
    samples: VecDeque<(u64, i64)>,
    /// The probe in flight: our wall-clock `t0` and when it left (monotonic ms).
    pending: Option<(u64, u64)>,
    /// When the next probe is due (monotonic ms).
    pub next_probe_at: u64,
    /// The offset last reported in a log line, to report only what changed.
    pub reported: Option<i64>,
    /// Whether the peer said it refuses client writes for its clock.
    pub refusing: bool,
}

impl PeerClock {
    /// A probe to send now, if one is due: our wall-clock time.
    pub fn poll_probe(&mut self, wall: u64, mono: u64) -> Option<u64> {
        if mono < self.next_probe_at {
            return None;
        }
        // A probe unanswered for a whole interval is forgotten (the reply was lost).
        self.pending = Some((wall, mono));
        self.next_probe_at = mono + PROBE_INTERVAL_MS;
        Some(wall)
    }

    /// The peer answered probe `t0` with its clock reading `t1`, at `mono`.
    pub fn on_reply(&mut self, t0: u64, t1: u64, refusing: bool, mono: u64) {
        let Some((sent_wall, sent_mono)) = self.pending else { return };
        self.refusing = refusing;
        if sent_wall != t0 {
            return; // an answer to an older probe
        }
        self.pending = None;
        let rtt = mono.saturating_sub(sent_mono);
        let offset = t1 as i64 - (t0 as i64 + (rtt / 2) as i64);
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((rtt, offset));
    }

    /// The best estimate of how far the peer's clock is ahead of ours (ms; negative: behind).
    pub fn offset(&self) -> Option<i64> {
        self.measured().map(|m| m.offset_ms)
    }

    /// The best estimate with its error bound.
    pub fn measured(&self) -> Option<Measured> {
        self.samples.iter().min_by_key(|(rtt, _)| *rtt).map(|&(rtt, offset_ms)| Measured {
            offset_ms,
            error_ms: rtt.div_ceil(2),
            refusing: self.refusing,
        })
    }
}

/// One peer's clock as measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// How far the peer's clock is ahead of ours (ms; negative: behind): the estimate.
    pub offset_ms: i64,
    /// How far off the estimate may be, either way (half the sample's round trip).
    pub error_ms: u64,
    /// Whether the peer refuses client writes for its own clock.
    pub refusing: bool,
}

impl Measured {
    /// The part of the offset that is sure: the estimate moved toward zero by its error.
    fn sure_ms(&self) -> i64 {
        let size = self.offset_ms.unsigned_abs().saturating_sub(self.error_ms) as i64;
        size * self.offset_ms.signum()
    }
}

/// What the gateway concludes from its peers' clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockView {
    /// The largest measured offset to a connected peer, either way (ms).
    pub max_offset_ms: u64,
    /// How far this node's clock is behind most of its peers (ms): added to the wall clock
    /// when stamping writes, so they are not silently lost to writes stamped by the peers.
    pub correction_ms: u64,
    /// How far this node's clock is ahead of most of its peers, when that is more than the
    /// bound: client writes are refused (`-CLOCKSKEW`) while it is.
    pub ahead_ms: Option<u64>,
    /// With fewer than two sound peers (whose clocks are not off themselves) to move our clock
    /// up by, how far one of them is ahead beyond the bound: there is no majority to tell
    /// which clock is wrong, so client writes are refused until one settles it or the clocks
    /// are fixed.
    pub disputed_ms: Option<u64>,
    /// Connected peers whose clocks have been measured.
    pub peers_measured: usize,
}

impl ClockView {
    /// Whether client writes must be refused, and why (for `-CLOCKSKEW`).
    pub fn refusal(&self) -> Option<String> {
        match (self.ahead_ms, self.disputed_ms) {
            (Some(ms), _) => Some(format!("clock ahead of the cluster by {ms} ms")),
            (None, Some(ms)) => Some(format!(
                "clock behind a peer by {ms} ms, and too few servers to tell which clock is right"
            )),
            (None, None) => None,
        }
    }

    /// The view from the clocks of the peers measured, for a bound of `bound_ms`. The largest
    /// offset reported is the largest estimate; the decisions count only the sure part of
    /// each offset.
    pub fn from_offsets(measured: Vec<Measured>, bound_ms: u64) -> ClockView {
        if measured.is_empty() {
            return ClockView::default();
        }
        let max_offset_ms = measured.iter().map(|m| m.offset_ms.unsigned_abs()).max().unwrap_or(0);
        let measured: Vec<(i64, bool)> = measured.iter().map(|m| (m.sure_ms(), m.refusing)).collect();
        let mut offsets: Vec<i64> = measured.iter().map(|(o, _)| *o).collect();
        offsets.sort_unstable();
        let n = offsets.len();
        // The clock to move up to is that of the peers whose clocks are not themselves off:
        // the lower median of theirs (at least half of them are at least this far ahead).
        let mut sound: Vec<i64> =
            measured.iter().filter(|(_, refusing)| !refusing).map(|(o, _)| *o).collect();
        sound.sort_unstable();
        let median = sound.get(sound.len().saturating_sub(1) / 2).copied().unwrap_or(0);
        // At least half the peers are at least this far behind us (when negative).
        let upper_median = offsets[n / 2];
        let ahead_of = offsets.iter().filter(|&&o| o < -(bound_ms as i64)).count();
        ClockView {
            peers_measured: n,
            max_offset_ms,
            // With one peer there is no telling which clock is wrong: the one ahead refuses
            // writes, and the one behind does not follow it.
            correction_ms: if sound.len() >= 2 { median.max(0) as u64 } else { 0 },
            // More than half the peers are behind us by more than the bound.
            ahead_ms: (ahead_of * 2 > n).then(|| upper_median.unsigned_abs()),
            // Too few sound peers to move our clock by, and one of them (or any peer, with
            // none sound) is ahead beyond the bound: we may be the one behind, and cannot fix it.
            disputed_ms: (sound.len() < 2)
                .then(|| if sound.is_empty() { offsets[n - 1] } else { sound[sound.len() - 1] })
                .filter(|&o| o > bound_ms as i64)
                .map(|o| o as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_with_the_shortest_round_trip_wins() {
        let mut c = PeerClock::default();
        // Peer 1 000 ms ahead; first a slow round trip (400 ms, 300 of it on the way out).
        let t0 = c.poll_probe(10_000, 0).unwrap();
        c.on_reply(t0, 10_000 + 300 + 1_000, false, 400);
        assert_eq!(c.offset(), Some(1_100), "half the round trip assumed each way: off by 100");
        assert!(c.poll_probe(20_000, 500).is_none(), "not due yet");
        let t0 = c.poll_probe(20_000, PROBE_INTERVAL_MS).unwrap();
        c.on_reply(t0, 20_000 + 5 + 1_000, false, PROBE_INTERVAL_MS + 10);
        assert_eq!(c.offset(), Some(1_000));
        // A stale reply changes nothing.
        c.on_reply(10_000, 0, false, PROBE_INTERVAL_MS + 20);
        assert_eq!(c.offset(), Some(1_000));
    }

    fn sound(offsets: &[i64]) -> Vec<Measured> {
        offsets.iter().map(|&o| Measured { offset_ms: o, error_ms: 0, refusing: false }).collect()
    }

    #[test]
    fn a_node_ahead_of_most_refuses_writes_and_one_behind_moves_up() {
        let bound = 500;
        assert_eq!(ClockView::from_offsets(sound(&[]), bound), ClockView::default());
        // We are 2 s ahead of two of three peers: refuse writes.
        let v = ClockView::from_offsets(sound(&[-2_000, -2_100, 10]), bound);
        assert_eq!(v.ahead_ms, Some(2_000));
        assert_eq!(v.correction_ms, 0);
        assert_eq!(v.max_offset_ms, 2_100);
        // Ahead of one of three: within what the others say, no refusal.
        assert_eq!(ClockView::from_offsets(sound(&[-2_000, 5, 10]), bound).ahead_ms, None);
        // Behind most peers by about 900 ms: move up by what at least half of them show.
        let v = ClockView::from_offsets(sound(&[1_000, 900, 0]), bound);
        assert_eq!((v.correction_ms, v.ahead_ms), (900, None));
        // One peer, 3 s ahead: it refuses writes (it is ahead of all its peers); we do not
        // follow a clock that may be the wrong one, and refuse writes too.
        let behind = ClockView::from_offsets(sound(&[3_000]), bound);
        assert_eq!((behind.correction_ms, behind.ahead_ms, behind.disputed_ms), (0, None, Some(3_000)));
        assert!(behind.refusal().unwrap().contains("behind a peer by 3000 ms"));
        let ahead = ClockView::from_offsets(sound(&[-3_000]), bound);
        assert_eq!(ahead.refusal().as_deref(), Some("clock ahead of the cluster by 3000 ms"));
        assert_eq!(ClockView::from_offsets(sound(&[400]), bound).refusal(), None, "within the bound");
        // Peers far ahead that refuse writes themselves are not followed.
        let m = |offset_ms, refusing| Measured { offset_ms, error_ms: 0, refusing };
        let v = ClockView::from_offsets(
            vec![m(-3_200, false), m(2_400, true), m(3_800, true), m(-60, false)],
            bound,
        );
        assert_eq!((v.correction_ms, v.ahead_ms), (0, None));
        // Small offsets either way: nothing to do beyond the correction.
        let v = ClockView::from_offsets(sound(&[-3, 2]), bound);
        assert_eq!((v.correction_ms, v.ahead_ms), (0, None));
    }

    #[test]
    fn a_slow_round_trip_does_not_make_agreeing_clocks_look_skewed() {
        // The same clock on both sides, but the reply sat 1.2 s in a busy peer's queue: the
        // estimate is 600 ms off, and only what exceeds the error counts.
        let mut c = PeerClock::default();
        let t0 = c.poll_probe(10_000, 0).unwrap();
        c.on_reply(t0, 10_000 + 1_200, false, 1_200);
        let m = c.measured().unwrap();
        assert_eq!((m.offset_ms, m.error_ms), (600, 600));
        let v = ClockView::from_offsets(vec![m], 500);
        assert_eq!(v.max_offset_ms, 600, "the estimate is reported");
        assert_eq!(v.refusal(), None, "but nothing sure passes the bound");
        assert_eq!(ClockView::from_offsets(vec![Measured { offset_ms: -600, ..m }], 500).refusal(), None);
        // A peer 3 s ahead measured over a 400 ms round trip is still 2.8 s ahead for sure.
        let far = Measured { offset_ms: 3_000, error_ms: 200, refusing: false };
        assert_eq!(ClockView::from_offsets(vec![far], 500).disputed_ms, Some(2_800));
    }
}
