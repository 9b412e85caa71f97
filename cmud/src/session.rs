//! A session's phases as types: [`Login`] → [`Playing`] ⇄ [`Battle`] → ended.
//!
//! Each phase is a struct holding exactly what that phase needs (no player before login, a
//! [`Fight`] only in battle). A handler consumes the phase and returns the next one with the
//! reply, so an impossible state (a battle without a player, say) cannot be written down.
//! [`Game`] holds a phase, the store and the dice, for drivers and tests.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::chat::Feed;
use crate::cmd::{self, BattleCommand, BattleNext, Command, Fight, Next};
use crate::keys::{Name, SessionId};
use crate::player::{Arrival, Ctx, Player};
use crate::reply::{Reply, Tone};
use crate::store::{Store, StoreError};
use crate::story;

/// Waiting for a name.
#[derive(Debug)]
pub struct Login {
    session: SessionId,
}

/// Logged in, outside battle.
#[derive(Debug)]
pub struct Playing {
    player: Player,
}

/// In battle with a problem.
#[derive(Debug)]
pub struct Battle {
    player: Player,
    fight: Fight,
}

/// The phase of a session.
#[derive(Debug)]
pub enum Phase {
    /// Waiting for a name.
    Login(Login),
    /// Playing.
    Playing(Playing),
    /// In battle.
    Battle(Battle),
    /// The player quit.
    Ended,
}

impl Phase {
    /// A new session, at the login.
    pub fn new(session: SessionId) -> Phase {
        Phase::Login(Login { session })
    }

    /// Handles one line of input.
    pub fn handle(self, line: &str, ctx: &mut Ctx<'_>) -> (Phase, Reply) {
        let (next, mut reply) = match self {
            Phase::Login(p) => p.handle(line, ctx),
            Phase::Playing(p) => p.handle(line, ctx),
            Phase::Battle(p) => p.handle(line, ctx),
            Phase::Ended => (Phase::Ended, Reply::say(Tone::Dim, "The session has ended.")),
        };
        for w in ctx.warnings.drain(..) {
            reply.add(Tone::Warn, format!("warning: {w}"));
        }
        (next, reply)
    }

    /// The player, once logged in.
    pub fn player(&self) -> Option<&Player> {
        match self {
            Phase::Playing(p) => Some(&p.player),
            Phase::Battle(p) => Some(&p.player),
            Phase::Login(_) | Phase::Ended => None,
        }
    }

    /// Whether the session is in battle.
    pub fn in_battle(&self) -> bool {
        matches!(self, Phase::Battle(_))
    }

    /// Whether the player quit.
    pub fn is_over(&self) -> bool {
        matches!(self, Phase::Ended)
    }

    /// The prompt to show.
    pub fn prompt(&self) -> String {
        match self {
            Phase::Login(_) => "Your name: ".into(),
            Phase::Playing(p) => format!("[{}] {}> ", p.player.place().id(), p.player.name()),
            Phase::Battle(b) => format!("[battle: {}] {}> ", b.fight.rank.title(), b.player.name()),
            Phase::Ended => "> ".into(),
        }
    }

    /// The command words valid now, for tab completion.
    pub fn words(&self) -> &'static [&'static str] {
        match self {
            Phase::Playing(_) => cmd::WORDS,
            Phase::Battle(_) => cmd::BATTLE_WORDS,
            Phase::Login(_) | Phase::Ended => &[],
        }
    }
}

impl Login {
    fn handle(self, line: &str, ctx: &mut Ctx<'_>) -> (Phase, Reply) {
        match line.trim().to_ascii_lowercase().as_str() {
            "quit" | "exit" => return (Phase::Ended, Reply::say(Tone::Plain, "Goodbye.")),
            "help" | "?" => {
                let text = format!(
                    "Type the name of your character: {} to {} letters, digits or _, starting with a letter. \
                     A new name creates a character; a known one logs back in. `quit` leaves.",
                    Name::MIN_LEN,
                    Name::MAX_LEN
                );
                return (Phase::Login(self), Reply::say(Tone::Plain, text));
            }
            _ => {}
        }
        let name = match Name::parse(line) {
            Ok(n) => n,
            Err(e) => {
                return (Phase::Login(self), Reply::say(Tone::Bad, format!("That name won't do: {e}.")));
            }
        };
        match Player::login(name, self.session, ctx) {
            Ok(Arrival::Created(player)) => {
                let reply = story::intro(player.name());
                (Phase::Playing(Playing { player }), reply)
            }
            Ok(Arrival::Returned(player)) => {
                let reply = story::welcome_back(player.name(), player.place());
                (Phase::Playing(Playing { player }), reply)
            }
            Ok(Arrival::Reequipped(player)) => {
                let mut reply = story::welcome_back(player.name(), player.place());
                reply.add(Tone::Warn, "Your rig is gone. A kind TA lends you a spare cpu to start again.");
                (Phase::Playing(Playing { player }), reply)
            }
            Err(e) => (Phase::Login(self), cmd::store_error(&e)),
        }
    }
}

