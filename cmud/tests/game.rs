//! Every command and rule through the library, on an in-memory store, with fixed seeds and no
//! story delay.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cmud::keys::{self, LedgerId};
use cmud::ledger::read_holdings;
use cmud::{Game, Hardware, Holdings, MemStore, Name, Phase, Rank, SessionId, Store, StoreError};

type G = Game<Arc<MemStore>>;

thread_local! {
    /// The test's wall clock: 10 ms per input, starting at a fixed date.
    static NOW: Cell<u64> = const { Cell::new(1_700_000_000_000) };
}

fn tick() -> u64 {
    NOW.with(|n| {
        n.set(n.get() + 10);
        n.get()
    })
}

fn advance(ms: u64) {
    NOW.with(|n| n.set(n.get() + ms));
}

fn run(game: &mut G, line: &str) -> String {
    game.input(line, tick()).text()
}

fn login(store: &Arc<MemStore>, session: u64, name: &str) -> G {
    let mut game = Game::new(store.clone(), SessionId(session), session);
    let reply = run(&mut game, name);
    assert!(game.phase().player().is_some(), "login as {name} failed: {reply}");
    game
}

fn holdings(store: &dyn Store, name: &str) -> Holdings {
    let mut warnings = Vec::new();
    let h = read_holdings(store, &Name::parse(name).unwrap(), None, &mut warnings).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    h
}

fn coins(game: &G) -> i128 {
    let player = game.phase().player().expect("logged in");
    let mut warnings = Vec::new();
    read_holdings(game.store(), player.name(), Some((player.session(), player.ledger())), &mut warnings)
        .unwrap()
        .coins()
}

/// Mines until the balance reaches `target` coins.
fn mine_until(game: &mut G, target: i128) {
    for _ in 0..10_000 {
        if coins(game) >= target {
            return;
        }
        run(game, "mine 1000");
    }
    panic!("could not mine {target} coins");
}

#[test]
fn a_new_character_gets_the_story_and_comes_back_to_a_welcome() {
    let store = Arc::new(MemStore::new());
    let mut game = Game::new(store.clone(), SessionId(1), 1);
    assert_eq!(game.phase().prompt(), "Your name: ");
    let intro = run(&mut game, "Ada");
    assert!(intro.contains("Welcome, ada."), "{intro}");
    assert!(intro.contains("one tired cpu"), "{intro}");
    let stats = run(&mut game, "stats");
    assert!(stats.contains("ada, Undergraduate"), "{stats}");
    assert!(stats.contains("coins  0"), "{stats}");
    assert!(stats.contains("power  1  (1 unit)"), "{stats}");
    assert!(stats.contains("Gates floor 5"), "{stats}");
    assert!(stats.contains("0 of 100 solved"), "{stats}");
    assert_eq!(game.phase().prompt(), "[gates5] ada> ");
    assert!(run(&mut game, "quit").contains("Goodbye"));
    assert!(game.phase().is_over());
    assert!(run(&mut game, "stats").contains("ended"));

    let mut again = Game::new(store.clone(), SessionId(2), 2);
    let welcome = run(&mut again, "ADA");
    assert!(welcome.contains("Welcome back, ada. You are on Gates floor 5."), "{welcome}");
    // One starting cpu, not two.
    assert_eq!(holdings(&*store, "ada").count(Hardware::Cpu), 1);
}

#[test]
fn the_intro_is_paced_in_beats() {
    let mut game = Game::new(Arc::new(MemStore::new()), SessionId(1), 1);
    let intro = game.input("ada", tick());
    let pauses = intro.items.iter().filter(|i| matches!(i, cmud::Item::Pause)).count();
    assert!(pauses >= 3, "{intro:?}");
}

