//! `top`: the leaderboard, by rank then coins.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::keys::{self, Name};
use crate::ledger::{Holdings, sum_ledgers};
use crate::player::{Ctx, Player};
use crate::reply::{Line, Reply, Tone, num};
use crate::store::StoreError;

/// How many players the board shows.
const SHOWN: usize = 10;

pub fn apply(player: &Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    let prefix = keys::players();
    let mut per_player: BTreeMap<Name, BTreeMap<String, Bytes>> = BTreeMap::new();
    for (key, value) in ctx.store.list(&prefix)? {
        let segment = key.strip_prefix(&prefix).and_then(|t| t.split_once('/')).map(|(n, _)| n);
        match segment.and_then(Name::from_key) {
            Some(name) => {
                per_player.entry(name).or_default().insert(key, value);
            }
            None => ctx.warnings.push(format!("ignored a player key with a bad name: {key:?}")),
        }
    }
    per_player.entry(player.name().clone()).or_default();
    let mut board: Vec<(Name, Holdings)> = per_player
        .into_iter()
        .map(|(name, pairs)| {
            let own = (&name == player.name()).then(|| (player.session(), player.ledger()));
            let h = sum_ledgers(&name, &pairs, own, &mut ctx.warnings);
            (name, h)
        })
        .collect();
    board
        .sort_by(|(na, a), (nb, b)| b.rank().cmp(&a.rank()).then(b.coins().cmp(&a.coins())).then(na.cmp(nb)));
    let mut r = Reply::new();
    r.add(Tone::Title, "Leaderboard (rank, then coins):");
    for (i, (name, h)) in board.iter().enumerate() {
        let me = name == player.name();
        if i >= SHOWN && !me {
            continue;
        }
        if i >= SHOWN && me {
            r.add(Tone::Dim, "  …");
        }
        let mut line = Line::new()
            .plain(format!("{:>4}. ", i + 1))
            .push(Tone::Name, format!("{:<17}", name.as_str()))
            .plain(format!("{:<14}", h.rank().title()))
            .push(Tone::Coin, format!("{:>16}", num(h.coins())));
        if me {
            line = line.push(Tone::Dim, "  (you)");
        }
        r.push(line);
    }
    Ok(r)
}
