//! `map`: every place, and every player by place.

use std::collections::BTreeMap;

use crate::player::{Ctx, Player, roster};
use crate::reply::{Line, Reply, Tone};
use crate::rules::{ACTIVE_MS, Place};
use crate::store::StoreError;

pub fn apply(player: &mut Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    player.refresh_place(ctx)?;
    let mut by_place: BTreeMap<Place, Vec<(String, bool)>> = BTreeMap::new();
    for w in roster(ctx)?.into_values() {
        // This session knows its own place best (the store may lag a move just made).
        let place = if &w.name == player.name() { player.place() } else { w.place };
        let active =
            w.seen_ms.is_some_and(|t| ctx.now_ms.saturating_sub(t) <= ACTIVE_MS) || &w.name == player.name();
        by_place.entry(place).or_default().push((w.name.to_string(), active));
    }
    let mut r = Reply::new();
    r.add(Tone::Title, "The campus map:");
    for place in Place::all() {
        let marker = if place == player.place() { "*" } else { " " };
        let mut line = Line::new()
            .push(Tone::Good, marker)
            .push(Tone::Place, format!(" {:<8} {:<26}", place.id(), place.title()));
        for (i, (name, active)) in by_place.get(&place).into_iter().flatten().enumerate() {
            if i > 0 {
                line = line.plain(", ");
            }
            let shown = if name == player.name().as_str() { format!("{name} (you)") } else { name.clone() };
            line = if *active {
                line.push(Tone::Name, shown)
            } else {
                line.push(Tone::Dim, format!("{shown} (idle)"))
            };
        }
        r.push(line);
    }
    r.add(Tone::Dim, "* marks where you are; `move <place>` walks there.");
    Ok(r)
}
