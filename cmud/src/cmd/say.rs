//! `say <text>` (to the players at the same place) and `shout <text>` (to everyone).

use crate::chat::Kind;
use crate::player::{Ctx, Player, roster};
use crate::reply::{Line, Reply, Tone};
use crate::rules::ACTIVE_MS;
use crate::store::StoreError;

pub fn say(player: &mut Player, text: &str, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    player.refresh_place(ctx)?;
    player.post(Kind::Say, text, ctx)?;
    let listeners = roster(ctx)?
        .into_values()
        .filter(|w| &w.name != player.name() && w.place == player.place())
        .filter(|w| w.seen_ms.is_some_and(|t| ctx.now_ms.saturating_sub(t) <= ACTIVE_MS))
        .count();
    let mut r = Reply::line(Line::new().plain("You say: ").push(Tone::Chat, text));
    if listeners == 0 {
        r.add(Tone::Dim, "(Nobody else is here right now; `shout` reaches everyone.)");
    }
    Ok(r)
}

pub fn shout(player: &mut Player, text: &str, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    player.refresh_place(ctx)?;
    player.post(Kind::Shout, text, ctx)?;
    Ok(Reply::line(Line::new().plain("You shout: ").push(Tone::Chat, text)))
}
