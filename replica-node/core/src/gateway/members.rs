//! Membership: connections coming and going, `Hello`s and member lists, servers replaced by a
//! restart without their data or forgotten by an operator, and whom to dial.

use std::collections::BTreeSet;

use lww_crdt::Timestamp;

use crate::peer::{Hello, MAX_MEMBERS, MemberInfo, MemberState, PROTOCOL_VERSION, PeerMsg};
use crate::replica::Now;

use super::link::{Deltas, Down, Greeting, Phase};
use super::{ClockView, CloseWhy, ConnId, ConnInfo, Gateway, Measured, Member, Notice, Transmit};

impl Member {
    pub(super) fn new(now: u64) -> Self {
        Member {
            advertised: None,
            dial: None,
            started_ms: 0,
            state: MemberState::Active,
            last_contact: None,
            entries: 0,
            phase: Phase::Down(Down { since: now }),
            deltas: Deltas::default(),
            root_agreeing: None,
            root_ended: None,
            root_durable: 0,
            agreed: Vec::new(),
            collected_for: Vec::new(),
            view: None,
            future: (0, 0),
            future_noticed_at: None,
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.state == MemberState::Active
    }

    /// Resets the link: nothing more is queued or kept for it.
    pub(super) fn drop_link(&mut self) {
        self.phase = Phase::Down(Down { since: 0 });
        self.deltas = Deltas::default();
    }
}

impl Gateway {
    pub(super) fn on_connected(&mut self, conn: ConnId, peer: String, dialed: Option<String>, now: Now) {
        if let Some(addr) = &dialed {
            self.dialing.remove(addr);
        }
        if peer == self.me {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Loop });
            self.out.push_back(Transmit::Notice(Notice::SelfConnection { addr: dialed.clone() }));
            if let Some(addr) = dialed {
                // Any other member dialled here is gone: this node took its address.
                self.replace_dialed_at(&addr, &peer);
                self.self_addrs.insert(addr);
            }
            return;
        }
        let m = self.members.entry(peer.clone()).or_insert_with(|| Member::new(now.mono_ms));
        if m.state == MemberState::Forgotten {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Refused });
            self.out.push_back(Transmit::Notice(Notice::RefusedForgotten { peer }));
            return;
        }
        if m.state == MemberState::Replaced {
            // It is alive after all (its id survived: it has a data directory).
            m.state = MemberState::Active;
            self.members_dirty = true;
        }
        m.last_contact = Some(now.mono_ms);
        self.conns
            .insert(conn, ConnInfo { peer: peer.clone(), dialed: dialed.is_some(), since: now.mono_ms });
        if let Phase::Down(_) = m.phase {
            m.phase = Phase::Greeting(Greeting { conn, dialed: dialed.is_some() });
        }
        // Otherwise a second connection to the same peer: decided when its Hello arrives.
        let root = self.digest.root();
        m.deltas.root_told(root, now.mono_ms);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: self.me.clone(),
            peer: self.advertised.clone(),
            incarnation: self.incarnation,
            started_ms: self.started_ms,
            root: root.into(),
            entries: self.replica.entry_count() as u64,
        };
        self.out.push_back(Transmit::Send { conn, msg: PeerMsg::Hello(hello) });
        if let Some(addr) = dialed {
            m.dial = Some(addr.clone());
            // Another member dialled at this address is gone: this node took its place.
            self.replace_dialed_at(&addr, &peer);
        }
    }

    /// Every active member other than `node` dialled at `addr` and not connected has been
    /// replaced by `node`, which answers there now.
    pub(super) fn replace_dialed_at(&mut self, addr: &str, node: &str) {
        self.replace_where(node, |o| o.dial.as_deref() == Some(addr));
    }

    /// Every active member other than `node`, not connected, for which `stale` holds, is
    /// replaced by `node`.
    fn replace_where(&mut self, node: &str, stale: impl Fn(&Member) -> bool) {
        let replaced: Vec<String> = self
            .members
            .iter()
            .filter(|(id, o)| id.as_str() != node && o.is_active() && o.phase.conn().is_none() && stale(o))
            .map(|(id, _)| id.clone())
            .collect();
        for old in replaced {
            self.replace(&old, node);
        }
    }

    pub(super) fn on_disconnected(&mut self, conn: ConnId, now: Now) {
        let Some(ConnInfo { peer, .. }) = self.conns.remove(&conn) else { return };
        let Some(m) = self.members.get_mut(&peer) else { return };
        if m.phase.conn() != Some(conn) {
            return; // a second connection that was never used
        }
        let was_live = m.phase.live().is_some();
        m.last_contact = Some(now.mono_ms);
        m.phase = Phase::Down(Down { since: now.mono_ms });
        m.deltas.requeue_unacked(&self.replica);
        // A flush cut by the failure: its pieces are good data, and the peer may never send
        // them again (it may be gone for good). Merged below.
        let held = m.deltas.take_held();
        // A second connection to the same peer, still greeting, takes over.
        if let Some((&other, info)) = self.conns.iter().find(|(_, c)| c.peer == peer) {
            m.phase = Phase::Greeting(Greeting { conn: other, dialed: info.dialed });
        }
        if was_live {
            self.out.push_back(Transmit::Notice(Notice::Down { peer: peer.clone() }));
        }
        // A newer process already answered at its address while this connection lingered:
        // the member was replaced.
        let (addr, started) = (m.advertised.clone(), m.started_ms);
        let anonymous = m.phase.conn().is_none() && m.advertised.is_none() && m.dial.is_none();
        let successor = self
            .members
            .iter()
            .find(|(id, o)| {
                **id != peer
                    && o.is_active()
                    && o.phase.live().is_some()
                    && o.advertised.is_some()
                    && o.advertised == addr
                    && o.started_ms > started
            })
            .map(|(id, _)| id.clone());
        if let Some(new) = successor {
            self.replace(&peer, &new);
        } else if anonymous {
            // A node that connected and went before saying who it is or where it can be
            // reached: nothing to keep of it.
            self.members.remove(&peer);
        }
        for piece in held {
            self.merge_from(&peer, &piece, now);
        }
        if self.fill.uses(conn) {
            self.fill.interrupted();
            self.release_held();
            self.out.push_back(Transmit::Notice(Notice::FillInterrupted { peer }));
        }
    }

    /// What this node tells others of the cluster.
    pub(super) fn member_list(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                let peer = m.advertised.clone().or_else(|| m.dial.clone())?;
                Some(MemberInfo { node: id.clone(), peer, started_ms: m.started_ms, state: m.state })
            })
            .collect()
    }

    pub(super) fn on_members(&mut self, conn: ConnId, peer: &str, list: Vec<MemberInfo>, now: Now) {
        if list.len() > MAX_MEMBERS {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Protocol });
            self.out.push_back(Transmit::Notice(Notice::BadMembers { peer: peer.to_owned() }));
            return;
        }
        let view = self.view_fingerprint(peer, list.iter().map(|i| (i.node.as_str(), i.state)));
        if let Some(m) = self.members.get_mut(peer) {
            m.view = Some(view);
        }
        for info in list {
            if info.node == self.me
                || !plausible_id(&info.node)
                || info.peer.is_empty()
                || info.peer.len() > 255
            {
                continue;
            }
            match self.members.get_mut(&info.node) {
                None => {
                    let mut m = Member::new(now.mono_ms);
                    m.started_ms = info.started_ms;
                    m.state = info.state;
                    m.advertised = Some(info.peer.clone());
                    m.dial = Some(info.peer.clone());
                    self.members.insert(info.node.clone(), m);
                    self.members_dirty = true;
                    if info.state == MemberState::Active {
                        self.replace_at(&info.node, &info.peer, info.started_ms);
                    }
                }
                Some(m) => match (m.state, info.state) {
                    (MemberState::Forgotten, _) => {}
                    (_, MemberState::Forgotten) => {
                        self.forget(&info.node);
                    }
                    (MemberState::Active, MemberState::Replaced) if m.phase.conn().is_none() => {
                        m.state = MemberState::Replaced;
                        m.drop_link();
                        self.members_dirty = true;
                    }
                    (MemberState::Active, MemberState::Active) if info.started_ms > m.started_ms => {
                        let dialed_advertised = m.dial == m.advertised;
                        m.started_ms = info.started_ms;
                        m.advertised = Some(info.peer.clone());
                        if m.dial.is_none() || dialed_advertised {
                            m.dial = Some(info.peer.clone());
                        }
                        self.members_dirty = true;
                    }
                    _ => {}
                },
            }
        }
    }

    /// A fingerprint of a view of the membership: `owner` (active) and `others`, in any order.
    pub(super) fn view_fingerprint<'a>(
        &self,
        owner: &'a str,
        others: impl Iterator<Item = (&'a str, MemberState)>,
    ) -> u64 {
        let mut all: Vec<(&str, MemberState)> = others.chain([(owner, MemberState::Active)]).collect();
        all.sort_unstable();
        all.dedup();
        let text: String = all.iter().map(|(id, st)| format!("{id}:{st:?};")).collect();
        self.digest.entry_hash(text.as_bytes(), &lww_crdt::Entry::tombstone(Timestamp::ZERO)) as u64
    }

    /// The fingerprint of this node's view of the membership, as its peers compute it from
    /// what it tells them.
    pub(super) fn own_view(&self) -> u64 {
        let list = self.member_list();
        self.view_fingerprint(&self.me, list.iter().map(|i| (i.node.as_str(), i.state)))
    }

    /// A member newly heard of, started at `started_ms` and advertised at `addr`, replaces any
    /// older member advertised at the same address that is not connected.
    pub(super) fn replace_at(&mut self, node: &str, addr: &str, started_ms: u64) {
        self.replace_where(node, |o| o.advertised.as_deref() == Some(addr) && o.started_ms < started_ms);
    }

    pub(super) fn replace(&mut self, old: &str, new: &str) {
        if let Some(m) = self.members.get_mut(old) {
            m.state = MemberState::Replaced;
            m.drop_link();
            self.members_dirty = true;
            self.out
                .push_back(Transmit::Notice(Notice::Replaced { old: old.to_owned(), new: new.to_owned() }));
        }
    }

    /// Removes `node` from the cluster; false if it is this node or not a member.
    pub fn forget(&mut self, node: &str) -> bool {
        let Some(m) = self.members.get_mut(node) else { return false };
        if m.state == MemberState::Forgotten {
            return false;
        }
        if let Some(conn) = m.phase.conn() {
            self.out.push_back(Transmit::Close { conn, why: CloseWhy::Refused });
        }
        let extra: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.peer == node).map(|(c, _)| *c).collect();
        for c in extra {
            self.conns.remove(&c);
            if Some(c) != m.phase.conn() {
                self.out.push_back(Transmit::Close { conn: c, why: CloseWhy::Refused });
            }
        }
        m.state = MemberState::Forgotten;
        m.drop_link();
        self.members_dirty = true;
        self.out.push_back(Transmit::Notice(Notice::Forgotten { node: node.to_owned() }));
        true
    }

    /// Keeps dials, gossip and counters in step with the state, after every event.
    pub(super) fn update(&mut self, now: Now) {
        let wanted: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(id, m)| m.is_active() && self.should_dial(id, m, now.mono_ms))
            .filter_map(|(_, m)| m.dial.clone())
            .filter(|a| !self.self_addrs.contains(a))
            .collect();
        for addr in wanted.difference(&self.dialing) {
            self.out.push_back(Transmit::Dial { addr: addr.clone() });
        }
        for addr in self.dialing.difference(&wanted) {
            self.out.push_back(Transmit::StopDial { addr: addr.clone() });
        }
        self.dialing = wanted;
        if std::mem::take(&mut self.members_dirty) {
            let list = self.member_list();
            for m in self.members.values() {
                if let Some(l) = m.phase.live() {
                    self.out.push_back(Transmit::Send { conn: l.conn, msg: PeerMsg::Members(list.clone()) });
                }
            }
        }
        let measured: Vec<Measured> =
            self.members.values().filter_map(|m| m.phase.live().and_then(|l| l.clock.measured())).collect();
        let clock = ClockView::from_offsets(measured, self.max_clock_offset_ms);
        if clock.refusal().is_some() != self.clock.refusal().is_some() {
            self.out.push_back(Transmit::Notice(Notice::Skewed { refusal: clock.refusal() }));
        }
        self.clock = clock;
        self.stats.clock = clock;
        self.stats.peers_connected =
            self.members.values().filter(|m| m.phase.live().is_some()).count() as u64;
        self.stats.loading = self.loading();
        self.stats.fill_received = self.fill.received;
        self.stats.fill_total = self.fill.total;
    }

    /// Whether to dial member `id` now: it is not connected, and it started before this node
    /// (the newer of two servers dials), or it has been unreachable for
    /// [`GatewayConfig::redial_newer_ms`](super::GatewayConfig::redial_newer_ms) (a newer member that went away may have come back
    /// under a new id that knows nobody: whoever knows its address must dial it).
    pub(super) fn should_dial(&self, id: &str, m: &Member, now: u64) -> bool {
        let Phase::Down(down) = &m.phase else { return false };
        (m.started_ms, id) < (self.started_ms, self.me.as_str())
            || self.redial_newer_ms.is_some_and(|after| now >= down.since.saturating_add(after))
    }

    /// When a newer member that is down is next due to be dialled (monotonic ms).
    pub(super) fn next_redial(&self) -> Option<u64> {
        let after = self.redial_newer_ms?;
        self.members
            .values()
            .filter(|m| m.is_active() && m.dial.as_ref().is_some_and(|a| !self.dialing.contains(a)))
            .filter_map(|m| match &m.phase {
                Phase::Down(d) => Some(d.since.saturating_add(after)),
                _ => None,
            })
            .min()
    }

    // ---- time ----
}

/// Whether a node id heard from a peer could be one: a DNS label of letters, digits and '-'.
pub(super) fn plausible_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
