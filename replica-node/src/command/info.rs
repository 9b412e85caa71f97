//! `INFO [section ...]`: server facts and counters as `name:value` lines under `# Section`
//! headings. Whole-node figures, except `keys` and `tombstones`, which are the serving actor's
//! replica.

use std::fmt::Write as _;

use super::{Ctx, VERSION};
use crate::stats::NodeStats;

pub(super) fn info(c: &mut Ctx<'_>) {
    let wanted: Vec<String> =
        c.args[1..].iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|s| s == "all" || s == "everything" || s == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let (replica, info) = (&c.actor.replica, &c.actor.info);
    let stats = &info.stats;
    let g = NodeStats::get;
    let mut text = String::new();
    if want("server") {
        let _ = write!(
            text,
            "# Server\r\nserver:replica-node\r\nversion:{VERSION}\r\nredis_version:7.0.0\r\nnode:{}\r\n\
             actor:{}\r\nactors:{}\r\nclient_addr:{}\r\npeer_addr:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            info.node,
            replica.index(),
            info.actors,
            info.client_addr,
            info.peer_addr,
            c.now.mono_ms.saturating_sub(info.started_mono_ms) / 1000,
        );
    }
    if want("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            g(&stats.clients_connected),
            info.maxclients
        );
    }
    if want("memory") {
        let _ = write!(text, "# Memory\r\nused_memory_rss:{}\r\n\r\n", (info.rss)());
    }
    if want("stats") {
        let _ = write!(
            text,
            "# Stats\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n\
             client_output_limit_disconnects:{}\r\n\r\n",
            g(&stats.commands_processed),
            g(&stats.rejected_connections),
            g(&stats.client_output_limit_disconnects),
        );
    }
    if want("keyspace") {
        let _ = write!(
            text,
            "# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0,tombstones={}\r\n\r\n",
            replica.map().len(),
            replica.map().tombstones()
        );
    }
    if want("sync") {
        let _ = write!(
            text,
            "# Sync\r\nactor:{}\r\nnode:{}\r\nkeys:{}\r\ntombstones:{}\r\nsync_max_pair_rate:{}\r\n\
             sync_messages_sent:{}\r\nsync_entries_sent:{}\r\nsync_entries_received:{}\r\n\
             sync_entries_redundant:{}\r\nremote_bytes_sent:{}\r\nremote_bytes_received:{}\r\n\
             peers_connected:{}\r\nloading:{}\r\nrepair_rounds:{}\r\nrepair_entries_sent:{}\r\n\
             repair_entries_received:{}\r\ntombstones_collected:{}\r\nclock_offset_max_ms:{}\r\n\
             clock_correction_ms:{}\r\nclock_refusing_writes:{}\r\nsync_entries_future:{}\r\n",
            replica.index(),
            info.node,
            replica.map().len(),
            replica.map().tombstones(),
            g(&stats.sync_max_pair_rate),
            g(&stats.sync_messages_sent),
            g(&stats.sync_entries_sent),
            g(&stats.sync_entries_received),
            g(&stats.sync_entries_redundant),
            g(&stats.remote_bytes_sent),
            g(&stats.remote_bytes_received),
            g(&stats.peers_connected),
            g(&stats.loading),
            g(&stats.repair_rounds),
            g(&stats.repair_entries_sent),
            g(&stats.repair_entries_received),
            g(&stats.tombstones_collected),
            g(&stats.clock_offset_max_ms),
            g(&stats.clock_correction_ms),
            u8::from(stats.clock_refusal().is_some()),
            g(&stats.sync_entries_future),
        );
    }
    if want("persistence") && stats.persist_enabled.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = write!(
            text,
            "\r\n# Persistence\r\nlog_bytes:{}\r\nlast_fsync_ms_ago:{}\r\nsnapshots_written:{}\r\n\
             recovered_entries:{}\r\nmisconf:{}\r\n",
            g(&stats.persist_log_bytes),
            c.now.mono_ms.saturating_sub(g(&stats.persist_last_fsync_mono_ms)),
            g(&stats.persist_snapshots_written),
            g(&stats.persist_recovered_entries),
            u8::from(stats.persist_refusing.load(std::sync::atomic::Ordering::Relaxed)),
        );
    }
    c.out.bulk(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::stats::NodeStats;

    /// The value of `field` in an INFO reply.
    fn info_field(info: &str, field: &str) -> String {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {info}"))
            .to_string()
    }

    fn info_text(h: &mut Harness, args: &[&str]) -> String {
        let mut cmd = vec!["INFO"];
        cmd.extend_from_slice(args);
        let Value::Bulk(text) = h.run(&cmd) else { panic!("INFO is a bulk string") };
        String::from_utf8(text.to_vec()).unwrap()
    }

    #[test]
    fn info_reports_this_actor_and_the_node() {
        let mut h = Harness::new();
        h.run(&["SET", "a", "1"]);
        h.run(&["SET", "b", "2"]);
        h.run(&["DEL", "b"]);
        let text = info_text(&mut h, &[]);
        assert_eq!(info_field(&text, "node"), "n1");
        assert_eq!(info_field(&text, "actor"), "0");
        assert_eq!(info_field(&text, "keys"), "1");
        assert_eq!(info_field(&text, "tombstones"), "1");
        // Four commands ran before this INFO, which counts itself too.
        assert_eq!(info_field(&text, "total_commands_processed"), "4");
        let sync = info_text(&mut h, &["sync"]);
        // Every sync and peer figure is zero before any sync: all the sync_*, remote_*,
        // repair_* and peers_* lines of the section.
        let figures: Vec<&str> = sync
            .lines()
            .filter(|l| ["sync_", "remote_", "repair_", "peers_"].iter().any(|p| l.starts_with(p)))
            .collect();
        assert!(figures.len() >= 11, "{sync}");
        assert!(figures.iter().all(|l| l.ends_with(":0")), "{figures:?}");
        assert_eq!(info_field(&sync, "keys"), "1");
        assert!(!sync.contains("total_commands_processed"), "only the section asked for: {sync}");
    }

    #[test]
    fn info_reports_clients_limits_and_memory() {
        let mut h = Harness::new();
        let stats = h.actor.info.stats.clone();
        NodeStats::add(&stats.clients_connected, 3);
        NodeStats::add(&stats.rejected_connections, 2);
        NodeStats::add(&stats.client_output_limit_disconnects, 1);
        let text = info_text(&mut h, &[]);
        assert_eq!(info_field(&text, "connected_clients"), "3");
        assert_eq!(info_field(&text, "maxclients"), "10000");
        assert_eq!(info_field(&text, "rejected_connections"), "2");
        assert_eq!(info_field(&text, "client_output_limit_disconnects"), "1");
        assert_eq!(info_field(&text, "used_memory_rss"), FAKE_RSS.to_string());
        let memory = info_text(&mut h, &["memory"]);
        assert_eq!(memory, format!("# Memory\r\nused_memory_rss:{FAKE_RSS}\r\n\r\n"));
        let both = info_text(&mut h, &["clients", "STATS"]);
        assert!(both.contains("connected_clients:3") && both.contains("rejected_connections:2"), "{both}");
        assert!(!both.contains("# Sync"), "{both}");
    }
}