#[test]
fn a_returning_player_without_hardware_gets_the_starting_cpu_back() {
    let store = Arc::new(MemStore::new());
    let ada = Name::parse("ada").unwrap();
    login(&store, 1, "ada");
    // The starting kit's record is lost: ada would mine with no power.
    store.delete(&keys::ledger(&ada, LedgerId::Genesis)).unwrap();
    assert_eq!(holdings(&*store, "ada").units(), 0);
    let mut back = Game::new(store.clone(), SessionId(2), 2);
    let reply = run(&mut back, "ada");
    assert!(reply.contains("Welcome back, ada.") && reply.contains("spare cpu"), "{reply}");
    assert_eq!(holdings(&*store, "ada").count(Hardware::Cpu), 1);
    assert!(run(&mut back, "stats").contains("power  1  (1 unit)"));
    // With hardware, a return changes nothing.
    let mut again = Game::new(store.clone(), SessionId(3), 3);
    assert!(!run(&mut again, "ada").contains("spare cpu"));
    assert_eq!(holdings(&*store, "ada").count(Hardware::Cpu), 1);
}

#[test]
fn bad_names_are_refused_and_the_login_goes_on() {
    let store = Arc::new(MemStore::new());
    let mut game = Game::new(store.clone(), SessionId(1), 1);
    for bad in ["", "ab", "1abc", "bob/x", "bob bob", "abcdefghijklmnopq", "x\u{1b}[2J"] {
        let reply = run(&mut game, bad);
        assert!(reply.contains("That name won't do"), "{bad:?}: {reply}");
        assert!(matches!(game.phase(), Phase::Login(_)));
    }
    assert!(run(&mut game, "help").contains("A new name creates a character"));
    assert!(store.is_empty(), "a refused name wrote nothing");
    assert!(run(&mut game, "Bob_2").contains("Welcome, bob_2."));
    let mut leaver = Game::new(store.clone(), SessionId(2), 2);
    assert!(run(&mut leaver, "quit").contains("Goodbye"));
    assert!(leaver.phase().is_over());
}

#[test]
fn bob_never_sees_bobbys_keys_and_phd_never_touches_a_problem() {
    let store = Arc::new(MemStore::new());
    let mut bobby = login(&store, 1, "bobby");
    run(&mut bobby, "mine 100");
    run(&mut bobby, "buy cpu 10");
    let mut bob = login(&store, 2, "bob");
    assert!(run(&mut bob, "stats").contains("coins  0"));
    assert_eq!(holdings(&*store, "bob").count(Hardware::Cpu), 1);
    assert_eq!(holdings(&*store, "bobby").count(Hardware::Cpu), 11);
    let bob_keys = store.list(&keys::player(&Name::parse("bob").unwrap())).unwrap();
    assert!(bob_keys.keys().all(|k| k.starts_with("cmud/v1/player/bob/")), "{bob_keys:?}");
    let top = run(&mut bob, "top");
    assert!(top.contains("bobby") && top.contains("bob "), "{top}");

    let mut phd = login(&store, 3, "PhD");
    run(&mut phd, "mine 10");
    run(&mut phd, "move bridge");
    assert!(store.list("cmud/v1/problem/").unwrap().is_empty());
    assert!(run(&mut phd, "stats").contains("phd, Undergraduate"));
    // Every key the game wrote is in its namespace.
    assert!(store.list("").unwrap().keys().all(|k| k.starts_with(keys::ROOT)));
}

#[test]
fn mining_is_bounded_and_pays_by_power() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    let reply = run(&mut game, "mine 1000");
    assert!(reply.contains("You mine 1,000 times with 1 power."), "{reply}");
    // With power 1 each success pays exactly one coin.
    let earned = coins(&game);
    assert!((850..=950).contains(&earned), "{earned}");
    assert!(reply.contains(&format!("tries struck coins: +{earned}")), "{reply}");
    assert!(run(&mut game, "mine 1001").contains("1 to 1000"));
    assert!(run(&mut game, "mine 0").contains("1 to 1000"));
    assert_eq!(coins(&game), earned);
    // More power, more coins per strike: rand(power) + 1.
    run(&mut game, &format!("buy cpu {}", earned - 1));
    assert_eq!(holdings(&*store, "ada").power(), u64::try_from(earned).unwrap());
    run(&mut game, "mine 100");
    assert!(coins(&game) > 1_000, "{}", coins(&game));
    assert!(run(&mut game, "mine").contains("You mine once"));
}

