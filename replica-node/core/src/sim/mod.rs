//! A deterministic simulation of a whole cluster (feature `sim`): N servers of M query actors
//! each, driven from one seed with virtual time through the same [`Replica`] and [`Gateway`]
//! state machines the daemon runs (design 9).
//!
//! The network between gateways delays, drops, duplicates and reorders messages, partitions
//! and heals pairs of servers, and connections die with whatever is in flight; servers crash
//! (`kill -9`) and restart. A server without a data directory restarts without its data (a
//! new node id at the same address); one with a data directory restarts as itself with what
//! its disk held: every write it acknowledged or received, except those of its last
//! [`DISK_LAG_MS`] (what a killed process had not yet handed to the OS). Inside a server, mail
//! between actors and the gateway is FIFO and reliable, as the in-process mailboxes are.
//!
//! A run has a fault phase with writes and deletes from clients, then heals every fault,
//! restarts every crashed server and stays quiet. Then it checks:
//! - every replica (every actor and gateway of every server) holds the same map;
//! - every acknowledged write is visible or overwritten by a later one (the Jepsen set
//!   check), except writes acknowledged by a server that crashed before any other server (or
//!   its own disk) had them (a server without a data directory loses those, by design);
//! - no server is still loading, every server is connected to every other, and the servers
//!   that were replaced are shown as such.
//!
//! A failing seed reproduces exactly from its number.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};

use crate::gateway::{ConnId, Gateway};
use crate::peer::PeerMsg;
use crate::replica::{Replica, SyncBatch};

mod check;
mod fuzz;
mod network;
mod servers;
mod world;

pub use fuzz::feed_gateway;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Servers in the cluster.
    pub servers: usize,
    /// Query actors per server.
    pub actors: usize,
    /// Distinct keys written (few keys: many conflicting writes).
    pub keys: u32,
    /// Client writes per second of virtual time, over the whole cluster.
    pub writes_per_sec: u32,
    /// Share of writes that are deletes.
    pub delete_ratio: f64,
    /// Length of the phase with writes and faults (virtual ms).
    pub fault_ms: u64,
    /// Length of the quiet phase after healing (virtual ms).
    pub quiet_ms: u64,
    /// The faults.
    pub faults: Faults,
    /// The most writes a gateway queues for an unreachable server before it drops them and
    /// leaves them to repair (small, so partitions exercise it).
    pub pending_limit: usize,
    /// How far ahead of a server's clock an entry may be stamped.
    pub max_clock_offset_ms: u64,
    /// Tombstones older than this are collected once every server has them (short, so runs
    /// exercise it; the quiet phase must leave time for it).
    pub tombstone_grace_ms: u64,
    /// The share of servers (addresses) run with a data directory, drawn at the start.
    pub data_dirs: f64,
    /// Print what happens (to stderr), to study a failing seed.
    pub trace: bool,
}

/// The faults of a run.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// One-way delay of a message: uniformly between these bounds (ms).
    pub delay_ms: (u64, u64),
    /// Probability that a message is lost (within a live connection).
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by up to `reorder_ms` more (reordering it).
    pub reorder: f64,
    /// The most a reordered message is held back (ms).
    pub reorder_ms: u64,
    /// Partitions between two servers started per virtual second.
    pub partitions_per_sec: f64,
    /// Connections killed at random per virtual second.
    pub conn_kills_per_sec: f64,
    /// Server crashes per virtual second (each restarts without its data a while later).
    pub crashes_per_sec: f64,
    /// Each server's wall clock is off by up to this much either way (ms), drawn at start.
    pub clock_spread_ms: u64,
    /// Probability that a server's clock is off by 2 to 6 s instead (either way): far beyond
    /// the bound. Such servers stay a minority of the cluster.
    pub clock_outlier: f64,
    /// Each server's clock runs fast or slow by up to this many parts per million.
    pub drift_ppm: u64,
}

impl Faults {
    /// No faults, 20-60 ms links.
    pub const NONE: Faults = Faults {
        delay_ms: (20, 60),
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_ms: 0,
        partitions_per_sec: 0.0,
        conn_kills_per_sec: 0.0,
        crashes_per_sec: 0.0,
        clock_spread_ms: 0,
        clock_outlier: 0.0,
        drift_ppm: 0,
    };

    /// Everything at once.
    pub const ALL: Faults = Faults {
        delay_ms: (5, 150),
        drop: 0.02,
        duplicate: 0.02,
        reorder: 0.05,
        reorder_ms: 300,
        partitions_per_sec: 0.1,
        conn_kills_per_sec: 0.1,
        crashes_per_sec: 0.03,
        clock_spread_ms: 200,
        clock_outlier: 0.2,
        drift_ppm: 2_000,
    };
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            servers: 3,
            actors: 2,
            keys: 40,
            writes_per_sec: 40,
            delete_ratio: 0.2,
            fault_ms: 30_000,
            quiet_ms: 60_000,
            faults: Faults::ALL,
            pending_limit: 20,
            max_clock_offset_ms: 500,
            tombstone_grace_ms: 5_000,
            data_dirs: 0.5,
            trace: false,
        }
    }
}

/// What a run saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Acknowledged writes (puts and deletes).
    pub writes: usize,
    /// Writes lost with a crashed server before any other server had them.
    pub lost_with_crash: usize,
    /// Messages delivered between gateways.
    pub messages: u64,
    /// Crashes (each followed by a restart).
    pub crashes: u32,
    /// Restarts that recovered a data directory (as the same node).
    pub recoveries: u32,
    /// Entries those restarts recovered, all together.
    pub recovered_entries: u64,
    /// Partitions started.
    pub partitions: u32,
    /// Connections killed.
    pub conn_kills: u32,
    /// Repair rounds started, all servers together (live processes at the end).
    pub repair_rounds: u64,
    /// Entries received through repair, all servers together (live processes at the end).
    pub repair_entries: u64,
    /// Client writes refused for clocks: their server's clock was too far off, or the key held
    /// a write stamped further ahead than the server's clock may follow.
    pub refused_skewed: usize,
    /// Entries refused for being stamped too far in the future (live processes at the end).
    pub entries_future: u64,
    /// Tombstones collected (live processes at the end).
    pub tombstones_collected: u64,
}

