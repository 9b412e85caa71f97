//! `mine [n]`: put the hardware to work for coins.

use crate::player::{Ctx, Player};
use crate::reply::{Line, Reply, Tone, num};
use crate::rules::mine_once;
use crate::store::StoreError;

pub fn apply(player: &mut Player, attempts: u32, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    let h = player.holdings(ctx)?;
    let power = h.power();
    let (mut found, mut coins) = (0u32, 0u64);
    for _ in 0..attempts {
        if let Some(c) = mine_once(ctx.rng, power) {
            found += 1;
            coins = coins.saturating_add(c);
        }
    }
    player.record(ctx, |l| l.earn(coins))?;
    let mut r = Reply::new();
    let tries = if attempts == 1 { "once".to_string() } else { format!("{} times", num(attempts)) };
    r.push(Line::new().plain(format!("You mine {tries} with {} power.", num(power))));
    r.pause();
    let balance = h.coins().saturating_add(i128::from(coins));
    r.push(
        Line::new()
            .plain(if attempts == 1 {
                if found == 1 { "You struck coins: ".to_owned() } else { "Nothing this time: ".to_owned() }
            } else {
                format!("{} of {} tries struck coins: ", num(found), num(attempts))
            })
            .push(Tone::Coin, format!("+{}", num(coins)))
            .plain(". Balance: ")
            .push(Tone::Coin, num(balance))
            .plain("."),
    );
    Ok(r)
}
