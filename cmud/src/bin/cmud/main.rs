//! `cmud`: play CMUD in a terminal.
//!
//! The thin driver around the [`cmud`] library: it connects (or starts an embedded node), reads
//! lines with rustyline, passes them and the time to a [`Game`], renders the replies with the
//! story's pauses, and shows the message feed: after each command, and in a terminal also live,
//! from a thread that polls the store while the player sits at the prompt and prints the news
//! above it through rustyline's external printer (`feed`); `term` renders and completes.

use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cmud::{Game, Name, Reply, SessionId, Tone};
use replica_node::client::{Client, ClientError, RoundRobin};
use replica_node::{Node, NodeConfig, Password};
use rustyline::Editor;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;

use feed::{LiveFeed, Shared, lock};
use term::{Completion, Output, use_color};

mod feed;
mod term;

const AFTER_HELP: &str = "\
Without --server, cmud starts a private replica node inside the game process (two actors on
free loopback ports) and prints its addresses, so one command plays at once. The world lives in
memory and ends when that game quits; others on the same machine can join it meanwhile with
--server. With --listen HOST:PORT the embedded node takes fixed ports instead (players connect
to HOST:PORT and HOST:PORT+1), so friends can join a known address; to let in players on other
machines, listen on a public address and set a password (CMUD_PASSWORD or --password), which
the embedded node then requires.

To share a world, start servers (`replica-node --actors 2`) and give each player one or more of
their client addresses. With several --server addresses, queries rotate over them and skip
those that do not answer. Servers started with a password (--requirepass-file) want it from
every player: set CMUD_PASSWORD (or give --password, which other users of the machine can see in
the process list).

Exit status: 0 after `quit` (or Ctrl-D), 2 when no server can be reached at start or the
arguments are wrong.

Examples:
  cmud
  cmud --name ada
  CMUD_PASSWORD=hunter2 cmud --listen 0.0.0.0:7001   # friends: cmud --server MY-HOST:7001
  cmud --server 127.0.0.1:6001 --server 127.0.0.1:6002 --name ada
  CMUD_PASSWORD=$(cat secret) cmud --server 10.0.0.1:6001
  cmud --seed 7 --story-ms 0        # the same dice every time, no pauses";

/// CMUD: a multi-user dungeon on a replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "cmud", version, after_help = AFTER_HELP)]
struct Cli {
    /// A server's client address, HOST:PORT (a query actor's port: node port + 1 + actor).
    /// Repeat for failover. Without any, an embedded node is started.
    #[arg(short, long = "server", value_name = "ADDR")]
    servers: Vec<String>,

    /// The servers' password (their --requirepass-file), sent with AUTH on every connection.
    /// With --listen, the password the embedded node requires from every player.
    #[arg(short = 'a', long, value_name = "PASSWORD", env = "CMUD_PASSWORD", hide_env_values = true)]
    password: Option<std::ffi::OsString>,

    /// Start the embedded node on fixed ports: players connect to HOST:PORT and HOST:PORT+1
    /// (its server-to-server port is PORT-1). Without it, free loopback ports are used.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "servers", value_parser = parse_listen)]
    listen: Option<(String, u16)>,

    /// Log in as NAME (3 to 16 characters: a letter, then letters, digits or _; case folded)
    /// instead of being asked.
    #[arg(short, long, value_name = "NAME", value_parser = parse_name)]
    name: Option<Name>,

    /// Seed of the game's dice; the same seed and the same commands give the same outcomes.
    /// Default: a fresh random seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Milliseconds between beats of the story (0: no pauses).
    #[arg(long, value_name = "N", default_value_t = 600)]
    story_ms: u64,
}

