//! Loading a server (replica-node or redis-server) with pipelined `SET`s over raw TCP, and
//! watching a process: RSS and CPU time from `/proc`.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;

/// Commands per `write` of the loader (they are pipelined regardless).
const SETS_PER_WRITE: usize = 256;

/// Writes every pair with pipelined `SET`s, one raw TCP connection (and a reader thread) per
/// address, the pairs split evenly; returns when every reply has arrived.
pub fn load(addrs: &[SocketAddr], pairs: &[(Bytes, Bytes)]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let per = pairs.len().div_ceil(addrs.len());
    std::thread::scope(|s| {
        let loaders: Vec<_> = addrs
            .iter()
            .zip(pairs.chunks(per))
            .map(|(&addr, chunk)| s.spawn(move || load_one(addr, chunk)))
            .collect();
        loaders.into_iter().try_for_each(|l| l.join().expect("loader does not panic"))
    })?;
    Ok(start.elapsed())
}

pub fn load_one(addr: SocketAddr, pairs: &[(Bytes, Bytes)]) -> anyhow::Result<()> {
    const OK: &[u8] = b"+OK\r\n";
    let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = stream.try_clone()?;
    let expected = pairs.len() * OK.len();
    std::thread::scope(|s| {
        let replies = s.spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = 0;
            while seen < expected {
                let got = reader.read(&mut buf).context("reading replies")?;
                anyhow::ensure!(got > 0, "{addr} closed after {} replies", seen / OK.len());
                for (i, &byte) in buf[..got].iter().enumerate() {
                    if byte != OK[(seen + i) % OK.len()] {
                        anyhow::bail!("{addr} answered {:?}", String::from_utf8_lossy(&buf[i..got]));
                    }
                }
                seen += got;
            }
            Ok(())
        });
        let mut w = BufWriter::with_capacity(SETS_PER_WRITE * 160, &stream);
        for (k, v) in pairs {
            write!(w, "*3\r\n$3\r\nSET\r\n${}\r\n", k.len())?;
            w.write_all(k)?;
            write!(w, "\r\n${}\r\n", v.len())?;
            w.write_all(v)?;
            w.write_all(b"\r\n")?;
        }
        w.flush()?;
        replies.join().expect("reader does not panic")
    })
}

/// The resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) of process `pid` in clock ticks (10 ms on Linux), threads included.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// Waits until process `pid` uses under 10 % of a core over 250 ms, or `timeout` passes;
/// returns the time waited.
pub fn wait_idle(pid: u32, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut last = cpu_ticks(pid);
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(250));
        let now = cpu_ticks(pid);
        // At most 2 ticks of 10 ms in 250 ms is under 10 % of a core.
        match (last, now) {
            (Some(a), Some(b)) if b.saturating_sub(a) <= 2 => break,
            (_, None) => break,
            _ => last = now,
        }
    }
    start.elapsed()
}
