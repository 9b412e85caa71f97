//! `SCAN` cursors of one query actor: a cursor is a resume point remembered by the actor that
//! handed it out, so a cursor is valid on that actor only, and the oldest expire first.

use std::collections::VecDeque;

use bytes::Bytes;

/// How many `SCAN` cursors an actor remembers; older ones expire.
pub const MAX_CURSORS: usize = 1_024;

/// The resume points of the cursors an actor handed out, oldest first.
#[derive(Debug)]
pub struct Cursors {
    saved: VecDeque<(u64, Bytes)>,
    next: u64,
}

impl Default for Cursors {
    fn default() -> Self {
        Cursors { saved: VecDeque::new(), next: 1 }
    }
}

impl Cursors {
    /// Remembers where a `SCAN` stopped; returns the cursor to hand to the client.
    pub fn save(&mut self, resume_after: Bytes) -> u64 {
        let id = self.next;
        // Cursor 0 means "start" (and "done" in replies): never hand it out.
        self.next = self.next.checked_add(1).unwrap_or(1);
        if self.saved.len() == MAX_CURSORS {
            self.saved.pop_front();
        }
        self.saved.push_back((id, resume_after));
        id
    }

    /// The resume point of a cursor handed out earlier, unless it expired.
    pub fn resume_point(&self, id: u64) -> Option<Bytes> {
        self.saved.iter().find(|(c, _)| *c == id).map(|(_, k)| k.clone())
    }
}
