//! A logged-in player as one session sees it, and the shared facts about every player (where
//! they are, when they were last seen).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::chat::{self, Kind, Message};
use crate::keys::{self, LedgerId, Name, SessionId};
use crate::ledger::{self, Holdings, Ledger};
use crate::problem;
use crate::rules::{Hardware, Place, Rank};
use crate::store::{Store, StoreError};

/// What a command may use: the store, the dice, the time, and a place to leave warnings about
/// bad stored values (shown after the reply).
pub struct Ctx<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// The game's random numbers (seeded by `--seed`).
    pub rng: &'a mut StdRng,
    /// Wall-clock milliseconds since the Unix epoch, given by the driver.
    pub now_ms: u64,
    /// Problems with stored values met while handling the input.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("now_ms", &self.now_ms)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl<'a> Ctx<'a> {
    /// A context for one input.
    pub fn new(store: &'a dyn Store, rng: &'a mut StdRng, now_ms: u64) -> Ctx<'a> {
        Ctx { store, rng, now_ms, warnings: Vec::new() }
    }
}

/// Where a player is, and since when (the newest move wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The place.
    pub place: Place,
    /// When the player moved there.
    pub at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct PlacedRecord {
    place: String,
    at_ms: u64,
}

impl Placed {
    fn encode(self) -> Vec<u8> {
        serde_json::to_vec(&PlacedRecord { place: self.place.id(), at_ms: self.at_ms }).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Placed, String> {
        let r: PlacedRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let place = Place::parse(&r.place).ok_or_else(|| format!("unknown place {:?}", r.place))?;
        Ok(Placed { place, at_ms: r.at_ms })
    }
}

#[derive(Serialize, Deserialize)]
struct Profile {
    created_ms: u64,
}

/// One session's player: the name, this session's own ledger and counters, and the place.
#[derive(Debug)]
pub struct Player {
    name: Name,
    session: SessionId,
    ledger: Ledger,
    placed: Placed,
    /// This session's damage per (rank, epoch) of a problem.
    damage: BTreeMap<(Rank, u64), u64>,
    chat_seq: u32,
}

/// How a login went.
#[derive(Debug)]
pub enum Arrival {
    /// A new character was created.
    Created(Player),
    /// An existing character was loaded.
    Returned(Player),
    /// An existing character was loaded that had no hardware at all (its starting kit's record
    /// was missing): it got the starting cpu back, as after a wipe-out, rather than mine with
    /// no power.
    Reequipped(Player),
}

impl Player {
    /// Loads `name`, creating the character if it does not exist yet.
    pub fn login(name: Name, session: SessionId, ctx: &mut Ctx<'_>) -> Result<Arrival, StoreError> {
        let exists = ctx.store.get(&keys::profile(&name))?.is_some();
        let mut player = Player {
            name,
            session,
            ledger: Ledger::default(),
            placed: Placed { place: Place::START, at_ms: 0 },
            damage: BTreeMap::new(),
            chat_seq: 0,
        };
        if exists {
            player.refresh_place(ctx)?;
            player.touch(ctx);
            if player.holdings(ctx)?.units() == 0 {
                player.reequip(ctx)?;
                return Ok(Arrival::Reequipped(player));
            }
            return Ok(Arrival::Returned(player));
        }
        // The starting kit goes to a key shared by every creator with the same bytes, so a
        // character created from two terminals at once still gets one cpu.
        ctx.store.put(&keys::ledger(&player.name, LedgerId::Genesis), &Ledger::genesis().encode())?;
        player.move_to(Place::START, ctx)?;
        let profile = serde_json::to_vec(&Profile { created_ms: ctx.now_ms }).unwrap_or_default();
        // The profile last: its presence means the character is complete.
        ctx.store.put(&keys::profile(&player.name), &profile)?;
        player.touch(ctx);
        let text = format!("{} enrolls at the university.", player.name);
        player.post(Kind::Event, &text, ctx)?;
        Ok(Arrival::Created(player))
    }

