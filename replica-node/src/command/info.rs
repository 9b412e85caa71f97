//! `INFO [section ...]`: server facts and counters as `name:value` lines under `# Section`
//! headings, in the sections and with the names Redis tools read (`redis-cli --stat`,
//! monitoring agents). Whole-node figures, except `keys`, `tombstones` and the keyspace, which
//! are the serving actor's replica.
//!
//! Figures that have no meaning here are given the value a Redis server without that feature
//! reports (`blocked_clients:0`, `maxmemory:0`, `aof_enabled:0`), so tools that read them work.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use replica_core::gateway::MemberStatus;

use super::{Counters, Ctx, VERSION};
use crate::stats::NodeStats;

/// The sections of the default `INFO`, in order.
const SECTIONS: &[&str] =
    &["server", "clients", "memory", "persistence", "stats", "replication", "keyspace", "sync"];

pub(super) fn info(c: &mut Ctx<'_>) {
    let wanted: Vec<String> =
        c.args[1..].iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|s| s == "all" || s == "everything" || s == "default");
    let mut parts = Vec::new();
    for section in SECTIONS {
        if all || wanted.iter().any(|w| w == section) {
            parts.push(render(c, section));
        }
    }
    let text = parts.join("\r\n");
    c.out.bulk(text.as_bytes());
}

