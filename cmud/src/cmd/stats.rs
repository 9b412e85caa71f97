//! `stats`: the player at a glance.

use crate::player::{Ctx, Player};
use crate::problem;
use crate::reply::{Line, Reply, Tone, count, num};
use crate::store::StoreError;

pub fn apply(player: &Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    let h = player.holdings(ctx)?;
    let mut r = Reply::new();
    r.push(
        Line::new().push(Tone::Name, player.name().as_str()).plain(", ").push(Tone::Title, h.rank().title()),
    );
    let mut coins = Line::new().plain("  coins  ").push(Tone::Coin, num(h.coins()));
    if h.coins() < 0 {
        coins = coins.push(Tone::Warn, "  (overdrawn: two of your sessions spent at once; mining repays it)");
    }
    r.push(coins);
    r.push(
        Line::new()
            .plain("  power  ")
            .plain(num(h.power()))
            .push(Tone::Dim, format!("  ({})", count(h.units(), "unit", "units"))),
    );
    r.push(Line::new().plain("  place  ").push(Tone::Place, player.place().title()));
    match problem::status(ctx.store, h.rank(), player.session(), player.damage_map(), &mut ctx.warnings)? {
        Some(s) => {
            r.push(
                Line::new()
                    .plain("  problem  ")
                    .plain(s.problem.title)
                    .push(Tone::Dim, format!(" ({} of {} solved)", num(s.progress), num(s.problem.health))),
            );
        }
        None => {
            r.push(Line::new().plain("  problem  ").push(Tone::Good, "none: you are retired"));
        }
    }
    Ok(r)
}
