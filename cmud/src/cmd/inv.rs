//! `inv`: the hardware a player owns.

use crate::ledger::Holdings;
use crate::player::{Ctx, Player};
use crate::reply::{Line, Reply, Tone, num};
use crate::rules::Hardware;
use crate::store::StoreError;

pub fn apply(player: &Player, ctx: &mut Ctx<'_>) -> Result<Reply, StoreError> {
    let h = player.holdings(ctx)?;
    Ok(render(&h))
}

/// The inventory of `h`.
pub fn render(h: &Holdings) -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Title, "Your hardware:");
    for hw in Hardware::ALL {
        let n = h.count(hw);
        if n > 0 {
            r.push(Line::new().plain(format!("  {:<12}", hw.name())).plain(format!("{:>12}", num(n))).push(
                Tone::Dim,
                format!("  × {} power = {}", num(hw.power()), num(n.saturating_mul(hw.power()))),
            ));
        }
    }
    if h.units() == 0 {
        r.add(Tone::Dim, "  nothing at all");
    }
    r.push(Line::new().plain("  total power ").push(Tone::Title, num(h.power())));
    r
}