impl Playing {
    fn handle(mut self, line: &str, ctx: &mut Ctx<'_>) -> (Phase, Reply) {
        if line.trim().is_empty() {
            return (Phase::Playing(self), Reply::new());
        }
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => return (Phase::Playing(self), Reply::say(Tone::Bad, e.to_string())),
        };
        let result = command.apply(&mut self.player, ctx);
        self.player.touch(ctx);
        match result {
            Ok((reply, Next::Stay)) => (Phase::Playing(self), reply),
            Ok((reply, Next::Battle(fight))) => (Phase::Battle(Battle { player: self.player, fight }), reply),
            Ok((reply, Next::Quit)) => (Phase::Ended, reply),
            Err(e) => (Phase::Playing(self), cmd::store_error(&e)),
        }
    }
}

impl Battle {
    fn handle(mut self, line: &str, ctx: &mut Ctx<'_>) -> (Phase, Reply) {
        if line.trim().is_empty() {
            return (Phase::Battle(self), Reply::new());
        }
        let command = match BattleCommand::parse(line) {
            Ok(c) => c,
            Err(e) => return (Phase::Battle(self), Reply::say(Tone::Bad, e.to_string())),
        };
        let result = command.apply(self.fight, &mut self.player, ctx);
        self.player.touch(ctx);
        match result {
            Ok((reply, BattleNext::Stay(fight))) => (Phase::Battle(Battle { fight, ..self }), reply),
            Ok((reply, BattleNext::Leave)) => (Phase::Playing(Playing { player: self.player }), reply),
            Ok((reply, BattleNext::Quit)) => (Phase::Ended, reply),
            Err(e) => (Phase::Battle(self), cmd::store_error(&e)),
        }
    }
}

/// A whole session: the phase, the store, the dice and the feed.
///
/// ```
/// use cmud::{Game, MemStore, SessionId};
///
/// let mut game = Game::new(MemStore::new(), SessionId(1), 42);
/// let welcome = game.input("ada", 0);
/// assert!(welcome.text().contains("Welcome, ada"));
/// assert!(game.input("mine 10", 1).text().contains("You mine 10 times"));
/// ```
#[derive(Debug)]
pub struct Game<S> {
    store: S,
    rng: StdRng,
    phase: Phase,
    session: SessionId,
    feed: Option<Feed>,
}

impl<S: Store> Game<S> {
    /// A session with id `session` (unique among all sessions ever) whose dice are seeded with
    /// `seed`.
    pub fn new(store: S, session: SessionId, seed: u64) -> Game<S> {
        Game { store, rng: StdRng::seed_from_u64(seed), phase: Phase::new(session), session, feed: None }
    }

    /// Handles one line typed at time `now_ms` (milliseconds since the Unix epoch).
    pub fn input(&mut self, line: &str, now_ms: u64) -> Reply {
        let phase = std::mem::replace(&mut self.phase, Phase::Ended);
        let mut ctx = Ctx::new(&self.store, &mut self.rng, now_ms);
        let (next, reply) = phase.handle(line, &mut ctx);
        self.phase = next;
        if self.feed.is_none() && self.phase.player().is_some() {
            self.feed = Some(Feed::new(self.session, now_ms));
        }
        reply
    }

    /// New chat messages and events for this player (empty before login).
    pub fn poll_feed(&mut self, now_ms: u64) -> Result<Reply, StoreError> {
        let (Some(feed), Some(player)) = (self.feed.as_mut(), self.phase.player()) else {
            return Ok(Reply::new());
        };
        let mut r = Reply::new();
        for line in feed.poll(&self.store, now_ms, player.place())? {
            r.push(line);
        }
        Ok(r)
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// This session's id.
    pub fn session(&self) -> SessionId {
        self.session
    }
}
