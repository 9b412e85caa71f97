//! The key schema: every key the game reads or writes, in one place.
//!
//! All keys live under [`ROOT`] (`cmud/v1/`), so the game shares a store with other users and a
//! future schema can live beside this one. Player names ([`Name`]) are `[a-z][a-z0-9_]{2,15}`
//! after case folding and never contain `/`, so
//!
//! - a player's keys are all under `cmud/v1/player/<name>/`, and that prefix, ending in a
//!   separator a name cannot contain, never matches another player's keys (`bob` never lists
//!   `bobby`'s);
//! - a name is always one whole path segment below a fixed word (`player`, `place`, `seen`), so
//!   no name, `phd` included, can land on a problem or chat key.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `cmud/v1/player/<name>/profile` | JSON `{"created_ms"}` | the session that created the character |
//! | `cmud/v1/player/<name>/ledger/<id>` | JSON [`Ledger`](crate::Ledger): coins, hardware, rank | only session `<id>` (`genesis`: the starting kit, same bytes from every creator) |
//! | `cmud/v1/place/<name>` | JSON `{"place","at_ms"}` | any session of `<name>` (last move wins) |
//! | `cmud/v1/seen/<name>` | decimal milliseconds of the last command | any session of `<name>` |
//! | `cmud/v1/problem/<rank>/solved/<epoch>` | JSON `{"by","at_ms"}` | the solver of that epoch |
//! | `cmud/v1/problem/<rank>/epoch/<epoch>/damage/<id>` | decimal damage dealt by session `<id>` in that epoch | only session `<id>` |
//! | `cmud/v1/chat/<minute>/<ms>-<id>-<seq>` | JSON [`Message`](crate::Message) | only session `<id>` |
//!
//! `<rank>` is a rank's slug (`undergraduate` … `professor`), `<epoch>` a zero-padded decimal
//! (10 digits), `<id>` a session id (16 lowercase hex digits), `<minute>` the message time in
//! whole minutes since the Unix epoch (10 digits), `<ms>` its milliseconds (13 digits) and
//! `<seq>` the session's message counter (6 digits). Padding keeps the store's sorted listings
//! in time order.

use std::fmt;

use crate::rules::Rank;

/// The namespace of every key of this schema.
pub const ROOT: &str = "cmud/v1/";

/// A validated, case-folded player name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was typed.
    #[error("a name cannot be empty")]
    Empty,
    /// Too short or too long.
    #[error("a name has {min} to {max} characters; {len} is not allowed", min = Name::MIN_LEN, max = Name::MAX_LEN)]
    Length {
        /// The length given.
        len: usize,
    },
    /// The first character is not a letter.
    #[error("a name starts with a letter (a-z)")]
    Start,
    /// A character outside `a-z`, `0-9`, `_`.
    #[error("{0:?} cannot be part of a name: use letters a-z, digits and _")]
    Char(char),
    /// A word the login prompt understands as a command.
    #[error("{0:?} is a command at the name prompt, not a name")]
    Reserved(&'static str),
}

impl Name {
    /// The shortest name allowed.
    pub const MIN_LEN: usize = 3;
    /// The longest name allowed.
    pub const MAX_LEN: usize = 16;
    /// Words the name prompt takes as commands.
    pub const RESERVED: [&'static str; 3] = ["quit", "exit", "help"];

    /// Validates `input` (surrounding spaces ignored, case folded: `Ada` is `ada`).
    pub fn parse(input: &str) -> Result<Name, NameError> {
        let folded = input.trim().to_ascii_lowercase();
        let Some(first) = folded.chars().next() else { return Err(NameError::Empty) };
        if let Some(bad) =
            folded.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(NameError::Char(bad));
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::Start);
        }
        // All characters are ASCII here, so bytes are characters.
        if !(Name::MIN_LEN..=Name::MAX_LEN).contains(&folded.len()) {
            return Err(NameError::Length { len: folded.len() });
        }
        if let Some(word) = Name::RESERVED.iter().find(|w| **w == folded) {
            return Err(NameError::Reserved(word));
        }
        Ok(Name(folded))
    }

    /// A name as it appears in a key: valid and already folded, or `None`.
    pub fn from_key(segment: &str) -> Option<Name> {
        Name::parse(segment).ok().filter(|n| n.0 == segment)
    }

    /// The name as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one session (one terminal playing). Each session is the only writer of its own
/// ledger, damage and chat keys, which is what makes concurrent sessions safe; so ids must be
/// unique, and the binary draws them from OS entropy, never from `--seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    /// Parses the key form (exactly 16 lowercase hex digits).
    pub fn parse(s: &str) -> Option<SessionId> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(SessionId)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Who wrote a ledger: one session, or the shared starting kit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LedgerId {
    /// `genesis`: the starting kit. Every session that creates the character writes the same
    /// bytes here, so two concurrent creations give one kit, not two.
    Genesis,
    /// A session's own ledger.
    Session(SessionId),
}

impl LedgerId {
    /// Parses the last segment of a ledger key.
    pub fn parse(s: &str) -> Option<LedgerId> {
        if s == "genesis" { Some(LedgerId::Genesis) } else { SessionId::parse(s).map(LedgerId::Session) }
    }
}

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerId::Genesis => f.write_str("genesis"),
            LedgerId::Session(id) => id.fmt(f),
        }
    }
}

