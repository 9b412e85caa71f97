//! `shop`: the price list, and what the player's rank may buy.

use crate::player::{Ctx, Player};
use crate::reply::{Line, Reply, Tone, count, num};
use crate::rules::Hardware;
use crate::store::StoreError;

pub fn apply(player: &Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    let h = player.holdings(ctx)?;
    let mut r = Reply::new();
    r.push(
        Line::new()
            .push(Tone::Title, "The shop")
            .plain(" (you have ")
            .push(Tone::Coin, count(h.coins(), "coin", "coins"))
            .plain("):"),
    );
    r.add(Tone::Dim, format!("  {:<12}{:>8}{:>8}  {}", "hardware", "price", "power", "for you"));
    for hw in Hardware::ALL {
        let row = format!("  {:<12}{:>8}{:>8}  ", hw.name(), num(hw.price()), num(hw.power()));
        let line = if h.rank() >= hw.unlocked_at() {
            let afford = h.spendable() / hw.price();
            Line::new().plain(row).push(Tone::Good, format!("you can afford {}", num(afford)))
        } else {
            Line::new()
                .push(Tone::Dim, row)
                .push(Tone::Dim, format!("locked until {}", hw.unlocked_at().title()))
        };
        r.push(line);
    }
    r.add(Tone::Dim, "`buy <hw> [n|max]` buys.");
    Ok(r)
}
