//! The `kv` binary against a real node: output, exit status, failover and the prompt (fed
//! from a pipe).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};

use replica_node::testkit::node_with_password;
use replica_node::{Node, NodeConfig};

/// A real one-actor node on a free loopback port, and its client address.
fn server() -> (Node, SocketAddr) {
    let config = NodeConfig { host: "127.0.0.1".into(), port: 0, actors: 1, ..NodeConfig::default() };
    let node = Node::start(&config).expect("node starts");
    let addr = node.description().client_addrs()[0];
    (node, addr)
}

/// An address nothing listens on.
fn dead() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port")
}

fn kv(servers: &[SocketAddr], args: &[&str], stdin: Option<&str>) -> Output {
    kv_with_env(servers, args, stdin, &[])
}

fn kv_with_env(servers: &[SocketAddr], args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv"));
    cmd.env_remove("KV_PASSWORD").envs(env.iter().copied());
    for s in servers {
        cmd.arg("--server").arg(s.to_string());
    }
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kv");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write kv's stdin");
    drop(input);
    child.wait_with_output().expect("wait for kv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn put_get_list_del_and_exit_codes() {
    let (_node, addr) = server();
    let s = [addr];
    let out = kv(&s, &["put", "player:ada", "42 coins"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    kv(&s, &["put", "player:bob", "7"], None);
    kv(&s, &["put", "zzz", "last"], None);

    let out = kv(&s, &["get", "player:ada"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "42 coins\n");

    let out = kv(&s, &["list", "player:"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "player:ada\t42 coins\nplayer:bob\t7\n");
    let out = kv(&s, &["list"], None);
    assert_eq!(text(&out.stdout).lines().count(), 3);

    let out = kv(&s, &["del", "player:ada"], None);
    assert_eq!(out.status.code(), Some(0));
    let out = kv(&s, &["del", "player:ada"], None);
    assert_eq!(out.status.code(), Some(1));
    let out = kv(&s, &["get", "player:ada"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("no such key"), "{}", text(&out.stderr));
}

#[test]
fn unreachable_server_and_bad_usage_exit_2() {
    let nobody = dead();
    let out = kv(&[nobody], &["get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&nobody.to_string()), "{}", text(&out.stderr));

    let out = kv(&[], &["--server", "not an address", "get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    let (_node, addr) = server();
    let out = kv(&[addr], &["put", "only-a-key"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = kv(&[addr], &["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));

    let out = kv(&[], &["--help"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Exit status"));
}

#[test]
fn fails_over_to_a_live_server() {
    let (_node, addr) = server();
    let s = [dead(), addr];
    let out = kv(&s, &["put", "k", "v"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kv(&s, &["get", "k"], None);
    assert_eq!(text(&out.stdout), "v\n");
}

#[test]
fn prompt_reads_commands_and_survives_errors() {
    let (_node, addr) = server();
    let s = [addr];
    let script = "put a 1\nput \"b c\" 'two words'\nget a\nget missing\nbogus\nput x\nlist\n\
                  del a\nget a\nhelp\nquit\nget b\n";
    let out = kv(&s, &[], Some(script));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("OK\nOK\n1\n(nil)\n"), "{stdout}");
    assert!(stdout.contains("a\t1\nb c\ttwo words\n(deleted)\n(nil)\n"), "{stdout}");
    assert!(stdout.contains("list [PREFIX]"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown command 'bogus'") && stderr.contains("usage: put KEY VALUE"),
        "{stderr}"
    );
    // Nothing after `quit` ran.
    assert!(stdout.trim_end().ends_with("\\xHH)."), "{stdout}");

    // End of input ends the prompt too.
    let out = kv(&s, &[], Some("get \"b c\"\n"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "two words\n");

    // An unreachable server is reported and the prompt carries on.
    let out = kv(&[dead()], &[], Some("get a\nhelp\n"));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("no server answered"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("commands:"));
}

#[test]
fn a_password_from_the_environment_or_the_flag() {
    let node = node_with_password(1, "s3cret");
    let s = [node.description().client_addrs()[0]];
    let out = kv(&s, &["put", "k", "v"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("NOAUTH") && err.contains("KV_PASSWORD"), "{err}");
    let out = kv_with_env(&s, &["put", "k", "v"], None, &[("KV_PASSWORD", "s3cret")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kv(&s, &["--password", "s3cret", "get", "k"], None);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "v\n".to_string()));
    let out = kv(&s, &["-a", "wrong", "get", "k"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("WRONGPASS"), "{}", text(&out.stderr));
    // The prompt authenticates too.
    let out = kv_with_env(&s, &[], Some("get k\n"), &[("KV_PASSWORD", "s3cret")]);
    assert_eq!(text(&out.stdout), "v\n");
}
