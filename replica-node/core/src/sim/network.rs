//! The simulated network: dials, messages through the faults, partitions, killed connections.

use bytes::Bytes;
use lww_crdt::{Entry, Timestamp};

use super::{Conn, DETECT_MS, HANDSHAKE_MS, InFlight, Sim, Wire};
use crate::gateway::{ConnId, Event, SnapshotPiece};
use crate::peer::PeerMsg;
use crate::replica::Now;

impl Sim {
    /// One attempt of server `i` to dial `addr`.
    pub(super) fn dial(&mut self, i: usize, addr: &str) {
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

    pub(super) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains_key(&(a.min(b), a.max(b)))
    }

    pub(super) fn push(&mut self, at: u64, to: (usize, u32), wire: Wire) {
        self.seq += 1;
        self.wire.insert((at, self.seq), InFlight { at, to, wire });
    }

    /// Sends `msg` from server `i` over `conn`, through the faults.
    pub(super) fn send(&mut self, i: usize, conn: ConnId, mut msg: PeerMsg, bulk: bool) {
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
    pub(super) fn kill(&mut self, conn: ConnId, max_delay: u64) {
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

    pub(super) fn deliver(&mut self, m: InFlight) {
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

    pub(super) fn partition(&mut self) {
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

    pub(super) fn kill_conn(&mut self) {
        let up: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.up).map(|(id, _)| *id).collect();
        if !up.is_empty() {
            let c = up[self.rng.below(up.len() as u64) as usize];
            self.report.conn_kills += 1;
            self.kill(c, DETECT_MS);
        }
    }
}

/// Whether `msg` carries entries.
pub(super) fn carries_entries(msg: &PeerMsg) -> bool {
    matches!(msg, PeerMsg::Delta { .. } | PeerMsg::SnapshotChunk { .. } | PeerMsg::RepairEntries { .. })
}

/// Whether `msg` carries `key` at `ts` or later.
pub(super) fn carries(msg: &PeerMsg, key: &Bytes, ts: Timestamp) -> bool {
    let entries = match msg {
        PeerMsg::Delta { entries, .. }
        | PeerMsg::SnapshotChunk { entries, .. }
        | PeerMsg::RepairEntries { entries, .. } => entries,
        _ => return false,
    };
    entries.get_entry(key).is_some_and(|e: &Entry<Bytes>| e.ts >= ts)
}
