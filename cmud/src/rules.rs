//! The rules as data: ranks, hardware, problems, the map, and the dice.
//!
//! Everything here is pure: no store, no clock. Randomness comes in as an [`Rng`].

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Mining succeeds this often (percent).
pub const MINE_SUCCESS_PERCENT: u32 = 90;
/// `mine n` takes at most this many attempts, so one command stays quick and bounded.
pub const MAX_MINE: u32 = 1_000;
/// `buy hw n` buys at most this many units at once.
pub const MAX_BUY: u64 = 1_000_000;
/// A solve step makes progress this often (percent) …
pub const PROGRESS_PERCENT: u32 = 80;
/// … breaks hardware this often; the rest of the time (5 %) the player is stuck.
pub const BREAKAGE_PERCENT: u32 = 15;
/// `who` lists players whose last command is at most this old.
pub const ACTIVE_MS: u64 = 5 * 60_000;

/// The career ladder. A player climbs one rung per solved problem; `Retired` is the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Rank {
    /// Where everyone starts.
    #[default]
    Undergraduate,
    /// Unlocks gpu.
    Masters,
    /// Unlocks asic.
    PhD,
    /// Unlocks quantum.
    PostDoc,
    /// Unlocks dark matter.
    Professor,
    /// The end: no problem left to solve.
    Retired,
}

impl Rank {
    /// Every rank, bottom to top.
    pub const ALL: [Rank; 6] =
        [Rank::Undergraduate, Rank::Masters, Rank::PhD, Rank::PostDoc, Rank::Professor, Rank::Retired];

    /// The title shown to players.
    pub fn title(self) -> &'static str {
        match self {
            Rank::Undergraduate => "Undergraduate",
            Rank::Masters => "Masters",
            Rank::PhD => "PhD",
            Rank::PostDoc => "PostDoc",
            Rank::Professor => "Professor",
            Rank::Retired => "Retired",
        }
    }

    /// The key segment.
    pub fn slug(self) -> &'static str {
        match self {
            Rank::Undergraduate => "undergraduate",
            Rank::Masters => "masters",
            Rank::PhD => "phd",
            Rank::PostDoc => "postdoc",
            Rank::Professor => "professor",
            Rank::Retired => "retired",
        }
    }

    /// The rank a solved problem leads to (`Retired` stays).
    pub fn next(self) -> Rank {
        Rank::ALL.get(self as usize + 1).copied().unwrap_or(Rank::Retired)
    }

    /// The problem the players of this rank share; `None` for `Retired`.
    pub fn problem(self) -> Option<Problem> {
        let (health, title) = match self {
            Rank::Undergraduate => (100, "a malloc lab that segfaults only on Tuesdays"),
            Rank::Masters => (1_000, "a Raft cluster that keeps electing two leaders"),
            Rank::PhD => (10_000, "a thesis chapter that reviewer two wants rewritten"),
            Rank::PostDoc => (500_000, "a grant proposal due at midnight, in three time zones"),
            Rank::Professor => (10_000_000, "a tenure case before a very skeptical committee"),
            Rank::Retired => return None,
        };
        Some(Problem { rank: self, health, title })
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

impl TryFrom<u8> for Rank {
    type Error = String;
    fn try_from(n: u8) -> Result<Rank, String> {
        Rank::ALL.get(usize::from(n)).copied().ok_or_else(|| format!("rank {n} does not exist (0 to 5)"))
    }
}

impl From<Rank> for u8 {
    fn from(r: Rank) -> u8 {
        r as u8
    }
}

/// A rank's shared problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Whose problem it is.
    pub rank: Rank,
    /// Total progress needed to solve it.
    pub health: u64,
    /// What it is.
    pub title: &'static str,
}

/// The kinds of hardware, cheapest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hardware {
    /// Price 1, power 1.
    Cpu,
    /// Price 5, power 10.
    Gpu,
    /// Price 25, power 100.
    Asic,
    /// Price 125, power 1 000.
    Quantum,
    /// Price 625, power 10 000.
    DarkMatter,
}

impl Hardware {
    /// Every kind, cheapest first.
    pub const ALL: [Hardware; 5] =
        [Hardware::Cpu, Hardware::Gpu, Hardware::Asic, Hardware::Quantum, Hardware::DarkMatter];

