//! The gateway's driver: the QUIC endpoint, one connection per remote server, and the loop
//! that feeds the [`Gateway`] state machine and sends what it asks for.
//!
//! Runs on its own thread with a `current_thread` tokio runtime. One task owns the gateway
//! state; connection tasks only move frames between the network and that task. Snapshots are
//! encoded by the gateway task from its replica, a chunk per loop round, and written by a task
//! per transfer; received snapshot chunks are decoded on the runtime's blocking pool, so a
//! joining server's decoding overlaps with its gateway's merging.
//!
//! Who dials: a server started with `--join` descriptions dials each of them (the newer server
//! dials the older, so each pair has one connection) and redials with backoff when a
//! connection drops; the older server only accepts. Peers are identified by their
//! certificate's node id; a second connection from the same peer replaces the first.
//!
//! What a connection loses when it dies (frames written to it that never arrived) is not this
//! driver's concern: it tells the gateway when a connection goes down or is replaced, and the
//! gateway queues every delta the peer did not acknowledge for the next connection. `Hello`,
//! the first frame on every control stream, carries this process's incarnation so the peer
//! reads the sequence numbers and acks that follow against the right run of it.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use net_quic::{Backoff, CloseReason, EncodedFrames, PeerConnection, PeerEndpoint, StreamClass};
use tokio::sync::{Notify, mpsc};

use crate::stats::NodeStats;
use replica_core::gateway::{Gateway, SnapshotPiece};
use replica_core::peer::{CHUNK_BYTES, MAX_FRAME, PROTOCOL_VERSION, PeerMsg, SnapshotChunkRef};
use replica_core::snapshot::SnapshotWalk;
use replica_core::stats::GatewayStats;

use super::mailbox::{Address, Empty, Mailbox, Wake};
use super::{ActorMsg, Clock};

/// How long a stopping gateway waits for peers to acknowledge what it sent last.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Encoded snapshot chunks queued ahead of a snapshot stream's writer: enough to keep the
/// stream busy while the gateway encodes the next one, few enough that a snapshot never sits
/// in memory as a second copy of the replica.
const SNAPSHOT_AHEAD: usize = 2;

/// Wakes the gateway task when an actor sends it mail.
#[derive(Debug)]
pub(crate) struct TokioWake(pub Arc<Notify>);

impl Wake for TokioWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// A remote server to dial: its node id and peer address.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    /// Node id (checked against its certificate).
    pub node: String,
    /// Peer (QUIC) address, possibly a relay.
    pub addr: SocketAddr,
}

/// Everything the gateway thread starts with.
#[derive(Debug)]
pub(crate) struct GatewayStart {
    pub runtime: tokio::runtime::Runtime,
    pub endpoint: Arc<PeerEndpoint>,
    pub gateway: Gateway,
    pub mailbox: Mailbox<ActorMsg>,
    pub mail: Arc<Notify>,
    pub actors: Vec<Address<ActorMsg>>,
    pub joins: Vec<JoinTarget>,
    pub clock: Clock,
    pub stats: Arc<NodeStats>,
    pub advertised: String,
    pub progress: bool,
}

/// What connection tasks tell the gateway task.
enum Event {
    Up {
        peer: String,
        conn: PeerConnection,
        out: mpsc::UnboundedSender<PeerMsg>,
        writer: tokio::task::JoinHandle<()>,
        dialed: bool,
    },
    Msg {
        peer: String,
        conn: usize,
        msg: PeerMsg,
    },
    /// A snapshot chunk, prepared for the gateway where it was decoded.
    Chunk {
        peer: String,
        conn: usize,
        piece: SnapshotPiece,
        total: u64,
        last: bool,
    },
    Down {
        peer: String,
        conn: usize,
    },
}

struct Live {
    conn: PeerConnection,
    out: mpsc::UnboundedSender<PeerMsg>,
    /// Ends once everything sent to `out` is written and acknowledged (or the link failed).
    writer: tokio::task::JoinHandle<()>,
}

