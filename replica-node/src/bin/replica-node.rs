//! `replica-node`: one server of the replicated key-value store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use replica_node::{
    ClientOptions, DEFAULT_MAXCLIENTS, Description, MAX_ACTORS, MIN_OUTPUT_LIMIT, Node, NodeConfig, Password,
    default_actors,
};

/// The environment variable that may hold the client password instead of a file.
const REQUIREPASS_ENV: &str = "REPLICA_NODE_REQUIREPASS";

/// A replica server of the geo-replicated CRDT key-value store.
///
/// Every query actor (one thread per core by default) holds a full replica and serves Redis
/// clients (RESP) on its own TCP port: actor i listens on PORT + 1 + i. Writes are answered at
/// once and reach the other actors in the background; replicas converge by last-writer-wins.
///
/// Servers form a cluster by joining: start the first one alone, then each next one with
/// --join and the description of any server already in the cluster (servers tell each other
/// about the rest). Servers sync over QUIC with mutual TLS (certificates from the cluster CA in
/// --cluster-dir, which all servers must share). A server restarted without its data rejoins
/// as a new server at the same address and is refilled by the others; CLUSTER NODES (on any
/// client port) lists the cluster, CLUSTER FORGET removes a server gone for good.
///
/// When every port listens, the node prints one line on stdout: its description, a JSON
/// object {"node": ID, "peer": "HOST:PORT", "clients": ["HOST:PORT", ...]}. Logs go to
/// stderr (set RUST_LOG, e.g. RUST_LOG=debug, for more). SIGINT or SIGTERM stops it cleanly.
///
/// Client security: with a password (--requirepass-file, or the REPLICA_NODE_REQUIREPASS
/// environment variable) every client must AUTH first (redis-cli -a, kv --password). Without
/// one, protected mode (the default) serves only clients on the loopback interface. The
/// password is never taken from the command line, where other users of the machine can read
/// it.
#[derive(Debug, Parser)]
#[command(version, long_about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (and advertise, unless --advertise says otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Host to write into the description, where other servers and clients reach this one
    /// (for a server bound to 0.0.0.0 or behind NAT) [default: the --host address].
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Peer (QUIC, UDP) port; query actor i serves clients on TCP PORT + 1 + i.
    #[arg(long, default_value_t = 6000)]
    port: u16,
    /// Number of query actors (threads) [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_ACTORS as i64))]
    actors: Option<u32>,
    /// Join an existing cluster through one of its servers: its description line (as it
    /// printed it) or @FILE holding it. Repeat for more servers to try; one is enough, the
    /// others are learned from it.
    #[arg(long, value_name = "DESC", value_parser = parse_description)]
    join: Vec<Description>,
    /// Directory of the cluster certificate authority (`ca.pem`, `ca.key`), created on first
    /// start. Every server of a cluster uses the same CA; a peer whose certificate it did not
    /// sign is refused. Or a directory from `replica-node issue-cert` (`ca.pem`, `node.pem`,
    /// `node.key`): the server runs as that node without the CA key.
    #[arg(long, default_value = "./cluster")]
    cluster_dir: PathBuf,
    /// Keep the node's state and identity in DIR (created if absent): a log of every write,
    /// synced within about 25 ms, and snapshots. A restart with the same DIR recovers every
    /// write acknowledged at least 100 ms before a crash and prints the same node id. Without
    /// it the node is memory-only and relies on its peers after a restart.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the password every client must give (AUTH) before any other command; a
    /// trailing newline is not part of it. Instead of a file, the password may be in the
    /// REPLICA_NODE_REQUIREPASS environment variable (not both).
    #[arg(long, value_name = "FILE")]
    requirepass_file: Option<PathBuf>,
    /// Protected mode: when no password is set, clients that are not on the loopback interface
    /// are refused with -DENIED (a node bound to a public address is then not open to anyone
    /// who can reach it).
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    protected_mode: bool,
    /// Most client connections open at once on the whole node; more are refused with
    /// "-ERR max number of clients reached" (counted in INFO rejected_connections).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAXCLIENTS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    maxclients: u32,
    /// Most reply bytes the node holds for one client that does not read them: a client past
    /// it is disconnected (logged, and counted in INFO client_output_limit_disconnects). Takes
    /// k, m and g suffixes (binary: 1k = 1024 bytes); at least 16k.
    #[arg(long, value_name = "BYTES", default_value = "256m", value_parser = parse_output_limit)]
    client_output_limit: usize,
    /// Close client connections idle for this long: seconds, or a number with a unit (500ms,
    /// 30s, 10m, 1h). 0 never closes them.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_duration)]
    timeout: Duration,
    /// How far ahead of this server's clock a write from another server may be stamped: later
    /// ones are refused (counted in INFO sync_entries_future) until they no longer are, and a
    /// server whose clock is ahead of most of its peers by more refuses client writes with
    /// -CLOCKSKEW (reads go on). A number with a unit (500ms, 2s) or seconds.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    max_clock_offset: Duration,
    /// How long a delete is remembered (as a tombstone) before it may be forgotten, once every
    /// server of the cluster has it; a server cut off for longer holds forgetting back. A
    /// number with a unit (30s, 10m, 1h) or seconds.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    tombstone_grace: Duration,
    /// For tests of clock skew: pretend the system clock is off by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    test_clock_skew_ms: i64,
}

