//! A UDP relay that emulates a wide-area link between two QUIC endpoints: one-way delay with
//! jitter, loss, duplication, reordering, and partitions. For tests and benchmarks only
//! (feature `linkem`).
//!
//! Point a client at [`LinkEmulator::local_addr`] instead of the server; the relay forwards
//! each client's packets to the target from a socket of its own (so replies find their way
//! back to the right client) and the target's replies back to that client. Peer identity is
//! checked by certificate, so endpoints do not mind talking through the relay.
//!
//! It runs on plain threads, independent of the tests' tokio runtime: receivers block on
//! their sockets and a scheduler thread releases each packet at its due time (condition
//! variable timeouts, well under a millisecond late on Linux).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// How often blocked receivers look up to see whether the relay is stopping.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// The behaviour of the emulated link, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay ± jitter` (at least zero). Jitter
    /// alone never reorders: a packet is never released before one that arrived earlier.
    pub jitter: Duration,
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by an extra [`LinkConfig::reorder_delay`], so
    /// packets behind it overtake it.
    pub reorder: f64,
    /// Extra hold of a reordered packet. Default 5 ms.
    pub reorder_delay: Duration,
    /// Seed of the random decisions; the same seed and the same packets give the same fate.
    pub seed: u64,
}

impl Default for LinkConfig {
    /// A perfect link: no delay, no loss.
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            seed: 1,
        }
    }
}

impl LinkConfig {
    /// A link with only a one-way delay.
    pub fn with_delay(delay: Duration) -> Self {
        LinkConfig { delay, ..LinkConfig::default() }
    }
}

/// What the relay has done so far, both directions together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets delivered (duplicates included).
    pub packets_forwarded: u64,
    /// Bytes delivered.
    pub bytes_forwarded: u64,
    /// Packets dropped by loss or by a cut.
    pub packets_dropped: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
    /// Extra copies scheduled by duplication.
    pub packets_duplicated: u64,
    /// Packets held back by reordering.
    pub packets_reordered: u64,
}

/// A running relay; stops (and joins its threads) when dropped.
#[derive(Debug)]
pub struct LinkEmulator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl LinkEmulator {
    /// Binds `listen` (port 0 picks one) and relays between its clients and `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr, config: LinkConfig) -> io::Result<LinkEmulator> {
        let socket = UdpSocket::bind(listen)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            listen: Arc::new(socket),
            target,
            stop: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            fate: Mutex::new(Fate::new(config)),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            upstreams: Mutex::new(HashMap::new()),
            upstream_threads: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let inbound = {
            let shared = shared.clone();
            std::thread::Builder::new().name("linkem-in".into()).spawn(move || shared.run_inbound())?
        };
        let scheduler = {
            let shared = shared.clone();
            std::thread::Builder::new().name("linkem-sched".into()).spawn(move || shared.run_scheduler())?
        };
        Ok(LinkEmulator { shared, local_addr, threads: vec![inbound, scheduler] })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address packets are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current link behaviour.
    pub fn config(&self) -> LinkConfig {
        lock(&self.shared.fate).config
    }

    /// Changes the link behaviour for packets arriving from now on (queued packets keep their
    /// due time). A new seed restarts the random sequence.
    pub fn set_config(&self, config: LinkConfig) {
        lock(&self.shared.fate).set_config(config);
    }

    /// Partitions the link: every packet, queued or new, is dropped until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Ends a partition.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// True while the link is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            packets_forwarded: c.packets_forwarded.load(Ordering::Relaxed),
            bytes_forwarded: c.bytes_forwarded.load(Ordering::Relaxed),
            packets_dropped: c.packets_dropped.load(Ordering::Relaxed),
            bytes_dropped: c.bytes_dropped.load(Ordering::Relaxed),
            packets_duplicated: c.packets_duplicated.load(Ordering::Relaxed),
            packets_reordered: c.packets_reordered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders the store before the scheduler's next check.
            let _queue = lock(&self.shared.queue);
            self.shared.wake.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The inbound thread has stopped, so no upstream thread starts after this.
        let upstream_threads = std::mem::take(&mut *lock(&self.shared.upstream_threads));
        for thread in upstream_threads {
            let _ = thread.join();
        }
    }
}

/// Locks, ignoring poisoning: the relay's state stays consistent across a panicking holder
/// (every critical section is a few assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Counters {
    packets_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    packets_dropped: AtomicU64,
    bytes_dropped: AtomicU64,
    packets_duplicated: AtomicU64,
    packets_reordered: AtomicU64,
}

