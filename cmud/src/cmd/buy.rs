//! `buy <hw> [n|max]`: coins for hardware.

use crate::player::{Ctx, Player};
use crate::reply::{Line, Reply, Tone, count, num};
use crate::rules::{Hardware, MAX_BUY};
use crate::store::StoreError;

/// How many units to buy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// Exactly this many (1 to [`MAX_BUY`]).
    Units(u64),
    /// As many as the balance allows (at most [`MAX_BUY`]).
    Max,
}

pub fn apply(
    player: &mut Player,
    hw: Hardware,
    amount: Amount,
    ctx: &mut Ctx<'_>,
) -> Result<Reply, StoreError> {
    let h = player.holdings(ctx)?;
    if h.rank() < hw.unlocked_at() {
        return Ok(Reply::say(
            Tone::Bad,
            format!(
                "You can't buy {hw} yet: it unlocks at {} (you are {}).",
                hw.unlocked_at().title(),
                h.rank().title()
            ),
        ));
    }
    let affordable = (h.spendable() / hw.price()).min(MAX_BUY);
    let n = match amount {
        Amount::Units(n) => n,
        Amount::Max => affordable,
    };
    let cost = n.saturating_mul(hw.price());
    if n == 0 || n > affordable {
        let mut line = Line::new().push(Tone::Bad, "You can't afford that: ");
        if n > 0 {
            line = line.plain(format!("{} {hw} cost ", num(n))).push(Tone::Coin, num(cost)).plain(", ");
        } else {
            line = line.plain(format!("one {hw} costs ")).push(Tone::Coin, num(hw.price())).plain(", ");
        }
        line = line.plain("you have ").push(Tone::Coin, num(h.coins())).plain(". Try `mine`.");
        return Ok(Reply::line(line));
    }
    // Coins and hardware change in one write of this session's ledger: never one without the
    // other.
    player.record(ctx, |l| {
        l.spend(cost);
        l.gain(hw, n);
    })?;
    let power = h.power().saturating_add(n.saturating_mul(hw.power()));
    Ok(Reply::line(
        Line::new()
            .push(Tone::Good, format!("You buy {} {hw} for ", num(n)))
            .push(Tone::Coin, count(cost, "coin", "coins"))
            .push(Tone::Good, ".")
            .plain(format!(" Power: {}. Balance: ", num(power)))
            .push(Tone::Coin, num(h.coins() - i128::from(cost)))
            .plain("."),
    ))
}
