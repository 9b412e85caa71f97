//! Servers' lives: starting (with or without a data directory), client writes, crashes, restarts.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use lww_crdt::{BytesMap, Entry, Timestamp};

use super::network::carries;
use super::{DETECT_MS, DISK_LAG_MS, Disk, EPOCH_MS, InFlight, Server, Sim, Wire, Write};
use crate::gateway::{Gateway, GatewayConfig, JoinTarget};
use crate::replica::{Now, Replica};

impl Sim {
    /// Starts server `i`, joining the servers started before it, as their first descriptions
    /// name them: with what its data directory holds, as the node it names, if it has one;
    /// else without data, as a new node.
    pub(super) fn start(&mut self, i: usize) -> Server {
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

    /// Server `i`'s persistence actor takes `entry` (if it has a data directory).
    pub(super) fn persist(&mut self, i: usize, key: Bytes, entry: Entry<Bytes>) {
        if let Some(d) = self.disks[i].as_mut() {
            d.settle(self.now.saturating_sub(DISK_LAG_MS));
            d.tail.push_back((self.now, key, entry));
        }
    }

    pub(super) fn client_write(&mut self) {
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

    pub(super) fn crash(&mut self) {
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
    pub(super) fn mark_lost(&mut self) {
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

    pub(super) fn restart(&mut self, i: usize) {
        self.down_until.remove(&i);
        if let Some(d) = &self.disks[i] {
            self.report.recoveries += 1;
            self.report.recovered_entries += d.map.entry_count() as u64;
        }
        let s = self.start(i);
        self.servers[i] = Some(s);
        self.trace(i, "restarted");
    }
}
