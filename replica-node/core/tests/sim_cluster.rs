//! The deterministic cluster simulation (`replica_core::sim`), run over many seeds.
//!
//! CI runs [`CI_SEEDS`] seeds of every scenario. A soak runs many more by hand:
//!
//! ```sh
//! SIM_SEEDS=10000 cargo test --release -p replica-core --test sim_cluster -- --ignored soak --nocapture
//! ```
//!
//! (`SIM_FIRST` picks the first seed; a failing seed is reported by number and reproduces
//! exactly with `SIM_FIRST=<seed> SIM_SEEDS=1`.)

use replica_core::peer::PeerMsg;
use replica_core::sim::{self, Faults, Report, Scenario};

/// Seeds each scenario runs in CI.
const CI_SEEDS: u64 = 32;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `seeds` seeds from `first`; panics with every failing seed.
fn run_seeds(scenario: &Scenario, first: u64, seeds: u64) -> Vec<Report> {
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for seed in first..first + seeds {
        match sim::run(seed, scenario) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} of {seeds} seeds failed:\n{}", failures.len(), failures.join("\n"));
    reports
}

fn total(reports: &[Report], f: impl Fn(&Report) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

#[test]
fn every_fault_at_once_ends_in_identical_replicas_with_no_acknowledged_write_lost() {
    let reports = run_seeds(&Scenario::default(), 0, CI_SEEDS);
    // The faults really happened, and repair really worked.
    assert!(total(&reports, |r| u64::from(r.crashes)) >= CI_SEEDS / 2);
    assert!(total(&reports, |r| u64::from(r.partitions)) >= CI_SEEDS);
    assert!(total(&reports, |r| r.repair_entries) > 0);
    let writes = total(&reports, |r| r.writes as u64);
    let lost = total(&reports, |r| r.lost_with_crash as u64);
    eprintln!("{CI_SEEDS} seeds: {writes} acknowledged writes, {lost} lost with a crashed server");
    assert!(lost * 20 < writes, "losses with crashes are the exception: {lost} of {writes}");
}

#[test]
fn servers_with_data_directories_come_back_as_themselves_with_their_writes() {
    // Every server has a data directory: a crash loses only what its process had not yet
    // handed to the OS, and the restarted server (the same node) brings back the rest, also
    // writes no other server had yet.
    let crashy = Faults { crashes_per_sec: 0.1, ..Faults::ALL };
    let with = Scenario { data_dirs: 1.0, faults: crashy, ..Scenario::default() };
    let reports = run_seeds(&with, 4_000, CI_SEEDS / 2);
    let recoveries = total(&reports, |r| u64::from(r.recoveries));
    assert_eq!(recoveries, total(&reports, |r| u64::from(r.crashes)), "every restart recovers");
    assert!(recoveries >= CI_SEEDS, "{recoveries} recoveries");
    assert!(total(&reports, |r| r.recovered_entries) > recoveries * 10);
    let lost_with = total(&reports, |r| r.lost_with_crash as u64);
    // The same faults without data directories lose many more writes.
    let without = Scenario { data_dirs: 0.0, ..with };
    let lost_without = total(&run_seeds(&without, 4_000, CI_SEEDS / 2), |r| r.lost_with_crash as u64);
    eprintln!(
        "{recoveries} recoveries; lost with crashes: {lost_with} with data directories, {lost_without} without"
    );
    assert!(
        lost_with * 4 < lost_without.max(1),
        "{lost_with} lost with data directories, {lost_without} without"
    );
}

fn more_servers() -> Scenario {
    Scenario {
        servers: 5,
        actors: 3,
        keys: 100,
        writes_per_sec: 60,
        fault_ms: 20_000,
        faults: Faults { crashes_per_sec: 0.05, ..Faults::ALL },
        ..Scenario::default()
    }
}

#[test]
fn more_servers_and_actors_with_lossy_links_converge() {
    run_seeds(&more_servers(), 1_000, CI_SEEDS / 4);
}

#[test]
fn messages_lost_inside_live_connections_are_repaired_by_digests() {
    // No connection ever dies, so acks and resends never help: a lost delta is only found by
    // comparing digests.
    let scenario = Scenario {
        faults: Faults {
            drop: 0.1,
            partitions_per_sec: 0.0,
            conn_kills_per_sec: 0.0,
            crashes_per_sec: 0.0,
            ..Faults::ALL
        },
        ..Scenario::default()
    };
    let reports = run_seeds(&scenario, 2_000, CI_SEEDS);
    assert!(total(&reports, |r| r.repair_entries) > 0);
}

#[test]
fn without_faults_repair_sends_nothing_under_a_write_load() {
    // Tombstones are kept (collecting them makes replicas differ for a moment, by design).
    let scenario = Scenario { faults: Faults::NONE, tombstone_grace_ms: u64::MAX / 4, ..Scenario::default() };
    let reports = run_seeds(&scenario, 3_000, CI_SEEDS / 4);
    assert_eq!(total(&reports, |r| r.lost_with_crash as u64), 0);
    assert_eq!(total(&reports, |r| r.repair_entries), 0, "writes in flight are not mistaken for divergence");
}

/// Removes from repair messages every entry whose key ends in '7', as a repair that skips
/// some keys would.
fn skip_some_keys(msg: &mut PeerMsg) {
    if let PeerMsg::RepairEntries { entries, .. } = msg {
        *entries = entries
            .entries()
            .filter(|(k, _)| !k.ends_with(b"7"))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
    }
}

#[test]
fn a_broken_repair_is_caught() {
    let scenario =
        Scenario { faults: Faults { drop: 0.1, crashes_per_sec: 0.0, ..Faults::ALL }, ..Scenario::default() };
    let failed = (0..CI_SEEDS).find_map(|seed| sim::run_with(seed, &scenario, Some(skip_some_keys)).err());
    let failure = failed.expect("a repair that skips keys must fail some seed");
    assert!(failure.contains("differs") || failure.contains("neither visible"), "{failure}");
}

/// Replays one seed of the default scenario, printing what happens:
/// `SIM_FIRST=<seed> cargo test --release -p replica-core --test sim_cluster -- --ignored trace --nocapture`
#[test]
#[ignore = "a tool: replays one seed with a trace"]
fn trace() {
    let seed = env("SIM_FIRST", 0);
    let scenario = match env("SIM_SCENARIO", 0) {
        1 => more_servers(),
        _ => Scenario::default(),
    };
    let result = sim::run(seed, &Scenario { trace: true, ..scenario });
    eprintln!("{result:?}");
}

#[test]
#[ignore = "a soak: run by hand with SIM_SEEDS (see the module docs)"]
fn soak() {
    let first = env("SIM_FIRST", 100_000);
    let seeds = env("SIM_SEEDS", 10_000);
    // Wall time, to report how long the soak took (this test reads the clock; the simulation
    // does not).
    #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
    let start = std::time::Instant::now();
    let reports = run_seeds(&Scenario::default(), first, seeds);
    eprintln!(
        "soak: {seeds} seeds from {first} passed in {:.0?}: {} writes, {} crashes, {} partitions, {} repair rounds",
        start.elapsed(),
        total(&reports, |r| r.writes as u64),
        total(&reports, |r| u64::from(r.crashes)),
        total(&reports, |r| u64::from(r.partitions)),
        total(&reports, |r| r.repair_rounds),
    );
}

#[test]
fn a_gateway_takes_any_message_a_peer_may_send() {
    use bytes::Bytes;
    use lww_crdt::{BytesMap, Timestamp};
    use replica_core::peer::{BucketDigest, Fingerprint, MemberInfo, MemberState};
    let mut m = BytesMap::new();
    m.put(Bytes::from_static(b"k05"), Bytes::from_static(b"w"), Timestamp::new(u64::MAX, u32::MAX, 9));
    m.delete(Bytes::from_static(b""), Timestamp::new(0, 0, 0));
    for msg in [
        PeerMsg::RepairGroups { round: 0, groups: vec![Fingerprint(1, 2); 3] },
        PeerMsg::RepairGroups { round: u64::MAX, groups: vec![Fingerprint::default(); 64] },
        PeerMsg::RepairBuckets {
            round: 1,
            equal_groups: u64::MAX,
            buckets: vec![BucketDigest { index: u16::MAX, digest: Fingerprint(0, 1) }],
        },
        PeerMsg::RepairSummary {
            round: 1,
            buckets: vec![u16::MAX, 0, 0],
            fingerprints: vec![0, 1],
            last: true,
        },
        PeerMsg::RepairWant { round: 1, fingerprints: vec![u64::MAX], last: true },
        PeerMsg::RepairEntries { round: 1, entries: m.clone(), last: true },
        PeerMsg::SnapshotRequest { id: 0, after: Some(Bytes::from_static(b"\xff\xff")) },
        PeerMsg::SnapshotChunk { id: 99, entries: m.clone(), total: u64::MAX, last: true },
        PeerMsg::Members(vec![MemberInfo {
            node: "aa".into(),
            peer: String::new(),
            started_ms: 0,
            state: MemberState::Forgotten,
        }]),
        PeerMsg::Members(vec![MemberInfo {
            node: "bb".into(),
            peer: "x".into(),
            started_ms: u64::MAX,
            state: MemberState::Replaced,
        }]),
    ] {
        sim::feed_gateway(msg);
    }
}
