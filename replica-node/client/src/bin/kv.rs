//! `kv`: read and write the store from a shell.
//!
//! ```text
//! kv [--server ADDR]... get KEY | put KEY VALUE | del KEY | list [PREFIX]
//! kv [--server ADDR]...            (interactive prompt)
//! ```
//!
//! Exit status: 0 on success, 1 when the key is absent, 2 on errors.

use std::ffi::OsString;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use replica_client::{Client, ClientError, RoundRobin};
use resp::split_inline;
use rustyline::error::ReadlineError;

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the key is absent (get or del of a key that does not exist)
  2  error: no server answered, bad arguments, or the server refused the command

Output: `get` prints the value as stored, then a newline; `list` prints one KEY<TAB>VALUE line
per pair, sorted by key; `put` and `del` print nothing.

With no command, kv opens an interactive prompt that takes the same commands (plus `help`
and `quit`) and reports errors without exiting. Quote arguments that contain spaces:
  kv> put greeting \"hello world\"

Password: a server started with one (--requirepass-file) answers only after AUTH. Give the
password in the KV_PASSWORD environment variable (or with --password, which other users of the
machine can see in the process list).

Logs: RUST_LOG=debug shows failovers between servers on stderr.

Examples:
  kv put player:ada 42
  kv --server 127.0.0.1:6001 --server 127.0.0.1:6002 get player:ada
  kv list player:
  KV_PASSWORD=$(cat secret) kv get player:ada";

/// Read and write the replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "kv", version, after_help = AFTER_HELP)]
struct Cli {
    /// Server to query, as HOST:PORT (a query actor's client port: node port + 1 + actor).
    /// Repeat it for failover: queries rotate over the servers and skip those that do not
    /// answer.
    #[arg(short, long = "server", value_name = "ADDR", default_value = "127.0.0.1:6001")]
    servers: Vec<String>,

    /// The servers' password (their --requirepass-file), sent with AUTH on every connection.
    #[arg(short = 'a', long, value_name = "PASSWORD", env = "KV_PASSWORD", hide_env_values = true)]
    password: Option<OsString>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY (exit 1 if it is absent).
    Get {
        /// The key.
        key: OsString,
    },
    /// Store VALUE under KEY.
    Put {
        /// The key.
        key: OsString,
        /// The value.
        value: OsString,
    },
    /// Delete KEY (exit 1 if it was absent).
    Del {
        /// The key.
        key: OsString,
    },
    /// Print every pair whose key starts with PREFIX (all pairs if omitted), sorted by key.
    List {
        /// The key prefix.
        prefix: Option<OsString>,
    },
}

/// One command, from the command line or the prompt.
#[derive(Debug)]
enum Op {
    Get(Bytes),
    Put(Bytes, Bytes),
    Del(Bytes),
    List(Bytes),
}

impl From<Command> for Op {
    fn from(command: Command) -> Op {
        let bytes = |s: OsString| Bytes::from(s.into_encoded_bytes());
        match command {
            Command::Get { key } => Op::Get(bytes(key)),
            Command::Put { key, value } => Op::Put(bytes(key), bytes(value)),
            Command::Del { key } => Op::Del(bytes(key)),
            Command::List { prefix } => Op::List(prefix.map(bytes).unwrap_or_default()),
        }
    }
}

/// How a command ended, short of an error.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Absent,
}

