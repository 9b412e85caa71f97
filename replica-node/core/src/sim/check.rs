//! The checks at the end of a run.

use std::collections::BTreeMap;

use bytes::Bytes;
use lww_crdt::BytesMap;

use super::{Server, Sim, Write};
use crate::gateway::MemberStatus;

impl Sim {
    pub(super) fn check(&mut self) -> Result<(), String> {
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
    pub(super) fn check_writes(&self, reference: &BytesMap) -> Result<(), String> {
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
