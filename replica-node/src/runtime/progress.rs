//! The progress bar of a server filling from its peers (a join, or a refill after a restart
//! without data), drawn on stderr when it is a terminal. It reads the counters the gateway loop
//! publishes, so drawing never slows the network loop.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::NodeStats;

/// How often the bar is redrawn.
const EVERY: Duration = Duration::from_millis(200);

/// Draws the bar while the node is loading, until the task is aborted.
pub(crate) async fn show(stats: Arc<NodeStats>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut bar: Option<ProgressBar> = None;
    loop {
        let loading = NodeStats::get(&stats.loading) == 1;
        let (received, total) = (NodeStats::get(&stats.fill_received), NodeStats::get(&stats.fill_total));
        match (&bar, loading) {
            (None, true) if total > 0 => {
                let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template(
                        "loading {bar:40.cyan/blue} {pos}/{len} keys ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar = Some(b);
            }
            (Some(b), true) => {
                b.set_length(total.max(received));
                b.set_position(received);
            }
            (Some(b), false) => {
                b.set_position(received);
                b.finish_and_clear();
                bar = None;
            }
            _ => {}
        }
        tokio::time::sleep(EVERY).await;
    }
}
