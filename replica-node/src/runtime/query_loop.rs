//! The per-core loop of a query actor: one OS thread that serves the actor's client port and
//! its mailbox, with no lock on the data path.
//!
//! The loop is a thin driver: it moves bytes between sockets and [`ClientConn`]s (which parse
//! and run the commands), delivers mail to the [`Replica`], and sends the deltas the replica
//! asks it to send when they are due.
//!
//! Fairness: the loop works in rounds. A connection with work (readable, writable, or with
//! commands still buffered) gets one turn per round, of at most [`COMMAND_BUDGET`] commands and
//! [`READ_BUDGET`] bytes read; a connection that still has work after its turn goes to the back
//! of the queue. Every round ends with mail delivery and the sync flush. So a client pipelining
//! without pause gets its share, and everyone else, the actor's mail and its sync get theirs:
//! a round costs at most one turn per busy connection.
//!
//! Persistence: with a data directory, the writes of every round go to the persistence actor
//! at the end of the round (or sooner, past [`DURABLE_BATCH`]), unpaced: see
//! `persist_loop` for why that bounds the time an acknowledged write is only in memory.
//!
//! Shutdown: the node drops the sending side of the actor's stop channel and wakes it. The
//! actor then stops accepting and reading, runs the complete commands it has received, hands
//! their replies out within a grace period, sends its last delta, and returns.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::stats::NodeStats;
use replica_core::Now;
use replica_core::stats::SyncStats;
use replica_core::{Replica, SyncBatch};

use super::client_conn::{ClientConn, ClientOptions, Refusal};
use super::mailbox::{Address, Empty, Mailbox};
use super::persist_loop::PersistMsg;
use super::{ActorMsg, Clock};
use crate::command::{ActorState, NodeInfo, Session};

/// Everything a query actor's thread starts with.
#[derive(Debug)]
pub struct ActorStart {
    /// The replica state machine.
    pub replica: Replica,
    /// The actor's client port, already bound.
    pub listener: TcpListener,
    /// The poll the actor sleeps in (its waker is registered with it).
    pub poll: Poll,
    /// Where other actors' mail arrives.
    pub mailbox: Mailbox<ActorMsg>,
    /// The sync recipients: every other local actor and the gateway.
    pub recipients: Vec<Address<ActorMsg>>,
    /// Node facts for INFO.
    pub info: NodeInfo,
    /// The client ports' limits and protections.
    pub clients: ClientOptions,
    /// Closed (every sender dropped) when the node stops; nothing is ever sent on it.
    pub stop: Receiver<Infallible>,
    /// The node's clocks.
    pub clock: Clock,
    /// The persistence actor, with a data directory: it gets every client write at the end
    /// of the round that executed it, unpaced.
    pub persist: Option<Address<PersistMsg>>,
    /// Faults to inject (tests).
    #[cfg(feature = "testkit")]
    pub faults: crate::testkit::Faults,
}

const LISTENER: Token = Token(0);
/// The token of the waker registered with the actor's poll.
pub const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Commands one connection runs per turn. Small enough that a round of many busy connections
/// stays short (a `SET` costs about a microsecond), large enough that a pipelining client is
/// not slowed by the round's fixed costs.
pub const COMMAND_BUDGET: usize = 256;
/// Bytes read from one connection per turn.
pub const READ_BUDGET: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Writes that make the actor hand its writes to the persistence actor before its round ends.
pub const DURABLE_BATCH: usize = 4096;
/// How long a stopping actor keeps trying to hand replies already computed to slow clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often connections are checked against the idle timeout, when there is one.
const IDLE_CHECK_MS: u64 = 1000;
/// How often actor 0 sweeps for expired entries, while some entry has a deadline.
pub const SWEEP_EVERY_MS: u64 = 100;
/// Entries one sweep looks at (about a millisecond of work).
pub const SWEEP_BUDGET: usize = 10_000;

/// A client connection: its socket and its protocol state.
struct Client {
    stream: TcpStream,
    conn: ClientConn,
    peer: SocketAddr,
    /// In the actor's queue of connections with work.
    queued: bool,
}

struct Actor {
    state: ActorState,
    recipients: Vec<Address<ActorMsg>>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    /// Connections with work, in turn order.
    ready: VecDeque<usize>,
    /// Monotonic ms of the next sample of the node's command count.
    next_ops_sample: u64,
    /// Monotonic ms of the next sweep for expired entries (actor 0 only).
    next_sweep: u64,
    /// The replica's count of reclaimed entries as last published.
    expired_published: u64,
    options: ClientOptions,
    clock: Clock,
    /// Monotonic ms of the next idle check.
    next_idle_check: u64,
    /// The replica's counters as last published to the node's.
    published: SyncStats,
    /// The replica's count of ignored far-future timestamps when last logged.
    future_logged: u64,
    /// Read buffer shared by the actor's connections (bytes are copied out per read).
    scratch: Vec<u8>,
    persist: Option<Address<PersistMsg>>,
    /// Encodes the writes for the persistence actor (on this thread, which holds them hot).
    encoder: replica_persist::codec::BatchEncoder,
}