#[test]
fn buying_checks_the_balance_the_rank_and_the_limits() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    let shop = run(&mut game, "shop");
    assert!(shop.contains("gpu") && shop.contains("locked until Masters"), "{shop}");
    assert!(shop.contains("dark_matter") && shop.contains("locked until Professor"), "{shop}");
    assert!(run(&mut game, "buy gpu").contains("unlocks at Masters"));
    assert!(run(&mut game, "buy dark_matter 1").contains("unlocks at Professor"));
    let broke = run(&mut game, "buy cpu 5");
    assert!(broke.contains("can't afford") && broke.contains("5 cpu cost 5"), "{broke}");
    assert!(run(&mut game, "buy cpu max").contains("can't afford"));
    assert!(run(&mut game, "buy cpu 1000001").contains("1 to 1000000"));
    assert!(run(&mut game, "buy tpu").contains("no \"tpu\""));
    assert!(run(&mut game, "buy").contains("usage: buy"));
    run(&mut game, "mine 100");
    let have = coins(&game);
    assert!(run(&mut game, &format!("buy cpu {}", have + 1)).contains("can't afford"));
    let bought = run(&mut game, "buy cpus max");
    assert!(bought.contains(&format!("You buy {have} cpu for {have} coins.")), "{bought}");
    assert_eq!(coins(&game), 0);
    let inv = run(&mut game, "inv");
    assert!(inv.contains(&format!("total power {}", have + 1)), "{inv}");
    assert!(run(&mut game, "shop").contains("(you have 0 coins):"));
    mine_until(&mut game, 1);
    let one = coins(&game);
    run(&mut game, &format!("buy cpu {}", one - 1));
    assert!(run(&mut game, "shop").contains("(you have 1 coin):"), "one coin, singular");
    let bought = run(&mut game, "buy cpu 1");
    assert!(bought.contains("You buy 1 cpu for 1 coin."), "{bought}");
    let mine = run(&mut game, "mine");
    assert!(mine.contains("You mine once") && !mine.contains("of 1 tries"), "{mine}");
}

#[test]
fn moving_and_the_map() {
    let store = Arc::new(MemStore::new());
    let mut bob = login(&store, 2, "bob");
    let mut ada = login(&store, 1, "ada");
    assert!(run(&mut ada, "move gates5").contains("already on Gates floor 5"));
    assert!(run(&mut ada, "move").contains("usage: move"));
    assert!(run(&mut ada, "move moon").contains("no place called \"moon\""));
    assert!(run(&mut ada, "move gates 10").contains("no place called"));
    let walk = run(&mut ada, "go The Fence");
    assert!(walk.contains("You walk to The Fence."), "{walk}");
    assert_eq!(ada.phase().prompt(), "[fence] ada> ");
    run(&mut bob, "move bridge");
    let walk = run(&mut ada, "move randy pausch bridge");
    assert!(walk.contains("Here: bob"), "{walk}");
    let map = run(&mut ada, "map");
    let bridge = map.lines().find(|l| l.contains("the Randy Pausch Bridge")).unwrap();
    assert!(bridge.starts_with('*') && bridge.contains("ada (you)") && bridge.contains("bob"), "{map}");
    for place in ["The Fence", "Gates floor 1", "Gates floor 9"] {
        assert!(map.contains(place), "{map}");
    }
    // A player idle for long is still on the map, marked idle.
    advance(10 * 60_000);
    let map = run(&mut ada, "map");
    assert!(map.contains("bob (idle)"), "{map}");
    // A second session of ada sees her place.
    let mut ada2 = login(&store, 3, "ada");
    assert!(run(&mut ada2, "stats").contains("the Randy Pausch Bridge"));
}