/// A snapshot being streamed to a peer: the gateway task encodes it chunk by chunk from its
/// replica; a writer task owns the low-priority stream.
struct Outgoing {
    peer: String,
    conn: usize,
    walk: SnapshotWalk,
    /// To the writer; bounded, so encoding runs at most [`SNAPSHOT_AHEAD`] chunks ahead of
    /// the network.
    chunks: mpsc::Sender<EncodedFrames>,
}

/// Runs the gateway until its mailbox closes: every actor has exited after sending its last
/// delta (the node wakes the gateway through `mail` once they have).
pub(crate) fn run(start: GatewayStart) {
    let GatewayStart {
        runtime,
        endpoint,
        gateway,
        mailbox,
        mail,
        actors,
        joins,
        clock,
        stats,
        advertised,
        progress,
    } = start;
    runtime.block_on(async move {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // Accept incoming connections.
        {
            let endpoint = endpoint.clone();
            let events = events_tx.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                while let Some(result) = endpoint.accept().await {
                    match result {
                        Ok(conn) => spawn_connection(conn, false, events.clone(), stats.clone()),
                        Err(e) => tracing::warn!("refused a peer connection: {e}"),
                    }
                }
            });
        }
        // Dial the servers we join, and keep redialling when a connection drops.
        let mut dialers = Vec::new();
        for target in &joins {
            let endpoint = endpoint.clone();
            let events = events_tx.clone();
            let stats = stats.clone();
            let target = target.clone();
            // Aborted when the gateway stops.
            dialers.push(tokio::spawn(async move {
                let mut backoff = Backoff::with_seed(clock.now().wall_ms);
                loop {
                    let Some(conn) = endpoint
                        .connect_with_backoff(target.addr, &target.node, &mut backoff, std::future::pending())
                        .await
                    else {
                        return;
                    };
                    tracing::info!(peer = %target.node, addr = %target.addr, "connected to peer");
                    let closed = conn.clone();
                    spawn_connection(conn, true, events.clone(), stats.clone());
                    let reason = closed.closed().await;
                    tracing::info!(peer = %target.node, "connection lost: {reason}");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }));
        }
        let mut core = Core {
            gateway,
            actors,
            live: HashMap::new(),
            snapshot_asked: HashSet::new(),
            outgoing: Vec::new(),
            room: Arc::new(Notify::new()),
            clock,
            stats,
            published: GatewayStats::default(),
            advertised,
            progress: progress.then(new_progress_bar),
        };
        for target in &joins {
            core.gateway.expect(&target.node);
        }
        core.run(events_rx, &mailbox, &mail).await;
        for d in dialers {
            d.abort();
        }
        core.finish(&endpoint).await;
    });
}

