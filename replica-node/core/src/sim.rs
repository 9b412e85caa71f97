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

use crate::gateway::{
    CloseWhy, ConnId, Event, Gateway, GatewayConfig, JoinTarget, MemberStatus, SnapshotPiece, Transmit,
};
use crate::peer::PeerMsg;
use crate::replica::{Now, Replica, SyncBatch};

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

impl Sim {
    fn new(seed: u64, scenario: Scenario, tamper: Option<Tamper>) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
        let f = scenario.faults;
        let next_write = rng.exp_ms(f64::from(scenario.writes_per_sec));
        let next_partition = rng.exp_ms(f.partitions_per_sec);
        let next_kill = rng.exp_ms(f.conn_kills_per_sec);
        let next_crash = rng.exp_ms(f.crashes_per_sec);
        let addrs = (0..scenario.servers).map(|i| format!("10.0.0.{}:6000", i + 1)).collect();
        Sim {
            rng,
            scenario,
            tamper,
            now: 0,
            servers: Vec::new(),
            addrs,
            first_ids: Vec::new(),
            down_until: BTreeMap::new(),
            cut: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            wire: BTreeMap::new(),
            seq: 0,
            history: Vec::new(),
            lost: BTreeSet::new(),
            replaced_ids: BTreeSet::new(),
            disks: Vec::new(),
            next_node: 1,
            next_epoch: 1,
            next_write,
            next_partition,
            next_kill,
            next_crash,
            report: Report::default(),
        }
    }

    /// The clocks of server `i`: its wall clock is off and drifts; its monotonic clock is
    /// simply virtual time (only differences matter).
    fn clock_of(&self, i: usize) -> Now {
        let (offset, drift) = self.servers[i].as_ref().map_or((0, 0), |s| (s.offset_ms, s.drift_ppm));
        let wall = EPOCH_MS as i64 + self.now as i64 + offset + self.now as i64 * drift / 1_000_000;
        Now { wall_ms: wall as u64, mono_ms: self.now }
    }

    /// Server `i`'s clocks as its query actors read them: moved up as its peers' clocks say.
    fn actor_clock(&self, i: usize) -> Now {
        let mut now = self.clock_of(i);
        if let Some(s) = &self.servers[i] {
            now.wall_ms += s.gateway.clock().correction_ms;
        }
        now
    }

    /// Starts server `i`, joining the servers started before it, as their first descriptions
    /// name them: with what its data directory holds, as the node it names, if it has one;
    /// else without data, as a new node.
    fn start(&mut self, i: usize) -> Server {
        let disk = self.disks[i].as_mut();
        let (num, recovered) = match disk {
            Some(Disk { node_num: Some(num), map, tail, .. }) => {
                debug_assert!(tail.is_empty(), "a crash settles the disk");
                (*num, map.clone())
            }
            disk => {
                let num = self.next_node;
                self.next_node += 1;
                if let Some(d) = disk {
                    d.node_num = Some(num);
                }
                (num, BytesMap::new())
            }
        };
        // Epochs are unique: they tell processes at one address apart.
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let node = format!("n{num:03}");
        let joins = (0..i)
            .filter_map(|j| {
                Some(JoinTarget { node: self.first_ids.get(j)?.clone(), addr: self.addrs[j].clone() })
            })
            .collect();
        let f = self.scenario.faults;
        // Clocks far off stay a minority (with most clocks wrong, the cluster's time is theirs,
        // and "correct" means nothing a server could check).
        let outliers =
            self.servers.iter().flatten().filter(|s| s.offset_ms.unsigned_abs() > f.clock_spread_ms).count();
        let may_be_outlier = (outliers + 1) * 2 < self.scenario.servers;
        let offset_ms = if may_be_outlier && self.rng.chance(f.clock_outlier) {
            let off = self.rng.range(2_000, 6_000) as i64;
            if self.rng.chance(0.5) { off } else { -off }
        } else {
            self.rng.range(0, 2 * f.clock_spread_ms) as i64 - f.clock_spread_ms as i64
        };
        let drift_ppm = self.rng.range(0, 2 * f.drift_ppm) as i64 - f.drift_ppm as i64;
        let wall = EPOCH_MS as i64 + self.now as i64 + offset_ms + self.now as i64 * drift_ppm / 1_000_000;
        let config = GatewayConfig {
            node: node.clone(),
            advertised: self.addrs[i].clone(),
            actors: self.scenario.actors,
            incarnation: self.rng.next() | 1,
            started_ms: wall as u64,
            digest_key: *b"simulation-key!!",
            joins,
            redial_newer_ms: Some(crate::gateway::DEFAULT_REDIAL_NEWER_MS),
            pending_limit: self.scenario.pending_limit,
            max_clock_offset_ms: self.scenario.max_clock_offset_ms,
            tombstone_grace_ms: self.scenario.tombstone_grace_ms,
        };
        let now = Now { wall_ms: wall as u64, mono_ms: self.now };
        let newest = recovered.max_timestamp().unwrap_or(Timestamp::ZERO);
        let actors = (0..self.scenario.actors)
            .map(|a| {
                let mut r = Replica::new(a, (num << 16) | a as u64, self.scenario.actors)
                    .with_max_clock_offset(self.scenario.max_clock_offset_ms);
                r.restore(recovered.clone(), newest, now);
                r
            })
            .collect();
        if recovered.entry_count() > 0 || self.disks[i].is_some() {
            self.trace(
                i,
                &format!("{node} recovers {} entries from its data directory", recovered.entry_count()),
            );
        }
        let gateway = Gateway::new(config, recovered, now);
        self.trace(
            i,
            &format!("{node} starts with its clock off by {offset_ms} ms, drifting {drift_ppm} ppm"),
        );
        Server {
            node,
            offset_ms,
            drift_ppm,
            epoch,
            gateway,
            actors,
            mail: VecDeque::new(),
            dialing: BTreeMap::new(),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        for _ in 0..self.scenario.servers {
            let disk = self.rng.chance(self.scenario.data_dirs).then(Disk::default);
            self.disks.push(disk);
        }
        for i in 0..self.scenario.servers {
            let s = self.start(i);
            self.first_ids.push(s.node.clone());
            self.servers.push(Some(s));
            // Servers start one after another, as an operator would.
            self.advance_to(self.now + 200)?;
        }
        let end_faults = self.now + self.scenario.fault_ms;
        self.advance_to(end_faults)?;
        // Heal everything.
        self.cut.clear();
        let crashed: Vec<usize> = self.down_until.keys().copied().collect();
        for i in crashed {
            self.restart(i);
        }
        self.advance_to(end_faults + self.scenario.quiet_ms)?;
        self.check()
    }

    fn faults_on(&self) -> bool {
        self.now < 200 * self.scenario.servers as u64 + self.scenario.fault_ms
    }

    /// Runs until virtual time `end`.
    fn advance_to(&mut self, end: u64) -> Result<(), String> {
        let mut idle_rounds = 0;
        loop {
            let did = self.step()?;
            let next = self.next_event().min(end);
            if next > self.now {
                self.now = next;
                idle_rounds = 0;
            } else if !did {
                idle_rounds += 1;
                if idle_rounds > 1_000 {
                    return Err(format!("stuck at {} ms: something is due but nothing happens", self.now));
                }
                self.now += 1;
            }
            if self.now >= end && !did {
                return Ok(());
            }
        }
    }

    /// Everything due now; whether anything happened.
    fn step(&mut self) -> Result<bool, String> {
        let mut did = false;
        // Faults and client writes.
        if self.faults_on() {
            while self.now >= self.next_write {
                self.next_write += self.rng.exp_ms(f64::from(self.scenario.writes_per_sec));
                self.client_write();
                did = true;
            }
            let f = self.scenario.faults;
            if self.now >= self.next_partition {
                self.next_partition += self.rng.exp_ms(f.partitions_per_sec);
                self.partition();
                did = true;
            }
            if self.now >= self.next_kill {
                self.next_kill += self.rng.exp_ms(f.conn_kills_per_sec);
                self.kill_conn();
                did = true;
            }
            if self.now >= self.next_crash {
                self.next_crash += self.rng.exp_ms(f.crashes_per_sec);
                self.crash();
                did = true;
            }
        }
        let healed: Vec<(usize, usize)> =
            self.cut.iter().filter(|(_, t)| **t <= self.now).map(|(p, _)| *p).collect();
        for p in healed {
            self.cut.remove(&p);
        }
        let restarts: Vec<usize> =
            self.down_until.iter().filter(|(_, t)| **t <= self.now).map(|(i, _)| *i).collect();
        for i in restarts {
            self.restart(i);
            did = true;
        }
        // The network.
        while let Some(entry) = self.wire.first_entry() {
            if entry.get().at > self.now {
                break;
            }
            let m = entry.remove();
            self.deliver(m);
            did = true;
        }
        // Dials.
        for i in 0..self.servers.len() {
            let due: Vec<String> = match &self.servers[i] {
                Some(s) => {
                    s.dialing.iter().filter(|(_, t)| **t <= self.now).map(|(a, _)| a.clone()).collect()
                }
                None => Vec::new(),
            };
            for addr in due {
                self.dial(i, &addr);
                did = true;
            }
        }
        // Every server's machines, until nothing more happens at this instant.
        for i in 0..self.servers.len() {
            for _ in 0..1_000 {
                if !self.run_server(i) {
                    break;
                }
                did = true;
            }
        }
        Ok(did)
    }

    fn next_event(&self) -> u64 {
        let mut next = u64::MAX;
        if self.faults_on() {
            next =
                next.min(self.next_write).min(self.next_partition).min(self.next_kill).min(self.next_crash);
        }
        if let Some((_, m)) = self.wire.first_key_value() {
            next = next.min(m.at);
        }
        for t in self.cut.values().chain(self.down_until.values()) {
            next = next.min(*t);
        }
        for s in self.servers.iter().flatten() {
            for t in s.dialing.values() {
                next = next.min(*t);
            }
            if let Some(t) = s.gateway.poll_timeout() {
                next = next.min(t);
            }
            for a in &s.actors {
                if let Some(t) = a.next_sync_at() {
                    next = next.min(t);
                }
            }
        }
        next
    }

    /// Runs server `i`'s machines once; whether anything happened.
    fn run_server(&mut self, i: usize) -> bool {
        let now = self.clock_of(i);
        let actor_now = self.actor_clock(i);
        let Some(s) = self.servers[i].as_mut() else { return false };
        let mut did = false;
        while let Some(mail) = s.mail.pop_front() {
            did = true;
            match mail {
                Mail::Actor { to, batch } => {
                    s.actors[to].on_sync(&batch, actor_now);
                }
                Mail::Collect { to, tombstones } => {
                    s.actors[to].collect(&tombstones);
                }
                Mail::Gateway(delta) => s.gateway.handle(Event::Local(delta), now),
            }
        }
        for a in 0..s.actors.len() {
            if let Some(batch) = s.actors[a].poll_sync(actor_now) {
                did = true;
                for to in (0..s.actors.len()).filter(|&t| t != a) {
                    s.mail.push_back(Mail::Actor { to, batch: batch.clone() });
                }
                s.mail.push_back(Mail::Gateway(batch.delta.clone()));
            }
        }
        let mut out = Vec::new();
        while let Some(t) = s.gateway.poll_transmit(now) {
            out.push(t);
        }
        // Bulk streams: each connection keeps a small window in flight.
        let mut bulk = Vec::new();
        for (&conn, c) in &self.conns {
            let Some(end) = c.ends.iter().position(|&(srv, ep)| srv == i && ep == s.epoch) else { continue };
            if !c.up {
                continue;
            }
            let mut in_flight = c.bulk_in_flight[end];
            while in_flight < BULK_WINDOW && s.gateway.wants_bulk(conn) {
                let mut msg = None;
                let _ = s.gateway.poll_bulk(conn, now, |b| {
                    msg = Some(b.to_msg());
                    Ok::<(), ()>(())
                });
                let Some(msg) = msg else { break };
                bulk.push((conn, msg));
                in_flight += 1;
            }
        }
        did |= !out.is_empty() || !bulk.is_empty();
        for t in out {
            self.act(i, t);
        }
        for (conn, msg) in bulk {
            self.send(i, conn, msg, true);
        }
        did
    }

    /// Carries out what server `i`'s gateway asked for.
    fn act(&mut self, i: usize, t: Transmit) {
        match t {
            Transmit::Send { conn, msg } => self.send(i, conn, msg, false),
            Transmit::Close { conn, why } => {
                let _: CloseWhy = why;
                self.kill(conn, 0);
            }
            Transmit::Dial { addr } => {
                self.trace(i, &format!("dial {addr}"));
                if let Some(s) = self.servers[i].as_mut() {
                    s.dialing.insert(addr, self.now);
                }
            }
            Transmit::StopDial { addr } => {
                self.trace(i, &format!("stop dialling {addr}"));
                if let Some(s) = self.servers[i].as_mut() {
                    s.dialing.remove(&addr);
                }
            }
            Transmit::FanOut(batch) => {
                for (key, entry) in batch.delta.entries() {
                    self.persist(i, key.clone(), entry.clone());
                }
                if let Some(s) = self.servers[i].as_mut() {
                    for to in 0..s.actors.len() {
                        s.mail.push_back(Mail::Actor { to, batch: batch.clone() });
                    }
                }
            }
            Transmit::Collect(tombstones) => {
                if let Ok(watch) = std::env::var("SIM_WATCH")
                    && tombstones.iter().any(|(k, _)| k.as_ref() == watch.as_bytes())
                {
                    let why = self.servers[i]
                        .as_ref()
                        .map(|s| s.gateway.explain_gc(watch.as_bytes(), self.clock_of(i)));
                    self.trace(i, &format!("collects {watch}: {why:?}"));
                }
                if let Some(s) = self.servers[i].as_mut() {
                    for to in 0..s.actors.len() {
                        s.mail.push_back(Mail::Collect { to, tombstones: tombstones.clone() });
                    }
                }
            }
            Transmit::Notice(n) => self.trace(i, &format!("{n:?}")),
        }
    }

    /// One attempt of server `i` to dial `addr`.
    fn dial(&mut self, i: usize, addr: &str) {
        let Some(target) = self.addrs.iter().position(|a| a == addr) else {
            // Nobody there: try again later.
            let retry = self.now + self.rng.range(500, 2_000);
            if let Some(s) = self.servers[i].as_mut() {
                s.dialing.insert(addr.to_owned(), retry);
            }
            return;
        };
        let reachable = target != i && self.servers[target].is_some() && !self.is_cut(i, target);
        let Some(s) = self.servers[i].as_mut() else { return };
        if !reachable && target != i {
            let retry = self.now + self.rng.range(200, 1_500);
            if let Some(s) = self.servers[i].as_mut() {
                s.dialing.insert(addr.to_owned(), retry);
            }
            return;
        }
        s.dialing.remove(addr);
        let from = (i, s.epoch);
        let to_epoch = self.servers[target].as_ref().map_or(0, |t| t.epoch);
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, Conn { ends: [from, (target, to_epoch)], up: true, bulk_in_flight: [0, 0] });
        let at = self.now + HANDSHAKE_MS;
        self.push(at, from, Wire::Connected { conn, dialed: Some(addr.to_owned()) });
        self.push(at, (target, to_epoch), Wire::Connected { conn, dialed: None });
    }

    /// Server `i`'s persistence actor takes `entry` (if it has a data directory).
    fn persist(&mut self, i: usize, key: Bytes, entry: Entry<Bytes>) {
        if let Some(d) = self.disks[i].as_mut() {
            d.settle(self.now.saturating_sub(DISK_LAG_MS));
            d.tail.push_back((self.now, key, entry));
        }
    }

    fn trace(&self, i: usize, what: &str) {
        if self.scenario.trace {
            let node = self.servers.get(i).and_then(Option::as_ref).map_or("-", |s| s.node.as_str());
            eprintln!("{:>7} s{i} {node}: {what}", self.now);
        }
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains_key(&(a.min(b), a.max(b)))
    }

    fn push(&mut self, at: u64, to: (usize, u32), wire: Wire) {
        self.seq += 1;
        self.wire.insert((at, self.seq), InFlight { at, to, wire });
    }

    /// Sends `msg` from server `i` over `conn`, through the faults.
    fn send(&mut self, i: usize, conn: ConnId, mut msg: PeerMsg, bulk: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.up {
            return;
        }
        let Some(end) = c.ends.iter().position(|&(s, _)| s == i) else { return };
        let to = c.ends[1 - end];
        if bulk {
            c.bulk_in_flight[end] += 1;
        }
        if let Some(tamper) = self.tamper {
            tamper(&mut msg);
        }
        let f = self.scenario.faults;
        let faulty = self.faults_on();
        let mut at = self.now + self.rng.range(f.delay_ms.0, f.delay_ms.1);
        if faulty && self.rng.chance(f.reorder) {
            at += self.rng.below(f.reorder_ms + 1);
        }
        if faulty && self.rng.chance(f.drop) {
            if bulk {
                // The window slot frees when the message would have arrived.
                self.push(at, (usize::MAX, 0), Wire::Msg { conn, msg, bulk, from: end });
            }
            return;
        }
        if faulty && self.rng.chance(f.duplicate) {
            let again = at + self.rng.below(50);
            self.push(again, to, Wire::Msg { conn, msg: msg.clone(), bulk: false, from: end });
        }
        self.push(at, to, Wire::Msg { conn, msg, bulk, from: end });
    }

    /// Kills a connection: each end hears of it within `delay` ms (at once for 0).
    fn kill(&mut self, conn: ConnId, max_delay: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.up {
            return;
        }
        c.up = false;
        let ends = c.ends;
        for end in ends {
            let at = self.now + self.rng.below(max_delay + 1);
            self.push(at, end, Wire::Disconnected { conn });
        }
    }

    fn deliver(&mut self, m: InFlight) {
        if self.scenario.trace
            && let Wire::Msg { msg: PeerMsg::Members(list), .. } = &m.wire
            && std::env::var("SIM_MEMBERS").is_ok()
        {
            let names: Vec<String> = list.iter().map(|i| format!("{}:{:?}", i.node, i.state)).collect();
            self.trace(m.to.0, &format!("members {names:?}"));
        }
        if self.scenario.trace
            && let Wire::Msg { msg, conn, .. } = &m.wire
            && let Some(watch) = std::env::var("SIM_WATCH").ok()
            && let PeerMsg::Delta { entries, .. }
            | PeerMsg::SnapshotChunk { entries, .. }
            | PeerMsg::RepairEntries { entries, .. } = msg
            && let Some(e) = entries.get_entry(watch.as_bytes())
        {
            self.trace(m.to.0, &format!("receives {watch}={e:?} on {conn}"));
        }
        let now = match self.servers.get(m.to.0) {
            Some(Some(_)) => self.clock_of(m.to.0),
            _ => Now { wall_ms: 0, mono_ms: self.now },
        };
        if let Wire::Msg { conn, bulk: true, from, .. } = &m.wire
            && let Some(c) = self.conns.get_mut(conn)
        {
            c.bulk_in_flight[*from] = c.bulk_in_flight[*from].saturating_sub(1);
        }
        let (srv, epoch) = m.to;
        if self.servers.get(srv).and_then(Option::as_ref).is_none_or(|s| s.epoch != epoch) {
            // For a process that crashed.
            if let Wire::Msg { msg, .. } = &m.wire
                && srv != usize::MAX
                && carries_entries(msg)
            {
                self.mark_lost();
            }
            return;
        }
        let s = self.servers[srv].as_mut().expect("checked");
        match m.wire {
            Wire::Connected { conn, dialed } => {
                if !self.conns.get(&conn).is_some_and(|c| c.up) {
                    // Died during the handshake: the dialler tries again.
                    if let Some(addr) = dialed {
                        s.dialing.insert(addr, self.now + 500);
                    }
                    return;
                }
                let peer_end = self.conns[&conn].ends.iter().find(|&&(x, _)| x != srv).copied();
                let Some((peer_srv, _)) = peer_end else { return };
                let Some(peer) = self.servers[peer_srv].as_ref().map(|p| p.node.clone()) else { return };
                let s = self.servers[srv].as_mut().expect("checked");
                s.gateway.handle(Event::Connected { conn, peer, dialed }, now);
            }
            Wire::Disconnected { conn } => {
                s.gateway.handle(Event::Disconnected { conn }, now);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.up = false;
                }
            }
            Wire::Msg { conn, msg, .. } => {
                if !self.conns.get(&conn).is_some_and(|c| c.up) {
                    if carries_entries(&msg) {
                        self.mark_lost();
                    }
                    return;
                }
                self.report.messages += 1;
                let event = match msg {
                    PeerMsg::SnapshotChunk { id, entries, total, last } => {
                        Event::Chunk { conn, id, piece: SnapshotPiece::new(entries), total, last }
                    }
                    msg => Event::Message { conn, msg },
                };
                s.gateway.handle(event, now);
            }
        }
    }

    fn client_write(&mut self) {
        let live: Vec<usize> = (0..self.servers.len()).filter(|&i| self.servers[i].is_some()).collect();
        if live.is_empty() {
            return;
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let a = self.rng.below(self.scenario.actors as u64) as usize;
        let key = Bytes::from(format!("k{:03}", self.rng.below(u64::from(self.scenario.keys))));
        let delete = self.rng.chance(self.scenario.delete_ratio);
        let value = (!delete).then(|| Bytes::from(format!("v{}", self.history.len())));
        let now = self.actor_clock(i);
        let at = self.now;
        let s = self.servers[i].as_mut().expect("live");
        let clock = s.gateway.clock();
        if clock.refusal().is_some() {
            // -CLOCKSKEW: the server's clock is too far ahead of the cluster's.
            self.report.refused_skewed += 1;
            return;
        }
        let Ok(ts) = s.actors[a].write(key.clone(), value.clone(), now) else {
            // The key holds a write stamped further ahead than this server's clock may follow:
            // the client is told (an error), not acknowledged.
            self.report.refused_skewed += 1;
            return;
        };
        let guarded = clock.peers_measured > 0 || self.scenario.servers == 1;
        self.persist(i, key.clone(), Entry { ts, value });
        if self.scenario.trace
            && guarded
            && ts.wall_ms.abs_diff(EPOCH_MS + at) > self.scenario.max_clock_offset_ms
        {
            let off = ts.wall_ms as i64 - (EPOCH_MS + at) as i64;
            self.trace(i, &format!("took write {key:?} at {ts}, {off} ms off real time: {clock:?}"));
        }
        self.history.push(Write { key, ts, delete, at, guarded });
    }

    fn partition(&mut self) {
        let n = self.servers.len() as u64;
        if n < 2 {
            return;
        }
        let a = self.rng.below(n) as usize;
        let b = (a + 1 + self.rng.below(n - 1) as usize) % n as usize;
        let until = self.now + self.rng.range(500, 8_000);
        self.cut.insert((a.min(b), a.max(b)), until);
        self.trace(a, &format!("partition from s{b} until {until}"));
        self.report.partitions += 1;
        let doomed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.up && {
                    let (x, y) = (c.ends[0].0, c.ends[1].0);
                    (x, y) == (a, b) || (x, y) == (b, a)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for c in doomed {
            self.kill(c, DETECT_MS);
        }
    }

    fn kill_conn(&mut self) {
        let up: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.up).map(|(id, _)| *id).collect();
        if !up.is_empty() {
            let c = up[self.rng.below(up.len() as u64) as usize];
            self.report.conn_kills += 1;
            self.kill(c, DETECT_MS);
        }
    }

    fn crash(&mut self) {
        let live: Vec<usize> = (0..self.servers.len()).filter(|&i| self.servers[i].is_some()).collect();
        // Keep a majority up: a cluster with every server down has nobody to refill from.
        if live.len() * 2 <= self.servers.len() + 1 {
            return;
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let s = self.servers[i].take().expect("live");
        self.report.crashes += 1;
        // What the process had not yet handed to the OS dies with it.
        if let Some(d) = self.disks[i].as_mut() {
            d.settle(self.now.saturating_sub(DISK_LAG_MS));
            d.tail.clear();
        }
        self.mark_lost();
        // Its connections stay up for what is already on the wire; the other ends notice the
        // crash a while later (messages to the dead process are dropped on arrival).
        for (id, c) in &self.conns {
            if c.up && c.ends.iter().any(|&(srv, _)| srv == i) {
                let other = c.ends.iter().find(|&&(srv, _)| srv != i).copied();
                if let Some(other) = other {
                    let at = self.now + self.rng.below(DETECT_MS + 1);
                    self.seq += 1;
                    let seq = self.seq;
                    self.wire.insert(
                        (at, seq),
                        InFlight { at, to: other, wire: Wire::Disconnected { conn: *id } },
                    );
                }
            }
        }
        self.trace(i, &format!("crash of {}", s.node));
        if self.disks[i].is_none() {
            self.replaced_ids.insert(s.node.clone());
        }
        self.down_until.insert(i, self.now + self.rng.range(500, 5_000));
        let _ = s;
    }

    /// Marks as lost every acknowledged write that no live process or data directory holds
    /// (nor a newer write to its key) and that no message on its way to a live process
    /// carries: the servers that had it crashed without a data directory, or before it reached
    /// their disk. Called when a server crashes and when a message with entries is discarded.
    fn mark_lost(&mut self) {
        for (w, write) in self.history.iter().enumerate() {
            if self.lost.contains(&w) {
                continue;
            }
            let held = self.servers.iter().flatten().any(|o| {
                std::iter::once(o.gateway.replica())
                    .chain(o.actors.iter().map(Replica::map))
                    .any(|m| m.get_entry(&write.key).is_some_and(|e| e.ts >= write.ts))
            });
            // The disks of live servers hold nothing their processes lack.
            let on_disk = self.disks.iter().flatten().any(|d| {
                d.map.get_entry(&write.key).is_some_and(|e| e.ts >= write.ts)
                    || d.tail.iter().any(|(_, k, e)| *k == write.key && e.ts >= write.ts)
            });
            if held || on_disk {
                continue;
            }
            let on_its_way = self.wire.values().any(|m| match &m.wire {
                Wire::Msg { conn, msg, .. } => {
                    self.conns.get(conn).is_some_and(|c| c.up)
                        && self
                            .servers
                            .get(m.to.0)
                            .and_then(Option::as_ref)
                            .is_some_and(|s| s.epoch == m.to.1)
                        && carries(msg, &write.key, write.ts)
                }
                _ => false,
            });
            if !on_its_way {
                self.lost.insert(w);
            }
        }
    }

    fn restart(&mut self, i: usize) {
        self.down_until.remove(&i);
        if let Some(d) = &self.disks[i] {
            self.report.recoveries += 1;
            self.report.recovered_entries += d.map.entry_count() as u64;
        }
        let s = self.start(i);
        self.servers[i] = Some(s);
        self.trace(i, "restarted");
    }

    fn check(&mut self) -> Result<(), String> {
        let live: Vec<&Server> = self.servers.iter().flatten().collect();
        if live.len() != self.servers.len() {
            return Err("a server is still down after healing".into());
        }
        let reference = live[0].gateway.replica().clone();
        for s in &live {
            for (who, map) in std::iter::once(("gateway".to_string(), s.gateway.replica()))
                .chain(s.actors.iter().enumerate().map(|(a, r)| (format!("actor {a}"), r.map())))
            {
                if *map != reference {
                    if self.scenario.trace {
                        let odd = reference
                            .entries()
                            .filter(|(k, e)| map.get_entry(*k) != Some(*e))
                            .chain(map.entries().filter(|(k, _)| reference.get_entry(*k).is_none()));
                        for (k, _) in odd.take(1) {
                            for o in &live {
                                eprintln!("{}: {}", o.node, o.gateway.explain_gc(k, self.clock_of(0)));
                            }
                        }
                    }
                    let diff = differences(&reference, map);
                    return Err(format!(
                        "{} {who} differs from {} gateway after the quiet phase: {diff}",
                        s.node, live[0].node
                    ));
                }
            }
            if s.gateway.loading() {
                return Err(format!("{} is still loading", s.node));
            }
            let view = s.gateway.members();
            for o in &live {
                if o.node == s.node {
                    continue;
                }
                let status = view.iter().find(|v| v.node == o.node).map(|v| v.status);
                if status != Some(MemberStatus::Connected) {
                    return Err(format!("{} sees {} as {status:?}, not connected", s.node, o.node));
                }
            }
            for v in &view {
                if self.replaced_ids.contains(&v.node) && v.status != MemberStatus::Replaced {
                    return Err(format!(
                        "{} sees the crashed {} as {:?}, not replaced",
                        s.node, v.node, v.status
                    ));
                }
            }
        }
        self.check_writes(&reference)?;
        // With a grace well within the quiet phase, every tombstone is gone by its end.
        let collects = self.scenario.tombstone_grace_ms < self.scenario.quiet_ms / 2;
        for s in live.iter().filter(|_| collects) {
            for (who, map) in std::iter::once(("gateway".to_string(), s.gateway.replica()))
                .chain(s.actors.iter().enumerate().map(|(a, r)| (format!("actor {a}"), r.map())))
            {
                if map.tombstones() > 0 {
                    return Err(format!(
                        "{} {who} still holds {} tombstones after the quiet phase",
                        s.node,
                        map.tombstones()
                    ));
                }
            }
        }
        self.report.writes = self.history.len();
        self.report.lost_with_crash = self.lost.len();
        for s in &live {
            let st = s.gateway.stats();
            self.report.repair_rounds += st.repair_rounds;
            self.report.repair_entries += st.repair_entries_received;
            self.report.entries_future += st.entries_future;
            self.report.tombstones_collected += st.tombstones_collected;
        }
        Ok(())
    }

    /// The Jepsen set check, key by key, and the clock check.
    ///
    /// Every acknowledged write (not lost with a crashed server) is visible or overwritten by
    /// a later one: the final entry of its key is at least as new, or, for a key no replica
    /// holds any more, the newest write of the key was a delete (its tombstone was collected;
    /// an older value that came back would be a resurrection).
    ///
    /// And no write accepted while its server's clock was checked against its peers' wins
    /// over a write accepted more than the bound (plus two network delays) later in real time:
    /// a server far ahead refuses writes, and a server behind moves its clock up.
    fn check_writes(&self, reference: &BytesMap) -> Result<(), String> {
        let mut by_key: BTreeMap<&Bytes, Vec<&Write>> = BTreeMap::new();
        for (w, write) in self.history.iter().enumerate() {
            if !self.lost.contains(&w) {
                by_key.entry(&write.key).or_default().push(write);
            }
        }
        let slack = self.scenario.max_clock_offset_ms + 2 * self.scenario.faults.delay_ms.1;
        for (key, writes) in by_key {
            let newest = writes.iter().max_by_key(|w| w.ts).expect("at least one write");
            let final_ts = match reference.get_entry(key) {
                Some(e) if e.ts >= newest.ts => e.ts,
                None if newest.delete => newest.ts,
                other => {
                    return Err(format!(
                        "acknowledged write to {key:?} at {} (real time {} ms, delete: {}) is neither visible nor \
                         overwritten: the replicas hold {other:?}",
                        newest.ts, newest.at, newest.delete
                    ));
                }
            };
            // The write that won, if a client's (an entry can only come from one).
            let Some(winner) = self.history.iter().find(|w| w.key == *key && w.ts == final_ts) else {
                continue;
            };
            if !winner.guarded {
                continue;
            }
            if let Some(later) = writes.iter().find(|w| w.guarded && w.at > winner.at + slack) {
                return Err(format!(
                    "{key:?}: the write at real time {} ms ({}) wins over one acknowledged {} ms later ({})",
                    winner.at,
                    winner.ts,
                    later.at - winner.at,
                    later.ts
                ));
            }
        }
        Ok(())
    }
}

/// Hands `msg` to a gateway holding some data, from a live peer, then lets it do everything it
/// wants to (for the `peer_frame` fuzz target: nothing a peer sends may panic a gateway).
pub fn feed_gateway(msg: PeerMsg) {
    let mut data = BytesMap::new();
    for i in 0..20u64 {
        data.put(
            Bytes::from(format!("k{i:02}")),
            Bytes::from_static(b"v"),
            Timestamp::new(EPOCH_MS + i, 0, 1),
        );
    }
    let config = GatewayConfig {
        max_clock_offset_ms: crate::gateway::DEFAULT_MAX_CLOCK_OFFSET_MS,
        tombstone_grace_ms: 1_000,
        node: "aa".into(),
        advertised: "10.0.0.1:6000".into(),
        actors: 2,
        incarnation: 1,
        started_ms: EPOCH_MS,
        digest_key: *b"simulation-key!!",
        joins: Vec::new(),
        redial_newer_ms: Some(crate::gateway::DEFAULT_REDIAL_NEWER_MS),
        pending_limit: crate::gateway::MAX_PENDING_WHILE_DOWN,
    };
    let mut now = Now { wall_ms: EPOCH_MS, mono_ms: 0 };
    let mut g = Gateway::new(config, data, now);
    g.handle(Event::Connected { conn: 1, peer: "bb".into(), dialed: None }, now);
    let hello = crate::peer::Hello {
        version: crate::peer::PROTOCOL_VERSION,
        node: "bb".into(),
        peer: "10.0.0.2:6000".into(),
        incarnation: 2,
        started_ms: EPOCH_MS + 10,
        root: crate::peer::Fingerprint::default(),
        entries: 5,
    };
    g.handle(Event::Message { conn: 1, msg: PeerMsg::Hello(hello) }, now);
    let event = match msg {
        PeerMsg::SnapshotChunk { id, entries, total, last } => {
            Event::Chunk { conn: 1, id, piece: SnapshotPiece::new(entries), total, last }
        }
        msg => Event::Message { conn: 1, msg },
    };
    g.handle(event, now);
    for step in 0..50 {
        now.mono_ms = step * 1_000;
        if step == 25 {
            // Bring the peer's agreements to bear on collection.
            g.handle(
                Event::Message {
                    conn: 1,
                    msg: PeerMsg::Ack { ack: crate::peer::Ack::default(), root: g.root().into() },
                },
                now,
            );
        }
        now.wall_ms = EPOCH_MS + now.mono_ms;
        while g.poll_transmit(now).is_some() {}
        while g.wants_bulk(1) {
            if g.poll_bulk(1, now, |_| Ok::<(), ()>(())).is_err() {
                break;
            }
        }
    }
}

/// Whether `msg` carries entries.
fn carries_entries(msg: &PeerMsg) -> bool {
    matches!(msg, PeerMsg::Delta { .. } | PeerMsg::SnapshotChunk { .. } | PeerMsg::RepairEntries { .. })
}

/// Whether `msg` carries `key` at `ts` or later.
fn carries(msg: &PeerMsg, key: &Bytes, ts: Timestamp) -> bool {
    let entries = match msg {
        PeerMsg::Delta { entries, .. }
        | PeerMsg::SnapshotChunk { entries, .. }
        | PeerMsg::RepairEntries { entries, .. } => entries,
        _ => return false,
    };
    entries.get_entry(key).is_some_and(|e: &Entry<Bytes>| e.ts >= ts)
}

/// A short account of how two maps differ.
fn differences(a: &BytesMap, b: &BytesMap) -> String {
    let mut out = Vec::new();
    for (k, e) in a.entries() {
        if b.get_entry(k) != Some(e) {
            out.push(format!("{k:?}: {:?} vs {:?}", e, b.get_entry(k)));
        }
    }
    for (k, e) in b.entries() {
        if a.get_entry(k).is_none() {
            out.push(format!("{k:?}: missing vs {e:?}"));
        }
    }
    let n = out.len();
    out.truncate(5);
    format!("{n} keys differ, e.g. {}", out.join("; "))
}