#[test]
fn say_reaches_the_same_place_and_shout_reaches_everyone() {
    let store = Arc::new(MemStore::new());
    let mut ada = login(&store, 1, "ada");
    let mut bob = login(&store, 2, "bob");
    let mut cy = login(&store, 3, "cyd");
    run(&mut cy, "move fence");
    for g in [&mut ada, &mut bob, &mut cy] {
        g.poll_feed(tick()).unwrap();
    }
    let said = run(&mut ada, "say hello, floor five");
    assert!(said.contains("You say: hello, floor five"), "{said}");
    assert!(!said.contains("Nobody else"), "{said}");
    run(&mut ada, "shout anyone at the fence?");
    let feed = |g: &mut G| g.poll_feed(tick()).unwrap().text();
    assert_eq!(
        feed(&mut bob),
        "ada says: hello, floor five\nada shouts from Gates floor 5: anyone at the fence?\n"
    );
    assert_eq!(feed(&mut cy), "ada shouts from Gates floor 5: anyone at the fence?\n");
    assert_eq!(feed(&mut ada), "", "a session does not hear itself twice");
    assert_eq!(feed(&mut bob), "", "each message once");
    assert!(run(&mut cy, "say lonely").contains("Nobody else is here"));
    assert!(run(&mut cy, "say").contains("usage: say"));
    // A new character is announced to everyone.
    login(&store, 4, "dan");
    assert_eq!(feed(&mut cy), "* dan enrolls at the university.\n");
}

#[test]
fn who_lists_players_active_in_the_last_minutes() {
    let store = Arc::new(MemStore::new());
    let mut zed = login(&store, 9, "zed");
    run(&mut zed, "move gates9");
    advance(6 * 60_000);
    let mut ada = login(&store, 1, "ada");
    let mut bob = login(&store, 2, "bob");
    run(&mut bob, "mine");
    let who = run(&mut ada, "who");
    assert!(who.contains("ada") && who.contains("(you)"), "{who}");
    assert!(who.contains("bob") && who.contains("Undergraduate") && who.contains("Gates floor 5"), "{who}");
    assert!(!who.contains("zed"), "{who}");
    run(&mut zed, "stats");
    assert!(run(&mut ada, "who").contains("zed"));
}

#[test]
fn top_orders_by_rank_then_coins() {
    let store = Arc::new(MemStore::new());
    let mut rich = login(&store, 1, "rich");
    mine_until(&mut rich, 500);
    let mut poor = login(&store, 2, "poor");
    run(&mut poor, "mine 10");
    let mut grad = login(&store, 3, "grad");
    promote_once(&mut grad);
    let top = run(&mut poor, "top");
    let order: Vec<&str> = top.lines().skip(1).map(|l| l.split_whitespace().nth(1).unwrap()).collect();
    assert_eq!(order, ["grad", "rich", "poor"], "{top}");
    assert!(top.lines().find(|l| l.contains("poor")).unwrap().contains("(you)"));
}

/// Mines, buys the best hardware the rank allows and solves until promoted; returns the replies
/// of the battle.
fn promote_once(game: &mut G) -> String {
    let player = game.phase().player().unwrap().name().to_string();
    let rank = holdings(game.store().as_ref(), &player).rank();
    let best = Hardware::ALL.into_iter().rfind(|h| h.unlocked_at() <= rank).unwrap();
    let health = rank.problem().unwrap().health;
    let mut log = String::new();
    for _ in 0..200 {
        let h = holdings(game.store().as_ref(), &player);
        if h.rank() > rank {
            return log;
        }
        if h.power() < health / 3 {
            if game.phase().in_battle() {
                run(game, "resign");
            }
            mine_until(game, 20 * i128::from(best.price()));
            run(game, &format!("buy {best} max"));
            continue;
        }
        if !game.phase().in_battle() {
            log += &run(game, "solve");
        }
        log += &run(game, "solve");
    }
    panic!("{player} was not promoted from {rank}:\n{log}");
}

