//! The story: what the game tells at the big moments. Beats are separated by pauses, which the
//! binary paces with `--story-ms`.

use crate::keys::Name;
use crate::reply::{Line, Reply, Tone};
use crate::rules::{Place, Rank};

/// The banner before the login prompt.
pub fn banner() -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Title, "CMUD: a multi-user dungeon on a replicated key-value store");
    r.add(
        Tone::Dim,
        "Climb from Undergraduate to Retired: mine coins, buy hardware, solve problems with everyone else.",
    );
    r
}

/// The intro for a new character.
pub fn intro(name: &Name) -> Reply {
    let mut r = Reply::new();
    r.push(
        Line::new()
            .plain("Welcome, ")
            .push(Tone::Name, name.as_str())
            .plain(". Your student card is still warm from the printer."),
    );
    r.pause();
    r.add(Tone::Plain, "Orientation week is over. Somewhere above you waits a problem no student can crack");
    r.add(Tone::Plain, "alone: every Undergraduate on campus chips away at the same one, and whoever lands");
    r.add(Tone::Plain, "the last blow moves up.");
    r.pause();
    r.add(
        Tone::Plain,
        "Your only possession is one tired cpu. Put it to work with `mine`, spend what it finds",
    );
    r.add(
        Tone::Plain,
        "in the `shop`, and when your rig feels strong enough, `solve`. Hardware breaks under",
    );
    r.add(Tone::Plain, "pressure; bring spares.");
    r.pause();
    r.add(
        Tone::Plain,
        "Masters, PhD, PostDoc, Professor: each rank unlocks better hardware and a harder problem.",
    );
    r.push(Line::new().plain("At the top waits ").push(Tone::Good, "retirement").plain("."));
    r.pause();
    r.push(
        Line::new()
            .plain("You stand on ")
            .push(Tone::Place, Place::START.title())
            .plain(". Type ")
            .push(Tone::Title, "help")
            .plain(" for the commands."),
    );
    r
}

/// The greeting for a returning character.
pub fn welcome_back(name: &Name, place: Place) -> Reply {
    let mut r = Reply::new();
    r.push(
        Line::new()
            .plain("Welcome back, ")
            .push(Tone::Name, name.as_str())
            .plain(". You are on ")
            .push(Tone::Place, place.title())
            .plain(". Type ")
            .push(Tone::Title, "help")
            .plain(" for the commands."),
    );
    r
}

/// The story of a promotion to `rank`.
pub fn promotion(rank: Rank) -> Reply {
    let mut r = Reply::new();
    r.add(Tone::Good, "The last piece falls into place. The problem is solved!");
    r.pause();
    let text = match rank {
        Rank::Masters => {
            "A letter arrives: you are admitted to the Masters program. GPUs are now within your reach."
        }
        Rank::PhD => "Your advisor nods, almost smiling. A PhD student now, you may buy ASICs.",
        Rank::PostDoc => "The committee signs. Doctor at last; as a PostDoc you may order quantum hardware.",
        Rank::Professor => "A tenure-track offer! Professors may requisition dark matter.",
        Rank::Retired | Rank::Undergraduate => "",
    };
    if !text.is_empty() {
        r.add(Tone::Plain, text);
        r.push(Line::new().plain("You are now a ").push(Tone::Title, rank.title()).plain("."));
    }
    if rank == Rank::Retired {
        r.add(Tone::Plain, "The committee stands and applauds. There is nothing left to prove.");
        r.pause();
        r.add(
            Tone::Plain,
            "You hand over your keys, water the fern one last time and walk out across the bridge.",
        );
        r.pause();
        r.push(
            Line::new()
                .plain("You are ")
                .push(Tone::Title, "Retired")
                .plain(". The end. (You may keep wandering and chatting.)"),
        );
    }
    r
}
