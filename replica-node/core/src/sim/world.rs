//! The simulation's loop: virtual time, the machines of every server, what their gateways ask for.

use std::collections::{BTreeMap, BTreeSet};

use super::{BULK_WINDOW, Disk, EPOCH_MS, Mail, Report, Rng, Scenario, Sim, Tamper};
use crate::gateway::{CloseWhy, Event, Transmit};
use crate::replica::Now;

impl Sim {
    pub(super) fn new(seed: u64, scenario: Scenario, tamper: Option<Tamper>) -> Self {
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
    pub(super) fn clock_of(&self, i: usize) -> Now {
        let (offset, drift) = self.servers[i].as_ref().map_or((0, 0), |s| (s.offset_ms, s.drift_ppm));
        let wall = EPOCH_MS as i64 + self.now as i64 + offset + self.now as i64 * drift / 1_000_000;
        Now { wall_ms: wall as u64, mono_ms: self.now }
    }

    /// Server `i`'s clocks as its query actors read them: moved up as its peers' clocks say.
    pub(super) fn actor_clock(&self, i: usize) -> Now {
        let mut now = self.clock_of(i);
        if let Some(s) = &self.servers[i] {
            now.wall_ms += s.gateway.clock().correction_ms;
        }
        now
    }

    pub(super) fn run(&mut self) -> Result<(), String> {
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

    pub(super) fn faults_on(&self) -> bool {
        self.now < 200 * self.scenario.servers as u64 + self.scenario.fault_ms
    }

    /// Runs until virtual time `end`.
    pub(super) fn advance_to(&mut self, end: u64) -> Result<(), String> {
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
    pub(super) fn step(&mut self) -> Result<bool, String> {
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

    pub(super) fn next_event(&self) -> u64 {
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
    pub(super) fn run_server(&mut self, i: usize) -> bool {
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
    pub(super) fn act(&mut self, i: usize, t: Transmit) {
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

    pub(super) fn trace(&self, i: usize, what: &str) {
        if self.scenario.trace {
            let node = self.servers.get(i).and_then(Option::as_ref).map_or("-", |s| s.node.as_str());
            eprintln!("{:>7} s{i} {node}: {what}", self.now);
        }
    }
}
