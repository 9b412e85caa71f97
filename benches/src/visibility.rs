//! Time from a Put on one actor until every observing actor returns the value: the probe
//! behind `local_visibility` and `remote_visibility`.
//!
//! One thread does everything, so the numbers carry no cross-thread hand-off: it issues the
//! writes on a random schedule and, between writes, polls every observing actor back to back
//! with one `MGET` of all the keys that actor has not shown yet (one round trip per actor and
//! round, however many writes are in flight). A write counts as visible when the last observer
//! returns it; its latency runs from just before the `SET` was sent, so it includes the Put's
//! own round trip. The schedule mixes isolated writes and bursts (see [`schedule`]) because
//! the sync pacing treats them differently: an isolated write and the first few messages of a
//! burst go out at once, and once a sender has spent that part of its budget a write waits
//! (up to the pacer's 125 ms bound) for the next message.
//!
//! The anchor measured in the same run is the poll itself: the `MGET` round trip, i.e. the
//! resolution of the probe.

use std::time::{Duration, Instant};

use bytes::Bytes;
use replica_node::client::{Client, ClientError};
use resp::Value;

use crate::data::SplitMix64;
use crate::harness::{ms, quantile};

/// A write goes to `writer` and must become visible on every one of `observers` (indices into
/// the client list given to [`measure`]).
#[derive(Debug, Clone)]
pub struct Route {
    /// The actor that takes the Put.
    pub writer: usize,
    /// The actors polled for it.
    pub observers: Vec<usize>,
}

/// How to run the probe.
#[derive(Debug, Clone)]
pub struct Options {
    /// Writes measured.
    pub samples: usize,
    /// Seed of the schedule and of the route choice.
    pub seed: u64,
    /// A write not visible everywhere after this long is given up on and counted as lost.
    pub timeout: Duration,
}

/// Writes that follow the previous write by at least this much are counted as "isolated" in
/// the tables. (The old pacer's interval; kept so the rows compare across versions. With the
/// current pacer a write can also be held after a busy stretch, so "isolated" means quiet
/// just before the write, not an idle pacer.)
pub const ISOLATED_GAP: Duration = Duration::from_millis(100);

/// The gap before each write: episodes separated by a pause of 20–300 ms; half the episodes
/// are one isolated write, half a burst of 2–8 writes 1–5 ms apart.
pub fn schedule(n: usize, rng: &mut SplitMix64) -> Vec<Duration> {
    let mut gaps = Vec::with_capacity(n + 8);
    let between = |rng: &mut SplitMix64, lo: u64, hi: u64| lo + rng.next_u64() % (hi - lo + 1);
    while gaps.len() < n {
        gaps.push(Duration::from_millis(between(rng, 20, 300)));
        if rng.next_u64().is_multiple_of(2) {
            for _ in 1..between(rng, 2, 8) {
                gaps.push(Duration::from_millis(between(rng, 1, 5)));
            }
        }
    }
    gaps.truncate(n);
    gaps
}

/// One measured write.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Time from sending the Put until the last observer returned the value; `None` if that
    /// took longer than [`Options::timeout`].
    pub visible: Option<Duration>,
    /// Round trip of the Put itself.
    pub ack: Duration,
    /// Time since the previous write was sent (by any writer).
    pub gap: Duration,
}

