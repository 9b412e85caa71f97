//! The `replica-node` binary: readiness line, bad arguments, clean exit on SIGTERM and SIGINT.

mod common;

use std::process::Command;

use common::{NodeProcess, free_port_block};
use replica_node::client::{Client, Fixed};

/// A cluster directory for one test, under the system temp dir.
fn cluster_dir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("replica-node-bin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.to_string_lossy().into_owned()
}

#[test]
fn prints_its_description_serves_and_exits_cleanly_on_signals() {
    for signal in ["TERM", "INT"] {
        let port = free_port_block(3);
        let dir = cluster_dir(signal);
        let mut node =
            NodeProcess::start(&["--port", &port.to_string(), "--actors", "2", "--cluster-dir", &dir]);
        let desc = node.desc.clone();
        assert_eq!(desc.peer, format!("127.0.0.1:{port}"));
        assert_eq!(desc.clients, [format!("127.0.0.1:{}", port + 1), format!("127.0.0.1:{}", port + 2)]);
        assert!(!desc.node.is_empty());
        let client = Client::new(Fixed(desc.client_addrs()[1]));
        client.put(b"k", b"v").unwrap();
        assert_eq!(client.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &node.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = node.child.wait().unwrap();
        assert!(exit.success(), "SIG{signal}: exit {exit:?}");
        assert!(std::path::Path::new(&dir).join("ca.pem").exists(), "the cluster CA was created");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn rejects_bad_arguments_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_replica-node")).args(["--actors", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--actors"));
    let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
        .args(["--port", "65534", "--actors", "4", "--cluster-dir", &cluster_dir("noroom")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no room"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(env!("CARGO_BIN_EXE_replica-node")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--host",
        "--port",
        "--actors",
        "--join",
        "--cluster-dir",
        "--requirepass-file",
        "REPLICA_NODE_REQUIREPASS",
        "--protected-mode",
        "--maxclients",
        "--client-output-limit",
        "--timeout",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for (args, expect) in [
        (&["--maxclients", "0"][..], "--maxclients"),
        (&["--maxclients", "many"], "--maxclients"),
        (&["--client-output-limit", "1k"], "smallest"),
        (&["--client-output-limit", "12q"], "k, m or g"),
        (&["--protected-mode", "maybe"], "expected yes or no"),
        (&["--timeout", "soon"], "--timeout"),
        (&["--requirepass-file", "/nonexistent/pass"], "cannot read"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
            .args(args)
            .args(["--port", "0", "--cluster-dir", &cluster_dir("flags")])
            .env_remove("REPLICA_NODE_REQUIREPASS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "no readiness line for {args:?}");
    }
}

#[test]
fn the_password_comes_from_a_file_or_the_environment_never_the_command_line() {
    let dir = cluster_dir("pass");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::path::Path::new(&dir).join("requirepass");
    std::fs::write(&file, "from-file\n").unwrap();
    for (args, env, password) in [
        (vec!["--requirepass-file", file.to_str().unwrap()], None, "from-file"),
        (vec![], Some("from-env"), "from-env"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replica-node"));
        cmd.args(["--port", "0", "--actors", "1", "--cluster-dir", &dir]).args(&args);
        cmd.env_remove("REPLICA_NODE_REQUIREPASS");
        if let Some(value) = env {
            cmd.env("REPLICA_NODE_REQUIREPASS", value);
        }
        let node = NodeProcess::spawn(cmd);
        let desc = &node.desc;
        let addr = desc.client_addrs()[0];
        let stranger = Client::new(Fixed(addr));
        assert!(stranger.get(b"k").unwrap_err().to_string().contains("NOAUTH"), "{args:?}");
        let client = Client::builder().password(password).build(Fixed(addr));
        client.put(b"k", b"v").unwrap();
        drop(node);
    }
    // Both at once is ambiguous: refused.
    let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
        .args(["--port", "0", "--cluster-dir", &dir, "--requirepass-file", file.to_str().unwrap()])
        .env("REPLICA_NODE_REQUIREPASS", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_join_fails_at_start_with_a_clear_message() {
    for (bad, expect) in [
        ("not json", "not a node description"),
        (r#"{"node":"NOT HEX!","peer":"127.0.0.1:1","clients":[]}"#, "bad node id"),
        (r#"{"node":"abc123","peer":"nowhere","clients":[]}"#, "bad peer address"),
        ("@/nonexistent/desc.json", "cannot read"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
            .args(["--port", "0", "--join", bad, "--cluster-dir", &cluster_dir("join")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect) && err.contains("--join"), "{bad}: {err}");
        assert!(out.stdout.is_empty(), "no readiness line for {bad}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error() {
    // The held client port comes from the OS, so no test running beside this one can pick
    // it too; the node's peer port is the one below it.
    let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hold.local_addr().unwrap().port() - 1;
    let out = Command::new(env!("CARGO_BIN_EXE_replica-node"))
        .args(["--port", &port.to_string(), "--actors", "1", "--cluster-dir", &cluster_dir("taken")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on") && err.contains(&(port + 1).to_string()), "{err}");
}
