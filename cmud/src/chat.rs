//! Chat and the message feed.
//!
//! A message is one key written once by its sender's session:
//! `cmud/v1/chat/<minute>/<ms>-<session>-<seq>`. Grouping by minute lets a reader list only the
//! last few minutes instead of the whole history. `say` reaches the players at the sender's
//! place, `shout` and game events (a new player, a solved problem) reach everyone.
//!
//! A [`Feed`] remembers which keys it has shown, so it survives clock skew between players
//! (a late message with an older time is still shown once) as long as it arrives within the
//! window it lists: the previous, current and next minute.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::keys::{self, SessionId};
use crate::reply::{Line, Tone};
use crate::rules::Place;
use crate::store::{Store, StoreError};

/// The longest message, in characters.
pub const MAX_TEXT: usize = 200;

/// Who hears a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Players at the same place.
    Say,
    /// Everyone.
    Shout,
    /// Everyone: something happened in the game.
    Event,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's name.
    pub from: String,
    /// Who hears it.
    pub kind: Kind,
    /// The sender's place id.
    pub place: String,
    /// What was said.
    pub text: String,
    /// When (the sender's clock).
    pub at_ms: u64,
}

impl Message {
    /// How a listener at `here` sees it, or `None` if it is not for them.
    pub fn render(&self, here: Place) -> Option<Line> {
        let place = Place::parse(&self.place);
        match self.kind {
            Kind::Say if place == Some(here) => {
                Some(Line::new().push(Tone::Name, &self.from).plain(" says: ").push(Tone::Chat, &self.text))
            }
            Kind::Say => None,
            Kind::Shout => {
                let from = place.map_or_else(|| "somewhere".to_owned(), |p| p.title());
                Some(
                    Line::new()
                        .push(Tone::Name, &self.from)
                        .plain(" shouts from ")
                        .push(Tone::Place, from)
                        .plain(": ")
                        .push(Tone::Chat, &self.text),
                )
            }
            Kind::Event => Some(Line::new().push(Tone::Dim, "* ").push(Tone::Good, &self.text)),
        }
    }
}

/// Stores a message.
pub fn post(store: &dyn Store, session: SessionId, seq: u32, msg: &Message) -> Result<(), StoreError> {
    let value = serde_json::to_vec(msg).unwrap_or_default();
    store.put(&keys::chat(msg.at_ms, session, seq), &value)
}

/// New messages for one session.
#[derive(Debug, Clone)]
pub struct Feed {
    session: SessionId,
    since_ms: u64,
    shown: BTreeSet<String>,
}

impl Feed {
    /// A feed for `session` that shows messages sent from `since_ms` on.
    pub fn new(session: SessionId, since_ms: u64) -> Feed {
        Feed { session, since_ms, shown: BTreeSet::new() }
    }

    /// The messages that arrived since the last poll, for a listener at `here`. The session's
    /// own messages are left out (the session already showed them as replies).
    pub fn poll(&mut self, store: &dyn Store, now_ms: u64, here: Place) -> Result<Vec<Line>, StoreError> {
        let minute = now_ms / 60_000;
        let first = minute.saturating_sub(1);
        let mut lines = Vec::new();
        for m in first..=minute + 1 {
            for (key, value) in store.list(&keys::chat_minute(m))? {
                if self.shown.contains(&key) {
                    continue;
                }
                self.shown.insert(key.clone());
                let Some(sender) = sender_of(&key) else {
                    lines.push(warning(&format!("ignored a chat message with a bad key: {key:?}")));
                    continue;
                };
                if sender == self.session {
                    continue;
                }
                match serde_json::from_slice::<Message>(&value) {
                    Ok(msg) if msg.at_ms < self.since_ms => {}
                    Ok(msg) => lines.extend(msg.render(here)),
                    Err(e) => lines.push(warning(&format!("ignored a bad stored value at {key}: {e}"))),
                }
            }
        }
        // Forget what no later poll will list again.
        let oldest = keys::chat_minute(first);
        self.shown = self.shown.split_off(&oldest);
        Ok(lines)
    }
}

fn warning(text: &str) -> Line {
    Line::new().push(Tone::Warn, format!("warning: {text}"))
}

/// The session id in a message key `…/<ms>-<session>-<seq>`.
fn sender_of(key: &str) -> Option<SessionId> {
    let tail = key.rsplit('/').next()?;
    let mut parts = tail.split('-');
    let (ms, id, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ms.parse::<u64>().is_err() || seq.parse::<u32>().is_err() {
        return None;
    }
    SessionId::parse(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn msg(from: &str, kind: Kind, place: Place, text: &str, at_ms: u64) -> Message {
        Message { from: from.into(), kind, place: place.id(), text: text.into(), at_ms }
    }

    #[test]
    fn feed_shows_each_message_once_to_the_right_listeners() {
        let s = MemStore::new();
        let (me, other) = (SessionId(1), SessionId(2));
        let t = 10 * 60_000;
        post(&s, other, 1, &msg("bob", Kind::Say, Place::Gates(5), "old news", t - 10)).unwrap();
        let mut feed = Feed::new(me, t);
        post(&s, other, 2, &msg("bob", Kind::Say, Place::Gates(5), "hi", t + 1)).unwrap();
        post(&s, other, 3, &msg("bob", Kind::Say, Place::Fence, "elsewhere", t + 2)).unwrap();
        post(&s, other, 4, &msg("bob", Kind::Shout, Place::Fence, "HELLO", t + 3)).unwrap();
        post(&s, me, 1, &msg("ada", Kind::Say, Place::Gates(5), "my own", t + 4)).unwrap();
        let lines: Vec<String> =
            feed.poll(&s, t + 5, Place::Gates(5)).unwrap().iter().map(Line::text).collect();
        assert_eq!(lines, ["bob says: hi", "bob shouts from The Fence: HELLO"]);
        assert!(feed.poll(&s, t + 6, Place::Gates(5)).unwrap().is_empty());
        // A message stamped a little in the past (clock skew) still arrives once.
        post(&s, other, 5, &msg("bob", Kind::Event, Place::Fence, "bob did a thing", t - 5)).unwrap();
        let lines = feed.poll(&s, t + 7, Place::Fence).unwrap();
        assert_eq!(lines.len(), 0, "older than the feed's start");
        post(&s, other, 6, &msg("bob", Kind::Event, Place::Fence, "bob did a thing", t + 8)).unwrap();
        assert_eq!(feed.poll(&s, t + 9, Place::Fence).unwrap()[0].text(), "* bob did a thing");
        // A hostile value is reported, not shown raw.
        s.put(&keys::chat(t + 10, other, 7), b"\x1b[2J").unwrap();
        let lines = feed.poll(&s, t + 11, Place::Fence).unwrap();
        assert!(lines[0].text().starts_with("warning: ignored a bad stored value"), "{lines:?}");
        // Minutes later the old keys are forgotten.
        assert!(feed.poll(&s, t + 5 * 60_000, Place::Fence).unwrap().is_empty());
        assert!(feed.shown.is_empty());
    }
}
