//! End to end: the real `cmud` binary in pseudo-terminals.
//!
//! Ada starts `cmud` with no `--server`, so it runs an embedded node; Bob joins her world with
//! the address it prints (after a dead address, to exercise failover). Together they create
//! characters, mine, buy, move, look at the map, talk, and Ada solves her way to a promotion.
//! Lines are sent whole, as a paste would send them.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use expectrl::{Eof, Regex, Session, WaitStatus};

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

#[test]
fn a_world_that_cannot_be_reached_exits_with_a_clear_message() {
    let out = Command::new(CMUD).args(["--server", &dead_addr(), "--server", &dead_addr()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cmud: cannot reach any server: no server answered"), "{err}");

    let out = Command::new(CMUD).args(["--server", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad --server \"nowhere\""));

    let out = Command::new(CMUD).args(["--name", "no way"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be part of a name"));

    let out = Command::new(CMUD).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--server", "--name", "--seed", "--story-ms", "embedded"] {
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