fn parse_description(arg: &str) -> Result<Description, String> {
    Description::parse(arg)
}

fn parse_yes_no(arg: &str) -> Result<bool, String> {
    match arg.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, not {arg:?}")),
    }
}

/// A size in bytes: a number with an optional `k`, `m` or `g` suffix (binary multiples).
fn parse_size(arg: &str) -> Result<usize, String> {
    let lower = arg.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => return Err(format!("{arg:?}: expected a number of bytes with an optional k, m or g suffix")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{arg:?}: expected a number of bytes, e.g. 256m"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{arg:?} is too large"))
}

fn parse_output_limit(arg: &str) -> Result<usize, String> {
    let n = parse_size(arg)?;
    if n < MIN_OUTPUT_LIMIT {
        return Err(format!("{arg:?} is below the smallest limit, {}k", MIN_OUTPUT_LIMIT / 1024));
    }
    Ok(n)
}

/// A duration: a number of seconds, or a number with a unit (`ms`, `s`, `m`, `h`).
fn parse_duration(arg: &str) -> Result<Duration, String> {
    let s = arg.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("{arg:?}: expected seconds, or a number with ms, s, m or h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{arg:?}: expected seconds, or a number with ms, s, m or h")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{arg:?} is too long"))
}

/// The client password: from `--requirepass-file`, or else from the environment.
fn requirepass(file: Option<&Path>, env: Option<std::ffi::OsString>) -> Result<Option<Password>, String> {
    let bytes = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "give the password either in --requirepass-file or in {REQUIREPASS_ENV}, not both"
            ));
        }
        (Some(path), None) => {
            let mut bytes = std::fs::read(path)
                .map_err(|e| format!("--requirepass-file {}: cannot read it: {e}", path.display()))?;
            // Editors and `echo` end a file with a newline; it is not part of the password.
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            Password::new(&bytes).map_err(|e| format!("--requirepass-file {}: {e}", path.display()))?
        }
        (None, Some(value)) => {
            Password::new(value.as_encoded_bytes()).map_err(|e| format!("{REQUIREPASS_ENV}: {e}"))?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(bytes))
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Issue a node certificate from the cluster CA, so that a server need not hold the CA key.
    ///
    /// Writes ca.pem, node.pem and node.key (the key with mode 0600) into --out (never overwriting a file)
    /// and prints the node id. Give that directory to one server as its --cluster-dir: it runs
    /// as that node (with --data-dir, the directory must be new or that node's), proves it to
    /// its peers and can mint no other certificate. Keep ca.key with the operator.
    IssueCert(IssueCertArgs),
}

#[derive(Debug, clap::Args)]
struct IssueCertArgs {
    /// Directory of the cluster CA to sign with (ca.pem and ca.key; never created here).
    #[arg(long, default_value = "./cluster")]
    cluster_dir: PathBuf,
    /// Directory to write ca.pem, node.pem and node.key into (created if absent).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The node id, 12 lowercase hex digits [default: a new random id].
    #[arg(long, value_name = "ID")]
    node: Option<String>,
}