impl Counters {
    fn dropped(&self, len: usize) {
        self.packets_dropped.fetch_add(1, Ordering::Relaxed);
        self.bytes_dropped.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn forwarded(&self, len: usize) {
        self.packets_forwarded.fetch_add(1, Ordering::Relaxed);
        self.bytes_forwarded.fetch_add(len as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to target.
    Forward = 0,
    /// Target to client.
    Back = 1,
}

/// The random fate of packets: configuration, one generator per direction (so each direction's
/// decisions depend only on its own packets), and the last due time per direction (FIFO).
#[derive(Debug)]
struct Fate {
    config: LinkConfig,
    rng: [SplitMix64; 2],
    last_due: [Option<Instant>; 2],
}

/// What happens to one packet.
#[derive(Debug, PartialEq)]
enum Verdict {
    Drop,
    Deliver { due: Instant, copies: usize, reordered: bool },
}

impl Fate {
    fn new(config: LinkConfig) -> Self {
        Fate { config, rng: Self::rngs(config.seed), last_due: [None; 2] }
    }

    fn rngs(seed: u64) -> [SplitMix64; 2] {
        [SplitMix64::new(seed), SplitMix64::new(seed ^ 0x5bd1_e995_0000_0001)]
    }

    fn set_config(&mut self, config: LinkConfig) {
        if config.seed != self.config.seed {
            self.rng = Self::rngs(config.seed);
        }
        self.config = config;
    }

    fn decide(&mut self, direction: Direction, arrival: Instant) -> Verdict {
        let c = self.config;
        let rng = &mut self.rng[direction as usize];
        if rng.chance(c.loss) {
            return Verdict::Drop;
        }
        let mut delay = c.delay;
        if !c.jitter.is_zero() {
            let spread = c.jitter.mul_f64(2.0 * rng.next_f64());
            delay = (delay + spread).saturating_sub(c.jitter);
        }
        let copies = if rng.chance(c.duplicate) { 2 } else { 1 };
        let reordered = rng.chance(c.reorder);
        let last = &mut self.last_due[direction as usize];
        let mut due = arrival + delay;
        if let Some(last) = *last {
            due = due.max(last);
        }
        if reordered {
            due += c.reorder_delay;
        } else {
            *last = Some(due);
        }
        Verdict::Deliver { due, copies, reordered }
    }
}

/// A packet waiting for its due time.
#[derive(Debug)]
struct Scheduled {
    due: Instant,
    seq: u64,
    from: Arc<UdpSocket>,
    to: SocketAddr,
    data: Arc<[u8]>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so the max-heap pops the earliest (due, seq) first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Scheduled>,
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    stop: AtomicBool,
    cut: AtomicBool,
    fate: Mutex<Fate>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Client address → the socket its packets leave from towards the target.
    upstreams: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    upstream_threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Receives from clients and schedules their packets towards the target.
    fn run_inbound(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopping() {
            let (len, client) = match self.listen.recv_from(&mut buf) {
                Ok(received) => received,
                Err(_) => continue, // timeout (checks `stop`) or a transient error
            };
            let arrival = Instant::now();
            let upstream = match self.upstream_for(client) {
                Ok(upstream) => upstream,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "linkem: cannot open upstream socket");
                    self.counters.dropped(len);
                    continue;
                }
            };
            self.schedule(Direction::Forward, arrival, upstream, self.target, &buf[..len]);
        }
    }

    /// The socket relaying `client`'s packets, created (with its receiver thread) on the
    /// client's first packet.
    fn upstream_for(self: &Arc<Self>, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        if let Some(socket) = lock(&self.upstreams).get(&client) {
            return Ok(socket.clone());
        }
        let any: SocketAddr = if self.target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let socket = Arc::new(socket);
        let thread = {
            let shared = self.clone();
            let socket = socket.clone();
            std::thread::Builder::new()
                .name("linkem-out".into())
                .spawn(move || shared.run_upstream(&socket, client))?
        };
        lock(&self.upstream_threads).push(thread);
        lock(&self.upstreams).insert(client, socket.clone());
        Ok(socket)
    }

    /// Receives the target's replies to one client and schedules them back to it.
    fn run_upstream(self: Arc<Self>, socket: &UdpSocket, client: SocketAddr) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopping() {
            let (len, from) = match socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(_) => continue,
            };
            if from != self.target {
                continue; // not part of the emulated link
            }
            let arrival = Instant::now();
            self.schedule(Direction::Back, arrival, self.listen.clone(), client, &buf[..len]);
        }
    }

    fn schedule(
        &self,
        direction: Direction,
        arrival: Instant,
        from: Arc<UdpSocket>,
        to: SocketAddr,
        data: &[u8],
    ) {
        if self.cut.load(Ordering::SeqCst) {
            self.counters.dropped(data.len());
            return;
        }
        let verdict = lock(&self.fate).decide(direction, arrival);
        let Verdict::Deliver { due, copies, reordered } = verdict else {
            self.counters.dropped(data.len());
            return;
        };
        if copies > 1 {
            self.counters.packets_duplicated.fetch_add(1, Ordering::Relaxed);
        }
        if reordered {
            self.counters.packets_reordered.fetch_add(1, Ordering::Relaxed);
        }
        let data: Arc<[u8]> = data.into();
        let mut queue = lock(&self.queue);
        for _ in 0..copies {
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.heap.push(Scheduled { due, seq, from: from.clone(), to, data: data.clone() });
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Releases packets at their due time.
    fn run_scheduler(self: Arc<Self>) {
        let mut queue = lock(&self.queue);
        loop {
            if self.stopping() {
                return;
            }
            let now = Instant::now();
            match queue.heap.peek() {
                Some(next) if next.due <= now => {
                    let Some(packet) = queue.heap.pop() else { continue };
                    drop(queue);
                    self.deliver(&packet);
                    queue = lock(&self.queue);
                }
                Some(next) => {
                    let wait = next.due - now;
                    queue = self.wake.wait_timeout(queue, wait).unwrap_or_else(PoisonError::into_inner).0;
                }
                None => {
                    queue = self.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    fn deliver(&self, packet: &Scheduled) {
        let len = packet.data.len();
        if self.cut.load(Ordering::SeqCst) {
            self.counters.dropped(len);
            return;
        }
        // Counted before sending, so whoever observes the packet also sees it counted.
        self.counters.forwarded(len);
        if packet.from.send_to(&packet.data, packet.to).is_err() {
            self.counters.packets_forwarded.fetch_sub(1, Ordering::Relaxed);
            self.counters.bytes_forwarded.fetch_sub(len as u64, Ordering::Relaxed);
            self.counters.dropped(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fate_is_reproducible_and_fifo_without_reorder() {
        let config = LinkConfig {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            loss: 0.1,
            duplicate: 0.1,
            ..LinkConfig::default()
        };
        let start = Instant::now();
        let run = || {
            let mut fate = Fate::new(config);
            (0..1000)
                .map(|i| fate.decide(Direction::Forward, start + Duration::from_micros(i * 100)))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut last = start;
        let (mut dropped, mut doubled) = (0, 0);
        for verdict in &a {
            match verdict {
                Verdict::Drop => dropped += 1,
                Verdict::Deliver { due, copies, reordered } => {
                    assert!(!reordered);
                    assert!(*due >= last, "jitter must not reorder");
                    assert!(*due >= start + Duration::from_millis(30));
                    last = *due;
                    doubled += usize::from(*copies == 2);
                }
            }
        }
        assert!((50..150).contains(&dropped), "{dropped}");
        assert!((50..150).contains(&doubled), "{doubled}");
    }

    #[test]
    fn reordered_packets_are_overtaken() {
        let mut fate = Fate::new(LinkConfig { reorder: 1.0, ..LinkConfig::default() });
        let t = Instant::now();
        let Verdict::Deliver { due, reordered: true, .. } = fate.decide(Direction::Back, t) else {
            panic!("expected a reordered delivery");
        };
        assert_eq!(due, t + Duration::from_millis(5));
        fate.set_config(LinkConfig::default());
        let later = t + Duration::from_millis(1);
        assert_eq!(
            fate.decide(Direction::Back, later),
            Verdict::Deliver { due: later, copies: 1, reordered: false }
        );
    }

    #[test]
    fn relays_both_ways_with_delay_and_counts() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let delay = Duration::from_millis(30);
        let relay = LinkEmulator::start(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            LinkConfig::with_delay(delay),
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        let sent = Instant::now();
        client.send_to(b"ping", relay.local_addr()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        let rtt = sent.elapsed();
        assert_eq!((&buf[..n], from), (&b"pong"[..], relay.local_addr()));
        assert!(rtt >= 2 * delay && rtt < 2 * delay + Duration::from_millis(25), "{rtt:?}");

        relay.cut();
        client.send_to(b"lost", relay.local_addr()).unwrap();
        server.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert!(server.recv_from(&mut buf).is_err());
        relay.heal();
        client.send_to(b"back", relay.local_addr()).unwrap();
        let n = server.recv_from(&mut buf).unwrap().0;
        assert_eq!(&buf[..n], b"back");

        let stats = relay.stats();
        assert_eq!(stats.packets_forwarded, 3);
        assert_eq!(stats.bytes_forwarded, 12);
        assert_eq!((stats.packets_dropped, stats.bytes_dropped), (1, 4));
    }
}