    /// Gives a character with no hardware the starting cpu back: the starting kit again if its
    /// record is missing (the same bytes every creator writes, so two sessions doing this at
    /// once still give one cpu), else a spare cpu in this session's ledger.
    fn reequip(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StoreError> {
        let genesis = keys::ledger(&self.name, LedgerId::Genesis);
        if ctx.store.get(&genesis)?.is_none() {
            ctx.store.put(&genesis, &Ledger::genesis().encode())
        } else {
            self.record(ctx, |l| l.gain(Hardware::Cpu, 1))
        }
    }

    /// The player's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// This session's id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// This session's own ledger (what it has added to the player's totals).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Where the player is, as this session knows it.
    pub fn place(&self) -> Place {
        self.placed.place
    }

    /// The player's holdings: every ledger summed, this session's own from memory.
    pub fn holdings(&self, ctx: &mut Ctx<'_>) -> Result<Holdings, StoreError> {
        ledger::read_holdings(ctx.store, &self.name, Some((self.session, &self.ledger)), &mut ctx.warnings)
    }

    /// Changes this session's ledger with `change` and stores it in one write. If the write
    /// fails, the change is forgotten here (the next write stores the totals without it).
    pub fn record(&mut self, ctx: &mut Ctx<'_>, change: impl FnOnce(&mut Ledger)) -> Result<(), StoreError> {
        let mut next = self.ledger.clone();
        change(&mut next);
        ctx.store.put(&keys::ledger(&self.name, LedgerId::Session(self.session)), &next.encode())?;
        self.ledger = next;
        Ok(())
    }

    /// Adopts the stored place if another session of this player moved more recently.
    pub fn refresh_place(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StoreError> {
        let key = keys::place(&self.name);
        match ctx.store.get(&key)? {
            None => {}
            Some(bytes) => match Placed::decode(&bytes) {
                Ok(p) if p.at_ms > self.placed.at_ms => self.placed = p,
                Ok(_) => {}
                Err(e) => ctx.warnings.push(format!("ignored a bad stored value at {key}: {e}")),
            },
        }
        Ok(())
    }

    /// Moves the player.
    pub fn move_to(&mut self, place: Place, ctx: &mut Ctx<'_>) -> Result<(), StoreError> {
        // Strictly newer than what this session knew, even if the clock stepped back.
        let placed = Placed { place, at_ms: ctx.now_ms.max(self.placed.at_ms.saturating_add(1)) };
        ctx.store.put(&keys::place(&self.name), &placed.encode())?;
        self.placed = placed;
        Ok(())
    }

    /// Records that the player is active now. Best effort: a failure only makes `who` stale.
    pub fn touch(&self, ctx: &mut Ctx<'_>) {
        let _ = ctx.store.put(&keys::seen(&self.name), ctx.now_ms.to_string().as_bytes());
    }

    /// This session's damage in one epoch of a rank's problem.
    pub fn damage(&self, rank: Rank, epoch: u64) -> u64 {
        self.damage.get(&(rank, epoch)).copied().unwrap_or(0)
    }

    /// This session's damage per (rank, epoch).
    pub fn damage_map(&self) -> &BTreeMap<(Rank, u64), u64> {
        &self.damage
    }

    /// Adds damage to a problem epoch (this session's counter).
    pub fn add_damage(
        &mut self,
        rank: Rank,
        epoch: u64,
        amount: u64,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StoreError> {
        let total = self.damage(rank, epoch).saturating_add(amount);
        problem::write_damage(ctx.store, rank, epoch, self.session, total)?;
        self.damage.insert((rank, epoch), total);
        Ok(())
    }

    /// Posts a chat message or an event from this player at their place.
    pub fn post(&mut self, kind: Kind, text: &str, ctx: &mut Ctx<'_>) -> Result<(), StoreError> {
        let msg = Message {
            from: self.name.to_string(),
            kind,
            place: self.place().id(),
            text: text.to_owned(),
            at_ms: ctx.now_ms,
        };
        self.chat_seq = self.chat_seq.wrapping_add(1);
        chat::post(ctx.store, self.session, self.chat_seq, &msg)
    }
}

/// What everyone shares about a player: where they are and when they last acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whereabouts {
    /// The player.
    pub name: Name,
    /// Their place (the start if never stored).
    pub place: Place,
    /// Their last command, if known.
    pub seen_ms: Option<u64>,
}

/// Every player with a place or a last-seen time, by name. Bad entries are skipped with a
/// warning.
pub fn roster(ctx: &mut Ctx<'_>) -> Result<BTreeMap<Name, Whereabouts>, StoreError> {
    let mut out: BTreeMap<Name, Whereabouts> = BTreeMap::new();
    let places = ctx.store.list(&keys::places())?;
    let seens = ctx.store.list(&keys::seens())?;
    fn entry(out: &mut BTreeMap<Name, Whereabouts>, name: Name) -> &mut Whereabouts {
        out.entry(name.clone()).or_insert(Whereabouts { name, place: Place::START, seen_ms: None })
    }
    for (key, value) in &places {
        let tail = key.strip_prefix(&keys::places()).unwrap_or(key);
        let Some(name) = Name::from_key(tail) else {
            ctx.warnings.push(format!("ignored a place stored under a bad name: {key:?}"));
            continue;
        };
        match Placed::decode(value) {
            Ok(p) => entry(&mut out, name).place = p.place,
            Err(e) => ctx.warnings.push(format!("ignored a bad stored value at {key}: {e}")),
        }
    }
    for (key, value) in &seens {
        let tail = key.strip_prefix(&keys::seens()).unwrap_or(key);
        let Some(name) = Name::from_key(tail) else {
            ctx.warnings.push(format!("ignored a time stored under a bad name: {key:?}"));
            continue;
        };
        match std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(ms) => entry(&mut out, name).seen_ms = Some(ms),
            None => {
                ctx.warnings.push(format!("ignored a bad stored value at {key}: not a time in milliseconds"))
            }
        }
    }
    Ok(out)
}