#[test]
fn promotion_through_every_rank_to_retired() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    let mut seen = vec![Rank::Undergraduate];
    let mut retirement = String::new();
    while holdings(&*store, "ada").rank() < Rank::Retired {
        retirement = promote_once(&mut game);
        seen.push(holdings(&*store, "ada").rank());
    }
    assert_eq!(seen, Rank::ALL);
    assert!(retirement.contains("You are Retired. The end."), "{retirement}");
    assert!(run(&mut game, "stats").contains("ada, Retired"));
    assert!(run(&mut game, "solve").contains("You are retired"));
    assert!(!game.phase().in_battle());
    // Each rank's problem was solved once, by ada.
    for rank in &Rank::ALL[..5] {
        let marker = store.get(&keys::solved(*rank, 0)).unwrap().expect("a solved marker");
        assert!(String::from_utf8_lossy(&marker).contains("\"by\":\"ada\""));
    }
    // Retired players may still shop at every tier.
    run(&mut game, "mine 10");
    assert!(run(&mut game, "buy dark_matter").contains("You buy 1 dark_matter"));
    let mut other = login(&store, 2, "bob");
    other.poll_feed(tick()).unwrap();
    assert!(run(&mut other, "top").lines().nth(1).unwrap().contains("ada"));
}

#[test]
fn promotion_unlocks_the_next_tier() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    promote_once(&mut game);
    mine_until(&mut game, 5);
    assert!(run(&mut game, "buy gpu").contains("You buy 1 gpu"));
    assert!(run(&mut game, "buy asic").contains("unlocks at PhD"));
    assert!(run(&mut game, "stats").contains("0 of 1,000 solved"));
}

#[test]
fn breakage_takes_a_quarter_of_one_kind_rounded_up() {
    // Find a seed whose first step breaks something; a fixed seed stays fixed.
    for seed in 0..200 {
        let store = Arc::new(MemStore::new());
        let mut game = Game::new(store.clone(), SessionId(seed), seed);
        run(&mut game, "ada");
        mine_until(&mut game, 40);
        run(&mut game, "buy cpu 40");
        run(&mut game, "solve");
        let step = run(&mut game, "solve");
        if !step.contains("burn out") {
            continue;
        }
        // 41 cpu: a quarter rounded up is 11.
        assert!(step.contains("Smoke! 11 of your 41 cpu burn out."), "{step}");
        assert_eq!(holdings(&*store, "ada").count(Hardware::Cpu), 30);
        assert!(game.phase().in_battle(), "a partial loss keeps the battle going");
        let inv = run(&mut game, "inv");
        let cpu_line: Vec<&str> =
            inv.lines().find(|l| l.trim_start().starts_with("cpu")).unwrap().split_whitespace().collect();
        assert_eq!(cpu_line[..2], ["cpu", "30"], "{inv}");
        return;
    }
    panic!("no seed below 200 broke hardware on the first step");
}

#[test]
fn breakage_hits_one_kind_only() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    // A Masters with 3 cpu and 8 gpu (83 power against 1,000 health): a ledger written the
    // way another session of hers would have.
    let mut kit = cmud::Ledger::default();
    kit.gain(Hardware::Cpu, 2);
    kit.gain(Hardware::Gpu, 8);
    kit.promote(Rank::Masters);
    store
        .put(&keys::ledger(&Name::parse("ada").unwrap(), LedgerId::Session(SessionId(99))), &kit.encode())
        .unwrap();
    assert!(run(&mut game, "solve").contains("Masters problem"));
    let mut broken = 0;
    for _ in 0..100 {
        let before = holdings(&*store, "ada");
        let step = run(&mut game, "solve");
        let after = holdings(&*store, "ada");
        let changed: Vec<Hardware> =
            Hardware::ALL.into_iter().filter(|h| after.count(*h) != before.count(*h)).collect();
        if step.contains("burn out") {
            assert_eq!(changed.len(), 1, "{step}");
            let hw = changed[0];
            let lost = before.count(hw).div_ceil(4);
            assert_eq!(after.count(hw), before.count(hw) - lost, "{step}");
            assert!(
                step.contains(&format!("Smoke! {lost} of your {} {hw} burn out.", before.count(hw))),
                "{step}"
            );
            broken += 1;
        } else {
            assert!(changed.is_empty(), "{step}");
        }
        if !game.phase().in_battle() {
            break;
        }
    }
    assert!(broken >= 1, "{broken}");
}

