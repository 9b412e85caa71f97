//! A server filling from its peers (a join, or a refill after a restart without data): a
//! progress bar on stderr when it is a terminal, and a log line with the keys, bytes and time
//! when the fill ends. It reads the counters the gateway loop publishes, so it never slows the
//! network loop.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::stats::NodeStats;

/// How often the counters are read (and the bar redrawn).
const EVERY: Duration = Duration::from_millis(100);

/// Bytes in binary units, one decimal: `512 B`, `3.4 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = "B";
    for u in units {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// The bar's layout: at most 80 columns with 8-digit key counts (`{msg}` is the bytes so far).
const TEMPLATE: &str = "join {bar:16} {pos}/{len} keys {msg} {rate} eta {eta}";

fn style(color: bool) -> ProgressStyle {
    let template =
        if color { TEMPLATE.replace("{bar:16}", "{bar:16.cyan/blue}") } else { TEMPLATE.to_owned() };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            // Whole keys per second: fractions of a key are noise here.
            let _ = write!(w, "{:.0} keys/s", s.per_sec());
        })
        .progress_chars("=> ")
}

/// One fill as it is watched.
struct Fill {
    started: Instant,
    /// Peer bytes received when it started.
    bytes_before: u64,
    bar: Option<ProgressBar>,
}

/// Watches fills until the task is aborted; draws the bar when `draw` (stderr is a terminal),
/// in colour unless `NO_COLOR` is set.
pub(crate) async fn watch(stats: Arc<NodeStats>, draw: bool) {
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut fill: Option<Fill> = None;
    let mut bytes_seen = NodeStats::get(&stats.remote_bytes_received);
    loop {
        let loading = NodeStats::get(&stats.loading) == 1;
        let (received, total) = (NodeStats::get(&stats.fill_received), NodeStats::get(&stats.fill_total));
        let bytes = NodeStats::get(&stats.remote_bytes_received);
        match (&mut fill, loading) {
            (None, true) => {
                fill = Some(Fill { started: Instant::now(), bytes_before: bytes_seen, bar: None });
            }
            (Some(f), true) => {
                if draw && f.bar.is_none() && total > 0 {
                    let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                    b.set_style(style(color));
                    f.bar = Some(b);
                }
                if let Some(b) = &f.bar {
                    b.set_length(total.max(received));
                    b.set_position(received);
                    b.set_message(human_bytes(bytes.saturating_sub(f.bytes_before)));
                }
            }
            (Some(f), false) => {
                if let Some(b) = f.bar.take() {
                    b.set_position(received);
                    b.finish_and_clear();
                }
                let secs = f.started.elapsed().as_secs_f64();
                let got = bytes.saturating_sub(f.bytes_before);
                let mut rate = String::new();
                if secs > 0.0 {
                    let _ = write!(rate, ", {}/s", human_bytes((got as f64 / secs) as u64));
                }
                tracing::info!(
                    keys = received,
                    bytes = got,
                    ms = (secs * 1000.0) as u64,
                    "join complete: {received} keys, {} in {secs:.1} s{rate}",
                    human_bytes(got)
                );
                fill = None;
            }
            (None, false) => {}
        }
        bytes_seen = bytes;
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_do() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300.0 MiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
    }

    #[test]
    fn the_bar_fits_80_columns() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        // The widest line: 8-digit counts, 1023.9 MiB, a 7-digit rate, a long ETA.
        let line = TEMPLATE
            .replace("{bar:16}", &"=".repeat(16))
            .replace("{pos}", "12345678")
            .replace("{len}", "12345678")
            .replace("{msg}", &human_bytes(1024 * 1024 * 1024 - 100 * 1024))
            .replace("{rate}", "9999999 keys/s")
            .replace("{eta}", "59m");
        assert!(!line.contains('{'), "{line}");
        assert!(line.len() <= 80, "{} columns: {line}", line.len());
    }
}