/// Bytes in Redis's human form: `1.50M`.
fn human(bytes: u64) -> String {
    let units = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in units {
        if bytes >= size {
            return format!("{:.2}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// One section, heading and lines, each line ending in CRLF.
fn render(c: &Ctx<'_>, section: &str) -> String {
    let (actor, now) = (&*c.actor, c.now);
    let (replica, info) = (&actor.replica, &actor.info);
    let stats = &info.stats;
    let g = NodeStats::get;
    let mut t = String::new();
    match section {
        "server" => {
            let port = info.client_addr.rsplit(':').next().unwrap_or("0");
            let uptime = now.mono_ms.saturating_sub(info.started_mono_ms) / 1000;
            let _ = write!(
                t,
                "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nserver:replica-node\r\n\
                 version:{VERSION}\r\nnode:{}\r\nactor:{}\r\nactors:{}\r\nclient_addr:{}\r\npeer_addr:{}\r\n\
                 tcp_port:{port}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n",
                info.node,
                replica.index(),
                info.actors,
                info.client_addr,
                info.peer_addr,
                uptime / 86_400,
            );
        }
        "clients" => {
            let _ = write!(
                t,
                "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\ntracking_clients:0\r\nmaxclients:{}\r\n",
                g(&stats.clients_connected),
                info.maxclients
            );
        }
        "memory" => {
            // No allocator statistics here: the resident size stands for both figures (the
            // first line must be `used_memory`, which tools find by prefix).
            let rss = (info.rss)();
            let _ = write!(
                t,
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
                 used_memory_rss_human:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\n\
                 maxmemory_policy:noeviction\r\n",
                human(rss),
                human(rss)
            );
        }
        "persistence" => {
            let _ = write!(
                t,
                "# Persistence\r\nloading:{}\r\nasync_loading:0\r\naof_enabled:0\r\nrdb_bgsave_in_progress:0\r\n\
                 aof_rewrite_in_progress:0\r\ndata_dir:{}\r\n",
                g(&stats.loading),
                u8::from(info.data_dir),
            );
            if stats.persist_enabled.load(Ordering::Relaxed) {
                let _ = write!(
                    t,
                    "log_bytes:{}\r\nlast_fsync_ms_ago:{}\r\nsnapshots_written:{}\r\nrecovered_entries:{}\r\n\
                     misconf:{}\r\n",
                    g(&stats.persist_log_bytes),
                    now.mono_ms.saturating_sub(g(&stats.persist_last_fsync_mono_ms)),
                    g(&stats.persist_snapshots_written),
                    g(&stats.persist_recovered_entries),
                    u8::from(stats.persist_refusing.load(Ordering::Relaxed)),
                );
            }
        }
        "stats" => {
            let commands = actor.node_figure(&stats.commands_processed, |c: &Counters| c.commands);
            let _ = write!(
                t,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{commands}\r\n\
                 instantaneous_ops_per_sec:{}\r\nrejected_connections:{}\r\nclient_output_limit_disconnects:{}\r\n\
                 keyspace_hits:{}\r\nkeyspace_misses:{}\r\nexpired_keys:{}\r\nevicted_keys:0\r\n",
                info.clients.received(),
                stats.ops_per_sec(now.mono_ms, commands),
                g(&stats.rejected_connections),
                g(&stats.client_output_limit_disconnects),
                actor.node_figure(&stats.keyspace_hits, |c: &Counters| c.hits),
                actor.node_figure(&stats.keyspace_misses, |c: &Counters| c.misses),
                g(&stats.expired_keys),
            );
        }
        "replication" => {
            // Every server takes writes: each is a master, its peers are masters too.
            let _ = write!(
                t,
                "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\n\
                 master_replid:{}\r\nmaster_repl_offset:0\r\npeers_connected:{}\r\n",
                info.node,
                g(&stats.peers_connected)
            );
            let members = stats.members();
            let peers = members.iter().filter(|m| m.status != MemberStatus::Myself);
            for (i, m) in peers.enumerate() {
                let state = match m.status {
                    MemberStatus::Connected => "connected",
                    MemberStatus::Disconnected => "disconnected",
                    MemberStatus::Replaced => "replaced",
                    MemberStatus::Myself => "self",
                };
                let _ = write!(t, "peer{i}:id={},addr={},state={state}\r\n", m.node, m.peer);
            }
        }
        "keyspace" => {
            t.push_str("# Keyspace\r\n");
            let map = replica.map();
            if map.entry_count() > 0 {
                let _ = write!(
                    t,
                    "db0:keys={},expires={},avg_ttl=0,tombstones={}\r\n",
                    map.len(),
                    map.expiring(),
                    map.tombstones()
                );
            }
        }
        "sync" => {
            let _ = write!(
                t,
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
        _ => {}
    }
    t
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
        h.run(&["GET", "a"]);
        h.run(&["GET", "b"]);
        let text = info_text(&mut h, &[]);
        assert_eq!(info_field(&text, "node"), "n1");
        assert_eq!(info_field(&text, "actor"), "0");
        assert_eq!(info_field(&text, "keys"), "1");
        assert_eq!(info_field(&text, "tombstones"), "1");
        // Five commands ran before this INFO, which counts itself too.
        assert_eq!(info_field(&text, "total_commands_processed"), "6");
        assert_eq!(info_field(&text, "keyspace_hits"), "1");
        assert_eq!(info_field(&text, "keyspace_misses"), "1");
        assert_eq!(info_field(&text, "db0"), "keys=1,expires=0,avg_ttl=0,tombstones=1");
        assert_eq!(info_field(&text, "role"), "master");
        assert_eq!(info_field(&text, "tcp_port"), "6001");
        // What the actor has published and what it has not yet count alike.
        h.actor.publish_counters();
        let text = info_text(&mut h, &["stats"]);
        assert_eq!(info_field(&text, "total_commands_processed"), "7");
        assert_eq!(NodeStats::get(&h.actor.info.stats.commands_processed), 6);
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
    fn info_reports_clients_limits_and_memory_as_tools_read_them() {
        let mut h = Harness::new();
        let stats = h.actor.info.stats.clone();
        NodeStats::add(&stats.clients_connected, 3);
        NodeStats::add(&stats.rejected_connections, 2);
        NodeStats::add(&stats.client_output_limit_disconnects, 1);
        let text = info_text(&mut h, &[]);
        assert_eq!(info_field(&text, "connected_clients"), "3");
        assert_eq!(info_field(&text, "blocked_clients"), "0");
        assert_eq!(info_field(&text, "maxclients"), "10000");
        assert_eq!(info_field(&text, "rejected_connections"), "2");
        assert_eq!(info_field(&text, "client_output_limit_disconnects"), "1");
        assert_eq!(info_field(&text, "total_connections_received"), "1", "the harness's own connection");
        assert_eq!(info_field(&text, "instantaneous_ops_per_sec"), "0");
        assert_eq!(info_field(&text, "used_memory_rss"), FAKE_RSS.to_string());
        assert_eq!(info_field(&text, "maxmemory"), "0");
        // `redis-cli --stat` finds fields with strstr: `used_memory` must come before
        // `used_memory_rss`, and the first `db0:keys` is the keyspace's.
        let used = text.find("used_memory:").unwrap();
        assert!(used < text.find("used_memory_").unwrap(), "{text}");
        let memory = info_text(&mut h, &["memory"]);
        assert!(
            memory
                .starts_with(&format!("# Memory\r\nused_memory:{FAKE_RSS}\r\nused_memory_human:11.77M\r\n"))
        );
        let both = info_text(&mut h, &["clients", "STATS"]);
        assert!(both.contains("connected_clients:3") && both.contains("rejected_connections:2"), "{both}");
        assert!(!both.contains("# Sync"), "{both}");
        let persistence = info_text(&mut h, &["persistence"]);
        assert!(
            persistence.contains("loading:0\r\n") && persistence.contains("aof_enabled:0"),
            "{persistence}"
        );
        assert!(!persistence.contains("log_bytes"), "no data directory: {persistence}");
        let replication = info_text(&mut h, &["replication"]);
        assert!(replication.starts_with("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"));
        assert_eq!(
            info_text(&mut h, &["keyspace"]),
            "# Keyspace\r\n",
            "no db0 line while empty, as in Redis"
        );
    }
}