#[test]
fn a_wipe_out_leaves_one_cpu_and_ends_the_battle() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    run(&mut game, "solve");
    assert!(game.phase().in_battle());
    assert!(game.phase().prompt().starts_with("[battle: Undergraduate]"));
    assert!(run(&mut game, "mine").contains("middle of a battle"));
    assert!(run(&mut game, "help").contains("resign"));
    assert!(run(&mut game, "inv").contains("cpu"));
    let mut log = String::new();
    for _ in 0..500 {
        log = run(&mut game, "solve");
        if !game.phase().in_battle() {
            break;
        }
    }
    assert!(log.contains("Smoke! 1 of your 1 cpu burns out."), "{log}");
    assert!(log.contains("spare cpu"), "{log}");
    assert!(!game.phase().in_battle());
    let h = holdings(&*store, "ada");
    assert_eq!((h.count(Hardware::Cpu), h.units()), (1, 1));
    // Resigning also leaves; progress stays.
    run(&mut game, "solve");
    assert!(run(&mut game, "resign").contains("step away"));
    assert!(!game.phase().in_battle());
}

#[test]
fn the_shared_problem_is_worn_down_together_and_reset_for_everyone() {
    let store = Arc::new(MemStore::new());
    let mut ada = login(&store, 1, "ada");
    let mut bob = login(&store, 2, "bob");
    // Bob gets 30 power and lands one blow.
    mine_until(&mut bob, 29);
    run(&mut bob, "buy cpu 29");
    run(&mut bob, "solve");
    let mut done = 0;
    for _ in 0..50 {
        if run(&mut bob, "solve").contains("Progress +") {
            done = holdings(&*store, "bob").power();
            break;
        }
    }
    assert!(done > 0);
    run(&mut bob, "resign");
    // Ada sees bob's progress, and adds to it.
    assert!(run(&mut ada, "stats").contains(&format!("{done} of 100 solved")));
    let entered = run(&mut ada, "solve");
    assert!(entered.contains(&format!("{done} of 100 done so far")), "{entered}");
    // Bob finishes it while ada is in battle.
    mine_until(&mut bob, 100);
    run(&mut bob, "buy cpu max");
    let story = promote_once(&mut bob);
    assert!(story.contains("The problem is solved!"), "{story}");
    assert_eq!(holdings(&*store, "bob").rank(), Rank::Masters);
    // Ada's next step notices the reset; the fresh problem starts from zero.
    let mut step = String::new();
    for _ in 0..50 {
        step = run(&mut ada, "solve");
        if step.contains("Progress +1") {
            break;
        }
    }
    assert!(step.contains("Progress +1: 1 of 100 done.") || step.contains("0 of 100"), "{step}");
    let notices = run(&mut ada, "resign");
    assert!(notices.contains("step away"));
    let mut ada2 = login(&store, 3, "ada");
    let stats = run(&mut ada2, "stats");
    assert!(stats.contains("of 100 solved") && !stats.contains(&format!("{done} of 100")), "{stats}");
    assert_eq!(holdings(&*store, "ada").rank(), Rank::Undergraduate);
    // The feed told everyone.
    assert!(
        ada.poll_feed(tick())
            .unwrap()
            .text()
            .contains("bob solved the Undergraduate problem and is now a Masters.")
    );
}

#[test]
fn a_reset_is_announced_to_a_player_in_battle() {
    let store = Arc::new(MemStore::new());
    let mut ada = login(&store, 1, "ada");
    // Enough cpu that no breakage ends her battle, too few to solve it in one step.
    mine_until(&mut ada, 20);
    run(&mut ada, "buy cpu 20");
    run(&mut ada, "solve");
    let mut bob = login(&store, 2, "bob");
    promote_once(&mut bob);
    let step = run(&mut ada, "solve");
    assert!(step.contains("While you worked, bob solved it. A fresh problem"), "{step}");
    assert!(ada.phase().in_battle());
}

