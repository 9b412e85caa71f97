//! The actor runtime: unbounded FIFO mailboxes that wake a per-core event loop.
//!
//! An actor owns its state and handles one message at a time from its [`Mailbox`]. Sending
//! never blocks; delivery is FIFO per sender-receiver pair (crossbeam-channel is FIFO per
//! channel, and one sender's sends are sequenced) and at-most-once (a message sent to an actor
//! that has stopped is dropped). Actors share no mutable memory: messages carry immutable
//! buffers (`Arc`, `Bytes`) that several receivers may share.
//!
//! A query actor's thread also serves sockets, so it sleeps in `mio::Poll` rather than in
//! `recv`; a [`Notify`] wakes that poll when mail arrives. Sends that find the actor already
//! notified skip the wake-up syscall, so a burst of messages costs one wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// Wakes an actor's event loop when mail arrives.
pub trait Wake: Send + Sync + std::fmt::Debug {
    /// Interrupts the actor's wait. Must be cheap and must not block.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        // A failed wake means the poll is gone, i.e. the actor has stopped: nothing to wake.
        let _ = mio::Waker::wake(self);
    }
}

impl<W: Wake + ?Sized> Wake for Arc<W> {
    fn wake(&self) {
        (**self).wake();
    }
}

/// A wake-up that coalesces: only the first send after the actor drained its mailbox wakes it.
#[derive(Debug)]
pub struct Notify {
    armed: AtomicBool,
    waker: Box<dyn Wake>,
}

impl Notify {
    /// A notifier that calls `waker` on the first message after each drain.
    pub fn new(waker: impl Wake + 'static) -> Arc<Self> {
        Arc::new(Notify { armed: AtomicBool::new(false), waker: Box::new(waker) })
    }

    fn notify(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Called by the receiver before it drains: later sends will wake it again.
    fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }
}

/// The sending side of an actor's mailbox. Cheap to clone; never blocks.
#[derive(Debug)]
pub struct Address<M> {
    tx: Sender<M>,
    notify: Option<Arc<Notify>>,
}

impl<M> Clone for Address<M> {
    fn clone(&self) -> Self {
        Address { tx: self.tx.clone(), notify: self.notify.clone() }
    }
}

impl<M> Address<M> {
    /// Sends `msg`. Returns it back if the actor has stopped (its mailbox is gone).
    pub fn send(&self, msg: M) -> Result<(), M> {
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        if let Some(n) = &self.notify {
            n.notify();
        }
        Ok(())
    }
}

/// The receiving side of an actor's mailbox.
#[derive(Debug)]
pub struct Mailbox<M> {
    rx: Receiver<M>,
    notify: Option<Arc<Notify>>,
}

/// Why [`Mailbox::try_recv`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    /// No mail right now.
    Empty,
    /// No mail, and every [`Address`] is dropped: no mail will ever come.
    Closed,
}

impl<M> Mailbox<M> {
    /// A mailbox whose owner blocks in [`Mailbox::recv`] (tests only: every actor here
    /// sleeps in an event loop and is woken through a [`Notify`]).
    #[cfg(test)]
    pub fn new() -> (Address<M>, Mailbox<M>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Address { tx, notify: None }, Mailbox { rx, notify: None })
    }

    /// A mailbox whose owner sleeps elsewhere (e.g. in `mio::Poll`) and is woken by `notify`.
    pub fn with_notify(notify: Arc<Notify>) -> (Address<M>, Mailbox<M>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Address { tx, notify: Some(notify.clone()) }, Mailbox { rx, notify: Some(notify) })
    }

    /// Prepares to drain: mail sent from now on wakes the owner again. Call before a round of
    /// [`Mailbox::try_recv`] so no message can slip in unnoticed.
    pub fn begin_drain(&self) {
        if let Some(n) = &self.notify {
            n.disarm();
        }
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next message, if one is waiting.
    pub fn try_recv(&self) -> Result<M, Empty> {
        self.rx.try_recv().map_err(|e| match e {
            TryRecvError::Empty => Empty::Empty,
            TryRecvError::Disconnected => Empty::Closed,
        })
    }

    /// Blocks for the next message; `None` once every [`Address`] is dropped and the mailbox
    /// is empty.
    #[cfg(test)]
    pub fn recv(&self) -> Option<M> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fifo_per_sender_under_concurrent_senders() {
        let (addr, mailbox) = Mailbox::<(usize, usize)>::new();
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    for i in 0..2_500 {
                        addr.send((s, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(addr);
        let mut next = [0usize; 4];
        let mut got = 0;
        while let Some((s, i)) = mailbox.recv() {
            assert_eq!(i, next[s], "sender {s} delivered out of order");
            next[s] += 1;
            got += 1;
        }
        for t in senders {
            t.join().unwrap();
        }
        assert_eq!(got, 10_000);
    }

    #[test]
    fn closes_when_every_address_is_dropped() {
        let (addr, mailbox) = Mailbox::<u32>::new();
        let second = addr.clone();
        addr.send(1).unwrap();
        drop(addr);
        assert_eq!(mailbox.try_recv(), Ok(1));
        assert_eq!(mailbox.try_recv(), Err(Empty::Empty), "one address is still alive");
        second.send(2).unwrap();
        drop(second);
        assert_eq!(mailbox.recv(), Some(2), "mail sent before the close is still delivered");
        assert_eq!(mailbox.recv(), None);
        assert_eq!(mailbox.try_recv(), Err(Empty::Closed));
    }

    #[test]
    fn sending_to_a_stopped_actor_returns_the_message() {
        let (addr, mailbox) = Mailbox::<String>::new();
        drop(mailbox);
        assert_eq!(addr.send("lost".into()), Err("lost".to_string()));
    }

    #[derive(Debug, Default)]
    struct CountingWake(Arc<AtomicUsize>);
    impl Wake for CountingWake {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_burst_costs_one_wake_until_the_owner_drains() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let (addr, mailbox) = Mailbox::<u8>::with_notify(Notify::new(CountingWake(wakes.clone())));
        for i in 0..100 {
            addr.send(i).unwrap();
        }
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        mailbox.begin_drain();
        while mailbox.try_recv().is_ok() {}
        addr.send(1).unwrap();
        assert_eq!(wakes.load(Ordering::SeqCst), 2, "mail after a drain wakes again");
    }
}
