//! The gateway's driver: the QUIC endpoint, the connection and dial tasks, and the loop that
//! feeds the [`Gateway`] state machine and carries out what it asks for.
//!
//! Runs on its own thread with a `current_thread` tokio runtime. One task owns the gateway
//! state; connection tasks ([`super::peer_conn`]) only move frames, dial tasks only dial. Every
//! decision (who to dial, which connection to keep, when to send, what to repair, what to log)
//! is the machine's; this loop only turns its [`Transmit`]s into IO and its notices into log
//! lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_quic::{Backoff, CloseReason, ConnectError, EncodedFrames, PeerEndpoint};
use tokio::sync::{Notify, mpsc};

use replica_core::gateway::{CloseWhy, ConnId, Event, Gateway, Notice, Transmit};
use replica_core::peer::{CHUNK_BYTES, MAX_FRAME};
use replica_core::stats::GatewayStats;

use super::mailbox::{Address, Empty, Mailbox, Wake};
use super::peer_conn::{self, ConnEvent, ConnHandle};
use super::{ActorMsg, AdminMsg, Clock};
use crate::stats::NodeStats;

/// How long a stopping gateway waits for peers to acknowledge what it sent last.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Dials of one address start at least this far apart, so a peer that accepts and then closes
/// at once (a refused member, a connection to this node itself) is not dialled in a tight loop.
const MIN_REDIAL: Duration = Duration::from_secs(1);

/// A failing dial is logged as a warning at its first failure, when the reason changes, and
/// at least this often while it keeps failing (otherwise at debug level).
const DIAL_WARN_EVERY: Duration = Duration::from_secs(30);

/// Wakes the gateway task when an actor sends it mail.
#[derive(Debug)]
pub(crate) struct TokioWake(pub Arc<Notify>);

impl Wake for TokioWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Everything the gateway thread starts with.
#[derive(Debug)]
pub(crate) struct GatewayStart {
    pub runtime: tokio::runtime::Runtime,
    pub endpoint: Arc<PeerEndpoint>,
    pub gateway: Gateway,
    /// The actors' deltas.
    pub mailbox: Mailbox<ActorMsg>,
    /// Operators' requests (`CLUSTER FORGET`).
    pub admin: Mailbox<AdminMsg>,
    /// Signalled when either mailbox has mail.
    pub mail: Arc<Notify>,
    pub actors: Vec<Address<ActorMsg>>,
    pub clock: Clock,
    pub stats: Arc<NodeStats>,
    pub progress: bool,
}

/// Runs the gateway until its mailbox closes: every actor has exited after sending its last
/// delta (the node wakes the gateway through `mail` once they have).
pub(crate) fn run(start: GatewayStart) {
    let GatewayStart { runtime, endpoint, gateway, mailbox, admin, mail, actors, clock, stats, progress } =
        start;
    runtime.block_on(async move {
        let (events, events_rx) = mpsc::unbounded_channel();
        {
            let endpoint = endpoint.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(result) = endpoint.accept().await {
                    match result {
                        Ok(conn) => {
                            let _ = events.send(ConnEvent::Up { conn, dialed: None });
                        }
                        Err(e) => tracing::warn!("refused a peer connection: {e}"),
                    }
                }
            });
        }
        // Always watched (a log line ends every fill); drawn only on a terminal.
        let progress = tokio::spawn(super::progress::watch(stats.clone(), progress));
        let mut driver = Driver {
            gateway,
            endpoint: endpoint.clone(),
            events,
            conns: HashMap::new(),
            dials: HashMap::new(),
            room: Arc::new(Notify::new()),
            actors,
            clock,
            stats,
            published: GatewayStats::default(),
        };
        driver.run(events_rx, &mailbox, &admin, &mail).await;
        progress.abort();
        driver.finish().await;
    });
}

/// A dial in progress, and when the last one to the same address started.
#[derive(Debug)]
struct Dial {
    task: Option<tokio::task::JoinHandle<()>>,
    last_start: Option<Instant>,
}

