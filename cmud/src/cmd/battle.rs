//! Battle mode: `solve` (one step against the problem), `inv`, `resign`.

use rand::Rng;

use super::{ParseError, help, inv};
use crate::chat::Kind;
use crate::player::{Ctx, Player};
use crate::problem::{self, Solved};
use crate::reply::{Line, Reply, Tone, num};
use crate::rules::{Hardware, Rank, Step, breakage};
use crate::store::StoreError;
use crate::story;

/// The words the prompt completes in battle.
pub const WORDS: &[&str] = &["solve", "inv", "resign", "help", "quit"];

/// Which problem a battle is about: a rank's, in one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fight {
    /// The rank whose problem it is.
    pub rank: Rank,
    /// The epoch the player is working on.
    pub epoch: u64,
}

/// A command of battle mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BattleCommand {
    /// One step against the problem.
    Solve,
    /// The hardware left.
    Inv,
    /// Leave the battle.
    Resign,
    /// The battle commands.
    Help,
    /// Resign and end the session.
    Quit,
}

/// What follows a battle command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BattleNext {
    /// Keep fighting.
    Stay(Fight),
    /// Back to playing (resigned, solved, wiped out, promoted elsewhere).
    Leave,
    /// End the session.
    Quit,
}

impl BattleCommand {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<BattleCommand, ParseError> {
        let words: Vec<String> = line.split_whitespace().map(str::to_ascii_lowercase).collect();
        let cmd = match words.first().map(String::as_str) {
            Some("solve") => BattleCommand::Solve,
            Some("inv" | "i" | "inventory") => BattleCommand::Inv,
            Some("resign") => BattleCommand::Resign,
            Some("help" | "?") => BattleCommand::Help,
            Some("quit" | "exit") => BattleCommand::Quit,
            _ => {
                return Err(ParseError::Invalid(
                    "you are in the middle of a battle: `solve`, `inv` or `resign` (`help` explains)".into(),
                ));
            }
        };
        if words.len() > 1 {
            return Err(ParseError::Usage("solve | inv | resign | help | quit (no arguments)"));
        }
        Ok(cmd)
    }

    /// Carries the command out.
    pub fn apply(
        self,
        fight: Fight,
        player: &mut Player,
        ctx: &mut Ctx<'_>,
    ) -> Result<(Reply, BattleNext), StoreError> {
        match self {
            BattleCommand::Solve => step(fight, player, ctx),
            BattleCommand::Inv => Ok((inv::render(&player.holdings(ctx)?), BattleNext::Stay(fight))),
            BattleCommand::Help => Ok((help::battle(), BattleNext::Stay(fight))),
            BattleCommand::Resign => Ok((
                Reply::say(
                    Tone::Plain,
                    "You step away from the problem. The progress made stays, for everyone.",
                ),
                BattleNext::Leave,
            )),
            BattleCommand::Quit => {
                Ok((Reply::say(Tone::Plain, "You resign and head home. Goodbye."), BattleNext::Quit))
            }
        }
    }
}

/// One step of solving.
fn step(mut fight: Fight, player: &mut Player, ctx: &mut Ctx<'_>) -> Result<(Reply, BattleNext), StoreError> {
    let h = player.holdings(ctx)?;
    let mut r = Reply::new();
    let problem = match fight.rank.problem() {
        Some(p) if h.rank() == fight.rank => p,
        _ => {
            r.add(
                Tone::Good,
                format!(
                    "You are a {} now (another of your sessions saw to it): this problem is no longer yours.",
                    h.rank()
                ),
            );
            return Ok((r, BattleNext::Leave));
        }
    };
    let rank = fight.rank;
    let (epoch, last) = problem::current_epoch(ctx.store, rank, &mut ctx.warnings)?;
    if epoch != fight.epoch {
        let by = last.map_or_else(|| "someone".to_owned(), |s| crate::reply::sanitize(&s.by));
        r.add(
            Tone::Warn,
            format!("While you worked, {by} solved it. A fresh problem of the same kind appears."),
        );
        fight.epoch = epoch;
    }
    r.add(Tone::Dim, "You throw your rig at the problem…");
    r.pause();
    match Step::roll(ctx.rng) {
        Step::Progress => {
            let power = h.power();
            player.add_damage(rank, epoch, power, ctx)?;
            let mine = Some((player.session(), player.damage(rank, epoch)));
            let total = problem::progress(ctx.store, rank, epoch, mine, &mut ctx.warnings)?;
            if total >= problem.health {
                let next = rank.next();
                player.record(ctx, |l| l.promote(next))?;
                let solved = Solved { by: player.name().to_string(), at_ms: ctx.now_ms };
                problem::mark_solved(ctx.store, rank, epoch, &solved)?;
                let news = if next == Rank::Retired {
                    format!("{} solved the Professor problem and retired. Applause!", player.name())
                } else {
                    format!("{} solved the {rank} problem and is now a {next}.", player.name())
                };
                // The promotion is stored; the announcement is a courtesy.
                let _ = player.post(Kind::Event, &news, ctx);
                r.push(Line::new().push(Tone::Good, format!("Progress +{}: ", num(power))).plain(format!(
                    "{} of {}.",
                    num(problem.health),
                    num(problem.health)
                )));
                r.extend(story::promotion(next));
                return Ok((r, BattleNext::Leave));
            }
            r.push(Line::new().push(Tone::Good, format!("Progress +{}: ", num(power))).plain(format!(
                "{} of {} done.",
                num(total),
                num(problem.health)
            )));
        }
        Step::Breakage => {
            let owned: Vec<Hardware> = Hardware::ALL.into_iter().filter(|hw| h.count(*hw) > 0).collect();
            let (hw, count) = if owned.is_empty() {
                (Hardware::Cpu, 0)
            } else {
                let hw = owned[ctx.rng.random_range(0..owned.len())];
                (hw, h.count(hw))
            };
            let lost = breakage(count);
            let wiped = h.units().saturating_sub(lost) == 0;
            // The loss and the spare cpu go in one write.
            player.record(ctx, |l| {
                l.lose(hw, lost);
                if wiped {
                    l.gain(Hardware::Cpu, 1);
                }
            })?;
            if lost > 0 {
                r.push(Line::new().push(
                    Tone::Bad,
                    format!(
                        "Smoke! {} of your {} {hw} {}.",
                        num(lost),
                        num(count),
                        if lost == 1 { "burns out" } else { "burn out" }
                    ),
                ));
            }
            if wiped {
                r.add(
                    Tone::Bad,
                    "Your rig is gone. A kind TA lends you a spare cpu, and you retreat to regroup.",
                );
                return Ok((r, BattleNext::Leave));
            }
        }
        Step::Stuck => {
            r.add(Tone::Warn, "You stare at the screen for hours. Stuck: no progress this time.");
        }
    }
    Ok((r, BattleNext::Stay(fight)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_battle_commands() {
        assert_eq!(BattleCommand::parse(" Solve "), Ok(BattleCommand::Solve));
        assert_eq!(BattleCommand::parse("inv"), Ok(BattleCommand::Inv));
        assert_eq!(BattleCommand::parse("resign"), Ok(BattleCommand::Resign));
        assert_eq!(BattleCommand::parse("quit"), Ok(BattleCommand::Quit));
        assert!(BattleCommand::parse("mine").unwrap_err().to_string().contains("middle of a battle"));
        assert!(BattleCommand::parse("solve 3").unwrap_err().to_string().starts_with("usage"));
    }
}
