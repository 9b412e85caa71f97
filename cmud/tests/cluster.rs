//! The game on two servers of one cluster, B joined to A through a link emulator that delays
//! every packet by 150 ms one way: one session's `Client` per server, as two terminals on two
//! servers would have.
//!
//! - One player mining from both servers at once keeps every coin.
//! - A problem solved on A starts over for a player on B.
//! - Chat said on A reaches a player on B (and back), and B sees A's player on the map and in
//!   `who`.
//!
//! Single writes must show on the other server within the store's 2 s; game-level sums (many
//! keys, several commands) get a few seconds.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use cmud::ledger::read_holdings;
use cmud::problem::current_epoch;
use cmud::{Game, Hardware, Name, Rank, SessionId, Store};
use common::*;
use replica_node::client::{Client, Fixed};

/// One-way delay of the link between the two servers.
const DELAY: Duration = Duration::from_millis(150);

/// Actors per server: a session's client rotates over them, as `cmud --server A1 --server A2`.
const ACTORS: usize = 2;

/// One client per actor of server `i`, to check that every replica has something.
fn replicas(c: &Cluster, i: usize) -> Vec<Client> {
    c.addrs(i).into_iter().map(|a| Client::new(Fixed(a))).collect()
}

fn run(game: &mut Game<Client>, line: &str) -> String {
    game.input(line, now_ms()).text()
}

