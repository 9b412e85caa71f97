//! End to end: the real `cmud` binary in pseudo-terminals.
//!
//! Ada starts `cmud` with no `--server`, so it runs an embedded node; Bob joins her world with
//! the address it prints (after a dead address, to exercise failover). Together they create
//! characters, mine, buy, move, look at the map, talk, and Ada solves her way to a promotion.
//! Lines are sent whole, as a paste would send them.
//!
//! Then the same across two servers of one cluster (in-process nodes, the link between them
//! delayed by 150 ms one way), each terminal given its own server's addresses with `--server`:
//! two players see each other on the map and hear each other in the feed, and one player
//! mining from two terminals on two servers at once keeps every coin.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use cmud::ledger::read_holdings;
use cmud::{Hardware, Name};
use common::{Cluster, GAME_CONVERGENCE, REMOTE_VISIBILITY, eventually, two_servers};
use expectrl::{Eof, Regex, Session, WaitStatus};
use replica_node::client::{Client, Fixed};

const CMUD: &str = env!("CARGO_BIN_EXE_cmud");

fn cmud(args: &[&str], color: bool) -> Session {
    let mut cmd = Command::new(CMUD);
    cmd.args(args).env("TERM", "xterm").env_remove("RUST_LOG");
    if color {
        cmd.env_remove("NO_COLOR");
    } else {
        cmd.env("NO_COLOR", "1");
    }
    let mut s = Session::spawn(cmd).expect("spawn cmud in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(15)));
    s
}

fn expect(s: &mut Session, needle: &str) -> String {
    match s.expect(needle) {
        Ok(found) => String::from_utf8_lossy(found.before()).into_owned(),
        Err(e) => panic!("waiting for {needle:?}: {e}"),
    }
}

/// Presses Enter until the feed shows `needle`: the message may reach the replica that serves
/// the next poll a few milliseconds after it was written.
fn expect_news(s: &mut Session, needle: &str) {
    s.set_expect_timeout(Some(Duration::from_millis(250)));
    let mut seen = false;
    for _ in 0..40 {
        send(s, "");
        if s.expect(needle).is_ok() {
            seen = true;
            break;
        }
    }
    s.set_expect_timeout(Some(Duration::from_secs(15)));
    assert!(seen, "the feed never showed {needle:?}");
}

fn send(s: &mut Session, line: &str) {
    s.send_line(line).expect("write to the pty");
}

fn exits_cleanly(mut s: Session) {
    s.expect(Eof).expect("the game ends");
    match s.wait().expect("wait for cmud") {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("cmud ended with {other:?}"),
    }
}

fn dead_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[test]
fn two_players_in_one_world_through_real_terminals() {
    let mut ada = cmud(&["--name", "Ada", "--seed", "7", "--story-ms", "0"], false);
    expect(&mut ada, "Others on this machine can join it meanwhile: cmud --server ");
    let found = ada.expect(Regex(r"127\.0\.0\.1:\d+")).expect("the embedded node's address");
    let addr = String::from_utf8_lossy(&found[0]).into_owned();
    expect(&mut ada, "Your student card is still warm");
    expect(&mut ada, "[gates5] ada> ");

    let dead = dead_addr();
    let mut bob = cmud(&["--server", &dead, "--server", &addr, "--story-ms", "0"], true);
    expect(&mut bob, "Your name: ");
    send(&mut bob, "b");
    expect(&mut bob, "That name won't do");
    send(&mut bob, "bob");
    // Colours are on for Bob (a terminal, NO_COLOR unset): his name is bold cyan.
    expect(&mut bob, "Welcome, \x1b[1;36mbob\x1b[0m");
    expect(&mut bob, "bob> ");

    send(&mut ada, "mine 1000");
    expect(&mut ada, "You mine 1,000 times with 1 power.");
    expect(&mut ada, "tries struck coins: +");
    expect(&mut ada, "ada> ");
    send(&mut ada, "buy cpu 200");
    expect(&mut ada, "You buy 200 cpu for 200 coins.");
    send(&mut ada, "inv");
    expect(&mut ada, "total power 201");
    expect(&mut ada, "ada> ");
    // History: the up arrow recalls `inv`.
    ada.send("\x1b[A").unwrap();
    send(&mut ada, "");
    expect(&mut ada, "total power 201");
    expect(&mut ada, "ada> ");
    // Tab completion: `wh` completes to `who`.
    ada.send("wh\t").unwrap();
    send(&mut ada, "");
    expect(&mut ada, "Active in the last 5 minutes:");
    let who = expect(&mut ada, "idle ");
    assert!(who.contains("ada") && who.contains("(you)") && who.contains("bob"), "{who}");
    expect(&mut ada, "ada> ");

    send(&mut ada, "move the fence");
    expect(&mut ada, "You walk to The Fence.");
    expect(&mut ada, "[fence] ada> ");
    send(&mut bob, "move fence");
    expect(&mut bob, "Here: ");
    expect(&mut bob, "[fence] bob> ");
    send(&mut ada, "map");
    expect(&mut ada, "The campus map:");
    ada.expect(Regex(r"\* fence +The Fence +ada \(you\), bob")).expect("both on the map at the fence");
    expect(&mut ada, "ada> ");

    // Bob talks; Ada's feed shows it when she next presses Enter.
    send(&mut bob, "say hello ada");
    expect(&mut bob, "You say: ");
    expect_news(&mut ada, "bob says: hello ada");

    send(&mut ada, "solve");
    expect(&mut ada, "You take on the Undergraduate problem");
    expect(&mut ada, "[battle: Undergraduate] ada> ");
    // Each step ends in progress, breakage, being stuck, or the promotion.
    let step_end = r"done\.|burn out\.|this time\.|You are now a Masters\.";
    let mut promoted = false;
    for _ in 0..30 {
        send(&mut ada, "solve");
        let found = ada.expect(Regex(step_end)).expect("a solve step");
        if found[0].ends_with(b"Masters.") {
            promoted = true;
            break;
        }
    }
    assert!(promoted, "ada was not promoted");
    send(&mut ada, "stats");
    expect(&mut ada, "ada, Masters");
    // Bob hears of it.
    expect_news(&mut bob, "ada solved the Undergraduate problem and is now a Masters.");

    send(&mut bob, "quit");
    expect(&mut bob, "Goodbye");
    exits_cleanly(bob);
    send(&mut ada, "quit");
    expect(&mut ada, "Goodbye");
    exits_cleanly(ada);
}

/// How soon news must appear at an idle prompt: the feed polls every half second.
const LIVE_NEWS: Duration = Duration::from_secs(5);

#[test]
fn news_appears_live_at_an_idle_prompt() {
    let mut ada = cmud(&["--name", "ada", "--seed", "5", "--story-ms", "0"], false);
    expect(&mut ada, "Others on this machine can join it meanwhile: cmud --server ");
    let found = ada.expect(Regex(r"127\.0\.0\.1:\d+")).expect("the embedded node's address");
    let addr = String::from_utf8_lossy(&found[0]).into_owned();
    expect(&mut ada, "[gates5] ada> ");
    let mut bob = cmud(&["--server", &addr, "--name", "bob", "--seed", "6", "--story-ms", "0"], false);
    expect(&mut bob, "Welcome, bob");
    expect(&mut bob, "[gates5] bob> ");

    // Ada types nothing; Bob's words at her place appear at her prompt on their own.
    send(&mut bob, "say anyone here?");
    expect(&mut bob, "You say: anyone here?");
    let start = Instant::now();
    ada.set_expect_timeout(Some(LIVE_NEWS));
    let shown = ada.expect("bob says: anyone here?").map(|_| start.elapsed());
    let took = shown.unwrap_or_else(|e| panic!("idle Ada did not see Bob's words within {LIVE_NEWS:?}: {e}"));
    eprintln!("bob's words at ada's idle prompt after {took:?}");
    // The prompt is drawn again below the news.
    expect(&mut ada, "[gates5] ada> ");

    // Half a command typed: the news goes above it, and the line is kept.
    ada.send("mi").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    send(&mut bob, "shout dinner at the fence");
    expect(&mut bob, "You shout: dinner at the fence");
    expect(&mut ada, "bob shouts from Gates floor 5: dinner at the fence");
    ada.set_expect_timeout(Some(Duration::from_secs(15)));
    send(&mut ada, "ne 3");
    let before = expect(&mut ada, "You mine 3 times");
    // Each message once: neither comes again with the next commands.
    let after = expect(&mut ada, "ada> ");
    send(&mut ada, "");
    let more = expect(&mut ada, "ada> ");
    send(&mut ada, "stats");
    let stats = expect(&mut ada, "ada> ");
    for text in [before, after, more, stats] {
        assert!(!text.contains("anyone here?") && !text.contains("dinner at"), "shown twice: {text:?}");
    }

    for (mut s, who) in [(ada, "ada"), (bob, "bob")] {
        send(&mut s, "quit");
        expect(&mut s, "Goodbye");
        exits_cleanly(s);
        eprintln!("{who} quit");
    }
}

/// Two free TCP ports in a row on loopback (and the UDP port below them for the node).
fn free_ports() -> u16 {
    for _ in 0..100 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 2
            && base < 65534
            && TcpListener::bind(("127.0.0.1", base + 1)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", base - 1)).is_ok()
        {
            return base;
        }
    }
    panic!("no free ports")
}

#[test]
fn listen_puts_the_embedded_world_at_a_known_address_behind_the_password() {
    let port = free_ports();
    let listen = format!("127.0.0.1:{port}");
    let mut ada = Command::new(CMUD);
    ada.args(["--listen", &listen, "--name", "ada", "--seed", "1", "--story-ms", "0"])
        .env("CMUD_PASSWORD", "open sesame")
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    let mut ada = Session::spawn(ada).expect("spawn cmud in a pty");
    ada.set_expect_timeout(Some(Duration::from_secs(15)));
    expect(&mut ada, &format!("Others on this machine can join it meanwhile: cmud --server {listen}"));
    expect(&mut ada, "[gates5] ada> ");
    // The known address needs the password...
    let out = Command::new(CMUD).args(["--server", &listen]).env_remove("CMUD_PASSWORD").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the server wants a password"));
    // ... and with it, Bob plays in Ada's world, on either of its ports.
    let second = format!("127.0.0.1:{}", port + 1);
    let mut bob = Command::new(CMUD);
    bob.args(["--server", &second, "--name", "bob", "--story-ms", "0"])
        .env("CMUD_PASSWORD", "open sesame")
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    let mut bob = Session::spawn(bob).expect("spawn cmud in a pty");
    bob.set_expect_timeout(Some(Duration::from_secs(15)));
    expect(&mut bob, "bob> ");
    send(&mut bob, "who");
    expect(&mut bob, "ada");
    for mut s in [bob, ada] {
        send(&mut s, "quit");
        expect(&mut s, "Goodbye");
        exits_cleanly(s);
    }
    let out = Command::new(CMUD).args(["--listen", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the port must be from 2 to 65534"));
}

#[test]
fn a_world_that_cannot_be_reached_exits_with_a_clear_message() {
    let out = Command::new(CMUD).args(["--server", &dead_addr(), "--server", &dead_addr()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cmud: cannot reach any server: no server answered"), "{err}");
    assert_eq!(err.matches("no server answered").count(), 1, "said once: {err}");

    let out = Command::new(CMUD).args(["--server", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad --server \"nowhere\""));

    let out = Command::new(CMUD).args(["--name", "no way"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be part of a name"));

    let out = Command::new(CMUD).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--server", "--name", "--seed", "--story-ms", "embedded", "--password", "CMUD_PASSWORD", "--listen"]
    {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn piped_input_plays_without_a_terminal_and_without_colour() {
    use std::io::Write;
    let mut child = Command::new(CMUD)
        .args(["--seed", "3", "--story-ms", "0"])
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"cyd\nmine 5\nshop\nbogus\n").unwrap();
    let out = child.wait_with_output().unwrap();
    // End of input quits cleanly.
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Welcome, cyd."), "{text}");
    assert!(text.contains("You mine 5 times"), "{text}");
    assert!(text.contains("locked until Masters"), "{text}");
    assert!(text.contains("unknown command \"bogus\""), "{text}");
    assert!(text.contains("Goodbye"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when stdout is not a terminal: {text:?}");
}

#[test]
fn a_password_protected_server_wants_the_password() {
    use std::io::Write;
    let node = replica_node::testkit::node_with_password(1, "s3cret");
    let addr = node.description().client_addrs()[0].to_string();
    let play = |env: Option<&str>| {
        let mut cmd = Command::new(CMUD);
        cmd.args(["--server", &addr, "--seed", "3", "--story-ms", "0"]).env_remove("CMUD_PASSWORD");
        if let Some(password) = env {
            cmd.env("CMUD_PASSWORD", password);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"dee\nmine 2\n").unwrap();
        child.wait_with_output().unwrap()
    };
    for wrong in [None, Some("nope")] {
        let out = play(wrong);
        assert_eq!(out.status.code(), Some(2), "{wrong:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wants a password") && err.contains("CMUD_PASSWORD"), "{err}");
    }
    let out = play(Some("s3cret"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Welcome, dee.") && text.contains("You mine 2 times"), "{text}");
}

/// One-way delay of the link between the two servers of the cross-server tests.
const DELAY: Duration = Duration::from_millis(150);

/// `cmud` on server `i` of `c`: every actor of that server given with `--server`.
fn cmud_on(c: &Cluster, i: usize, args: &[&str]) -> Session {
    let addrs: Vec<String> = c.addrs(i).iter().map(ToString::to_string).collect();
    let mut all: Vec<&str> = Vec::new();
    for a in &addrs {
        all.extend(["--server", a.as_str()]);
    }
    all.extend(args);
    cmud(&all, false)
}

/// Sends `line` until the output matches `pattern` or `deadline` passes; returns the time it
/// took from the first send.
fn poll(s: &mut Session, line: &str, pattern: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    s.set_expect_timeout(Some(Duration::from_millis(200)));
    let mut seen = None;
    while start.elapsed() <= deadline {
        send(s, line);
        if s.expect(Regex(pattern)).is_ok() {
            seen = Some(start.elapsed());
            break;
        }
    }
    s.set_expect_timeout(Some(Duration::from_secs(15)));
    seen.unwrap_or_else(|| panic!("sending {line:?} never showed {pattern:?} within {deadline:?}"))
}

/// A number as the game prints it (`1,234`).
fn number(bytes: &[u8]) -> u64 {
    String::from_utf8_lossy(bytes).replace(',', "").parse().expect("a number")
}

#[test]
fn players_on_two_servers_see_each_other_through_real_terminals() {
    let c = two_servers("pty-see", 2, DELAY);
    let mut ada = cmud_on(&c, 0, &["--name", "ada", "--seed", "1", "--story-ms", "0"]);
    expect(&mut ada, "Welcome, ada");
    expect(&mut ada, "[gates5] ada> ");
    let mut bob = cmud_on(&c, 1, &["--name", "bob", "--seed", "2", "--story-ms", "0"]);
    expect(&mut bob, "Welcome, bob");
    expect(&mut bob, "[gates5] bob> ");

    // Bob, on B, sees Ada (active, not idle) beside him on the map, then in `who`.
    let took = poll(&mut bob, "map", r"\* gates5 +Gates floor 5 +ada, bob \(you\)", REMOTE_VISIBILITY);
    eprintln!("ada on B's map after {took:?}");
    expect(&mut bob, "bob> ");
    send(&mut bob, "who");
    expect(&mut bob, "Active in the last 5 minutes:");
    bob.expect(Regex(r"ada +Undergraduate +Gates floor 5 +idle \d+s")).expect("ada in who");
    expect(&mut bob, "bob> ");
    // And Ada, on A, sees Bob.
    let took = poll(&mut ada, "map", r"\* gates5 +Gates floor 5 +ada \(you\), bob", REMOTE_VISIBILITY);
    eprintln!("bob on A's map after {took:?}");
    expect(&mut ada, "ada> ");

    // Ada walks to the Fence; Bob's map follows.
    send(&mut ada, "move fence");
    expect(&mut ada, "[fence] ada> ");
    let took = poll(&mut bob, "map", r"  fence +The Fence +ada\r?\n", REMOTE_VISIBILITY);
    eprintln!("ada's move on B's map after {took:?}");
    expect(&mut bob, "bob> ");
    send(&mut bob, "move fence");
    expect(&mut bob, "[fence] bob> ");

    // They talk across the servers; each hears the other when pressing Enter.
    send(&mut ada, "say hello from A");
    expect(&mut ada, "You say: hello from A");
    let took = poll(&mut bob, "", "ada says: hello from A", REMOTE_VISIBILITY);
    eprintln!("A's chat in B's feed after {took:?}");
    send(&mut bob, "shout hi from B");
    expect(&mut bob, "You shout: hi from B");
    let took = poll(&mut ada, "", "bob shouts from The Fence: hi from B", REMOTE_VISIBILITY);
    eprintln!("B's shout in A's feed after {took:?}");

    for (mut s, who) in [(ada, "ada"), (bob, "bob")] {
        expect(&mut s, &format!("{who}> "));
        send(&mut s, "quit");
        expect(&mut s, "Goodbye");
        exits_cleanly(s);
    }
}

#[test]
fn one_player_in_two_terminals_on_two_servers_keeps_every_coin() {
    let c = two_servers("pty-coins", 2, DELAY);
    let mut on_a = cmud_on(&c, 0, &["--name", "cyd", "--seed", "11", "--story-ms", "0"]);
    expect(&mut on_a, "Welcome, cyd");
    expect(&mut on_a, "cyd> ");
    // The second terminal logs back in once the character has reached B.
    let reached = eventually(REMOTE_VISIBILITY, || {
        c.addrs(1)
            .into_iter()
            .all(|a| Client::new(Fixed(a)).get("cmud/v1/player/cyd/profile").unwrap().is_some())
    });
    assert!(reached.is_some(), "the character did not reach B within {REMOTE_VISIBILITY:?}");
    let mut on_b = cmud_on(&c, 1, &["--name", "cyd", "--seed", "12", "--story-ms", "0"]);
    expect(&mut on_b, "Welcome back");
    expect(&mut on_b, "cyd> ");

    // Both terminals mine at the same time (each line goes to both before either answer is
    // read), and now and then buy; every terminal's reports are added up.
    let mut terminals = [on_a, on_b];
    let (mut earned, mut spent) = ([0u64; 2], [0u64; 2]);
    for round in 0..12 {
        let line = if round % 4 == 3 { "buy cpu 5" } else { "mine 100" };
        for t in &mut terminals {
            send(t, line);
        }
        for (i, t) in terminals.iter_mut().enumerate() {
            if line.starts_with("buy") {
                let found = t.expect(Regex(r"You buy 5 cpu for ([\d,]+) coins\.")).expect("a purchase");
                spent[i] += number(found.get(1).unwrap());
            } else {
                let found = t.expect(Regex(r"tries struck coins: \+([\d,]+)\.")).expect("a mining report");
                earned[i] += number(found.get(1).unwrap());
            }
            expect(t, "cyd> ");
        }
    }
    assert!(earned.iter().all(|e| *e > 0), "{earned:?}");
    let balance = (earned[0] + earned[1]) as i128 - (spent[0] + spent[1]) as i128;

    // Both terminals' `stats` come to the sum of everything both reported.
    let want = format!(r"coins  {}\r?\n", cmud::reply::num(balance));
    for (i, t) in terminals.iter_mut().enumerate() {
        let took = poll(t, "stats", &want, GAME_CONVERGENCE);
        eprintln!("terminal {i}: stats shows {balance} coins after {took:?}");
        expect(t, "cyd> ");
    }
    // So does the ledger, read through every replica of both servers.
    let cyd = Name::parse("cyd").unwrap();
    let replicas: Vec<Client> = (0..2).flat_map(|i| c.addrs(i)).map(|a| Client::new(Fixed(a))).collect();
    let holdings = || {
        replicas
            .iter()
            .map(|r| {
                let mut warnings = Vec::new();
                let h = read_holdings(r, &cyd, None, &mut warnings).unwrap();
                assert!(warnings.is_empty(), "{warnings:?}");
                (h.coins(), h.count(Hardware::Cpu))
            })
            .collect::<Vec<_>>()
    };
    let want = (balance, 1 + 2 * 3 * 5);
    let agreed = eventually(REMOTE_VISIBILITY, || holdings().iter().all(|h| *h == want));
    assert!(agreed.is_some(), "want {want:?} (coins, cpus) on every replica: {:?}", holdings());

    for mut t in terminals {
        send(&mut t, "quit");
        expect(&mut t, "Goodbye");
        exits_cleanly(t);
    }
}