/// A tampering with messages in flight, to check that the checks catch a broken protocol.
pub type Tamper = fn(&mut PeerMsg);

/// Runs `scenario` from `seed`; `Err` says what went wrong (the seed reproduces it).
pub fn run(seed: u64, scenario: &Scenario) -> Result<Report, String> {
    run_with(seed, scenario, None)
}

/// [`run`] with every message in flight passed through `tamper`.
pub fn run_with(seed: u64, scenario: &Scenario, tamper: Option<Tamper>) -> Result<Report, String> {
    let mut sim = Sim::new(seed, scenario.clone(), tamper);
    sim.run().map_err(|e| format!("seed {seed}: {e}"))?;
    Ok(sim.report)
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// The wait (ms) before the next of events happening `per_sec` times a second on average.
    fn exp_ms(&mut self, per_sec: f64) -> u64 {
        if per_sec <= 0.0 {
            return u64::MAX / 4;
        }
        let u = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        (-u.ln() / per_sec * 1_000.0) as u64 + 1
    }
}

/// The wall clock of every server at virtual time 0.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Connections take this long to come up (a handshake).
const HANDSHAKE_MS: u64 = 30;
/// A dead connection is noticed this long after it died, at most.
const DETECT_MS: u64 = 3_000;
/// Bulk messages a connection holds in flight before its sender waits.
const BULK_WINDOW: usize = 2;
/// A write reaches the disk (is handed to the OS, where a killed process cannot lose it) this
/// long after its server took it, at most: the persistence actor's round.
pub const DISK_LAG_MS: u64 = 10;

/// The data directory of one address: it outlives the processes started on it.
#[derive(Debug, Default)]
struct Disk {
    /// The node id it holds (written at the first start), as its number.
    node_num: Option<u64>,
    /// What is on disk.
    map: BytesMap,
    /// Writes not yet on disk, with when they were taken (virtual ms).
    tail: VecDeque<(u64, Bytes, Entry<Bytes>)>,
}

impl Disk {
    /// Puts on disk what was taken by `upto`.
    fn settle(&mut self, upto: u64) {
        while let Some((at, ..)) = self.tail.front() {
            if *at > upto {
                break;
            }
            let (_, key, entry) = self.tail.pop_front().expect("checked");
            self.map.apply(key, entry);
        }
    }
}

#[derive(Debug)]
struct Server {
    node: String,
    /// How far its wall clock is off (ms), and how fast it drifts (parts per million).
    offset_ms: i64,
    drift_ppm: i64,
    /// Tells processes at one address apart, so a message for a crashed process is not
    /// delivered to its successor.
    epoch: u32,
    gateway: Gateway,
    actors: Vec<Replica>,
    /// Mail between the actors and the gateway of this server.
    mail: VecDeque<Mail>,
    /// Addresses being dialled, and when the next attempt is due.
    dialing: BTreeMap<String, u64>,
}

#[derive(Debug)]
enum Mail {
    /// To actor `to`.
    Actor { to: usize, batch: SyncBatch },
    /// To actor `to`: remove these collected tombstones.
    Collect { to: usize, tombstones: Arc<Vec<(Bytes, Timestamp)>> },
    /// To the gateway.
    Gateway(Arc<BytesMap>),
}

#[derive(Debug, Clone)]
struct Conn {
    ends: [(usize, u32); 2],
    up: bool,
    /// Bulk messages in flight from each end.
    bulk_in_flight: [usize; 2],
}

#[derive(Debug)]
enum Wire {
    Connected { conn: ConnId, dialed: Option<String> },
    Disconnected { conn: ConnId },
    Msg { conn: ConnId, msg: PeerMsg, bulk: bool, from: usize },
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    to: (usize, u32),
    wire: Wire,
}

/// One acknowledged client write.
#[derive(Debug, Clone)]
struct Write {
    key: Bytes,
    ts: Timestamp,
    /// Whether it deleted the key.
    delete: bool,
    /// When it was acknowledged (virtual ms: the real time of the simulation).
    at: u64,
    /// Whether its server had measured at least one peer's clock (before that, a server with
    /// a clock far off cannot know it).
    guarded: bool,
}

struct Sim {
    rng: Rng,
    scenario: Scenario,
    tamper: Option<Tamper>,
    now: u64,
    servers: Vec<Option<Server>>,
    /// Every server's initial description: its address and first id (joins use them).
    addrs: Vec<String>,
    first_ids: Vec<String>,
    /// Crashed servers, and when they restart.
    down_until: BTreeMap<usize, u64>,
    /// Cut pairs (smaller index first), and when they heal.
    cut: BTreeMap<(usize, usize), u64>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    wire: BTreeMap<(u64, u64), InFlight>,
    seq: u64,
    history: Vec<Write>,
    /// Indexes into `history` of writes lost with a crash.
    lost: BTreeSet<usize>,
    /// Node ids that were replaced by a restart.
    replaced_ids: BTreeSet<String>,
    /// Every address's data directory, if it has one.
    disks: Vec<Option<Disk>>,
    next_node: u64,
    next_epoch: u32,
    next_write: u64,
    next_partition: u64,
    next_kill: u64,
    next_crash: u64,
    report: Report,
}