/// Runs a query actor until the node shuts down.
pub fn run(start: ActorStart) {
    #[cfg(feature = "testkit")]
    let faults = start.faults.clone();
    let ActorStart {
        mut replica,
        mut listener,
        mut poll,
        mailbox,
        recipients,
        info,
        clients,
        stop,
        clock,
        persist,
        ..
    } = start;
    if persist.is_some() {
        replica.keep_durable();
    }
    let mut actor = Actor {
        state: ActorState::new(replica, info, clients.requirepass.clone()),
        recipients,
        clients: Vec::new(),
        free: Vec::new(),
        ready: VecDeque::new(),
        next_ops_sample: 0,
        next_sweep: 0,
        expired_published: 0,
        options: clients,
        clock,
        next_idle_check: 0,
        published: SyncStats::default(),
        future_logged: 0,
        scratch: vec![0; READ_CHUNK],
        persist,
        encoder: replica_persist::codec::BatchEncoder::new(),
    };
    if let Err(e) = poll.registry().register(&mut listener, LISTENER, Interest::READABLE) {
        tracing::error!(actor = actor.state.replica.index(), "cannot watch the client port: {e}");
        return;
    }
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = actor.poll_timeout();
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(actor = actor.state.replica.index(), "poll failed: {e}");
            break;
        }
        if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
            break;
        }
        #[cfg(feature = "testkit")]
        if faults.actor_panics(actor.state.replica.index()) {
            panic!("injected fault: actor {} panics", actor.state.replica.index());
        }
        for event in &events {
            match event.token() {
                LISTENER => actor.accept(&listener, &poll),
                WAKER => {}
                Token(t) => actor.enqueue(t - FIRST_CONN),
            }
        }
        actor.serve_ready(&poll);
        actor.deliver_mail(&mailbox, &poll);
        actor.sync();
        actor.close_idle(&poll);
    }
    let _ = poll.registry().deregister(&mut listener);
    drop(listener);
    actor.finish(&mut poll);
}

impl Actor {
    /// The clocks the replica runs on: the wall clock moved up as far as the gateway found
    /// this server's clock behind its peers' (design 4.9), so its writes are not stamped in
    /// the past of the cluster and silently lost.
    fn now(&self) -> Now {
        let mut now = self.clock.now();
        now.wall_ms += NodeStats::get(&self.state.info.stats.clock_correction_ms);
        now
    }

