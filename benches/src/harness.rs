//! What the measurement binaries share: in-process servers on loopback (optionally joined
//! through link emulators), polling (the testkit's), percentiles, and the facts every table footer records.
//!
//! The [`Cluster`] is `replica_node::testkit`'s: servers share a cluster CA in a temporary
//! directory, each new server joins every server started before it, and with a link
//! configuration each joining pair talks through its own [`net_quic::LinkEmulator`].

use std::time::Duration;

pub use replica_node::testkit::{Cluster, TempDir, clients, eventually, eventually_every, temp_dir};

/// 127.0.0.1 with an OS-chosen port.
pub fn loopback() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, 0).into()
}

/// The value at quantile `q` (0..=1) of sorted `values`, by nearest rank.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    assert!(!sorted.is_empty(), "quantile of nothing");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals (sub-millisecond values matter for local visibility).
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Microseconds, rounded.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// "met" or a bold "missed", as the README tables mark targets.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The 1-, 5- and 15-minute load averages (Linux), to record how quiet the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The command line that ran this binary, as `cargo run` would be typed.
pub fn command_line(bin: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = format!("cargo run --release -p benches --bin {bin}");
    if !args.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&args.join(" "));
    }
    cmd
}

/// A number unlikely to repeat across runs (time and process id), to keep keys of different
/// runs apart.
pub fn unique() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 48)
}
