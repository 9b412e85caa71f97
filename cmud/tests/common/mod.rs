//! Two (or more) servers of one cluster on loopback, for the game's cross-server tests.
//!
//! The clusters come from `replica_node::testkit` (feature `testkit`): every server joins every
//! server started before it, through a link emulator that delays each packet when a delay is
//! set.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The requirement of the store (design 4.2): a write is visible on every other server within
/// 2 s.
pub const REMOTE_VISIBILITY: Duration = Duration::from_secs(2);

/// What the game may take on top of that to converge (a few reads and writes per command).
pub const GAME_CONVERGENCE: Duration = Duration::from_secs(5);

/// Wall-clock milliseconds, as the binary passes them to the game.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

pub use replica_node::testkit::{Cluster, eventually};

/// Two servers, the second joined to the first over a link of `delay` one way, connected.
pub fn two_servers(tag: &str, actors: usize, delay: Duration) -> Cluster {
    let mut c = Cluster::with_delay(tag, delay);
    c.add(actors);
    c.add(actors);
    c.wait_connected(Duration::from_secs(10));
    c
}