fn login(c: &Cluster, server: usize, session: u64, name: &str) -> Game<Client> {
    let mut game = Game::new(c.client(server), SessionId(session), session);
    let reply = run(&mut game, name);
    assert!(game.phase().player().is_some(), "login as {name} on server {server} failed: {reply}");
    game
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// A player's balance and cpu count as one replica sees them (every ledger summed).
fn coins_and_cpus(store: &dyn Store, who: &str) -> (i128, u64) {
    let mut warnings = Vec::new();
    let h = read_holdings(store, &name(who), None, &mut warnings).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    (h.coins(), h.count(Hardware::Cpu))
}

/// Mines until the session's view of the balance reaches `target`.
fn mine_until(game: &mut Game<Client>, target: i128) {
    for _ in 0..100 {
        let player = game.phase().player().unwrap();
        let mut warnings = Vec::new();
        let own = Some((player.session(), player.ledger()));
        if read_holdings(game.store(), player.name(), own, &mut warnings).unwrap().coins() >= target {
            return;
        }
        let reply = run(game, "mine 1000");
        assert!(reply.contains("You mine 1,000 times"), "{reply}");
    }
    panic!("could not mine {target} coins");
}

/// The total in a solve step's "Progress +P: T of H done." line.
fn progress_total(step: &str) -> Option<u64> {
    let rest = step.split("Progress +").nth(1)?;
    let after = rest.split_once(": ")?.1;
    after.split_whitespace().next()?.replace(',', "").parse().ok()
}

#[test]
fn one_player_mining_on_two_servers_at_once_keeps_every_coin() {
    let c = two_servers("coins", ACTORS, DELAY);
    // From before the write: a lower bound (the link's delay) as well as an upper one.
    let started = Instant::now();
    let _creator = login(&c, 0, 1, "ada");
    let reached = eventually(REMOTE_VISIBILITY, || {
        replicas(&c, 1).iter().all(|r| r.get("cmud/v1/player/ada/profile").unwrap().is_some())
    });
    assert!(reached.is_some(), "the new character did not reach server B within {REMOTE_VISIBILITY:?}");
    let took = started.elapsed();
    assert!(took >= DELAY, "faster than the link allows: {took:?}");
    eprintln!("character visible on B after {took:?}");

    // Two sessions of ada, one per server, mine (and now and then buy) at the same time, for
    // longer than a round trip so each keeps writing while the other's writes are in flight.
    let sessions: Vec<_> = (0..2)
        .map(|server| {
            let mut game = Game::new(c.client(server), SessionId(10 + server as u64), 100 + server as u64);
            thread::spawn(move || {
                let welcome = run(&mut game, "ada");
                assert!(welcome.contains("Welcome back"), "server {server}: {welcome}");
                for round in 0..40 {
                    let reply = run(&mut game, "mine 50");
                    assert!(reply.contains("You mine 50 times"), "server {server}: {reply}");
                    if round % 10 == 5 {
                        let reply = run(&mut game, "buy cpu 3");
                        assert!(reply.contains("You buy 3 cpu"), "server {server}: {reply}");
                    }
                    thread::sleep(Duration::from_millis(15));
                }
                game
            })
        })
        .collect();
    let mut games: Vec<Game<Client>> =
        sessions.into_iter().map(|t| t.join().expect("a session panicked")).collect();
    let ledgers: Vec<_> = games.iter().map(|g| g.phase().player().unwrap().ledger().clone()).collect();
    assert!(ledgers.iter().all(|l| l.coins.gained > 0), "{ledgers:?}");
    let earned: u64 = ledgers.iter().map(|l| l.coins.gained).sum();
    let spent: u64 = ledgers.iter().map(|l| l.coins.lost).sum();
    let bought: u64 = ledgers.iter().map(|l| l.hardware.get(&Hardware::Cpu).map_or(0, |t| t.gained)).sum();
    let expected = (i128::from(earned) - i128::from(spent), 1 + bought);

    // Every replica of both servers converges on the sum of both sessions, exactly.
    let all: Vec<Client> = replicas(&c, 0).into_iter().chain(replicas(&c, 1)).collect();
    let took = eventually(GAME_CONVERGENCE, || all.iter().all(|r| coins_and_cpus(r, "ada") == expected));
    let seen: Vec<_> = all.iter().map(|r| coins_and_cpus(r, "ada")).collect();
    let took = took
        .unwrap_or_else(|| panic!("expected {expected:?} (coins, cpus) everywhere, replicas hold {seen:?}"));
    eprintln!(
        "earned {earned} and spent {spent} in two sessions; every replica agrees after {took:?} \
         (game-level convergence, from the last command)"
    );

    // Each live session's `stats` shows the whole balance, not just its own earnings.
    for (i, game) in games.iter_mut().enumerate() {
        let stats = run(game, "stats");
        assert!(stats.contains(&format!("coins  {}", cmud::reply::num(expected.0))), "session {i}: {stats}");
    }
}

#[test]
fn a_problem_solved_on_one_server_starts_over_for_a_player_on_the_other() {
    let c = two_servers("solve", ACTORS, DELAY);
    let mut ada = login(&c, 0, 1, "ada");
    let mut bob = login(&c, 1, 2, "bob");

    // Bob, on B, lands one blow on the Undergraduate problem and stays in battle.
    mine_until(&mut bob, 29);
    assert!(run(&mut bob, "buy cpu 29").contains("You buy 29 cpu"));
    assert!(run(&mut bob, "solve").contains("You take on the Undergraduate problem"));
    let mut done = None;
    for _ in 0..50 {
        let step = run(&mut bob, "solve");
        if let Some(total) = progress_total(&step) {
            done = Some(total);
            break;
        }
    }
    let done = done.expect("bob made no progress in 50 steps");
    assert!(done > 0 && done < 100);

    // Ada, on A, sees his progress.
    let took =
        eventually(REMOTE_VISIBILITY, || run(&mut ada, "stats").contains(&format!("({done} of 100 solved)")));
    let took = took.unwrap_or_else(|| {
        panic!("bob's progress did not reach A within {REMOTE_VISIBILITY:?}: {}", run(&mut ada, "stats"))
    });
    eprintln!("bob's progress visible on A after {took:?}");

    // Ada finishes it.
    mine_until(&mut ada, 200);
    assert!(run(&mut ada, "buy cpu max").contains("You buy"));
    let entered = run(&mut ada, "solve");
    assert!(entered.contains(&format!("{done} of 100 done so far")), "{entered}");
    let mut promoted = false;
    for _ in 0..50 {
        if run(&mut ada, "solve").contains("You are now a Masters.") {
            promoted = true;
            break;
        }
    }
    assert!(promoted, "ada was not promoted");

    // The new epoch reaches every replica of B within the store's deadline.
    let took = eventually(REMOTE_VISIBILITY, || {
        replicas(&c, 1).iter().all(|r| current_epoch(r, Rank::Undergraduate, &mut Vec::new()).unwrap().0 == 1)
    });
    let took =
        took.unwrap_or_else(|| panic!("the solved problem did not reach B within {REMOTE_VISIBILITY:?}"));
    eprintln!("the reset visible on B after {took:?}");

    // Bob's next step, on B, meets a fresh problem: his earlier blow no longer counts.
    let step = run(&mut bob, "solve");
    assert!(
        step.contains("While you worked, ada solved it. A fresh problem of the same kind appears."),
        "{step}"
    );
    assert!(bob.phase().in_battle(), "{step}");
    let fresh = bob.phase().player().unwrap().damage(Rank::Undergraduate, 1);
    if let Some(total) = progress_total(&step) {
        assert_eq!(total, fresh, "the fresh problem starts from bob's new blow alone: {step}");
    }
    assert!(run(&mut bob, "resign").contains("step away"));
    let stats = run(&mut bob, "stats");
    assert!(stats.contains(&format!("({fresh} of 100 solved)")), "{stats}");
    assert!(stats.contains("bob, Undergraduate"), "{stats}");

    // Bob's feed tells him, and B knows ada's new rank.
    let news = "ada solved the Undergraduate problem and is now a Masters.";
    let mut feed = String::new();
    let heard = eventually(REMOTE_VISIBILITY, || {
        feed.push_str(&bob.poll_feed(now_ms()).unwrap().text());
        feed.contains(news)
    });
    assert!(heard.is_some(), "bob's feed: {feed:?}");
    let mut w = Vec::new();
    for r in replicas(&c, 1) {
        assert_eq!(read_holdings(&r, &name("ada"), None, &mut w).unwrap().rank(), Rank::Masters);
    }
}

#[test]
fn players_on_two_servers_see_and_hear_each_other() {
    let c = two_servers("chat", ACTORS, DELAY);
    let mut ada = login(&c, 0, 1, "ada");
    let mut bob = login(&c, 1, 2, "bob");

    // Ada walks to the Fence on A; Bob, on B, sees her there, active, on the map and in `who`.
    assert!(run(&mut ada, "move fence").contains("You walk to The Fence."));
    let mut map = String::new();
    let took = eventually(REMOTE_VISIBILITY, || {
        map = run(&mut bob, "map");
        map.lines()
            .any(|l| l.trim_start().starts_with("fence") && l.contains("ada") && !l.contains("ada (idle)"))
    });
    let took = took.unwrap_or_else(|| panic!("bob's map never showed ada at the Fence: {map}"));
    eprintln!("ada's move visible on B's map after {took:?}");
    assert!(map.lines().any(|l| l.starts_with("* gates5") && l.contains("bob (you)")), "{map}");
    let who = run(&mut bob, "who");
    let line = who.lines().find(|l| l.contains("ada")).unwrap_or_else(|| panic!("ada not in who: {who}"));
    assert!(line.contains("The Fence") && line.contains("idle "), "{who}");

    // Bob joins her. What she says on A reaches his feed on B; a shout too.
    assert!(run(&mut bob, "move fence").contains("You walk to The Fence."));
    // The other way round: Ada, on A, sees Bob arrive.
    let took = eventually(REMOTE_VISIBILITY, || run(&mut ada, "map").contains("ada (you), bob"));
    let took = took.unwrap_or_else(|| panic!("ada's map never showed bob at the Fence"));
    eprintln!("bob's move visible on A's map after {took:?}");
    let said = Instant::now();
    assert!(run(&mut ada, "say hello from A").contains("You say: hello from A"));
    assert!(run(&mut ada, "shout anyone on B?").contains("You shout"));
    let mut feed = String::new();
    let took = eventually(REMOTE_VISIBILITY, || {
        feed.push_str(&bob.poll_feed(now_ms()).unwrap().text());
        feed.contains("ada says: hello from A") && feed.contains("ada shouts from The Fence: anyone on B?")
    });
    let took = took.unwrap_or_else(|| panic!("bob's feed on B: {feed:?}"));
    assert!(said.elapsed() >= DELAY, "faster than the link allows");
    eprintln!("chat from A in B's feed after {took:?}");
    // Each message once, and the session's own messages never.
    assert_eq!(feed.matches("hello from A").count(), 1, "{feed:?}");
    assert!(!feed.contains("bob says"), "{feed:?}");

    // And back: Bob answers on B, Ada hears it on A.
    assert!(run(&mut bob, "say hi ada").contains("You say: hi ada"));
    let mut feed = String::new();
    let took = eventually(REMOTE_VISIBILITY, || {
        feed.push_str(&ada.poll_feed(now_ms()).unwrap().text());
        feed.contains("bob says: hi ada")
    });
    let took = took.unwrap_or_else(|| panic!("ada's feed on A: {feed:?}"));
    eprintln!("chat from B in A's feed after {took:?}");
}
