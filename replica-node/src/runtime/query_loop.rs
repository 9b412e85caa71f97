//! The per-core loop of a query actor: one OS thread that serves the actor's client port and
//! its mailbox, with no lock on the data path.
//!
//! The loop is a thin driver around [`Replica`] and [`crate::command::execute`]: it reads
//! bytes, hands parsed commands to the state machine, writes the replies, delivers mail, and
//! sends the deltas the state machine asks it to send when they are due.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::stats::NodeStats;
use replica_core::stats::SyncStats;
use replica_core::{Replica, SyncBatch};
use resp::RequestParser;

use super::mailbox::{Address, Empty, Mailbox};
use super::persist_loop::PersistMsg;
use super::{ActorMsg, Clock};
use crate::command::{self, ActorState, Cursors, Flow, NodeInfo, Session};

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
    /// The sync recipients: every other local actor (later also the gateway).
    pub recipients: Vec<Address<ActorMsg>>,
    /// Node facts for INFO.
    pub info: NodeInfo,
    /// Set when the node stops.
    pub shutdown: Arc<AtomicBool>,
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

/// Replies waiting beyond this make the actor stop reading from that client until it reads
/// its replies: a client that pipelines without reading cannot make the server buffer forever.
const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;
/// Open client connections per actor; more are told so and closed.
const MAX_CONNECTIONS: usize = 10_000;
const READ_CHUNK: usize = 64 * 1024;
/// Writes that make the actor hand its writes to the persistence actor before its round ends.
pub const DURABLE_BATCH: usize = 4096;
/// How long a stopping actor keeps trying to hand replies already computed to slow clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    wpos: usize,
    parser: RequestParser,
    session: Session,
    /// Close once the output is flushed (QUIT, protocol error, end of input).
    closing: bool,
}

impl Conn {
    fn pending_output(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

struct Actor {
    state: ActorState,
    recipients: Vec<Address<ActorMsg>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_session: u64,
    clock: Clock,
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
        shutdown,
        clock,
        persist,
        ..
    } = start;
    if persist.is_some() {
        replica.keep_durable();
    }
    let mut actor = Actor {
        state: ActorState { replica, cursors: Cursors::default(), info },
        recipients,
        conns: Vec::new(),
        free: Vec::new(),
        next_session: 1,
        clock,
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
        let now = clock.now();
        let timeout = actor
            .state
            .replica
            .next_sync_at()
            .map(|at| Duration::from_millis(at.saturating_sub(now.mono_ms)));
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(actor = actor.state.replica.index(), "poll failed: {e}");
            break;
        }
        if shutdown.load(Ordering::Acquire) {
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
                Token(t) => actor.serve(t, &poll),
            }
        }
        actor.deliver_mail(&mailbox);
        actor.sync();
    }
    let _ = poll.registry().deregister(&mut listener);
    drop(listener);
    actor.finish(&mut poll);
}

