//! `who`: the players active in the last few minutes.

use crate::ledger::read_holdings;
use crate::player::{Ctx, Player, roster};
use crate::reply::{Line, Reply, Tone};
use crate::rules::ACTIVE_MS;
use crate::store::StoreError;

pub fn apply(player: &mut Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    player.refresh_place(ctx)?;
    let active: Vec<_> = roster(ctx)?
        .into_values()
        .filter(|w| {
            &w.name == player.name() || w.seen_ms.is_some_and(|t| ctx.now_ms.saturating_sub(t) <= ACTIVE_MS)
        })
        .collect();
    let mut r = Reply::new();
    r.add(Tone::Title, format!("Active in the last {} minutes:", ACTIVE_MS / 60_000));
    for w in active {
        let me = &w.name == player.name();
        let own = me.then(|| (player.session(), player.ledger()));
        let rank = read_holdings(ctx.store, &w.name, own, &mut ctx.warnings)?.rank();
        let place = if me { player.place() } else { w.place };
        let idle = if me { 0 } else { w.seen_ms.map_or(0, |t| ctx.now_ms.saturating_sub(t) / 1000) };
        let mut line = Line::new()
            .push(Tone::Name, format!("  {:<17}", w.name.as_str()))
            .plain(format!("{:<14}", rank.title()))
            .push(Tone::Place, format!("{:<26}", place.title()));
        line = if me { line.push(Tone::Dim, "(you)") } else { line.push(Tone::Dim, format!("idle {idle}s")) };
        r.push(line);
    }
    Ok(r)
}
