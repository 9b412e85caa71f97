//! Counters that concurrent sessions cannot lose: a counter CRDT on top of the LWW map.
//!
//! The store resolves concurrent writes to one key by last-writer-wins, so a balance kept in one
//! key would lose coins whenever two sessions (say, one player in two terminals on two servers)
//! each read it, add their earnings and write it back: one of the two writes is dropped.
//!
//! Instead every session keeps its own [`Ledger`] under
//! `cmud/v1/player/<name>/ledger/<session-id>`, and only that session ever writes it. A ledger
//! holds running totals that only grow: coins earned and spent, units of each hardware kind
//! gained and lost, and the highest rank reached. A player's state ([`Holdings`]) is the sum of
//! all their ledgers (the max, for the rank), read with one `LIST` of the prefix. Because each
//! key has a single writer, last-writer-wins never has to choose between two sessions, and since
//! the totals only grow, a reader that sees an older ledger of some session sees a smaller, never
//! a wrong, contribution. This is the classic PN-counter, one register per writer.
//!
//! A session keeps its own ledger in memory and lays it over whatever the store returns for its
//! key, so it always sees its own writes even when its next query goes to a replica that has not
//! received the last one yet.
//!
//! Limits, by design:
//! - **Overdraft.** A session may spend only what the balance it reads allows, but two sessions
//!   on two servers can each spend the same coins before either sees the other's spending. The
//!   balance is then negative: it is shown as a debt, nothing can be bought until mining has
//!   repaid it, and no coin earned is ever lost. The same holds for hardware: two breakages at
//!   once can take a kind below zero; power counts it as zero and later purchases repay it.
//! - **Growth.** Every session adds one ledger key per player, kept forever, so a `LIST` reads one
//!   small value per session ever played. Folding old ledgers into one needs coordination the
//!   store does not offer (two sessions folding the same ledgers would count them twice), so it
//!   is left out.
//! - **Failover.** A session that fails over to another server keeps writing its whole totals, so
//!   if clock skew lets an older write of its key win, the session's next write repairs it.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::keys::{self, LedgerId, Name, SessionId};
use crate::rules::{Hardware, Rank};
use crate::store::{Store, StoreError};

/// Two running totals that only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct Tally {
    /// Added so far.
    pub gained: u64,
    /// Taken away so far.
    pub lost: u64,
}

impl From<(u64, u64)> for Tally {
    fn from((gained, lost): (u64, u64)) -> Tally {
        Tally { gained, lost }
    }
}

impl From<Tally> for (u64, u64) {
    fn from(t: Tally) -> (u64, u64) {
        (t.gained, t.lost)
    }
}

/// One session's contribution to a player's state. Stored as JSON, for example
/// `{"coins":[120,45],"hardware":{"cpu":[45,3]},"rank":1}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Coins earned (mining) and spent (buying).
    #[serde(default)]
    pub coins: Tally,
    /// Units gained (buying, the starting kit, the spare after a wipe-out) and lost (breakage).
    #[serde(default)]
    pub hardware: BTreeMap<Hardware, Tally>,
    /// The highest rank this session promoted the player to.
    #[serde(default)]
    pub rank: Rank,
}

impl Ledger {
    /// The starting kit of every new character: one cpu.
    pub fn genesis() -> Ledger {
        let mut l = Ledger::default();
        l.gain(Hardware::Cpu, 1);
        l
    }

    /// Adds earned coins.
    pub fn earn(&mut self, coins: u64) {
        self.coins.gained = self.coins.gained.saturating_add(coins);
    }

    /// Adds spent coins.
    pub fn spend(&mut self, coins: u64) {
        self.coins.lost = self.coins.lost.saturating_add(coins);
    }

    /// Adds units of a kind.
    pub fn gain(&mut self, hw: Hardware, n: u64) {
        let t = self.hardware.entry(hw).or_default();
        t.gained = t.gained.saturating_add(n);
    }

    /// Removes units of a kind.
    pub fn lose(&mut self, hw: Hardware, n: u64) {
        let t = self.hardware.entry(hw).or_default();
        t.lost = t.lost.saturating_add(n);
    }

    /// Raises the rank (never lowers it).
    pub fn promote(&mut self, rank: Rank) {
        self.rank = self.rank.max(rank);
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of integers and enum-keyed maps always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored ledger; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Ledger, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// A player's state: the sum of all their ledgers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    coins: (u128, u128),
    hardware: [(u128, u128); 5],
    rank: Rank,
}

impl Holdings {
    /// Adds one ledger.
    pub fn add(&mut self, l: &Ledger) {
        self.coins.0 += u128::from(l.coins.gained);
        self.coins.1 += u128::from(l.coins.lost);
        for (hw, t) in &l.hardware {
            let slot = &mut self.hardware[*hw as usize];
            slot.0 += u128::from(t.gained);
            slot.1 += u128::from(t.lost);
        }
        self.rank = self.rank.max(l.rank);
    }

    /// The balance: earned minus spent. Negative only after concurrent spending (an overdraft).
    pub fn coins(&self) -> i128 {
        // Each sum is at most (number of ledgers) × u64::MAX, far below i128::MAX.
        self.coins.0 as i128 - self.coins.1 as i128
    }