    /// The name players type.
    pub fn name(self) -> &'static str {
        match self {
            Hardware::Cpu => "cpu",
            Hardware::Gpu => "gpu",
            Hardware::Asic => "asic",
            Hardware::Quantum => "quantum",
            Hardware::DarkMatter => "dark_matter",
        }
    }

    /// Coins per unit.
    pub fn price(self) -> u64 {
        match self {
            Hardware::Cpu => 1,
            Hardware::Gpu => 5,
            Hardware::Asic => 25,
            Hardware::Quantum => 125,
            Hardware::DarkMatter => 625,
        }
    }

    /// Power per unit.
    pub fn power(self) -> u64 {
        match self {
            Hardware::Cpu => 1,
            Hardware::Gpu => 10,
            Hardware::Asic => 100,
            Hardware::Quantum => 1_000,
            Hardware::DarkMatter => 10_000,
        }
    }

    /// The rank from which the shop sells it.
    pub fn unlocked_at(self) -> Rank {
        match self {
            Hardware::Cpu => Rank::Undergraduate,
            Hardware::Gpu => Rank::Masters,
            Hardware::Asic => Rank::PhD,
            Hardware::Quantum => Rank::PostDoc,
            Hardware::DarkMatter => Rank::Professor,
        }
    }

    /// Parses a name as typed (`dark-matter`, `darkmatter` and `DM` are accepted too).
    pub fn parse(input: &str) -> Option<Hardware> {
        let folded: String =
            input.trim().to_ascii_lowercase().chars().filter(|c| !matches!(c, '_' | '-' | ' ')).collect();
        let plural = folded.strip_suffix('s').unwrap_or(&folded);
        match plural {
            "cpu" => Some(Hardware::Cpu),
            "gpu" => Some(Hardware::Gpu),
            "asic" => Some(Hardware::Asic),
            "quantum" => Some(Hardware::Quantum),
            "darkmatter" | "dm" => Some(Hardware::DarkMatter),
            _ => None,
        }
    }
}

impl fmt::Display for Hardware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Units lost when a kind of which the player owns `count` units breaks: a quarter, rounded
/// up, so at least one unit always breaks (and a lone unit is lost entirely).
pub fn breakage(count: u64) -> u64 {
    count.div_ceil(4)
}

/// Coins from one mining attempt with `power` (at least 1: bare hands still find a coin):
/// `None` when the attempt fails, else `rand(power) + 1`.
pub fn mine_once(rng: &mut impl Rng, power: u64) -> Option<u64> {
    if rng.random_range(0..100) >= MINE_SUCCESS_PERCENT {
        return None;
    }
    Some(rng.random_range(0..power.max(1)) + 1)
}

/// What one step of solving does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Progress by the player's total power (80 %).
    Progress,
    /// A quarter of one kind of the player's hardware breaks (15 %).
    Breakage,
    /// Nothing happens (5 %).
    Stuck,
}

impl Step {
    /// Rolls the dice.
    pub fn roll(rng: &mut impl Rng) -> Step {
        let d = rng.random_range(0..100);
        if d < PROGRESS_PERCENT {
            Step::Progress
        } else if d < PROGRESS_PERCENT + BREAKAGE_PERCENT {
            Step::Breakage
        } else {
            Step::Stuck
        }
    }
}

/// A place on the shared map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// The Fence, painted over every night.
    Fence,
    /// The Randy Pausch Bridge.
    Bridge,
    /// A floor of the Gates Center (1 to 9).
    Gates(u8),
}

impl Place {
    /// Where new players start.
    pub const START: Place = Place::Gates(5);

    /// Every place, in map order (outside first, then Gates from the top floor down).
    pub fn all() -> impl Iterator<Item = Place> {
        [Place::Fence, Place::Bridge].into_iter().chain((1..=9).rev().map(Place::Gates))
    }

    /// The id used in keys and typed by players.
    pub fn id(self) -> String {
        match self {
            Place::Fence => "fence".into(),
            Place::Bridge => "bridge".into(),
            Place::Gates(n) => format!("gates{n}"),
        }
    }

    /// The name shown to players.
    pub fn title(self) -> String {
        match self {
            Place::Fence => "The Fence".into(),
            Place::Bridge => "the Randy Pausch Bridge".into(),
            Place::Gates(n) => format!("Gates floor {n}"),
        }
    }

