//! `solve`: face the rank's shared problem; enters battle mode.

use super::{Fight, Next};
use crate::player::{Ctx, Player};
use crate::problem;
use crate::reply::{Line, Reply, Tone, num};
use crate::store::StoreError;

pub fn apply(player: &mut Player, ctx: &mut Ctx<'_>) -> Result<(Reply, Next), StoreError> {
    let h = player.holdings(ctx)?;
    let rank = h.rank();
    let Some(status) =
        problem::status(ctx.store, rank, player.session(), player.damage_map(), &mut ctx.warnings)?
    else {
        let r = Reply::say(
            Tone::Good,
            "You are retired: there are no problems left for you, only stories to tell.",
        );
        return Ok((r, Next::Stay));
    };
    let mut r = Reply::new();
    r.push(
        Line::new()
            .plain("You take on the ")
            .push(Tone::Title, rank.title())
            .plain(" problem: ")
            .push(Tone::Bad, status.problem.title)
            .plain("."),
    );
    r.push(
        Line::new()
            .plain("Everyone of your rank works on it together: ")
            .push(Tone::Title, format!("{} of {}", num(status.progress), num(status.problem.health)))
            .plain(" done so far."),
    );
    if let Some(last) = &status.last_solved {
        r.add(
            Tone::Dim,
            format!("(The last one like it was solved by {}.)", crate::reply::sanitize(&last.by)),
        );
    }
    r.push(
        Line::new()
            .plain(format!("Your power: {}. ", num(h.power())))
            .push(Tone::Title, "solve")
            .plain(" works on it, ")
            .push(Tone::Title, "inv")
            .plain(" checks your rig, ")
            .push(Tone::Title, "resign")
            .plain(" walks away."),
    );
    Ok((r, Next::Battle(Fight { rank, epoch: status.epoch })))
}