    /// How long the loop may sleep: not at all while connections have work, else until the
    /// next sync or idle check is due.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.clock.now().mono_ms;
        let idle = self.options.idle_timeout.filter(|_| self.clients.len() > self.free.len());
        let sweep = self.sweeps().then_some(self.next_sweep);
        let due = [self.state.replica.next_sync_at(), idle.map(|_| self.next_idle_check), sweep]
            .into_iter()
            .flatten()
            .min();
        due.map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    fn accept(&mut self, listener: &TcpListener, poll: &Poll) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let has_password = self.options.requirepass.is_some();
                    if let Some(refusal) =
                        Refusal::for_peer(self.options.protected_mode, has_password, peer.ip())
                    {
                        tracing::debug!(client = %peer, "refused: protected mode");
                        refuse(stream, refusal);
                        continue;
                    }
                    if !self.state.info.stats.admit_client(self.options.maxclients) {
                        tracing::debug!(client = %peer, max = self.options.maxclients, "refused: maxclients");
                        refuse(stream, Refusal::MaxClients);
                        continue;
                    }
                    self.admit(stream, peer, poll);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, typically: keep serving the clients we have.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Starts serving an admitted connection (its slot in the node's count is taken).
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, poll: &Poll) {
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.clients.push(None);
            self.clients.len() - 1
        });
        // A connection that sent its first request before being accepted is readable at once:
        // registering it reports that.
        if let Err(e) = poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("cannot watch a client connection: {e}");
            self.free.push(slot);
            self.state.info.stats.client_closed();
            return;
        }
        let now = self.clock.now().mono_ms;
        let info = &self.state.info;
        let record = info.clients.register(
            self.state.replica.index(),
            peer.to_string(),
            info.client_addr.clone(),
            now,
        );
        let conn = ClientConn::with_session(Session::listed(record), self.options.output_limit, now);
        self.clients[slot] = Some(Client { stream, conn, peer, queued: false });
    }

    /// Queues a connection for a turn (once).
    fn enqueue(&mut self, slot: usize) {
        if let Some(Some(client)) = self.clients.get_mut(slot)
            && !client.queued
        {
            client.queued = true;
            self.ready.push_back(slot);
        }
    }

    /// Gives every connection queued at the start of the round one turn.
    fn serve_ready(&mut self, poll: &Poll) {
        for _ in 0..self.ready.len() {
            let Some(slot) = self.ready.pop_front() else { break };
            let Some(Some(client)) = self.clients.get_mut(slot) else { continue };
            client.queued = false;
            match self.turn(slot, true) {
                Turn::Close => self.close(slot, poll),
                Turn::More => self.enqueue(slot),
                Turn::Wait => {}
            }
            // Normally once per round (in `sync`); a round of many busy connections hands its
            // writes on before it ends.
            if self.state.replica.durable_len() >= DURABLE_BATCH {
                self.persist_writes();
            }
        }
    }

    /// Hands the writes executed since the last call to the persistence actor (if any), at
    /// once: this is what bounds the time an acknowledged write is only in memory.
    fn persist_writes(&mut self) {
        let Some(persist) = &self.persist else { return };
        for rec in self.state.replica.take_durable() {
            self.encoder.push_until(&rec.key, rec.entry.value.as_deref(), rec.entry.deadline(), rec.entry.ts);
            if self.encoder.is_full()
                && let Some(payload) = self.encoder.take_payload()
            {
                let _ = persist.send(PersistMsg::Batch(payload));
            }
        }
        if let Some(payload) = self.encoder.take_payload() {
            // A stopped persistence actor stops the node (fail fast): nothing to do here.
            let _ = persist.send(PersistMsg::Batch(payload));
        }
    }

    /// One turn of a connection: write what is pending, run buffered commands, read (if
    /// `read`) and run more, within the budgets, then write.
    fn turn(&mut self, slot: usize, read: bool) -> Turn {
        let now = self.now();
        let Some(Some(client)) = self.clients.get_mut(slot) else { return Turn::Wait };
        let Client { stream, conn, peer, .. } = client;
        if conn.wants_write() && conn.write_to(stream, now.mono_ms).is_err() {
            return Turn::Close;
        }
        let ran = conn.process(&mut self.state, now, COMMAND_BUDGET);
        let mut drained = true;
        if read && conn.wants_read() {
            if ran < COMMAND_BUDGET {
                match conn.read_from(stream, &mut self.scratch, READ_BUDGET, now.mono_ms) {
                    Ok(status) => drained = status.drained,
                    Err(_) => return Turn::Close,
                }
                conn.process(&mut self.state, now, COMMAND_BUDGET - ran);
            } else {
                // Not read this turn: bytes may be waiting that no new event will announce.
                drained = false;
            }
        }
        if conn.output_over_limit() {
            NodeStats::add(&self.state.info.stats.client_output_limit_disconnects, 1);
            tracing::warn!(
                actor = self.state.replica.index(),
                client = %peer,
                id = conn.session().id,
                held = conn.pending_output(),
                limit = self.options.output_limit,
                "closing a client connection: its unsent replies passed the client output limit"
            );
            return Turn::Close;
        }
        if conn.write_to(stream, now.mono_ms).is_err() || conn.is_finished() {
            return Turn::Close;
        }
        if conn.has_buffered_work() || (!drained && conn.wants_read()) { Turn::More } else { Turn::Wait }
    }

    fn close(&mut self, slot: usize, poll: &Poll) {
        if let Some(mut client) = self.clients[slot].take() {
            let _ = poll.registry().deregister(&mut client.stream);
            self.free.push(slot);
            self.state.info.stats.client_closed();
            self.state.info.clients.unregister(client.conn.session().id);
        }
    }

    /// Closes the connection with session id `id` (`CLIENT KILL` from another connection).
    fn kill(&mut self, id: u64, poll: &Poll) {
        let slot = self.clients.iter().position(|c| c.as_ref().is_some_and(|c| c.conn.session().id == id));
        if let Some(slot) = slot {
            if let Some(client) = &self.clients[slot] {
                tracing::debug!(client = %client.peer, id, "closing a client connection: CLIENT KILL");
            }
            self.close(slot, poll);
        }
    }

    /// Closes the connections idle for longer than the idle timeout, at most once a second.
    fn close_idle(&mut self, poll: &Poll) {
        let Some(timeout) = self.options.idle_timeout else { return };
        let now = self.clock.now().mono_ms;
        if now < self.next_idle_check {
            return;
        }
        self.next_idle_check = now + IDLE_CHECK_MS;
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        for slot in 0..self.clients.len() {
            if let Some(client) = &self.clients[slot]
                && client.conn.idle_ms(now) >= limit
            {
                tracing::debug!(client = %client.peer, "closing an idle client connection");
                self.close(slot, poll);
            }
        }
    }

    fn deliver_mail(&mut self, mailbox: &Mailbox<ActorMsg>, poll: &Poll) {
        mailbox.begin_drain();
        loop {
            match mailbox.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    let now = self.now();
                    self.state.replica.on_sync(&batch, now);
                }
                Ok(ActorMsg::Collect(tombstones)) => {
                    self.state.replica.collect(&tombstones);
                }
                Ok(ActorMsg::KillClient(id)) => self.kill(id, poll),
                Err(Empty::Empty | Empty::Closed) => return,
            }
        }
    }

    /// Stops serving: runs the complete commands already received, hands the replies out
    /// within a grace period, and sends the last writes to the other actors.
    fn finish(&mut self, poll: &mut Poll) {
        self.ready.clear();
        for slot in 0..self.clients.len() {
            if let Some(client) = &mut self.clients[slot] {
                client.conn.stop();
                self.finish_turns(slot, poll);
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut events = Events::with_capacity(256);
        while self.clients.iter().any(Option::is_some) && Instant::now() < deadline {
            let _ = poll.poll(&mut events, Some(deadline.saturating_duration_since(Instant::now())));
            for event in &events {
                if let Some(slot) = event.token().0.checked_sub(FIRST_CONN) {
                    self.finish_turns(slot, poll);
                }
            }
        }
        self.persist_writes();
        // Sent regardless of pacing: this is the actor's last message.
        let now = self.now();
        let last = self.state.replica.poll_sync_final(now);
        self.send(last, now.mono_ms);
    }

    /// Turns without reading until the connection is done or waits for its client.
    fn finish_turns(&mut self, slot: usize, poll: &Poll) {
        loop {
            match self.turn(slot, false) {
                Turn::Close => return self.close(slot, poll),
                Turn::More => continue,
                Turn::Wait => return,
            }
        }
    }

    /// Whether this actor sweeps its replica for expired entries: actor 0 of each node, while
    /// some entry has a deadline. One sweeper per node is enough: the tombstones it makes reach
    /// the other actors, the gateway and the other servers like any write (whose own actor 0
    /// may have made them already: the same tombstone merges as redundant).
    fn sweeps(&self) -> bool {
        self.state.replica.index() == 0 && self.state.replica.map().expiring() > 0
    }

    /// Turns expired entries into tombstones, [`SWEEP_BUDGET`] entries every
    /// [`SWEEP_EVERY_MS`] (so a replica of a million keys is swept in about 10 s).
    fn sweep(&mut self, now: Now) {
        if !self.sweeps() || now.mono_ms < self.next_sweep {
            return;
        }
        self.next_sweep = now.mono_ms + SWEEP_EVERY_MS;
        self.state.replica.reclaim_expired(now, SWEEP_BUDGET);
        let expired = self.state.replica.expired_reclaimed();
        NodeStats::add(&self.state.info.stats.expired_keys, expired - self.expired_published);
        self.expired_published = expired;
    }

    fn sync(&mut self) {
        let now = self.now();
        self.sweep(now);
        self.persist_writes();
        let batch = self.state.replica.poll_sync(now);
        self.send(batch, now.mono_ms);
    }

    /// Sends `batch` to every recipient and publishes the replica's counters (at `now_ms`).
    fn send(&mut self, batch: Option<SyncBatch>, now_ms: u64) {
        if let Some(batch) = batch {
            for r in &self.recipients {
                // A recipient that stopped is shutting down with the node: nothing to do.
                let _ = r.send(ActorMsg::Sync(batch.clone()));
            }
        }
        self.state.info.stats.publish_sync(&mut self.published, self.state.replica.stats());
        self.state.publish_counters();
        if now_ms >= self.next_ops_sample {
            self.state.info.stats.sample_ops(now_ms);
            self.next_ops_sample = now_ms + crate::stats::OPS_SAMPLE_MS;
        }
        let future = self.state.replica.future_timestamps_ignored();
        if future > self.future_logged {
            // One line per round at most, however many merges brought such timestamps.
            tracing::warn!(total = future, "ignoring timestamps far ahead of the local clock");
            self.future_logged = future;
        }
    }
}

/// What a connection needs after its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Another turn in the next round: work is left.
    More,
    /// Nothing until its socket is ready again.
    Wait,
    /// Close it.
    Close,
}

/// Tells a refused connection why, then closes it. What it already sent is read and dropped
/// first: closing a socket with unread input resets it, and the reset could overtake the
/// error on its way to the client.
fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let _ = stream.write(refusal.reply());
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}
