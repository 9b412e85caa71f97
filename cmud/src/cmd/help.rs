//! `help`: what can be typed, in each phase.

use crate::reply::{Line, Reply, Tone, num};
use crate::rules::{MAX_BUY, MAX_MINE};

fn entry(r: &mut Reply, usage: &str, what: &str) {
    r.push(Line::new().push(Tone::Title, format!("  {usage:<22}")).plain(what));
}

/// The commands outside battle.
pub fn playing() -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Title, "Commands:");
    entry(&mut r, "help", "this list");
    entry(&mut r, "stats", "your rank, coins, power, place and your rank's problem");
    entry(&mut r, "inv", "the hardware you own");
    entry(&mut r, "map", "the places and who is where");
    entry(&mut r, "move <place>", "walk to fence, bridge or gates1 … gates9");
    entry(
        &mut r,
        "mine [n]",
        &format!("mine n times (1 to {MAX_MINE}); each try finds coins 90 % of the time"),
    );
    entry(&mut r, "shop", "prices, power, and what your rank may buy");
    entry(
        &mut r,
        "buy <hw> [n|max]",
        &format!("buy n units (up to {}), or as many as you can afford", num(MAX_BUY)),
    );
    entry(&mut r, "solve", "take on your rank's shared problem (battle mode)");
    entry(&mut r, "say <text>", "talk to the players at your place");
    entry(&mut r, "shout <text>", "talk to everyone");
    entry(&mut r, "who", "players active in the last five minutes");
    entry(&mut r, "top", "the leaderboard, by rank then coins");
    entry(&mut r, "quit", "leave (your character stays)");
    r.add(Tone::Dim, "News (what others say here, shouts, solved problems) appears after each command;");
    r.add(
        Tone::Dim,
        "press Enter on an empty line to check. Tab completes; up and down recall earlier lines.",
    );
    r
}

/// The commands in battle.
pub fn battle() -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Title, "Battle commands:");
    entry(&mut r, "solve", "work on the problem: 80 % progress by your power, 15 % breakage, 5 % stuck");
    entry(&mut r, "inv", "the hardware you still have");
    entry(&mut r, "resign", "leave the battle (the progress made stays)");
    entry(&mut r, "quit", "resign and leave the game");
    r
}
