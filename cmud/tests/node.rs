//! The game against a real embedded node: the client implements `Store`, sessions on two
//! actors of one node keep every coin, and an unreachable server is survivable.

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmud::ledger::read_holdings;
use cmud::{Game, Hardware, Name, Phase, SessionId, Store};
use replica_node::client::{Client, Fixed, RoundRobin};
use replica_node::{Node, NodeConfig};

fn node() -> Node {
    Node::start(&NodeConfig { host: "127.0.0.1".into(), port: 0, actors: 2, ..NodeConfig::default() })
        .expect("start a node")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn quick(router: impl replica_node::client::Router + 'static) -> Client {
    Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_secs(5))
        .build(router)
}

#[test]
fn the_client_is_a_store() {
    let node = node();
    let client = quick(Fixed(node.description().client_addrs()[0]));
    client.put("cmud/v1/test/a", b"1").unwrap();
    client.put("cmud/v1/test/b", b"\x00\xff").unwrap();
    Client::put(&client, b"cmud/v1/test/\xff", b"not utf-8").unwrap();
    assert_eq!(Store::get(&client, "cmud/v1/test/a").unwrap().as_deref(), Some(&b"1"[..]));
    let listed = Store::list(&client, "cmud/v1/test/").unwrap();
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["cmud/v1/test/a", "cmud/v1/test/b"]);
    Store::delete(&client, "cmud/v1/test/a").unwrap();
    assert_eq!(Store::get(&client, "cmud/v1/test/a").unwrap(), None);
}

#[test]
fn two_sessions_of_one_player_on_two_actors_keep_every_coin() {
    let node = node();
    let addrs = node.description().client_addrs();
    assert_eq!(addrs.len(), 2);
    let mut first = Game::new(quick(Fixed(addrs[0])), SessionId(1), 1);
    first.input("ada", now_ms());
    // Let the creation reach the other actor (local sync is well under a second).
    let other = quick(Fixed(addrs[1]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while other.get("cmud/v1/player/ada/profile").unwrap().is_none() {
        assert!(Instant::now() < deadline, "the character never reached actor 1");
        thread::sleep(Duration::from_millis(20));
    }

    let threads: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let addr = *addr;
            thread::spawn(move || {
                let mut game = Game::new(quick(Fixed(addr)), SessionId(10 + i as u64), i as u64);
                assert!(game.input("ada", now_ms()).text().contains("Welcome back"));
                for round in 0..60 {
                    let reply = game.input("mine 50", now_ms()).text();
                    assert!(reply.contains("You mine 50 times"), "{reply}");
                    if round % 20 == 0 {
                        game.input("buy cpu 2", now_ms());
                    }
                }
                game.phase().player().unwrap().ledger().clone()
            })
        })
        .collect();
    let ledgers: Vec<_> = threads.into_iter().map(|t| t.join().expect("a session panicked")).collect();
    let earned: u64 = ledgers.iter().map(|l| l.coins.gained).sum();
    let spent: u64 = ledgers.iter().map(|l| l.coins.lost).sum();
    assert!(ledgers.iter().all(|l| l.coins.gained > 0));
    let expected = i128::from(earned) - i128::from(spent);

    // Both actors converge on the sum of both sessions.
    let ada = Name::parse("ada").unwrap();
    for addr in &addrs {
        let client = quick(Fixed(*addr));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut warnings = Vec::new();
            let h = read_holdings(&client, &ada, None, &mut warnings).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            if h.coins() == expected && h.count(Hardware::Cpu) == 1 + spent {
                break;
            }
            assert!(Instant::now() < deadline, "actor {addr}: {} coins, expected {expected}", h.coins());
            thread::sleep(Duration::from_millis(20));
        }
    }
    // The first session, still logged in, sees the total too.
    let stats = first.input("stats", now_ms()).text();
    assert!(stats.contains(&format!("coins  {}", cmud::reply::num(expected))), "{stats}");
}

#[test]
fn a_dead_server_is_skipped_and_a_dead_world_is_survivable() {
    let node = node();
    let live = node.description().client_addrs()[0];
    let router = RoundRobin::new([dead_addr(), live]).unwrap();
    let mut game = Game::new(quick(router), SessionId(1), 1);
    assert!(game.input("ada", now_ms()).text().contains("Welcome, ada"));
    for _ in 0..5 {
        assert!(game.input("mine 10", now_ms()).text().contains("You mine 10 times"));
    }

    // Every server gone: clear messages, no panic, the session goes on.
    let mut lost = Game::new(quick(RoundRobin::new([dead_addr(), dead_addr()]).unwrap()), SessionId(2), 2);
    let reply = lost.input("bob", now_ms()).text();
    assert!(reply.contains("The world did not answer: no server answered"), "{reply}");
    assert!(matches!(lost.phase(), Phase::Login(_)));
    drop(node);
    let reply = game.input("mine", now_ms()).text();
    assert!(reply.contains("did not answer"), "{reply}");
    assert!(matches!(game.phase(), Phase::Playing(_)));
}
