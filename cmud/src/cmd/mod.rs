//! Commands as values: a typed line is [parsed](Command::parse) into a [`Command`], which is
//! [applied](Command::apply) to the player and the store and returns the [`Reply`] and what
//! happens next. One module per command; battle mode has its own set ([`BattleCommand`]).

mod battle;
mod buy;
mod help;
mod inv;
mod map;
mod mine;
mod say;
mod shop;
mod solve;
mod stats;
mod top;
mod walk;
mod who;

pub use battle::{BattleCommand, BattleNext, Fight, WORDS as BATTLE_WORDS};
pub use buy::Amount;

use crate::chat::MAX_TEXT;
use crate::player::{Ctx, Player};
use crate::reply::{Reply, Tone};
use crate::rules::{Hardware, MAX_BUY, MAX_MINE, Place};
use crate::store::StoreError;

/// The words the prompt completes outside battle.
pub const WORDS: &[&str] = &[
    "help", "stats", "inv", "map", "move", "mine", "shop", "buy", "solve", "say", "shout", "who", "top",
    "quit",
];

/// A command of the playing phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `help`: the command list.
    Help,
    /// `stats`: rank, coins, power, place, the problem.
    Stats,
    /// `inv`: hardware owned.
    Inv,
    /// `map`: the places and who is where.
    Map,
    /// `move <place>`.
    Move(Place),
    /// `mine [n]`: n attempts (1 to [`MAX_MINE`]).
    Mine(u32),
    /// `shop`: prices and what the rank unlocks.
    Shop,
    /// `buy <hw> [n|max]`.
    Buy(Hardware, Amount),
    /// `solve`: enter battle with the rank's problem.
    Solve,
    /// `say <text>`: to the players at the same place.
    Say(String),
    /// `shout <text>`: to everyone.
    Shout(String),
    /// `who`: players active in the last few minutes.
    Who,
    /// `top`: the leaderboard.
    Top,
    /// `quit`.
    Quit,
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An unknown first word.
    #[error("unknown command {0:?}; type `help` for the list")]
    Unknown(String),
    /// The right command with the wrong arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// An argument out of range or not understood.
    #[error("{0}")]
    Invalid(String),
}

/// What follows a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep playing.
    Stay,
    /// Enter battle.
    Battle(Fight),
    /// End the session.
    Quit,
}

impl Command {
    /// Parses one line. Words are case-insensitive; a few aliases are accepted (`go`, `walk`,
    /// `i`, `inventory`, `exit`, `leaderboard`, `?`).
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let (verb, rest) = split_verb(line);
        let args: Vec<&str> = rest.split_whitespace().collect();
        let no_args = |c: Command, usage: &'static str| {
            if args.is_empty() { Ok(c) } else { Err(ParseError::Usage(usage)) }
        };
        match verb.as_str() {
            "help" | "?" => no_args(Command::Help, "help"),
            "stats" | "status" => no_args(Command::Stats, "stats"),
            "inv" | "i" | "inventory" => no_args(Command::Inv, "inv"),
            "map" => no_args(Command::Map, "map"),
            "shop" => no_args(Command::Shop, "shop"),
            "solve" => no_args(Command::Solve, "solve"),
            "who" => no_args(Command::Who, "who"),
            "top" | "leaderboard" => no_args(Command::Top, "top"),
            "quit" | "exit" => no_args(Command::Quit, "quit"),
            "move" | "go" | "walk" => {
                if rest.trim().is_empty() {
                    return Err(ParseError::Usage("move <place>   (fence, bridge, gates1 … gates9)"));
                }
                Place::parse(rest).map(Command::Move).ok_or_else(|| {
                    ParseError::Invalid(format!(
                        "there is no place called {:?}; places: fence, bridge, gates1 … gates9",
                        rest.trim()
                    ))
                })
            }
            "mine" => match args.as_slice() {
                [] => Ok(Command::Mine(1)),
                [n] => match n.parse::<u64>() {
                    Ok(n) if (1..=u64::from(MAX_MINE)).contains(&n) => Ok(Command::Mine(n as u32)),
                    _ => Err(ParseError::Invalid(format!(
                        "mine takes a number of attempts from 1 to {MAX_MINE}"
                    ))),
                },
                _ => Err(ParseError::Usage("mine [n]")),
            },
            "buy" => {
                let usage = "buy <cpu|gpu|asic|quantum|dark_matter> [n|max]";
                let (hw, amount) = match args.as_slice() {
                    [hw] => (hw, None),
                    [hw, n] => (hw, Some(n)),
                    _ => return Err(ParseError::Usage(usage)),
                };
                let hw = Hardware::parse(hw).ok_or_else(|| {
                    ParseError::Invalid(format!(
                        "the shop has no {hw:?}; it sells cpu, gpu, asic, quantum, dark_matter"
                    ))
                })?;
                let amount = match amount {
                    None => Amount::Units(1),
                    Some(n) if n.eq_ignore_ascii_case("max") || n.eq_ignore_ascii_case("all") => Amount::Max,
                    Some(n) => match n.parse::<u64>() {
                        Ok(n) if (1..=MAX_BUY).contains(&n) => Amount::Units(n),
                        _ => {
                            return Err(ParseError::Invalid(format!(
                                "buy from 1 to {MAX_BUY} units at once, or `max`"
                            )));
                        }
                    },
                };
                Ok(Command::Buy(hw, amount))
            }
            "say" | "shout" | "yell" => {
                let text = rest.trim();
                let usage = if verb == "say" { "say <text>" } else { "shout <text>" };
                if text.is_empty() {
                    return Err(ParseError::Usage(usage));
                }
                if text.chars().count() > MAX_TEXT {
                    return Err(ParseError::Invalid(format!("a message has at most {MAX_TEXT} characters")));
                }
                let text = crate::reply::sanitize(text);
                Ok(if verb == "say" { Command::Say(text) } else { Command::Shout(text) })
            }
            "resign" => Err(ParseError::Invalid("you are not in a battle; `solve` starts one".into())),
            _ => Err(ParseError::Unknown(verb)),
        }
    }

    /// Carries the command out.
    pub fn apply(self, player: &mut Player, ctx: &mut Ctx<'_>) -> Result<(Reply, Next), StoreError> {
        let stay = |r: Reply| Ok((r, Next::Stay));
        match self {
            Command::Help => stay(help::playing()),
            Command::Stats => stay(stats::apply(player, ctx)?),
            Command::Inv => stay(inv::apply(player, ctx)?),
            Command::Map => stay(map::apply(player, ctx)?),
            Command::Move(place) => stay(walk::apply(player, place, ctx)?),
            Command::Mine(n) => stay(mine::apply(player, n, ctx)?),
            Command::Shop => stay(shop::apply(player, ctx)?),
            Command::Buy(hw, amount) => stay(buy::apply(player, hw, amount, ctx)?),
            Command::Solve => solve::apply(player, ctx),
            Command::Say(text) => stay(say::say(player, &text, ctx)?),
            Command::Shout(text) => stay(say::shout(player, &text, ctx)?),
            Command::Who => stay(who::apply(player, ctx)?),
            Command::Top => stay(top::apply(player, ctx)?),
            Command::Quit => Ok((
                Reply::say(Tone::Plain, "Goodbye. The problems will still be here tomorrow."),
                Next::Quit,
            )),
        }
    }
}