impl Actor {
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let open = self.conns.len() - self.free.len();
                    if open >= MAX_CONNECTIONS {
                        let _ = stream.write(b"-ERR max number of clients reached\r\n");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let token = Token(slot + FIRST_CONN);
                    if let Err(e) =
                        poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                    {
                        tracing::warn!("cannot watch a client connection: {e}");
                        self.free.push(slot);
                        continue;
                    }
                    let session = Session::new(self.next_session);
                    self.next_session += 1;
                    self.conns[slot] = Some(Conn {
                        stream,
                        rbuf: BytesMut::with_capacity(READ_CHUNK),
                        wbuf: Vec::new(),
                        wpos: 0,
                        parser: RequestParser::new(),
                        session,
                        closing: false,
                    });
                    NodeStats::add(&self.state.info.stats.clients_connected, 1);
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

    /// Reads, executes and writes for one connection until it would block.
    fn serve(&mut self, token: usize, poll: &Poll) {
        let Some(slot) = token.checked_sub(FIRST_CONN) else { return };
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        let keep = serve_conn(conn, &mut self.scratch, &mut self.state, &self.clock);
        if !keep {
            self.close(slot, poll);
        }
        // Normally once per round (in `sync`); a round that takes many writes hands them on
        // before it ends, so a flood on one connection cannot hold them back.
        if self.state.replica.durable_len() >= DURABLE_BATCH {
            self.persist_writes();
        }
    }

    /// Hands the writes executed since the last call to the persistence actor (if any), at
    /// once: this is what bounds the time an acknowledged write is only in memory.
    fn persist_writes(&mut self) {
        let Some(persist) = &self.persist else { return };
        for (key, entry) in self.state.replica.take_durable() {
            self.encoder.push(&key, entry.value.as_deref(), entry.ts);
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

    fn close(&mut self, slot: usize, poll: &Poll) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = poll.registry().deregister(&mut conn.stream);
            self.free.push(slot);
            self.state.info.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn deliver_mail(&mut self, mailbox: &Mailbox<ActorMsg>) {
        mailbox.begin_drain();
        loop {
            match mailbox.try_recv() {
                Ok(ActorMsg::Sync(batch)) => {
                    let now = self.clock.now();
                    self.state.replica.on_sync(&batch, now);
                }
                Err(Empty::Empty | Empty::Closed) => return,
            }
        }
    }

    /// Stops serving: executes the commands already received, hands the replies out within a
    /// grace period, and sends the last writes to the other actors.
    fn finish(&mut self, poll: &mut Poll) {
        for slot in 0..self.conns.len() {
            if let Some(conn) = &mut self.conns[slot] {
                conn.closing = true;
                execute_buffered(conn, &mut self.state, &self.clock);
                if flush(conn).is_err() || conn.pending_output() == 0 {
                    self.close(slot, poll);
                }
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut events = Events::with_capacity(256);
        while self.conns.iter().any(Option::is_some) && Instant::now() < deadline {
            let _ = poll.poll(&mut events, Some(deadline.saturating_duration_since(Instant::now())));
            for event in &events {
                let Some(slot) = event.token().0.checked_sub(FIRST_CONN) else { continue };
                if let Some(Some(conn)) = self.conns.get_mut(slot)
                    && (flush(conn).is_err() || conn.pending_output() == 0)
                {
                    self.close(slot, poll);
                }
            }
        }
        self.persist_writes();
        // Sent regardless of pacing: this is the actor's last message.
        let last = self.state.replica.poll_sync_final(self.clock.now());
        self.send(last);
    }

    fn sync(&mut self) {
        self.persist_writes();
        let batch = self.state.replica.poll_sync(self.clock.now());
        self.send(batch);
    }

    /// Sends `batch` to every recipient and publishes the replica's counters.
    fn send(&mut self, batch: Option<SyncBatch>) {
        if let Some(batch) = batch {
            for r in &self.recipients {
                // A recipient that stopped is shutting down with the node: nothing to do.
                let _ = r.send(ActorMsg::Sync(batch.clone()));
            }
        }
        self.state.info.stats.publish_sync(&mut self.published, self.state.replica.stats());
        let future = self.state.replica.future_timestamps_ignored();
        if future > self.future_logged {
            // One line per round at most, however many merges brought such timestamps.
            tracing::warn!(total = future, "ignoring timestamps far ahead of the local clock");
            self.future_logged = future;
        }
    }
}

/// Serves one connection; returns whether to keep it open.
fn serve_conn(conn: &mut Conn, scratch: &mut [u8], state: &mut ActorState, clock: &Clock) -> bool {
    loop {
        if flush(conn).is_err() {
            return false;
        }
        if conn.closing {
            return conn.pending_output() > 0;
        }
        if conn.pending_output() > MAX_PENDING_OUTPUT {
            // Resume when the socket becomes writable again (a WRITABLE event).
            return true;
        }
        // Read what is there, then execute every complete command it holds.
        let mut eof = false;
        let mut got = 0;
        while conn.rbuf.len() < resp::MAX_REQUEST + READ_CHUNK {
            match conn.stream.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.rbuf.extend_from_slice(&scratch[..n]);
                    got += n;
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return false,
                },
            }
        }
        execute_buffered(conn, state, clock);
        if eof {
            conn.closing = true;
        }
        if got == 0 && !eof {
            // Nothing more to read: flush what the commands produced and wait for an event.
            return flush(conn).is_ok() && !(conn.closing && conn.pending_output() == 0);
        }
    }
}

/// Executes the complete commands in the read buffer (stopping at a close or when the output
/// backs up).
fn execute_buffered(conn: &mut Conn, state: &mut ActorState, clock: &Clock) {
    let now = clock.now();
    while !conn.closing && conn.pending_output() <= MAX_PENDING_OUTPUT {
        match conn.parser.parse(&mut conn.rbuf) {
            Ok(Some(args)) => {
                if command::execute(state, &mut conn.session, &args, now, &mut conn.wbuf) == Flow::Close {
                    conn.closing = true;
                }
            }
            Ok(None) => return,
            Err(e) => {
                resp::error(&mut conn.wbuf, &format!("ERR Protocol error: {e}"));
                conn.closing = true;
            }
        }
    }
}

/// Writes as much pending output as the socket takes.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while conn.wpos < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    if conn.wbuf.capacity() > 1024 * 1024 {
        conn.wbuf.shrink_to(64 * 1024);
    }
    Ok(())
}
