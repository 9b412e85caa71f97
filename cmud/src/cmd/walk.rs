//! `move <place>`: walk somewhere on the map.

use crate::player::{Ctx, Player, roster};
use crate::reply::{Line, Reply, Tone};
use crate::rules::{ACTIVE_MS, Place};
use crate::store::StoreError;

pub fn apply(player: &mut Player, to: Place, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    player.refresh_place(ctx)?;
    if player.place() == to {
        return Ok(Reply::line(
            Line::new().plain("You are already on ").push(Tone::Place, to.title()).plain("."),
        ));
    }
    player.move_to(to, ctx)?;
    let mut r = Reply::new();
    r.push(Line::new().plain("You walk to ").push(Tone::Place, to.title()).plain("."));
    r.add(Tone::Dim, to.scenery());
    let here: Vec<String> = roster(ctx)?
        .into_values()
        .filter(|w| &w.name != player.name() && w.place == to)
        .filter(|w| w.seen_ms.is_some_and(|t| ctx.now_ms.saturating_sub(t) <= ACTIVE_MS))
        .map(|w| w.name.to_string())
        .collect();
    if !here.is_empty() {
        r.push(Line::new().plain("Here: ").push(Tone::Name, here.join(", ")));
    }
    Ok(r)
}