fn main() -> ExitCode {
    // Colours only for a person at a terminal: not in files, pipes or journals, nor with NO_COLOR.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::IssueCert(a)) = &args.command {
        return match replica_node::issue_cert(&a.cluster_dir, &a.out, a.node.as_deref()) {
            Ok(id) => {
                println!("{id}");
                eprintln!(
                    "replica-node: issued node {id}: {} holds ca.pem, node.pem and node.key; start that \
                     server with --cluster-dir {}",
                    a.out.display(),
                    a.out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("replica-node: {e}");
                ExitCode::from(2)
            }
        };
    }
    let requirepass = match requirepass(args.requirepass_file.as_deref(), std::env::var_os(REQUIREPASS_ENV)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("replica-node: {e}");
            return ExitCode::from(2);
        }
    };
    let config = NodeConfig {
        host: args.host,
        advertise: args.advertise,
        port: args.port,
        actors: args.actors.map_or_else(default_actors, |n| n as usize),
        cluster_dir: Some(args.cluster_dir),
        join: args.join,
        progress: std::io::stderr().is_terminal(),
        data_dir: args.data_dir,
        clients: ClientOptions {
            requirepass,
            protected_mode: args.protected_mode,
            maxclients: args.maxclients as usize,
            output_limit: args.client_output_limit,
            idle_timeout: Some(args.timeout).filter(|t| !t.is_zero()),
        },
        max_clock_offset: args.max_clock_offset,
        tombstone_grace: args.tombstone_grace,
        clock_skew_ms: args.test_clock_skew_ms,
        ..NodeConfig::default()
    };
    #[cfg(feature = "testkit")]
    let config = test_faults(config);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        eprintln!("replica-node: cannot install the signal handler: {e}");
        return ExitCode::from(2);
    }
    let node = match Node::start(&config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("replica-node: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", node.description().to_line());
    // The readiness line must reach whoever waits for it even when stdout is a pipe.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    crossbeam_channel::select! {
        recv(stop_rx) -> _ => {}
        recv(node.failed()) -> why => {
            // Fail fast (design 8): a node missing an actor, its gateway or its log must not
            // go on serving. No clean shutdown: what it would wait for may be what died.
            let why = why.unwrap_or_else(|_| "a thread died".into());
            eprintln!("replica-node: {why}; exiting so that a supervisor restarts the node");
            std::process::exit(1);
        }
    }
    tracing::info!("stopping");
    node.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Test builds only: `REPLICA_NODE_TEST_FAULT=disk-error` or `actor-panic` injects that fault
/// 300 ms after start (the fail-fast tests of the real binary).
#[cfg(feature = "testkit")]
fn test_faults(config: NodeConfig) -> NodeConfig {
    let Ok(fault) = std::env::var("REPLICA_NODE_TEST_FAULT") else { return config };
    let faults = config.faults.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        match fault.as_str() {
            "disk-error" => faults.disk.set(replica_persist::Fault::Device),
            "disk-full" => faults.disk.set(replica_persist::Fault::Full),
            "actor-panic" => faults.panic_actor.store(1, std::sync::atomic::Ordering::Relaxed),
            other => eprintln!("unknown REPLICA_NODE_TEST_FAULT {other:?}"),
        }
    });
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "m", "12q", "-1k", "1.5m", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_output_limit("1k").unwrap_err().contains("smallest"));
        assert_eq!(parse_output_limit("16k"), Ok(MIN_OUTPUT_LIMIT));
    }

    #[test]
    fn durations_are_seconds_or_carry_a_unit() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "10 s", "1d", "-5", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_password_comes_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let from_file = requirepass(Some(&file), None).unwrap().unwrap();
        assert!(from_file.matches(b"s3cret"), "the trailing newline is not part of it");
        let from_env = requirepass(None, Some("hunter2".into())).unwrap().unwrap();
        assert!(from_env.matches(b"hunter2"));
        assert_eq!(requirepass(None, None), Ok(None));
        assert!(requirepass(Some(&file), Some("x".into())).unwrap_err().contains("not both"));
        std::fs::write(&file, "\n").unwrap();
        assert!(requirepass(Some(&file), None).unwrap_err().contains("empty"));
        assert!(requirepass(None, Some("".into())).unwrap_err().contains(REQUIREPASS_ENV));
        let missing = dir.path().join("nope");
        assert!(requirepass(Some(&missing), None).unwrap_err().contains("cannot read"));
    }
}