#[test]
fn an_unreachable_store_gives_a_clear_message_and_the_game_goes_on() {
    let store = Arc::new(MemStore::new());
    let mut game = Game::new(store.clone(), SessionId(1), 1);
    store.set_offline(true);
    let reply = run(&mut game, "ada");
    assert!(reply.contains("The world did not answer: no server answered"), "{reply}");
    assert!(matches!(game.phase(), Phase::Login(_)));
    store.set_offline(false);
    run(&mut game, "ada");
    run(&mut game, "mine 100");
    let before = coins(&game);
    store.set_offline(true);
    for cmd in
        ["mine 100", "stats", "map", "who", "top", "shop", "inv", "buy cpu", "move fence", "say hi", "solve"]
    {
        let reply = run(&mut game, cmd);
        assert!(reply.contains("did not answer"), "{cmd}: {reply}");
        assert!(matches!(game.phase(), Phase::Playing(_)), "{cmd}");
    }
    assert!(matches!(game.poll_feed(tick()), Err(StoreError::Unavailable(_))));
    store.set_offline(false);
    assert_eq!(coins(&game), before, "the failed mine added nothing");
    assert!(run(&mut game, "mine").contains("You mine once"));
}

#[test]
fn bad_stored_values_are_reported_never_fatal() {
    let store = Arc::new(MemStore::new());
    let mut game = login(&store, 1, "ada");
    run(&mut game, "mine 50");
    let earned = coins(&game);
    let ada = Name::parse("ada").unwrap();
    let junk: &[(String, &[u8])] = &[
        (keys::ledger(&ada, LedgerId::Session(SessionId(77))), b"{not json"),
        (format!("{}not-a-session", keys::ledgers(&ada)), b"{}"),
        (keys::place(&Name::parse("bob").unwrap()), b"\xff\xfe"),
        (format!("{}Not A Name", keys::places()), b"{}"),
        (keys::seen(&Name::parse("cyd").unwrap()), b"yesterday"),
        (keys::solved(Rank::Undergraduate, 3), b"[]"),
        (keys::damage(Rank::Undergraduate, 0, SessionId(5)), b"-4"),
        (format!("{}UPPER/ledger/genesis", keys::players()), b"{}"),
    ];
    for (k, v) in junk {
        store.put(k, v).unwrap();
    }
    for cmd in ["stats", "inv", "map", "who", "top", "shop", "mine", "say hi", "solve", "solve", "resign"] {
        let reply = run(&mut game, cmd);
        if matches!(cmd, "stats" | "inv" | "top" | "map" | "who") {
            assert!(reply.contains("warning: ignored a"), "{cmd}: {reply}");
        }
    }
    // The good values still count.
    assert!(coins(&game) >= earned);
    // A bad own place falls back to the last known one.
    store.put(&keys::place(&ada), b"{\"place\":\"moon\",\"at_ms\":99999999999999}").unwrap();
    let map = run(&mut game, "map");
    assert!(map.contains("unknown place \"moon\""), "{map}");
    // A place stamped at the end of time is adopted, and moving on from it still works.
    store
        .put(&keys::place(&ada), format!("{{\"place\":\"bridge\",\"at_ms\":{}}}", u64::MAX).as_bytes())
        .unwrap();
    assert!(run(&mut game, "map").lines().any(|l| l.contains("bridge") && l.contains("ada (you)")));
    assert!(run(&mut game, "move fence").contains("You walk to The Fence."));
}

#[test]
fn two_sessions_of_one_player_in_two_threads_keep_every_coin() {
    let store = Arc::new(MemStore::new());
    login(&store, 100, "ada");
    let threads: Vec<_> = (1..=2u64)
        .map(|s| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut game = login(&store, s, "ada");
                for i in 0..200 {
                    run(&mut game, "mine 20");
                    if i % 10 == 0 {
                        run(&mut game, "buy cpu 1");
                    }
                }
                game.phase().player().unwrap().ledger().clone()
            })
        })
        .collect();
    let ledgers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let earned: u64 = ledgers.iter().map(|l| l.coins.gained).sum();
    let spent: u64 = ledgers.iter().map(|l| l.coins.lost).sum();
    assert!(earned > 2 * 200 * 10, "{earned}");
    let h = holdings(&*store, "ada");
    assert_eq!(h.coins(), i128::from(earned) - i128::from(spent));
    assert_eq!(h.count(Hardware::Cpu), 1 + spent);
}