fn new_progress_bar() -> ProgressBar {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("joining {bar:40.cyan/blue} {pos}/{len} keys ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

struct Core {
    gateway: Gateway,
    actors: Vec<Address<ActorMsg>>,
    live: HashMap<String, Live>,
    snapshot_asked: HashSet<String>,
    outgoing: Vec<Outgoing>,
    /// Signalled by snapshot writers when they take a chunk (room for the next one).
    room: Arc<Notify>,
    clock: Clock,
    stats: Arc<NodeStats>,
    /// The gateway's counters as last published to `stats`.
    published: GatewayStats,
    advertised: String,
    progress: Option<ProgressBar>,
}

impl Core {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mailbox: &Mailbox<ActorMsg>,
        mail: &Notify,
    ) {
        loop {
            let now = self.clock.now().mono_ms;
            let due = self.gateway.next_due().into_iter().chain(self.gateway.held_due()).min();
            let wait = due.map(|at| Duration::from_millis(at.saturating_sub(now)));
            if self.snapshot_has_room() {
                // Another chunk is wanted: only let the connection tasks run, then take
                // whatever arrived meanwhile before encoding it.
                tokio::task::yield_now().await;
            } else {
                let room = self.room.clone();
                tokio::select! {
                    () = mail.notified() => {}
                    Some(event) = events.recv() => self.handle(event),
                    () = sleep_opt(wait) => {}
                    () = room.notified() => {}
                }
            }
            while let Ok(event) = events.try_recv() {
                self.handle(event);
            }
            if self.drain_mail(mailbox) == Empty::Closed {
                return;
            }
            let now = self.clock.now().mono_ms;
            self.gateway.poll_held(now);
            self.flush(now);
            self.stream_snapshots();
            self.stats.publish_gateway(&mut self.published, self.gateway.stats());
        }
    }

    fn snapshot_has_room(&self) -> bool {
        self.outgoing.iter().any(|o| o.chunks.capacity() > 0)
    }

    /// Encodes one chunk for every snapshot whose writer has room for it. One chunk per
    /// round keeps the rest of the loop (deltas, fan-out) within a chunk's encoding time.
    fn stream_snapshots(&mut self) {
        let replica = self.gateway.replica();
        self.outgoing.retain_mut(|o| {
            let permit = match o.chunks.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => return true,
                // The writer stopped: the stream failed (it logged why).
                Err(mpsc::error::TrySendError::Closed(())) => return false,
            };
            // A chunk is at most CHUNK_BYTES of entries (or one larger entry) plus framing.
            let mut frames = EncodedFrames::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
            let encode = |chunk: SnapshotChunkRef<'_>| frames.push(&chunk, MAX_FRAME).map(drop);
            if let Err(e) = o.walk.next_chunk(replica, CHUNK_BYTES, encode) {
                tracing::warn!(peer = %o.peer, "cannot encode a snapshot chunk, transfer abandoned: {e}");
                return false;
            }
            permit.send(frames);
            // Done: dropping the sender lets the writer finish the stream.
            !o.walk.is_done()
        });
    }

    /// Merges every delta waiting; says whether the mailbox is merely empty or closed (every
    /// actor has exited, after sending its last delta).
    fn drain_mail(&mut self, mailbox: &Mailbox<ActorMsg>) -> Empty {
        mailbox.begin_drain();
        loop {
            match mailbox.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    self.gateway.on_local(&batch.delta);
                }
                Err(why) => return why,
            }
        }
    }

    fn flush(&mut self, now: u64) {
        let peers: Vec<String> = self.live.keys().cloned().collect();
        for peer in peers {
            let out = &self.live[&peer].out;
            for msg in self.gateway.poll_peer(&peer, now) {
                // A closed writer means the connection is going down; its Down event follows,
                // and the gateway sends the unacknowledged deltas again on the next connection.
                let _ = out.send(msg);
            }
        }
        if let Some(batch) = self.gateway.poll_fanout(now) {
            for a in &self.actors {
                let _ = a.send(ActorMsg::Sync(batch.clone()));
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Up { peer, conn, out, writer, dialed } => {
                if let Some(old) = self.live.remove(&peer) {
                    tracing::info!(%peer, "a new connection replaces the old one");
                    old.conn.close(CloseReason::Replaced);
                    let old_id = old.conn.stable_id();
                    self.outgoing.retain(|o| o.conn != old_id);
                    self.gateway.release_held();
                }
                // First on the stream, so the peer knows our incarnation before any delta.
                let _ = out.send(PeerMsg::Hello {
                    version: PROTOCOL_VERSION,
                    peer: self.advertised.clone(),
                    incarnation: self.gateway.incarnation(),
                });
                if dialed && self.snapshot_asked.insert(peer.clone()) {
                    let _ = out.send(PeerMsg::SnapshotRequest);
                }
                self.gateway.connected(&peer);
                self.live.insert(peer, Live { conn, out, writer });
            }
            Event::Down { peer, conn } => {
                self.outgoing.retain(|o| o.conn != conn);
                if self.live.get(&peer).is_some_and(|l| l.conn.stable_id() == conn) {
                    self.live.remove(&peer);
                    self.gateway.disconnected(&peer);
                    // A snapshot it was sending us ends here: what arrived goes to the actors.
                    self.gateway.release_held();
                }
            }
            Event::Msg { peer, conn, msg } => {
                if self.live.get(&peer).is_none_or(|l| l.conn.stable_id() != conn) {
                    return; // from a replaced connection
                }
                self.on_message(&peer, msg);
            }
            Event::Chunk { peer, conn, piece, total, last } => {
                if self.live.get(&peer).is_none_or(|l| l.conn.stable_id() != conn) {
                    return;
                }
                self.on_chunk(&peer, piece, total, last);
            }
        }
    }

    fn on_message(&mut self, peer: &str, msg: PeerMsg) {
        match msg {
            PeerMsg::Hello { version, peer: addr, incarnation } => {
                if version != PROTOCOL_VERSION {
                    tracing::warn!(%peer, version, "peer speaks another protocol version; disconnecting");
                    if let Some(l) = self.live.get(peer) {
                        l.conn.close(CloseReason::Protocol);
                    }
                } else {
                    tracing::debug!(%peer, %addr, incarnation, "peer hello");
                    self.gateway.on_hello(peer, incarnation);
                }
            }
            PeerMsg::Delta { seq, ack, entries } => {
                self.gateway.on_peer_delta(peer, seq, ack, &entries, self.clock.now().mono_ms);
            }
            PeerMsg::Ack(ack) => self.gateway.on_ack(peer, ack),
            PeerMsg::SnapshotRequest => {
                if let Some(l) = self.live.get(peer) {
                    let walk = SnapshotWalk::new(self.gateway.replica());
                    tracing::info!(%peer, keys = walk.total(), "sending a snapshot");
                    let (chunks, rx) = mpsc::channel(SNAPSHOT_AHEAD);
                    tokio::spawn(write_snapshot(
                        l.conn.clone(),
                        rx,
                        walk.total(),
                        self.room.clone(),
                        self.stats.clone(),
                    ));
                    self.outgoing.push(Outgoing {
                        peer: peer.to_owned(),
                        conn: l.conn.stable_id(),
                        walk,
                        chunks,
                    });
                }
            }
            // Chunks come on the bulk stream as `Event::Chunk`; a peer may still send one here.
            PeerMsg::SnapshotChunk { entries, total, last } => {
                self.on_chunk(peer, SnapshotPiece::new(entries), total, last);
            }
        }
    }

    fn on_chunk(&mut self, peer: &str, piece: SnapshotPiece, total: u64, last: bool) {
        let n = piece.entry_count() as u64;
        self.gateway.on_snapshot_chunk(piece, last, self.clock.now().mono_ms);
        if let Some(bar) = &self.progress {
            if bar.is_hidden() && std::io::stderr().is_terminal() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_length(total);
            bar.inc(n);
            if last {
                bar.finish_and_clear();
            }
        }
        if last {
            tracing::info!(%peer, keys = total, "snapshot received");
        }
    }

    /// Sends everything still owed to connected peers, regardless of pacing, then closes the
    /// endpoint gracefully.
    async fn finish(mut self, endpoint: &PeerEndpoint) {
        let now = self.clock.now().mono_ms;
        for (peer, live) in &self.live {
            for msg in self.gateway.flush_peer(peer, now) {
                let _ = live.out.send(msg);
            }
        }
        // Drop our senders: each writer then finishes its stream and waits until the peer has
        // acknowledged everything (closing a connection earlier would discard the last writes).
        let mut conns = Vec::new();
        let mut writers = Vec::new();
        for (_, Live { conn, out, writer }) in self.live.drain() {
            drop(out);
            conns.push(conn);
            writers.push(writer);
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
        endpoint.close(CloseReason::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Starts the tasks of one connection: a writer for the control stream and a reader for
/// every stream the peer opens.
fn spawn_connection(
    conn: PeerConnection,
    dialed: bool,
    events: mpsc::UnboundedSender<Event>,
    stats: Arc<NodeStats>,
) {
    let peer = conn.peer_node_id().to_owned();
    let id = conn.stable_id();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<PeerMsg>();
    // Writer.
    let writer = {
        let conn = conn.clone();
        let stats = stats.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let mut sender = match conn.open_stream::<PeerMsg>(StreamClass::Control).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "cannot open the control stream: {e}");
                    return;
                }
            };
            while let Some(msg) = out_rx.recv().await {
                // Send everything already queued in one write.
                let mut batch = vec![msg];
                while let Ok(m) = out_rx.try_recv() {
                    batch.push(m);
                }
                match sender.send_batch(batch.iter()).await {
                    Ok(n) => NodeStats::add(&stats.remote_bytes_sent, n as u64),
                    Err(e) => {
                        tracing::debug!(%peer, "control stream write failed: {e}");
                        return;
                    }
                }
            }
            let _ = sender.finish_and_wait().await;
        })
    };
    // Readers: one per incoming stream (control and bulk).
    {
        let conn = conn.clone();
        let events = events.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            loop {
                let mut receiver = match conn.accept_stream::<PeerMsg>().await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.is_protocol_violation() {
                            tracing::warn!(%peer, "bad stream from peer: {e}");
                            conn.close(CloseReason::Protocol);
                        }
                        break;
                    }
                };
                let events = events.clone();
                let stats = stats.clone();
                let conn = conn.clone();
                let peer = peer.clone();
                // Snapshot chunks (~1 MiB each) are decoded on a blocking-pool thread, so the
                // next chunk decodes while the gateway task merges this one: on a joining
                // server the gateway thread is the bottleneck. Control frames are small and
                // latency-sensitive: decoded here.
                let bulk = receiver.class() == StreamClass::Bulk;
                tokio::spawn(async move {
                    let mut seen = 0;
                    loop {
                        let decoded = match receiver.recv_payload().await {
                            Ok(Some(payload)) => {
                                let total = receiver.bytes_received();
                                NodeStats::add(&stats.remote_bytes_received, total - seen);
                                seen = total;
                                let peer = peer.clone();
                                if bulk {
                                    let prepare = move || {
                                        net_quic::decode_frame::<PeerMsg>(&payload)
                                            .map(|msg| inbound(peer, id, msg))
                                    };
                                    match tokio::task::spawn_blocking(prepare).await {
                                        Ok(decoded) => decoded,
                                        // Only when the runtime shuts down (decoding never panics).
                                        Err(_) => return,
                                    }
                                } else {
                                    net_quic::decode_frame::<PeerMsg>(&payload).map(|msg| Event::Msg {
                                        peer,
                                        conn: id,
                                        msg,
                                    })
                                }
                            }
                            Ok(None) => return,
                            Err(e) => Err(e),
                        };
                        match decoded {
                            Ok(event) => {
                                if events.send(event).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                if e.is_protocol_violation() {
                                    tracing::warn!(%peer, "malformed frame from peer, disconnecting: {e}");
                                    conn.close(CloseReason::Protocol);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
    }
    let _ = events.send(Event::Up { peer: peer.clone(), conn: conn.clone(), out: out_tx, writer, dialed });
    tokio::spawn(async move {
        conn.closed().await;
        let _ = events.send(Event::Down { peer, conn: id });
    });
}

/// The event for a message from the bulk stream. A snapshot chunk also gets its second copy
/// here (see [`SnapshotPiece`]), on the decoding thread rather than the gateway's.
fn inbound(peer: String, conn: usize, msg: PeerMsg) -> Event {
    match msg {
        PeerMsg::SnapshotChunk { entries, total, last } => {
            Event::Chunk { peer, conn, piece: SnapshotPiece::new(entries), total, last }
        }
        msg => Event::Msg { peer, conn, msg },
    }
}

/// Writes the chunks of one snapshot, as the gateway task encodes them, on a new
/// low-priority stream; finishes the stream when the gateway drops its sender after the last.
async fn write_snapshot(
    conn: PeerConnection,
    mut chunks: mpsc::Receiver<EncodedFrames>,
    total: u64,
    room: Arc<Notify>,
    stats: Arc<NodeStats>,
) {
    let peer = conn.peer_node_id().to_owned();
    let mut sender = match conn.open_stream::<PeerMsg>(StreamClass::Bulk).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "cannot open the snapshot stream: {e}");
            return;
        }
    };
    while let Some(frames) = chunks.recv().await {
        room.notify_one();
        match sender.send_encoded(frames).await {
            Ok(n) => NodeStats::add(&stats.remote_bytes_sent, n as u64),
            Err(e) => {
                tracing::warn!(%peer, "snapshot transfer interrupted: {e}");
                return;
            }
        }
    }
    // Also reached when the gateway abandons the transfer (the connection went down).
    match sender.finish_and_wait().await {
        Ok(()) => tracing::info!(%peer, keys = total, "snapshot stream finished"),
        Err(e) => tracing::debug!(%peer, "snapshot stream finish: {e}"),
    }
}
