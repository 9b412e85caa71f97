//! The shared problems: one per rank, worn down by every player of that rank together.
//!
//! Progress is a counter CRDT like the [ledgers](crate::ledger): each session writes only its
//! own total damage, under `cmud/v1/problem/<rank>/epoch/<epoch>/damage/<session>`, and the
//! progress of an epoch is the sum of that prefix. When the sum reaches the problem's health the
//! session that got there writes the marker `cmud/v1/problem/<rank>/solved/<epoch>` and is
//! promoted. The current epoch is one more than the highest solved epoch: markers are never
//! deleted, so the epoch only moves forward on every replica, and a fresh epoch starts with no
//! damage: the reset for everyone, without deleting anyone's counter.
//!
//! Two players who finish the same epoch at once (on two servers, before either marker has
//! synced) are both promoted; one marker wins and names the solver. The solver of epoch `e`
//! deletes the damage counters of epoch `e - 1`, which no one reads any more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{self, SessionId};
use crate::rules::{Problem, Rank};
use crate::store::{Store, StoreError};

/// Who solved an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solved {
    /// The solver's name.
    pub by: String,
    /// When.
    pub at_ms: u64,
}

/// A rank's problem as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The problem.
    pub problem: Problem,
    /// The current epoch (0 until first solved).
    pub epoch: u64,
    /// Damage dealt in this epoch by everyone, capped at the health.
    pub progress: u64,
    /// Who solved the previous epoch, if anyone.
    pub last_solved: Option<Solved>,
}

/// The current epoch of a rank's problem and the marker of the previous one.
pub fn current_epoch(
    store: &dyn Store,
    rank: Rank,
    warnings: &mut Vec<String>,
) -> Result<(u64, Option<Solved>), StoreError> {
    let prefix = keys::solved_markers(rank);
    let mut best: Option<(u64, Option<Solved>)> = None;
    for (key, value) in store.list(&prefix)? {
        let tail = key.strip_prefix(&prefix).unwrap_or(&key);
        let Some(epoch) = parse_epoch(tail) else {
            warnings.push(format!("ignored a solved marker with a bad key: {key:?}"));
            continue;
        };
        if best.as_ref().is_none_or(|(e, _)| epoch >= *e) {
            let solved = serde_json::from_slice::<Solved>(&value)
                .map_err(|e| warnings.push(format!("ignored a bad stored value at {key}: {e}")))
                .ok();
            best = Some((epoch, solved));
        }
    }
    Ok(match best {
        None => (0, None),
        Some((e, solved)) => (e.saturating_add(1), solved),
    })
}

fn parse_epoch(s: &str) -> Option<u64> {
    if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The total damage dealt in an epoch, with `own` (this session's damage, known in memory) in
/// place of what the store holds for it.
pub fn progress(
    store: &dyn Store,
    rank: Rank,
    epoch: u64,
    own: Option<(SessionId, u64)>,
    warnings: &mut Vec<String>,
) -> Result<u64, StoreError> {
    let prefix = keys::damages(rank, epoch);
    let mut total: u128 = 0;
    for (key, value) in store.list(&prefix)? {
        let tail = key.strip_prefix(&prefix).unwrap_or(&key);
        let Some(id) = SessionId::parse(tail) else {
            warnings.push(format!("ignored a damage counter with a bad key: {key:?}"));
            continue;
        };
        if own.is_some_and(|(me, _)| me == id) {
            continue;
        }
        match std::str::from_utf8(&value).ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(d) => total += u128::from(d),
            None => warnings.push(format!("ignored a bad stored value at {key}: not a whole number")),
        }
    }
    if let Some((_, d)) = own {
        total += u128::from(d);
    }
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

/// A rank's problem as it stands, with this session's damage per epoch in `own`; `None` for
/// `Retired`.
pub fn status(
    store: &dyn Store,
    rank: Rank,
    session: SessionId,
    own: &BTreeMap<(Rank, u64), u64>,
    warnings: &mut Vec<String>,
) -> Result<Option<Status>, StoreError> {
    let Some(problem) = rank.problem() else { return Ok(None) };
    let (epoch, last_solved) = current_epoch(store, rank, warnings)?;
    let mine = own.get(&(rank, epoch)).copied().unwrap_or(0);
    let progress = progress(store, rank, epoch, Some((session, mine)), warnings)?.min(problem.health);
    Ok(Some(Status { problem, epoch, progress, last_solved }))
}

/// Stores a session's total damage in an epoch.
pub fn write_damage(
    store: &dyn Store,
    rank: Rank,
    epoch: u64,
    session: SessionId,
    total: u64,
) -> Result<(), StoreError> {
    store.put(&keys::damage(rank, epoch, session), total.to_string().as_bytes())
}

/// Marks an epoch solved and clears the counters of the epoch before it (best effort).
pub fn mark_solved(store: &dyn Store, rank: Rank, epoch: u64, solved: &Solved) -> Result<(), StoreError> {
    let value = serde_json::to_vec(solved).unwrap_or_default();
    store.put(&keys::solved(rank, epoch), &value)?;
    if let Some(previous) = epoch.checked_sub(1)
        && let Ok(old) = store.list(&keys::damages(rank, previous))
    {
        for key in old.keys() {
            let _ = store.delete(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn epochs_advance_and_progress_sums() {
        let s = MemStore::new();
        let mut w = Vec::new();
        assert_eq!(current_epoch(&s, Rank::PhD, &mut w).unwrap(), (0, None));
        write_damage(&s, Rank::PhD, 0, SessionId(1), 30).unwrap();
        write_damage(&s, Rank::PhD, 0, SessionId(2), 12).unwrap();
        assert_eq!(progress(&s, Rank::PhD, 0, None, &mut w).unwrap(), 42);
        assert_eq!(progress(&s, Rank::PhD, 0, Some((SessionId(2), 20)), &mut w).unwrap(), 50);
        let solved = Solved { by: "ada".into(), at_ms: 5 };
        mark_solved(&s, Rank::PhD, 0, &solved).unwrap();
        assert_eq!(current_epoch(&s, Rank::PhD, &mut w).unwrap(), (1, Some(solved.clone())));
        assert_eq!(progress(&s, Rank::PhD, 1, None, &mut w).unwrap(), 0);
        // Other ranks are untouched.
        assert_eq!(current_epoch(&s, Rank::Masters, &mut w).unwrap().0, 0);
        // Solving epoch 1 clears epoch 0's counters.
        mark_solved(&s, Rank::PhD, 1, &solved).unwrap();
        assert_eq!(progress(&s, Rank::PhD, 0, None, &mut w).unwrap(), 0);
        assert!(w.is_empty(), "{w:?}");
        s.put(&keys::damage(Rank::PhD, 2, SessionId(3)), b"lots").unwrap();
        s.put(&format!("{}junk", keys::solved_markers(Rank::PhD)), b"{}").unwrap();
        assert_eq!(progress(&s, Rank::PhD, 2, None, &mut w).unwrap(), 0);
        assert_eq!(current_epoch(&s, Rank::PhD, &mut w).unwrap().0, 2);
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