/// Two replicas that have not synced yet: each session writes to its own map, and `sync`
/// merges them as the store would, the newest write of each key winning.
#[derive(Debug, Default)]
struct Split {
    a: MemStore,
    b: MemStore,
    /// The write number of each key on each side (a Lamport clock stand-in).
    versions: std::sync::Mutex<BTreeMap<(bool, String), u64>>,
    clock: std::sync::atomic::AtomicU64,
}

fn sync(split: &Split) {
    let mut versions = split.versions.lock().unwrap();
    let keys: std::collections::BTreeSet<String> = versions.keys().map(|(_, k)| k.clone()).collect();
    for key in keys {
        let va = versions.get(&(true, key.clone())).copied().unwrap_or(0);
        let vb = versions.get(&(false, key.clone())).copied().unwrap_or(0);
        let (from, to, v) = if va >= vb { (&split.a, &split.b, va) } else { (&split.b, &split.a, vb) };
        match from.get(&key).unwrap() {
            Some(value) => to.put(&key, &value).unwrap(),
            None => to.delete(&key).unwrap(),
        }
        versions.insert((true, key.clone()), v);
        versions.insert((false, key), v);
    }
}

#[test]
fn concurrent_spending_can_overdraw_and_mining_repays_it() {
    let split = Arc::new(Split::default());
    // Each session on "its" replica.
    let mut one = Game::new(Arc::new(ReplicaView(split.clone(), true)), SessionId(1), 1);
    let mut two = Game::new(Arc::new(ReplicaView(split.clone(), false)), SessionId(2), 2);
    one.input("ada", tick());
    one.input("mine 200", tick());
    sync(&split);
    two.input("ada", tick());
    let balance = {
        let mut w = Vec::new();
        read_holdings(&split.b, &Name::parse("ada").unwrap(), None, &mut w).unwrap().coins()
    };
    // Both spend everything before either hears of the other.
    assert!(one.input("buy cpu max", tick()).text().contains("You buy"));
    assert!(two.input("buy cpu max", tick()).text().contains("You buy"));
    sync(&split);
    let h = {
        let mut w = Vec::new();
        read_holdings(&split.a, &Name::parse("ada").unwrap(), None, &mut w).unwrap()
    };
    assert_eq!(h.coins(), -balance, "the overdraft is a debt");
    assert_eq!(h.count(Hardware::Cpu), 1 + 2 * u64::try_from(balance).unwrap(), "no purchase is lost");
    let stats = one.input("stats", tick()).text();
    assert!(stats.contains("overdrawn"), "{stats}");
    assert!(one.input("buy cpu", tick()).text().contains("can't afford"));
    // More power now: a few rounds of mining repay the debt.
    for _ in 0..20 {
        one.input("mine 100", tick());
    }
    assert!(!one.input("stats", tick()).text().contains("overdrawn"));
    assert!(one.input("buy cpu", tick()).text().contains("You buy 1 cpu"));
}

/// One side of a [`Split`].
#[derive(Debug)]
struct ReplicaView(Arc<Split>, bool);

impl Store for ReplicaView {
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.side().get(key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.stamp(key);
        self.side().put(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.stamp(key);
        self.side().delete(key)
    }
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError> {
        self.side().list(prefix)
    }
}

impl ReplicaView {
    fn stamp(&self, key: &str) {
        let v = self.0.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.0.versions.lock().unwrap().insert((self.1, key.to_owned()), v);
    }

    fn side(&self) -> &MemStore {
        if self.1 { &self.0.a } else { &self.0.b }
    }
}