const EXIT_ABSENT: u8 = 1;
const EXIT_ERROR: u8 = 2;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` and `--version` with 0.
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // Logs (failovers, retries) on stderr when asked for, coloured only for a person at a
        // terminal: not in files or pipes, nor with NO_COLOR.
        let ansi = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(ansi)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let router = match resolve(&cli.servers) {
        Ok(router) => router,
        Err(msg) => {
            eprintln!("kv: {msg}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let mut builder = Client::builder();
    if let Some(password) = cli.password {
        builder = builder.password(password.into_encoded_bytes());
    }
    let client = builder.build(router);
    match cli.command {
        Some(command) => one_shot(&client, command.into()),
        None => interactive(&client),
    }
}

/// Resolves every `--server` (names included, e.g. `localhost:6001`) into one router.
fn resolve(servers: &[String]) -> Result<RoundRobin, String> {
    let mut addrs = Vec::new();
    for server in servers {
        let mut resolved: Vec<SocketAddr> = server
            .to_socket_addrs()
            .map_err(|e| format!("invalid server address '{server}' (expected HOST:PORT): {e}"))?
            .collect();
        // Nodes listen on IPv4 by default; try a name's IPv4 addresses first.
        resolved.sort_by_key(SocketAddr::is_ipv6);
        addrs.extend(resolved);
    }
    RoundRobin::new(addrs).map_err(|e| e.to_string())
}

fn one_shot(client: &Client, op: Op) -> ExitCode {
    let key = match &op {
        Op::Get(key) | Op::Del(key) => show(key),
        _ => String::new(),
    };
    match execute(client, op, &mut io::stdout().lock(), false) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Absent) => {
            eprintln!("kv: no such key: {key}");
            ExitCode::from(EXIT_ABSENT)
        }
        // The reader went away (`kv list | head`): nothing left to do.
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e}{}", hint(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What to do about an error, when there is something obvious.
fn hint(e: &Error) -> &'static str {
    match e {
        Error::Client(ClientError::Server(msg)) if msg.starts_with("NOAUTH") => {
            " (the server wants a password: set KV_PASSWORD or give --password)"
        }
        Error::Client(ClientError::Server(msg)) if msg.starts_with("WRONGPASS") => {
            " (check KV_PASSWORD or --password)"
        }
        _ => "",
    }
}

/// Runs one command, writing its output to `out`. On the prompt (`interactive`), every
/// command prints something, so the user sees what happened.
fn execute(client: &Client, op: Op, out: &mut impl Write, interactive: bool) -> Result<Outcome, Error> {
    let outcome = match op {
        Op::Get(key) => match client.get(key)? {
            Some(value) => {
                out.write_all(&value)?;
                out.write_all(b"\n")?;
                Outcome::Done
            }
            None => {
                if interactive {
                    writeln!(out, "(nil)")?;
                }
                Outcome::Absent
            }
        },
        Op::Put(key, value) => {
            client.put(key, value)?;
            if interactive {
                writeln!(out, "OK")?;
            }
            Outcome::Done
        }
        Op::Del(key) => {
            let existed = client.delete(key)?;
            if interactive {
                writeln!(out, "{}", if existed { "(deleted)" } else { "(no such key)" })?;
            }
            if existed { Outcome::Done } else { Outcome::Absent }
        }
        Op::List(prefix) => {
            let pairs = client.list(prefix)?;
            let mut out = BufWriter::new(&mut *out);
            for (key, value) in &pairs {
                out.write_all(key)?;
                out.write_all(b"\t")?;
                out.write_all(value)?;
                out.write_all(b"\n")?;
            }
            if interactive && pairs.is_empty() {
                writeln!(out, "(empty)")?;
            }
            out.flush()?;
            Outcome::Done
        }
    };
    out.flush()?;
    Ok(outcome)
}

const PROMPT_HELP: &str = "\
commands:
  get KEY          print the value of KEY
  put KEY VALUE    store VALUE under KEY
  del KEY          delete KEY
  list [PREFIX]    print every KEY<TAB>VALUE whose key starts with PREFIX
  help             this text
  quit             leave (or Ctrl-D)
Quote arguments with spaces: put greeting \"hello world\" (escapes: \\n \\t \\\\ \\\" \\xHH).";

/// A line typed at the prompt.
#[derive(Debug)]
enum Line {
    Op(Op),
    Help,
    Quit,
    Nothing,
}

fn parse_line(line: &str) -> Result<Line, String> {
    let args = split_inline(line.as_bytes()).map_err(|e| e.to_string())?;
    let Some((name, rest)) = args.split_first() else {
        return Ok(Line::Nothing);
    };
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let usage = |u: &str| Err(format!("usage: {u}"));
    Ok(match (name.as_str(), rest) {
        ("get", [key]) => Line::Op(Op::Get(key.clone())),
        ("get", _) => return usage("get KEY"),
        ("put" | "set", [key, value]) => Line::Op(Op::Put(key.clone(), value.clone())),
        ("put" | "set", _) => return usage("put KEY VALUE"),
        ("del" | "delete", [key]) => Line::Op(Op::Del(key.clone())),
        ("del" | "delete", _) => return usage("del KEY"),
        ("list", []) => Line::Op(Op::List(Bytes::new())),
        ("list", [prefix]) => Line::Op(Op::List(prefix.clone())),
        ("list", _) => return usage("list [PREFIX]"),
        ("help" | "?", _) => Line::Help,
        ("quit" | "exit", _) => Line::Quit,
        (other, _) => return Err(format!("unknown command '{other}' (try 'help')")),
    })
}

/// The prompt: commands until `quit` or end of input; errors are printed, not fatal.
fn interactive(client: &Client) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("kv: cannot start the prompt: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    loop {
        let line = match editor.readline("kv> ") {
            Ok(line) => line,
            // Ctrl-C drops the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kv: cannot read the prompt: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        };
        if !line.trim().is_empty() {
            // History lives in memory only; failing to record a line is harmless.
            let _ = editor.add_history_entry(line.as_str());
        }
        match parse_line(&line) {
            Ok(Line::Op(op)) => {
                if let Err(e) = execute(client, op, &mut io::stdout().lock(), true) {
                    eprintln!("error: {e}{}", hint(&e));
                }
            }
            Ok(Line::Help) => println!("{PROMPT_HELP}"),
            Ok(Line::Quit) => return ExitCode::SUCCESS,
            Ok(Line::Nothing) => {}
            Err(msg) => eprintln!("error: {msg}"),
        }
    }
}

/// A key for a message: printable, escaped where it is not.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lines() {
        assert!(matches!(parse_line("  GET k "), Ok(Line::Op(Op::Get(k))) if k == "k"));
        assert!(matches!(parse_line("put k \"a b\""), Ok(Line::Op(Op::Put(k, v))) if k == "k" && v == "a b"));
        assert!(matches!(parse_line("list"), Ok(Line::Op(Op::List(p))) if p.is_empty()));
        assert!(matches!(parse_line("del"), Err(msg) if msg == "usage: del KEY"));
        assert!(parse_line("put \"x").is_err());
        assert!(parse_line("frobnicate").is_err());
        assert!(matches!(parse_line(""), Ok(Line::Nothing)));
        assert!(matches!(parse_line("quit"), Ok(Line::Quit)));
        assert!(matches!(parse_line("help"), Ok(Line::Help)));
    }

    #[test]
    fn servers_resolve() {
        let router = resolve(&["localhost:6001".into(), "127.0.0.1:6002".into()]).unwrap();
        assert!(router.addrs().contains(&"127.0.0.1:6001".parse().unwrap()));
        assert!(router.addrs()[0].is_ipv4());
        assert!(resolve(&["nohostport".into()]).is_err());
        assert!(resolve(&[]).is_err());
    }

    #[test]
    fn command_line() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["kv", "--server", "a:1", "-s", "b:2", "put", "k", "v"]).unwrap();
        assert_eq!(cli.servers, ["a:1", "b:2"]);
        assert!(matches!(cli.command, Some(Command::Put { .. })));
        let cli = Cli::try_parse_from(["kv"]).unwrap();
        assert_eq!(cli.servers, ["127.0.0.1:6001"]);
        assert!(cli.command.is_none());
        let err = Cli::try_parse_from(["kv", "get"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