impl Sample {
    /// Whether the write came at least [`ISOLATED_GAP`] after the previous one.
    pub fn isolated(&self) -> bool {
        self.gap >= ISOLATED_GAP
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// One per write, in write order.
    pub samples: Vec<Sample>,
    /// Round trip of every `MGET` poll (the probe's resolution).
    pub polls: Vec<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Percentiles of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Samples in the set.
    pub n: usize,
    /// Samples never seen everywhere within the timeout (counted as infinitely late).
    pub lost: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Summary {
    /// Percentiles of `samples` (lost samples rank above every other); `None` if empty.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Option<Summary> {
        let mut v: Vec<Duration> = samples.into_iter().map(|s| s.visible.unwrap_or(Duration::MAX)).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(Summary {
            n: v.len(),
            lost: v.iter().filter(|d| **d == Duration::MAX).count(),
            p50: quantile(&v, 0.50),
            p90: quantile(&v, 0.90),
            p99: quantile(&v, 0.99),
            max: quantile(&v, 1.0),
        })
    }
}

/// Milliseconds, or "lost" for a sample that never became visible.
pub fn ms_or_lost(d: Duration) -> String {
    if d == Duration::MAX { "lost".into() } else { ms(d) }
}

/// A write waiting to be seen everywhere.
struct InFlight {
    key: Bytes,
    sent: Instant,
    ack: Duration,
    gap: Duration,
    /// Observers that have not returned the value yet.
    waiting: Vec<usize>,
    /// When the last observer so far returned it.
    seen: Instant,
    index: usize,
}

const VALUE: &[u8] = b"visible";

/// Runs the probe over `clients` (one per actor): first one write per route, waited for,
/// so that every connection is open; then `options.samples` writes on [`schedule`], each to a
/// random route.
pub fn measure(clients: &[Client], routes: &[Route], options: &Options) -> Result<Report, ClientError> {
    assert!(!routes.is_empty(), "no routes");
    let tag = format!("vis:{:x}", crate::harness::unique());
    let mut rng = SplitMix64::new(options.seed);
    let mut polls = Vec::new();

    // Warm-up: opens the writer's and every observer's pooled connection.
    let mut warm = Vec::new();
    for (r, route) in routes.iter().enumerate() {
        let key = Bytes::from(format!("{tag}:warm:{r}"));
        clients[route.writer].put(&key, VALUE)?;
        let now = Instant::now();
        warm.push(InFlight {
            key,
            sent: now,
            ack: Duration::ZERO,
            gap: Duration::ZERO,
            waiting: route.observers.clone(),
            seen: now,
            index: r,
        });
    }
    let mut ignored = Vec::new();
    while !warm.is_empty() {
        poll_round(clients, &mut warm, &mut ignored)?;
        warm.retain(|w| !w.waiting.is_empty() && w.sent.elapsed() < options.timeout);
    }

    let gaps = schedule(options.samples, &mut rng);
    let mut samples: Vec<Option<Sample>> = vec![None; options.samples];
    let mut in_flight: Vec<InFlight> = Vec::new();
    let start = Instant::now();
    let mut next = 0;
    let mut next_at = start + gaps.first().copied().unwrap_or_default();
    let mut last_sent: Option<Instant> = None;
    while next < options.samples || !in_flight.is_empty() {
        let now = Instant::now();
        if next < options.samples && now >= next_at {
            let route = &routes[rng.below(routes.len())];
            let key = Bytes::from(format!("{tag}:{next}"));
            let sent = Instant::now();
            clients[route.writer].put(&key, VALUE)?;
            let ack = sent.elapsed();
            in_flight.push(InFlight {
                key,
                sent,
                ack,
                gap: last_sent.map_or(Duration::MAX, |l| sent - l),
                waiting: route.observers.clone(),
                seen: sent,
                index: next,
            });
            last_sent = Some(sent);
            next += 1;
            if let Some(gap) = gaps.get(next) {
                next_at += *gap;
            }
            continue;
        }
        if in_flight.is_empty() {
            std::thread::sleep(next_at.saturating_duration_since(now));
            continue;
        }
        poll_round(clients, &mut in_flight, &mut polls)?;
        in_flight.retain(|w| {
            let done = w.waiting.is_empty();
            let lost = !done && w.sent.elapsed() >= options.timeout;
            if done || lost {
                samples[w.index] =
                    Some(Sample { visible: done.then(|| w.seen - w.sent), ack: w.ack, gap: w.gap });
            }
            !(done || lost)
        });
    }
    Ok(Report {
        samples: samples.into_iter().map(|s| s.expect("every write is retired")).collect(),
        polls,
        elapsed: start.elapsed(),
    })
}

/// Asks every observer still waiting for something, once, with one `MGET` each.
fn poll_round(
    clients: &[Client],
    in_flight: &mut [InFlight],
    polls: &mut Vec<Duration>,
) -> Result<(), ClientError> {
    for (observer, client) in clients.iter().enumerate() {
        let asked: Vec<usize> =
            (0..in_flight.len()).filter(|&i| in_flight[i].waiting.contains(&observer)).collect();
        if asked.is_empty() {
            continue;
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(asked.len() + 1);
        args.push(b"MGET");
        args.extend(asked.iter().map(|&i| &in_flight[i].key[..]));
        let t = Instant::now();
        let reply = client.command(&args)?;
        let now = Instant::now();
        polls.push(now - t);
        let Value::Array(values) = reply else {
            return Err(ClientError::UnexpectedReply { command: "MGET", reply: format!("{reply:?}") });
        };
        for (&i, value) in asked.iter().zip(values) {
            if matches!(value, Value::Bulk(_)) {
                let w = &mut in_flight[i];
                w.waiting.retain(|&o| o != observer);
                w.seen = now;
            }
        }
    }
    Ok(())
}

/// The summaries of one run, labelled: all writes, isolated writes, writes in a burst.
pub fn rows(setup: &str, report: &Report) -> Vec<(String, Option<Summary>)> {
    let s = &report.samples;
    vec![
        (format!("{setup}, all writes"), Summary::of(s)),
        (
            format!("{setup}, isolated (≥ {} ms after the previous write)", ISOLATED_GAP.as_millis()),
            Summary::of(s.iter().filter(|x| x.isolated())),
        ),
        (
            format!("{setup}, in a burst (< {} ms after the previous write)", ISOLATED_GAP.as_millis()),
            Summary::of(s.iter().filter(|x| !x.isolated())),
        ),
    ]
}

/// Median of a list of durations (zero if empty).
pub fn median(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    quantile(&v, 0.5)
}