/// `--listen HOST:PORT`: the host and the first client port (at least 2: the node's own port is
/// the one below).
fn parse_listen(s: &str) -> Result<(String, u16), String> {
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected HOST:PORT, e.g. 0.0.0.0:7001"))?;
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: the port is not a number from 2 to 65534"))?;
    if !(2..=65534).contains(&port) {
        return Err(format!("{s:?}: the port must be from 2 to 65534 (the next one is used too)"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("{s:?}: the host must be an IP address, e.g. 0.0.0.0 or 127.0.0.1"));
    }
    Ok((host.to_owned(), port))
}

fn parse_name(s: &str) -> Result<Name, String> {
    Name::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // Colours only for a person at a terminal: not in files or pipes, nor with NO_COLOR.
        let ansi =
            std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cmud: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 64 bits from the standard library's per-process random hash keys (seeded by the OS), mixed
/// with the time and the process id.
fn entropy() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let color = use_color();
    let password = cli.password.map(std::ffi::OsString::into_encoded_bytes);
    let (addrs, node) = if cli.servers.is_empty() {
        let (host, port) = cli.listen.clone().unwrap_or_else(|| ("127.0.0.1".into(), 1));
        let mut config = NodeConfig { host, port: port - 1, actors: 2, ..NodeConfig::default() };
        if cli.listen.is_none() {
            config.port = 0;
        }
        if let Some(p) = password.as_deref().filter(|_| cli.listen.is_some()) {
            let secret = Password::new(p).map_err(|e| anyhow::anyhow!("--password: {e}"))?;
            config.clients.requirepass = Some(secret);
        }
        let node =
            Node::start(&config).map_err(|e| anyhow::anyhow!("cannot start the embedded node: {e}"))?;
        (node.description().client_addrs(), Some(node))
    } else {
        (resolve(&cli.servers)?, None)
    };
    let router = RoundRobin::new(addrs.clone())?;
    let mut builder =
        Client::builder().connect_timeout(Duration::from_secs(1)).read_timeout(Duration::from_secs(5));
    let embedded_open = node.is_some() && cli.listen.is_none();
    if let Some(password) = password.as_ref().filter(|_| !embedded_open) {
        builder = builder.password(password);
    }
    let client = builder.build(router);
    match client.ping() {
        Ok(()) => {}
        Err(ClientError::Server(msg)) if msg.starts_with("NOAUTH") || msg.starts_with("WRONGPASS") => {
            anyhow::bail!("the server wants a password (set CMUD_PASSWORD or give --password): {msg}");
        }
        Err(e) => anyhow::bail!("cannot reach any server: {e}"),
    }

    let out = Output { color, story: Duration::from_millis(cli.story_ms) };
    out.print(&cmud::story::banner());
    if node.is_some() {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let mut r = Reply::new();
        r.add(
            Tone::Dim,
            format!("A private world runs inside this game on {} and ends when you quit.", list.join(", ")),
        );
        let loopback = addrs[0].ip().is_loopback();
        if loopback || cli.listen.is_none() {
            r.add(
                Tone::Dim,
                format!("Others on this machine can join it meanwhile: cmud --server {}", list[0]),
            );
        } else if password.is_some() {
            r.add(
                Tone::Dim,
                format!(
                    "Others can join it meanwhile, with the password: cmud --server THIS-HOST:{}",
                    addrs[0].port()
                ),
            );
        } else {
            r.add(
                Tone::Warn,
                format!(
                    "Without a password only players on this machine can join (cmud --server 127.0.0.1:{}); \
                     set CMUD_PASSWORD to let others in.",
                    addrs[0].port()
                ),
            );
        }
        out.print(&r);
    }

    let session = SessionId(entropy());
    let seed = cli.seed.unwrap_or_else(entropy);
    let game = Game::new(client, session, seed);
    let words = Arc::new(Mutex::new(game.phase().words()));
    let shared = Arc::new(Mutex::new(Shared { game, prompt_since: None }));
    let mut editor: Editor<Completion, DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(Completion { words: words.clone() }));

    // Live news needs a terminal to print above the prompt; piped input gets it after each
    // command only.
    let live = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        match editor.create_external_printer() {
            Ok(printer) => Some(LiveFeed::start(shared.clone(), printer, out)?),
            Err(e) => {
                tracing::debug!("no live feed: cannot print above the prompt: {e}");
                None
            }
        }
    } else {
        None
    };

    let result = play(&mut editor, &shared, &words, out, cli.name);
    // The editor goes first: a printer waiting for the prompt to take a message then gives up.
    drop(editor);
    if let Some(live) = live {
        live.stop();
    }
    drop(node);
    result
}

/// The game loop: reads lines until the player quits or input ends.
fn play(
    editor: &mut Editor<Completion, DefaultHistory>,
    shared: &Mutex<Shared>,
    words: &Mutex<&'static [&'static str]>,
    out: Output,
    name: Option<Name>,
) -> anyhow::Result<()> {
    let mut pending = name.map(|n| n.to_string());
    loop {
        let line = match pending.take() {
            Some(line) => line,
            None => {
                let prompt = {
                    let mut s = lock(shared);
                    s.prompt_since = Some(Instant::now());
                    s.game.phase().prompt()
                };
                let read = editor.readline(&prompt);
                let logged_in = {
                    let mut s = lock(shared);
                    s.prompt_since = None;
                    s.game.phase().player().is_some()
                };
                match read {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        line
                    }
                    Err(ReadlineError::Interrupted) => {
                        out.print(&Reply::say(Tone::Dim, "(Type `quit` to leave.)"));
                        continue;
                    }
                    Err(ReadlineError::Eof) => {
                        if !logged_in {
                            break;
                        }
                        "quit".to_owned()
                    }
                    Err(e) => return Err(anyhow::anyhow!("cannot read the terminal: {e}")),
                }
            }
        };
        let (reply, over) = {
            let mut s = lock(shared);
            let reply = s.game.input(&line, now_ms());
            *lock(words) = s.game.phase().words();
            (reply, s.game.phase().is_over())
        };
        out.print(&reply);
        if over {
            break;
        }
        // The news since the last command: chat at this place, shouts, events. A failure here
        // is not worth a message: the next command reports an unreachable server anyway.
        let news = lock(shared).game.poll_feed(now_ms());
        if let Ok(news) = news {
            out.print(&news);
        }
    }
    Ok(())
}

fn resolve(servers: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for s in servers {
        let found: Vec<SocketAddr> = s
            .to_socket_addrs()
            .map_err(|e| {
                anyhow::anyhow!("bad --server {s:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:6001)")
            })?
            .collect();
        addrs.extend(found);
    }
    Ok(addrs)
}