struct Driver {
    gateway: Gateway,
    endpoint: Arc<PeerEndpoint>,
    events: mpsc::UnboundedSender<ConnEvent>,
    conns: HashMap<ConnId, ConnHandle>,
    dials: HashMap<String, Dial>,
    /// Signalled by bulk writers when they take a frame (room for the next one).
    room: Arc<Notify>,
    actors: Vec<Address<ActorMsg>>,
    clock: Clock,
    stats: Arc<NodeStats>,
    /// The gateway's counters as last published to `stats`.
    published: GatewayStats,
}

impl Driver {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<ConnEvent>,
        mailbox: &Mailbox<ActorMsg>,
        admin: &Mailbox<AdminMsg>,
        mail: &Notify,
    ) {
        loop {
            self.transmit();
            if self.pump_bulk() {
                // More bulk data is wanted: only let the connection tasks run, then take
                // whatever arrived meanwhile before encoding the next frame.
                tokio::task::yield_now().await;
            } else {
                let now = self.clock.now().mono_ms;
                let wait =
                    self.gateway.poll_timeout().map(|at| Duration::from_millis(at.saturating_sub(now)));
                let room = self.room.clone();
                tokio::select! {
                    () = mail.notified() => {}
                    Some(event) = events.recv() => self.on_event(event),
                    () = sleep_opt(wait) => {}
                    () = room.notified() => {}
                }
            }
            while let Ok(event) = events.try_recv() {
                self.on_event(event);
            }
            self.drain_admin(admin);
            if self.drain_mail(mailbox) == Empty::Closed {
                return;
            }
        }
    }

    /// Merges every delta waiting; says whether the mailbox is merely empty or closed (every
    /// actor has exited, after sending its last delta).
    fn drain_mail(&mut self, mailbox: &Mailbox<ActorMsg>) -> Empty {
        mailbox.begin_drain();
        loop {
            match mailbox.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    self.gateway.handle(Event::Local(batch.delta), self.clock.now());
                }
                // Only the gateway sends these; connections are the actors' business.
                Ok(ActorMsg::Collect(_) | ActorMsg::KillClient(_)) => {}
                Err(why) => return why,
            }
        }
    }

    fn drain_admin(&mut self, admin: &Mailbox<AdminMsg>) {
        admin.begin_drain();
        while let Ok(AdminMsg::Forget(node)) = admin.try_recv() {
            self.gateway.handle(Event::Forget(node), self.clock.now());
        }
    }

    fn on_event(&mut self, event: ConnEvent) {
        let now = self.clock.now();
        match event {
            ConnEvent::Up { conn, dialed } => {
                let id = peer_conn::conn_id(&conn);
                let peer = conn.peer_node_id().to_owned();
                let handle =
                    peer_conn::spawn(conn, self.events.clone(), self.stats.clone(), self.room.clone());
                self.conns.insert(id, handle);
                if let Some(addr) = &dialed
                    && let Some(d) = self.dials.get_mut(addr)
                {
                    d.task = None;
                }
                self.gateway.handle(Event::Connected { conn: id, peer, dialed }, now);
            }
            ConnEvent::Msg { conn, msg } => self.gateway.handle(Event::Message { conn, msg }, now),
            ConnEvent::Chunk { conn, id, piece, total, last } => {
                self.gateway.handle(Event::Chunk { conn, id, piece, total, last }, now);
            }
            ConnEvent::Down { conn, why } => {
                if let Some(h) = self.conns.remove(&conn) {
                    tracing::debug!(peer = %h.conn.peer_node_id(), "connection closed: {why}");
                }
                self.gateway.handle(Event::Disconnected { conn }, now);
            }
        }
    }

    /// Carries out everything the gateway asks for now, and publishes its counters.
    fn transmit(&mut self) {
        let now = self.clock.now();
        while let Some(t) = self.gateway.poll_transmit(now) {
            match t {
                Transmit::Send { conn, msg } => {
                    if let Some(h) = self.conns.get(&conn) {
                        h.send(msg);
                    }
                }
                Transmit::Close { conn, why } => {
                    if let Some(h) = self.conns.get(&conn) {
                        h.conn.close(close_reason(why));
                    }
                }
                Transmit::Dial { addr } => self.dial(addr),
                Transmit::StopDial { addr } => {
                    if let Some(task) = self.dials.get_mut(&addr).and_then(|d| d.task.take()) {
                        task.abort();
                    }
                }
                Transmit::FanOut(batch) => {
                    for a in &self.actors {
                        let _ = a.send(ActorMsg::Sync(batch.clone()));
                    }
                }
                Transmit::Collect(tombstones) => {
                    tracing::debug!(count = tombstones.len(), "collecting tombstones every server holds");
                    for a in &self.actors {
                        let _ = a.send(ActorMsg::Collect(tombstones.clone()));
                    }
                }
                Transmit::Notice(notice) => log(&notice),
            }
        }
        self.stats.publish_gateway(&mut self.published, self.gateway.stats());
        self.stats.publish_members(self.gateway.members());
    }

    /// Encodes the next bulk frame of every connection that wants one and has room for it.
    /// Returns whether some connection wants more (and had room).
    fn pump_bulk(&mut self) -> bool {
        let now = self.clock.now();
        let mut more = false;
        for (&id, h) in &self.conns {
            if !self.gateway.wants_bulk(id) {
                continue;
            }
            let Ok(permit) = h.bulk.try_reserve() else { continue };
            // A frame is at most CHUNK_BYTES of entries (or one larger entry) plus framing.
            let mut frames = EncodedFrames::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
            let encoded = self.gateway.poll_bulk(id, now, |m| frames.push(&m, MAX_FRAME).map(drop));
            match encoded {
                Ok(Some(_)) => {
                    permit.send(frames);
                    more |= self.gateway.wants_bulk(id);
                }
                Ok(None) => {}
                Err(e) => {
                    // Keys and values are bounded well below the frame limit: unreachable.
                    tracing::error!(peer = %h.conn.peer_node_id(), "cannot encode a bulk frame: {e}");
                    h.conn.close(CloseReason::Protocol);
                }
            }
        }
        more
    }

    /// Starts dialling `addr` (whichever node of the cluster answers there).
    fn dial(&mut self, addr: String) {
        let d = self.dials.entry(addr.clone()).or_insert(Dial { task: None, last_start: None });
        if d.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let wait = d.last_start.map_or(Duration::ZERO, |t| MIN_REDIAL.saturating_sub(t.elapsed()));
        d.last_start = Some(Instant::now() + wait);
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
        let seed = self.clock.now().wall_ms ^ addr.len() as u64;
        d.task = Some(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut backoff = Backoff::with_seed(seed);
            let mut complaint = Complaint::default();
            loop {
                let target = match resolve(&addr).await {
                    Ok(target) => target,
                    Err(e) => {
                        complaint.failed(&addr, &e);
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                };
                let on_failure = |e: &ConnectError| complaint.failed(&addr, &e.to_string());
                let dialled = endpoint.connect_with_backoff(
                    target,
                    None,
                    &mut backoff,
                    std::future::pending(),
                    on_failure,
                );
                if let Some(conn) = dialled.await {
                    let _ = events.send(ConnEvent::Up { conn, dialed: Some(addr) });
                    return;
                }
            }
        }));
    }

    /// Sends everything still owed to connected peers, regardless of pacing, then closes the
    /// endpoint gracefully.
    async fn finish(mut self) {
        for t in self.gateway.flush_all(self.clock.now()) {
            if let Transmit::Send { conn, msg } = t
                && let Some(h) = self.conns.get(&conn)
            {
                h.send(msg);
            }
        }
        for d in self.dials.values_mut() {
            if let Some(task) = d.task.take() {
                task.abort();
            }
        }
        // Drop our senders: each control writer then finishes its stream and waits until the
        // peer has acknowledged everything (closing a connection earlier would discard the
        // last writes).
        let mut conns = Vec::new();
        let mut writers = Vec::new();
        for (_, h) in self.conns.drain() {
            let ConnHandle { conn, control_writer, .. } = h;
            conns.push(conn);
            writers.push(control_writer);
        }
        let all_written = async {
            for w in writers {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all_written).await.is_err() {
            tracing::warn!("some peers did not acknowledge the last writes before shutdown");
        }
        for c in conns {
            c.close(CloseReason::Shutdown);
        }
        self.endpoint.close(CloseReason::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Rate-limits the warnings of one failing dial: loud enough that an operator sees a server
/// that cannot be reached or refuses us, and why, without a line per retry.
#[derive(Debug, Default)]
struct Complaint {
    last: Option<(String, Instant)>,
}

impl Complaint {
    fn failed(&mut self, addr: &str, why: &str) {
        let loud = match &self.last {
            None => true,
            Some((last, at)) => last != why || at.elapsed() >= DIAL_WARN_EVERY,
        };
        if loud {
            tracing::warn!(%addr, "cannot connect to a cluster member, retrying: {why}");
            self.last = Some((why.to_owned(), Instant::now()));
        } else {
            tracing::debug!(%addr, "connect failed: {why}");
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let mut found = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    found.next().ok_or_else(|| format!("{addr} resolves to no address"))
}

fn close_reason(why: CloseWhy) -> CloseReason {
    match why {
        CloseWhy::Replaced => CloseReason::Replaced,
        CloseWhy::Protocol => CloseReason::Protocol,
        CloseWhy::Refused => CloseReason::Refused,
        CloseWhy::Loop => CloseReason::Loop,
    }
}

/// The log line of a notice the gateway raised.
fn log(notice: &Notice) {
    match notice {
        Notice::Up { peer, addr } => tracing::info!(%peer, %addr, "connected to peer"),
        Notice::Down { peer } => tracing::info!(%peer, "connection to peer lost"),
        Notice::SelfConnection { addr } => {
            let addr = addr.as_deref().unwrap_or("an accepted connection");
            tracing::warn!(%addr, "this address leads back to this node itself (a --join naming this server?); not dialling it again");
        }
        Notice::WrongClaim { peer, claimed } => {
            tracing::warn!(%peer, %claimed, "a peer claimed another node id than its certificate proves; disconnected");
        }
        Notice::VersionMismatch { peer, version } => {
            tracing::warn!(%peer, version, "peer speaks another protocol version; disconnected")
        }
        Notice::Replaced { old, new } => {
            tracing::warn!(%old, %new, "a server restarted without its data under a new id; the old id is replaced")
        }
        Notice::Forgotten { node } => tracing::warn!(%node, "server removed from the cluster"),
        Notice::RefusedForgotten { peer } => {
            tracing::warn!(%peer, "refused a server that was removed from the cluster (CLUSTER FORGET)")
        }
        Notice::BadMembers { peer } => {
            tracing::warn!(%peer, "peer sent an unusable member list; disconnected")
        }
        Notice::Serving { peer, keys, resumed } => {
            tracing::info!(%peer, keys, resumed, "sending a snapshot")
        }
        Notice::Filling { peer, resumed } => tracing::info!(%peer, resumed, "asking for a snapshot"),
        Notice::FillInterrupted { peer } => {
            tracing::warn!(%peer, "snapshot transfer interrupted; it will resume from another connection")
        }
        Notice::Filled { peer, entries } => tracing::info!(%peer, entries, "snapshot received"),
        Notice::ClockOffset { peer, offset_ms, bound_ms } => tracing::warn!(
            %peer,
            offset_ms,
            "the peer's clock is {} ms {} ours (the bound is {bound_ms} ms): check NTP on both servers",
            offset_ms.unsigned_abs(),
            if *offset_ms > 0 { "ahead of" } else { "behind" },
        ),
        Notice::FutureEntries { peer, count, ahead_ms } => tracing::warn!(
            %peer,
            count,
            ahead_ms,
            "refused entries stamped too far ahead of this server's clock; they come back through repair once they are not"
        ),
        Notice::Skewed { refusal: Some(why) } => {
            tracing::error!("refusing client writes (-CLOCKSKEW): {why}; check NTP on the servers")
        }
        Notice::Skewed { refusal: None } => {
            tracing::warn!("clock back in line with the cluster: taking writes again")
        }
        Notice::Dropped { peer } => tracing::warn!(
            %peer,
            "server unreachable for long: dropped the writes queued for it; repair will catch it up when it is back"
        ),
    }
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