/// The first word, lowercased, and the rest of the line.
fn split_verb(line: &str) -> (String, &str) {
    let line = line.trim();
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    (verb.to_ascii_lowercase(), rest)
}

/// The reply for a store failure: the game goes on.
pub fn store_error(e: &StoreError) -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Warn, format!("The world did not answer: {e}."));
    r.add(Tone::Warn, "Your command may not have taken effect; try again in a moment.");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(Command::parse("help"), Ok(Command::Help));
        assert_eq!(Command::parse("  STATS "), Ok(Command::Stats));
        assert_eq!(Command::parse("i"), Ok(Command::Inv));
        assert_eq!(Command::parse("map"), Ok(Command::Map));
        assert_eq!(Command::parse("move the fence"), Ok(Command::Move(Place::Fence)));
        assert_eq!(Command::parse("go gates 9"), Ok(Command::Move(Place::Gates(9))));
        assert_eq!(Command::parse("mine"), Ok(Command::Mine(1)));
        assert_eq!(Command::parse("mine 1000"), Ok(Command::Mine(1000)));
        assert_eq!(Command::parse("shop"), Ok(Command::Shop));
        assert_eq!(Command::parse("buy gpu"), Ok(Command::Buy(Hardware::Gpu, Amount::Units(1))));
        assert_eq!(Command::parse("buy cpu 12"), Ok(Command::Buy(Hardware::Cpu, Amount::Units(12))));
        assert_eq!(
            Command::parse("buy dark_matter max"),
            Ok(Command::Buy(Hardware::DarkMatter, Amount::Max))
        );
        assert_eq!(Command::parse("solve"), Ok(Command::Solve));
        assert_eq!(Command::parse("say hello  there"), Ok(Command::Say("hello  there".into())));
        assert_eq!(Command::parse("shout HEY"), Ok(Command::Shout("HEY".into())));
        assert_eq!(Command::parse("who"), Ok(Command::Who));
        assert_eq!(Command::parse("top"), Ok(Command::Top));
        assert_eq!(Command::parse("quit"), Ok(Command::Quit));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let err = |s: &str| Command::parse(s).unwrap_err().to_string();
        assert!(err("dance").contains("unknown command \"dance\""));
        assert!(err("").contains("unknown command"));
        assert!(err("move").starts_with("usage: move"));
        assert!(err("move moon").contains("no place called \"moon\""));
        assert!(err("mine 0").contains("1 to 1000"));
        assert!(err("mine 1001").contains("1 to 1000"));
        assert!(err("mine -5").contains("1 to 1000"));
        assert!(err("mine lots").contains("1 to 1000"));
        assert!(err("mine 1 2").starts_with("usage"));
        assert!(err("buy").starts_with("usage"));
        assert!(err("buy tpu").contains("no \"tpu\""));
        assert!(err("buy cpu 0").contains("1 to 1000000"));
        assert!(err("buy cpu 1000001").contains("1 to 1000000"));
        assert!(err("buy cpu 99999999999999999999999").contains("1 to 1000000"));
        assert!(err("buy cpu 1 2").starts_with("usage"));
        assert!(err("say").starts_with("usage: say"));
        assert!(err(&format!("say {}", "x".repeat(201))).contains("at most 200"));
        assert!(err("help me").starts_with("usage: help"));
        assert!(err("resign").contains("not in a battle"));
        assert_eq!(Command::parse("say a\u{1b}[2Jb"), Ok(Command::Say("a [2Jb".into())));
    }
}
