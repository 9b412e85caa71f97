//! The live feed: news (chat, shouts, promotions) printed above the prompt while the player
//! sits at it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cmud::Game;
use replica_node::client::Client;
use rustyline::ExternalPrinter;

use crate::now_ms;
use crate::term::Output;

/// What the main thread and the live feed share.
pub(crate) struct Shared {
    pub game: Game<Client>,
    /// Since when the player has been at the prompt; `None` while a line is handled and its
    /// reply printed, so the live feed never prints into the middle of a reply.
    pub prompt_since: Option<Instant>,
}

/// How often the live feed polls the store.
const FEED_EVERY: Duration = Duration::from_millis(500);

/// How long the prompt must have been up before the live feed prints: by then rustyline is
/// reading in raw mode and redraws the prompt and the line being typed below the news.
const PROMPT_SETTLE: Duration = Duration::from_millis(100);

/// The live feed: a thread that polls the store for news while the player sits at the prompt
/// and prints it through rustyline's external printer. It uses the session's one feed (under
/// the lock the main thread takes for each line), so no message is shown twice.
pub(crate) struct LiveFeed {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl LiveFeed {
    pub(crate) fn start<P>(
        shared: Arc<Mutex<Shared>>,
        mut printer: P,
        out: Output,
    ) -> std::io::Result<LiveFeed>
    where
        P: ExternalPrinter + Send + 'static,
    {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new().name("cmud-feed".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FEED_EVERY) {
                let news = {
                    let mut s = lock(&shared);
                    if s.prompt_since.is_none_or(|t| t.elapsed() < PROMPT_SETTLE) {
                        continue;
                    }
                    // A failure is not worth a message: the next command reports it anyway.
                    match s.game.poll_feed(now_ms()) {
                        Ok(news) => news,
                        Err(_) => continue,
                    }
                };
                // Printed outside the lock: the printer may wait until the prompt takes the
                // message, and the main thread must not wait for that.
                if !news.items.is_empty() && printer.print(out.render(&news)).is_err() {
                    break;
                }
            }
        })?;
        Ok(LiveFeed { stop, thread })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
