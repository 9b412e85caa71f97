//! Routers: which server each query goes to.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ClientError;

/// Default time a [`RoundRobin`] avoids an address after a connection failure.
pub const DEFAULT_HOLD_OFF: Duration = Duration::from_secs(1);

/// Chooses the server address for each query.
///
/// The client calls [`next`](Router::next) before every query and before every retry, and
/// [`failed`](Router::failed) when an address did not answer. Implementations must be cheap and
/// thread-safe: many threads query at once.
pub trait Router: Send + Sync + fmt::Debug {
    /// The address for the next query.
    fn next(&self) -> SocketAddr;

    /// How many distinct addresses the router yields: a query makes at most this many attempts
    /// before reporting [`ClientError::Unavailable`].
    fn len(&self) -> usize;

    /// Whether the router has no addresses (never true for the routers provided).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports that `addr` failed to connect or lost its connection. A router may avoid it for
    /// a while; by default nothing happens.
    fn failed(&self, addr: SocketAddr) {
        let _ = addr;
    }
}

/// A shared or boxed router routes as the router inside it.
macro_rules! forward_router {
    ($($pointer:ident),*) => {$(
        impl<R: Router + ?Sized> Router for $pointer<R> {
            fn next(&self) -> SocketAddr {
                (**self).next()
            }
            fn len(&self) -> usize {
                (**self).len()
            }
            fn failed(&self, addr: SocketAddr) {
                (**self).failed(addr)
            }
        }
    )*};
}

forward_router!(Arc, Box);

/// Always the same address.
///
/// ```
/// use replica_client::{Client, Fixed};
/// let client = Client::new(Fixed("127.0.0.1:6001".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed(pub SocketAddr);

impl Router for Fixed {
    fn next(&self) -> SocketAddr {
        self.0
    }
    fn len(&self) -> usize {
        1
    }
}

/// Each query goes to the next address in turn; an address that failed is skipped for a
/// hold-off period (default [`DEFAULT_HOLD_OFF`]) unless every address failed, so a dead server
/// costs one failed attempt per hold-off rather than one per query.
///
/// ```
/// use replica_client::{RoundRobin, Router};
/// let a = "127.0.0.1:6001".parse().unwrap();
/// let b = "127.0.0.1:6002".parse().unwrap();
/// let router = RoundRobin::new([a, b]).unwrap();
/// assert_eq!((router.next(), router.next(), router.next()), (a, b, a));
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    addrs: Vec<SocketAddr>,
    cursor: AtomicUsize,
    /// Per address, until when (ms since `epoch`; 0 = never failed) queries avoid it.
    avoid_until: Vec<AtomicU64>,
    epoch: Instant,
    hold_off: Duration,
}

impl RoundRobin {
    /// A router over `addrs` (duplicates removed, order kept); fails if there are none.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Self, ClientError> {
        let mut unique: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        if unique.is_empty() {
            return Err(ClientError::NoServers);
        }
        Ok(RoundRobin {
            avoid_until: unique.iter().map(|_| AtomicU64::new(0)).collect(),
            addrs: unique,
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
            hold_off: DEFAULT_HOLD_OFF,
        })
    }

    /// Sets how long an address that failed is skipped (zero: never skipped).
    pub fn hold_off(mut self, hold_off: Duration) -> Self {
        self.hold_off = hold_off;
        self
    }

    /// The addresses, in turn order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Milliseconds since `epoch`, plus one so that 0 means "never".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

impl Router for RoundRobin {
    fn next(&self) -> SocketAddr {
        let n = self.addrs.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .find(|&k| self.avoid_until[k].load(Ordering::Relaxed) <= now)
            .map_or(self.addrs[start % n], |k| self.addrs[k])
    }

    fn len(&self) -> usize {
        self.addrs.len()
    }

    fn failed(&self, addr: SocketAddr) {
        let hold_off = u64::try_from(self.hold_off.as_millis()).unwrap_or(u64::MAX / 2);
        let until = self.now_ms().saturating_add(hold_off);
        for (k, a) in self.addrs.iter().enumerate() {
            if *a == addr {
                self.avoid_until[k].store(until, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_rotates_and_avoids_failed_addresses() {
        let addrs: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let rr = RoundRobin::new([addrs[0], addrs[1], addrs[1], addrs[2]]).unwrap();
        assert_eq!(rr.len(), 3);
        let seen: Vec<SocketAddr> = (0..6).map(|_| rr.next()).collect();
        assert_eq!(seen, [addrs[0], addrs[1], addrs[2], addrs[0], addrs[1], addrs[2]]);
        rr.failed(addrs[1]);
        assert!((0..6).all(|_| rr.next() != addrs[1]));
        // When every address failed, they are all tried again.
        rr.failed(addrs[0]);
        rr.failed(addrs[2]);
        let all: std::collections::HashSet<_> = (0..6).map(|_| rr.next()).collect();
        assert_eq!(all.len(), 3);
        assert!(matches!(RoundRobin::new([]), Err(ClientError::NoServers)));
        let no_hold = RoundRobin::new(addrs.clone()).unwrap().hold_off(Duration::ZERO);
        no_hold.failed(addrs[0]);
        assert_eq!(no_hold.next(), addrs[0]);
    }
}