    /// A line of scenery.
    pub fn scenery(self) -> &'static str {
        match self {
            Place::Fence => "Layers of paint, decades deep. Someone is already waiting with a brush.",
            Place::Bridge => "Wind, a view of the campus, and a plaque about dreams.",
            Place::Gates(1) => "The ground floor hums with the building's machinery.",
            Place::Gates(5) => "Helical ramps, whiteboards, and the smell of burnt coffee.",
            Place::Gates(9) => "The top floor: quiet offices and a view over Pittsburgh.",
            Place::Gates(_) => "Another floor of Gates: desks, monitors, sleepless students.",
        }
    }

    /// Parses what a player typed: `fence`, `the fence`, `bridge`, `randy pausch bridge`,
    /// `gates5`, `gates 5`, `g5`, `floor 5`.
    pub fn parse(input: &str) -> Option<Place> {
        let folded: String =
            input.trim().to_ascii_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
        let folded = folded.strip_prefix("the").unwrap_or(&folded);
        match folded {
            "fence" => return Some(Place::Fence),
            "bridge" | "pauschbridge" | "randypauschbridge" => return Some(Place::Bridge),
            _ => {}
        }
        let digits = ["gatesfloor", "gates", "floor", "g"].iter().find_map(|p| folded.strip_prefix(p))?;
        match digits.as_bytes() {
            [d @ b'1'..=b'9'] => Some(Place::Gates(d - b'0')),
            _ => None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.title())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_tables_of_the_design() {
        let prices: Vec<_> = Hardware::ALL.iter().map(|h| (h.price(), h.power())).collect();
        assert_eq!(prices, [(1, 1), (5, 10), (25, 100), (125, 1_000), (625, 10_000)]);
        let health: Vec<_> = Rank::ALL.iter().filter_map(|r| r.problem()).map(|p| p.health).collect();
        assert_eq!(health, [100, 1_000, 10_000, 500_000, 10_000_000]);
        // Each rank unlocks one more tier.
        for (i, h) in Hardware::ALL.iter().enumerate() {
            assert_eq!(h.unlocked_at(), Rank::ALL[i]);
        }
        assert_eq!(Rank::Professor.next(), Rank::Retired);
        assert_eq!(Rank::Retired.next(), Rank::Retired);
        assert_eq!(Rank::try_from(6), Err("rank 6 does not exist (0 to 5)".to_string()));
    }

    #[test]
    fn breakage_is_a_quarter_rounded_up() {
        assert_eq!([1, 2, 4, 5, 8, 9, 100, 101].map(breakage), [1, 1, 1, 2, 2, 3, 25, 26]);
        assert_eq!(breakage(0), 0);
    }

    #[test]
    fn dice_follow_the_odds() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[Step::roll(&mut rng) as usize] += 1;
        }
        // 80/15/5 within a generous margin.
        assert!((15_500..16_500).contains(&counts[0]), "{counts:?}");
        assert!((2_700..3_300).contains(&counts[1]), "{counts:?}");
        assert!((800..1_200).contains(&counts[2]), "{counts:?}");
        let mined: Vec<_> = (0..10_000).map(|_| mine_once(&mut rng, 10)).collect();
        let hits = mined.iter().flatten().count();
        assert!((8_700..9_300).contains(&hits), "{hits}");
        assert!(mined.iter().flatten().all(|c| (1..=10).contains(c)));
        assert!((0..100).filter_map(|_| mine_once(&mut rng, 0)).all(|c| c == 1));
    }

    #[test]
    fn places_parse() {
        assert_eq!(Place::parse("The Fence"), Some(Place::Fence));
        assert_eq!(Place::parse("randy pausch bridge"), Some(Place::Bridge));
        assert_eq!(Place::parse("gates 9"), Some(Place::Gates(9)));
        assert_eq!(Place::parse("G1"), Some(Place::Gates(1)));
        assert_eq!(Place::parse("floor 3"), Some(Place::Gates(3)));
        assert_eq!(Place::parse("gates10"), None);
        assert_eq!(Place::parse("gates0"), None);
        assert_eq!(Place::parse("moon"), None);
        assert_eq!(Place::all().count(), 11);
        for p in Place::all() {
            assert_eq!(Place::parse(&p.id()), Some(p));
        }
        assert_eq!(Hardware::parse("Dark-Matter"), Some(Hardware::DarkMatter));
        assert_eq!(Hardware::parse("gpus"), Some(Hardware::Gpu));
        assert_eq!(Hardware::parse("tpu"), None);
    }
}