/// `cmud/v1/player/`: every player's keys.
pub fn players() -> String {
    format!("{ROOT}player/")
}

/// `cmud/v1/player/<name>/`: all of one player's keys.
pub fn player(name: &Name) -> String {
    format!("{ROOT}player/{name}/")
}

/// The character's profile; present once the character exists.
pub fn profile(name: &Name) -> String {
    format!("{ROOT}player/{name}/profile")
}

/// Prefix of a player's ledgers.
pub fn ledgers(name: &Name) -> String {
    format!("{ROOT}player/{name}/ledger/")
}

/// One ledger of a player.
pub fn ledger(name: &Name, id: LedgerId) -> String {
    format!("{ROOT}player/{name}/ledger/{id}")
}

/// Prefix of every player's place.
pub fn places() -> String {
    format!("{ROOT}place/")
}

/// A player's place.
pub fn place(name: &Name) -> String {
    format!("{ROOT}place/{name}")
}

/// Prefix of every player's last-seen time.
pub fn seens() -> String {
    format!("{ROOT}seen/")
}

/// When a player last gave a command.
pub fn seen(name: &Name) -> String {
    format!("{ROOT}seen/{name}")
}

/// Prefix of the solved markers of a rank's problem.
pub fn solved_markers(rank: Rank) -> String {
    format!("{ROOT}problem/{}/solved/", rank.slug())
}

/// The marker that epoch `epoch` of a rank's problem was solved.
pub fn solved(rank: Rank, epoch: u64) -> String {
    format!("{ROOT}problem/{}/solved/{epoch:010}", rank.slug())
}

/// Prefix of the damage counters of one epoch of a rank's problem.
pub fn damages(rank: Rank, epoch: u64) -> String {
    format!("{ROOT}problem/{}/epoch/{epoch:010}/damage/", rank.slug())
}

/// One session's damage counter in one epoch of a rank's problem.
pub fn damage(rank: Rank, epoch: u64, id: SessionId) -> String {
    format!("{ROOT}problem/{}/epoch/{epoch:010}/damage/{id}", rank.slug())
}

/// Prefix of the chat messages of one minute.
pub fn chat_minute(minute: u64) -> String {
    format!("{ROOT}chat/{minute:010}/")
}

/// One chat message.
pub fn chat(at_ms: u64, id: SessionId, seq: u32) -> String {
    format!("{ROOT}chat/{:010}/{at_ms:013}-{id}-{seq:06}", at_ms / 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_folded() {
        assert_eq!(Name::parse("  Ada ").unwrap().as_str(), "ada");
        assert_eq!(Name::parse("r2_d2").unwrap().as_str(), "r2_d2");
        assert_eq!(Name::parse("abcdefghijklmnop").unwrap().as_str().len(), 16);
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse("   "), Err(NameError::Empty));
        assert_eq!(Name::parse("ab"), Err(NameError::Length { len: 2 }));
        assert_eq!(Name::parse("abcdefghijklmnopq"), Err(NameError::Length { len: 17 }));
        assert_eq!(Name::parse("1abc"), Err(NameError::Start));
        assert_eq!(Name::parse("_abc"), Err(NameError::Start));
        assert_eq!(Name::parse("bob/x"), Err(NameError::Char('/')));
        assert_eq!(Name::parse("bo b"), Err(NameError::Char(' ')));
        assert_eq!(Name::parse("bob*"), Err(NameError::Char('*')));
        assert_eq!(Name::parse("zoë"), Err(NameError::Char('ë')));
        assert!(Name::parse("x\u{1b}[31m").is_err());
        assert_eq!(Name::parse("Quit"), Err(NameError::Reserved("quit")));
        assert!(Name::parse("quitter").is_ok());
        // The error texts say what is allowed.
        assert!(NameError::Length { len: 2 }.to_string().contains("3 to 16"));
    }

    #[test]
    fn a_player_prefix_never_covers_another_player() {
        let bob = Name::parse("bob").unwrap();
        let bobby = Name::parse("bobby").unwrap();
        assert!(!profile(&bobby).starts_with(&player(&bob)));
        assert!(!ledger(&bobby, LedgerId::Genesis).starts_with(&ledgers(&bob)));
        // A name that spells a rank stays under `player/`, away from the problems.
        let phd = Name::parse("PhD").unwrap();
        assert!(player(&phd).starts_with("cmud/v1/player/"));
        assert!(!solved(Rank::PhD, 0).starts_with(&player(&phd)));
        assert!(!player(&phd).starts_with(&solved_markers(Rank::PhD)));
    }

    #[test]
    fn ids_round_trip() {
        let id = SessionId(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(SessionId::parse("DEADBEEF00000000"), None);
        assert_eq!(SessionId::parse("123"), None);
        assert_eq!(LedgerId::parse("genesis"), Some(LedgerId::Genesis));
        assert_eq!(LedgerId::parse("x"), None);
        assert_eq!(chat(61_000, id, 7), "cmud/v1/chat/0000000001/0000000061000-00000000deadbeef-000007");
        assert!(chat(61_000, id, 7).starts_with(&chat_minute(1)));
        assert_eq!(
            damage(Rank::Masters, 3, id),
            "cmud/v1/problem/masters/epoch/0000000003/damage/00000000deadbeef"
        );
    }
}