    /// Coins that can be spent now (zero when overdrawn), capped at `u64::MAX`.
    pub fn spendable(&self) -> u64 {
        u64::try_from(self.coins().max(0)).unwrap_or(u64::MAX)
    }

    /// Units of `hw` owned: gained minus lost, counted as zero if negative.
    pub fn count(&self, hw: Hardware) -> u64 {
        let (g, l) = self.hardware[hw as usize];
        u64::try_from(g.saturating_sub(l)).unwrap_or(u64::MAX)
    }

    /// Total units of every kind.
    pub fn units(&self) -> u64 {
        Hardware::ALL.iter().fold(0u64, |n, hw| n.saturating_add(self.count(*hw)))
    }

    /// Total power: units × power per unit, over every kind.
    pub fn power(&self) -> u64 {
        Hardware::ALL.iter().fold(0u64, |p, hw| p.saturating_add(self.count(*hw).saturating_mul(hw.power())))
    }

    /// The highest rank any ledger records.
    pub fn rank(&self) -> Rank {
        self.rank
    }
}

/// Sums the ledgers in `pairs` (a listing of [`keys::ledgers`]`(name)`), with `own`, this
/// session's ledger as it knows it, in place of whatever the listing holds for its key.
/// A bad key or value is skipped with a message in `warnings`.
pub fn sum_ledgers(
    name: &Name,
    pairs: &BTreeMap<String, Bytes>,
    own: Option<(SessionId, &Ledger)>,
    warnings: &mut Vec<String>,
) -> Holdings {
    let prefix = keys::ledgers(name);
    let mut holdings = Holdings::default();
    for (key, value) in pairs {
        let Some(tail) = key.strip_prefix(&prefix) else { continue };
        let Some(id) = LedgerId::parse(tail) else {
            warnings.push(format!("ignored a stored ledger with a bad key: {key:?}"));
            continue;
        };
        if own.is_some_and(|(me, _)| id == LedgerId::Session(me)) {
            continue;
        }
        match Ledger::decode(value) {
            Ok(l) => holdings.add(&l),
            Err(e) => warnings.push(format!("ignored a bad stored value at {key}: {e}")),
        }
    }
    if let Some((_, l)) = own {
        holdings.add(l);
    }
    holdings
}

/// Reads a player's holdings from the store (one `LIST`).
pub fn read_holdings(
    store: &dyn Store,
    name: &Name,
    own: Option<(SessionId, &Ledger)>,
    warnings: &mut Vec<String>,
) -> Result<Holdings, StoreError> {
    let pairs = store.list(&keys::ledgers(name))?;
    Ok(sum_ledgers(name, &pairs, own, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledgers_round_trip_and_sum() {
        let mut a = Ledger::genesis();
        a.earn(100);
        a.spend(30);
        a.gain(Hardware::Gpu, 2);
        a.promote(Rank::Masters);
        let text = String::from_utf8(a.encode()).unwrap();
        assert_eq!(text, r#"{"coins":[100,30],"hardware":{"cpu":[1,0],"gpu":[2,0]},"rank":1}"#);
        assert_eq!(Ledger::decode(text.as_bytes()).unwrap(), a);
        assert_eq!(Ledger::decode(b"{}").unwrap(), Ledger::default());
        assert!(Ledger::decode(b"{\"rank\":9}").unwrap_err().contains("rank 9"));
        assert!(Ledger::decode(b"\xff").is_err());

        let mut b = Ledger::default();
        b.spend(90);
        b.lose(Hardware::Gpu, 3);
        let mut h = Holdings::default();
        h.add(&a);
        h.add(&b);
        assert_eq!(h.coins(), -20);
        assert_eq!(h.spendable(), 0);
        assert_eq!(h.count(Hardware::Gpu), 0);
        assert_eq!(h.count(Hardware::Cpu), 1);
        assert_eq!(h.power(), 1);
        assert_eq!(h.rank(), Rank::Masters);
    }

    #[test]
    fn own_ledger_replaces_the_stored_one_and_bad_values_are_skipped() {
        let ada = Name::parse("ada").unwrap();
        let me = SessionId(1);
        let mut stored_old = Ledger::default();
        stored_old.earn(5);
        let mut mine = stored_old.clone();
        mine.earn(10);
        let mut pairs = BTreeMap::new();
        pairs.insert(keys::ledger(&ada, LedgerId::Session(me)), Bytes::from(stored_old.encode()));
        pairs.insert(keys::ledger(&ada, LedgerId::Genesis), Bytes::from(Ledger::genesis().encode()));
        pairs.insert(keys::ledger(&ada, LedgerId::Session(SessionId(2))), Bytes::from_static(b"garbage"));
        pairs.insert(format!("{}nonsense", keys::ledgers(&ada)), Bytes::from_static(b"{}"));
        let mut warnings = Vec::new();
        let h = sum_ledgers(&ada, &pairs, Some((me, &mine)), &mut warnings);
        assert_eq!(h.coins(), 15);
        assert_eq!(h.count(Hardware::Cpu), 1);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("0000000000000002"), "{warnings:?}");
    }
}
